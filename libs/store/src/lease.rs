//! Folder leases with fencing tokens (DESIGN §4): the lease of (source, folder) is the key
//! `tm:{<source>}:lease:<folder>` holding `<token>:<owner>` with an expiry. Each grant takes
//! a new token from `fence-seq:<folder>`, so tokens only grow, and a write commits only
//! while the lease key holds the writer's token ([`Fence::Token`](crate::Fence::Token)). A
//! fetcher whose lease expired, or was taken over, cannot commit, even if it does not know
//! yet.

use std::time::Duration;

use threatmail_source::SourceId;

use crate::error::{Result, redis_error};
use crate::keys;
use crate::store::{Store, value_items, value_text};

/// A held lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The source.
    pub source_id: SourceId,
    /// The folder.
    pub folder: String,
    /// The fencing token to pass with every write.
    pub token: u64,
    /// Who holds it (a fetcher's instance name).
    pub owner: String,
}

impl Lease {
    fn value(&self) -> String {
        format!("{}:{}", self.token, self.owner)
    }
}

fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store {
    /// Takes the lease of `folder` for `ttl` if nobody holds it.
    pub async fn acquire_lease(
        &self,
        source: &SourceId,
        folder: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        let mut conn = self.conn.clone();
        let reply: redis::Value = self
            .inner
            .lease_script
            .key(keys::lease_key(source, folder))
            .key(keys::fence_seq_key(source, folder))
            .arg("acquire")
            .arg(owner)
            .arg(millis(ttl))
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("take a lease", source.as_str()))?;
        let token = value_items(&reply)
            .first()
            .and_then(value_text)
            .and_then(|t| t.parse::<u64>().ok());
        Ok(token.map(|token| Lease {
            source_id: source.clone(),
            folder: folder.to_owned(),
            token,
            owner: owner.to_owned(),
        }))
    }

    /// Extends `lease` to `ttl` from now; `false` if it is no longer held.
    pub async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        self.lease_op(lease, "renew", millis(ttl)).await
    }

    /// Gives `lease` up; `false` if it was no longer held.
    pub async fn release_lease(&self, lease: &Lease) -> Result<bool> {
        self.lease_op(lease, "release", 0).await
    }

    async fn lease_op(&self, lease: &Lease, op: &str, ttl_ms: u64) -> Result<bool> {
        let mut conn = self.conn.clone();
        let reply: redis::Value = self
            .inner
            .lease_script
            .key(keys::lease_key(&lease.source_id, &lease.folder))
            .key(keys::fence_seq_key(&lease.source_id, &lease.folder))
            .arg(op)
            .arg(lease.value())
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_error("update a lease", lease.source_id.as_str()))?;
        Ok(value_items(&reply).first().and_then(value_text).as_deref() == Some("1"))
    }
}

/// `KEYS`: 1 lease, 2 token counter. `ARGV`: 1 `acquire` (2 owner, 3 ttl ms) → `{token}` or
/// `{}`; `renew` / `release` (2 `<token>:<owner>`, 3 ttl ms) → `{1}` if held, else `{0}`.
pub(crate) const LEASE_SCRIPT: &str = r"
local op = ARGV[1]
if op == 'acquire' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    return {}
  end
  local token = redis.call('INCR', KEYS[2])
  redis.call('SET', KEYS[1], token .. ':' .. ARGV[2], 'PX', ARGV[3])
  return {tostring(token)}
end
if redis.call('GET', KEYS[1]) ~= ARGV[2] then
  return {'0'}
end
if op == 'renew' then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
else
  redis.call('DEL', KEYS[1])
end
return {'1'}
";
