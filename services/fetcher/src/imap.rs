//! IMAP sessions as the fetcher runs them against Exchange Online (and any IMAP server).
//!
//! - [`connect`]: TCP and TLS with a hard timeout, then the greeting is read and checked
//!   before any command is sent (case BR-02: a client that sends AUTHENTICATE first can
//!   hang forever on Exchange, whose greeting arrives right after TLS).
//! - [`login`]: SASL XOAUTH2 with a bearer token (`password` sources use LOGIN), refusals
//!   typed so the registry can diagnose them.
//! - [`folders`]: LIST into a folder tree with modified UTF-7 names decoded for people and
//!   the server's raw names kept for commands.

pub mod actions;
pub(crate) mod command;
pub mod connect;
pub mod fetch;
pub mod folders;
pub mod login;
pub mod select_folder;
pub mod tolerant;

use std::time::Duration;

/// The stream every session runs on: TLS, or plain TCP where a source says so, with
/// capability lists mended before they are parsed ([`tolerant`], case BR-01).
pub type ImapStream = tolerant::Tolerant<connect::MaybeTls>;

/// A logged-in session.
pub type Session = async_imap::Session<ImapStream>;

/// Errors of an IMAP session, each naming the server.
#[derive(Debug, thiserror::Error)]
pub enum ImapError {
    /// TCP connect failed (refused, unreachable, DNS).
    #[error("failed to connect to {server}")]
    Connect {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// The TLS handshake failed, e.g. the certificate is not trusted or names another host.
    #[error("TLS handshake with {server} failed")]
    Tls {
        server: String,
        #[source]
        source: std::io::Error,
    },
    /// A step took longer than allowed.
    #[error("{server} did not answer within {after:?} ({step})")]
    Timeout {
        server: String,
        step: &'static str,
        after: Duration,
    },
    /// The server greeted with `* BYE`.
    #[error("{server} refused the connection in its greeting: {text}")]
    GreetingBye { server: String, text: String },
    /// The connection closed before a complete greeting.
    #[error("{server} closed the connection before its greeting")]
    ClosedBeforeGreeting { server: String },
    /// AUTHENTICATE or LOGIN was answered with NO or BAD.
    #[error("{server} refused the {mechanism} login for {user}: {text}")]
    LoginRefused {
        server: String,
        mechanism: &'static str,
        user: String,
        text: String,
    },
    /// Logged in, but the server will not open the mailbox (Exchange's
    /// `BAD User is authenticated but not connected.`).
    #[error(
        "{server} accepted the login for {user} but does not give access to the mailbox: {text}"
    )]
    NotConnected {
        server: String,
        user: String,
        text: String,
    },
    /// Exchange's throttling: `Request is throttled. Suggested Backoff Time: N milliseconds`.
    #[error("{server} is throttling this mailbox for {backoff:?}: {text}")]
    Throttled {
        server: String,
        backoff: Duration,
        text: String,
    },
    /// The session outlived its access token (`* BYE Session invalidated -
    /// AccessTokenExpired`); a new login with a fresh token continues.
    #[error("{server} ended the session because its access token expired: {text}")]
    TokenExpired { server: String, text: String },
    /// The server closed the connection with `* BYE`.
    #[error("{server} closed the connection: {text}")]
    Closed { server: String, text: String },
    /// A command was answered with NO or BAD.
    #[error("{server} answered {command} with: {text}")]
    CommandFailed {
        server: String,
        command: &'static str,
        text: String,
    },
    /// The server's response could not be read or parsed; the connection is not reused.
    #[error("failed to read the response of {server} to {step}")]
    Protocol {
        server: String,
        step: &'static str,
        #[source]
        source: async_imap::error::Error,
    },
}

impl ImapError {
    /// A stable, machine-readable name of the failure, for gRPC statuses and status pages.
    pub fn reason(&self) -> &'static str {
        match self {
            ImapError::Connect { .. } => "imap.unreachable",
            ImapError::Tls { .. } => "imap.tls_failed",
            ImapError::Timeout { .. } => "imap.timeout",
            ImapError::GreetingBye { .. } | ImapError::ClosedBeforeGreeting { .. } => {
                "imap.greeting_refused"
            }
            ImapError::LoginRefused { .. } => "imap.authenticate_failed",
            ImapError::NotConnected { .. } => "imap.not_connected",
            ImapError::Throttled { .. } => "imap.throttled",
            ImapError::TokenExpired { .. } => "imap.token_expired",
            ImapError::Closed { .. } => "imap.closed",
            ImapError::CommandFailed { .. } => "imap.command_failed",
            // A dropped connection (a reset, a broken pipe, EOF) is the network's, not a
            // response that could not be parsed.
            ImapError::Protocol {
                source: async_imap::error::Error::Io(_) | async_imap::error::Error::ConnectionLost,
                ..
            } => "imap.connection_lost",
            ImapError::Protocol { .. } => "imap.protocol_error",
        }
    }
}

/// `BAD User is authenticated but not connected.` is how Exchange Online says a login was
/// accepted but the mailbox cannot be opened (no FullAccess, wrong `user=`, too many
/// connections); matched loosely since the wording is the only signal.
pub(crate) fn is_not_connected(text: &str) -> bool {
    text.to_ascii_lowercase()
        .contains("authenticated but not connected")
}

/// async-imap renders a tagged NO/BAD as `code: …, info: Some("…")`; this gives back the
/// server's own words.
pub(crate) fn server_text(rendered: &str) -> String {
    rendered
        .split_once("info: Some(\"")
        .and_then(|(_, rest)| rest.rsplit_once("\")"))
        .map_or(rendered, |(info, _)| info)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_text_unwraps_async_imap_rendering() {
        assert_eq!(
            server_text(r#"code: None, info: Some("AUTHENTICATE failed.")"#),
            "AUTHENTICATE failed."
        );
        assert_eq!(server_text("plain words"), "plain words");
    }

    #[test]
    fn a_dropped_connection_is_no_protocol_error() {
        let protocol = |source| ImapError::Protocol {
            server: "imap.example.com:993".to_owned(),
            step: "UID FETCH",
            source,
        };
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert_eq!(
            protocol(async_imap::error::Error::Io(pipe)).reason(),
            "imap.connection_lost"
        );
        assert_eq!(
            protocol(async_imap::error::Error::ConnectionLost).reason(),
            "imap.connection_lost"
        );
        assert_eq!(
            protocol(async_imap::error::Error::Bad("x".to_owned())).reason(),
            "imap.protocol_error"
        );
    }

    #[test]
    fn not_connected_is_recognised_in_any_case() {
        assert!(is_not_connected("User is authenticated but not connected."));
        assert!(is_not_connected("USER IS AUTHENTICATED BUT NOT CONNECTED"));
        assert!(!is_not_connected("AUTHENTICATE failed."));
    }
}
