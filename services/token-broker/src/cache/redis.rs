//! The shared token cache in Redis.
//!
//! Per cache key, three keys with the digest as hash tag (one Redis Cluster slot, so the
//! completion script may touch all three):
//!
//! | key | holds | expiry |
//! |---|---|---|
//! | `tm:token:{<digest>}` | the [`StoredToken`] as JSON, sealed with the master key ([`Purpose::TokenCache`], bound to the key name) | when the token expires |
//! | `tm:token:{<digest>}:failure` | the remembered failure as JSON (error kind and AADSTS code, counts, next attempt; no secret) | next attempt + the longest back-off |
//! | `tm:token:{<digest>}:lock` | the refresh lock's owner (a random id) | the lock's expiry |
//!
//! Tokens are not under a source's `tm:{<source id>}` tag because sources with the same app
//! and secret share them.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use threatmail_source::{Keyring, Purpose, Sealed};

use super::store::{Completion, SharedState, SharedStore, StoreError};
use super::{CacheKey, StoredToken};
use crate::clock::{Clock, ms};

/// `KEYS` token, failure, lock; `ARGV` owner, mode, value, ttl ms.
const COMPLETE_SCRIPT: &str = r"
if ARGV[2] == 'token' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
if redis.call('GET', KEYS[3]) == ARGV[1] then
  redis.call('DEL', KEYS[3])
end
return 1
";

/// `KEYS` lock; `ARGV` owner.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// The shared cache in Redis.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    keyring: Arc<Keyring>,
    clock: Arc<dyn Clock>,
    complete: Arc<redis::Script>,
    unlock: Arc<redis::Script>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// `tm:token:{<digest>}`.
pub fn token_key(key: &CacheKey) -> String {
    format!("tm:token:{{{}}}", key.digest())
}

fn failure_key(key: &CacheKey) -> String {
    format!("tm:token:{{{}}}:failure", key.digest())
}

fn lock_key(key: &CacheKey) -> String {
    format!("tm:token:{{{}}}:lock", key.digest())
}

impl RedisStore {
    /// The cache in the Redis behind `conn`, sealing tokens with `keyring`.
    pub fn new(conn: ConnectionManager, keyring: Arc<Keyring>, clock: Arc<dyn Clock>) -> Self {
        RedisStore {
            conn,
            keyring,
            clock,
            complete: Arc::new(redis::Script::new(COMPLETE_SCRIPT)),
            unlock: Arc::new(redis::Script::new(UNLOCK_SCRIPT)),
        }
    }

    fn open(&self, key: &CacheKey, envelope: String) -> Option<StoredToken> {
        let name = token_key(key);
        let opened = self
            .keyring
            .open(
                Purpose::TokenCache,
                name.as_bytes(),
                &Sealed::from_envelope(envelope),
            )
            .map_err(|error| error.to_string())
            .and_then(|bytes| {
                serde_json::from_slice::<StoredToken>(&bytes).map_err(|_| "not a token".to_owned())
            });
        match opened {
            Ok(token) => Some(token),
            Err(problem) => {
                // Sealed under a key no longer configured, or corrupt: a fresh token will
                // overwrite it.
                tracing::warn!(key = %key, %problem, "ignoring an unreadable shared token");
                None
            }
        }
    }
}

impl SharedStore for RedisStore {
    async fn load(&self, key: &CacheKey) -> Result<SharedState, StoreError> {
        let read = || {
            let mut conn = self.conn.clone();
            let keys = [token_key(key), failure_key(key)];
            async move {
                redis::cmd("MGET")
                    .arg(&keys[..])
                    .query_async::<(Option<String>, Option<String>)>(&mut conn)
                    .await
            }
        };
        // Every token request reads here first: the first one after a Redis restart must
        // not fail.
        let (token, failure) = threatmail_runtime::read_again_if_dropped(read)
            .await
            .map_err(StoreError::Redis)?;
        Ok(SharedState {
            token: token.and_then(|envelope| self.open(key, envelope)),
            failure,
        })
    }

    async fn try_lock(
        &self,
        key: &CacheKey,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(lock_key(key))
            .arg(owner)
            .arg("NX")
            .arg("PX")
            .arg(ms(ttl).max(1))
            .query_async(&mut conn)
            .await
            .map_err(StoreError::Redis)?;
        Ok(set.is_some())
    }

    async fn complete(
        &self,
        key: &CacheKey,
        owner: &str,
        completion: Completion<'_>,
    ) -> Result<(), StoreError> {
        let (mode, value, ttl_ms) = match completion {
            Completion::Token(token) => {
                let name = token_key(key);
                // Plain data serialises without fail.
                let json = serde_json::to_vec(token).map_err(|e| StoreError::Corrupt {
                    key: key.to_string(),
                    problem: e.to_string(),
                })?;
                let sealed = self
                    .keyring
                    .seal(Purpose::TokenCache, name.as_bytes(), &json)
                    .map_err(|e| StoreError::Corrupt {
                        key: key.to_string(),
                        problem: e.to_string(),
                    })?;
                let left = token.expires_at - self.clock.now_ms();
                ("token", sealed.as_envelope().to_owned(), left.max(1))
            }
            Completion::Failure { json, ttl } => ("failure", json.to_owned(), ms(ttl).max(1)),
        };
        let mut conn = self.conn.clone();
        let _: i64 = self
            .complete
            .key(token_key(key))
            .key(failure_key(key))
            .key(lock_key(key))
            .arg(owner)
            .arg(mode)
            .arg(value)
            .arg(ttl_ms)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::Redis)?;
        Ok(())
    }

    async fn unlock(&self, key: &CacheKey, owner: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .unlock
            .key(lock_key(key))
            .arg(owner)
            .invoke_async(&mut conn)
            .await
            .map_err(StoreError::Redis)?;
        Ok(())
    }

    async fn remove(&self, key: &CacheKey, failure: bool) -> Result<bool, StoreError> {
        let mut conn = self.conn.clone();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(token_key(key));
        let removed: i64 = cmd
            .query_async(&mut conn)
            .await
            .map_err(StoreError::Redis)?;
        if failure {
            let _: i64 = redis::cmd("DEL")
                .arg(failure_key(key))
                .query_async(&mut conn)
                .await
                .map_err(StoreError::Redis)?;
        }
        Ok(removed > 0)
    }
}
