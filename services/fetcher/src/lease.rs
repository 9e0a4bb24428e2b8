//! Work leases in Redis: which fetcher syncs which (source, folder), with fencing tokens,
//! and the fleet-wide cap on IMAP connections per mailbox.
//!
//! A lease is a key `tm:{<source>}:lease:<folder id>` holding `<owner> <fence>`, set with a
//! millisecond expiry. The fence comes from `INCR tm:{<source>}:fence`, so every lease ever
//! granted on a source has a larger fence than the ones before it. A fetcher that stalled
//! past its lease (GC pause, SIGSTOP) still believes it holds it; the store's write checks
//! the lease key against the fence in the same atomic step, so that fetcher's late write
//! is refused. Both keys carry the source's hash tag: on Redis Cluster they sit in the slot
//! of the source's records and checkpoints, where that script runs.
//!
//! The connection cap is a sorted set per mailbox address: members are connection ids,
//! scores their expiry in milliseconds; expired members are dropped before counting, so a
//! fetcher that died frees its slots when they expire.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// Redis failed or is unreachable.
    #[error("failed to talk to redis about the lease of {what}")]
    Redis {
        what: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Result alias of this module.
pub type Result<T, E = LeaseError> = std::result::Result<T, E>;

/// A lease held on one (source, folder).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease key.
    pub key: String,
    /// Who holds it (a fetcher instance id).
    pub owner: String,
    /// The fencing token: larger than every earlier lease's on this source.
    pub fence: u64,
}

impl Lease {
    /// The value stored under the key while this lease is held; the store's write compares
    /// the key with it.
    pub fn value(&self) -> String {
        format!("{} {}", self.owner, self.fence)
    }
}

/// `tm:{<source>}:lease:<folder id>`.
pub fn lease_key(source_id: &str, folder_id: &str) -> String {
    format!("tm:{{{source_id}}}:lease:{folder_id}")
}

/// `tm:{<source>}:fence`.
pub fn fence_key(source_id: &str) -> String {
    format!("tm:{{{source_id}}}:fence")
}

/// `tm:{mailbox:<address>}:connections`, one per mailbox whatever the source.
pub fn connections_key(mailbox: &str) -> String {
    format!(
        "tm:{{mailbox:{}}}:connections",
        mailbox.to_ascii_lowercase()
    )
}

const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local fence = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. fence, 'PX', ARGV[2])
return fence
";

const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

const TAKE_SLOT: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// Leases and connection slots, through a shared connection manager.
#[derive(Clone)]
pub struct Leases {
    conn: ConnectionManager,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leases").finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl Leases {
    /// Leases over `conn`.
    pub fn new(conn: ConnectionManager) -> Self {
        Self { conn }
    }

    /// Takes the lease of (source, folder) for `ttl` if nobody holds it.
    pub async fn acquire(
        &self,
        source_id: &str,
        folder_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let key = lease_key(source_id, folder_id);
        let fence: Option<u64> = Script::new(ACQUIRE)
            .key(&key)
            .key(fence_key(source_id))
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| LeaseError::Redis {
                what: key.clone(),
                source,
            })?;
        Ok(fence.map(|fence| Lease {
            key,
            owner: owner.to_owned(),
            fence,
        }))
    }

    /// Extends a held lease by `ttl`; false when it was lost (expired or taken over).
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let renewed: i64 = Script::new(RENEW)
            .key(&lease.key)
            .arg(lease.value())
            .arg(millis(ttl))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| LeaseError::Redis {
                what: lease.key.clone(),
                source,
            })?;
        Ok(renewed == 1)
    }

    /// Gives a lease back; a lease already lost is left to its new holder.
    pub async fn release(&self, lease: &Lease) -> Result<bool> {
        let released: i64 = Script::new(RELEASE)
            .key(&lease.key)
            .arg(lease.value())
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| LeaseError::Redis {
                what: lease.key.clone(),
                source,
            })?;
        Ok(released == 1)
    }

    /// Takes (or refreshes) connection slot `connection_id` of `mailbox` for `ttl`, unless
    /// `cap` slots are taken already across the fleet.
    pub async fn take_connection_slot(
        &self,
        mailbox: &str,
        connection_id: &str,
        cap: u32,
        ttl: Duration,
    ) -> Result<bool> {
        let key = connections_key(mailbox);
        let now = now_millis();
        let taken: i64 = Script::new(TAKE_SLOT)
            .key(&key)
            .arg(now)
            .arg(now.saturating_add(millis(ttl)))
            .arg(connection_id)
            .arg(cap)
            .arg(millis(ttl).saturating_mul(2))
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(|source| LeaseError::Redis {
                what: key.clone(),
                source,
            })?;
        Ok(taken == 1)
    }

    /// Frees a connection slot.
    pub async fn release_connection_slot(&self, mailbox: &str, connection_id: &str) -> Result<()> {
        let key = connections_key(mailbox);
        redis::cmd("ZREM")
            .arg(&key)
            .arg(connection_id)
            .query_async::<()>(&mut self.conn.clone())
            .await
            .map_err(|source| LeaseError::Redis { what: key, source })
    }
}

/// Wall-clock milliseconds: slot expiries are compared across machines, so they use the
/// shared clock, not a monotonic one.
fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
