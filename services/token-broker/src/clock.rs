//! Wall-clock time for token expiry, behind a trait so the cache logic runs on tokio's
//! paused time in unit tests.
//!
//! Expiry instants are shared between broker replicas through Redis, so they are wall-clock
//! milliseconds since the Unix epoch ([`UnixMs`]), not `Instant`s. [`SystemClock`] reads the
//! system clock; [`TokioClock`] is a wall clock anchored once and advanced by
//! `tokio::time::Instant`, so `tokio::time::pause()` and `advance()` move it too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type UnixMs = i64;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + 'static {
    /// Now, in milliseconds since the Unix epoch.
    fn now_ms(&self) -> UnixMs;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> UnixMs {
        system_now_ms()
    }
}

fn system_now_ms() -> UnixMs {
    // Before 1970 only on a broken clock; count that as the epoch.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A wall clock that follows tokio's (possibly paused) time from an anchor.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    anchor_ms: UnixMs,
    anchor: tokio::time::Instant,
}

impl TokioClock {
    /// Anchored at the system time now.
    pub fn new() -> Self {
        TokioClock {
            anchor_ms: system_now_ms(),
            anchor: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> UnixMs {
        self.anchor_ms + ms(self.anchor.elapsed())
    }
}

/// A duration in whole milliseconds, saturating.
pub fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The duration from `from` to `to`, zero if `to` is not later.
pub fn until(from: UnixMs, to: UnixMs) -> Duration {
    Duration::from_millis(u64::try_from(to.saturating_sub(from)).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tokio_clock_follows_paused_time() {
        let clock = TokioClock::new();
        let start = clock.now_ms();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(clock.now_ms() - start, 90_000);
        assert_eq!(until(start, start + 1500), Duration::from_millis(1500));
        assert_eq!(until(start, start - 1), Duration::ZERO);
    }
}
