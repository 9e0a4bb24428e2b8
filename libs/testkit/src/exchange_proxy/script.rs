//! The proxy's script: which dialect each connection speaks and which faults which
//! commands meet, so a test reads like the failure it reproduces:
//!
//! ```
//! use std::time::Duration;
//! use threatmail_testkit::exchange_proxy::{Fault, Script, When};
//!
//! // On connection 2, the 3rd UID FETCH is throttled for 5 s; every connection speaks
//! // Exchange (greeting, capabilities, login replies) and ends at its token's expiry.
//! let script = Script::exchange().rule(
//!     When::command("UID FETCH")
//!         .connection(2)
//!         .nth(3)
//!         .then(Fault::throttle(Duration::from_millis(5000))),
//! );
//! # let _ = script;
//! ```
//!
//! The proxy re-reads the script for every new connection (dialect) and every command
//! (rules), so a test may change it while sessions run.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::dialect::Dialect;

/// The commands that open or look at mailboxes, which Exchange refuses with "User is
/// authenticated but not connected." [EOP-74], [EOP-275], [NODEIMAP-523].
pub const MAILBOX_COMMANDS: &[&str] = &["LIST", "LSUB", "SELECT", "EXAMINE", "NAMESPACE", "STATUS"];

/// Everything the proxy does, changeable while it runs.
#[derive(Debug, Clone)]
pub struct Script {
    pub(crate) dialect: Dialect,
    pub(crate) dialects: Vec<(Connections, Dialect)>,
    pub(crate) rules: Vec<Rule>,
    pub(crate) expire_sessions: bool,
    pub(crate) cap: Option<ConnectionCap>,
    next_rule_id: u64,
}

impl Default for Script {
    fn default() -> Self {
        Self::exchange()
    }
}

impl Script {
    /// Every connection speaks Exchange ([`Dialect::exchange`]) and ends with
    /// `* BYE Session invalidated - AccessTokenExpired` at its token's `exp`; no faults.
    pub fn exchange() -> Self {
        Self {
            dialect: Dialect::exchange(),
            dialects: Vec::new(),
            rules: Vec::new(),
            expire_sessions: true,
            cap: None,
            next_rule_id: 0,
        }
    }

    /// Dovecot's own words and no expiry: a plain pass-through until rules are added.
    pub fn passthrough() -> Self {
        Self {
            dialect: Dialect::dovecot(),
            expire_sessions: false,
            ..Self::exchange()
        }
    }

    /// The dialect of every connection no [`Script::dialect_on`] entry covers.
    pub fn dialect(mut self, dialect: Dialect) -> Self {
        self.dialect = dialect;
        self
    }

    /// The dialect of `connections` (the first matching entry wins), e.g. a double space
    /// in the capabilities of connection 1 only.
    pub fn dialect_on(mut self, connections: Connections, dialect: Dialect) -> Self {
        self.dialects.push((connections, dialect));
        self
    }

    /// Whether sessions end at their token's `exp` (see [`Script::exchange`]).
    pub fn expire_sessions(mut self, on: bool) -> Self {
        self.expire_sessions = on;
        self
    }

    /// Exchange's per-mailbox connection cap.
    pub fn connection_cap(mut self, cap: ConnectionCap) -> Self {
        self.cap = Some(cap);
        self
    }

    /// Adds a rule after the existing ones.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.push(rule);
        self
    }

    /// Adds a rule after the existing ones (for a script behind the proxy's handle).
    pub fn push(&mut self, mut rule: Rule) {
        rule.id = self.next_rule_id;
        self.next_rule_id += 1;
        self.rules.push(rule);
    }

    /// Removes every rule.
    pub fn clear_rules(&mut self) {
        self.rules.clear();
    }

    /// Sets or removes the connection cap.
    pub fn set_connection_cap(&mut self, cap: Option<ConnectionCap>) {
        self.cap = cap;
    }

    /// Turns session expiry on or off.
    pub fn set_expire_sessions(&mut self, on: bool) {
        self.expire_sessions = on;
    }

    /// The rules, in order, with how often each has fired.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The dialect connection `number` speaks.
    pub(crate) fn dialect_for(&self, number: u64) -> Dialect {
        self.dialects
            .iter()
            .find(|(connections, _)| connections.contains(number))
            .map_or_else(|| self.dialect.clone(), |(_, d)| d.clone())
    }
}

/// Connection numbers (the proxy numbers accepted connections from 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connections {
    first: u64,
    last: u64,
}

impl Connections {
    /// Every connection.
    pub fn all() -> Self {
        Self {
            first: 1,
            last: u64::MAX,
        }
    }

    /// Connection `n` only.
    pub fn only(n: u64) -> Self {
        Self { first: n, last: n }
    }

    /// Connections `range` (inclusive).
    pub fn range(range: RangeInclusive<u64>) -> Self {
        Self {
            first: *range.start(),
            last: *range.end(),
        }
    }

    /// Connection `n` and every later one.
    pub fn from(n: u64) -> Self {
        Self {
            first: n,
            last: u64::MAX,
        }
    }

    /// Whether connection `n` is one of these.
    pub fn contains(&self, n: u64) -> bool {
        (self.first..=self.last).contains(&n)
    }
}

/// Which commands a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandMatch {
    /// Every command.
    Any,
    /// One command name, upper case with single spaces (`UID FETCH`, `SELECT`).
    Named(String),
    /// One of [`MAILBOX_COMMANDS`].
    Mailbox,
}

impl CommandMatch {
    fn matches(&self, name: &str) -> bool {
        match self {
            CommandMatch::Any => true,
            CommandMatch::Named(wanted) => wanted == name,
            CommandMatch::Mailbox => MAILBOX_COMMANDS.contains(&name),
        }
    }
}

/// When a rule fires: which connections, which command, which occurrence of it, which
/// mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct When {
    connections: Connections,
    command: CommandMatch,
    nth: Option<u32>,
    mailbox: Option<String>,
}

impl When {
    /// Commands named `name` (`"UID FETCH"`, `"select"`: case and spacing do not matter).
    pub fn command(name: &str) -> Self {
        let name = name
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_ascii_uppercase();
        Self::matching(CommandMatch::Named(name))
    }

    /// Any of [`MAILBOX_COMMANDS`].
    pub fn mailbox_command() -> Self {
        Self::matching(CommandMatch::Mailbox)
    }

    /// Every command.
    pub fn any_command() -> Self {
        Self::matching(CommandMatch::Any)
    }

    fn matching(command: CommandMatch) -> Self {
        Self {
            connections: Connections::all(),
            command,
            nth: None,
            mailbox: None,
        }
    }

    /// Only on connection `n`.
    pub fn connection(mut self, n: u64) -> Self {
        self.connections = Connections::only(n);
        self
    }

    /// Only on these connections.
    pub fn connections(mut self, connections: Connections) -> Self {
        self.connections = connections;
        self
    }

    /// Only the `n`th matching command of a connection (from 1); without it, every one.
    pub fn nth(mut self, n: u32) -> Self {
        self.nth = Some(n);
        self
    }

    /// Only on connections logged in (or logging in) to `mailbox` (case-insensitive).
    pub fn mailbox(mut self, mailbox: &str) -> Self {
        self.mailbox = Some(mailbox.to_ascii_lowercase());
        self
    }

    /// The rule: these commands meet `fault`.
    pub fn then(self, fault: Fault) -> Rule {
        Rule {
            id: 0,
            when: self,
            fault,
            times: None,
            fired: 0,
        }
    }

    /// Whether the `count`th matching command is the one.
    pub(crate) fn nth_is(&self, count: u32) -> bool {
        self.nth.is_none_or(|n| n == count)
    }

    /// Whether a command named `name` on connection `number` of `mailbox` is one of these
    /// (the occurrence count is checked by the caller).
    pub(crate) fn matches(&self, number: u64, name: &str, mailbox: Option<&str>) -> bool {
        self.connections.contains(number)
            && self.command.matches(name)
            && match &self.mailbox {
                None => true,
                Some(wanted) => mailbox.is_some_and(|m| m.eq_ignore_ascii_case(wanted)),
            }
    }
}

/// A fault and when it fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub(crate) id: u64,
    pub(crate) when: When,
    pub(crate) fault: Fault,
    pub(crate) times: Option<u32>,
    pub(crate) fired: u32,
}

impl Rule {
    /// Fires at most `n` times over all connections.
    pub fn times(mut self, n: u32) -> Self {
        self.times = Some(n);
        self
    }

    /// Fires once over all connections.
    pub fn once(self) -> Self {
        self.times(1)
    }

    /// How often it has fired.
    pub fn fired(&self) -> u32 {
        self.fired
    }

    /// Its fault.
    pub fn fault(&self) -> &Fault {
        &self.fault
    }

    /// Whether it may still fire.
    pub(crate) fn has_shots_left(&self) -> bool {
        self.times.is_none_or(|times| self.fired < times)
    }
}

/// The status word of a throttling reply; Exchange has been seen sending both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `NO`.
    No,
    /// `BAD`.
    Bad,
}

impl Status {
    pub(crate) fn word(self) -> &'static str {
        match self {
            Status::No => "NO",
            Status::Bad => "BAD",
        }
    }
}

/// What a matched command meets. Faults that answer instead of Dovecot do not forward the
/// command (nor its literals); the others forward it and act on its response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `<tag> NO|BAD Request is throttled. Suggested Backoff Time: N milliseconds`, then
    /// (when `bye`) `* BYE Connection closed. 14` and close [IMAPTOOLS-135],
    /// [IMAPSYNC-198], [EOP-191]. Not forwarded.
    Throttle {
        /// The suggested back-off (sent in whole milliseconds).
        backoff: Duration,
        /// `NO` or `BAD`.
        status: Status,
        /// Whether `* BYE Connection closed. 14` and a close follow.
        bye: bool,
    },
    /// `<tag> BAD User is authenticated but not connected.` for this and the next
    /// `replies - 1` commands, then `* BYE Connection closed. 14` and close
    /// [EOP-275], [EOP-74] (where a second command was answered before the BYE). Only on
    /// an authenticated connection; not forwarded.
    NotConnected {
        /// How many commands get the BAD before the BYE (at least 1).
        replies: u32,
    },
    /// Forwarded; the connection is dropped (no TLS close_notify, no more bytes) after
    /// `after_bytes` bytes of the `literal`th literal (from 1) of the response. An offset
    /// at or past the literal's end drops right after its last byte.
    DropInLiteral {
        /// Which literal of the response (from 1).
        literal: u32,
        /// How many of its bytes the client still gets.
        after_bytes: u64,
    },
    /// Forwarded; nothing more is forwarded to the client for `duration` from the
    /// command's arrival (the response waits).
    Stall {
        /// How long.
        duration: Duration,
    },
    /// Forwarded; forwarding to the client stops for `duration` after `after_bytes`
    /// bytes of the `literal`th literal of the response, then resumes.
    StallInLiteral {
        /// Which literal of the response (from 1).
        literal: u32,
        /// After how many of its bytes.
        after_bytes: u64,
        /// How long.
        duration: Duration,
    },
    /// Forwarded; these bytes (exactly as given) reach the client first, at a line
    /// boundary, e.g. a line a parser rejects.
    InjectBefore {
        /// The raw bytes (include the CRLF).
        bytes: Vec<u8>,
    },
    /// Not forwarded; the proxy answers with these lines (each gets CRLF; `{tag}` is
    /// replaced by the command's tag), then closes when `close`.
    Respond {
        /// The lines.
        lines: Vec<String>,
        /// Whether the connection is then closed (with TLS close_notify).
        close: bool,
    },
    /// Not forwarded; the connection is dropped at once (no reply, no close_notify).
    Disconnect,
}

impl Fault {
    /// `NO Request is throttled. Suggested Backoff Time: N milliseconds`, then
    /// `* BYE Connection closed. 14` and close.
    pub fn throttle(backoff: Duration) -> Self {
        Fault::Throttle {
            backoff,
            status: Status::No,
            bye: true,
        }
    }

    /// The same with `BAD`.
    pub fn throttle_bad(backoff: Duration) -> Self {
        Fault::Throttle {
            backoff,
            status: Status::Bad,
            bye: true,
        }
    }

    /// `BAD User is authenticated but not connected.`, then the BYE and close.
    pub fn not_connected() -> Self {
        Fault::NotConnected { replies: 1 }
    }

    /// Drop after `after_bytes` bytes of the response's first literal.
    pub fn drop_in_literal(after_bytes: u64) -> Self {
        Fault::DropInLiteral {
            literal: 1,
            after_bytes,
        }
    }

    /// Holds the response for `duration`.
    pub fn stall(duration: Duration) -> Self {
        Fault::Stall { duration }
    }

    /// Sends `line` plus CRLF before the response.
    pub fn inject_line(line: &str) -> Self {
        let mut bytes = line.as_bytes().to_vec();
        bytes.extend_from_slice(b"\r\n");
        Fault::InjectBefore { bytes }
    }

    /// What a command record calls it.
    pub(crate) fn kind(&self) -> FaultKind {
        match self {
            Fault::Throttle { .. } => FaultKind::Throttled,
            Fault::NotConnected { .. } => FaultKind::NotConnected,
            Fault::DropInLiteral { .. } => FaultKind::DroppedInLiteral,
            Fault::Stall { .. } => FaultKind::Stalled,
            Fault::StallInLiteral { .. } => FaultKind::StalledInLiteral,
            Fault::InjectBefore { .. } => FaultKind::Injected,
            Fault::Respond { .. } => FaultKind::Responded,
            Fault::Disconnect => FaultKind::Disconnected,
        }
    }
}

/// What the proxy did to a command, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// [`Fault::Throttle`].
    Throttled,
    /// [`Fault::NotConnected`], or a reply after it before the BYE.
    NotConnected,
    /// The connection was over the [`ConnectionCap`]: "not connected" as from Exchange.
    OverCap,
    /// After the token-expiry BYE: `BAD Command received in Invalid state.`
    InvalidState,
    /// [`Fault::DropInLiteral`].
    DroppedInLiteral,
    /// [`Fault::Stall`].
    Stalled,
    /// [`Fault::StallInLiteral`].
    StalledInLiteral,
    /// [`Fault::InjectBefore`].
    Injected,
    /// [`Fault::Respond`].
    Responded,
    /// [`Fault::Disconnect`].
    Disconnected,
}

/// Exchange's cap on concurrent IMAP connections per mailbox (16 or 20 in community
/// reports [JLAWYER-2235], [NODEIMAP-523]; no current Microsoft page).
///
/// A connection counts from its successful login until it closes, plus `release_delay`
/// (Exchange is reported slow to release closed sessions [NODEIMAP-523],
/// [PHPIMAP-464]). A login beyond the cap still succeeds, as reported; the connection's
/// first mailbox command then gets `BAD User is authenticated but not connected.`
/// followed by `* BYE Connection closed. 14`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCap {
    /// Concurrent logged-in connections allowed per mailbox.
    pub per_mailbox: usize,
    /// How long a closed connection still counts.
    pub release_delay: Duration,
}

impl ConnectionCap {
    /// `per_mailbox` connections, released at once on close.
    pub fn new(per_mailbox: usize) -> Self {
        Self {
            per_mailbox,
            release_delay: Duration::ZERO,
        }
    }

    /// Closed connections count for `delay` more.
    pub fn release_delay(mut self, delay: Duration) -> Self {
        self.release_delay = delay;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn when_matches_connections_commands_and_mailboxes() {
        let when = When::command("uid   fetch")
            .connections(Connections::range(2..=3))
            .mailbox("SOC@corp.example");
        assert!(when.matches(2, "UID FETCH", Some("soc@corp.example")));
        assert!(when.matches(3, "UID FETCH", Some("Soc@Corp.Example")));
        assert!(!when.matches(1, "UID FETCH", Some("soc@corp.example")));
        assert!(!when.matches(4, "UID FETCH", Some("soc@corp.example")));
        assert!(!when.matches(2, "FETCH", Some("soc@corp.example")));
        assert!(!when.matches(2, "UID FETCH", None));
        assert!(!when.matches(2, "UID FETCH", Some("other@corp.example")));

        let mailbox = When::mailbox_command();
        for name in MAILBOX_COMMANDS {
            assert!(mailbox.matches(7, name, None), "{name}");
        }
        assert!(!mailbox.matches(7, "CAPABILITY", None));
        assert!(When::any_command().matches(u64::MAX, "NOOP", None));
        assert!(Connections::from(5).contains(u64::MAX));
        assert!(!Connections::only(5).contains(6));
    }

    #[test]
    fn rules_get_ids_and_shot_limits() {
        let script = Script::exchange()
            .rule(When::any_command().then(Fault::Disconnect).once())
            .rule(When::any_command().then(Fault::stall(Duration::from_millis(1))));
        let ids: Vec<u64> = script.rules().iter().map(|r| r.id).collect();
        assert_eq!(ids, [0, 1]);
        assert!(script.rules()[0].has_shots_left());
        let mut spent = script.rules()[0].clone();
        spent.fired = 1;
        assert!(!spent.has_shots_left());
        assert!(script.rules()[1].has_shots_left());
    }

    #[test]
    fn per_connection_dialects() {
        let script = Script::exchange().dialect_on(
            Connections::only(1),
            Dialect::exchange().double_space_after("IMAP4rev1"),
        );
        assert!(script.dialect_for(1).double_space_after.is_some());
        assert_eq!(script.dialect_for(2), Dialect::exchange());
        assert_eq!(Script::passthrough().dialect_for(1), Dialect::dovecot());
    }
}
