//! Running one IMAP command and reading its responses up to the tagged completion, with
//! the completion's status checked.
//!
//! async-imap's typed helpers (`list`, `uid_fetch`) end their streams at the tagged reply
//! without looking at its status, so `NO Request is throttled…` or `BAD User is
//! authenticated but not connected.` would read as "nothing there". Every command whose
//! result the sync trusts goes through [`run_tagged`] instead.

use std::time::Duration;

use super::{ImapError, Session, is_not_connected};

/// What a command's responses are handed to, one at a time.
pub(crate) type OnResponse<'a> = &'a mut (dyn FnMut(&imap_proto::Response<'_>) + Send);

/// Sends `command` and feeds every untagged response to `each` until the tagged
/// completion; a NO or BAD completion, or a BYE, becomes a typed error.
pub(crate) async fn run_tagged(
    session: &mut Session,
    server: &str,
    user: &str,
    name: &'static str,
    command: &str,
    limit: Duration,
    each: OnResponse<'_>,
) -> Result<(), ImapError> {
    let work = async {
        let protocol = |source| ImapError::Protocol {
            server: server.to_owned(),
            step: name,
            source,
        };
        let tag = session.run_command(command).await.map_err(protocol)?;
        loop {
            let Some(response) = session
                .read_response()
                .await
                .map_err(|e| protocol(async_imap::error::Error::Io(e)))?
            else {
                return Err(protocol(async_imap::error::Error::ConnectionLost));
            };
            match response.parsed() {
                imap_proto::Response::Done {
                    tag: done,
                    status,
                    outcome,
                } if *done == tag => {
                    let text = outcome
                        .information
                        .as_deref()
                        .unwrap_or_default()
                        .to_owned();
                    return match status {
                        imap_proto::Status::Ok => Ok(()),
                        _ => Err(refusal(server, user, name, text)),
                    };
                }
                imap_proto::Response::Data {
                    status: imap_proto::Status::Bye,
                    outcome,
                } => {
                    // The session is over: Exchange sends `* BYE Session invalidated -
                    // AccessTokenExpired` and then never completes the command in flight,
                    // so waiting for the tagged reply would only run into the timeout.
                    let text = outcome
                        .information
                        .as_deref()
                        .unwrap_or_default()
                        .to_owned();
                    return Err(closed(server, text));
                }
                other => each(other),
            }
        }
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(ImapError::Timeout {
            server: server.to_owned(),
            step: name,
            after: limit,
        }),
    }
}

fn closed(server: &str, text: String) -> ImapError {
    if text.contains("AccessTokenExpired") {
        ImapError::TokenExpired {
            server: server.to_owned(),
            text,
        }
    } else {
        ImapError::Closed {
            server: server.to_owned(),
            text,
        }
    }
}

fn refusal(server: &str, user: &str, name: &'static str, text: String) -> ImapError {
    if let Some(backoff) = throttle_backoff(&text) {
        ImapError::Throttled {
            server: server.to_owned(),
            backoff,
            text,
        }
    } else if is_not_connected(&text) {
        ImapError::NotConnected {
            server: server.to_owned(),
            user: user.to_owned(),
            text,
        }
    } else if text.contains("Invalid state") {
        // Exchange's answer to every command after `* BYE Session invalidated -
        // AccessTokenExpired`.
        ImapError::TokenExpired {
            server: server.to_owned(),
            text,
        }
    } else {
        ImapError::CommandFailed {
            server: server.to_owned(),
            command: name,
            text,
        }
    }
}

/// Exchange's `Request is throttled. Suggested Backoff Time: N milliseconds`.
pub(crate) fn throttle_backoff(text: &str) -> Option<Duration> {
    let lower = text.to_ascii_lowercase();
    if !lower.contains("throttled") {
        return None;
    }
    let after = lower.split("backoff time:").nth(1)?;
    let digits: String = after
        .trim_start()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let millis: u64 = digits.parse().ok()?;
    Some(Duration::from_millis(millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_texts_give_their_backoff() {
        for (text, expected) in [
            (
                "Request is throttled. Suggested Backoff Time: 89000 milliseconds",
                Some(89_000),
            ),
            (
                "request is throttled. suggested backoff time:5 milliseconds",
                Some(5),
            ),
            ("Request is throttled.", None),
            ("AUTHENTICATE failed.", None),
        ] {
            assert_eq!(
                throttle_backoff(text).map(|d| d.as_millis() as u64),
                expected,
                "{text}"
            );
        }
    }

    #[test]
    fn refusals_are_typed_by_what_exchange_says() {
        let typed = |text: &str| refusal("s", "u", "UID FETCH", text.to_owned()).reason();
        assert_eq!(
            typed("Request is throttled. Suggested Backoff Time: 10 milliseconds"),
            "imap.throttled"
        );
        assert_eq!(
            typed("User is authenticated but not connected."),
            "imap.not_connected"
        );
        assert_eq!(
            typed("Command received in Invalid state."),
            "imap.token_expired"
        );
        assert_eq!(typed("Some other failure"), "imap.command_failed");
        assert_eq!(
            closed("s", "Session invalidated - AccessTokenExpired".into()).reason(),
            "imap.token_expired"
        );
        assert_eq!(
            closed("s", "Connection closed. 14".into()).reason(),
            "imap.closed"
        );
    }
}
