//! When a cached token may be handed out, when to refresh it, and how long to wait after a
//! failure: pure functions of the settings and the time, so they are tested as tables.
//!
//! - A token is handed out only with at least `max(floor, caller's minimum)` left
//!   (default floor 5 minutes).
//! - From the refresh point (default half of its life) a refresh starts in the background
//!   while the cached token is still handed out.
//! - After a failure the next request to Entra waits: at least the server's `Retry-After`;
//!   transient faults back off exponentially (1 s … 1 min), permanent-looking ones slowly
//!   (2 min … 30 min), each with ±20 % jitter so replicas and sources spread out. The wait
//!   is remembered per cache key, so a caller never makes the broker loop on the endpoint
//!   (Entra answers AADSTS50196 to clients that do).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::{UnixMs, ms};

/// The cache's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct CachePolicy {
    /// A token is never handed out with less than this left.
    pub floor: Duration,
    /// The refresh point, in percent of a token's life (1–99).
    pub refresh_percent: u8,
    /// The cross-replica refresh lock's expiry: a broker that dies holding it blocks the
    /// others at most this long. Longer than an Entra request can take.
    pub lock_ttl: Duration,
    /// How often a broker waiting for another's refresh looks for the new token.
    pub lock_poll: Duration,
    /// How long a replica trusts its in-memory copy before checking the shared one again
    /// (bounds how long an invalidation or another replica's refresh goes unseen).
    pub memory_ttl: Duration,
    /// A forced refresh accepts a token obtained at most this long before it was asked
    /// for, so callers forcing at the same moment share one Entra request.
    pub force_refresh_grace: Duration,
    /// Back-off after transient failures (5xx, timeouts, refused connections).
    pub transient_backoff: Backoff,
    /// Back-off after permanent-looking failures (wrong secret, unknown tenant or app).
    pub permanent_backoff: Backoff,
}

impl Default for CachePolicy {
    fn default() -> Self {
        CachePolicy {
            floor: Duration::from_secs(5 * 60),
            refresh_percent: 50,
            lock_ttl: Duration::from_secs(15),
            lock_poll: Duration::from_millis(100),
            memory_ttl: Duration::from_secs(5),
            force_refresh_grace: Duration::from_secs(1),
            transient_backoff: Backoff {
                min: Duration::from_secs(1),
                max: Duration::from_secs(60),
            },
            permanent_backoff: Backoff {
                min: Duration::from_secs(2 * 60),
                max: Duration::from_secs(30 * 60),
            },
        }
    }
}

/// Exponential back-off bounds: `min`, `2·min`, `4·min`, … up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub min: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `failures + 1`, without jitter (`failures` ≥ 1).
    pub fn delay(self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.min.saturating_mul(1 << doublings).min(self.max)
    }
}

/// How a failure should be retried, as the fetcher classified it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Wrong or expired secret, unknown tenant or app, …: retry slowly.
    Permanent,
    /// 5xx, 429, timeouts, refused connections: retry soon, never before `after`.
    Transient {
        /// The server's `Retry-After`, if it sent one.
        after: Option<Duration>,
    },
}

/// What the cache needs to know about a fetch error.
pub trait FetchFailure:
    Clone + Send + Sync + Serialize + for<'de> Deserialize<'de> + std::fmt::Debug + 'static
{
    /// How to retry it.
    fn retry(&self) -> Retry;
}

/// A remembered failure of one cache key, shared between replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureRecord<E> {
    /// The last error.
    pub error: E,
    /// Failures in a row.
    pub failures: u32,
    /// When the last one happened.
    pub failed_at: UnixMs,
    /// No request to Entra before this.
    pub next_attempt_at: UnixMs,
    /// Whether `next_attempt_at` honours a server's `Retry-After` (kept on invalidation).
    pub retry_after: bool,
}

impl<E: FetchFailure> FailureRecord<E> {
    /// The record after `error` at `now`, following `previous`. `unit` is a random number in
    /// [0, 1) for the jitter.
    pub fn next(
        policy: &CachePolicy,
        previous: Option<&FailureRecord<E>>,
        error: E,
        now: UnixMs,
        unit: f64,
    ) -> Self {
        let failures = previous.map_or(0, |p| p.failures).saturating_add(1);
        let (wait, retry_after) = match error.retry() {
            Retry::Permanent => (
                jitter(policy.permanent_backoff.delay(failures), unit),
                false,
            ),
            Retry::Transient { after } => {
                let backoff = jitter(policy.transient_backoff.delay(failures), unit);
                match after {
                    // Never earlier than the server asked.
                    Some(after) if after >= backoff => (after, true),
                    _ => (backoff, false),
                }
            }
        };
        FailureRecord {
            error,
            failures,
            failed_at: now,
            next_attempt_at: now.saturating_add(ms(wait)),
            retry_after,
        }
    }

    /// Whether it still forbids asking Entra at `now`.
    pub fn blocks(&self, now: UnixMs) -> bool {
        now < self.next_attempt_at
    }
}

/// `base` scaled by a factor in [0.8, 1.2).
pub fn jitter(base: Duration, unit: f64) -> Duration {
    let unit = unit.clamp(0.0, 1.0);
    base.mul_f64(0.8 + 0.4 * unit)
}

/// A random number in [0, 1) for jitter (not for anything secret).
pub fn random_unit() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    // 53 random bits make an f64 in [0, 1); the casts are exact.
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

impl CachePolicy {
    /// The refresh point of a token obtained at `obtained_at` that expires at `expires_at`.
    pub fn refresh_at(&self, obtained_at: UnixMs, expires_at: UnixMs) -> UnixMs {
        let life = expires_at.saturating_sub(obtained_at).max(0);
        obtained_at + life * i64::from(self.refresh_percent.clamp(1, 99)) / 100
    }

    /// The least remaining validity a handed-out token must have for a caller asking for
    /// `min_validity`.
    pub fn need(&self, min_validity: Duration) -> Duration {
        self.floor.max(min_validity)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct E(Option<u64>, bool);

    impl FetchFailure for E {
        fn retry(&self) -> Retry {
            if self.1 {
                Retry::Permanent
            } else {
                Retry::Transient {
                    after: self.0.map(Duration::from_secs),
                }
            }
        }
    }

    #[test]
    fn refresh_point_and_need_follow_the_settings() {
        let policy = CachePolicy::default();
        assert_eq!(
            policy.refresh_at(1_000, 3_600_000 + 1_000),
            1_800_000 + 1_000
        );
        let early = CachePolicy {
            refresh_percent: 80,
            ..CachePolicy::default()
        };
        assert_eq!(early.refresh_at(0, 10_000), 8_000);
        assert_eq!(
            policy.need(Duration::from_secs(60)),
            Duration::from_secs(300)
        );
        assert_eq!(
            policy.need(Duration::from_secs(900)),
            Duration::from_secs(900)
        );
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = CachePolicy::default().permanent_backoff;
        let minutes: Vec<u64> = (1..=6).map(|n| b.delay(n).as_secs() / 60).collect();
        assert_eq!(minutes, vec![2, 4, 8, 16, 30, 30]);
        assert_eq!(b.delay(u32::MAX), b.max);
    }

    #[test]
    fn failure_waits_follow_retry_after_and_back_off_with_bounded_jitter() {
        let policy = CachePolicy::default();
        let now = 1_000_000;
        // Table: (error, previous failures, unit) -> (least wait ms, most wait ms, retry_after).
        let cases: &[(E, u32, f64, i64, i64, bool)] = &[
            (E(Some(30), false), 0, 0.99, 30_000, 30_000, true),
            (E(Some(30), false), 0, 0.0, 30_000, 30_000, true),
            (E(None, false), 0, 0.0, 800, 800, false),
            (E(None, false), 0, 0.999, 800, 1_200, false),
            (E(None, false), 3, 0.5, 8_000, 8_000, false),
            // A Retry-After shorter than the back-off already reached: the back-off wins.
            (E(Some(1), false), 4, 0.5, 16_000, 16_000, false),
            (E(None, true), 0, 0.0, 96_000, 96_000, false),
            (E(None, true), 1, 0.5, 240_000, 240_000, false),
            (E(None, true), 9, 0.999, 1_440_000, 2_160_000, false),
        ];
        for (error, before, unit, least, most, retry_after) in cases {
            let previous = (*before > 0).then(|| FailureRecord {
                error: error.clone(),
                failures: *before,
                failed_at: 0,
                next_attempt_at: 0,
                retry_after: false,
            });
            let record = FailureRecord::next(&policy, previous.as_ref(), error.clone(), now, *unit);
            let wait = record.next_attempt_at - now;
            assert!(
                (*least..=*most).contains(&wait),
                "{error:?} after {before}: waited {wait} ms"
            );
            assert_eq!(record.failures, before + 1);
            assert_eq!(record.retry_after, *retry_after, "{error:?}");
            assert!(record.blocks(now + wait - 1));
            assert!(!record.blocks(now + wait));
        }
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let draws: Vec<f64> = (0..100).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|u| (0.0..1.0).contains(u)));
        assert!(draws.windows(2).any(|w| w[0] != w[1]));
    }
}
