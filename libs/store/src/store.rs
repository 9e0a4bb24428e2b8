//! The [`Store`] handle: a Redis connection manager, the blob store and the scripts, shared
//! by every task of a process.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use redis::aio::ConnectionManager;
use threatmail_source::SourceId;

use crate::blob::BlobStore;
use crate::error::{Result, StoreError, redis_error};
use crate::keys;

/// Where the test hook stops an operation, as a process dying there would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After a write's atomic step committed, before its outbox is drained.
    AfterCommit,
    /// After the drain put outbox entries into the event stream, before it removed them
    /// from the outbox.
    AfterEmit,
}

/// Stored mail: the write path the fetcher calls in-process, and the reads of the mailbox
/// service. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) conn: ConnectionManager,
    pub(crate) blobs: BlobStore,
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// Sources already recorded in `tm:{mailbox}:sources` by this process.
    known_sources: Mutex<HashSet<SourceId>>,
    /// The test hook's next crash, taken when reached.
    crash: Mutex<Option<CrashPoint>>,
    pub(crate) write_script: redis::Script,
    pub(crate) emit_script: redis::Script,
    pub(crate) lease_script: redis::Script,
    pub(crate) actions_script: redis::Script,
    pub(crate) claim_script: redis::Script,
    /// Whether this handle loaded its scripts into Redis (`SCRIPT LOAD`), so calls go as
    /// `EVALSHA` without a first `NOSCRIPT` round trip carrying the whole batch twice.
    scripts_loaded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("blobs", &self.blobs)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// A store on `conn` (cloned per call, as redis-rs intends) and `blobs`.
    ///
    /// A reply timeout on `conn` (redis-rs's default is 0.5 s) makes a write that takes
    /// longer (a large batch queued behind others) fail as unknown; writing the batch again
    /// is safe, but a writer of large batches should give its connection a longer timeout.
    pub fn new(conn: ConnectionManager, blobs: BlobStore) -> Self {
        Store {
            conn,
            blobs,
            inner: Arc::new(Inner {
                known_sources: Mutex::new(HashSet::new()),
                crash: Mutex::new(None),
                write_script: redis::Script::new(crate::write::WRITE_SCRIPT),
                emit_script: redis::Script::new(crate::outbox::EMIT_SCRIPT),
                lease_script: redis::Script::new(crate::lease::LEASE_SCRIPT),
                actions_script: redis::Script::new(crate::write::ACTIONS_SCRIPT),
                claim_script: redis::Script::new(crate::write::CLAIM_SCRIPT),
                scripts_loaded: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Test hook: the next operation to reach `point` stops there with
    /// [`StoreError::InjectedCrash`], leaving Redis exactly as a process killed at that
    /// moment would. One shot.
    pub fn inject_crash(&self, point: CrashPoint) {
        if let Ok(mut crash) = self.inner.crash.lock() {
            *crash = Some(point);
        }
    }

    /// Fails with [`StoreError::InjectedCrash`] if the hook is set for `point` (and clears it).
    pub(crate) fn crash_here(&self, point: CrashPoint) -> Result<()> {
        let hit = match self.inner.crash.lock() {
            Ok(mut crash) if *crash == Some(point) => {
                *crash = None;
                true
            }
            _ => false,
        };
        if hit {
            Err(StoreError::InjectedCrash(point))
        } else {
            Ok(())
        }
    }

    /// Records `source` in the set of sources whose outboxes get drained, once per process.
    /// Done before a source's first write, so no outbox entry exists for a source the
    /// drainers do not know.
    pub(crate) async fn remember_source(&self, source: &SourceId) -> Result<()> {
        let known = self
            .inner
            .known_sources
            .lock()
            .map(|set| set.contains(source))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("SADD")
            .arg(keys::SOURCES)
            .arg(source.as_str())
            .query_async(&mut conn)
            .await
            .map_err(redis_error("record the source", source.as_str()))?;
        if let Ok(mut set) = self.inner.known_sources.lock() {
            set.insert(source.clone());
        }
        Ok(())
    }

    /// Loads the scripts into Redis once per handle. (A Redis that restarts later loses
    /// them; a call then falls back to `EVAL` and reloads, as redis-rs does.)
    pub async fn load_scripts(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.inner.scripts_loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        for script in [
            &self.inner.write_script,
            &self.inner.emit_script,
            &self.inner.lease_script,
            &self.inner.actions_script,
            &self.inner.claim_script,
        ] {
            let _: String = script
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map_err(redis_error("load scripts", "mailbox"))?;
        }
        self.inner.scripts_loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// The sources that ever wrote.
    pub async fn sources(&self) -> Result<Vec<SourceId>> {
        let mut conn = self.conn.clone();
        let ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys::SOURCES)
            .query_async(&mut conn)
            .await
            .map_err(redis_error("list the sources", "mailbox"))?;
        let mut sources: Vec<SourceId> = ids
            .iter()
            .filter_map(|id| SourceId::parse(id).ok())
            .collect();
        sources.sort();
        Ok(sources)
    }
}

/// Reads a Redis bulk or simple string reply as text.
pub(crate) fn value_text(value: &redis::Value) -> Option<String> {
    match value {
        redis::Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        redis::Value::SimpleString(text) => Some(text.clone()),
        redis::Value::Int(n) => Some(n.to_string()),
        redis::Value::Okay => Some("OK".to_owned()),
        _ => None,
    }
}

/// The items of an array reply.
pub(crate) fn value_items(value: &redis::Value) -> &[redis::Value] {
    match value {
        redis::Value::Array(items) | redis::Value::Set(items) => items,
        _ => &[],
    }
}
