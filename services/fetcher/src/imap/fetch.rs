//! Fetching new messages: sizes first (`UID FETCH n:* (UID RFC822.SIZE)`), then bodies in
//! bounded batches with `BODY.PEEK[]` (so `\Seen` is never set) and a hard byte cap.
//!
//! Exchange's RFC822.SIZE is an estimate (it renders MIME on the fly), so the size check
//! alone cannot bound memory. Bodies are asked for as `BODY.PEEK[]<0.cap+1>`: the server
//! never sends more than cap + 1 bytes, and a body of cap + 1 bytes is known to be over it.

use std::time::Duration;

use super::command::run_tagged;
use super::{ImapError, Session};

/// A message's UID and its announced size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Announced {
    /// The UID.
    pub uid: u32,
    /// RFC822.SIZE as the server announces it.
    pub size: u64,
}

/// The UIDs of messages with UID >= `from` and their sizes, in UID order.
///
/// `n:*` also matches the largest UID when every UID is below `n` (RFC 3501 §6.4.8), so
/// results below `from` are dropped.
pub async fn announced_since(
    session: &mut Session,
    server: &str,
    user: &str,
    from: u32,
    limit: Duration,
) -> Result<Vec<Announced>, ImapError> {
    let command = format!("UID FETCH {from}:* (UID RFC822.SIZE)");
    let mut found = Vec::new();
    run_tagged(
        session,
        server,
        user,
        "UID FETCH",
        &command,
        limit,
        &mut |response| {
            if let imap_proto::Response::Fetch(_, attributes) = response {
                let mut uid = None;
                let mut size = None;
                for attribute in attributes {
                    match attribute {
                        imap_proto::AttributeValue::Uid(value) => uid = Some(*value),
                        imap_proto::AttributeValue::Rfc822Size(value) => {
                            size = Some(u64::from(*value))
                        }
                        _ => {}
                    }
                }
                if let (Some(uid), Some(size)) = (uid, size) {
                    found.push(Announced { uid, size });
                }
            }
        },
    )
    .await?;
    found.retain(|m| m.uid >= from);
    found.sort_by_key(|m| m.uid);
    found.dedup_by_key(|m| m.uid);
    Ok(found)
}

/// A fetched body, or the fact that it is over the cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// The whole message.
    Complete(Vec<u8>),
    /// More than the cap; nothing beyond cap + 1 bytes was read.
    OverCap,
}

/// Fetches the bodies of `uids` (one command), each read only up to `cap` + 1 bytes.
/// Returns (uid, body) in UID order; a UID the server no longer has is missing.
pub async fn bodies(
    session: &mut Session,
    server: &str,
    user: &str,
    uids: &[u32],
    cap: u64,
    limit: Duration,
) -> Result<Vec<(u32, Body)>, ImapError> {
    if uids.is_empty() {
        return Ok(Vec::new());
    }
    let set = uids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let command = format!(
        "UID FETCH {set} (UID BODY.PEEK[]<0.{}>)",
        cap.saturating_add(1)
    );
    let mut found = Vec::with_capacity(uids.len());
    run_tagged(
        session,
        server,
        user,
        "UID FETCH",
        &command,
        limit,
        &mut |response| {
            if let imap_proto::Response::Fetch(_, attributes) = response {
                let mut uid = None;
                let mut body = None;
                for attribute in attributes {
                    match attribute {
                        imap_proto::AttributeValue::Uid(value) => uid = Some(*value),
                        imap_proto::AttributeValue::BodySection {
                            section: None,
                            data: Some(data),
                            ..
                        } => body = Some(data.as_ref()),
                        _ => {}
                    }
                }
                if let (Some(uid), Some(body)) = (uid, body) {
                    let body = if body.len() as u64 > cap {
                        Body::OverCap
                    } else {
                        Body::Complete(body.to_vec())
                    };
                    found.push((uid, body));
                }
            }
        },
    )
    .await?;
    found.sort_by_key(|(uid, _)| *uid);
    found.dedup_by_key(|(uid, _)| *uid);
    Ok(found)
}
