//! The Redis layout of stored mail.
//!
//! Everything one atomic write touches carries the source's hash tag, so the write is one
//! script over one Redis Cluster slot (DESIGN §6). `P` is `tm:{<source id>}:`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `P msg:<id>` | hash | `record` (the [`StoredRecord`](crate::StoredRecord) JSON, never rewritten), `summary` (the [`Summary`](crate::Summary) JSON), `sortkey`, `sha256` |
//! | `P loc:<id>` | hash | one field per location, `<folder>\0<uidvalidity>\0<uid>` → `<sha256>\0<seen at ms>` |
//! | `P state:<id>` | hash | the analyst's state (`read`, `starred`, `reviewed`, `comment`, `updated_at`, `updated_by`); the writer never touches it |
//! | `P by-sha:<sha256>` | string | the id of the record holding a raw rendering with this SHA-256 |
//! | `P index` | zset (lex) | one sort key per record |
//! | `P folder-index` | zset (lex) | `<folder>\0<sort key>` per location's folder |
//! | `P checkpoint:<folder>` | hash | `uidvalidity`, `last_uid`, `updated_at` |
//! | `P lease:<folder>` | string | `<fencing token>:<owner>`, with an expiry: the folder's lease |
//! | `P fence-seq:<folder>` | string | the last fencing token handed out for the folder |
//! | `P skipped:<folder>` | hash | `<uidvalidity>:<uid>` → `<size> <reason>` for messages not fetched |
//! | `P outbox` | stream | one entry per new record, until it is in the event stream |
//!
//! What spans sources lives under the hash tag `{mailbox}` and is written from the outboxes
//! (`M` is `tm:{mailbox}:`; `M sources` is added to before a source's first write):
//!
//! | key | type | holds |
//! |---|---|---|
//! | `M events` | stream | one `message.stored` event per record |
//! | `M emitted` | hash | `<source id>/<id>` → the event's stream id: the idempotency marker |
//! | `M index` | zset (lex) | as the per-source one, over every source |
//! | `M sender:<address>`, `M sender:@<domain>` | zset (lex) | the sort keys of the records from that From/Sender address or domain |
//! | `M ioc:<kind>:<value>` | zset (lex) | the sort keys of the records holding that indicator |
//! | `M sources` | set | the sources that ever wrote, for draining their outboxes |
//!
//! The sender and indicator indexes exist only across sources: a sort key names its source,
//! so a list of one source walks them and skips the others' entries. Keeping a per-source
//! copy as well wrote every term twice, the larger half of the store's Redis work.
//!
//! A sort key is `<ms:013>|<source id>|<id>`: the message's time in milliseconds (its `Date`,
//! or when it was stored if it has none or one later than that), zero-padded so that byte
//! order is time order, then the record. It never changes once written, which is what makes
//! paging stable.

use threatmail_source::SourceId;

use crate::record::MessageId;

/// `tm:{<source id>}:`.
pub fn source_prefix(source: &SourceId) -> String {
    format!("tm:{{{}}}:", source.as_str())
}

/// `tm:{<source id>}:msg:<id>`.
pub fn message_key(source: &SourceId, id: &MessageId) -> String {
    format!("tm:{{{}}}:msg:{}", source.as_str(), id.as_str())
}

/// `tm:{<source id>}:loc:<id>`.
pub fn locations_key(source: &SourceId, id: &MessageId) -> String {
    format!("tm:{{{}}}:loc:{}", source.as_str(), id.as_str())
}

/// `tm:{<source id>}:state:<id>`.
pub fn state_key(source: &SourceId, id: &MessageId) -> String {
    format!("tm:{{{}}}:state:{}", source.as_str(), id.as_str())
}

/// `tm:{<source id>}:index`.
pub fn index_key(source: &SourceId) -> String {
    format!("tm:{{{}}}:index", source.as_str())
}

/// `tm:{<source id>}:folder-index`.
pub fn folder_index_key(source: &SourceId) -> String {
    format!("tm:{{{}}}:folder-index", source.as_str())
}

/// The index key of a sender term (an address, or `@domain`), across sources.
pub fn sender_key(term: &str) -> String {
    format!("{GLOBAL_PREFIX}sender:{term}")
}

/// The index key of an indicator term (`<kind>:<value>`), across sources.
pub fn ioc_key(term: &str) -> String {
    format!("{GLOBAL_PREFIX}ioc:{term}")
}

/// `tm:{<source id>}:checkpoint:<folder>`.
pub fn checkpoint_key(source: &SourceId, folder: &str) -> String {
    format!("tm:{{{}}}:checkpoint:{folder}", source.as_str())
}

/// `tm:{<source id>}:checkpoint-mailbox:<folder>`: which mailbox (user and server) the
/// folder's checkpoint was made on ([`crate::Store::claim_checkpoint`]).
pub fn checkpoint_mailbox_key(source: &SourceId, folder: &str) -> String {
    format!("tm:{{{}}}:checkpoint-mailbox:{folder}", source.as_str())
}

/// `tm:{<source id>}:lease:<folder>`.
pub fn lease_key(source: &SourceId, folder: &str) -> String {
    format!("tm:{{{}}}:lease:{folder}", source.as_str())
}

/// `tm:{<source id>}:fence-seq:<folder>`.
pub fn fence_seq_key(source: &SourceId, folder: &str) -> String {
    format!("tm:{{{}}}:fence-seq:{folder}", source.as_str())
}

/// `tm:{<source id>}:skipped:<folder>`.
pub fn skipped_key(source: &SourceId, folder: &str) -> String {
    format!("tm:{{{}}}:skipped:{folder}", source.as_str())
}

/// `tm:{<source id>}:outbox`.
pub fn outbox_key(source: &SourceId) -> String {
    format!("tm:{{{}}}:outbox", source.as_str())
}

/// The prefix of every cross-source key.
pub const GLOBAL_PREFIX: &str = "tm:{mailbox}:";
/// The cross-source event stream.
pub const EVENTS: &str = "tm:{mailbox}:events";
/// The cross-source idempotency markers: `<source id>/<id>` → event stream id.
pub const EMITTED: &str = "tm:{mailbox}:emitted";
/// The cross-source index of every record.
pub const GLOBAL_INDEX: &str = "tm:{mailbox}:index";
/// The sources that ever wrote.
pub const SOURCES: &str = "tm:{mailbox}:sources";

/// The separator inside folder-index members (never part of a folder name).
pub const SEP: char = '\0';

#[cfg(test)]
mod tests {
    use super::*;

    /// The Redis Cluster hash slot of `key` (CRC16/XMODEM of the hash tag, mod 16384).
    fn slot(key: &str) -> u16 {
        let bytes = key.as_bytes();
        let tagged = bytes
            .iter()
            .position(|&b| b == b'{')
            .and_then(|open| {
                bytes[open + 1..]
                    .iter()
                    .position(|&b| b == b'}')
                    .filter(|&len| len > 0)
                    .map(|len| &bytes[open + 1..open + 1 + len])
            })
            .unwrap_or(bytes);
        let mut crc: u16 = 0;
        for &byte in tagged {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16384
    }

    #[test]
    fn every_key_of_one_write_is_in_the_sources_slot() {
        let source = SourceId::parse("src-1").expect("valid id");
        let id = MessageId::from_hex("0123456789abcdef0123456789abcdef").expect("valid id");
        // A folder name with braces must not move the key to another slot.
        let folder = "Phish {reports}";
        let keys = [
            message_key(&source, &id),
            locations_key(&source, &id),
            state_key(&source, &id),
            index_key(&source),
            folder_index_key(&source),
            checkpoint_key(&source, folder),
            lease_key(&source, folder),
            fence_seq_key(&source, folder),
            skipped_key(&source, folder),
            outbox_key(&source),
            format!("{}by-sha:00", source_prefix(&source)),
        ];
        let expected = slot(&keys[0]);
        for key in &keys {
            assert_eq!(slot(key), expected, "{key}");
        }
        assert_eq!(slot("tm:{src-1}:x"), slot("src-1"));
        for key in [
            EVENTS.to_owned(),
            EMITTED.to_owned(),
            GLOBAL_INDEX.to_owned(),
            SOURCES.to_owned(),
            sender_key("a@b.example"),
            ioc_key("url:http://{x}/"),
        ] {
            assert_eq!(slot(&key), slot("mailbox"), "{key}");
        }
    }
}
