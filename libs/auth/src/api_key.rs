//! API keys for people and scripts: made, listed and revoked by an admin (the `threatmail`
//! CLI), stored hashed in Redis, each with roles.
//!
//! Layout: `tm:apikey:<id>` is a hash with `hash` (`sha256:<hex>` of the whole key),
//! `roles` (`view,update`), `label`, `created_at` (Unix seconds) and `revoked` (`0`/`1`);
//! `tm:apikeys` is the set of ids. The key itself is shown once, when it is made.

use std::fmt;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;
use secrecy::SecretString;

use crate::caller::RoleSet;
use crate::credential::{self, API_KEY_PREFIX, CredentialError};

/// The set of all key ids.
pub const API_KEYS_INDEX: &str = "tm:apikeys";

/// `tm:apikey:<id>`.
pub fn api_key_key(id: &str) -> String {
    format!("tm:apikey:{id}")
}

/// Errors of API key storage.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// Redis failed.
    #[error("failed to reach the API keys in redis")]
    Redis(#[source] redis::RedisError),
    /// A stored key is unreadable.
    #[error("failed to read stored API key {id}: {problem}")]
    Corrupt {
        /// The key id.
        id: String,
        /// What is wrong.
        problem: String,
    },
    /// Making a secret failed.
    #[error(transparent)]
    Credential(#[from] CredentialError),
}

/// An API key as stored: its hash and grants, never the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApiKey {
    /// The id (the middle part of the key).
    pub id: String,
    /// SHA-256 of the whole key.
    pub hash: [u8; 32],
    /// The roles.
    pub roles: RoleSet,
    /// What it is for.
    pub label: String,
    /// When it was made.
    pub created_at: i64,
    /// Whether it was revoked.
    pub revoked: bool,
}

/// Where the auth layer looks API keys up.
pub trait ApiKeyStore: Send + Sync + 'static {
    /// The key with `id`, if any.
    fn lookup<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredApiKey>, ApiKeyError>>;
}

/// A key just made: the only moment the key itself exists outside its holder.
pub struct NewApiKey {
    /// Its id.
    pub id: String,
    /// The key, `tmk1.<id>.<secret>`.
    pub key: SecretString,
}

impl fmt::Debug for NewApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NewApiKey({})", self.id)
    }
}

/// `hash`, `roles`, `label`, `created_at`, `revoked` as read.
type StoredFields = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<i64>,
);

/// API keys in Redis.
#[derive(Clone)]
pub struct RedisApiKeys {
    conn: ConnectionManager,
}

impl fmt::Debug for RedisApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisApiKeys").finish_non_exhaustive()
    }
}

impl RedisApiKeys {
    /// Keys in the Redis behind `conn`.
    pub fn new(conn: ConnectionManager) -> Self {
        RedisApiKeys { conn }
    }

    /// Makes a key with `roles`, labelled `label`, at `now` (Unix seconds).
    pub async fn create(
        &self,
        label: &str,
        roles: RoleSet,
        now: i64,
    ) -> Result<NewApiKey, ApiKeyError> {
        let secret = credential::random_secret()?;
        let id = hex::encode(&credential::hash(&secret)[..8]);
        let key = format!("{API_KEY_PREFIX}.{id}.{secret}");
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(api_key_key(&id))
            .arg("hash")
            .arg(credential::hash_string(&key))
            .arg("roles")
            .arg(roles.to_list())
            .arg("label")
            .arg(label)
            .arg("created_at")
            .arg(now)
            .arg("revoked")
            .arg(0)
            .ignore()
            .cmd("SADD")
            .arg(API_KEYS_INDEX)
            .arg(&id)
            .ignore()
            .query_async::<()>(&mut conn)
            .await
            .map_err(ApiKeyError::Redis)?;
        Ok(NewApiKey {
            id,
            key: SecretString::from(key),
        })
    }

    /// Revokes key `id`; false if there is none.
    pub async fn revoke(&self, id: &str) -> Result<bool, ApiKeyError> {
        let mut conn = self.conn.clone();
        let updated: i64 = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end \
             redis.call('HSET', KEYS[1], 'revoked', 1) return 1",
        )
        .key(api_key_key(id))
        .invoke_async(&mut conn)
        .await
        .map_err(ApiKeyError::Redis)?;
        Ok(updated == 1)
    }

    /// Every key, by id.
    pub async fn list(&self) -> Result<Vec<StoredApiKey>, ApiKeyError> {
        let mut conn = self.conn.clone();
        let mut ids: Vec<String> = redis::cmd("SMEMBERS")
            .arg(API_KEYS_INDEX)
            .query_async(&mut conn)
            .await
            .map_err(ApiKeyError::Redis)?;
        ids.sort();
        let mut keys = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(key) = self.get(&id).await? {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    async fn get(&self, id: &str) -> Result<Option<StoredApiKey>, ApiKeyError> {
        let read = || {
            let mut conn = self.conn.clone();
            let key = api_key_key(id);
            async move {
                redis::cmd("HMGET")
                    .arg(key)
                    .arg(&["hash", "roles", "label", "created_at", "revoked"][..])
                    .query_async::<StoredFields>(&mut conn)
                    .await
            }
        };
        // Every request's key check reads here: the first one after a Redis restart must
        // not fail.
        let (hash, roles, label, created_at, revoked) =
            threatmail_runtime::read_again_if_dropped(read)
                .await
                .map_err(ApiKeyError::Redis)?;
        let Some(hash) = hash else {
            return Ok(None);
        };
        let corrupt = |problem: &str| ApiKeyError::Corrupt {
            id: id.to_owned(),
            problem: problem.to_owned(),
        };
        let hash = hash
            .strip_prefix("sha256:")
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| corrupt("hash is not sha256:<hex>"))?;
        let roles = RoleSet::parse_list(roles.as_deref().unwrap_or_default())
            .map_err(|e| corrupt(&e.to_string()))?;
        Ok(Some(StoredApiKey {
            id: id.to_owned(),
            hash,
            roles,
            label: label.unwrap_or_default(),
            created_at: created_at.unwrap_or_default(),
            revoked: revoked.unwrap_or_default() != 0,
        }))
    }
}

impl ApiKeyStore for RedisApiKeys {
    fn lookup<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredApiKey>, ApiKeyError>> {
        Box::pin(self.get(id))
    }
}
