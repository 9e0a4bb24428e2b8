//! From each source's outbox to what spans sources: the event stream downstream consumers
//! read and the cross-source indexes (DESIGN §6).
//!
//! The write script adds an outbox entry in the same atomic step as the record. Draining
//! then (1) reads entries from the outbox, (2) runs one script on the `{mailbox}` slot that,
//! per entry, emits the event and adds the index entries unless the idempotency marker
//! `tm:{mailbox}:emitted[<source>/<id>]` says it was done, setting the marker in the same
//! step, and (3) deletes the entries from the outbox. A write does (2) and (3) itself for
//! the records it just added, from what it holds (no read back), so the periodic drain
//! only has what a crash left. A crash after the commit or after (2) leaves the entries in
//! the outbox; the next drain repeats (2), which finds the markers and emits nothing twice. Every event carries the record's id, which depends only on the message's
//! identity, so no message is ever announced under two ids.

use std::collections::HashMap;

use threatmail_source::SourceId;

use crate::error::{Result, redis_error};
use crate::keys;
use crate::record::{MessageId, MessageRef};
use crate::store::{CrashPoint, Store, value_items, value_text};

/// How many outbox entries one drain step moves.
const DRAIN_BATCH: usize = 200;

/// What a drain did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Events put in the stream.
    pub emitted: usize,
    /// Entries found already emitted (a repeat after a crash).
    pub repeated: usize,
}

/// One event of `tm:{mailbox}:events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The stream entry id.
    pub stream_id: String,
    /// `message.stored`.
    pub kind: String,
    /// The record.
    pub message: MessageRef,
    /// SHA-256 of its raw bytes.
    pub sha256: String,
    /// When it was stored (Unix ms).
    pub ingested_at_ms: i64,
}

struct OutboxEntry {
    stream_id: String,
    id: String,
    sortkey: String,
    sha256: String,
    ingested_at: i64,
    senders: Vec<String>,
    iocs: Vec<String>,
}

/// One outbox entry to emit: the record and its cross-source index members.
pub(crate) struct EmitEntry<'a> {
    /// The entry's id in the source's outbox (deleted once emitted).
    pub(crate) outbox_id: &'a str,
    pub(crate) id: &'a str,
    pub(crate) sortkey: &'a str,
    pub(crate) sha256: &'a str,
    pub(crate) ingested_at: i64,
    pub(crate) senders: &'a [String],
    pub(crate) iocs: &'a [String],
}

/// Reads an `XRANGE` reply: `[[id, [field, value, …]], …]`.
fn stream_entries(reply: &redis::Value) -> Vec<(String, HashMap<String, String>)> {
    value_items(reply)
        .iter()
        .filter_map(|entry| {
            let parts = value_items(entry);
            let id = value_text(parts.first()?)?;
            let fields = value_items(parts.get(1)?);
            let map = fields
                .chunks(2)
                .filter_map(|pair| Some((value_text(pair.first()?)?, value_text(pair.get(1)?)?)))
                .collect();
            Some((id, map))
        })
        .collect()
}

impl Store {
    /// Moves `source`'s outbox into the event stream and the cross-source indexes, until
    /// the outbox is empty. Safe to run concurrently and to repeat.
    pub async fn drain(&self, source: &SourceId) -> Result<DrainReport> {
        self.load_scripts().await?;
        let mut report = DrainReport::default();
        let outbox = keys::outbox_key(source);
        loop {
            let mut conn = self.conn.clone();
            let reply: redis::Value = redis::cmd("XRANGE")
                .arg(&outbox)
                .arg("-")
                .arg("+")
                .arg("COUNT")
                .arg(DRAIN_BATCH)
                .query_async(&mut conn)
                .await
                .map_err(redis_error("read the outbox", source.as_str()))?;
            let entries: Vec<OutboxEntry> = stream_entries(&reply)
                .into_iter()
                .filter_map(|(stream_id, fields)| {
                    Some(OutboxEntry {
                        stream_id,
                        id: fields.get("id")?.clone(),
                        sortkey: fields.get("sortkey")?.clone(),
                        sha256: fields.get("sha256").cloned().unwrap_or_default(),
                        ingested_at: fields
                            .get("ingested_at")
                            .and_then(|t| t.parse().ok())
                            .unwrap_or(0),
                        senders: Vec::new(),
                        iocs: Vec::new(),
                    })
                })
                .collect();
            let found = value_items(&reply).len();
            if found == 0 {
                return Ok(report);
            }
            let mut entries = entries;
            self.load_terms(source, &mut entries).await?;
            let emit: Vec<EmitEntry<'_>> = entries
                .iter()
                .map(|e| EmitEntry {
                    outbox_id: &e.stream_id,
                    id: &e.id,
                    sortkey: &e.sortkey,
                    sha256: &e.sha256,
                    ingested_at: e.ingested_at,
                    senders: &e.senders,
                    iocs: &e.iocs,
                })
                .collect();
            let emitted = self.emit(source, &emit).await?;
            report.emitted += emitted;
            report.repeated += emit.len() - emitted;
            // Entries that do not read (none are written so) are removed too, so they
            // cannot block the outbox.
            let unreadable: Vec<String> = value_items(&reply)
                .iter()
                .filter_map(|entry| value_items(entry).first().and_then(value_text))
                .filter(|id| !entries.iter().any(|e| &e.stream_id == id))
                .collect();
            if !unreadable.is_empty() {
                tracing::warn!(source_id = %source, count = unreadable.len(), "removing unreadable outbox entries");
                let _: i64 = redis::cmd("XDEL")
                    .arg(&outbox)
                    .arg(&unreadable)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error("trim the outbox", source.as_str()))?;
            }
            if found < DRAIN_BATCH {
                return Ok(report);
            }
        }
    }

    /// Emits `entries` (each at most once ever, by its idempotency marker), then deletes
    /// them from `source`'s outbox; returns how many were emitted now.
    pub(crate) async fn emit(&self, source: &SourceId, entries: &[EmitEntry<'_>]) -> Result<usize> {
        if entries.is_empty() {
            return Ok(0);
        }
        let mut invocation = self.inner.emit_script.prepare_invoke();
        invocation
            .key(keys::EMITTED)
            .key(keys::EVENTS)
            .key(keys::GLOBAL_INDEX)
            .arg(source.as_str())
            .arg(entries.len());
        for entry in entries {
            invocation
                .arg(entry.id)
                .arg(entry.sortkey)
                .arg(entry.sha256)
                .arg(entry.ingested_at)
                .arg(entry.senders.len());
            for term in entry.senders {
                invocation.arg(keys::sender_key(term));
            }
            invocation.arg(entry.iocs.len());
            for term in entry.iocs {
                invocation.arg(keys::ioc_key(term));
            }
        }
        let mut conn = self.conn.clone();
        let emitted: Vec<i64> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("emit events", source.as_str()))?;
        self.crash_here(CrashPoint::AfterEmit)?;
        let ids: Vec<&str> = entries.iter().map(|e| e.outbox_id).collect();
        let _: i64 = redis::cmd("XDEL")
            .arg(keys::outbox_key(source))
            .arg(&ids)
            .query_async(&mut conn)
            .await
            .map_err(redis_error("trim the outbox", source.as_str()))?;
        Ok(emitted.iter().filter(|n| **n == 1).count())
    }

    /// Fills in the index terms of `entries` from their records (a record gone since is
    /// emitted without them).
    async fn load_terms(&self, source: &SourceId, entries: &mut [OutboxEntry]) -> Result<()> {
        let mut pipe = redis::pipe();
        for entry in entries.iter() {
            let key = format!("{}msg:{}", keys::source_prefix(source), entry.id);
            pipe.cmd("HMGET").arg(key).arg("record").arg("summary");
        }
        let mut conn = self.conn.clone();
        let replies: Vec<(Option<String>, Option<String>)> = pipe
            .query_async(&mut conn)
            .await
            .map_err(redis_error("read records to drain", source.as_str()))?;
        for (entry, (record, summary)) in entries.iter_mut().zip(replies) {
            let record: Option<crate::StoredRecord> =
                record.and_then(|r| serde_json::from_str(&r).ok());
            let summary: Option<crate::Summary> =
                summary.and_then(|s| serde_json::from_str(&s).ok());
            if let (Some(record), Some(summary)) = (record, summary) {
                let (senders, iocs) = crate::write::index_terms(&summary.senders, &record.parsed);
                entry.senders = senders;
                entry.iocs = iocs;
            } else {
                tracing::warn!(source_id = %source, id = %entry.id, "outbox entry without a readable record");
            }
        }
        Ok(())
    }

    /// Drains every known source's outbox; returns the total and the first error (after
    /// trying every source).
    pub async fn drain_all(&self) -> Result<DrainReport> {
        let mut total = DrainReport::default();
        let mut first_error = None;
        for source in self.sources().await? {
            match self.drain(&source).await {
                Ok(report) => {
                    total.emitted += report.emitted;
                    total.repeated += report.repeated;
                }
                Err(error) => {
                    tracing::warn!(source_id = %source, error = %threatmail_core::error::chain(&error), "outbox drain failed");
                    first_error.get_or_insert(error);
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(total),
        }
    }

    /// Entries waiting in `source`'s outbox.
    pub async fn outbox_len(&self, source: &SourceId) -> Result<usize> {
        let mut conn = self.conn.clone();
        redis::cmd("XLEN")
            .arg(keys::outbox_key(source))
            .query_async(&mut conn)
            .await
            .map_err(redis_error("measure the outbox", source.as_str()))
    }

    /// Events after stream id `after` (`0` for the first), at most `count`.
    pub async fn events(&self, after: &str, count: usize) -> Result<Vec<Event>> {
        let mut conn = self.conn.clone();
        let reply: redis::Value = redis::cmd("XRANGE")
            .arg(keys::EVENTS)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut conn)
            .await
            .map_err(redis_error("read events", "mailbox"))?;
        Ok(stream_entries(&reply)
            .into_iter()
            .filter_map(|(stream_id, fields)| {
                Some(Event {
                    stream_id,
                    kind: fields.get("type")?.clone(),
                    message: MessageRef {
                        source_id: SourceId::parse(fields.get("source_id")?).ok()?,
                        id: MessageId::from_hex(fields.get("id")?).ok()?,
                    },
                    sha256: fields.get("sha256").cloned().unwrap_or_default(),
                    ingested_at_ms: fields
                        .get("ingested_at")
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0),
                })
            })
            .collect())
    }
}

/// `KEYS`: 1 emitted markers, 2 event stream, 3 index. `ARGV`: 1 source id, 2 entry count,
/// then per entry `id sortkey sha256 ingested_at <n> sender-index-keys… <n>
/// indicator-index-keys…` (the cross-source ones, `tm:{mailbox}:sender:…` and
/// `tm:{mailbox}:ioc:…`, in the same slot as the declared keys). Returns 1 per entry
/// emitted now, 0 per entry emitted before.
pub(crate) const EMIT_SCRIPT: &str = r"
local source, count = ARGV[1], tonumber(ARGV[2])
-- Scores are passed as strings: a Lua number would be formatted with printf on every call.

local out = {}
local at = 3
for _ = 1, count do
  local id, sortkey, sha, ingested = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
  local senders = {}
  local n = tonumber(ARGV[at + 4])
  for k = 1, n do senders[k] = ARGV[at + 4 + k] end
  at = at + 5 + n
  local iocs = {}
  n = tonumber(ARGV[at])
  for k = 1, n do iocs[k] = ARGV[at + k] end
  at = at + 1 + n

  local marker = source .. '/' .. id
  if redis.call('HEXISTS', KEYS[1], marker) == 1 then
    out[#out + 1] = 0
  else
    local event = redis.call('XADD', KEYS[2], '*', 'type', 'message.stored', 'message', marker,
      'source_id', source, 'id', id, 'sha256', sha, 'ingested_at', ingested)
    redis.call('HSET', KEYS[1], marker, event)
    redis.call('ZADD', KEYS[3], '0', sortkey)
    for k = 1, #senders do
      redis.call('ZADD', senders[k], '0', sortkey)
    end
    for k = 1, #iocs do
      redis.call('ZADD', iocs[k], '0', sortkey)
    end
    out[#out + 1] = 1
  end
end
return out
";
