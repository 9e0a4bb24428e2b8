//! What the proxy saw: every client command with its connection, arrival time, tag, name
//! and mailbox, and the logged-in sessions per mailbox (for the connection cap).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::script::FaultKind;

/// One client command as it reached the proxy. No arguments are kept (they may hold
/// passwords or tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRecord {
    /// The connection's number (from 1, in accept order).
    pub connection: u64,
    /// When its first line arrived.
    pub at: Instant,
    /// The tag.
    pub tag: String,
    /// The command name, upper case (`UID FETCH`).
    pub name: String,
    /// The mailbox of the connection (from XOAUTH2 `user=`, OAUTHBEARER `a=`, PLAIN or
    /// LOGIN), filled in for the connection's earlier commands once it is known.
    pub mailbox: Option<String>,
    /// Whether Dovecot got it.
    pub forwarded: bool,
    /// What the proxy did to it, if anything.
    pub fault: Option<FaultKind>,
    /// When the proxy's own reply to it (throttle, not connected, invalid state…) was
    /// handed to the client's TLS stream.
    pub replied_at: Option<Instant>,
}

/// Logged-in sessions per lower-case mailbox.
#[derive(Debug, Default)]
pub(crate) struct SessionBook {
    open: HashMap<String, usize>,
    peak: HashMap<String, usize>,
    /// Until when closed sessions still count.
    lingering: HashMap<String, Vec<Instant>>,
}

impl SessionBook {
    /// Counts a new session of `mailbox` unless `cap` sessions already count; `false`
    /// when over the cap.
    pub(crate) fn try_open(&mut self, mailbox: &str, cap: Option<usize>, now: Instant) -> bool {
        let key = mailbox.to_ascii_lowercase();
        let lingering = self.lingering.entry(key.clone()).or_default();
        lingering.retain(|until| *until > now);
        let lingering = lingering.len();
        let open = self.open.entry(key.clone()).or_default();
        if cap.is_some_and(|cap| *open + lingering >= cap) {
            return false;
        }
        *open += 1;
        let open = *open;
        let peak = self.peak.entry(key).or_default();
        *peak = (*peak).max(open);
        true
    }

    /// A session of `mailbox` ended; it counts for `linger` more.
    pub(crate) fn close(&mut self, mailbox: &str, linger: Duration, now: Instant) {
        let key = mailbox.to_ascii_lowercase();
        if let Some(open) = self.open.get_mut(&key) {
            *open = open.saturating_sub(1);
        }
        if !linger.is_zero() {
            self.lingering.entry(key).or_default().push(now + linger);
        }
    }

    /// Sessions of `mailbox` open now.
    pub(crate) fn open(&self, mailbox: &str) -> usize {
        self.open
            .get(&mailbox.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }

    /// The most sessions of `mailbox` open at once.
    pub(crate) fn peak(&self, mailbox: &str) -> usize {
        self.peak
            .get(&mailbox.to_ascii_lowercase())
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_counts_open_and_lingering_sessions() {
        let t0 = Instant::now();
        let mut book = SessionBook::default();
        assert!(book.try_open("A@x", Some(2), t0));
        assert!(book.try_open("a@x", Some(2), t0));
        assert!(!book.try_open("a@X", Some(2), t0));
        assert!(book.try_open("b@x", Some(2), t0));
        assert_eq!((book.open("a@x"), book.peak("a@x")), (2, 2));

        book.close("a@x", Duration::from_secs(10), t0);
        assert_eq!(book.open("a@x"), 1);
        // The closed session still counts until its release.
        assert!(!book.try_open("a@x", Some(2), t0 + Duration::from_secs(9)));
        assert!(book.try_open("a@x", Some(2), t0 + Duration::from_secs(10)));
        // Without a cap every session is admitted and counted.
        assert!(book.try_open("a@x", None, t0));
        assert_eq!(book.peak("a@x"), 3);
        assert_eq!(book.open("nobody@x"), 0);
    }
}
