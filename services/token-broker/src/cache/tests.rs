//! The cache's clock logic on tokio's paused time: single flight, refresh ahead, the floor,
//! failure memory, dead lock holders. Two caches over one [`MemoryStore`] play two broker
//! replicas.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use threatmail_source::{Keyring, MasterKey};

use super::policy::{CachePolicy, FetchFailure, Retry};
use super::store::MemoryStore;
use super::*;
use crate::clock::{Clock, TokioClock};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum TestError {
    Permanent,
    Transient(Option<u64>),
}

impl FetchFailure for TestError {
    fn retry(&self) -> Retry {
        match self {
            TestError::Permanent => Retry::Permanent,
            TestError::Transient(after) => Retry::Transient {
                after: after.map(Duration::from_secs),
            },
        }
    }
}

type Cache = TokenCache<MemoryStore, TestError>;

/// A stand-in for Entra: counts calls, answers from a script (default: a token of
/// `lifetime`), after `delay`.
#[derive(Clone)]
struct Entra {
    calls: Arc<AtomicUsize>,
    script: Arc<std::sync::Mutex<Vec<Result<(), TestError>>>>,
    lifetime: Duration,
    delay: Duration,
}

impl Entra {
    fn new(lifetime: Duration) -> Self {
        Entra {
            calls: Arc::default(),
            script: Arc::default(),
            lifetime,
            delay: Duration::from_millis(50),
        }
    }

    fn then(&self, answer: Result<(), TestError>) {
        self.script.lock().unwrap().push(answer);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn fetch(
        &self,
    ) -> impl FnOnce() -> futures::future::BoxFuture<'static, Result<Fetched, TestError>> + Send + 'static
    {
        let this = self.clone();
        move || {
            Box::pin(async move {
                let n = this.calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(this.delay).await;
                let answer = {
                    let mut script = this.script.lock().unwrap();
                    if script.is_empty() {
                        Ok(())
                    } else {
                        script.remove(0)
                    }
                };
                answer.map(|()| Fetched {
                    token: AccessToken::new(format!("token-{n}")),
                    expires_in: this.lifetime,
                })
            })
        }
    }
}

fn key(secret: &str) -> CacheKey {
    let keyring = Keyring::new(MasterKey::generate("k").unwrap(), Vec::new()).unwrap();
    CacheKey::new(
        "login.microsoftonline.com",
        "corp.example",
        "client",
        "https://outlook.office365.com/.default",
        &keyring.fingerprint(&secret.into()),
    )
}

fn replicas(policy: CachePolicy) -> (Cache, Cache, MemoryStore, Arc<dyn Clock>) {
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    let store = MemoryStore::new(Arc::clone(&clock));
    let a = TokenCache::new(store.clone(), Arc::clone(&clock), policy.clone());
    let b = TokenCache::new(store.clone(), Arc::clone(&clock), policy);
    (a, b, store, clock)
}

const HOUR: Duration = Duration::from_secs(3600);

/// Lets spawned background tasks run to completion on paused time.
async fn settle() {
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn many_callers_on_two_replicas_cause_one_fetch_and_one_more_after_the_refresh_point() {
    let (a, b, _store, _clock) = replicas(CachePolicy::default());
    let entra = Entra::new(HOUR);
    let key = key("s");
    let mut calls = Vec::new();
    for i in 0..200 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let fetch = entra.fetch();
        let key = key.clone();
        calls.push(tokio::spawn(async move {
            cache.get(&key, Want::default(), fetch).await
        }));
    }
    let mut fresh = 0;
    for call in calls {
        let served = call.await.unwrap().unwrap();
        assert_eq!(served.token.stored.token.expose(), "token-0");
        fresh += usize::from(!served.from_cache);
    }
    assert_eq!(entra.calls(), 1);
    assert_eq!(fresh, 1, "exactly one caller got it from entra");

    // Just before the refresh point (half of the hour) nothing happens.
    tokio::time::advance(Duration::from_secs(29 * 60)).await;
    for cache in [&a, &b] {
        cache
            .get(&key, Want::default(), entra.fetch())
            .await
            .unwrap();
    }
    settle().await;
    assert_eq!(entra.calls(), 1);

    // Past it: callers still get the cached token at once, and one refresh happens.
    tokio::time::advance(Duration::from_secs(2 * 60)).await;
    let mut calls = Vec::new();
    for i in 0..200 {
        let cache = if i % 2 == 0 { a.clone() } else { b.clone() };
        let fetch = entra.fetch();
        let key = key.clone();
        calls.push(tokio::spawn(async move {
            cache.get(&key, Want::default(), fetch).await
        }));
    }
    for call in calls {
        let served = call.await.unwrap().unwrap();
        assert!(served.from_cache);
    }
    settle().await;
    assert_eq!(entra.calls(), 2);
    for cache in [&a, &b] {
        let served = cache
            .get(&key, Want::default(), entra.fetch())
            .await
            .unwrap();
        assert_eq!(served.token.stored.token.expose(), "token-1");
    }
    settle().await;
    assert_eq!(entra.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_token_with_less_than_the_floor_left_is_never_handed_out() {
    let policy = CachePolicy {
        refresh_percent: 99,
        ..CachePolicy::default()
    };
    let (a, _b, _store, _clock) = replicas(policy);
    let entra = Entra::new(Duration::from_secs(12 * 60));
    let key = key("s");
    a.get(&key, Want::default(), entra.fetch()).await.unwrap();
    // 7 minutes later 5 are left: still handed out (floor 5 minutes).
    tokio::time::advance(Duration::from_secs(7 * 60) - Duration::from_millis(100)).await;
    let served = a.get(&key, Want::default(), entra.fetch()).await.unwrap();
    assert_eq!(served.token.stored.token.expose(), "token-0");
    // A second later less than 5 are left: the caller waits for a new one.
    tokio::time::advance(Duration::from_secs(1)).await;
    let served = a.get(&key, Want::default(), entra.fetch()).await.unwrap();
    assert_eq!(served.token.stored.token.expose(), "token-1");
    assert!(!served.from_cache);
    // 5.5 minutes left: enough for a default caller, not for one asking for 6.
    tokio::time::advance(Duration::from_secs(6 * 60 + 30)).await;
    let served = a.get(&key, Want::default(), entra.fetch()).await.unwrap();
    assert_eq!(served.token.stored.token.expose(), "token-1");
    let want = Want {
        min_validity: Duration::from_secs(6 * 60),
        force_refresh: false,
    };
    let served = a.get(&key, want, entra.fetch()).await.unwrap();
    assert_eq!(served.token.stored.token.expose(), "token-2");
    assert_eq!(entra.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_minimum_beyond_what_entra_gives_does_not_make_every_call_ask_entra() {
    let (a, _b, _store, _clock) = replicas(CachePolicy::default());
    let entra = Entra::new(HOUR);
    let key = key("s");
    let want = Want {
        min_validity: 3 * HOUR,
        force_refresh: false,
    };
    for _ in 0..5 {
        a.get(&key, want, entra.fetch()).await.unwrap();
    }
    assert_eq!(entra.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured_on_every_replica() {
    let (a, b, _store, _clock) = replicas(CachePolicy::default());
    let entra = Entra::new(HOUR);
    let key = key("s");
    entra.then(Err(TestError::Transient(Some(30))));
    let error = a
        .get(&key, Want::default(), entra.fetch())
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        CacheError::Fetch {
            remembered: false,
            ..
        }
    ));
    for _ in 0..29 {
        tokio::time::advance(Duration::from_secs(1)).await;
        for cache in [&a, &b] {
            let error = cache
                .get(&key, Want::default(), entra.fetch())
                .await
                .unwrap_err();
            assert!(
                matches!(
                    error,
                    CacheError::Fetch {
                        remembered: true,
                        error: TestError::Transient(Some(30)),
                        ..
                    }
                ),
                "{error:?}"
            );
        }
    }
    assert_eq!(
        entra.calls(),
        1,
        "nothing reached entra before Retry-After passed"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    let served = b.get(&key, Want::default(), entra.fetch()).await.unwrap();
    assert!(!served.from_cache);
    assert_eq!(entra.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn permanent_errors_are_retried_slowly_and_at_once_for_new_credentials() {
    let (a, _b, _store, _clock) = replicas(CachePolicy::default());
    let entra = Entra::new(HOUR);
    let old = key("old secret");
    for _ in 0..3 {
        entra.then(Err(TestError::Permanent));
    }
    assert!(a.get(&old, Want::default(), entra.fetch()).await.is_err());
    // Callers keep asking: nothing reaches entra for the first back-off (≥ 1.6 minutes).
    for _ in 0..95 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(a.get(&old, Want::default(), entra.fetch()).await.is_err());
    }
    assert_eq!(entra.calls(), 1);
    // By 2.4 minutes it has been retried once, and failed again.
    for _ in 0..50 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(a.get(&old, Want::default(), entra.fetch()).await.is_err());
    }
    assert_eq!(entra.calls(), 2);
    // The next wait is longer (≥ 3.2 minutes).
    for _ in 0..140 {
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(a.get(&old, Want::default(), entra.fetch()).await.is_err());
    }
    assert_eq!(entra.calls(), 2);
    // A changed secret is a new key: tried at once (and this one fails too).
    assert!(
        a.get(&key("new secret"), Want::default(), entra.fetch())
            .await
            .is_err()
    );
    assert_eq!(entra.calls(), 3);
    // Entra stops refusing (it replicated the new app): the old key recovers at its next try.
    tokio::time::advance(Duration::from_secs(10 * 60)).await;
    let served = a.get(&old, Want::default(), entra.fetch()).await.unwrap();
    assert!(!served.from_cache);
    assert_eq!(entra.calls(), 4);
}

#[tokio::test(start_paused = true)]
async fn entra_failing_while_a_cached_token_is_valid_hands_out_the_cached_one() {
    let (a, _b, _store, _clock) = replicas(CachePolicy::default());
    let entra = Entra::new(HOUR);
    let key = key("s");
    a.get(&key, Want::default(), entra.fetch()).await.unwrap();
    tokio::time::advance(Duration::from_secs(10)).await;
    // A forced refresh that fails: the valid cached token, with the error.
    entra.then(Err(TestError::Transient(None)));
    let force = Want {
        force_refresh: true,
        ..Want::default()
    };
    let served = a.get(&key, force, entra.fetch()).await.unwrap();
    assert_eq!(served.token.stored.token.expose(), "token-0");
    assert_eq!(served.refresh_error, Some(TestError::Transient(None)));
    assert_eq!(entra.calls(), 2);
    // Past the refresh point with entra down: callers are served, the refresh fails quietly.
    tokio::time::advance(Duration::from_secs(40 * 60)).await;
    entra.then(Err(TestError::Transient(Some(5))));
    for _ in 0..10 {
        let served = a.get(&key, Want::default(), entra.fetch()).await.unwrap();
        assert_eq!(served.token.stored.token.expose(), "token-0");
    }
    settle().await;
    assert_eq!(entra.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_dead_lock_holder_blocks_the_other_replica_only_until_the_lock_expires() {
    let (a, b, store, clock) = replicas(CachePolicy::default());
    let key = key("s");
    let mut hanging = Entra::new(HOUR);
    hanging.delay = Duration::from_secs(3600);
    let holder = {
        let a = a.clone();
        let key = key.clone();
        let fetch = hanging.fetch();
        tokio::spawn(async move { a.get(&key, Want::default(), fetch).await })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(hanging.calls(), 1);
    assert!(store.locked(&key));
    // Replica A dies mid-request: its refresh stops, its lock stays behind.
    a.shutdown(Duration::from_secs(1)).await;
    assert!(matches!(holder.await.unwrap(), Err(CacheError::Stopped)));
    assert!(store.locked(&key));

    let entra = Entra::new(HOUR);
    let started = clock.now_ms();
    let served = b.get(&key, Want::default(), entra.fetch()).await.unwrap();
    let waited = clock.now_ms() - started;
    assert!(!served.from_cache);
    assert_eq!(entra.calls(), 1);
    let ttl = ms(CachePolicy::default().lock_ttl);
    assert!(
        (ttl - 100..=ttl + 400).contains(&waited),
        "waited {waited} ms for a {ttl} ms lock"
    );
    assert!(!store.locked(&key));
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_does_not_leave_the_lock_held() {
    let (a, _b, store, _clock) = replicas(CachePolicy::default());
    let key = key("s");
    let mut slow = Entra::new(HOUR);
    slow.delay = Duration::from_secs(5);
    let gave_up = tokio::time::timeout(
        Duration::from_secs(1),
        a.get(&key, Want::default(), slow.fetch()),
    )
    .await;
    assert!(gave_up.is_err());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!store.locked(&key));
    let served = a.get(&key, Want::default(), slow.fetch()).await.unwrap();
    assert!(served.from_cache, "the abandoned request's token was kept");
    assert_eq!(slow.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn invalidate_drops_the_token_on_every_replica_but_keeps_a_retry_after() {
    let (a, b, store, _clock) = replicas(CachePolicy::default());
    let entra = Entra::new(HOUR);
    let key = key("s");
    b.get(&key, Want::default(), entra.fetch()).await.unwrap();
    a.get(&key, Want::default(), entra.fetch()).await.unwrap();
    assert_eq!(entra.calls(), 1);
    assert!(a.invalidate(&key).await.unwrap());
    // Replica A asks entra at once.
    let served = a.get(&key, Want::default(), entra.fetch()).await.unwrap();
    assert!(!served.from_cache);
    assert_eq!(entra.calls(), 2);
    // Replica B notices within the memory TTL and adopts A's new token.
    tokio::time::advance(CachePolicy::default().memory_ttl).await;
    b.get(&key, Want::default(), entra.fetch()).await.unwrap();
    settle().await;
    let served = b.get(&key, Want::default(), entra.fetch()).await.unwrap();
    assert_eq!(served.token.stored.token.expose(), "token-1");
    assert_eq!(entra.calls(), 2);
    let loads = store.loads();
    assert!(loads > 0);

    // A throttle survives invalidation.
    a.invalidate(&key).await.unwrap();
    entra.then(Err(TestError::Transient(Some(60))));
    assert!(a.get(&key, Want::default(), entra.fetch()).await.is_err());
    a.invalidate(&key).await.unwrap();
    let error = a
        .get(&key, Want::default(), entra.fetch())
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        CacheError::Fetch {
            remembered: true,
            ..
        }
    ));
    assert_eq!(entra.calls(), 3);
}
