//! The Redis layout of sources, and every read and write of it.
//!
//! Every key of one source carries its id as the hash tag, `tm:{<source id>}:…` (DESIGN §6),
//! so a script or `MULTI` touching a source, its folders and their status stays in one
//! Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `tm:{<id>}:source` | hash | `version` (decimal, starts at 1) and `record` (the [`SourceRecord`] as JSON, secrets sealed) |
//! | `tm:{<id>}:folders` | string | the folder selection as JSON ([`crate::folders`]); absent: none yet |
//! | `tm:{<id>}:status:<hex>` | hash | one folder's sync status ([`crate::status`]) |
//! | `tm:{<id>}:status-index` | set | the hex names that have a status hash |
//! | `tm:source-names` | hash | lower-cased trimmed name → `<id> <reserved at>`: unique names, and the list of sources |
//!
//! The version lives in its own field so a write can compare and set it in one script
//! (optimistic concurrency): an update or a new folder selection names the version it read,
//! and the script refuses it with [`StoreError::VersionConflict`] if the version moved;
//! otherwise it writes and increments the version. Both the record and the selection are
//! under that one version.
//!
//! Names span sources, so their index lives in its own key (another cluster slot) and is
//! kept by reservation rather than in the same script: a name is reserved (`HSETNX`-like
//! script) before the record is written, and released after a rename or delete. A
//! reservation whose source does not exist or no longer has that name (a crash between the
//! two steps) is taken over once it is older than [`RESERVATION_GRACE_SECS`]; a create
//! re-checks its reservation after writing and undoes itself if it lost it, so two sources
//! never end up with one name. [`SourceStore::insert`] writes a record without touching the
//! name index: it is for seeding tests (such a source is not listed).

use std::collections::HashMap;

use redis::aio::ConnectionManager;

use crate::folders::{self, FolderSelection};
use crate::record::{SCHEMA_VERSION, SourceId, SourceRecord};
use crate::status::{self, FolderStatus};

/// The field of the source hash holding the version.
pub const VERSION_FIELD: &str = "version";
/// The field of the source hash holding the record JSON.
pub const RECORD_FIELD: &str = "record";
/// The hash of reserved names.
pub const NAMES_KEY: &str = "tm:source-names";
/// How old a reservation without a matching source must be before another source may take
/// the name over (a create or rename in flight takes milliseconds).
pub const RESERVATION_GRACE_SECS: i64 = 30;

/// `tm:{<id>}:source`.
pub fn source_key(id: &SourceId) -> String {
    format!("tm:{{{}}}:source", id.as_str())
}

/// `tm:{<id>}:folders`.
pub fn folders_key(id: &SourceId) -> String {
    format!("tm:{{{}}}:folders", id.as_str())
}

/// The field of [`NAMES_KEY`] for a name: trimmed and lower-cased, so names differing only
/// in case or surrounding spaces are the same name.
pub fn name_field(name: &str) -> String {
    name.trim().to_lowercase()
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
    /// Redis failed while reading the name index.
    #[error("failed to talk to redis about the source names")]
    RedisNames(#[source] redis::RedisError),
    /// Redis failed while reading or writing which fetchers run ([`crate::fleet`]).
    #[error("failed to talk to redis about the running fetchers")]
    RedisFleet(#[source] redis::RedisError),
    /// The stored record does not parse (or is of a newer layout).
    #[error("failed to read the stored record of source {source_id}: {problem}")]
    Corrupt {
        /// The source.
        source_id: SourceId,
        /// What is wrong.
        problem: String,
    },
    /// [`SourceStore::insert`] or [`SourceStore::create`] found the id taken.
    #[error("source {source_id} already exists")]
    AlreadyExists {
        /// The source.
        source_id: SourceId,
    },
    /// Another source has this name.
    #[error("failed to name source {source_id} {name:?}: source {holder} has that name")]
    NameTaken {
        /// The source being written.
        source_id: SourceId,
        /// The name.
        name: String,
        /// The source holding it.
        holder: String,
    },
    /// No source with this id.
    #[error("source {source_id} does not exist")]
    NotFound {
        /// The source.
        source_id: SourceId,
    },
    /// The source changed since the caller read it.
    #[error(
        "source {source_id} changed since it was read (version {expected}, now {current}): read it again and retry"
    )]
    VersionConflict {
        /// The source.
        source_id: SourceId,
        /// The version the caller read.
        expected: u64,
        /// The version now stored.
        current: u64,
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

/// The outcome of a compare-and-set script: `{1, new version}`, `{0, current version}` or
/// `{-1, 0}` when the source is gone.
fn cas_outcome(id: &SourceId, expected: u64, reply: &[i64]) -> Result<u64> {
    let version = |n: i64| u64::try_from(n).unwrap_or_default();
    match reply {
        [1, new] => Ok(version(*new)),
        [0, current] => Err(StoreError::VersionConflict {
            source_id: id.clone(),
            expected,
            current: version(*current),
        }),
        _ => Err(StoreError::NotFound {
            source_id: id.clone(),
        }),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

impl SourceStore {
    /// Uses `conn` (cloned per call, as redis-rs intends).
    pub fn new(conn: ConnectionManager) -> Self {
        SourceStore { conn }
    }

    /// A clone of the connection (cheap), for the modules that extend this store.
    pub(crate) fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    fn redis_error(id: &SourceId) -> impl FnOnce(redis::RedisError) -> StoreError + '_ {
        move |source| StoreError::Redis {
            source_id: id.clone(),
            source,
        }
    }

    /// The record with `id`, with its version, or `None`.
    pub async fn get(&self, id: &SourceId) -> Result<Option<SourceRecord>> {
        let read = || {
            let mut conn = self.conn.clone();
            let key = source_key(id);
            async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(VERSION_FIELD)
                    .arg(RECORD_FIELD)
                    .query_async::<(Option<u64>, Option<String>)>(&mut conn)
                    .await
            }
        };
        // The broker reads a source for every token request: the first one after a Redis
        // restart must not fail.
        let (version, record) = threatmail_runtime::read_again_if_dropped(read)
            .await
            .map_err(Self::redis_error(id))?;
        let (Some(version), Some(record)) = (version, record) else {
            return Ok(None);
        };
        decode(id, version, &record).map(Some)
    }

    /// The record and its folder selection, read together (one `MULTI`), or `None`.
    pub async fn get_with_folders(
        &self,
        id: &SourceId,
    ) -> Result<Option<(SourceRecord, Vec<FolderSelection>)>> {
        let mut conn = self.conn.clone();
        let ((version, record), selection): ((Option<u64>, Option<String>), Option<String>) =
            redis::pipe()
                .atomic()
                .cmd("HMGET")
                .arg(source_key(id))
                .arg(VERSION_FIELD)
                .arg(RECORD_FIELD)
                .cmd("GET")
                .arg(folders_key(id))
                .query_async(&mut conn)
                .await
                .map_err(Self::redis_error(id))?;
        let (Some(version), Some(record)) = (version, record) else {
            return Ok(None);
        };
        let record = decode(id, version, &record)?;
        let selection = match selection {
            Some(json) => folders::decode(&json).map_err(|error| StoreError::Corrupt {
                source_id: id.clone(),
                problem: format!("the folder selection does not parse: {error}"),
            })?,
            None => Vec::new(),
        };
        Ok(Some((record, selection)))
    }

    /// Writes a new record with version 1 without reserving its name; fails if the id
    /// exists. For seeding tests: such a source is not listed.
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
            .map_err(Self::redis_error(&record.id))?;
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

    /// Creates a source: reserves its name, writes the record with version 1.
    pub async fn create(&self, record: &SourceRecord) -> Result<SourceRecord> {
        let name = name_field(&record.name);
        self.reserve_name(&record.id, &record.name).await?;
        let stored = match self.insert(record).await {
            Ok(stored) => stored,
            Err(error) => {
                self.release_name(&record.id, &name).await?;
                return Err(error);
            }
        };
        // Another create may have taken over the reservation as stale while this one was
        // writing (only after a long stall); then this one undoes itself.
        match self.name_holder(&name).await? {
            Some((holder, _)) if holder == record.id.as_str() => Ok(stored),
            holder => {
                self.delete_keys(&record.id).await?;
                Err(StoreError::NameTaken {
                    source_id: record.id.clone(),
                    name: record.name.clone(),
                    holder: holder.map(|(h, _)| h).unwrap_or_default(),
                })
            }
        }
    }

    /// Replaces the record of `record.id` if its version is still `expected_version`, and
    /// moves its name reservation when the name changed. Returns the record with its new
    /// version.
    pub async fn update(
        &self,
        record: &SourceRecord,
        expected_version: u64,
    ) -> Result<SourceRecord> {
        let id = &record.id;
        let current = self.get(id).await?.ok_or_else(|| StoreError::NotFound {
            source_id: id.clone(),
        })?;
        if current.version != expected_version {
            return Err(StoreError::VersionConflict {
                source_id: id.clone(),
                expected: expected_version,
                current: current.version,
            });
        }
        let old_name = name_field(&current.name);
        let new_name = name_field(&record.name);
        let renamed = old_name != new_name;
        if renamed {
            self.reserve_name(id, &record.name).await?;
        }
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = redis::Script::new(UPDATE_SCRIPT)
            .key(source_key(id))
            .arg(VERSION_FIELD)
            .arg(RECORD_FIELD)
            .arg(expected_version)
            .arg(encode(record))
            .invoke_async(&mut conn)
            .await
            .map_err(Self::redis_error(id))?;
        match cas_outcome(id, expected_version, &reply) {
            Ok(version) => {
                if renamed {
                    self.release_name(id, &old_name).await?;
                }
                Ok(SourceRecord {
                    version,
                    ..record.clone()
                })
            }
            Err(error) => {
                if renamed {
                    self.release_name(id, &new_name).await?;
                }
                Err(error)
            }
        }
    }

    /// Replaces the folder selection if the source's version is still `expected_version`;
    /// returns the new version.
    pub async fn set_folders(
        &self,
        id: &SourceId,
        expected_version: u64,
        selection: &[FolderSelection],
    ) -> Result<u64> {
        let mut conn = self.conn.clone();
        let reply: Vec<i64> = redis::Script::new(SET_FOLDERS_SCRIPT)
            .key(source_key(id))
            .key(folders_key(id))
            .arg(VERSION_FIELD)
            .arg(expected_version)
            .arg(folders::encode(selection))
            .invoke_async(&mut conn)
            .await
            .map_err(Self::redis_error(id))?;
        cas_outcome(id, expected_version, &reply)
    }

    /// Deletes a source, its folder selection and its folder statuses, and releases its
    /// name; false if there was no such source.
    pub async fn delete(&self, id: &SourceId) -> Result<bool> {
        let record = self.get(id).await?;
        let existed = self.delete_keys(id).await?;
        if let Some(record) = record {
            self.release_name(id, &name_field(&record.name)).await?;
        }
        Ok(existed)
    }

    async fn delete_keys(&self, id: &SourceId) -> Result<bool> {
        let mut conn = self.conn.clone();
        let existed: i64 = redis::Script::new(DELETE_SCRIPT)
            .key(source_key(id))
            .key(folders_key(id))
            .key(status::status_index_key(id))
            .arg(format!("tm:{{{}}}:status:", id.as_str()))
            .invoke_async(&mut conn)
            .await
            .map_err(Self::redis_error(id))?;
        Ok(existed == 1)
    }

    /// Every named source, by name.
    pub async fn list(&self) -> Result<Vec<SourceRecord>> {
        let mut conn = self.conn.clone();
        let names: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(NAMES_KEY)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::RedisNames)?;
        let mut records = Vec::with_capacity(names.len());
        for (name, value) in names {
            let Some((holder, _)) = parse_reservation(&value) else {
                continue;
            };
            let Ok(id) = SourceId::parse(&holder) else {
                continue;
            };
            // A reservation left by a crash has no record, or one with another name.
            if let Some(record) = self.get(&id).await?
                && name_field(&record.name) == name
            {
                records.push(record);
            }
        }
        records.sort_by_key(|a| name_field(&a.name));
        Ok(records)
    }

    /// The id of the source named `name`, if any.
    pub async fn id_by_name(&self, name: &str) -> Result<Option<SourceId>> {
        let field = name_field(name);
        let Some((holder, _)) = self.name_holder(&field).await? else {
            return Ok(None);
        };
        let Ok(id) = SourceId::parse(&holder) else {
            return Ok(None);
        };
        Ok(self
            .get(&id)
            .await?
            .filter(|record| name_field(&record.name) == field)
            .map(|record| record.id))
    }

    async fn name_holder(&self, field: &str) -> Result<Option<(String, i64)>> {
        let mut conn = self.conn.clone();
        let value: Option<String> = redis::cmd("HGET")
            .arg(NAMES_KEY)
            .arg(field)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::RedisNames)?;
        Ok(value.as_deref().and_then(parse_reservation))
    }

    /// Reserves `name` for `id` (already reserved for it is fine).
    async fn reserve_name(&self, id: &SourceId, name: &str) -> Result<()> {
        let field = name_field(name);
        let taken = |holder: String| StoreError::NameTaken {
            source_id: id.clone(),
            name: name.trim().to_owned(),
            holder,
        };
        // Two rounds: a stale reservation taken over by someone else between the reads
        // is then read again.
        for _ in 0..2 {
            let now = now_secs();
            let mine = format!("{} {now}", id.as_str());
            let mut conn = self.conn.clone();
            let current: String = redis::Script::new(RESERVE_SCRIPT)
                .key(NAMES_KEY)
                .arg(&field)
                .arg(id.as_str())
                .arg(&mine)
                .invoke_async(&mut conn)
                .await
                .map_err(Self::redis_error(id))?;
            if current.is_empty() {
                return Ok(());
            }
            let Some((holder, reserved_at)) = parse_reservation(&current) else {
                return Err(taken(current));
            };
            let holder_has_it = match SourceId::parse(&holder) {
                Ok(holder_id) => self
                    .get(&holder_id)
                    .await?
                    .is_some_and(|record| name_field(&record.name) == field),
                Err(_) => false,
            };
            if holder_has_it || now - reserved_at < RESERVATION_GRACE_SECS {
                return Err(taken(holder));
            }
            let swapped: i64 = redis::Script::new(RECLAIM_SCRIPT)
                .key(NAMES_KEY)
                .arg(&field)
                .arg(&current)
                .arg(&mine)
                .invoke_async(&mut conn)
                .await
                .map_err(Self::redis_error(id))?;
            if swapped == 1 {
                return Ok(());
            }
        }
        Err(taken(String::new()))
    }

    /// Releases `field` if `id` holds it.
    async fn release_name(&self, id: &SourceId, field: &str) -> Result<()> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::Script::new(RELEASE_SCRIPT)
            .key(NAMES_KEY)
            .arg(field)
            .arg(id.as_str())
            .invoke_async(&mut conn)
            .await
            .map_err(Self::redis_error(id))?;
        Ok(())
    }

    /// The status of each folder in `raw_names` (a folder never polled has a fresh one).
    pub async fn folder_statuses(
        &self,
        id: &SourceId,
        raw_names: &[String],
    ) -> Result<Vec<FolderStatus>> {
        if raw_names.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for raw in raw_names {
            pipe.cmd("HGETALL").arg(status::status_key(id, raw));
        }
        let mut conn = self.conn.clone();
        let hashes: Vec<HashMap<String, String>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(Self::redis_error(id))?;
        raw_names
            .iter()
            .zip(hashes)
            .map(|(raw, fields)| {
                FolderStatus::from_fields(raw, &fields).map_err(|problem| StoreError::Corrupt {
                    source_id: id.clone(),
                    problem: format!("the status of folder {raw:?}: {problem}"),
                })
            })
            .collect()
    }

    /// Writes one folder's status whole (fields it leaves unset are removed).
    pub async fn write_folder_status(&self, id: &SourceId, folder: &FolderStatus) -> Result<()> {
        let key = status::status_key(id, &folder.raw_name);
        let mut pipe = redis::pipe();
        pipe.atomic();
        let cleared = folder.cleared_fields();
        if !cleared.is_empty() {
            pipe.cmd("HDEL").arg(&key).arg(cleared).ignore();
        }
        pipe.cmd("HSET").arg(&key);
        for (field, value) in folder.to_fields() {
            pipe.arg(field).arg(value);
        }
        pipe.ignore()
            .cmd("SADD")
            .arg(status::status_index_key(id))
            .arg(hex::encode(folder.raw_name.as_bytes()))
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(Self::redis_error(id))
    }
}

/// `<id> <unix seconds>` → (id, seconds).
fn parse_reservation(value: &str) -> Option<(String, i64)> {
    let (id, at) = value.split_once(' ')?;
    Some((id.to_owned(), at.parse().ok()?))
}

/// `KEYS[1]` the source hash; `ARGV` version field, record field, record JSON.
const INSERT_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 1, ARGV[2], ARGV[3])
return 1
";

/// `KEYS[1]` the source hash; `ARGV` version field, record field, expected version, JSON.
const UPDATE_SCRIPT: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {-1, 0} end
if v ~= ARGV[3] then return {0, tonumber(v)} end
redis.call('HSET', KEYS[1], ARGV[2], ARGV[4])
return {1, redis.call('HINCRBY', KEYS[1], ARGV[1], 1)}
";

/// `KEYS` the source hash, the folders key; `ARGV` version field, expected version, JSON.
const SET_FOLDERS_SCRIPT: &str = r"
local v = redis.call('HGET', KEYS[1], ARGV[1])
if not v then return {-1, 0} end
if v ~= ARGV[2] then return {0, tonumber(v)} end
redis.call('SET', KEYS[2], ARGV[3])
return {1, redis.call('HINCRBY', KEYS[1], ARGV[1], 1)}
";

/// `KEYS` the source hash, the folders key, the status index; `ARGV[1]` the status key
/// prefix. The status keys are named by the index, all under the same hash tag.
const DELETE_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
for _, name in ipairs(redis.call('SMEMBERS', KEYS[3])) do
  redis.call('DEL', ARGV[1] .. name)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return existed
";

/// `KEYS[1]` the names hash; `ARGV` name field, id, `<id> <now>`. Returns '' when the name
/// is now (or already was) reserved for the id, else the current reservation.
const RESERVE_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if not current then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return ''
end
if string.match(current, '^(%S+)') == ARGV[2] then return '' end
return current
";

/// `KEYS[1]` the names hash; `ARGV` name field, the stale reservation, the new one.
const RECLAIM_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
";

/// `KEYS[1]` the names hash; `ARGV` name field, id.
const RELEASE_SCRIPT: &str = r"
local current = redis.call('HGET', KEYS[1], ARGV[1])
if current and string.match(current, '^(%S+)') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
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
