//! Which fetchers are running, so status can say when nothing syncs at all.
//!
//! A folder's status is what the last fetcher to touch it wrote: if every fetcher stops
//! (crashed, stopped, cut off from Redis), the folders keep showing `syncing` or `idle` and
//! a last poll that only grows older, and nothing says the sync has stopped. So each
//! fetcher's scheduler reports at every poll, and `GetStatus` warns when no report is
//! current.
//!
//! One sorted set, [`FETCHERS_KEY`]: the member is a fetcher's instance name, the score the
//! Unix time in ms at which its report lapses (a few poll intervals after it was made). A
//! fetcher that stops cleanly lapses at once. Lapsed members are kept for [`KEEP_LAPSED`], so
//! status can name the last fetcher and when it stopped; each report removes older ones.

use std::time::Duration;

use crate::store::{Result, SourceStore, StoreError};

/// `tm:fetchers`: instance name → when its report lapses (Unix ms).
pub const FETCHERS_KEY: &str = "tm:fetchers";

/// How long a lapsed report is kept to say which fetcher stopped last, and when.
pub const KEEP_LAPSED: Duration = Duration::from_secs(7 * 24 * 3600);

/// The fetchers as their reports show them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fleet {
    /// Instance names whose report is current, in name order.
    pub running: Vec<String>,
    /// The report that lapsed last (instance name, Unix ms), if one is kept.
    pub last_lapsed: Option<(String, i64)>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

fn ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

impl SourceStore {
    /// Reports fetcher `instance` as running for `lapses_after` from now.
    pub async fn report_fetcher(&self, instance: &str, lapses_after: Duration) -> Result<()> {
        let now = now_ms();
        self.write_fleet(|pipe| {
            pipe.cmd("ZADD")
                .arg(FETCHERS_KEY)
                .arg(now.saturating_add(ms(lapses_after)))
                .arg(instance)
                .ignore()
                .cmd("ZREMRANGEBYSCORE")
                .arg(FETCHERS_KEY)
                .arg("-inf")
                .arg(format!("({}", now.saturating_sub(ms(KEEP_LAPSED))))
                .ignore();
        })
        .await
    }

    /// Reports fetcher `instance` as stopped now (a clean shutdown).
    pub async fn report_fetcher_stopped(&self, instance: &str) -> Result<()> {
        let now = now_ms();
        self.write_fleet(|pipe| {
            pipe.cmd("ZADD")
                .arg(FETCHERS_KEY)
                .arg(now)
                .arg(instance)
                .ignore();
        })
        .await
    }

    /// The running fetchers, and the last one that stopped.
    pub async fn fleet(&self) -> Result<Fleet> {
        let now = now_ms();
        let mut conn = self.connection();
        let (running, lapsed): (Vec<String>, Vec<(String, i64)>) = redis::pipe()
            .cmd("ZRANGEBYSCORE")
            .arg(FETCHERS_KEY)
            .arg(format!("({now}"))
            .arg("+inf")
            .cmd("ZREVRANGEBYSCORE")
            .arg(FETCHERS_KEY)
            .arg(now)
            .arg("-inf")
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(0)
            .arg(1)
            .query_async(&mut conn)
            .await
            .map_err(StoreError::RedisFleet)?;
        let mut running = running;
        running.sort();
        Ok(Fleet {
            running,
            last_lapsed: lapsed.into_iter().next(),
        })
    }

    async fn write_fleet(&self, fill: impl FnOnce(&mut redis::Pipeline)) -> Result<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        fill(&mut pipe);
        let mut conn = self.connection();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(StoreError::RedisFleet)
    }
}
