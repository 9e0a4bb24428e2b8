//! The fleet-wide cap on IMAP connections per mailbox (Exchange limits connections per
//! mailbox, shared by every app that opens it). Folder leases and their fencing tokens
//! live in the store (`threatmail_store::Store::acquire_lease`), whose write checks them.
//!
//! The cap is a sorted set per mailbox address: members are connection ids, scores their
//! expiry in milliseconds; expired members are dropped before counting, so a fetcher that
//! died frees its slots when they expire.
//!
//! Exchange's throttling is per mailbox too: a throttled reply asks every client of the
//! mailbox to wait. The wait is kept in a key per mailbox that expires when it is over, so
//! every fetcher holds off, not only the one that was told.

use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    /// Redis failed or is unreachable.
    #[error("failed to talk to redis about {what}")]
    Redis {
        what: String,
        #[source]
        source: redis::RedisError,
    },
}

/// Result alias of this module.
pub type Result<T, E = SlotError> = std::result::Result<T, E>;

/// `tm:{mailbox:<address>}:connections`, one per mailbox whatever the source.
pub fn connections_key(mailbox: &str) -> String {
    format!(
        "tm:{{mailbox:{}}}:connections",
        mailbox.to_ascii_lowercase()
    )
}

/// `tm:{mailbox:<address>}:throttled`, present while Exchange asks the mailbox's clients
/// to wait.
pub fn throttle_key(mailbox: &str) -> String {
    format!("tm:{{mailbox:{}}}:throttled", mailbox.to_ascii_lowercase())
}

/// Sets the wait unless a longer one is already there.
const HOLD: &str = r"
local left = redis.call('PTTL', KEYS[1])
if left < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[1])
end
return 1
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

/// Connection slots per mailbox, through a shared connection manager.
#[derive(Clone)]
pub struct ConnectionSlots {
    conn: ConnectionManager,
}

impl std::fmt::Debug for ConnectionSlots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionSlots").finish_non_exhaustive()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

impl ConnectionSlots {
    /// ConnectionSlots over `conn`.
    pub fn new(conn: ConnectionManager) -> Self {
        Self { conn }
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
            .map_err(|source| SlotError::Redis {
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
            .map_err(|source| SlotError::Redis { what: key, source })
    }
}

impl ConnectionSlots {
    /// Holds `mailbox` for `wait` across the fleet (Exchange's suggested back-off), noting
    /// `by` (a fetcher's instance name); a longer hold already there stays.
    pub async fn hold_mailbox(&self, mailbox: &str, wait: Duration, by: &str) -> Result<()> {
        let key = throttle_key(mailbox);
        Script::new(HOLD)
            .key(&key)
            .arg(millis(wait))
            .arg(by)
            .invoke_async::<i64>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(|source| SlotError::Redis { what: key, source })
    }

    /// How much longer `mailbox` is held, if it is.
    pub async fn mailbox_held(&self, mailbox: &str) -> Result<Option<Duration>> {
        let key = throttle_key(mailbox);
        let left: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(|source| SlotError::Redis { what: key, source })?;
        Ok(u64::try_from(left)
            .ok()
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis))
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
