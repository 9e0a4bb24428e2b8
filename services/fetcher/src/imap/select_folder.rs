//! Opening a folder: `EXAMINE` (read-only, so the sync never changes the mailbox) or
//! `SELECT` when an action after processing must change it, with UIDVALIDITY and UIDNEXT.

use std::time::Duration;

use super::command::run_tagged;
use super::{ImapError, Session};

/// What opening a folder tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FolderState {
    /// UIDVALIDITY (RFC 3501 §2.3.1.1): when it changes, earlier UIDs mean nothing.
    pub uidvalidity: u32,
    /// The UID the next message will get, when the server says (Exchange does).
    pub uidnext: Option<u32>,
    /// Messages in the folder.
    pub exists: u32,
}

/// Read-only or read-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `EXAMINE`.
    ReadOnly,
    /// `SELECT`, only for sources whose action after processing changes the mailbox.
    ReadWrite,
}

/// Opens `raw_name` (the server's name, sent back byte for byte, quoted).
pub async fn open(
    session: &mut Session,
    server: &str,
    user: &str,
    raw_name: &str,
    access: Access,
    limit: Duration,
) -> Result<FolderState, ImapError> {
    let (name, verb) = match access {
        Access::ReadOnly => ("EXAMINE", "EXAMINE"),
        Access::ReadWrite => ("SELECT", "SELECT"),
    };
    let command = format!("{verb} {}", quote(raw_name));
    let mut uidvalidity = None;
    let mut uidnext = None;
    let mut exists = 0;
    run_tagged(
        session,
        server,
        user,
        name,
        &command,
        limit,
        &mut |response| match response {
            imap_proto::Response::Data { outcome, .. } => match outcome.code {
                Some(imap_proto::ResponseCode::UidValidity(value)) => uidvalidity = Some(value),
                Some(imap_proto::ResponseCode::UidNext(value)) => uidnext = Some(value),
                _ => {}
            },
            imap_proto::Response::MailboxData(imap_proto::MailboxDatum::Exists(count)) => {
                exists = *count;
            }
            _ => {}
        },
    )
    .await?;
    // RFC 3501 makes UIDVALIDITY mandatory in the reply; without it no checkpoint can be
    // trusted, so the folder is not synced.
    let uidvalidity = uidvalidity.ok_or_else(|| ImapError::CommandFailed {
        server: server.to_owned(),
        command: name,
        text: format!("no UIDVALIDITY for {raw_name:?}"),
    })?;
    Ok(FolderState {
        uidvalidity,
        uidnext,
        exists,
    })
}

/// An IMAP quoted string (RFC 3501 §4.3): `"` and `\` escaped. Names with CR or LF cannot
/// be quoted and do not occur in LIST replies.
pub(crate) fn quote(name: &str) -> String {
    let mut quoted = String::with_capacity(name.len() + 2);
    quoted.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_escapes_quotes_and_backslashes() {
        assert_eq!(quote("INBOX"), "\"INBOX\"");
        assert_eq!(quote(r#"Say "hi""#), r#""Say \"hi\"""#);
        assert_eq!(quote(r"a\b"), r#""a\\b""#);
        assert_eq!(
            quote("&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-"),
            "\"&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-\""
        );
    }
}
