//! Actions after processing on a folder opened with `SELECT`: `\Seen` set, or messages
//! moved to another folder. Every command is read to its tagged status with the command
//! timeout ([`run_tagged`]).
//!
//! A move is `UID MOVE` (RFC 6851) where the server has it (Exchange Online and Dovecot
//! do), else `UID COPY`, `UID STORE +FLAGS.SILENT (\Deleted)` and `UID EXPUNGE` (RFC 4315
//! UIDPLUS) of exactly those UIDs; never a plain `EXPUNGE`, which would also remove
//! messages other clients marked deleted.

use std::time::Duration;

use super::command::run_tagged;
use super::select_folder::quote;
use super::{ImapError, Session};

/// What the server offers for moving messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MoveSupport {
    /// `MOVE` (RFC 6851).
    pub r#move: bool,
    /// `UIDPLUS` (RFC 4315), for `UID EXPUNGE`.
    pub uidplus: bool,
}

/// Asks the server for its capabilities (`CAPABILITY`) and tells what it offers for moves.
pub async fn move_support(
    session: &mut Session,
    server: &str,
    user: &str,
    limit: Duration,
) -> Result<MoveSupport, ImapError> {
    let mut support = MoveSupport::default();
    run_tagged(
        session,
        server,
        user,
        "CAPABILITY",
        "CAPABILITY",
        limit,
        &mut |response| {
            if let imap_proto::Response::Capabilities(capabilities) = response {
                for capability in capabilities {
                    if let imap_proto::Capability::Atom(atom) = capability {
                        if atom.eq_ignore_ascii_case("MOVE") {
                            support.r#move = true;
                        } else if atom.eq_ignore_ascii_case("UIDPLUS") {
                            support.uidplus = true;
                        }
                    }
                }
            }
        },
    )
    .await?;
    Ok(support)
}

/// `UID SEARCH <criteria>`: the UIDs found, ascending.
pub async fn uid_search(
    session: &mut Session,
    server: &str,
    user: &str,
    criteria: &str,
    limit: Duration,
) -> Result<Vec<u32>, ImapError> {
    let mut uids = Vec::new();
    run_tagged(
        session,
        server,
        user,
        "UID SEARCH",
        &format!("UID SEARCH {criteria}"),
        limit,
        &mut |response| {
            if let imap_proto::Response::MailboxData(imap_proto::MailboxDatum::Search(found)) =
                response
            {
                uids.extend_from_slice(found);
            }
        },
    )
    .await?;
    uids.sort_unstable();
    uids.dedup();
    Ok(uids)
}

/// Sets `\Seen` on `uids` (`UID STORE … +FLAGS.SILENT (\Seen)`); other flags stay.
pub async fn mark_seen(
    session: &mut Session,
    server: &str,
    user: &str,
    uids: &[u32],
    limit: Duration,
) -> Result<(), ImapError> {
    let Some(set) = uid_set(uids) else {
        return Ok(());
    };
    let command = format!("UID STORE {set} +FLAGS.SILENT (\\Seen)");
    run_tagged(
        session,
        server,
        user,
        "UID STORE",
        &command,
        limit,
        &mut |_| {},
    )
    .await
}

/// Moves `uids` to `target` (its raw name): `UID MOVE`, or `UID COPY` + `UID STORE
/// +FLAGS.SILENT (\Deleted)` + `UID EXPUNGE` of exactly those UIDs.
pub async fn move_to(
    session: &mut Session,
    server: &str,
    user: &str,
    uids: &[u32],
    target: &str,
    support: MoveSupport,
    limit: Duration,
) -> Result<(), ImapError> {
    let Some(set) = uid_set(uids) else {
        return Ok(());
    };
    let target = quote(target);
    if support.r#move {
        let command = format!("UID MOVE {set} {target}");
        return run_tagged(
            session,
            server,
            user,
            "UID MOVE",
            &command,
            limit,
            &mut |_| {},
        )
        .await;
    }
    if !support.uidplus {
        return Err(ImapError::CommandFailed {
            server: server.to_owned(),
            command: "UID MOVE",
            text: "the server offers neither MOVE nor UIDPLUS, so messages cannot be moved \
                   without expunging other clients' deleted mail"
                .to_owned(),
        });
    }
    let copy = format!("UID COPY {set} {target}");
    run_tagged(session, server, user, "UID COPY", &copy, limit, &mut |_| {}).await?;
    let delete = format!("UID STORE {set} +FLAGS.SILENT (\\Deleted)");
    run_tagged(
        session,
        server,
        user,
        "UID STORE",
        &delete,
        limit,
        &mut |_| {},
    )
    .await?;
    let expunge = format!("UID EXPUNGE {set}");
    run_tagged(
        session,
        server,
        user,
        "UID EXPUNGE",
        &expunge,
        limit,
        &mut |_| {},
    )
    .await
}

/// A UID set of ranges (`1:3,7,9:10`), or `None` when there is nothing.
pub(crate) fn uid_set(uids: &[u32]) -> Option<String> {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut iter = sorted.into_iter();
    let first = iter.next()?;
    let (mut start, mut end) = (first, first);
    let mut push = |start: u32, end: u32| {
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}:{end}")
        });
    };
    for uid in iter {
        if uid == end.saturating_add(1) {
            end = uid;
        } else {
            push(start, end);
            (start, end) = (uid, uid);
        }
    }
    push(start, end);
    Some(parts.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_ranges() {
        assert_eq!(uid_set(&[]), None);
        assert_eq!(uid_set(&[5]).as_deref(), Some("5"));
        assert_eq!(
            uid_set(&[3, 1, 2, 7, 9, 10, 10]).as_deref(),
            Some("1:3,7,9:10")
        );
        assert_eq!(
            uid_set(&[u32::MAX - 1, u32::MAX]).as_deref(),
            Some("4294967294:4294967295")
        );
    }
}
