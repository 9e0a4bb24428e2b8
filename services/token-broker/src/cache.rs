//! The token cache: in memory and shared between broker replicas, refreshed ahead of expiry,
//! with one Entra request in flight per key across all replicas.
//!
//! A key ([`CacheKey`]) is (authority host, tenant, client id, scope, credential
//! fingerprint), so two sources with the same app and secret share a token and a changed
//! secret never gets the old one. For each key:
//!
//! - **Hot path**: a token in memory with enough time left (see [`policy`]) is handed out
//!   at once. Past its refresh point, or when the memory copy has not been compared with the
//!   shared one for a while, a background task refreshes or re-syncs it; callers keep
//!   getting the cached token meanwhile.
//! - **Slow path**: one task per process at a time (a per-key mutex) looks in the shared
//!   store; if nothing usable is there it takes the key's refresh lock (Redis `SET NX PX`),
//!   asks Entra, writes the token and releases the lock in one script. Brokers that find the
//!   lock taken poll the shared store for the new token, for at most the lock's expiry, then
//!   take the lock themselves: a broker that died holding it delays the others by at most
//!   that long. The slow path runs in a task of its own, so a caller that gives up never
//!   leaves the lock held; only the broker's stop (or death) abandons it.
//! - **Failures** are remembered per key, in memory and shared ([`policy::FailureRecord`]):
//!   until the record's next attempt time nobody asks Entra, and callers get the remembered
//!   error, or the cached token while it is still valid.
//!
//! All times come from a [`Clock`], so the unit tests run on tokio's paused time.

pub mod policy;
pub mod redis;
pub mod store;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use threatmail_source::Fingerprint;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::claims::{self, TokenClaims};
use crate::clock::{Clock, UnixMs, ms};
use policy::{CachePolicy, FailureRecord, FetchFailure, random_unit};
use store::{Completion, SharedStore, StoreError};

/// An access token. Never printed: `Debug` shows its length only.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessToken(Arc<str>);

impl AccessToken {
    /// Wraps a token.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        AccessToken(token.into())
    }

    /// The token, for the reply to a service or an IMAP login.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccessToken(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for AccessToken {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AccessToken {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(AccessToken::new)
    }
}

/// What the shared store keeps of a token (sealed in Redis).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredToken {
    /// The token.
    pub token: AccessToken,
    /// When the request that got it was sent.
    pub obtained_at: UnixMs,
    /// When it expires: `obtained_at` + `expires_in`.
    pub expires_at: UnixMs,
}

/// A token in memory, with what the broker derives from it.
#[derive(Debug, Clone)]
pub struct CachedToken {
    /// The token and its times.
    pub stored: StoredToken,
    /// From here on it is refreshed in the background.
    pub refresh_at: UnixMs,
    /// Its claims, unless it is opaque.
    pub claims: Option<TokenClaims>,
}

impl CachedToken {
    fn new(stored: StoredToken, policy: &CachePolicy) -> Self {
        CachedToken {
            refresh_at: policy.refresh_at(stored.obtained_at, stored.expires_at),
            claims: claims::decode(stored.token.expose()),
            stored,
        }
    }

    /// The least time left with which it may be handed out to a caller needing `need` ms:
    /// `need`, but never more than half its life, so a caller asking for more than a fresh
    /// token can give does not make every call ask Entra.
    fn required(&self, need: i64) -> i64 {
        let life = self.stored.expires_at - self.stored.obtained_at;
        need.min(life / 2)
    }

    fn satisfies(&self, now: UnixMs, need: i64) -> bool {
        self.stored.expires_at - now >= self.required(need)
    }
}

/// A cache key: SHA-256 of (authority host, tenant, client id, scope, fingerprint).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(Arc<str>);

impl CacheKey {
    /// The key of a credential. Tenant and client id are compared without case, as Entra
    /// does.
    pub fn new(
        authority_host: &str,
        tenant: &str,
        client_id: &str,
        scope: &str,
        fingerprint: &Fingerprint,
    ) -> Self {
        let mut hasher = Sha256::new();
        for part in [
            authority_host.to_ascii_lowercase().as_bytes(),
            tenant.trim().to_ascii_lowercase().as_bytes(),
            client_id.trim().to_ascii_lowercase().as_bytes(),
            scope.as_bytes(),
            fingerprint.as_bytes(),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        CacheKey(Arc::from(hex::encode(hasher.finalize())))
    }

    /// The digest in hex.
    pub fn digest(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({}…)", &self.0[..12.min(self.0.len())])
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0[..12.min(self.0.len())])
    }
}

/// A token from Entra.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The token.
    pub token: AccessToken,
    /// `expires_in`.
    pub expires_in: Duration,
}

/// What a caller wants.
#[derive(Debug, Clone, Copy, Default)]
pub struct Want {
    /// At least this much validity left (the floor applies too).
    pub min_validity: Duration,
    /// Ask Entra even when a cached token would do.
    pub force_refresh: bool,
}

/// A token handed out.
#[derive(Debug, Clone)]
pub struct Served<E> {
    /// The token.
    pub token: Arc<CachedToken>,
    /// Whether it came from the cache (memory or shared) rather than a request just made.
    pub from_cache: bool,
    /// Set when Entra failed and a still-valid cached token was handed out instead.
    pub refresh_error: Option<E>,
}

/// Why no token was handed out.
#[derive(Debug, thiserror::Error)]
pub enum CacheError<E> {
    /// Entra refused or failed; `remembered` when no request was made because an earlier
    /// failure forbids asking before `retry_at`.
    #[error("failed to get a token from entra")]
    Fetch {
        /// The error.
        error: E,
        /// Whether it is a remembered one.
        remembered: bool,
        /// No new request before this.
        retry_at: UnixMs,
    },
    /// The shared store failed.
    #[error("failed to use the shared token cache")]
    Store(#[source] StoreError),
    /// Another broker held the refresh lock for longer than its expiry allows.
    #[error("failed to get a token: another broker's refresh did not finish in time")]
    LockWait,
    /// The broker is stopping.
    #[error("failed to get a token: the broker is stopping")]
    Stopped,
}

#[derive(Debug, Clone, Copy)]
enum Accept {
    /// A caller: enough time left, and for a force refresh obtained recently enough.
    Caller {
        need: i64,
        obtained_since: Option<UnixMs>,
    },
    /// A background refresh: a token not yet due for refresh.
    NotDue,
}

impl Accept {
    fn accepts(self, token: &CachedToken, now: UnixMs) -> bool {
        match self {
            Accept::Caller {
                need,
                obtained_since,
            } => {
                token.satisfies(now, need)
                    && obtained_since.is_none_or(|since| token.stored.obtained_at >= since)
            }
            Accept::NotDue => now < token.refresh_at,
        }
    }
}

struct SlotState<E> {
    token: Option<Arc<CachedToken>>,
    failure: Option<FailureRecord<E>>,
    /// When memory was last compared with the shared store (or filled from Entra).
    synced_at: UnixMs,
}

struct Slot<E> {
    flight: tokio::sync::Mutex<()>,
    state: RwLock<SlotState<E>>,
    maintaining: AtomicBool,
}

impl<E: Clone> Slot<E> {
    fn new() -> Self {
        Slot {
            flight: tokio::sync::Mutex::new(()),
            state: RwLock::new(SlotState {
                token: None,
                failure: None,
                synced_at: i64::MIN,
            }),
            maintaining: AtomicBool::new(false),
        }
    }

    fn read<R>(&self, f: impl FnOnce(&SlotState<E>) -> R) -> R {
        f(&self.state.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn write<R>(&self, f: impl FnOnce(&mut SlotState<E>) -> R) -> R {
        f(&mut self.state.write().unwrap_or_else(PoisonError::into_inner))
    }

    fn token(&self) -> Option<Arc<CachedToken>> {
        self.read(|s| s.token.clone())
    }
}

struct Inner<S, E> {
    store: S,
    clock: Arc<dyn Clock>,
    policy: CachePolicy,
    slots: RwLock<HashMap<CacheKey, Arc<Slot<E>>>>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// The token cache over a shared store `S`, for fetch errors `E`.
pub struct TokenCache<S, E> {
    inner: Arc<Inner<S, E>>,
}

impl<S, E> Clone for TokenCache<S, E> {
    fn clone(&self) -> Self {
        TokenCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<S: SharedStore, E: FetchFailure> TokenCache<S, E> {
    /// A cache over `store` with `policy`, reading time from `clock`.
    pub fn new(store: S, clock: Arc<dyn Clock>, policy: CachePolicy) -> Self {
        TokenCache {
            inner: Arc::new(Inner {
                store,
                clock,
                policy,
                slots: RwLock::new(HashMap::new()),
                tasks: TaskTracker::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The settings.
    pub fn policy(&self) -> &CachePolicy {
        &self.inner.policy
    }

    /// A token for `key`, from the cache or from `fetch` (called at most once, and only by
    /// the one broker holding the key's refresh lock).
    pub async fn get<F, Fut>(
        &self,
        key: &CacheKey,
        want: Want,
        fetch: F,
    ) -> Result<Served<E>, CacheError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, E>> + Send + 'static,
    {
        let inner = &self.inner;
        if inner.stop.is_cancelled() {
            return Err(CacheError::Stopped);
        }
        let slot = inner.slot(key);
        let now = inner.clock.now_ms();
        let need = ms(inner.policy.need(want.min_validity));
        if !want.force_refresh {
            let (token, synced_at) = slot.read(|s| (s.token.clone(), s.synced_at));
            if let Some(token) = token
                && token.satisfies(now, need)
            {
                let resync = now.saturating_sub(synced_at) >= ms(inner.policy.memory_ttl);
                if now >= token.refresh_at || resync {
                    self.maintain(key, &slot, fetch);
                }
                return Ok(Served {
                    token,
                    from_cache: true,
                    refresh_error: None,
                });
            }
        }
        let accept = Accept::Caller {
            need,
            obtained_since: want
                .force_refresh
                .then(|| now - ms(inner.policy.force_refresh_grace)),
        };
        let task = Arc::clone(inner).slow_path(key.clone(), slot, accept, now, fetch);
        let stop = inner.stop.clone();
        let handle = inner.tasks.spawn(async move {
            tokio::select! {
                biased;
                () = stop.cancelled() => Err(CacheError::Stopped),
                result = task => result,
            }
        });
        handle.await.unwrap_or(Err(CacheError::Stopped))
    }

    /// Starts a background refresh or re-sync of `key` unless one is running.
    fn maintain<F, Fut>(&self, key: &CacheKey, slot: &Arc<Slot<E>>, fetch: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, E>> + Send + 'static,
    {
        if slot.maintaining.swap(true, Ordering::AcqRel) {
            return;
        }
        let inner = Arc::clone(&self.inner);
        let key = key.clone();
        let slot = Arc::clone(slot);
        let stop = inner.stop.clone();
        let tasks = inner.tasks.clone();
        tasks.spawn(async move {
            let work = async {
                let _flight = slot.flight.lock().await;
                match inner.obtain(&key, &slot, Accept::NotDue, fetch).await {
                    Ok(_) => {}
                    Err(CacheError::Fetch {
                        error, remembered, ..
                    }) => {
                        if !remembered {
                            tracing::warn!(key = %key, ?error, "background token refresh failed; the cached token is still handed out");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(key = %key, error = %threatmail_core::error::chain(&error), "background token refresh failed");
                    }
                }
            };
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                () = work => {}
            }
            slot.maintaining.store(false, Ordering::Release);
        });
    }

    /// Forgets the token of `key` here and in the shared store, and a remembered failure
    /// unless it honours a server's `Retry-After`. True if a token was dropped.
    pub async fn invalidate(&self, key: &CacheKey) -> Result<bool, StoreError> {
        let now = self.inner.clock.now_ms();
        let slot = self.inner.slot(key);
        let (had_token, keep_failure) = slot.write(|s| {
            let keep = s
                .failure
                .as_ref()
                .is_some_and(|f| f.retry_after && f.blocks(now));
            if !keep {
                s.failure = None;
            }
            (s.token.take().is_some(), keep)
        });
        let shared_failure_throttled = match self.inner.store.load(key).await?.failure {
            Some(json) => serde_json::from_str::<FailureRecord<E>>(&json)
                .is_ok_and(|f| f.retry_after && f.blocks(now)),
            None => false,
        };
        let removed = self
            .inner
            .store
            .remove(key, !(keep_failure || shared_failure_throttled))
            .await?;
        Ok(had_token || removed)
    }

    /// The remembered failure of `key` if it forbids asking Entra now.
    pub async fn blocking_failure(
        &self,
        key: &CacheKey,
    ) -> Result<Option<FailureRecord<E>>, StoreError> {
        let now = self.inner.clock.now_ms();
        let state = self.inner.store.load(key).await?;
        Ok(state
            .failure
            .and_then(|json| serde_json::from_str::<FailureRecord<E>>(&json).ok())
            .filter(|f| f.blocks(now)))
    }

    /// Stops background work and in-flight refreshes (their locks lapse on their own).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stop.cancel();
        self.inner.tasks.close();
        let _ = tokio::time::timeout(grace, self.inner.tasks.wait()).await;
    }

    /// A token that cancels the cache when dropped (a broker that dies stops its refreshes
    /// mid-request, leaving its lock to expire, as a crashed process would).
    pub fn stop_token(&self) -> CancellationToken {
        self.inner.stop.clone()
    }
}

impl<S: SharedStore, E: FetchFailure> Inner<S, E> {
    fn slot(&self, key: &CacheKey) -> Arc<Slot<E>> {
        if let Some(slot) = self
            .slots
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
        {
            return Arc::clone(slot);
        }
        let mut slots = self.slots.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            slots
                .entry(key.clone())
                .or_insert_with(|| Arc::new(Slot::new())),
        )
    }

    async fn slow_path<F, Fut>(
        self: Arc<Self>,
        key: CacheKey,
        slot: Arc<Slot<E>>,
        accept: Accept,
        asked_at: UnixMs,
        fetch: F,
    ) -> Result<Served<E>, CacheError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, E>> + Send + 'static,
    {
        let _flight = slot.flight.lock().await;
        let now = self.clock.now_ms();
        // Another task of this process may have done the work while this one waited.
        let (token, failure, synced_at) =
            slot.read(|s| (s.token.clone(), s.failure.clone(), s.synced_at));
        if let Some(token) = &token
            && synced_at >= asked_at
            && accept.accepts(token, now)
        {
            return Ok(Served {
                token: Arc::clone(token),
                from_cache: true,
                refresh_error: None,
            });
        }
        let failure_is_current = now.saturating_sub(synced_at) < ms(self.policy.memory_ttl);
        if let Some(failure) = failure.filter(|f| failure_is_current && f.blocks(now)) {
            return self.fallback(
                &slot,
                accept,
                CacheError::Fetch {
                    retry_at: failure.next_attempt_at,
                    error: failure.error,
                    remembered: true,
                },
            );
        }
        match self.obtain(&key, &slot, accept, fetch).await {
            Ok(served) => Ok(served),
            Err(error) => self.fallback(&slot, accept, error),
        }
    }

    /// After `error`: the memory token if it still has the time the caller needs (Entra
    /// failing while a cached token is valid), else the error.
    fn fallback(
        &self,
        slot: &Slot<E>,
        accept: Accept,
        error: CacheError<E>,
    ) -> Result<Served<E>, CacheError<E>> {
        let Accept::Caller { need, .. } = accept else {
            return Err(error);
        };
        let now = self.clock.now_ms();
        match slot.token() {
            Some(token) if token.satisfies(now, need) => Ok(Served {
                token,
                from_cache: true,
                refresh_error: match error {
                    CacheError::Fetch { error, .. } => Some(error),
                    _ => None,
                },
            }),
            _ => Err(error),
        }
    }

    /// Puts `stored` in memory unless memory holds a newer token; returns what memory holds.
    fn install(&self, slot: &Slot<E>, stored: StoredToken, now: UnixMs) -> Arc<CachedToken> {
        slot.write(|s| {
            s.synced_at = now;
            match &s.token {
                Some(current) if current.stored == stored => Arc::clone(current),
                Some(current) if current.stored.obtained_at > stored.obtained_at => {
                    Arc::clone(current)
                }
                _ => {
                    let token = Arc::new(CachedToken::new(stored, &self.policy));
                    s.token = Some(Arc::clone(&token));
                    token
                }
            }
        })
    }

    /// The shared-store and lock loop; the caller holds the slot's flight mutex.
    async fn obtain<F, Fut>(
        &self,
        key: &CacheKey,
        slot: &Slot<E>,
        accept: Accept,
        fetch: F,
    ) -> Result<Served<E>, CacheError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, E>> + Send + 'static,
    {
        let deadline =
            self.clock.now_ms() + ms(self.policy.lock_ttl) + 2 * ms(self.policy.lock_poll);
        let mut fetch = Some(fetch);
        loop {
            let now = self.clock.now_ms();
            match self.look(key, slot, accept, now).await? {
                Look::Token(token) => return Ok(shared(token)),
                Look::Blocked(failure) => return Err(remembered(failure)),
                Look::Nothing(_) => {}
            }
            let owner = uuid::Uuid::new_v4().to_string();
            if self
                .store
                .try_lock(key, &owner, self.policy.lock_ttl)
                .await
                .map_err(CacheError::Store)?
            {
                // A holder may have finished between the look and the lock: look again.
                let previous = match self.look(key, slot, accept, now).await {
                    Ok(Look::Nothing(previous)) => previous,
                    Ok(Look::Token(token)) => {
                        self.unlock(key, &owner).await;
                        return Ok(shared(token));
                    }
                    Ok(Look::Blocked(failure)) => {
                        self.unlock(key, &owner).await;
                        return Err(remembered(failure));
                    }
                    Err(error) => {
                        self.unlock(key, &owner).await;
                        return Err(error);
                    }
                };
                let Some(fetch) = fetch.take() else {
                    // Every branch after taking the lock returns, so `fetch` is still here.
                    self.unlock(key, &owner).await;
                    return Err(CacheError::Stopped);
                };
                return self.refresh(key, slot, &owner, previous, fetch).await;
            }
            if now >= deadline {
                return Err(CacheError::LockWait);
            }
            tokio::time::sleep(self.policy.lock_poll).await;
        }
    }

    /// Reads the shared state into memory and judges it.
    async fn look(
        &self,
        key: &CacheKey,
        slot: &Slot<E>,
        accept: Accept,
        now: UnixMs,
    ) -> Result<Look<E>, CacheError<E>> {
        let state = self.store.load(key).await.map_err(CacheError::Store)?;
        let failure = state
            .failure
            .and_then(|json| serde_json::from_str::<FailureRecord<E>>(&json).ok());
        slot.write(|s| {
            s.failure = failure.clone();
            s.synced_at = now;
        });
        if let Some(stored) = state.token {
            let token = self.install(slot, stored, now);
            if accept.accepts(&token, now) {
                return Ok(Look::Token(token));
            }
        }
        match failure {
            Some(failure) if failure.blocks(now) => Ok(Look::Blocked(failure)),
            other => Ok(Look::Nothing(other)),
        }
    }

    async fn unlock(&self, key: &CacheKey, owner: &str) {
        if let Err(error) = self.store.unlock(key, owner).await {
            tracing::warn!(key = %key, error = %threatmail_core::error::chain(&error), "failed to release a token refresh lock; it expires on its own");
        }
    }

    /// Asks Entra while holding the lock, and records the outcome.
    async fn refresh<F, Fut>(
        &self,
        key: &CacheKey,
        slot: &Slot<E>,
        owner: &str,
        previous: Option<FailureRecord<E>>,
        fetch: F,
    ) -> Result<Served<E>, CacheError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched, E>> + Send + 'static,
    {
        let started = self.clock.now_ms();
        match fetch().await {
            Ok(fetched) => {
                let stored = StoredToken {
                    token: fetched.token,
                    obtained_at: started,
                    expires_at: started + ms(fetched.expires_in),
                };
                if let Err(error) = self
                    .store
                    .complete(key, owner, Completion::Token(&stored))
                    .await
                {
                    tracing::warn!(key = %key, error = %threatmail_core::error::chain(&error), "failed to share a new token; other brokers will ask entra themselves");
                }
                let now = self.clock.now_ms();
                slot.write(|s| s.failure = None);
                let token = self.install(slot, stored, now);
                tracing::info!(
                    key = %key,
                    expires_in_s = fetched.expires_in.as_secs(),
                    "got a new token from entra"
                );
                Ok(Served {
                    token,
                    from_cache: false,
                    refresh_error: None,
                })
            }
            Err(error) => {
                let now = self.clock.now_ms();
                let record = FailureRecord::next(
                    &self.policy,
                    previous.as_ref(),
                    error.clone(),
                    now,
                    random_unit(),
                );
                let ttl = crate::clock::until(now, record.next_attempt_at)
                    + self.policy.permanent_backoff.max;
                match serde_json::to_string(&record) {
                    Ok(json) => {
                        if let Err(store_error) = self
                            .store
                            .complete(key, owner, Completion::Failure { json: &json, ttl })
                            .await
                        {
                            tracing::warn!(key = %key, error = %store_error, "failed to share a token failure");
                        }
                    }
                    Err(_) => self.unlock(key, owner).await,
                }
                tracing::warn!(
                    key = %key,
                    ?error,
                    failures = record.failures,
                    retry_in_ms = record.next_attempt_at - now,
                    "entra refused or failed a token request"
                );
                let retry_at = record.next_attempt_at;
                slot.write(|s| {
                    s.failure = Some(record);
                    s.synced_at = now;
                });
                Err(CacheError::Fetch {
                    error,
                    remembered: false,
                    retry_at,
                })
            }
        }
    }
}

fn shared<E>(token: Arc<CachedToken>) -> Served<E> {
    Served {
        token,
        from_cache: true,
        refresh_error: None,
    }
}

fn remembered<E>(failure: FailureRecord<E>) -> CacheError<E> {
    CacheError::Fetch {
        retry_at: failure.next_attempt_at,
        error: failure.error,
        remembered: true,
    }
}

enum Look<E> {
    Token(Arc<CachedToken>),
    Blocked(FailureRecord<E>),
    Nothing(Option<FailureRecord<E>>),
}

#[cfg(test)]
mod tests;
