//! One source's IMAP session as the scheduler uses it: a connection slot under the fleet's
//! per-mailbox cap, a token from the broker (XOAUTH2) or the source's password (LOGIN), TLS
//! and the login; reused across the source's folders and retired before its token expires.
//!
//! `NO` at AUTHENTICATE with a broker token gets one forced refresh (`force_refresh`, so
//! the broker asks Entra again instead of serving its cache) and one retry; a second
//! refusal is the user's to fix ([`SessionError::LoginRefused`] with `after_refresh`).

use std::sync::Arc;
use std::time::Duration;

use threatmail_source::record::{AuthType, RecordError};
use threatmail_source::{Keyring, SecretSlot, SourceRecord};
use tokio::time::Instant;

use crate::broker::{Broker, BrokerError};
use crate::connections::{ConnectionSlots, SlotError};
use crate::imap::connect::{Endpoint, connect};
use crate::imap::login::{Credentials, login};
use crate::imap::{ImapError, Session};

/// Errors of opening a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// Every connection slot of the mailbox is taken across the fleet.
    #[error("all {cap} connections to {mailbox} are in use across the fetchers; waiting")]
    CapReached { mailbox: String, cap: u32 },
    /// The slot could not be taken (Redis).
    #[error("failed to take a connection slot for {mailbox}")]
    Slot {
        mailbox: String,
        #[source]
        source: SlotError,
    },
    /// The fetcher has no service credential, so the broker cannot be asked.
    #[error(
        "source {source_id} uses ms-oauth2 but this fetcher has no service credential for the \
         token broker: set auth.credential_file"
    )]
    NoCredential { source_id: String },
    /// The fetcher has no master key, so a password cannot be opened.
    #[error(
        "source {source_id} logs in with a password but this fetcher has no master key to \
         open it: set master_key.key_file to the registry's keys"
    )]
    NoMasterKey { source_id: String },
    /// The source's password does not open or is missing.
    #[error("failed to open the password of source {source_id}")]
    Secret {
        source_id: String,
        #[source]
        source: RecordError,
    },
    /// The source has no password stored.
    #[error("source {source_id} has no password stored")]
    NoSecret { source_id: String },
    /// The broker gave no token.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The server refused the login; `after_refresh` when a forced refresh did not help.
    #[error("{source}")]
    LoginRefused {
        after_refresh: bool,
        #[source]
        source: ImapError,
    },
    /// Connect, TLS, greeting, or a login that failed other than by refusal.
    #[error(transparent)]
    Imap(ImapError),
}

/// What opening a session needs.
#[derive(Clone)]
pub struct SessionParts {
    /// Tokens; `None` when this fetcher has no service credential.
    pub broker: Option<Broker>,
    /// Opens passwords; `None` without a master key.
    pub keyring: Option<Arc<Keyring>>,
    /// The fleet's per-mailbox connection cap.
    pub slots: ConnectionSlots,
    /// Trust for IMAP servers.
    pub tls: Arc<rustls::ClientConfig>,
    /// Connect plus login.
    pub connect_timeout: Duration,
    /// Connections per mailbox across the fleet.
    pub cap: u32,
    /// How long a slot is held without being refreshed.
    pub slot_ttl: Duration,
    /// A session is closed after this.
    pub max_age: Duration,
    /// ... or this long before its token expires.
    pub retire_before_expiry: Duration,
    /// This fetcher's name.
    pub instance: String,
}

impl std::fmt::Debug for SessionParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionParts")
            .field("instance", &self.instance)
            .field("cap", &self.cap)
            .finish_non_exhaustive()
    }
}

/// A logged-in session of one source, holding a connection slot.
pub struct SourceSession {
    /// The IMAP session.
    pub session: Session,
    /// `host:port`.
    pub server: String,
    /// The mailbox.
    pub user: String,
    /// The connection slot's id.
    pub connection_id: String,
    retire_at: Instant,
}

impl std::fmt::Debug for SourceSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSession")
            .field("server", &self.server)
            .field("user", &self.user)
            .field("connection_id", &self.connection_id)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl SourceSession {
    /// Whether the session should be closed before it is used again (too old, or its token
    /// is about to expire and Exchange would end it mid-command).
    pub fn should_retire(&self) -> bool {
        Instant::now() >= self.retire_at
    }

    /// Refreshes the connection slot; `false` if the slot was lost and not taken back.
    pub async fn refresh_slot(&self, parts: &SessionParts) -> Result<bool, SlotError> {
        parts
            .slots
            .take_connection_slot(&self.user, &self.connection_id, parts.cap, parts.slot_ttl)
            .await
    }

    /// Logs out (bounded), closes the connection, then frees the slot (in that order, so
    /// the server never sees more connections than the cap).
    pub async fn close(self, parts: &SessionParts) {
        let SourceSession {
            mut session,
            user,
            connection_id,
            ..
        } = self;
        let _ = tokio::time::timeout(parts.connect_timeout, session.logout()).await;
        drop(session);
        release(parts, &user, &connection_id).await;
    }

    /// Closes the connection without talking to the server (it is broken), then frees the
    /// slot.
    pub async fn abandon(self, parts: &SessionParts) {
        let SourceSession {
            session,
            user,
            connection_id,
            ..
        } = self;
        drop(session);
        release(parts, &user, &connection_id).await;
    }
}

async fn release(parts: &SessionParts, mailbox: &str, connection_id: &str) {
    if let Err(error) = parts
        .slots
        .release_connection_slot(mailbox, connection_id)
        .await
    {
        tracing::warn!(error = %threatmail_core::error::chain(&error), "failed to free a connection slot; it lapses by itself");
    }
}

/// Opens a session for `record`: slot, credentials, connect, login (with one forced token
/// refresh after a refused XOAUTH2 login).
#[tracing::instrument(skip_all, fields(source_id = %record.id, mailbox = %record.username))]
pub async fn open(
    parts: &SessionParts,
    record: &SourceRecord,
) -> Result<SourceSession, SessionError> {
    let mailbox = record.username.clone();
    let connection_id = format!("{}:{}", parts.instance, uuid::Uuid::new_v4().simple());
    let taken = parts
        .slots
        .take_connection_slot(&mailbox, &connection_id, parts.cap, parts.slot_ttl)
        .await
        .map_err(|source| SessionError::Slot {
            mailbox: mailbox.clone(),
            source,
        })?;
    if !taken {
        return Err(SessionError::CapReached {
            mailbox,
            cap: parts.cap,
        });
    }
    match log_in(parts, record).await {
        Ok((session, token_expires_at)) => {
            let mut retire_at = Instant::now() + parts.max_age;
            if let Some(expires_at) = token_expires_at {
                let left = u64::try_from(expires_at.saturating_sub(unix_now())).unwrap_or(0);
                let usable = Duration::from_secs(left).saturating_sub(parts.retire_before_expiry);
                retire_at = retire_at.min(Instant::now() + usable);
            }
            Ok(SourceSession {
                session,
                server: endpoint(record).display(),
                user: mailbox,
                connection_id,
                retire_at,
            })
        }
        Err(error) => {
            release(parts, &mailbox, &connection_id).await;
            Err(error)
        }
    }
}

fn endpoint(record: &SourceRecord) -> Endpoint {
    Endpoint {
        host: record.imap_host().to_owned(),
        port: record.port,
        tls: record.tls,
    }
}

/// The session and, for a token login, the token's expiry (Unix seconds).
async fn log_in(
    parts: &SessionParts,
    record: &SourceRecord,
) -> Result<(Session, Option<i64>), SessionError> {
    let source_id = record.id.as_str().to_owned();
    match record.auth_type {
        AuthType::Password => {
            let keyring = parts
                .keyring
                .as_ref()
                .ok_or_else(|| SessionError::NoMasterKey {
                    source_id: source_id.clone(),
                })?;
            let password = record
                .open_secret(keyring, SecretSlot::Current)
                .map_err(|source| SessionError::Secret {
                    source_id: source_id.clone(),
                    source,
                })?
                .ok_or_else(|| SessionError::NoSecret {
                    source_id: source_id.clone(),
                })?;
            let credentials = Credentials::Password {
                user: record.username.clone(),
                password,
            };
            let session = connect_and_login(parts, record, &credentials)
                .await
                .map_err(|error| refused_or_failed(error, false))?;
            Ok((session, None))
        }
        AuthType::MsOauth2 => {
            let broker = parts
                .broker
                .as_ref()
                .ok_or_else(|| SessionError::NoCredential {
                    source_id: source_id.clone(),
                })?;
            // Ask for a token that outlives the retirement margin, so a session never
            // starts with a token Exchange is about to reject.
            let min_validity = parts
                .retire_before_expiry
                .saturating_mul(2)
                .max(Duration::from_secs(1));
            let token = broker.token(&source_id, min_validity, false).await?;
            let first_expiry = token.expires_at;
            let credentials = Credentials::XOAuth2 {
                user: record.username.clone(),
                token: token.secret,
            };
            match connect_and_login(parts, record, &credentials).await {
                Ok(session) => Ok((session, Some(first_expiry))),
                Err(ImapError::LoginRefused { .. }) => {
                    tracing::info!("login refused; retrying once with a freshly issued token");
                    let token = broker.token(&source_id, min_validity, true).await?;
                    let expires_at = token.expires_at;
                    let credentials = Credentials::XOAuth2 {
                        user: record.username.clone(),
                        token: token.secret,
                    };
                    let session = connect_and_login(parts, record, &credentials)
                        .await
                        .map_err(|error| refused_or_failed(error, true))?;
                    Ok((session, Some(expires_at)))
                }
                Err(error) => Err(refused_or_failed(error, false)),
            }
        }
    }
}

fn refused_or_failed(error: ImapError, after_refresh: bool) -> SessionError {
    match error {
        ImapError::LoginRefused { .. } | ImapError::NotConnected { .. } => {
            SessionError::LoginRefused {
                after_refresh,
                source: error,
            }
        }
        other => SessionError::Imap(other),
    }
}

async fn connect_and_login(
    parts: &SessionParts,
    record: &SourceRecord,
    credentials: &Credentials,
) -> Result<Session, ImapError> {
    let endpoint = endpoint(record);
    let server = endpoint.display();
    let started = Instant::now();
    let client = connect(&endpoint, parts.tls.clone(), parts.connect_timeout).await?;
    // One budget for connect and login together.
    let left = parts
        .connect_timeout
        .saturating_sub(started.elapsed())
        .max(Duration::from_millis(1));
    login(client, credentials, &server, left).await
}
