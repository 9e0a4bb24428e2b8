//! The write path: a batch of one folder's messages and the folder's checkpoint, committed
//! in one script over the source's slot, checked against the folder lease's fencing token.
//!
//! For each message the script looks its identity up (`by-sha`, then the record the
//! identity's id names, which a re-rendered copy computes the same way): a known
//! message gets only a new location (or nothing, if that location is known too); a new one
//! gets its record, its entries in the source's record and folder indexes, and an outbox
//! entry (from which the cross-source sender and indicator indexes are written). Then the
//! checkpoint advances. Either all of it happens or none (a script runs atomically), so a crash anywhere loses
//! nothing and duplicates nothing: the caller retries from its last checkpoint and every
//! message it sends again is found.
//!
//! Raw bytes go to the blob store first, so a committed record always has its blob.

use threatmail_parse::{IndicatorKind, ParsedMessage};
use threatmail_source::SourceId;

use crate::error::{Result, StoreError, redis_error};
use crate::identity::{self, Identity};
use crate::keys;
use crate::lease::Lease;
use crate::outbox::EmitEntry;
use crate::record::{MessageId, MessageRef, RECORD_SCHEMA, StoredRecord, summarise};
use crate::store::{CrashPoint, Store, value_items, value_text};
use crate::time::now_ms;

/// A message as fetched: its UID, its raw bytes and their parse.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    /// The UID in the folder.
    pub uid: u32,
    /// The bytes as served (CRLF line ends over IMAP).
    pub raw: Vec<u8>,
    /// `threatmail_parse::parse_message(&raw)`.
    pub parsed: ParsedMessage,
}

impl IncomingMessage {
    /// Parses `raw`.
    pub fn parse(uid: u32, raw: Vec<u8>) -> Self {
        let parsed = threatmail_parse::parse_message(&raw);
        IncomingMessage { uid, raw, parsed }
    }
}

/// One entry of a batch.
#[derive(Debug, Clone)]
pub enum BatchItem {
    /// A fetched message (boxed: it is large, a skip is small).
    Message(Box<IncomingMessage>),
    /// A message not fetched (over the size limit), recorded with its size.
    Skipped {
        /// Its UID.
        uid: u32,
        /// Its RFC822.SIZE.
        size: u64,
        /// Why, e.g. `over the 50 MB limit`.
        reason: String,
    },
}

impl From<IncomingMessage> for BatchItem {
    fn from(message: IncomingMessage) -> Self {
        BatchItem::Message(Box::new(message))
    }
}

/// What the writer holds that lets it write a folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    /// The fencing token of the folder's lease ([`Lease::token`](crate::Lease::token)):
    /// the write commits only while the lease key holds exactly this token.
    Token(u64),
    /// No lease: for imports and tools that are the only writer of the folder.
    Unfenced,
}

/// One atomic write: messages of one folder and the folder's new checkpoint.
#[derive(Debug, Clone)]
pub struct WriteBatch {
    /// The source.
    pub source_id: SourceId,
    /// The folder's raw (modified UTF-7) name.
    pub folder: String,
    /// The folder's UIDVALIDITY.
    pub uidvalidity: u32,
    /// The writer's fencing token.
    pub fence: Fence,
    /// The messages, in UID order.
    pub items: Vec<BatchItem>,
    /// The last UID done; the checkpoint becomes (uidvalidity, this) unless it already is
    /// as far for this UIDVALIDITY. `None` leaves the checkpoint alone.
    pub checkpoint_uid: Option<u32>,
}

/// A folder's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// The UIDVALIDITY it is for.
    pub uidvalidity: u32,
    /// The last UID stored (or skipped).
    pub last_uid: u32,
}

/// How far a folder's action after processing was applied: every committed message with a
/// UID up to `through_uid` (of `uidvalidity`) got `action`. Kept with the checkpoint, so a
/// sync reconciles only the messages committed after it (a crash between a commit and its
/// action) and leaves alone what a person changed since (a message marked unread again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionsDone {
    /// The UIDVALIDITY it is for.
    pub uidvalidity: u32,
    /// Which action, as the fetcher names it (`seen`, `move:<folder>`).
    pub action: String,
    /// The last UID it covers.
    pub through_uid: u32,
}

/// What happened to one item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemOutcome {
    /// A new record.
    Stored(MessageRef),
    /// A known record seen in a new place (another folder, or after a UIDVALIDITY change).
    LocationAdded(MessageRef),
    /// A known record at a known place: nothing written.
    AlreadyStored(MessageRef),
    /// Recorded as skipped.
    Skipped {
        /// Its UID.
        uid: u32,
    },
}

impl ItemOutcome {
    /// The record, unless skipped.
    pub fn message(&self) -> Option<&MessageRef> {
        match self {
            ItemOutcome::Stored(m)
            | ItemOutcome::LocationAdded(m)
            | ItemOutcome::AlreadyStored(m) => Some(m),
            ItemOutcome::Skipped { .. } => None,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    /// One per item, in order.
    pub items: Vec<ItemOutcome>,
    /// The folder's checkpoint after the write.
    pub checkpoint: Option<Checkpoint>,
    /// Events the write put in the stream right after committing (one per new record), or
    /// why it could not (the periodic drain finishes it; nothing is lost).
    pub drained: std::result::Result<usize, String>,
}

/// Per item outcomes, the checkpoint, and per item the outbox entry it added (new records).
type WriteReply = (Vec<ItemOutcome>, Option<Checkpoint>, Vec<Option<String>>);

/// A message ready for the script.
struct Prepared {
    uid: u32,
    sha256: String,
    id: MessageId,
    sortkey: String,
    record_json: String,
    summary_json: String,
    sender_terms: Vec<String>,
    ioc_terms: Vec<String>,
}

/// `threatmail_parse`'s serde name of a kind (`url`, `domain`, `ipv4`, …).
pub fn kind_name(kind: IndicatorKind) -> &'static str {
    match kind {
        IndicatorKind::Url => "url",
        IndicatorKind::Domain => "domain",
        IndicatorKind::Ipv4 => "ipv4",
        IndicatorKind::Ipv6 => "ipv6",
        IndicatorKind::Cidr => "cidr",
        IndicatorKind::Email => "email",
        IndicatorKind::Md5 => "md5",
        IndicatorKind::Sha1 => "sha1",
        IndicatorKind::Sha256 => "sha256",
        IndicatorKind::Sha512 => "sha512",
        IndicatorKind::Cve => "cve",
    }
}

/// The kind named `name` (as [`kind_name`] writes it, or the answer keys' plural).
pub fn kind_from_name(name: &str) -> Option<IndicatorKind> {
    let name = name.trim().to_ascii_lowercase();
    IndicatorKind::ALL
        .into_iter()
        .find(|kind| kind_name(*kind) == name || kind.key_field() == name)
}

/// The sort key of a record: `<ms:013>|<source id>|<id>`.
pub(crate) fn sort_key(sort_ms: i64, source: &SourceId, id: &MessageId) -> String {
    format!(
        "{:013}|{}|{}",
        sort_ms.clamp(0, identity::MAX_SORT_MS),
        source.as_str(),
        id.as_str()
    )
}

/// The index term of an indicator: `<kind>:<value>`.
pub(crate) fn ioc_term(kind: IndicatorKind, value: &str) -> String {
    format!("{}:{value}", kind_name(kind))
}

/// Whether `text` can be part of an index key (no line break, which separates terms in
/// the outbox, nor other control characters).
fn indexable(text: &str) -> bool {
    !text.is_empty() && !text.chars().any(char::is_control)
}

/// The index terms of a message: its sender addresses and their `@domain`s, and its
/// indicators as `<kind>:<value>`.
pub(crate) fn index_terms(
    senders: &[String],
    parsed: &ParsedMessage,
) -> (Vec<String>, Vec<String>) {
    let mut sender_terms: Vec<String> = Vec::new();
    let mut domains: Vec<&str> = Vec::new();
    for address in senders.iter().filter(|a| indexable(a)) {
        sender_terms.push(address.clone());
        if let Some((_, domain)) = address.rsplit_once('@')
            && !domain.is_empty()
            && !domains.contains(&domain)
        {
            domains.push(domain);
        }
    }
    for domain in domains {
        sender_terms.push(format!("@{domain}"));
    }
    let mut ioc_terms: Vec<String> = parsed
        .indicators
        .iter()
        .filter(|i| indexable(&i.value))
        .map(|i| ioc_term(i.kind, &i.value))
        .collect();
    ioc_terms.sort();
    ioc_terms.dedup();
    (sender_terms, ioc_terms)
}

fn prepare(source: &SourceId, message: &IncomingMessage, now: i64) -> Prepared {
    let identity = Identity::of(&message.raw, &message.parsed.message);
    let id = identity.message_id(source);
    let sort_ms = identity::sort_ms(&message.parsed.message, now);
    let sortkey = sort_key(sort_ms, source, &id);
    let senders = identity::senders(&message.parsed.message);
    let (sender_terms, ioc_terms) = index_terms(&senders, &message.parsed);
    let summary = summarise(&message.parsed, senders, &identity.sha256, sort_ms, now);
    let record = StoredRecord {
        schema: RECORD_SCHEMA,
        source_id: source.clone(),
        id: id.clone(),
        sha256: identity.sha256.clone(),
        header_identity: identity.header.clone(),
        size: message.raw.len() as u64,
        ingested_at_ms: now,
        sort_ms,
        parsed: {
            let mut parsed = message.parsed.clone();
            crate::record::strip_bodies(&mut parsed.message);
            parsed
        },
    };
    Prepared {
        uid: message.uid,
        sha256: identity.sha256,
        id,
        sortkey,
        // Plain data (strings, numbers, enums) serialises without failing.
        record_json: serde_json::to_string(&record)
            .unwrap_or_else(|_| unreachable!("a record serialises")),
        summary_json: serde_json::to_string(&summary)
            .unwrap_or_else(|_| unreachable!("a summary serialises")),
        sender_terms,
        ioc_terms,
    }
}

impl Store {
    /// Writes `batch` atomically with its checkpoint (see the module docs), then drains the
    /// source's outbox into the event stream.
    ///
    /// Fails with [`StoreError::StaleFence`] (writing nothing) when `batch.fence` is not
    /// the folder lease's current token.
    #[tracing::instrument(skip_all, fields(source_id = %batch.source_id, folder = %batch.folder, items = batch.items.len()))]
    pub async fn write(&self, batch: &WriteBatch) -> Result<WriteOutcome> {
        let source = &batch.source_id;
        self.remember_source(source).await?;
        self.load_scripts().await?;
        let now = now_ms();
        let prepared: Vec<Option<Prepared>> = batch
            .items
            .iter()
            .map(|item| match item {
                BatchItem::Message(message) => Some(prepare(source, message, now)),
                BatchItem::Skipped { .. } => None,
            })
            .collect();
        let blobs = batch
            .items
            .iter()
            .zip(&prepared)
            .filter_map(|(item, p)| match (item, p) {
                (BatchItem::Message(m), Some(p)) => Some(self.blobs.put(&p.sha256, &m.raw)),
                _ => None,
            });
        futures::future::try_join_all(blobs).await?;

        let mut invocation = self.inner.write_script.prepare_invoke();
        invocation
            .key(keys::lease_key(source, &batch.folder))
            .key(keys::checkpoint_key(source, &batch.folder))
            .key(keys::outbox_key(source))
            .key(keys::index_key(source))
            .key(keys::folder_index_key(source))
            .key(keys::skipped_key(source, &batch.folder))
            .arg(keys::source_prefix(source))
            .arg(&batch.folder)
            .arg(batch.uidvalidity)
            .arg(
                batch
                    .checkpoint_uid
                    .map(|uid| uid.to_string())
                    .unwrap_or_default(),
            )
            .arg(match batch.fence {
                Fence::Token(token) => token.to_string(),
                Fence::Unfenced => String::new(),
            })
            .arg(now)
            .arg(batch.items.len());
        for (item, prepared) in batch.items.iter().zip(&prepared) {
            match (item, prepared) {
                (_, Some(p)) => {
                    invocation
                        .arg("m")
                        .arg(p.uid)
                        .arg(&p.sha256)
                        .arg(p.id.as_str())
                        .arg(&p.sortkey)
                        .arg(&p.record_json)
                        .arg(&p.summary_json);
                }
                (BatchItem::Skipped { uid, size, reason }, None) => {
                    invocation
                        .arg("s")
                        .arg(*uid)
                        .arg(*size)
                        .arg(reason.replace(char::is_control, " "));
                }
                (BatchItem::Message(_), None) => unreachable!("every message is prepared"),
            }
        }
        let mut conn = self.conn.clone();
        let reply: redis::Value = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("write a batch", source.as_str()))?;
        let read = self.read_write_reply(batch, &reply);
        let fence = match batch.fence {
            Fence::Token(token) => Some(token),
            Fence::Unfenced => None,
        };
        // One event per commit and per refusal, with the fencing token: how tests (and an
        // operator) see which lease holder wrote which UIDs of a folder.
        if let Err(StoreError::StaleFence { held, .. }) = &read {
            tracing::debug!(folder = %batch.folder, fence, held = %held, "batch refused: stale fence");
        }
        let (items, checkpoint, outbox_ids) = read?;
        let uid_of = |item: &BatchItem| match item {
            BatchItem::Message(message) => message.uid,
            BatchItem::Skipped { uid, .. } => *uid,
        };
        tracing::debug!(
            folder = %batch.folder,
            fence,
            uidvalidity = batch.uidvalidity,
            first_uid = batch.items.first().map(uid_of),
            last_uid = batch.items.last().map(uid_of),
            checkpoint_uid = checkpoint.map(|c| c.last_uid),
            stored = items.iter().filter(|i| matches!(i, ItemOutcome::Stored(_))).count(),
            "batch committed"
        );
        self.crash_here(CrashPoint::AfterCommit)?;
        // The new records' outbox entries go on at once, from what is at hand; whatever
        // this step does not finish stays in the outbox for the periodic drain.
        let entries: Vec<EmitEntry<'_>> = outbox_ids
            .iter()
            .zip(&prepared)
            .filter_map(|(outbox_id, p)| {
                let (outbox_id, p) = (outbox_id.as_deref()?, p.as_ref()?);
                Some(EmitEntry {
                    outbox_id,
                    id: p.id.as_str(),
                    sortkey: &p.sortkey,
                    sha256: &p.sha256,
                    ingested_at: now,
                    senders: &p.sender_terms,
                    iocs: &p.ioc_terms,
                })
            })
            .collect();
        let drained = match self.emit(source, &entries).await {
            Ok(emitted) => Ok(emitted),
            Err(StoreError::InjectedCrash(point)) => return Err(StoreError::InjectedCrash(point)),
            Err(error) => {
                tracing::warn!(error = %threatmail_core::error::chain(&error), "emitting after the write failed; the periodic drain retries");
                Err(error.to_string())
            }
        };
        Ok(WriteOutcome {
            items,
            checkpoint,
            drained,
        })
    }

    fn read_write_reply(&self, batch: &WriteBatch, reply: &redis::Value) -> Result<WriteReply> {
        let source = &batch.source_id;
        let corrupt = |problem: String| StoreError::Corrupt {
            what: "write reply",
            source_id: source.to_string(),
            problem,
        };
        let parts = value_items(reply);
        match parts.first().and_then(value_text).as_deref() {
            Some("ok") => {}
            Some("stale") => {
                let held = parts.get(1).and_then(value_text).unwrap_or_default();
                return Err(StoreError::StaleFence {
                    source_id: source.clone(),
                    folder: batch.folder.clone(),
                    token: match batch.fence {
                        Fence::Token(token) => token,
                        Fence::Unfenced => 0,
                    },
                    held: if held.is_empty() {
                        "none".to_owned()
                    } else {
                        held
                    },
                });
            }
            other => return Err(corrupt(format!("unexpected status {other:?}"))),
        }
        let checkpoint = match (
            parts
                .get(1)
                .and_then(value_text)
                .and_then(|t| t.parse().ok()),
            parts
                .get(2)
                .and_then(value_text)
                .and_then(|t| t.parse().ok()),
        ) {
            (Some(uidvalidity), Some(last_uid)) => Some(Checkpoint {
                uidvalidity,
                last_uid,
            }),
            _ => None,
        };
        let results = parts.get(3).map(value_items).unwrap_or_default();
        if results.len() != batch.items.len() * 3 {
            return Err(corrupt(format!(
                "{} results for {} items",
                results.len() / 3,
                batch.items.len()
            )));
        }
        let mut items = Vec::with_capacity(batch.items.len());
        let mut outbox_ids = Vec::with_capacity(batch.items.len());
        for (pair, item) in results.chunks(3).zip(&batch.items) {
            outbox_ids.push(value_text(&pair[2]).filter(|id| !id.is_empty()));
            let status = value_text(&pair[0]).unwrap_or_default();
            let outcome = match (status.as_str(), item) {
                ("skipped", BatchItem::Skipped { uid, .. }) => ItemOutcome::Skipped { uid: *uid },
                (status, BatchItem::Message(_)) => {
                    let id = value_text(&pair[1])
                        .and_then(|text| MessageId::from_hex(&text).ok())
                        .ok_or_else(|| corrupt(format!("bad message id {:?}", pair[1])))?;
                    let message = MessageRef {
                        source_id: source.clone(),
                        id,
                    };
                    match status {
                        "new" => ItemOutcome::Stored(message),
                        "location" => ItemOutcome::LocationAdded(message),
                        "known" => ItemOutcome::AlreadyStored(message),
                        other => return Err(corrupt(format!("unknown item status {other:?}"))),
                    }
                }
                (other, _) => return Err(corrupt(format!("item status {other:?} for a skip"))),
            };
            items.push(outcome);
        }
        Ok((items, checkpoint, outbox_ids))
    }

    /// The checkpoint of `folder`, if one was written.
    pub async fn checkpoint(&self, source: &SourceId, folder: &str) -> Result<Option<Checkpoint>> {
        let mut conn = self.conn.clone();
        let (uidvalidity, last_uid): (Option<u32>, Option<u32>) = redis::cmd("HMGET")
            .arg(keys::checkpoint_key(source, folder))
            .arg("uidvalidity")
            .arg("last_uid")
            .query_async(&mut conn)
            .await
            .map_err(redis_error("read a checkpoint", source.as_str()))?;
        Ok(match (uidvalidity, last_uid) {
            (Some(uidvalidity), Some(last_uid)) => Some(Checkpoint {
                uidvalidity,
                last_uid,
            }),
            _ => None,
        })
    }

    /// Makes `lease`'s folder checkpoint one of `mailbox` (who logs in where, e.g.
    /// `soc@corp.example@outlook.office365.com:993`) before a sync reads it: a checkpoint
    /// made on another mailbox is dropped, with what goes with it (how far actions were
    /// applied, the skipped messages), so the folder syncs from its first UID. UIDs and
    /// UIDVALIDITY say nothing across mailboxes, and two mailboxes' folders can share a
    /// UIDVALIDITY, so a source moved to another mailbox would otherwise skip the new
    /// mailbox's messages up to the old checkpoint. Nothing is stored twice: a message's
    /// identity is its content. A checkpoint written before mailboxes were recorded is
    /// taken as `mailbox`'s.
    ///
    /// Returns whether a checkpoint was dropped; fails with [`StoreError::StaleFence`]
    /// (changing nothing) when `lease` is not held.
    pub async fn claim_checkpoint(&self, lease: &Lease, mailbox: &str) -> Result<bool> {
        let (source, folder) = (&lease.source_id, &lease.folder);
        let mut conn = self.conn.clone();
        let (outcome, held): (i64, String) = self
            .inner
            .claim_script
            .key(keys::lease_key(source, folder))
            .key(keys::checkpoint_key(source, folder))
            .key(keys::checkpoint_mailbox_key(source, folder))
            .key(keys::skipped_key(source, folder))
            .arg(lease.token)
            .arg(mailbox)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("claim a checkpoint", source.as_str()))?;
        match outcome {
            -1 => Err(StoreError::StaleFence {
                source_id: source.clone(),
                folder: folder.clone(),
                token: lease.token,
                held: if held.is_empty() {
                    "none".to_owned()
                } else {
                    held
                },
            }),
            dropped => Ok(dropped == 1),
        }
    }

    /// How far `folder`'s action after processing was applied, if it was recorded.
    pub async fn actions_done(
        &self,
        source: &SourceId,
        folder: &str,
    ) -> Result<Option<ActionsDone>> {
        let mut conn = self.conn.clone();
        let (uidvalidity, action, through_uid): (Option<u32>, Option<String>, Option<u32>) =
            redis::cmd("HMGET")
                .arg(keys::checkpoint_key(source, folder))
                .arg("acted_uidvalidity")
                .arg("acted_action")
                .arg("acted_uid")
                .query_async(&mut conn)
                .await
                .map_err(redis_error(
                    "read how far actions were applied",
                    source.as_str(),
                ))?;
        Ok(match (uidvalidity, action, through_uid) {
            (Some(uidvalidity), Some(action), Some(through_uid)) => Some(ActionsDone {
                uidvalidity,
                action,
                through_uid,
            }),
            _ => None,
        })
    }

    /// Records that `done.action` was applied through `done.through_uid`, while `lease` is
    /// held: `false` (nothing written) when it is not. The record only moves forward for
    /// the same action and UIDVALIDITY; another action or UIDVALIDITY replaces it.
    pub async fn record_actions_done(&self, lease: &Lease, done: &ActionsDone) -> Result<bool> {
        let mut conn = self.conn.clone();
        let written: i64 = self
            .inner
            .actions_script
            .key(keys::lease_key(&lease.source_id, &lease.folder))
            .key(keys::checkpoint_key(&lease.source_id, &lease.folder))
            .arg(lease.token)
            .arg(done.uidvalidity)
            .arg(&done.action)
            .arg(done.through_uid)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error(
                "record how far actions were applied",
                lease.source_id.as_str(),
            ))?;
        Ok(written == 1)
    }

    /// The messages of `folder` recorded as skipped: (uidvalidity, uid, size, reason).
    pub async fn skipped(
        &self,
        source: &SourceId,
        folder: &str,
    ) -> Result<Vec<(u32, u32, u64, String)>> {
        let mut conn = self.conn.clone();
        let entries: Vec<(String, String)> = redis::cmd("HGETALL")
            .arg(keys::skipped_key(source, folder))
            .query_async(&mut conn)
            .await
            .map_err(redis_error("read skipped messages", source.as_str()))?;
        let mut skipped: Vec<(u32, u32, u64, String)> = entries
            .into_iter()
            .filter_map(|(field, value)| {
                let (uidvalidity, uid) = field.split_once(':')?;
                let (size, reason) = value.split_once(' ').unwrap_or((&value, ""));
                Some((
                    uidvalidity.parse().ok()?,
                    uid.parse().ok()?,
                    size.parse().ok()?,
                    reason.to_owned(),
                ))
            })
            .collect();
        skipped.sort();
        Ok(skipped)
    }
}

/// `KEYS`: 1 lease, 2 checkpoint. `ARGV`: 1 fencing token, 2 uidvalidity, 3 action, 4 uid.
/// Returns 1 when the lease is held (the record moved forward, or already was as far), 0
/// when it is not (nothing written).
pub(crate) const ACTIONS_SCRIPT: &str = r"
local held = redis.call('GET', KEYS[1])
if not held or string.match(held, '^(%d+):') ~= ARGV[1] then
  return 0
end
local current = redis.call('HMGET', KEYS[2], 'acted_uidvalidity', 'acted_action', 'acted_uid')
if current[1] == ARGV[2] and current[2] == ARGV[3] and tonumber(current[3]) >= tonumber(ARGV[4]) then
  return 1
end
redis.call('HSET', KEYS[2], 'acted_uidvalidity', ARGV[2], 'acted_action', ARGV[3], 'acted_uid', ARGV[4])
return 1
";

/// `KEYS`: 1 lease, 2 checkpoint, 3 the checkpoint's mailbox, 4 skipped. `ARGV`: 1 fencing
/// token, 2 mailbox. Returns `{-1, held}` when the lease is not held (nothing written),
/// `{1, ''}` when a checkpoint of another mailbox was dropped, `{0, ''}` otherwise.
pub(crate) const CLAIM_SCRIPT: &str = r"
local held = redis.call('GET', KEYS[1])
if not held or string.match(held, '^(%d+):') ~= ARGV[1] then
  return {-1, held or ''}
end
local current = redis.call('GET', KEYS[3])
if current == ARGV[2] then
  return {0, ''}
end
if not current then
  -- No mailbox recorded: a new folder, or a checkpoint from before mailboxes were
  -- recorded, which was made on the mailbox the source has now.
  redis.call('SET', KEYS[3], ARGV[2])
  return {0, ''}
end
local dropped = redis.call('DEL', KEYS[2], KEYS[4])
redis.call('SET', KEYS[3], ARGV[2])
if dropped > 0 then
  return {1, ''}
end
return {0, ''}
";

/// `KEYS`: 1 lease, 2 checkpoint, 3 outbox, 4 index, 5 folder index, 6 skipped. `ARGV`:
/// 1 key prefix `tm:{<source>}:`, 2 folder, 3 uidvalidity, 4 checkpoint UID or '',
/// 5 fencing token or '', 6 now (ms), 7 item count, then per item either
/// `s uid size reason` or `m uid sha256 id sortkey record summary`. Returns `{'stale', held}` or
/// `{'ok', uidvalidity, last_uid, {status, id, outbox id}…}`.
///
/// Per-message keys (`msg:`, `loc:`, `by-sha:`) carry the source's hash tag like every
/// declared key, so they are in its slot.
pub(crate) const WRITE_SCRIPT: &str = r"
local prefix, folder, uidvalidity = ARGV[1], ARGV[2], ARGV[3]
local checkpoint_uid, fence, now = ARGV[4], ARGV[5], ARGV[6]
local count = tonumber(ARGV[7])
-- Scores are passed as strings: a Lua number would be formatted with printf on every call.

if fence ~= '' then
  local held = redis.call('GET', KEYS[1])
  local token = held and string.match(held, '^(%d+):')
  if token ~= fence then
    return {'stale', held or ''}
  end
end

local results = {}
local at = 8
for _ = 1, count do
  if ARGV[at] == 's' then
    redis.call('HSET', KEYS[6], uidvalidity .. ':' .. ARGV[at + 1], ARGV[at + 2] .. ' ' .. ARGV[at + 3])
    results[#results + 1] = 'skipped'
    results[#results + 1] = ''
    results[#results + 1] = ''
    at = at + 4
  else
    local uid, sha, id = ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
    local sortkey, record, summary = ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
    at = at + 7

    -- The record id derives from the identity (the header identity when there is one), so
    -- a re-rendered copy computes the id of the existing record; by-sha finds records
    -- whose id was computed otherwise (an earlier parser version).
    local existing = redis.call('GET', prefix .. 'by-sha:' .. sha)
    local known_sortkey = redis.call('HGET', prefix .. 'msg:' .. (existing or id), 'sortkey')
    local status
    local outbox_id = ''
    if known_sortkey then
      if not existing then
        -- A re-rendered copy: its bytes now find the record directly.
        redis.call('SET', prefix .. 'by-sha:' .. sha, id)
      end
      id, sortkey, status = existing or id, known_sortkey, 'known'
    else
      redis.call('HSET', prefix .. 'msg:' .. id, 'record', record, 'summary', summary, 'sortkey', sortkey, 'sha256', sha)
      redis.call('SET', prefix .. 'by-sha:' .. sha, id)
      redis.call('ZADD', KEYS[4], '0', sortkey)
      -- The entry names the record; a drain after a crash reads the index terms from it.
      outbox_id = redis.call('XADD', KEYS[3], '*', 'id', id, 'sortkey', sortkey, 'sha256', sha, 'ingested_at', now)
      status = 'new'
    end
    local added = redis.call('HSETNX', prefix .. 'loc:' .. id, folder .. '\0' .. uidvalidity .. '\0' .. uid, sha .. '\0' .. now)
    if added == 1 and status == 'known' then
      status = 'location'
      redis.call('ZADD', KEYS[5], '0', folder .. '\0' .. sortkey)
    elseif status == 'new' then
      redis.call('ZADD', KEYS[5], '0', folder .. '\0' .. sortkey)
    end
    results[#results + 1] = status
    results[#results + 1] = id
    results[#results + 1] = outbox_id
  end
end

if checkpoint_uid ~= '' then
  local current = redis.call('HMGET', KEYS[2], 'uidvalidity', 'last_uid')
  local ahead = current[1] == uidvalidity and current[2] and tonumber(current[2]) >= tonumber(checkpoint_uid)
  if not ahead then
    redis.call('HSET', KEYS[2], 'uidvalidity', uidvalidity, 'last_uid', checkpoint_uid, 'updated_at', now)
  end
end
local checkpoint = redis.call('HMGET', KEYS[2], 'uidvalidity', 'last_uid')
return {'ok', checkpoint[1] or '', checkpoint[2] or '', results}
";
