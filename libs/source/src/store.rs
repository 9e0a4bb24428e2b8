//! The Redis layout of sources, and reading them.
//!
//! Every key of one source carries its id as the hash tag, `tm:{<source id>}:…` (DESIGN §6),
//! so a script or `MULTI` touching a source and its folders stays in one Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `tm:{<id>}:source` | hash | `version` (decimal, starts at 1) and `record` (the [`SourceRecord`] as JSON, secrets sealed) |
//! | `tm:{<id>}:folders` | (registry) | the folder selection |
//!
//! The version lives in its own field so an update can compare and set it in one script
//! (optimistic concurrency): the registry's update checks `version` equals the version it
//! read, writes `record` and increments `version`. [`SourceStore::get`] is the broker's
//! reader; [`SourceStore::insert`] writes a new record (version 1) and refuses an existing
//! id, which is all seeding and tests need. Name uniqueness, listing, update and delete are
//! the registry's.

use redis::aio::ConnectionManager;

use crate::record::{SCHEMA_VERSION, SourceId, SourceRecord};

/// The field of the source hash holding the version.
pub const VERSION_FIELD: &str = "version";
/// The field of the source hash holding the record JSON.
pub const RECORD_FIELD: &str = "record";

/// `tm:{<id>}:source`.
pub fn source_key(id: &SourceId) -> String {
    format!("tm:{{{}}}:source", id.as_str())
}

/// `tm:{<id>}:folders`.
pub fn folders_key(id: &SourceId) -> String {
    format!("tm:{{{}}}:folders", id.as_str())
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or is unreachable.
    #[error("failed to talk to redis about source {source_id}")]
    Redis {
        /// The source.
        source_id: SourceId,
        /// Why.
        #[source]
        source: redis::RedisError,
    },
    /// The stored record does not parse (or is of a newer layout).
    #[error("failed to read the stored record of source {source_id}: {problem}")]
    Corrupt {
        /// The source.
        source_id: SourceId,
        /// What is wrong.
        problem: String,
    },
    /// [`SourceStore::insert`] found the id taken.
    #[error("source {source_id} already exists")]
    AlreadyExists {
        /// The source.
        source_id: SourceId,
    },
}

/// Result alias of this module.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Sources in Redis, through a shared connection manager.
#[derive(Clone)]
pub struct SourceStore {
    conn: ConnectionManager,
}

impl std::fmt::Debug for SourceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceStore").finish_non_exhaustive()
    }
}

impl SourceStore {
    /// Uses `conn` (cloned per call, as redis-rs intends).
    pub fn new(conn: ConnectionManager) -> Self {
        SourceStore { conn }
    }

    /// The record with `id`, with its version, or `None`.
    pub async fn get(&self, id: &SourceId) -> Result<Option<SourceRecord>> {
        let mut conn = self.conn.clone();
        let (version, record): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(source_key(id))
            .arg(VERSION_FIELD)
            .arg(RECORD_FIELD)
            .query_async(&mut conn)
            .await
            .map_err(|source| StoreError::Redis {
                source_id: id.clone(),
                source,
            })?;
        let (Some(version), Some(record)) = (version, record) else {
            return Ok(None);
        };
        decode(id, version, &record).map(Some)
    }

    /// Writes a new record with version 1; fails if the id exists.
    pub async fn insert(&self, record: &SourceRecord) -> Result<SourceRecord> {
        let json = encode(record);
        let mut conn = self.conn.clone();
        let created: i64 = redis::Script::new(INSERT_SCRIPT)
            .key(source_key(&record.id))
            .arg(VERSION_FIELD)
            .arg(RECORD_FIELD)
            .arg(json)
            .invoke_async(&mut conn)
            .await
            .map_err(|source| StoreError::Redis {
                source_id: record.id.clone(),
                source,
            })?;
        if created == 0 {
            return Err(StoreError::AlreadyExists {
                source_id: record.id.clone(),
            });
        }
        Ok(SourceRecord {
            version: 1,
            ..record.clone()
        })
    }
}

/// `KEYS[1]` the source hash; `ARGV` version field, record field, record JSON.
const INSERT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 1, ARGV[2], ARGV[3])
return 1
";

/// The JSON stored in the `record` field.
pub fn encode(record: &SourceRecord) -> String {
    // Serialising plain data (strings, numbers, enums) into a String cannot fail.
    serde_json::to_string(record).unwrap_or_else(|_| unreachable!("record serialises"))
}

/// A record from its `version` and `record` fields.
pub fn decode(id: &SourceId, version: u64, json: &str) -> Result<SourceRecord> {
    let mut record: SourceRecord =
        serde_json::from_str(json).map_err(|error| StoreError::Corrupt {
            source_id: id.clone(),
            problem: error.to_string(),
        })?;
    if record.schema > SCHEMA_VERSION {
        return Err(StoreError::Corrupt {
            source_id: id.clone(),
            problem: format!(
                "layout version {} is newer than this program's {SCHEMA_VERSION}",
                record.schema
            ),
        });
    }
    if &record.id != id {
        return Err(StoreError::Corrupt {
            source_id: id.clone(),
            problem: format!("the record names source {}", record.id),
        });
    }
    record.version = version;
    Ok(record)
}
