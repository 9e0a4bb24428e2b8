//! Reading: one message, and lists with filters and stable paging.
//!
//! A list walks one lexicographic index from newest to oldest sort key. The most selective
//! filter picks the index: an indicator value, then a sender (both indexes span sources and
//! are written by the outbox drain; a query of one source skips the others' entries), then
//! a folder (the source's own index), else the source's record index or the cross-source
//! one. A time range bounds the walk, and the other filters are checked on each record's
//! summary. The cursor is the last sort key looked at; sort keys
//! never change, so a page continues exactly after the previous one and every record is
//! returned once, however many are added meanwhile (newer ones sort before the cursor and
//! are left for the next walk from the top).
//!
//! A page may hold fewer than `page_size` items with a cursor to go on from, when many
//! records were looked at without matching (at most [`MAX_SCAN`] per call).

use base64::Engine as _;
use threatmail_parse::IndicatorKind;
use threatmail_source::SourceId;

use crate::error::{Result, StoreError, redis_error};
use crate::identity::normalise_address;
use crate::keys::{self, SEP};
use crate::record::{
    AnalystState, Location, MessageId, MessageRef, StoredMessage, StoredRecord, Summary,
};
use crate::state::state_from_fields;
use crate::store::{Store, value_items, value_text};
use crate::write::ioc_term;

/// The most records one list call looks at.
pub const MAX_SCAN: usize = 5000;
/// The largest page.
pub const MAX_PAGE: usize = 1000;

/// Where a list goes on from: the last sort key looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(String);

impl Cursor {
    /// The opaque page token.
    pub fn to_token(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(self.0.as_bytes())
    }

    /// The position just after `record`: a list from here goes on with older records.
    pub fn at(record: &StoredRecord) -> Self {
        Cursor(crate::write::sort_key(
            record.sort_ms,
            &record.source_id,
            &record.id,
        ))
    }

    /// Reads a page token.
    pub fn from_token(token: &str) -> Result<Self> {
        let invalid = || StoreError::InvalidArgument {
            field: "page_token",
            problem: "not a token this service gave".to_owned(),
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        parse_sort_key(&text).ok_or_else(invalid)?;
        Ok(Cursor(text))
    }
}

/// A list request. Every filter set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only this source.
    pub source: Option<SourceId>,
    /// Only messages seen in this folder (raw name).
    pub folder: Option<String>,
    /// Sort time at or after (Unix ms).
    pub since_ms: Option<i64>,
    /// Sort time before (Unix ms).
    pub until_ms: Option<i64>,
    /// From or Sender is this address, or (`@domain`, or a bare domain) at this domain.
    pub sender: Option<String>,
    /// Holds an indicator with this value (refanged and normalised as the parser does).
    pub indicator_value: Option<String>,
    /// Holds an indicator of this kind (with `indicator_value`: that value as this kind).
    pub indicator_kind: Option<IndicatorKind>,
    /// The subject contains this text (case-insensitive).
    pub subject_contains: Option<String>,
    /// Items per page (1–[`MAX_PAGE`]).
    pub page_size: usize,
    /// Where to go on from.
    pub cursor: Option<Cursor>,
}

/// One listed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Which.
    pub message: MessageRef,
    /// Its summary.
    pub summary: Summary,
    /// Where it was seen.
    pub locations: Vec<Location>,
    /// The analyst's state.
    pub state: AnalystState,
}

/// One page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Newest first.
    pub items: Vec<Listed>,
    /// Where the next page starts; `None` at the end.
    pub next: Option<Cursor>,
}

/// `(sort ms, source, id)` of a sort key.
fn parse_sort_key(key: &str) -> Option<(i64, SourceId, MessageId)> {
    let mut parts = key.split('|');
    let ms = parts.next()?;
    if ms.len() != 13 || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let source = SourceId::parse(parts.next()?).ok()?;
    let id = MessageId::from_hex(parts.next()?).ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some((ms.parse().ok()?, source, id))
}

fn pad(ms: i64) -> String {
    format!("{:013}", ms.clamp(0, crate::identity::MAX_SORT_MS))
}

/// The indicator terms (kind, normalised value) a user's value stands for: what the parser
/// extracts from it (so `hxxp://evil[.]com` finds `http://evil.com/`), else the value as
/// typed, trimmed, and lower-cased.
pub fn indicator_terms(value: &str, kind: Option<IndicatorKind>) -> Vec<(IndicatorKind, String)> {
    let value = value.trim();
    let extracted = threatmail_parse::extract_text(value);
    let mut terms: Vec<(IndicatorKind, String)> = extracted
        .indicators
        .iter()
        .filter(|i| match kind {
            Some(kind) => i.kind == kind,
            None => i.locations.iter().any(|l| l.derived_from.is_none()),
        })
        .map(|i| (i.kind, i.value.clone()))
        .collect();
    if terms.is_empty() {
        let kinds: Vec<IndicatorKind> = match kind {
            Some(kind) => vec![kind],
            None => IndicatorKind::ALL.to_vec(),
        };
        for kind in kinds {
            terms.push((kind, value.to_owned()));
            let lower = value.to_lowercase();
            if lower != value {
                terms.push((kind, lower));
            }
        }
    }
    terms.sort();
    terms.dedup();
    terms
}

/// The sender-index entry a user's sender filter stands for.
fn sender_term(sender: &str) -> Option<String> {
    let sender = normalise_address(sender)?;
    if sender.starts_with('@') || sender.contains('@') {
        Some(sender)
    } else {
        Some(format!("@{sender}"))
    }
}

/// The indexes a query walks (key, and the prefix its members carry before the sort key)
/// and what it still checks per record.
struct Plan {
    ranges: Vec<(String, String)>,
    check_folder: Option<String>,
    check_kind: Option<IndicatorKind>,
    check_subject: Option<String>,
}

fn plan(query: &ListQuery) -> Plan {
    let source = query.source.as_ref();
    let mut check_folder = query.folder.clone();
    let mut check_kind = query.indicator_kind;
    let ranges = if let Some(value) = &query.indicator_value {
        check_kind = None;
        indicator_terms(value, query.indicator_kind)
            .into_iter()
            .map(|(kind, value)| (keys::ioc_key(&ioc_term(kind, &value)), String::new()))
            .collect()
    } else if let Some(sender) = &query.sender {
        sender_term(sender)
            .map(|term| vec![(keys::sender_key(&term), String::new())])
            .unwrap_or_default()
    } else if let (Some(source), Some(folder)) = (source, &query.folder) {
        check_folder = None;
        vec![(keys::folder_index_key(source), format!("{folder}{SEP}"))]
    } else {
        let key = match source {
            Some(source) => keys::index_key(source),
            None => keys::GLOBAL_INDEX.to_owned(),
        };
        vec![(key, String::new())]
    };
    Plan {
        ranges,
        check_folder,
        check_kind,
        check_subject: query
            .subject_contains
            .as_ref()
            .map(|s| s.to_lowercase())
            .filter(|s| !s.is_empty()),
    }
}

/// Whether `summary` and `locations` pass the checks a plan leaves.
fn passes(
    plan: &Plan,
    query: &ListQuery,
    message: &MessageRef,
    summary: &Summary,
    locations: &[Location],
) -> bool {
    if let Some(source) = &query.source
        && &message.source_id != source
    {
        return false;
    }
    if let Some(folder) = &plan.check_folder
        && !locations.iter().any(|l| &l.folder == folder)
    {
        return false;
    }
    if let Some(kind) = plan.check_kind
        && !summary.indicator_kinds.contains(&kind)
    {
        return false;
    }
    if let Some(text) = &plan.check_subject
        && !summary
            .subject
            .as_deref()
            .is_some_and(|s| s.to_lowercase().contains(text))
    {
        return false;
    }
    if query.indicator_value.is_some()
        && let Some(sender) = query.sender.as_deref().and_then(sender_term)
    {
        let matches = summary.senders.iter().any(|address| {
            if let Some(domain) = sender.strip_prefix('@') {
                address.rsplit_once('@').is_some_and(|(_, d)| d == domain)
            } else {
                *address == sender
            }
        });
        if !matches {
            return false;
        }
    }
    true
}

/// Copies the bodies of `from` (a fresh parse) into `into` (the stored record), attached
/// messages matched by MIME part.
fn restore_bodies(
    into: &mut threatmail_parse::MessageRecord,
    from: &threatmail_parse::MessageRecord,
) {
    into.text_bodies = from.text_bodies.clone();
    into.html_bodies = from.html_bodies.clone();
    for attachment in &mut into.attachments {
        let Some(nested) = attachment.message.as_deref_mut() else {
            continue;
        };
        if let Some(source) = from
            .attachments
            .iter()
            .find(|a| a.part == attachment.part)
            .and_then(|a| a.message.as_deref())
        {
            restore_bodies(nested, source);
        }
    }
}

/// The `record` and `summary` fields, the `loc:` hash and the `state:` hash of a message.
type MessageReply = (
    Option<String>,
    Option<String>,
    Vec<(String, String)>,
    Vec<(String, String)>,
);

/// Reads a `loc:` hash.
fn locations_from_fields(fields: &[(String, String)]) -> Vec<Location> {
    let mut locations: Vec<Location> = fields
        .iter()
        .filter_map(|(field, value)| {
            let mut place = field.split(SEP);
            let folder = place.next()?.to_owned();
            let uidvalidity = place.next()?.parse().ok()?;
            let uid = place.next()?.parse().ok()?;
            let (sha256, seen) = value.split_once(SEP)?;
            Some(Location {
                folder,
                uidvalidity,
                uid,
                sha256: sha256.to_owned(),
                seen_at_ms: seen.parse().ok()?,
            })
        })
        .collect();
    locations.sort_by(|a, b| {
        (a.seen_at_ms, &a.folder, a.uidvalidity, a.uid).cmp(&(
            b.seen_at_ms,
            &b.folder,
            b.uidvalidity,
            b.uid,
        ))
    });
    locations
}

impl Store {
    /// Everything stored about `message`, or `None`.
    pub async fn get(&self, message: &MessageRef) -> Result<Option<StoredMessage>> {
        let source = &message.source_id;
        let mut conn = self.conn.clone();
        let (record, summary, locations, state): MessageReply = redis::pipe()
            .cmd("HGET")
            .arg(keys::message_key(source, &message.id))
            .arg("record")
            .cmd("HGET")
            .arg(keys::message_key(source, &message.id))
            .arg("summary")
            .cmd("HGETALL")
            .arg(keys::locations_key(source, &message.id))
            .cmd("HGETALL")
            .arg(keys::state_key(source, &message.id))
            .query_async(&mut conn)
            .await
            .map_err(redis_error("read a message", source.as_str()))?;
        let (Some(record), Some(summary)) = (record, summary) else {
            return Ok(None);
        };
        let corrupt = |what: &'static str, error: serde_json::Error| StoreError::Corrupt {
            what,
            source_id: source.to_string(),
            problem: format!("{message}: {error}"),
        };
        let record: StoredRecord =
            serde_json::from_str(&record).map_err(|e| corrupt("record", e))?;
        let summary: Summary = serde_json::from_str(&summary).map_err(|e| corrupt("summary", e))?;
        Ok(Some(StoredMessage {
            message: message.clone(),
            record,
            summary,
            locations: locations_from_fields(&locations),
            state: state_from_fields(&state),
        }))
    }

    /// [`get`](Self::get), with the bodies decoded again from the raw blob (the record in
    /// Redis has none, see [`StoredRecord::parsed`]). Without the blob, the bodies stay
    /// empty and `Ok` is still returned; the caller can tell by `raw_missing`.
    pub async fn get_with_bodies(
        &self,
        message: &MessageRef,
    ) -> Result<Option<(StoredMessage, bool)>> {
        let Some(mut stored) = self.get(message).await? else {
            return Ok(None);
        };
        let Some(raw) = self.blobs.get(&stored.record.sha256).await? else {
            return Ok(Some((stored, true)));
        };
        // Parsing is CPU work on a whole message; keep it off the async threads.
        let reparsed = tokio::task::spawn_blocking(move || threatmail_parse::parse_message(&raw))
            .await
            .map_err(|error| StoreError::Corrupt {
                what: "message bodies",
                source_id: message.source_id.to_string(),
                problem: format!("decoding failed: {error}"),
            })?;
        restore_bodies(&mut stored.record.parsed.message, &reparsed.message);
        Ok(Some((stored, false)))
    }

    /// The number of records of `source`.
    pub async fn count(&self, source: &SourceId) -> Result<usize> {
        let mut conn = self.conn.clone();
        redis::cmd("ZCARD")
            .arg(keys::index_key(source))
            .query_async(&mut conn)
            .await
            .map_err(redis_error("count records", source.as_str()))
    }

    /// The number of records of `source` seen in `folder` (raw name), however often and
    /// under whichever UIDVALIDITY.
    pub async fn count_in_folder(&self, source: &SourceId, folder: &str) -> Result<usize> {
        let mut conn = self.conn.clone();
        // Members are `<folder>\0<sort key>`: the folder's range is [folder\0, folder\x01).
        redis::cmd("ZLEXCOUNT")
            .arg(keys::folder_index_key(source))
            .arg([b"[".as_slice(), folder.as_bytes(), b"\0"].concat())
            .arg([b"(".as_slice(), folder.as_bytes(), b"\x01"].concat())
            .query_async(&mut conn)
            .await
            .map_err(redis_error("count records", source.as_str()))
    }

    /// One page of `query`.
    pub async fn list(&self, query: &ListQuery) -> Result<ListPage> {
        if query.page_size == 0 || query.page_size > MAX_PAGE {
            return Err(StoreError::InvalidArgument {
                field: "page_size",
                problem: format!("must be 1 to {MAX_PAGE}"),
            });
        }
        if let (Some(since), Some(until)) = (query.since_ms, query.until_ms)
            && since >= until
        {
            return Ok(ListPage {
                items: Vec::new(),
                next: None,
            });
        }
        let plan = plan(query);
        if plan.ranges.is_empty() {
            return Ok(ListPage {
                items: Vec::new(),
                next: None,
            });
        }
        let batch = (query.page_size * 2).clamp(50, 500);
        let mut cursor = query.cursor.clone();
        let mut items = Vec::new();
        let mut scanned = 0;
        loop {
            let (candidates, exhausted) = self
                .candidates(&plan, query, cursor.as_ref(), batch)
                .await?;
            if candidates.is_empty() {
                return Ok(ListPage { items, next: None });
            }
            let loaded = self.load_listed(&candidates).await?;
            for (sortkey, listed) in candidates.iter().zip(loaded) {
                scanned += 1;
                cursor = Some(Cursor(sortkey.clone()));
                let Some(listed) = listed else { continue };
                if passes(
                    &plan,
                    query,
                    &listed.message,
                    &listed.summary,
                    &listed.locations,
                ) {
                    items.push(listed);
                    if items.len() == query.page_size {
                        return Ok(ListPage {
                            items,
                            next: cursor,
                        });
                    }
                }
            }
            if exhausted {
                return Ok(ListPage { items, next: None });
            }
            if scanned >= MAX_SCAN {
                return Ok(ListPage {
                    items,
                    next: cursor,
                });
            }
        }
    }

    /// Up to about `batch` sort keys below `cursor`, newest first, merged over the plan's
    /// prefixes; and whether the walk reached the end.
    async fn candidates(
        &self,
        plan: &Plan,
        query: &ListQuery,
        cursor: Option<&Cursor>,
        batch: usize,
    ) -> Result<(Vec<String>, bool)> {
        let mut pipe = redis::pipe();
        for (key, prefix) in &plan.ranges {
            let mut upper = query.until_ms.map(pad);
            if let Some(cursor) = cursor
                && upper.as_ref().is_none_or(|u| cursor.0 < *u)
            {
                upper = Some(cursor.0.clone());
            }
            let max = match (&upper, prefix.is_empty()) {
                (Some(upper), _) => format!("({prefix}{upper}"),
                (None, true) => "+".to_owned(),
                // Just past every member with this prefix (which ends with the separator).
                (None, false) => format!("({}\u{1}", &prefix[..prefix.len() - 1]),
            };
            let min = match (query.since_ms, prefix.is_empty()) {
                (Some(since), _) => format!("[{prefix}{}", pad(since)),
                (None, true) => "-".to_owned(),
                (None, false) => format!("[{prefix}"),
            };
            pipe.cmd("ZRANGE")
                .arg(key)
                .arg(max)
                .arg(min)
                .arg("BYLEX")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(batch);
        }
        let mut conn = self.conn.clone();
        let lists: Vec<Vec<Vec<u8>>> = pipe.query_async(&mut conn).await.map_err(redis_error(
            "walk an index",
            query.source.as_ref().map_or("mailbox", |s| s.as_str()),
        ))?;
        // Each list is complete down to its last member only if it was cut at `batch`;
        // below the highest such cut another list may be missing members.
        let mut cut: Option<String> = None;
        let mut merged: Vec<String> = Vec::new();
        for ((_, prefix), list) in plan.ranges.iter().zip(&lists) {
            let keys: Vec<String> = list
                .iter()
                .filter_map(|member| {
                    let text = String::from_utf8_lossy(member);
                    text.strip_prefix(prefix.as_str()).map(str::to_owned)
                })
                .filter(|key| parse_sort_key(key).is_some())
                .collect();
            if list.len() >= batch
                && let Some(last) = keys.last()
                && cut.as_ref().is_none_or(|c| last > c)
            {
                cut = Some(last.clone());
            }
            merged.extend(keys);
        }
        merged.sort_unstable_by(|a, b| b.cmp(a));
        merged.dedup();
        let exhausted = cut.is_none();
        if let Some(cut) = &cut {
            merged.retain(|key| key >= cut);
        }
        Ok((merged, exhausted))
    }

    /// Summaries, locations and states of the records of `sortkeys`, in order; `None` for
    /// one that is gone.
    async fn load_listed(&self, sortkeys: &[String]) -> Result<Vec<Option<Listed>>> {
        let refs: Vec<MessageRef> = sortkeys
            .iter()
            .filter_map(|key| parse_sort_key(key))
            .map(|(_, source_id, id)| MessageRef { source_id, id })
            .collect();
        let mut pipe = redis::pipe();
        for message in &refs {
            pipe.cmd("HGET")
                .arg(keys::message_key(&message.source_id, &message.id))
                .arg("summary")
                .cmd("HGETALL")
                .arg(keys::locations_key(&message.source_id, &message.id))
                .cmd("HGETALL")
                .arg(keys::state_key(&message.source_id, &message.id));
        }
        let mut conn = self.conn.clone();
        let replies: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(redis_error("read summaries", "mailbox"))?;
        let fields = |value: &redis::Value| -> Vec<(String, String)> {
            match value {
                redis::Value::Map(pairs) => pairs
                    .iter()
                    .filter_map(|(k, v)| Some((value_text(k)?, value_text(v)?)))
                    .collect(),
                other => value_items(other)
                    .chunks(2)
                    .filter_map(|pair| {
                        Some((value_text(pair.first()?)?, value_text(pair.get(1)?)?))
                    })
                    .collect(),
            }
        };
        Ok(refs
            .into_iter()
            .zip(replies.chunks(3))
            .map(|(message, reply)| {
                let summary: Summary = serde_json::from_str(&value_text(reply.first()?)?).ok()?;
                Some(Listed {
                    message,
                    summary,
                    locations: locations_from_fields(&fields(reply.get(1)?)),
                    state: state_from_fields(&fields(reply.get(2)?)),
                })
            })
            .collect())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_foreign_tokens() {
        let key = "1714550400000|src-1|0123456789abcdef0123456789abcdef";
        let cursor = Cursor(key.to_owned());
        assert_eq!(Cursor::from_token(&cursor.to_token()).unwrap(), cursor);
        for bad in ["", "!!", "YWJj"] {
            assert!(Cursor::from_token(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn indicator_terms_refang_and_normalise() {
        let terms = indicator_terms("hxxp://evil[.]example[.]com/x", None);
        assert!(
            terms
                .iter()
                .any(|(k, v)| *k == IndicatorKind::Url && v.starts_with("http://evil.example.com")),
            "{terms:?}"
        );
        assert!(
            terms.iter().all(|(k, _)| *k == IndicatorKind::Url),
            "{terms:?}"
        );
        let domain = indicator_terms("hxxp://evil[.]example[.]com/x", Some(IndicatorKind::Domain));
        assert_eq!(
            domain,
            vec![(IndicatorKind::Domain, "evil.example.com".to_owned())]
        );
        let fallback = indicator_terms("NotAnIndicator", Some(IndicatorKind::Cve));
        assert_eq!(
            fallback,
            vec![
                (IndicatorKind::Cve, "NotAnIndicator".to_owned()),
                (IndicatorKind::Cve, "notanindicator".to_owned())
            ]
        );
    }

    #[test]
    fn sender_terms_are_addresses_or_domains() {
        assert_eq!(
            sender_term(" Alice@Example.COM ").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(sender_term("@Example.com").as_deref(), Some("@example.com"));
        assert_eq!(sender_term("example.com").as_deref(), Some("@example.com"));
        assert_eq!(sender_term("  "), None);
    }
}
