//! An IMAP client for the test kit's own checks and the demo: TLS with the test CA, the
//! greeting read before any command, and SASL XOAUTH2 as Exchange Online expects it.
//!
//! The product's fetcher has its own session code; this exists so tests and the demo can
//! prove what the local stack accepts without depending on the code under test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_imap::Authenticator;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The stream type of a TLS IMAP connection.
pub type Tls = TlsStream<TcpStream>;

/// A logged-in session over TLS.
pub type Session = async_imap::Session<Tls>;

/// Every IMAP exchange here is bounded by this.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects to `addr` with TLS, verifying the server as `localhost` against `tls`, and
/// reads the greeting before anything else is sent (a `* BYE` greeting is an error).
pub async fn connect_tls(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<async_imap::Client<Tls>> {
    tokio::time::timeout(COMMAND_TIMEOUT, async {
        let tcp = TcpStream::connect(addr)
            .await
            .with_context(|| format!("failed to connect to {addr}"))?;
        let name = ServerName::try_from("localhost")?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {addr} failed"))?;
        let mut client = async_imap::Client::new(stream);
        let greeting = client
            .read_response()
            .await
            .context("failed to read the greeting")?
            .context("connection closed before the greeting")?;
        if let imap_proto::Response::Data {
            status: imap_proto::Status::Bye,
            ..
        } = greeting.parsed()
        {
            bail!("server greeted with BYE");
        }
        Ok(client)
    })
    .await
    .context("timed out connecting")?
}

/// The SASL XOAUTH2 initial response: `user=<mailbox>^Aauth=Bearer <token>^A^A`.
pub struct XOAuth2 {
    user: String,
    token: String,
}

impl XOAuth2 {
    /// For `user` (the mailbox address) and an access token.
    pub fn new(user: &str, token: &str) -> Self {
        Self {
            user: user.to_owned(),
            token: token.to_owned(),
        }
    }
}

impl std::fmt::Debug for XOAuth2 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XOAuth2")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl Authenticator for XOAuth2 {
    type Response = String;

    fn process(&mut self, challenge: &[u8]) -> Self::Response {
        if challenge.is_empty() {
            format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token)
        } else {
            // An error challenge (RFC 7628 §3.2.3, Dovecot's JSON status): answer with an
            // empty response so the server sends its tagged NO.
            String::new()
        }
    }
}

/// How an XOAUTH2 login ended.
pub enum LoginOutcome {
    /// Logged in.
    LoggedIn(Box<Session>),
    /// The server answered NO (or BAD); the text is the server's.
    Refused(String),
}

impl std::fmt::Debug for LoginOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoginOutcome::LoggedIn(_) => f.write_str("LoggedIn"),
            LoginOutcome::Refused(text) => f.debug_tuple("Refused").field(text).finish(),
        }
    }
}

/// Connects over TLS and tries `AUTHENTICATE XOAUTH2` for `user` with `token`.
pub async fn login_xoauth2(
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    user: &str,
    token: &str,
) -> anyhow::Result<LoginOutcome> {
    let client = connect_tls(addr, tls).await?;
    let attempt = tokio::time::timeout(
        COMMAND_TIMEOUT,
        client.authenticate("XOAUTH2", XOAuth2::new(user, token)),
    )
    .await
    .context("timed out in AUTHENTICATE")?;
    match attempt {
        Ok(session) => Ok(LoginOutcome::LoggedIn(Box::new(session))),
        Err((async_imap::error::Error::No(text), _)) => {
            Ok(LoginOutcome::Refused(server_text("NO", &text)))
        }
        Err((async_imap::error::Error::Bad(text), _)) => {
            Ok(LoginOutcome::Refused(server_text("BAD", &text)))
        }
        Err((error, _)) => Err(error).context("AUTHENTICATE failed unexpectedly"),
    }
}

/// async-imap renders a tagged NO as `code: …, info: Some("…")`; this gives back the
/// server's words, e.g. `NO [AUTHENTICATIONFAILED] Authentication failed.`.
fn server_text(status: &str, rendered: &str) -> String {
    let info = rendered
        .split_once("info: Some(\"")
        .and_then(|(_, rest)| rest.rsplit_once("\")"))
        .map_or(rendered, |(info, _)| info);
    format!("{status} {info}")
}

/// A folder as listed, with its message count from EXAMINE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FolderCount {
    /// The name exactly as the server listed it (modified UTF-7).
    pub raw_name: String,
    /// The decoded name.
    pub display_name: String,
    /// Messages in it.
    pub messages: u32,
}

/// Lists every folder and EXAMINEs each (read-only) for its message count.
pub async fn folder_counts(session: &mut Session) -> anyhow::Result<Vec<FolderCount>> {
    use futures::TryStreamExt as _;
    let names: Vec<String> = tokio::time::timeout(COMMAND_TIMEOUT, async {
        let listed: Vec<async_imap::types::Name> = session
            .list(Some(""), Some("*"))
            .await?
            .try_collect()
            .await?;
        anyhow::Ok(listed.iter().map(|n| n.name().to_owned()).collect())
    })
    .await
    .context("timed out in LIST")??;
    let mut counts = Vec::new();
    for raw_name in names {
        let mailbox = tokio::time::timeout(COMMAND_TIMEOUT, session.examine(&raw_name))
            .await
            .context("timed out in EXAMINE")?
            .with_context(|| format!("EXAMINE {raw_name:?} failed"))?;
        let display_name = threatmail_core::mutf7::decode_lenient(raw_name.as_bytes())
            .unwrap_or_else(|| raw_name.clone());
        counts.push(FolderCount {
            raw_name,
            display_name,
            messages: mailbox.exists,
        });
    }
    Ok(counts)
}

/// Every message of `folder` (its raw name) as the server serves it: UID → `BODY.PEEK[]`
/// bytes (read-only: EXAMINE and PEEK change no flag).
pub async fn folder_bodies(
    session: &mut Session,
    folder: &str,
) -> anyhow::Result<std::collections::BTreeMap<u32, Vec<u8>>> {
    use futures::TryStreamExt as _;
    let mailbox = tokio::time::timeout(COMMAND_TIMEOUT, session.examine(folder))
        .await
        .context("timed out in EXAMINE")?
        .with_context(|| format!("EXAMINE {folder:?} failed"))?;
    let mut bodies = std::collections::BTreeMap::new();
    if mailbox.exists == 0 {
        return Ok(bodies);
    }
    let fetches: Vec<async_imap::types::Fetch> = tokio::time::timeout(COMMAND_TIMEOUT, async {
        session
            .uid_fetch("1:*", "(UID BODY.PEEK[])")
            .await?
            .try_collect()
            .await
    })
    .await
    .context("timed out in UID FETCH")?
    .with_context(|| format!("UID FETCH in {folder:?} failed"))?;
    for fetch in fetches {
        if let (Some(uid), Some(body)) = (fetch.uid, fetch.body()) {
            bodies.insert(uid, body.to_vec());
        }
    }
    Ok(bodies)
}
