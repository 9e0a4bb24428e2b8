//! One proxied connection: TLS from the client, plain TCP to Dovecot, and the script
//! applied in between.
//!
//! One task owns both streams, so the order of what the client sees is exact: the proxy's
//! own lines (fault replies, the expiry BYE, injected lines) are written only at a line
//! boundary of the server's stream, never inside a response that spans literals, and
//! literal bytes in either direction pass through untouched as they arrive.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::dialect::{Dialect, exchange_reply};
use super::framing::{
    Framer, LineTooLong, Piece, ResponseStart, classify_response, first_argument, literal_marker,
    parse_command,
};
use super::record::{CommandRecord, SessionBook};
use super::sasl::{SaslLogin, read_response};
use super::script::{Fault, FaultKind, MAILBOX_COMMANDS, Script};

/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for connecting to Dovecot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound for a clean TLS close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes read from a socket at a time.
const READ_CHUNK: usize = 64 * 1024;
/// `LOGIN` literals longer than this are not kept for reading the user name.
const MAX_KEPT_LITERAL: usize = 1024;

/// What Exchange sends when a session's access token expires [AIOIMAP-83], [IMAPSYNC-250].
pub(crate) const BYE_TOKEN_EXPIRED: &str = "* BYE Session invalidated - AccessTokenExpired";
/// Exchange's answer to every command after that BYE.
pub(crate) const BAD_INVALID_STATE: &str = "BAD Command received in Invalid state.";
/// Exchange's answer to mailbox commands it will not serve [EOP-275], [EOP-74].
pub(crate) const BAD_NOT_CONNECTED: &str = "BAD User is authenticated but not connected.";
/// What follows throttling and "not connected" [EOP-74], [IMAPSYNC-198].
pub(crate) const BYE_CONNECTION_CLOSED: &str = "* BYE Connection closed. 14";

/// State every connection shares with the proxy's handle.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) script: Mutex<Script>,
    pub(crate) records: Mutex<Vec<CommandRecord>>,
    pub(crate) book: Mutex<SessionBook>,
}

/// Locks `mutex`, using the data even if a panicking test thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Why a connection ended badly (only logged: the client sees a closed connection).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The client's TLS handshake failed.
    #[error("failed to complete the TLS handshake of connection {connection}")]
    Handshake {
        connection: u64,
        #[source]
        source: std::io::Error,
    },
    /// The client's TLS handshake took too long.
    #[error("failed to complete the TLS handshake of connection {connection} in time")]
    HandshakeTimeout { connection: u64 },
    /// Dovecot did not accept the connection.
    #[error("failed to connect connection {connection} to dovecot at {addr}")]
    Upstream {
        connection: u64,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A read or write failed.
    #[error("failed to {action} on connection {connection}")]
    Io {
        connection: u64,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A line was too long to frame.
    #[error("failed to frame connection {connection}")]
    Framing {
        connection: u64,
        #[source]
        source: LineTooLong,
    },
}

type Result<T, E = SessionError> = std::result::Result<T, E>;

/// Serves connection `number` until either side closes or the script ends it.
pub(crate) async fn serve(
    number: u64,
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    upstream_addr: SocketAddr,
    shared: Arc<Shared>,
) -> Result<()> {
    let client = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| SessionError::HandshakeTimeout { connection: number })?
        .map_err(|source| SessionError::Handshake {
            connection: number,
            source,
        })?;
    let upstream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream_addr))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
        .and_then(|r| r)
        .map_err(|source| SessionError::Upstream {
            connection: number,
            addr: upstream_addr,
            source,
        })?;
    let dialect = lock(&shared.script).dialect_for(number);
    let mut session = Session::new(number, shared, dialect, client, upstream);
    session.run().await
}

/// How the connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Write what is queued, send TLS close_notify, close.
    Clean,
    /// Write what is queued, then drop the socket (no close_notify).
    Abrupt,
    /// The client went away.
    ClientGone,
}

/// Something the proxy itself sends, in order, at a line boundary.
#[derive(Debug)]
enum Outgoing {
    /// Bytes for the client, replying to the command of `record` (if any).
    Reply {
        bytes: Vec<u8>,
        record: Option<usize>,
    },
    /// Stop forwarding: Dovecot is disconnected and every further command gets
    /// `BAD Command received in Invalid state.`
    Invalidate,
    /// End the connection.
    Close(End),
}

/// The command the client is sending (between its first line and its last segment).
struct Command {
    tag: String,
    name: String,
    forward: bool,
    /// `LOGIN`: the arguments of the first line and the first literal, to read the user.
    login_args: Option<Vec<u8>>,
    login_literal: Option<Vec<u8>>,
    literals: u32,
    /// `AUTHENTICATE`: the mechanism and whether an initial response came (SASL-IR).
    sasl: Option<(String, bool)>,
}

/// A forwarded command that may get `+` continuations.
#[derive(Debug)]
enum Waiting {
    /// `AUTHENTICATE`: the mechanism, and whether the client has sent its response.
    Sasl {
        tag: String,
        mechanism: String,
        responded: bool,
    },
    /// `IDLE`: the client ends it with `DONE`.
    Idle { tag: String },
}

impl Waiting {
    fn tag(&self) -> &str {
        match self {
            Waiting::Sasl { tag, .. } | Waiting::Idle { tag } => tag,
        }
    }
}

/// The client's next line answers a `+`, it is no command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    SaslResponse,
    Done,
}

/// A fault waiting for a literal of a response.
#[derive(Debug)]
struct Armed {
    tag: String,
    record: usize,
    literal: u32,
    after_bytes: u64,
    seen: u32,
    action: LiteralAction,
}

#[derive(Debug, Clone, Copy)]
enum LiteralAction {
    Drop,
    Stall(Duration),
}

struct Session {
    number: u64,
    shared: Arc<Shared>,
    dialect: Dialect,
    client: TlsStream<TcpStream>,
    upstream: Option<TcpStream>,
    client_buf: Vec<u8>,
    server_buf: Vec<u8>,
    from_client: Framer,
    from_server: Framer,
    to_client: Vec<u8>,
    to_server: Vec<u8>,
    // The client's side.
    command: Option<Command>,
    expect: Option<Expect>,
    waiting: Option<Waiting>,
    /// The tag of a command whose synchronizing literal waits for the server's `+`.
    literal_wait: Option<String>,
    /// Forwarded commands without their tagged reply yet: tag → name.
    outstanding: HashMap<String, String>,
    // The server's side.
    greeted: bool,
    in_response: bool,
    armed: Option<Armed>,
    /// The server literal being read is the armed one.
    armed_active: bool,
    literal_pos: u64,
    literal_len: u64,
    paused_until: Option<tokio::time::Instant>,
    // The session.
    authenticated: bool,
    mailbox: Option<String>,
    login: Option<SaslLogin>,
    expires_at: Option<tokio::time::Instant>,
    admitted: Option<String>,
    over_cap: bool,
    not_connected_left: u32,
    invalid: bool,
    records: Vec<usize>,
    rule_counts: HashMap<u64, u32>,
    pending: VecDeque<Outgoing>,
    end: Option<End>,
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    Unpause,
    Expired,
}

impl Session {
    fn new(
        number: u64,
        shared: Arc<Shared>,
        dialect: Dialect,
        client: TlsStream<TcpStream>,
        upstream: TcpStream,
    ) -> Self {
        Self {
            number,
            shared,
            dialect,
            client,
            upstream: Some(upstream),
            client_buf: vec![0; READ_CHUNK],
            server_buf: vec![0; READ_CHUNK],
            from_client: Framer::default(),
            from_server: Framer::default(),
            to_client: Vec::new(),
            to_server: Vec::new(),
            command: None,
            expect: None,
            waiting: None,
            literal_wait: None,
            outstanding: HashMap::new(),
            greeted: false,
            in_response: false,
            armed: None,
            armed_active: false,
            literal_pos: 0,
            literal_len: 0,
            paused_until: None,
            authenticated: false,
            mailbox: None,
            login: None,
            expires_at: None,
            admitted: None,
            over_cap: false,
            not_connected_left: 0,
            invalid: false,
            records: Vec::new(),
            rule_counts: HashMap::new(),
            pending: VecDeque::new(),
            end: None,
        }
    }

    async fn run(&mut self) -> Result<()> {
        loop {
            self.drain_server().await?;
            self.drain_client()?;
            if !self.in_response {
                self.flush_pending();
            }
            self.write_out().await?;
            if let Some(end) = self.end {
                return self.close(end).await;
            }
            let paused = self.paused_until;
            let expires = self.expires_at;
            let event = tokio::select! {
                read = self.client.read(&mut self.client_buf) => Event::Client(read),
                read = read_upstream(self.upstream.as_mut(), &mut self.server_buf),
                    if self.upstream.is_some() && paused.is_none() => Event::Server(read),
                () = sleep_until(paused), if paused.is_some() => Event::Unpause,
                () = sleep_until(expires), if expires.is_some() => Event::Expired,
            };
            match event {
                Event::Client(Ok(0)) | Event::Client(Err(_)) => self.end = Some(End::ClientGone),
                Event::Client(Ok(n)) => self.from_client.push(&self.client_buf[..n]),
                Event::Server(Ok(0)) | Event::Server(Err(_)) => {
                    // Dovecot closed (LOGOUT, its own BYE): pass on what is queued and close.
                    self.upstream = None;
                    while let Some(out) = self.pending.pop_front() {
                        self.apply(out);
                    }
                    self.end.get_or_insert(End::Clean);
                }
                Event::Server(Ok(n)) => self.from_server.push(&self.server_buf[..n]),
                Event::Unpause => self.paused_until = None,
                Event::Expired => {
                    self.expires_at = None;
                    tracing::debug!(connection = self.number, "access token expired");
                    self.queue(Outgoing::Reply {
                        bytes: line(BYE_TOKEN_EXPIRED),
                        record: None,
                    });
                    self.queue(Outgoing::Invalidate);
                }
            }
        }
    }

    async fn close(&mut self, end: End) -> Result<()> {
        tracing::debug!(connection = self.number, ?end, "closing");
        if end == End::Clean {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.client.shutdown()).await;
        }
        Ok(())
    }

    fn paused(&self) -> bool {
        self.paused_until.is_some()
    }

    async fn write_out(&mut self) -> Result<()> {
        if !self.to_server.is_empty() {
            if let Some(upstream) = self.upstream.as_mut() {
                upstream
                    .write_all(&self.to_server)
                    .await
                    .map_err(|source| self.io_error("write to dovecot", source))?;
            }
            self.to_server.clear();
        }
        if !self.to_client.is_empty() {
            let written = self.client.write_all(&self.to_client).await;
            let flushed = match written {
                Ok(()) => self.client.flush().await,
                Err(e) => Err(e),
            };
            self.to_client.clear();
            if flushed.is_err() {
                self.end = Some(End::ClientGone);
            }
        }
        Ok(())
    }

    fn io_error(&self, action: &'static str, source: std::io::Error) -> SessionError {
        SessionError::Io {
            connection: self.number,
            action,
            source,
        }
    }

    fn framing_error(&self, source: LineTooLong) -> SessionError {
        SessionError::Framing {
            connection: self.number,
            source,
        }
    }

    // ---- The server's side ----

    async fn drain_server(&mut self) -> Result<()> {
        while self.end.is_none() && !self.paused() && !self.invalid {
            let limit = self.data_limit();
            let piece = self
                .from_server
                .next(limit)
                .map_err(|e| self.framing_error(e))?;
            let Some(piece) = piece else { break };
            match piece {
                Piece::Line(line) => self.server_line(line),
                Piece::Data(data) => {
                    self.literal_pos += data.len() as u64;
                    self.to_client.extend_from_slice(&data);
                }
            }
            self.literal_trigger().await?;
            if !self.in_response {
                self.flush_pending();
            }
            if self.to_client.len() >= READ_CHUNK {
                self.write_out().await?;
            }
        }
        Ok(())
    }

    /// How many literal bytes may be passed before an armed fault acts.
    fn data_limit(&self) -> u64 {
        match &self.armed {
            Some(armed) if self.armed_active => self.trigger_at(armed) - self.literal_pos,
            _ => u64::MAX,
        }
    }

    fn trigger_at(&self, armed: &Armed) -> u64 {
        armed.after_bytes.min(self.literal_len)
    }

    /// Acts when the armed literal reached its offset.
    async fn literal_trigger(&mut self) -> Result<()> {
        let Some(armed) = &self.armed else {
            return Ok(());
        };
        if !self.armed_active || self.literal_pos < self.trigger_at(armed) {
            return Ok(());
        }
        let (record, action) = (armed.record, armed.action);
        self.armed = None;
        self.armed_active = false;
        self.write_out().await?;
        match action {
            LiteralAction::Drop => {
                self.set_fault(record, FaultKind::DroppedInLiteral);
                tracing::debug!(
                    connection = self.number,
                    offset = self.literal_pos,
                    "dropping the connection inside a literal"
                );
                self.end = Some(End::Abrupt);
            }
            LiteralAction::Stall(duration) => {
                self.set_fault(record, FaultKind::StalledInLiteral);
                self.paused_until = Some(tokio::time::Instant::now() + duration);
            }
        }
        Ok(())
    }

    fn server_line(&mut self, line: Vec<u8>) {
        let marker = literal_marker(&line);
        if self.in_response {
            // A later segment of a response that carries literals: passed as it is.
            self.to_client.extend_from_slice(&line);
        } else {
            self.response_start(line, marker.is_some());
        }
        match marker {
            Some(literal) => {
                self.in_response = true;
                self.from_server.begin_literal(literal.len);
                self.literal_pos = 0;
                self.literal_len = literal.len;
                if let Some(armed) = &mut self.armed {
                    armed.seen += 1;
                    self.armed_active = armed.seen == armed.literal;
                }
            }
            None => self.in_response = false,
        }
    }

    fn response_start(&mut self, line: Vec<u8>, has_literal: bool) {
        if !self.greeted {
            self.greeted = true;
            let out = match (&self.dialect.greeting, line.starts_with(b"* OK")) {
                (Some(greeting), true) => self::line(greeting),
                _ => self
                    .dialect
                    .rewrite_capability_code(&line, false)
                    .unwrap_or(line),
            };
            self.to_client.extend_from_slice(&out);
            return;
        }
        let start = match classify_response(&line) {
            ResponseStart::Continuation(text) => Start::Continuation {
                has_text: !text.is_empty(),
            },
            ResponseStart::Untagged(rest) => {
                let upper = rest.to_ascii_uppercase();
                if upper == b"CAPABILITY" || upper.starts_with(b"CAPABILITY ") {
                    Start::Capability(rest.get(11..).unwrap_or_default().to_vec())
                } else {
                    Start::Untagged
                }
            }
            ResponseStart::Tagged { tag, status } => Start::Tagged {
                tag: tag.to_owned(),
                status,
            },
        };
        match start {
            Start::Continuation { has_text } => self.server_continuation(line, has_text),
            Start::Capability(_)
                if !has_literal
                    && self.dialect.exchange_replies
                    && !self.outstanding.values().any(|name| name == "CAPABILITY") =>
            {
                // Dovecot volunteers `* CAPABILITY` before a login reply when the client
                // asked CAPABILITY earlier; Exchange only answers the command itself.
            }
            Start::Capability(atoms) if !has_literal => {
                let rewritten = self.dialect.capabilities.is_some()
                    || self.dialect.double_space_after.is_some();
                if rewritten {
                    let out = self.dialect.capability_line(self.authenticated, &atoms);
                    self.to_client.extend_from_slice(&out);
                } else {
                    self.to_client.extend_from_slice(&line);
                }
            }
            Start::Capability(_) | Start::Untagged => {
                let out = if has_literal {
                    line
                } else {
                    self.dialect
                        .rewrite_capability_code(&line, self.authenticated)
                        .unwrap_or(line)
                };
                self.to_client.extend_from_slice(&out);
            }
            Start::Tagged { tag, status } => self.server_tagged(line, &tag, &status),
        }
    }

    fn server_continuation(&mut self, line: Vec<u8>, has_text: bool) {
        if self.literal_wait.take().is_some() {
            // The client may now send its synchronizing literal (RFC 3501 §7.5).
            self.from_client.hold(false);
            self.to_client.extend_from_slice(&line);
            return;
        }
        match &mut self.waiting {
            Some(Waiting::Sasl { responded, .. }) => {
                if self.dialect.exchange_replies && *responded && has_text {
                    // Dovecot's error challenge after a refused token (RFC 7628 §3.2.3).
                    // Exchange answers with the tagged NO at once, so the proxy answers
                    // the challenge itself and the client never sees it.
                    self.to_server.extend_from_slice(b"\r\n");
                } else {
                    self.expect = Some(Expect::SaslResponse);
                    self.to_client.extend_from_slice(&line);
                }
            }
            Some(Waiting::Idle { .. }) => {
                self.expect = Some(Expect::Done);
                self.to_client.extend_from_slice(&line);
            }
            None => self.to_client.extend_from_slice(&line),
        }
    }

    fn server_tagged(&mut self, line: Vec<u8>, tag: &str, status: &str) {
        let name = self.outstanding.remove(tag);
        if self.waiting.as_ref().is_some_and(|w| w.tag() == tag) {
            self.waiting = None;
            self.expect = None;
        }
        if self.literal_wait.as_deref() == Some(tag) {
            // Refused before the literal (RFC 3501 §7.5): the client will not send it.
            self.literal_wait = None;
            self.from_client.begin_literal(0);
            self.from_client.hold(false);
            self.command = None;
        }
        if self.armed.as_ref().is_some_and(|a| a.tag == tag) {
            self.armed = None;
            self.armed_active = false;
        }
        let name = name.unwrap_or_default();
        if name == "AUTHENTICATE" || name == "LOGIN" {
            if status == "OK" {
                self.logged_in();
            } else {
                self.login = None;
            }
        }
        let out = match exchange_reply(&name, status) {
            Some(text) if self.dialect.exchange_replies => format!("{tag} {text}\r\n").into_bytes(),
            _ => self
                .dialect
                .rewrite_capability_code(&line, self.authenticated)
                .unwrap_or(line),
        };
        self.to_client.extend_from_slice(&out);
    }

    /// The login succeeded: count the session, start the token's clock.
    fn logged_in(&mut self) {
        self.authenticated = true;
        let login = self.login.take().unwrap_or_default();
        let (cap, expire) = {
            let script = lock(&self.shared.script);
            (script.cap, script.expire_sessions)
        };
        if let Some(mailbox) = login.mailbox.or_else(|| self.mailbox.clone()) {
            let admitted = lock(&self.shared.book).try_open(
                &mailbox,
                cap.map(|c| c.per_mailbox),
                Instant::now(),
            );
            if admitted {
                self.admitted = Some(mailbox);
            } else {
                tracing::debug!(connection = self.number, "over the connection cap");
                self.over_cap = true;
            }
        }
        if expire && let Some(exp) = login.token_exp {
            let left = (UNIX_EPOCH + Duration::from_secs(exp))
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            self.expires_at = Some(tokio::time::Instant::now() + left);
        }
    }

    fn release(&mut self) {
        if let Some(mailbox) = self.admitted.take() {
            let linger = lock(&self.shared.script)
                .cap
                .map_or(Duration::ZERO, |c| c.release_delay);
            lock(&self.shared.book).close(&mailbox, linger, Instant::now());
        }
    }

    // ---- The client's side ----

    fn drain_client(&mut self) -> Result<()> {
        while self.end.is_none() {
            let piece = self
                .from_client
                .next(u64::MAX)
                .map_err(|e| self.framing_error(e))?;
            let Some(piece) = piece else { break };
            match piece {
                Piece::Line(line) => self.client_line(line),
                Piece::Data(data) => self.client_data(&data),
            }
            if !self.in_response {
                self.flush_pending();
            }
        }
        Ok(())
    }

    fn client_data(&mut self, data: &[u8]) {
        let Some(command) = &mut self.command else {
            return;
        };
        if command.forward {
            self.to_server.extend_from_slice(data);
        }
        if command.literals == 1
            && let Some(kept) = &mut command.login_literal
            && kept.len() + data.len() <= MAX_KEPT_LITERAL
        {
            kept.extend_from_slice(data);
        }
    }

    fn client_line(&mut self, line: Vec<u8>) {
        if self.command.is_some() {
            self.command_segment(line);
            return;
        }
        match self.expect.take() {
            Some(Expect::SaslResponse) => {
                if let Some(Waiting::Sasl {
                    mechanism,
                    responded,
                    ..
                }) = &mut self.waiting
                    && !*responded
                {
                    *responded = true;
                    let login = read_response(mechanism, &line);
                    self.set_login(login);
                }
                self.to_server.extend_from_slice(&line);
                return;
            }
            Some(Expect::Done) => {
                self.to_server.extend_from_slice(&line);
                return;
            }
            None => {}
        }
        let Some(parsed) = parse_command(&line) else {
            if !self.invalid {
                self.to_server.extend_from_slice(&line);
            }
            return;
        };
        let tag = parsed.tag.to_owned();
        let name = parsed.name.clone();
        let mut command = Command {
            tag: tag.clone(),
            name: name.clone(),
            forward: true,
            login_args: None,
            login_literal: None,
            literals: 0,
            sasl: None,
        };
        let mut words = parsed.args.split(|&b| b == b' ').filter(|w| !w.is_empty());
        if (name == "AUTHENTICATE" || name == "LOGIN") && !self.invalid {
            // A new login attempt names its own mailbox (below, or in a later line).
            self.mailbox = None;
        }
        match name.as_str() {
            "AUTHENTICATE" => {
                let mechanism =
                    String::from_utf8_lossy(words.next().unwrap_or_default()).to_ascii_uppercase();
                let initial = words.next();
                if let Some(initial) = initial {
                    let login = read_response(&mechanism, initial);
                    self.set_login(login);
                }
                command.sasl = Some((mechanism, initial.is_some()));
            }
            "LOGIN" => {
                command.login_args = Some(parsed.args.to_vec());
                // Only a user name sent as a literal is kept (never a password).
                if parsed.args.starts_with(b"{") || parsed.args.starts_with(b"~{") {
                    command.login_literal = Some(Vec::new());
                }
            }
            _ => {}
        }
        let record = self.decide(&mut command);
        self.records.push(record);
        let marker = literal_marker(&line);
        if command.forward {
            self.to_server.extend_from_slice(&line);
        }
        self.command = Some(command);
        match marker {
            Some(literal) => self.client_literal(literal.len, literal.sync),
            None => self.finish_command(),
        }
    }

    /// A later segment of the command being sent (after one of its literals).
    fn command_segment(&mut self, line: Vec<u8>) {
        let Some(command) = &self.command else {
            return;
        };
        if command.forward {
            self.to_server.extend_from_slice(&line);
        }
        match literal_marker(&line) {
            Some(literal) => self.client_literal(literal.len, literal.sync),
            None => self.finish_command(),
        }
    }

    /// The command being sent announced a literal.
    fn client_literal(&mut self, len: u64, sync: bool) {
        let Some(command) = &mut self.command else {
            return;
        };
        command.literals += 1;
        if !command.forward && sync {
            // The proxy answered instead of sending `+`: no literal comes (RFC 3501 §7.5).
            self.command = None;
            return;
        }
        self.from_client.begin_literal(len);
        if command.forward && sync {
            self.literal_wait = Some(command.tag.clone());
            self.from_client.hold(true);
        }
    }

    /// The command's last segment went through.
    fn finish_command(&mut self) {
        let Some(command) = self.command.take() else {
            return;
        };
        if let Some(args) = &command.login_args {
            let literal = command.login_literal.as_deref();
            if let Some(user) = first_argument(args, literal) {
                self.set_login(Some(SaslLogin {
                    mailbox: Some(user),
                    token_exp: None,
                }));
            }
        }
        if !command.forward {
            return;
        }
        self.outstanding
            .insert(command.tag.clone(), command.name.clone());
        match (command.name.as_str(), command.sasl) {
            ("AUTHENTICATE", Some((mechanism, responded))) => {
                self.waiting = Some(Waiting::Sasl {
                    tag: command.tag,
                    mechanism,
                    responded,
                });
            }
            ("IDLE", _) => self.waiting = Some(Waiting::Idle { tag: command.tag }),
            _ => {}
        }
    }

    /// Remembers the login being attempted and names the connection's mailbox.
    fn set_login(&mut self, login: Option<SaslLogin>) {
        let Some(login) = login else {
            return;
        };
        if let Some(mailbox) = &login.mailbox {
            self.mailbox = Some(mailbox.clone());
            let mut records = lock(&self.shared.records);
            for &index in &self.records {
                if let Some(record) = records.get_mut(index)
                    && record.mailbox.is_none()
                {
                    record.mailbox = Some(mailbox.clone());
                }
            }
        }
        self.login = Some(login);
    }

    /// Applies the script to a new command and records it; returns the record's index.
    fn decide(&mut self, command: &mut Command) -> usize {
        let tag = command.tag.clone();
        let (fault, kind) = self.choose_fault(&command.name);
        let mut replies: Vec<Outgoing> = Vec::new();
        let reply = |text: String| Outgoing::Reply {
            bytes: line(&text),
            record: None,
        };
        match &fault {
            Some(Fault::Throttle {
                backoff,
                status,
                bye,
            }) => {
                command.forward = false;
                replies.push(reply(format!(
                    "{tag} {} Request is throttled. Suggested Backoff Time: {} milliseconds",
                    status.word(),
                    backoff.as_millis()
                )));
                if *bye {
                    replies.push(reply(BYE_CONNECTION_CLOSED.to_owned()));
                    replies.push(Outgoing::Close(End::Clean));
                }
            }
            Some(Fault::NotConnected { replies: count }) => {
                command.forward = false;
                self.not_connected_left = (*count).max(1);
                self.not_connected_reply(&tag, &mut replies);
            }
            Some(Fault::DropInLiteral {
                literal,
                after_bytes,
            }) => {
                self.arm(&tag, *literal, *after_bytes, LiteralAction::Drop);
            }
            Some(Fault::StallInLiteral {
                literal,
                after_bytes,
                duration,
            }) => {
                self.arm(
                    &tag,
                    *literal,
                    *after_bytes,
                    LiteralAction::Stall(*duration),
                );
            }
            Some(Fault::Stall { duration }) => {
                let until = tokio::time::Instant::now() + *duration;
                self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
            }
            Some(Fault::InjectBefore { bytes }) => replies.push(Outgoing::Reply {
                bytes: bytes.clone(),
                record: None,
            }),
            Some(Fault::Respond { lines, close }) => {
                command.forward = false;
                for text in lines {
                    replies.push(reply(text.replace("{tag}", &tag)));
                }
                if *close {
                    replies.push(Outgoing::Close(End::Clean));
                }
            }
            Some(Fault::Disconnect) => {
                command.forward = false;
                replies.push(Outgoing::Close(End::Abrupt));
            }
            None => match kind {
                Some(FaultKind::InvalidState) => {
                    command.forward = false;
                    replies.push(reply(format!("{tag} {BAD_INVALID_STATE}")));
                }
                Some(FaultKind::NotConnected | FaultKind::OverCap) => {
                    command.forward = false;
                    self.not_connected_reply(&tag, &mut replies);
                }
                _ => {}
            },
        }
        let record = {
            let mut records = lock(&self.shared.records);
            records.push(CommandRecord {
                connection: self.number,
                at: Instant::now(),
                tag: tag.clone(),
                name: command.name.clone(),
                mailbox: self.mailbox.clone(),
                forwarded: command.forward,
                // Literal faults are recorded when they act.
                fault: kind.filter(|k| {
                    !matches!(k, FaultKind::DroppedInLiteral | FaultKind::StalledInLiteral)
                }),
                replied_at: None,
            });
            records.len() - 1
        };
        if let Some(armed) = &mut self.armed
            && armed.tag == tag
        {
            armed.record = record;
        }
        let mut first_reply = !command.forward;
        for mut out in replies {
            if let Outgoing::Reply { record: r, .. } = &mut out
                && first_reply
            {
                *r = Some(record);
                first_reply = false;
            }
            self.queue(out);
        }
        record
    }

    /// The fault for a command named `name`, from the session's state or else the rules.
    fn choose_fault(&mut self, name: &str) -> (Option<Fault>, Option<FaultKind>) {
        if self.invalid {
            return (None, Some(FaultKind::InvalidState));
        }
        if self.not_connected_left > 0 {
            return (None, Some(FaultKind::NotConnected));
        }
        if self.over_cap && self.authenticated && MAILBOX_COMMANDS.contains(&name) {
            self.not_connected_left = 1;
            return (None, Some(FaultKind::OverCap));
        }
        let mut script = lock(&self.shared.script);
        let mut chosen = None;
        for rule in &mut script.rules {
            if !rule
                .when
                .matches(self.number, name, self.mailbox.as_deref())
            {
                continue;
            }
            let count = self.rule_counts.entry(rule.id).or_default();
            *count += 1;
            let applicable = match rule.fault {
                // "Authenticated but not connected" needs a login first.
                Fault::NotConnected { .. } => self.authenticated,
                _ => true,
            };
            if chosen.is_none() && applicable && rule.when.nth_is(*count) && rule.has_shots_left() {
                rule.fired += 1;
                chosen = Some(rule.fault.clone());
            }
        }
        let kind = chosen.as_ref().map(Fault::kind);
        (chosen, kind)
    }

    fn not_connected_reply(&mut self, tag: &str, replies: &mut Vec<Outgoing>) {
        replies.push(Outgoing::Reply {
            bytes: line(&format!("{tag} {BAD_NOT_CONNECTED}")),
            record: None,
        });
        self.not_connected_left = self.not_connected_left.saturating_sub(1);
        if self.not_connected_left == 0 {
            replies.push(Outgoing::Reply {
                bytes: line(BYE_CONNECTION_CLOSED),
                record: None,
            });
            replies.push(Outgoing::Close(End::Clean));
        }
    }

    fn arm(&mut self, tag: &str, literal: u32, after_bytes: u64, action: LiteralAction) {
        self.armed = Some(Armed {
            tag: tag.to_owned(),
            record: usize::MAX,
            literal: literal.max(1),
            after_bytes,
            seen: 0,
            action,
        });
        self.armed_active = false;
    }

    fn set_fault(&self, record: usize, kind: FaultKind) {
        if let Some(record) = lock(&self.shared.records).get_mut(record) {
            record.fault = Some(kind);
        }
    }

    // ---- The proxy's own output ----

    fn queue(&mut self, out: Outgoing) {
        self.pending.push_back(out);
        if !self.in_response {
            self.flush_pending();
        }
    }

    /// Sends what the proxy queued; only called at a server line boundary.
    fn flush_pending(&mut self) {
        while self.end.is_none() {
            let Some(out) = self.pending.pop_front() else {
                break;
            };
            self.apply(out);
        }
    }

    fn apply(&mut self, out: Outgoing) {
        match out {
            Outgoing::Reply { bytes, record } => {
                self.to_client.extend_from_slice(&bytes);
                if let Some(record) = record
                    && let Some(record) = lock(&self.shared.records).get_mut(record)
                {
                    record.replied_at.get_or_insert_with(Instant::now);
                }
            }
            Outgoing::Invalidate => self.invalidate(),
            Outgoing::Close(end) => {
                self.end.get_or_insert(end);
            }
        }
    }

    /// After the expiry BYE: Dovecot is let go and nothing more is forwarded.
    fn invalidate(&mut self) {
        self.invalid = true;
        self.upstream = None;
        self.from_server.clear();
        self.to_server.clear();
        self.in_response = false;
        self.outstanding.clear();
        self.waiting = None;
        self.expect = None;
        self.armed = None;
        self.armed_active = false;
        self.paused_until = None;
        if self.literal_wait.take().is_some() {
            self.from_client.begin_literal(0);
            self.from_client.hold(false);
            self.command = None;
        }
        if let Some(command) = &mut self.command {
            command.forward = false;
        }
        self.release();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.release();
    }
}

/// How a server response begins, owned so the session may change itself meanwhile.
enum Start {
    Continuation { has_text: bool },
    Capability(Vec<u8>),
    Untagged,
    Tagged { tag: String, status: String },
}

/// `text` plus CRLF.
fn line(text: &str) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    bytes.extend_from_slice(b"\r\n");
    bytes
}

async fn read_upstream(upstream: Option<&mut TcpStream>, buf: &mut [u8]) -> std::io::Result<usize> {
    match upstream {
        Some(stream) => stream.read(buf).await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
