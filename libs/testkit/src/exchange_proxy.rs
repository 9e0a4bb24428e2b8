//! A TLS proxy in front of the test Dovecot that speaks like Exchange Online and injects
//! its failures, so the fetcher meets them in tests before it meets them in a tenant.
//!
//! [`ExchangeProxy`] listens on a free 127.0.0.1 port with a certificate of the test CA
//! (clients verify it exactly as they verify Dovecot) and forwards each connection to
//! Dovecot's plain port. A [`Script`], changeable while the proxy runs through
//! [`ExchangeControl`], decides per connection and per command what the client sees:
//! Exchange's greeting, capabilities and login replies ([`Dialect`]); the session ending
//! at its token's `exp`; throttling, "authenticated but not connected", drops inside a
//! literal, stalls, injected lines, a per-mailbox connection cap ([`Fault`],
//! [`ConnectionCap`]). Every client command is recorded ([`CommandRecord`]) with its
//! connection, arrival time, tag, name and mailbox. The wire texts and their sources are
//! in `libs/testkit/EXCHANGE.md`.
//!
//! Literals pass byte-exact in both directions and are streamed, never buffered whole;
//! lines are only rewritten whole. The proxy stops when its handle is dropped.

mod dialect;
mod framing;
mod record;
mod sasl;
mod script;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use dialect::{
    Capabilities, DEFAULT_SERVER_NAME, Dialect, EXCHANGE_CAPABILITIES_AFTER_AUTH,
    EXCHANGE_CAPABILITIES_BEFORE_AUTH, exchange_greeting,
};
pub use record::CommandRecord;
pub use script::{
    CommandMatch, ConnectionCap, Connections, Fault, FaultKind, MAILBOX_COMMANDS, Rule, Script,
    Status, When,
};

use crate::ca::TestCa;
use record::SessionBook;
use session::{Shared, lock};

/// `* BYE Session invalidated - AccessTokenExpired`, sent at the token's `exp`.
pub const BYE_TOKEN_EXPIRED: &str = session::BYE_TOKEN_EXPIRED;
/// `BAD Command received in Invalid state.`, the answer to every command after that BYE
/// (after the tag).
pub const BAD_INVALID_STATE: &str = session::BAD_INVALID_STATE;
/// `BAD User is authenticated but not connected.` (after the tag).
pub const BAD_NOT_CONNECTED: &str = session::BAD_NOT_CONNECTED;
/// `* BYE Connection closed. 14`, after throttling and "not connected".
pub const BYE_CONNECTION_CLOSED: &str = session::BYE_CONNECTION_CLOSED;

/// How long [`ExchangeProxy::shutdown`] waits for connection tasks to end.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(10);

/// A running proxy; stopped (listener closed, every connection dropped) when dropped.
pub struct ExchangeProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    control: ExchangeControl,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl std::fmt::Debug for ExchangeProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeProxy")
            .field("addr", &self.addr)
            .field("upstream", &self.upstream)
            .field("connections", &self.control.connections())
            .finish_non_exhaustive()
    }
}

/// A cloneable handle on a running proxy's script and records.
#[derive(Clone)]
pub struct ExchangeControl {
    shared: Arc<Shared>,
    connections: Arc<AtomicU64>,
}

impl std::fmt::Debug for ExchangeControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExchangeControl")
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

impl ExchangeProxy {
    /// Starts a proxy on a free 127.0.0.1 port presenting a fresh certificate of `ca`
    /// (for `localhost`, `127.0.0.1`), forwarding to `upstream` (Dovecot's plain port,
    /// [`crate::dovecot::Dovecot::imap_addr`]). Must be called inside a tokio runtime.
    pub async fn start(ca: &TestCa, upstream: SocketAddr, script: Script) -> anyhow::Result<Self> {
        let mut tls = (*ca.server_config()?).clone();
        // IMAP clients offer no ALPN (or `imap`); the kit's default offers only http/1.1.
        tls.alpn_protocols.clear();
        let acceptor = TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to bind the Exchange proxy to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let control = ExchangeControl {
            shared: Arc::new(Shared {
                script: Mutex::new(script),
                records: Mutex::new(Vec::new()),
                book: Mutex::new(SessionBook::default()),
            }),
            connections: Arc::new(AtomicU64::new(0)),
        };
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        tracker.spawn(accept_loop(
            listener,
            acceptor,
            upstream,
            control.clone(),
            cancel.clone(),
            tracker.clone(),
        ));
        tracing::info!(%addr, %upstream, "exchange proxy listening");
        Ok(Self {
            addr,
            upstream,
            control,
            cancel,
            tracker,
        })
    }

    /// The address clients connect to (TLS; the certificate names `localhost`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address it forwards to.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The script and records, as a cloneable handle.
    pub fn control(&self) -> &ExchangeControl {
        &self.control
    }

    /// Changes the script in place (see [`ExchangeControl::update_script`]).
    pub fn update_script<R>(&self, change: impl FnOnce(&mut Script) -> R) -> R {
        self.control.update_script(change)
    }

    /// Every command recorded so far (see [`ExchangeControl::commands`]).
    pub fn commands(&self) -> Vec<CommandRecord> {
        self.control.commands()
    }

    /// Stops accepting, drops every connection and waits (bounded) until every task of
    /// the proxy has ended.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        self.tracker.close();
        tokio::time::timeout(SHUTDOWN_LIMIT, self.tracker.wait())
            .await
            .context("the Exchange proxy's tasks did not end in time")
    }
}

impl Drop for ExchangeProxy {
    fn drop(&mut self) {
        // Every task races this token and ends at its next poll.
        self.cancel.cancel();
        self.tracker.close();
    }
}

impl ExchangeControl {
    /// Replaces the script. New connections and new commands follow it; counters of
    /// `nth` rules start again.
    pub fn set_script(&self, script: Script) {
        *lock(&self.shared.script) = script;
    }

    /// Changes the script in place, e.g. `|s| s.push(rule)`.
    pub fn update_script<R>(&self, change: impl FnOnce(&mut Script) -> R) -> R {
        change(&mut lock(&self.shared.script))
    }

    /// A copy of the current script (with how often each rule fired).
    pub fn script(&self) -> Script {
        lock(&self.shared.script).clone()
    }

    /// Every command recorded so far, in arrival order.
    pub fn commands(&self) -> Vec<CommandRecord> {
        lock(&self.shared.records).clone()
    }

    /// The commands recorded for `mailbox` (case-insensitive).
    pub fn commands_for(&self, mailbox: &str) -> Vec<CommandRecord> {
        lock(&self.shared.records)
            .iter()
            .filter(|r| {
                r.mailbox
                    .as_deref()
                    .is_some_and(|m| m.eq_ignore_ascii_case(mailbox))
            })
            .cloned()
            .collect()
    }

    /// The first command for `mailbox` that arrived after `after`, e.g. after a throttle
    /// reply's [`CommandRecord::replied_at`].
    ///
    /// A new connection's commands before its login are counted too: their mailbox is
    /// filled in once the login names it.
    pub fn first_command_after(&self, mailbox: &str, after: Instant) -> Option<CommandRecord> {
        self.commands_for(mailbox)
            .into_iter()
            .filter(|r| r.at > after)
            .min_by_key(|r| r.at)
    }

    /// Forgets the recorded commands.
    pub fn clear_commands(&self) {
        lock(&self.shared.records).clear();
    }

    /// Connections accepted so far (the last connection's number).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Logged-in connections of `mailbox` open now (those over the cap not counted).
    pub fn open_sessions(&self, mailbox: &str) -> usize {
        lock(&self.shared.book).open(mailbox)
    }

    /// The most logged-in connections of `mailbox` that were open at once.
    pub fn peak_sessions(&self, mailbox: &str) -> usize {
        lock(&self.shared.book).peak(mailbox)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    upstream: SocketAddr,
    control: ExchangeControl,
    cancel: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(error) => {
                // E.g. out of file descriptors: wait a little rather than spin.
                tracing::warn!(%error, "exchange proxy failed to accept");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let number = control.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let shared = Arc::clone(&control.shared);
        let acceptor = acceptor.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                served = session::serve(number, tcp, acceptor, upstream, shared) => {
                    if let Err(error) = served {
                        tracing::debug!(connection = number, %error, "exchange proxy connection failed");
                    }
                }
            }
        });
    }
}
