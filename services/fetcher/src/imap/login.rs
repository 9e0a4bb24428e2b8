//! Logging in: SASL XOAUTH2 with a bearer token, or LOGIN with a password.

use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};

use super::ImapStream;
use super::{ImapError, Session, is_not_connected, server_text};

/// How a session logs in.
pub enum Credentials {
    /// SASL XOAUTH2: `user` is the mailbox address (the shared mailbox's for a shared
    /// mailbox), `token` an Entra access token for Exchange Online.
    XOAuth2 { user: String, token: SecretString },
    /// IMAP LOGIN, for `password` sources on other servers.
    Password {
        user: String,
        password: SecretString,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::XOAuth2 { user, .. } => f
                .debug_struct("XOAuth2")
                .field("user", user)
                .finish_non_exhaustive(),
            Credentials::Password { user, .. } => f
                .debug_struct("Password")
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

impl Credentials {
    /// The mailbox logged in to.
    pub fn user(&self) -> &str {
        match self {
            Credentials::XOAuth2 { user, .. } | Credentials::Password { user, .. } => user,
        }
    }
}

/// The XOAUTH2 initial client response (Microsoft's "Authenticate an IMAP connection using
/// OAuth"): `user=<mailbox>^Aauth=Bearer <token>^A^A`, base64-encoded by async-imap.
struct XOAuth2<'a> {
    user: &'a str,
    token: &'a SecretString,
}

impl async_imap::Authenticator for XOAuth2<'_> {
    type Response = String;

    fn process(&mut self, challenge: &[u8]) -> Self::Response {
        if challenge.is_empty() {
            format!(
                "user={}\x01auth=Bearer {}\x01\x01",
                self.user,
                self.token.expose_secret()
            )
        } else {
            // RFC 7628 §3.2.3: after an error challenge the client sends an empty response
            // and the server ends the exchange with a tagged NO.
            String::new()
        }
    }
}

/// Logs `client` in, within `limit`.
pub async fn login(
    client: async_imap::Client<ImapStream>,
    credentials: &Credentials,
    server: &str,
    limit: Duration,
) -> Result<Session, ImapError> {
    let (mechanism, attempt) = match credentials {
        Credentials::XOAuth2 { user, token } => (
            "XOAUTH2",
            tokio::time::timeout(
                limit,
                client.authenticate("XOAUTH2", XOAuth2 { user, token }),
            )
            .await,
        ),
        Credentials::Password { user, password } => (
            "LOGIN",
            tokio::time::timeout(limit, client.login(user, password.expose_secret())).await,
        ),
    };
    let user = credentials.user().to_owned();
    match attempt {
        Err(_) => Err(ImapError::Timeout {
            server: server.to_owned(),
            step: "login",
            after: limit,
        }),
        Ok(Ok(session)) => Ok(session),
        Ok(Err((async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text), _))) => {
            let text = server_text(&text);
            if is_not_connected(&text) {
                Err(ImapError::NotConnected {
                    server: server.to_owned(),
                    user,
                    text,
                })
            } else {
                Err(ImapError::LoginRefused {
                    server: server.to_owned(),
                    mechanism,
                    user,
                    text,
                })
            }
        }
        Ok(Err((source, _))) => Err(ImapError::Protocol {
            server: server.to_owned(),
            step: "login",
            source,
        }),
    }
}
