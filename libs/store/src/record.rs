//! What is stored per message: the record (the parse result and its identity, written once),
//! its summary for lists, where it was seen, and the analyst's state, kept apart so that a
//! re-ingest never touches it.

use std::fmt;

use serde::{Deserialize, Serialize};
use threatmail_parse::{IndicatorKind, ParsedMessage, Tlp};
use threatmail_source::SourceId;

/// The layout version written in every record.
pub const RECORD_SCHEMA: u32 = 1;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// Not 32 lower-case hex digits.
    #[error("failed to read message id {0:?}: expected 32 lower-case hex digits")]
    InvalidId(String),
    /// Not `<source id>/<message id>`.
    #[error("failed to read message reference {0:?}: expected <source id>/<message id>")]
    InvalidRef(String),
}

/// A record's id within its source: 128 bits of a SHA-256 over the source and the
/// message's identity (DESIGN §4), as 32 lower-case hex digits. The same mail always gets
/// the same id, however often and wherever it is written.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MessageId(String);

impl MessageId {
    /// Checks `text`.
    pub fn from_hex(text: &str) -> Result<Self, RecordError> {
        if text.len() == 32 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(MessageId(text.to_owned()))
        } else {
            Err(RecordError::InvalidId(text.to_owned()))
        }
    }

    /// The hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for MessageId {
    type Error = RecordError;

    fn try_from(text: String) -> Result<Self, RecordError> {
        MessageId::from_hex(&text)
    }
}

impl From<MessageId> for String {
    fn from(id: MessageId) -> String {
        id.0
    }
}

/// A record anywhere: its source and its id, written `<source id>/<message id>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageRef {
    /// The source.
    pub source_id: SourceId,
    /// The record within it.
    pub id: MessageId,
}

impl MessageRef {
    /// Reads `<source id>/<message id>`.
    pub fn parse(text: &str) -> Result<Self, RecordError> {
        let invalid = || RecordError::InvalidRef(text.to_owned());
        let (source, id) = text.split_once('/').ok_or_else(invalid)?;
        Ok(MessageRef {
            source_id: SourceId::parse(source).map_err(|_| invalid())?,
            id: MessageId::from_hex(id).map_err(|_| invalid())?,
        })
    }
}

impl fmt::Display for MessageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.source_id, self.id)
    }
}

/// The ingested record: written once when a message is first stored, never rewritten.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// [`RECORD_SCHEMA`].
    pub schema: u32,
    /// The source.
    pub source_id: SourceId,
    /// The record's id.
    pub id: MessageId,
    /// SHA-256 of the raw bytes first stored (the blob's name), lower-case hex.
    pub sha256: String,
    /// The Message-ID + Date + From identity hash, when the message has a Message-ID.
    pub header_identity: Option<String>,
    /// Size of the raw bytes first stored.
    pub size: u64,
    /// When it was first stored (Unix ms).
    pub ingested_at_ms: i64,
    /// The time it is sorted and filtered by (Unix ms): its `Date`, or `ingested_at_ms`
    /// when it has none or a later one.
    pub sort_ms: i64,
    /// The parse result, without the decoded bodies (see [`strip_bodies`]): those are the raw
    /// message's, and [`Store::get_with_bodies`](crate::Store::get_with_bodies) decodes them
    /// again from the blob.
    pub parsed: ParsedMessage,
}

/// Removes the decoded text and HTML bodies from `record` and every attached message in
/// it. They are most of a parse result's size and already in the raw blob; keeping them out
/// of Redis keeps each write's script small.
pub fn strip_bodies(record: &mut threatmail_parse::MessageRecord) {
    record.text_bodies.clear();
    record.html_bodies.clear();
    for attachment in &mut record.attachments {
        if let Some(nested) = attachment.message.as_deref_mut() {
            strip_bodies(nested);
        }
    }
}

/// What a list shows of a record, stored beside it so listing never reads the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// `Subject`.
    pub subject: Option<String>,
    /// `From` as written (`Name <address>`), for display.
    pub from_display: Option<String>,
    /// The `From` and `Sender` addresses, lower case.
    pub senders: Vec<String>,
    /// `Date` as the parser gave it (RFC 3339).
    pub date: Option<String>,
    /// The sort time (Unix ms).
    pub sort_ms: i64,
    /// When it was first stored (Unix ms).
    pub ingested_at_ms: i64,
    /// Number of distinct indicators found in what the message says (subject, bodies,
    /// attachments, attached messages' senders; not the top-level transport headers, which
    /// name relays, ours among them).
    pub indicator_count: u32,
    /// The kinds of those indicators.
    pub indicator_kinds: Vec<IndicatorKind>,
    /// The most restrictive TLP marking found in the message.
    pub tlp: Option<Tlp>,
    /// Raw size in bytes.
    pub size: u64,
    /// Number of attachments (at the top level).
    pub attachment_count: u32,
    /// Number of parse warnings.
    pub warning_count: u32,
    /// SHA-256 of the raw bytes first stored.
    pub sha256: String,
}

/// Where a record was seen: one IMAP message.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Location {
    /// The folder's raw (modified UTF-7) name.
    pub folder: String,
    /// The folder's UIDVALIDITY then.
    pub uidvalidity: u32,
    /// The message's UID.
    pub uid: u32,
    /// SHA-256 of the bytes served there (differs from the record's for a re-rendered copy).
    pub sha256: String,
    /// When it was seen there first (Unix ms).
    pub seen_at_ms: i64,
}

/// What analysts noted about a message; never written by ingest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnalystState {
    /// Opened by an analyst.
    pub read: bool,
    /// Starred.
    pub starred: bool,
    /// Reviewed.
    pub reviewed: bool,
    /// The review comment.
    pub comment: Option<String>,
    /// When it last changed (Unix ms), 0 if never.
    pub updated_at_ms: i64,
    /// Who changed it last (the caller's name), empty if never.
    pub updated_by: String,
}

/// A change to the analyst state; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StateChange {
    /// Set `read`.
    pub read: Option<bool>,
    /// Set `starred`.
    pub starred: Option<bool>,
    /// Set `reviewed`.
    pub reviewed: Option<bool>,
    /// Set the comment (an empty string clears it).
    pub comment: Option<String>,
}

/// Everything stored about one message.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredMessage {
    /// Which.
    pub message: MessageRef,
    /// The record.
    pub record: StoredRecord,
    /// Its summary.
    pub summary: Summary,
    /// Where it was seen, in order.
    pub locations: Vec<Location>,
    /// The analyst's state.
    pub state: AnalystState,
}

/// The summary of a parse result.
pub(crate) fn summarise(
    parsed: &ParsedMessage,
    senders: Vec<String>,
    sha256: &str,
    sort_ms: i64,
    ingested_at_ms: i64,
) -> Summary {
    let message = &parsed.message;
    let from_display = message.from.first().map(|address| {
        match (address.name.as_deref(), address.address.as_deref()) {
            (Some(name), Some(addr)) if !name.is_empty() => format!("{name} <{addr}>"),
            (_, Some(addr)) => addr.to_owned(),
            (Some(name), None) => name.to_owned(),
            (None, None) => String::new(),
        }
    });
    let in_content = || parsed.indicators.iter().filter(|i| i.in_key_scope());
    let mut kinds: Vec<IndicatorKind> = in_content().map(|i| i.kind).collect();
    kinds.sort();
    kinds.dedup();
    Summary {
        subject: message.subject.clone(),
        from_display,
        senders,
        date: message.date.clone(),
        sort_ms,
        ingested_at_ms,
        indicator_count: u32::try_from(in_content().count()).unwrap_or(u32::MAX),
        indicator_kinds: kinds,
        tlp: parsed.tlp,
        size: parsed.size,
        attachment_count: u32::try_from(message.attachments.len()).unwrap_or(u32::MAX),
        warning_count: u32::try_from(parsed.warnings.len()).unwrap_or(u32::MAX),
        sha256: sha256.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn references_read_back() {
        let text = "src-1/0123456789abcdef0123456789abcdef";
        let parsed = MessageRef::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        for bad in [
            "src-1",
            "src-1/0123",
            "a b/0123456789abcdef0123456789abcdef",
            "src-1/0123456789ABCDEF0123456789ABCDEF",
        ] {
            assert!(MessageRef::parse(bad).is_err(), "{bad}");
        }
    }

    /// The relays of the transport headers are not what a message says: they are left out
    /// of its count and kinds (a `--type ipv4` filter would match every message otherwise).
    #[test]
    fn the_summary_counts_indicators_in_content() {
        let raw = b"Received: from mx.relay.example.net (mx.relay.example.net [198.51.100.7])\r\n\tby mail.example.com\r\nFrom: a@example.com\r\nSubject: see evil.example.org\r\n\r\nno indicator here\r\n";
        let parsed = threatmail_parse::parse_message(raw);
        assert!(
            parsed.indicators.iter().any(|i| i.value == "198.51.100.7"),
            "{:?}",
            parsed.indicators
        );
        let summary = summarise(&parsed, Vec::new(), "00", 0, 0);
        assert_eq!(summary.indicator_count, 1, "{:?}", parsed.indicators);
        assert_eq!(summary.indicator_kinds, vec![IndicatorKind::Domain]);
    }
}
