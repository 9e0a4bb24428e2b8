//! A message's identity within a source (DESIGN §4): the SHA-256 of its raw bytes, and,
//! because Exchange renders MIME on the fly and may serve a re-rendered copy (headers
//! refolded, line ends changed) after a UIDVALIDITY change, also its Message-ID with its
//! Date and From, normalised so that such a copy has the same one.
//!
//! The record id derives from the identity alone: from the header identity when the
//! message has a Message-ID, else from the SHA-256. So every copy of one mail gets the same
//! id without asking Redis, and the outbox can re-emit it any number of times under that id.

use sha2::{Digest as _, Sha256};
use threatmail_parse::{Address, MessageRecord};
use threatmail_source::SourceId;

use crate::record::MessageId;
use crate::time::parse_rfc3339_ms;

/// The identity of one raw message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// SHA-256 of the raw bytes, lower-case hex.
    pub sha256: String,
    /// Hash of the normalised Message-ID, Date and From, when there is a Message-ID.
    pub header: Option<String>,
}

impl Identity {
    /// The identity of `raw`, parsed as `record`.
    pub fn of(raw: &[u8], record: &MessageRecord) -> Self {
        Identity {
            sha256: sha256_hex(raw),
            header: header_identity(record),
        }
    }

    /// The record id this identity gets in `source`.
    pub fn message_id(&self, source: &SourceId) -> MessageId {
        let basis = match &self.header {
            Some(header) => format!("hdr:{header}"),
            None => format!("sha:{}", self.sha256),
        };
        let digest = Sha256::digest(format!("tm-msg-v1\n{}\n{basis}", source.as_str()));
        // 32 lower-case hex digits are a valid id by construction.
        MessageId::from_hex(&hex::encode(&digest[..16]))
            .unwrap_or_else(|_| unreachable!("hex of 16 bytes is 32 lower-case hex digits"))
    }
}

/// SHA-256 of `bytes`, lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The normalised `Message-ID`: angle brackets and any whitespace (folding) removed.
pub fn normalise_message_id(message_id: &str) -> Option<String> {
    let id: String = message_id
        .chars()
        .filter(|c| !c.is_whitespace() && *c != '<' && *c != '>')
        .collect();
    (!id.is_empty()).then_some(id)
}

/// Addresses lower-cased, trimmed, sorted and de-duplicated; display names are left out, as
/// a re-rendering may encode them differently.
pub fn normalise_addresses(addresses: &[Address]) -> Vec<String> {
    let mut list: Vec<String> = addresses
        .iter()
        .filter_map(|a| a.address.as_deref())
        .filter_map(normalise_address)
        .collect();
    list.sort();
    list.dedup();
    list
}

/// One address, lower case, without surrounding space or control characters; `None` if
/// nothing is left.
pub fn normalise_address(address: &str) -> Option<String> {
    let cleaned: String = address
        .trim()
        .trim_matches(|c| c == '<' || c == '>')
        .chars()
        .filter(|c| !c.is_control())
        .flat_map(char::to_lowercase)
        .collect();
    (!cleaned.is_empty()).then_some(cleaned)
}

/// The header identity hash: `Message-ID`, the `Date` as an instant (so a rewritten time
/// zone does not matter) and the `From` addresses. `None` without a Message-ID.
pub fn header_identity(record: &MessageRecord) -> Option<String> {
    let message_id = normalise_message_id(record.message_id.as_deref()?)?;
    let date = record
        .date
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .map(|ms| ms.to_string())
        .unwrap_or_default();
    let from = normalise_addresses(&record.from).join(",");
    let digest = Sha256::digest(format!("tm-hdr-v1\n{message_id}\n{date}\n{from}"));
    Some(hex::encode(digest))
}

/// The `From` and `Sender` addresses, normalised, for the sender index.
pub fn senders(record: &MessageRecord) -> Vec<String> {
    let mut all = normalise_addresses(&record.from);
    all.extend(normalise_addresses(&record.sender));
    all.sort();
    all.dedup();
    all
}

/// The time a message is sorted and filtered by: its `Date`, unless it has none, it does
/// not read, or it is later than when the message was stored (a bogus future date would
/// otherwise sit at the top of every list), in which case when it was stored.
pub fn sort_ms(record: &MessageRecord, ingested_at_ms: i64) -> i64 {
    record
        .date
        .as_deref()
        .and_then(parse_rfc3339_ms)
        .filter(|ms| *ms <= ingested_at_ms)
        .unwrap_or(ingested_at_ms)
        .clamp(0, MAX_SORT_MS)
}

/// The largest time a 13-digit sort key holds (year 2286).
pub const MAX_SORT_MS: i64 = 9_999_999_999_999;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(message_id: Option<&str>, date: Option<&str>, from: &[&str]) -> MessageRecord {
        MessageRecord {
            message_id: message_id.map(str::to_owned),
            date: date.map(str::to_owned),
            from: from
                .iter()
                .map(|a| Address {
                    name: Some("Name".into()),
                    address: Some((*a).to_owned()),
                })
                .collect(),
            ..MessageRecord::default()
        }
    }

    #[test]
    fn header_identity_ignores_folding_time_zones_case_and_names() {
        let one = record(
            Some("abc@example.com"),
            Some("2024-05-01T10:00:00+02:00"),
            &["Alice@Example.com"],
        );
        let mut two = record(
            Some(" <abc@\r\n example.com> "),
            Some("2024-05-01T08:00:00Z"),
            &["alice@example.com"],
        );
        two.from[0].name = Some("=?utf-8?q?Name?=".into());
        assert_eq!(header_identity(&one), header_identity(&two));
        assert!(header_identity(&one).is_some());

        let other_date = record(
            Some("abc@example.com"),
            Some("2024-05-01T10:00:01+02:00"),
            &["alice@example.com"],
        );
        let other_from = record(
            Some("abc@example.com"),
            Some("2024-05-01T10:00:00+02:00"),
            &["bob@example.com"],
        );
        assert_ne!(header_identity(&one), header_identity(&other_date));
        assert_ne!(header_identity(&one), header_identity(&other_from));
        assert_eq!(header_identity(&record(None, None, &["a@b"])), None);
        assert_eq!(header_identity(&record(Some(" <> "), None, &[])), None);
    }

    #[test]
    fn ids_follow_the_header_identity_else_the_bytes_and_the_source() {
        let source = SourceId::parse("s1").unwrap();
        let other_source = SourceId::parse("s2").unwrap();
        let with_header = record(Some("x@y"), None, &[]);
        let a = Identity::of(b"one rendering", &with_header);
        let b = Identity::of(b"another rendering", &with_header);
        assert_ne!(a.sha256, b.sha256);
        assert_eq!(a.message_id(&source), b.message_id(&source));
        assert_ne!(a.message_id(&source), a.message_id(&other_source));

        let bare = MessageRecord::default();
        let c = Identity::of(b"one rendering", &bare);
        let d = Identity::of(b"another rendering", &bare);
        assert_ne!(c.message_id(&source), d.message_id(&source));
        assert_eq!(
            c.message_id(&source),
            Identity::of(b"one rendering", &bare).message_id(&source)
        );
    }

    #[test]
    fn sort_time_is_the_date_unless_missing_or_in_the_future() {
        let now = 1_714_550_400_000;
        let dated = record(None, Some("2024-05-01T08:00:00Z"), &[]);
        assert_eq!(sort_ms(&dated, now + 5), now);
        assert_eq!(sort_ms(&dated, now - 5), now - 5);
        assert_eq!(sort_ms(&record(None, Some("garbage"), &[]), 42), 42);
        assert_eq!(sort_ms(&record(None, None, &[]), 42), 42);
        let ancient = record(None, Some("1900-01-01T00:00:00Z"), &[]);
        assert_eq!(sort_ms(&ancient, now), 0);
    }
}
