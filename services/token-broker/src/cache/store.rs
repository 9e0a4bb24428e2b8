//! The state broker replicas share per cache key: the token, the remembered failure and the
//! refresh lock.
//!
//! [`SharedStore`] is what the cache needs from it; [`super::redis::RedisStore`] is the real
//! one. The unit tests of the cache use [`MemoryStore`], whose lock expires on the cache's
//! clock so tests on paused time can let a dead holder's lock lapse.

use std::future::Future;
use std::time::Duration;

use super::{CacheKey, StoredToken};

/// Errors of a shared store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis failed or is unreachable.
    #[error("failed to reach the shared token cache in redis")]
    Redis(#[source] redis::RedisError),
    /// A stored value does not open or parse (wrong master key, corrupt value).
    #[error("failed to read the shared cache entry {key}: {problem}")]
    Corrupt {
        /// The cache key digest.
        key: String,
        /// What is wrong.
        problem: String,
    },
}

/// What the shared store holds for one key.
#[derive(Debug, Default)]
pub struct SharedState {
    /// The cached token.
    pub token: Option<StoredToken>,
    /// The remembered failure, as JSON.
    pub failure: Option<String>,
}

/// How a refresh ended, written together with releasing the lock.
#[derive(Debug)]
pub enum Completion<'a> {
    /// A new token (clears any failure).
    Token(&'a StoredToken),
    /// A failure to remember for `ttl`.
    Failure {
        /// The failure record as JSON.
        json: &'a str,
        /// How long to keep it.
        ttl: Duration,
    },
}

/// Shared per-key state with a refresh lock.
pub trait SharedStore: Send + Sync + 'static {
    /// Reads the token and the failure.
    fn load(&self, key: &CacheKey) -> impl Future<Output = Result<SharedState, StoreError>> + Send;

    /// Takes the refresh lock for `owner` unless someone holds it; it expires after `ttl`.
    fn try_lock(
        &self,
        key: &CacheKey,
        owner: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records the outcome and releases the lock if `owner` still holds it, in one step.
    fn complete(
        &self,
        key: &CacheKey,
        owner: &str,
        completion: Completion<'_>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Releases the lock if `owner` holds it.
    fn unlock(
        &self,
        key: &CacheKey,
        owner: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Drops the token, and the failure too when `failure` is set; true if a token was
    /// dropped.
    fn remove(
        &self,
        key: &CacheKey,
        failure: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

#[cfg(test)]
pub(crate) use memory::MemoryStore;

#[cfg(test)]
mod memory {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, PoisonError};

    use super::*;
    use crate::clock::{Clock, UnixMs, ms};

    #[derive(Default)]
    struct Entry {
        token: Option<StoredToken>,
        failure: Option<(String, UnixMs)>,
        lock: Option<(String, UnixMs)>,
    }

    /// An in-process shared store on the cache's clock, for unit tests.
    #[derive(Clone)]
    pub(crate) struct MemoryStore {
        clock: Arc<dyn Clock>,
        entries: Arc<Mutex<HashMap<CacheKey, Entry>>>,
        loads: Arc<AtomicU64>,
    }

    impl MemoryStore {
        pub(crate) fn new(clock: Arc<dyn Clock>) -> Self {
            MemoryStore {
                clock,
                entries: Arc::default(),
                loads: Arc::default(),
            }
        }

        fn with<R>(&self, key: &CacheKey, f: impl FnOnce(&mut Entry, UnixMs) -> R) -> R {
            let now = self.clock.now_ms();
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            let entry = entries.entry(key.clone()).or_default();
            if entry.lock.as_ref().is_some_and(|(_, until)| *until <= now) {
                entry.lock = None;
            }
            if entry
                .failure
                .as_ref()
                .is_some_and(|(_, until)| *until <= now)
            {
                entry.failure = None;
            }
            f(entry, now)
        }

        /// Whether someone holds the lock of `key`.
        pub(crate) fn locked(&self, key: &CacheKey) -> bool {
            self.with(key, |entry, _| entry.lock.is_some())
        }

        /// How many loads were made.
        pub(crate) fn loads(&self) -> u64 {
            self.loads.load(Ordering::Relaxed)
        }
    }

    impl SharedStore for MemoryStore {
        async fn load(&self, key: &CacheKey) -> Result<SharedState, StoreError> {
            self.loads.fetch_add(1, Ordering::Relaxed);
            Ok(self.with(key, |entry, _| SharedState {
                token: entry.token.clone(),
                failure: entry.failure.as_ref().map(|(json, _)| json.clone()),
            }))
        }

        async fn try_lock(
            &self,
            key: &CacheKey,
            owner: &str,
            ttl: Duration,
        ) -> Result<bool, StoreError> {
            Ok(self.with(key, |entry, now| {
                if entry.lock.is_some() {
                    return false;
                }
                entry.lock = Some((owner.to_owned(), now + ms(ttl)));
                true
            }))
        }

        async fn complete(
            &self,
            key: &CacheKey,
            owner: &str,
            completion: Completion<'_>,
        ) -> Result<(), StoreError> {
            self.with(key, |entry, now| {
                match completion {
                    Completion::Token(token) => {
                        entry.token = Some(token.clone());
                        entry.failure = None;
                    }
                    Completion::Failure { json, ttl } => {
                        entry.failure = Some((json.to_owned(), now + ms(ttl)));
                    }
                }
                if entry.lock.as_ref().is_some_and(|(o, _)| o == owner) {
                    entry.lock = None;
                }
            });
            Ok(())
        }

        async fn unlock(&self, key: &CacheKey, owner: &str) -> Result<(), StoreError> {
            self.with(key, |entry, _| {
                if entry.lock.as_ref().is_some_and(|(o, _)| o == owner) {
                    entry.lock = None;
                }
            });
            Ok(())
        }

        async fn remove(&self, key: &CacheKey, failure: bool) -> Result<bool, StoreError> {
            Ok(self.with(key, |entry, _| {
                if failure {
                    entry.failure = None;
                }
                entry.token.take().is_some()
            }))
        }
    }
}
