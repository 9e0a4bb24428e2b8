//! The scheduler: which (source, folder) this fetcher syncs, when, and what status it
//! leaves (DESIGN §4).
//!
//! Every `sync.poll_interval` it reads the sources and their folder selections from Redis,
//! so configuration applies live: a newly selected folder is synced at the next poll, and a
//! deselected folder or a disabled or deleted source stops within one poll (a sync in
//! progress is interrupted; what it committed stays committed). For each enabled source
//! with due folders and no round in progress it starts a *round*: one task that walks the
//! due folders, takes each folder's lease (whoever holds it syncs; a fetcher that cannot
//! take it skips the folder), syncs it while renewing the lease, and writes the folder's
//! status. A round reuses one IMAP session across its folders and logs out at its end, so
//! an idle fetcher holds no connection against the per-mailbox cap.
//!
//! A folder is due when the source's poll interval has passed since its last completed
//! poll (read from its status, so every fetcher agrees) and it is not backing off. Each
//! failure backs the folder off on this fetcher: `sync.retry_min` doubled per failure up to
//! `sync.retry_max`, with jitter so fetchers and folders do not retry in step. Exchange's
//! throttling holds the whole mailbox (every source on it, on every fetcher: the hold is
//! shared through Redis) for at least the time Exchange asked for.

use std::collections::HashMap;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use threatmail_core::error::chain;
use threatmail_source::{
    ConnectionState, FolderError, FolderStatus, SourceId, SourceRecord, SourceStore,
};
use threatmail_store::{Lease, Store, StoreError};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::BrokerError;
use crate::config::SyncSettings;
use crate::diagnosis::{self, SourceFacts};
use crate::imap::ImapError;
use crate::imap::select_folder::Access;
use crate::session::{self, SessionError, SessionParts, SourceSession};
use crate::sync::{SyncContext, SyncError, SyncLimits, SyncReport, sync_folder_with_action};

/// What the scheduler works with.
#[derive(Debug, Clone)]
pub struct SchedulerParts {
    /// Sources, folder selections and status.
    pub sources: SourceStore,
    /// Records, checkpoints and leases.
    pub store: Store,
    /// Opening sessions.
    pub session: SessionParts,
    /// Intervals, leases and limits.
    pub settings: SyncSettings,
    /// Every IMAP command's timeout.
    pub command_timeout: Duration,
}

/// The scheduler of one fetcher process.
#[derive(Debug, Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    sources: SourceStore,
    store: Store,
    session: SessionParts,
    settings: SyncSettings,
    limits: SyncLimits,
    /// Per (source, folder): failures in a row on this fetcher and when to try again.
    backoff: Mutex<HashMap<(SourceId, String), Backoff>>,
    /// Each source's version as of the last poll, to see which changed.
    versions: Mutex<HashMap<SourceId, u64>>,
    /// Told when a back-off is set, so the poll loop can wake when it ends.
    backoff_set: tokio::sync::Notify,
    /// Mailboxes (lower case) Exchange is throttling, and until when, as this fetcher knows;
    /// the fleet's holds are in Redis ([`crate::connections`]).
    throttled: Mutex<HashMap<String, Instant>>,
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    not_before: Instant,
}

/// A round in progress.
struct Round {
    /// Cancelled when the source stops (disabled, deleted, nothing selected).
    stop: CancellationToken,
    /// The source's selected folders as of the last poll.
    wanted: watch::Sender<Vec<String>>,
    handle: JoinHandle<()>,
}

/// How one attempt at a folder ended.
enum Outcome {
    Synced(SyncReport),
    /// Deselected, or the source stopped.
    Stopped,
    /// The process is shutting down.
    Shutdown,
    /// Another fetcher holds the lease now.
    LeaseLost,
    Session(SessionError),
    Imap(ImapError),
    Store(StoreError),
}

/// Why a sync under a lease stopped early.
enum Interrupted {
    Stopped,
    Shutdown,
    LeaseLost,
    Sync(SyncError),
}

impl Interrupted {
    /// Whether the sync was dropped where it stood (rather than returning), so a command it
    /// sent may still be answering on the connection.
    fn cut_short(&self) -> bool {
        matches!(
            self,
            Interrupted::Stopped | Interrupted::Shutdown | Interrupted::LeaseLost
        )
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// A uniformly random fraction in [0, 1), from std's randomly keyed hasher (jitter needs
/// no more than that).
fn random_fraction() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// The back-off after `failures` failures in a row: `min` doubled per further failure, at
/// most `max`, then jittered into its upper half.
pub fn backoff_delay(failures: u32, min: Duration, max: Duration, fraction: f64) -> Duration {
    let doubled = min.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let capped = doubled.min(max);
    capped.mul_f64(0.5 + 0.5 * fraction.clamp(0.0, 1.0))
}

impl Scheduler {
    /// A scheduler over `parts`.
    pub fn new(parts: SchedulerParts) -> Self {
        let settings = parts.settings;
        let limits = SyncLimits {
            batch_messages: settings.batch_messages,
            batch_bytes: settings.batch_bytes,
            max_message_bytes: settings.max_message_bytes,
            command_timeout: parts.command_timeout,
            lease_ttl: settings.lease_ttl,
        };
        Scheduler {
            inner: Arc::new(Inner {
                sources: parts.sources,
                store: parts.store,
                session: parts.session,
                settings,
                limits,
                backoff: Mutex::new(HashMap::new()),
                versions: Mutex::new(HashMap::new()),
                backoff_set: tokio::sync::Notify::new(),
                throttled: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Polls until `shutdown` is cancelled, then stops every round (each gives its lease
    /// back and logs out) and waits for them, at most [`threatmail_runtime::SHUTDOWN_GRACE`].
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(
            instance = %self.inner.session.instance,
            poll_interval = ?self.inner.settings.poll_interval,
            lease_ttl = ?self.inner.settings.lease_ttl,
            "scheduler starting"
        );
        let mut rounds: HashMap<SourceId, Round> = HashMap::new();
        let mut wanted_before: HashMap<SourceId, Vec<String>> = HashMap::new();
        'polls: loop {
            self.inner.report_running().await;
            self.poll(&mut rounds, &mut wanted_before, &shutdown).await;
            // The next poll, or sooner a failed folder's retry: a back-off shorter than the
            // poll interval is kept as logged, not rounded up to the next poll. A failure
            // in a round started by this poll sets its back-off later, and wakes this.
            let next_poll = Instant::now() + self.inner.settings.poll_interval;
            loop {
                let wake = self
                    .inner
                    .next_retry()
                    .map_or(next_poll, |retry| retry.min(next_poll));
                tokio::select! {
                    () = shutdown.cancelled() => break 'polls,
                    () = tokio::time::sleep_until(wake) => break,
                    () = self.inner.backoff_set.notified() => {}
                }
            }
        }
        let handles: Vec<JoinHandle<()>> = rounds.into_values().map(|r| r.handle).collect();
        if tokio::time::timeout(
            threatmail_runtime::SHUTDOWN_GRACE,
            futures::future::join_all(handles),
        )
        .await
        .is_err()
        {
            tracing::warn!(
                "some folder syncs did not stop in time; their leases lapse by themselves"
            );
        }
        if let Err(error) = self
            .inner
            .sources
            .report_fetcher_stopped(&self.inner.session.instance)
            .await
        {
            tracing::warn!(error = %chain(&error), "could not report this fetcher as stopped; its report lapses by itself");
        }
        tracing::info!("scheduler stopped");
    }

    /// One poll: read the configuration, stop what is no longer wanted, start due rounds.
    async fn poll(
        &self,
        rounds: &mut HashMap<SourceId, Round>,
        wanted_before: &mut HashMap<SourceId, Vec<String>>,
        shutdown: &CancellationToken,
    ) {
        rounds.retain(|_, round| !round.handle.is_finished());
        let Some((records, wanted_now)) = self.wanted().await else {
            return;
        };
        self.inner.forget_failures_of_changed(&records);
        for (id, round) in rounds.iter() {
            match wanted_now.get(id) {
                Some(wanted) => {
                    round.wanted.send_replace(wanted.clone());
                }
                None => round.stop.cancel(),
            }
        }
        for (id, before) in wanted_before.iter() {
            let now = wanted_now.get(id);
            for folder in before {
                if now.is_none_or(|now| !now.contains(folder)) {
                    self.inner.mark_stopped(id, folder).await;
                }
            }
        }
        for (id, wanted) in &wanted_now {
            if rounds.contains_key(id) {
                continue;
            }
            let Some(record) = records.get(id) else {
                continue;
            };
            if self.inner.throttled_until(&record.username).is_some() {
                continue;
            }
            let due = self.inner.due_folders(record, wanted).await;
            if due.is_empty() {
                continue;
            }
            let stop = shutdown.child_token();
            let (sender, receiver) = watch::channel(wanted.clone());
            let inner = Arc::clone(&self.inner);
            let handle = tokio::spawn(inner.round(
                record.clone(),
                due,
                receiver,
                stop.clone(),
                shutdown.clone(),
            ));
            rounds.insert(
                id.clone(),
                Round {
                    stop,
                    wanted: sender,
                    handle,
                },
            );
        }
        *wanted_before = wanted_now;
    }

    /// The enabled sources and their selected folders (raw names), or `None` when Redis
    /// cannot be read (nothing changes then).
    #[allow(clippy::type_complexity)]
    async fn wanted(
        &self,
    ) -> Option<(
        HashMap<SourceId, SourceRecord>,
        HashMap<SourceId, Vec<String>>,
    )> {
        let listed = match self.inner.sources.list().await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(error = %chain(&error), "failed to read the sources; trying again at the next poll");
                return None;
            }
        };
        let mut records = HashMap::new();
        let mut wanted = HashMap::new();
        for record in listed {
            if !record.enabled {
                continue;
            }
            match self.inner.sources.get_with_folders(&record.id).await {
                Ok(Some((record, selection))) => {
                    let folders: Vec<String> = selection
                        .into_iter()
                        .filter(|folder| folder.fetch)
                        .map(|folder| folder.raw_name)
                        .collect();
                    if record.enabled && !folders.is_empty() {
                        wanted.insert(record.id.clone(), folders);
                        records.insert(record.id.clone(), record);
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(source_id = %record.id, error = %chain(&error), "failed to read a folder selection");
                    return None;
                }
            }
        }
        Some((records, wanted))
    }
}

impl Inner {
    /// Until when this fetcher knows `mailbox` to be throttled.
    fn throttled_until(&self, mailbox: &str) -> Option<Instant> {
        let key = mailbox.to_ascii_lowercase();
        let mut throttled = self
            .throttled
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match throttled.get(&key) {
            Some(until) if *until > Instant::now() => Some(*until),
            Some(_) => {
                throttled.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Holds `mailbox` for `wait`, here and (through Redis) for every other fetcher.
    async fn hold(&self, mailbox: &str, wait: Duration) {
        self.throttled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(mailbox.to_ascii_lowercase(), Instant::now() + wait);
        if let Err(error) = self
            .session
            .slots
            .hold_mailbox(mailbox, wait, &self.session.instance)
            .await
        {
            tracing::warn!(error = %chain(&error), "failed to share the throttling with the fleet; this fetcher still waits");
        }
    }

    /// Whether `mailbox` is throttled, as this fetcher or any other was told.
    async fn held(&self, mailbox: &str) -> bool {
        if self.throttled_until(mailbox).is_some() {
            return true;
        }
        match self.session.slots.mailbox_held(mailbox).await {
            Ok(Some(left)) => {
                tracing::info!(wait = ?left, "the mailbox is throttled (another fetcher was told); waiting");
                self.throttled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(mailbox.to_ascii_lowercase(), Instant::now() + left);
                true
            }
            Ok(None) => false,
            Err(error) => {
                tracing::debug!(error = %chain(&error), "could not read the fleet's throttling");
                false
            }
        }
    }

    /// Tells the fleet (and so `GetStatus`) that this fetcher runs, until a few polls from
    /// now: a fetcher that stops polling, however it stops, lapses by itself.
    async fn report_running(&self) {
        let lapses_after = self.settings.poll_interval * 3 + Duration::from_secs(2);
        if let Err(error) = self
            .sources
            .report_fetcher(&self.session.instance, lapses_after)
            .await
        {
            tracing::debug!(error = %chain(&error), "could not report this fetcher as running");
        }
    }

    /// When the soonest back-off still running ends.
    fn next_retry(&self) -> Option<Instant> {
        let now = Instant::now();
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(|b| b.not_before)
            .filter(|at| *at > now)
            .min()
    }

    fn backing_off(&self, id: &SourceId, folder: &str) -> bool {
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(id.clone(), folder.to_owned()))
            .is_some_and(|b| b.not_before > Instant::now())
    }

    /// Records a failure; returns the back-off chosen.
    fn fail(&self, id: &SourceId, folder: &str, at_least: Option<Duration>) -> Duration {
        let mut backoff = self.backoff.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = backoff
            .entry((id.clone(), folder.to_owned()))
            .or_insert(Backoff {
                failures: 0,
                not_before: Instant::now(),
            });
        entry.failures = entry.failures.saturating_add(1);
        let mut delay = backoff_delay(
            entry.failures,
            self.settings.retry_min,
            self.settings.retry_max,
            random_fraction(),
        );
        if let Some(floor) = at_least {
            delay = delay.max(floor);
        }
        entry.not_before = Instant::now() + delay;
        self.backoff_set.notify_one();
        delay
    }

    /// A source that changed since the last poll (its address, port or secret fixed, say)
    /// has its folders' back-offs ended, so the change is tried at this poll rather than
    /// after up to `sync.retry_max`. Exchange's throttling is not among them: it is held
    /// per mailbox, apart ([`Inner::throttled_until`], [`Inner::held`]).
    fn forget_failures_of_changed(&self, records: &HashMap<SourceId, SourceRecord>) {
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        let changed: Vec<&SourceId> = records
            .iter()
            .filter(|(id, record)| versions.get(*id).is_some_and(|v| *v != record.version))
            .map(|(id, _)| id)
            .collect();
        if !changed.is_empty() {
            self.backoff
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|(id, _), _| !changed.contains(&id));
        }
        *versions = records
            .iter()
            .map(|(id, record)| (id.clone(), record.version))
            .collect();
    }

    fn succeed(&self, id: &SourceId, folder: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&(id.clone(), folder.to_owned()));
    }

    /// The folders of `wanted` due for a poll.
    async fn due_folders(&self, record: &SourceRecord, wanted: &[String]) -> Vec<String> {
        let statuses = match self.sources.folder_statuses(&record.id, wanted).await {
            Ok(statuses) => statuses,
            Err(error) => {
                tracing::warn!(source_id = %record.id, error = %chain(&error), "failed to read folder status");
                return Vec::new();
            }
        };
        let now = unix_now();
        let interval = i64::try_from(record.poll_interval_secs).unwrap_or(i64::MAX);
        statuses
            .into_iter()
            .filter(|status| !self.backing_off(&record.id, &status.raw_name))
            .filter(|status| match status.last_poll {
                Some(last) if status.retry_count == 0 => now >= last.saturating_add(interval),
                _ => true,
            })
            .map(|status| status.raw_name)
            .collect()
    }

    /// Syncs `due` folders of one source, one after the other, on one session. The round
    /// starts a trace (its broker calls carry it); its id is a field of the round's span so
    /// that every log line of the round, the store's batch commits too, shows it.
    #[tracing::instrument(skip_all, fields(source_id = %record.id, trace_id = tracing::field::Empty))]
    async fn round(
        self: Arc<Self>,
        record: SourceRecord,
        due: Vec<String>,
        wanted: watch::Receiver<Vec<String>>,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        threatmail_telemetry::record_trace_id(&tracing::Span::current());
        let mut session: Option<SourceSession> = None;
        // A session that could not be opened (a refused login, an unreachable server) would
        // fail the same way for every folder of the source: the rest of the round's folders
        // get that failure without another login, so a revoked permission costs Exchange one
        // refused login (and its retry) per round, not one per folder.
        let mut no_session: Option<(String, Judged)> = None;
        for folder in due {
            if stop.is_cancelled() || shutdown.is_cancelled() {
                break;
            }
            if !wanted.borrow().contains(&folder) {
                continue;
            }
            if self.held(&record.username).await {
                break;
            }
            let lease = match self
                .store
                .acquire_lease(
                    &record.id,
                    &folder,
                    &self.session.instance,
                    self.settings.lease_ttl,
                )
                .await
            {
                Ok(Some(lease)) => lease,
                Ok(None) => {
                    tracing::debug!(folder = %folder, "another fetcher holds the folder's lease");
                    continue;
                }
                Err(error) => {
                    tracing::warn!(folder = %folder, error = %chain(&error), "failed to take a folder lease");
                    continue;
                }
            };
            tracing::debug!(folder = %folder, token = lease.token, "lease taken");
            if let Some((tried, judged)) = &no_session {
                self.fail_untried(&record, &folder, tried, judged).await;
            } else {
                let outcome = self
                    .attempt(
                        &record,
                        &folder,
                        &lease,
                        &mut session,
                        &wanted,
                        &stop,
                        &shutdown,
                    )
                    .await;
                let opening_failed = matches!(outcome, Outcome::Session(_));
                let judged = self.finish(&record, &folder, outcome).await;
                if opening_failed && let Some(judged) = judged {
                    no_session = Some((folder.clone(), judged));
                }
            }
            if let Err(error) = self.store.release_lease(&lease).await {
                tracing::warn!(folder = %folder, error = %chain(&error), "failed to give a lease back; it lapses by itself");
            }
        }
        if let Some(open) = session.take() {
            open.close(&self.session).await;
        }
    }

    /// One attempt at `folder` under `lease`: a session (reused, or opened), then the sync.
    /// An expired token mid-sync gets one new session at once; the sync resumes from the
    /// last committed UID.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        record: &SourceRecord,
        folder: &str,
        lease: &Lease,
        session: &mut Option<SourceSession>,
        wanted: &watch::Receiver<Vec<String>>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Outcome {
        // The checkpoint when the current session started: a session that ends at its
        // token's expiry after committing something is replaced at once, as often as that
        // happens; one that ends so before committing anything is a failure.
        let mut resumed_at = None;
        loop {
            if let Some(open) = session.take_if(|open| open.should_retire()) {
                tracing::debug!("retiring the session before its token expires");
                open.close(&self.session).await;
            }
            // A reused session keeps its connection slot only while it refreshes it.
            if let Some(open) = session.as_ref() {
                match open.refresh_slot(&self.session).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::info!(
                            "the session's connection slot lapsed and the cap is full; closing it"
                        );
                        if let Some(open) = session.take() {
                            open.close(&self.session).await;
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %chain(&error), "failed to refresh a connection slot")
                    }
                }
            }
            if session.is_none() {
                self.write_state(record, folder, ConnectionState::Connecting)
                    .await;
            }
            let open = match session {
                Some(open) => open,
                None => match session::open(&self.session, record).await {
                    Ok(open) => session.insert(open),
                    Err(error) => return Outcome::Session(error),
                },
            };
            self.write_state(record, folder, ConnectionState::Syncing)
                .await;
            let result = self
                .sync_under_lease(open, record, folder, lease, wanted, stop, shutdown)
                .await;
            // The answer to a command of the dropped sync would reach the next folder's
            // commands, so that connection serves nothing more.
            if result.as_ref().err().is_some_and(Interrupted::cut_short)
                && let Some(cut) = session.take()
            {
                cut.abandon(&self.session).await;
            }
            match result {
                Ok(report) => return Outcome::Synced(report),
                Err(Interrupted::Stopped) => return Outcome::Stopped,
                Err(Interrupted::Shutdown) => return Outcome::Shutdown,
                Err(Interrupted::LeaseLost | Interrupted::Sync(SyncError::LeaseLost { .. })) => {
                    return Outcome::LeaseLost;
                }
                Err(Interrupted::Sync(SyncError::Store { source, .. })) => {
                    return Outcome::Store(source);
                }
                Err(Interrupted::Sync(SyncError::Imap { source, .. })) => {
                    // Only a refused command leaves the connection usable; anything else
                    // (a parse failure leaves the bad bytes in the read buffer, a BYE, a
                    // timeout) ends it, and the next attempt starts on a new one.
                    if !matches!(source, ImapError::CommandFailed { .. })
                        && let Some(broken) = session.take()
                    {
                        broken.abandon(&self.session).await;
                    }
                    if matches!(source, ImapError::TokenExpired { .. }) {
                        let now = self
                            .store
                            .checkpoint(&record.id, folder)
                            .await
                            .ok()
                            .flatten();
                        if resumed_at.is_none_or(|before| now != before) {
                            tracing::info!(
                                "the session's token expired; resuming on a new session"
                            );
                            resumed_at = Some(now);
                            continue;
                        }
                    }
                    return Outcome::Imap(source);
                }
            }
        }
    }

    /// Runs the folder sync while renewing the lease (and the connection slot), until it
    /// ends, the lease is lost, the folder is deselected or the source stops.
    #[allow(clippy::too_many_arguments)]
    async fn sync_under_lease(
        &self,
        open: &mut SourceSession,
        record: &SourceRecord,
        folder: &str,
        lease: &Lease,
        wanted: &watch::Receiver<Vec<String>>,
        stop: &CancellationToken,
        shutdown: &CancellationToken,
    ) -> Result<SyncReport, Interrupted> {
        let SourceSession {
            session,
            server,
            user,
            connection_id,
            ..
        } = open;
        let context = SyncContext {
            server,
            user,
            store: &self.store,
            source_id: &record.id,
            // SELECT only when the action after processing changes the mailbox.
            access: Access::ReadOnly,
            limits: &self.limits,
            holds: Some(&self.session.slots),
        };
        let renew = async {
            loop {
                tokio::time::sleep(self.settings.renew_interval).await;
                match self.store.renew_lease(lease, self.settings.lease_ttl).await {
                    Ok(true) => self.write_progress(&record.id, folder).await,
                    Ok(false) => return,
                    // The write checks the fence, so a renewal lost to a Redis hiccup
                    // cannot make a stale write; keep trying.
                    Err(error) => {
                        tracing::warn!(error = %chain(&error), "failed to renew a lease")
                    }
                }
                if let Err(error) = self
                    .session
                    .slots
                    .take_connection_slot(
                        user,
                        connection_id,
                        self.session.cap,
                        self.session.slot_ttl,
                    )
                    .await
                {
                    tracing::warn!(error = %chain(&error), "failed to refresh a connection slot");
                }
            }
        };
        let deselected = async {
            let mut wanted = wanted.clone();
            loop {
                if !wanted.borrow_and_update().iter().any(|f| f == folder) {
                    return;
                }
                if wanted.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Err(Interrupted::Shutdown),
            () = stop.cancelled() => Err(Interrupted::Stopped),
            () = deselected => Err(Interrupted::Stopped),
            () = renew => Err(Interrupted::LeaseLost),
            result = sync_folder_with_action(session, context, &record.after_processing, folder, lease) => result.map_err(Interrupted::Sync),
        }
    }

    async fn status(&self, id: &SourceId, folder: &str) -> FolderStatus {
        match self.sources.folder_statuses(id, &[folder.to_owned()]).await {
            Ok(mut statuses) if !statuses.is_empty() => statuses.swap_remove(0),
            Ok(_) => FolderStatus::new(folder),
            Err(error) => {
                tracing::warn!(folder = %folder, error = %chain(&error), "failed to read a folder status");
                FolderStatus::new(folder)
            }
        }
    }

    async fn write_status(&self, id: &SourceId, mut status: FolderStatus) {
        // A source deleted meanwhile keeps no status (its keys went with it).
        if matches!(self.sources.get(id).await, Ok(None)) {
            return;
        }
        status.updated_at = Some(unix_now());
        if let Err(error) = self.sources.write_folder_status(id, &status).await {
            tracing::warn!(folder = %status.raw_name, error = %chain(&error), "failed to write a folder status");
        }
    }

    /// While a folder syncs, its status shows the records committed so far (a first sync
    /// of a large folder would show 0 until it ends otherwise).
    async fn write_progress(&self, id: &SourceId, folder: &str) {
        let count = match self.store.count_in_folder(id, folder).await {
            Ok(count) => count as u64,
            Err(error) => {
                tracing::debug!(folder = %folder, error = %chain(&error), "failed to count a folder's records");
                return;
            }
        };
        let mut status = self.status(id, folder).await;
        if status.messages_synced != count {
            status.messages_synced = count;
            self.write_status(id, status).await;
        }
    }

    async fn write_state(&self, record: &SourceRecord, folder: &str, state: ConnectionState) {
        let mut status = self.status(&record.id, folder).await;
        status.connection_state = state;
        self.write_status(&record.id, status).await;
    }

    /// `folder` was not tried because the source's session could not be opened for `tried`:
    /// it shows that failure and backs off as if it had failed so itself.
    async fn fail_untried(
        &self,
        record: &SourceRecord,
        folder: &str,
        tried: &str,
        judged: &Judged,
    ) {
        let mut status = self.status(&record.id, folder).await;
        let delay = self.fail(&record.id, folder, judged.throttle);
        tracing::debug!(folder = %folder, tried = %tried, retry_in = ?delay, "not tried: the source's session could not be opened");
        status.retry_count = status.retry_count.saturating_add(1);
        status.connection_state = if judged.needs_user {
            ConnectionState::Failed
        } else {
            ConnectionState::Retrying
        };
        status.last_error = Some(FolderError {
            at: unix_now(),
            ..judged.error.clone()
        });
        self.write_status(&record.id, status).await;
    }

    /// A folder that left the selection, of a source that still exists, shows as disabled.
    async fn mark_stopped(&self, id: &SourceId, folder: &str) {
        let mut status = self.status(id, folder).await;
        if status.connection_state != ConnectionState::Disabled {
            status.connection_state = ConnectionState::Disabled;
            self.write_status(id, status).await;
        }
    }

    /// Writes the folder's status after an attempt and sets its back-off; returns how a
    /// failure was judged.
    async fn finish(
        &self,
        record: &SourceRecord,
        folder: &str,
        outcome: Outcome,
    ) -> Option<Judged> {
        let mut status = self.status(&record.id, folder).await;
        // Counted from the store, so batches committed by an attempt that failed later (or
        // by a fetcher that died before writing its status) are counted too.
        match self.store.count_in_folder(&record.id, folder).await {
            Ok(count) => status.messages_synced = count as u64,
            Err(error) => {
                tracing::warn!(folder = %folder, error = %chain(&error), "failed to count a folder's records")
            }
        }
        let failure = match outcome {
            Outcome::Synced(report) => {
                self.succeed(&record.id, folder);
                status.last_poll = Some(unix_now());
                status.uidvalidity = Some(report.uidvalidity);
                status.last_uid = Some(report.last_uid);
                // Oversized messages have no record: the status is where they show.
                match self.store.skipped(&record.id, folder).await {
                    Ok(skipped) => {
                        status.messages_skipped = skipped
                            .iter()
                            .filter(|(uidvalidity, ..)| *uidvalidity == report.uidvalidity)
                            .count() as u64;
                    }
                    Err(error) => {
                        tracing::warn!(folder = %folder, error = %chain(&error), "failed to count a folder's skipped messages")
                    }
                }
                status.retry_count = 0;
                // New mail was stored; an action the server refused (the messages stay
                // where they are) is the user's to fix and is retried at every poll.
                status.last_error = report.action_error.as_ref().map(|error| FolderError {
                    reason: ACTION_FAILED.to_owned(),
                    message: error.message(folder),
                    upstream_code: error.text.clone(),
                    checklist: Vec::new(),
                    at: unix_now(),
                });
                status.connection_state = if report.action_error.is_some() {
                    ConnectionState::Failed
                } else {
                    ConnectionState::Idle
                };
                self.write_status(&record.id, status).await;
                return None;
            }
            Outcome::Stopped => {
                status.connection_state = ConnectionState::Disabled;
                self.write_status(&record.id, status).await;
                return None;
            }
            Outcome::Shutdown => {
                status.connection_state = ConnectionState::Idle;
                self.write_status(&record.id, status).await;
                return None;
            }
            Outcome::LeaseLost => {
                tracing::warn!(folder = %folder, "lost the folder's lease to another fetcher; it carries on");
                return None;
            }
            Outcome::Session(SessionError::CapReached { .. }) => {
                tracing::info!(folder = %folder, "the mailbox's connection cap is reached; trying at the next poll");
                status.connection_state = ConnectionState::Idle;
                self.write_status(&record.id, status).await;
                return None;
            }
            other => other,
        };
        let retry_count = status.retry_count.saturating_add(1);
        let judged = judge(record, &failure, retry_count);
        if let Some(backoff) = judged.throttle {
            self.hold(&record.username, backoff).await;
        }
        let delay = self.fail(&record.id, folder, judged.throttle);
        tracing::warn!(
            folder = %folder,
            reason = %judged.error.reason,
            error = %judged.error.message,
            retry_in = ?delay,
            "folder sync failed"
        );
        status.retry_count = retry_count;
        status.connection_state = if judged.needs_user {
            ConnectionState::Failed
        } else {
            ConnectionState::Retrying
        };
        status.last_error = Some(judged.error.clone());
        self.write_status(&record.id, status).await;
        Some(judged)
    }
}

/// The reason of a folder status whose action after processing the server refused.
pub const ACTION_FAILED: &str = "fetcher.action_failed";

/// A failure as the status shows it.
#[derive(Clone)]
struct Judged {
    error: FolderError,
    /// The user must change something (as opposed to a fault that may pass).
    needs_user: bool,
    /// Exchange asked to back off this long.
    throttle: Option<Duration>,
}

fn server_words(error: &ImapError) -> &str {
    match error {
        ImapError::LoginRefused { text, .. }
        | ImapError::NotConnected { text, .. }
        | ImapError::Throttled { text, .. }
        | ImapError::TokenExpired { text, .. }
        | ImapError::Closed { text, .. }
        | ImapError::CommandFailed { text, .. }
        | ImapError::GreetingBye { text, .. } => text,
        _ => "",
    }
}

/// "Not connected" is a setup fault when it persists and a passing one (connection churn,
/// the connection limit) when it does not.
const NOT_CONNECTED_PERSISTS_AFTER: u32 = 3;

fn judge(record: &SourceRecord, outcome: &Outcome, retry_count: u32) -> Judged {
    let at = unix_now();
    let facts = SourceFacts {
        mailbox: &record.username,
        app_id: &record.app_id,
        object_id: record.object_id.as_deref(),
    };
    let oauth = record.auth_type == threatmail_source::record::AuthType::MsOauth2;
    let plain = |reason: &str, message: String, upstream: &str, needs_user: bool| Judged {
        error: FolderError {
            reason: reason.to_owned(),
            message,
            upstream_code: upstream.to_owned(),
            checklist: Vec::new(),
            at,
        },
        needs_user,
        throttle: None,
    };
    let refused = |reason: &str, text: &str, needs_user: bool| {
        let upstream = if reason == diagnosis::NOT_CONNECTED {
            "BAD User is authenticated but not connected."
        } else {
            "NO AUTHENTICATE failed."
        };
        Judged {
            error: FolderError {
                reason: reason.to_owned(),
                message: diagnosis::refused_login_summary(reason, &record.username, text),
                upstream_code: upstream.to_owned(),
                checklist: diagnosis::checklist(reason, facts),
                at,
            },
            needs_user,
            throttle: None,
        }
    };
    match outcome {
        Outcome::Session(SessionError::LoginRefused { source, .. }) if !oauth => plain(
            diagnosis::AUTHENTICATE_FAILED,
            format!(
                "the server refused the username {:?} with this password: check both ({})",
                record.username,
                server_words(source)
            ),
            "LOGIN",
            true,
        ),
        Outcome::Session(SessionError::LoginRefused { source, .. })
        | Outcome::Imap(source @ ImapError::NotConnected { .. }) => {
            let reason = source.reason();
            let needs_user =
                reason != diagnosis::NOT_CONNECTED || retry_count >= NOT_CONNECTED_PERSISTS_AFTER;
            refused(reason, server_words(source), needs_user)
        }
        Outcome::Session(SessionError::Broker(error)) => match error {
            BrokerError::Refused {
                reason,
                message,
                upstream_code,
                ..
            } => {
                let reason = if reason.is_empty() {
                    "token.refused"
                } else {
                    reason.as_str()
                };
                plain(
                    reason,
                    message.clone(),
                    upstream_code,
                    !error.is_transient(),
                )
            }
            BrokerError::Address { .. } => plain("fetcher.broker_address", chain(error), "", true),
        },
        Outcome::Session(error @ SessionError::NoCredential { .. }) => {
            plain("fetcher.no_service_credential", chain(error), "", true)
        }
        Outcome::Session(error @ SessionError::NoMasterKey { .. }) => {
            plain("fetcher.no_master_key", chain(error), "", true)
        }
        Outcome::Session(error @ (SessionError::Secret { .. } | SessionError::NoSecret { .. })) => {
            plain("source.secret_unreadable", chain(error), "", true)
        }
        Outcome::Session(error @ (SessionError::Slot { .. } | SessionError::CapReached { .. })) => {
            plain("fetcher.redis_unavailable", chain(error), "", false)
        }
        Outcome::Session(SessionError::Imap(error)) | Outcome::Imap(error) => {
            let mut judged = plain(error.reason(), chain(error), server_words(error), false);
            if let ImapError::Throttled { backoff, .. } = error {
                judged.throttle = Some(*backoff);
            }
            judged
        }
        Outcome::Store(error) => plain("store.failed", chain(error), "", false),
        Outcome::Synced(_) | Outcome::Stopped | Outcome::Shutdown | Outcome::LeaseLost => {
            plain("fetcher.internal", String::new(), "", false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(auth: threatmail_source::record::AuthType) -> SourceRecord {
        let mut record = SourceRecord::new_oauth(
            SourceId::new_random(),
            "s",
            "soc-phish@corp.example",
            "tenant",
            "app-1",
            0,
        );
        record.auth_type = auth;
        record
    }

    fn imap_refused(text: &str) -> ImapError {
        ImapError::LoginRefused {
            server: "s".into(),
            mechanism: "XOAUTH2",
            user: "soc-phish@corp.example".into(),
            text: text.into(),
        }
    }

    #[test]
    fn failures_are_judged_with_their_diagnosis() {
        use threatmail_source::record::AuthType;
        let oauth = record(AuthType::MsOauth2);
        let refused = Outcome::Session(SessionError::LoginRefused {
            after_refresh: true,
            source: imap_refused("AUTHENTICATE failed."),
        });
        let judged = judge(&oauth, &refused, 1);
        assert_eq!(judged.error.reason, "imap.authenticate_failed");
        assert_eq!(judged.error.upstream_code, "NO AUTHENTICATE failed.");
        assert_eq!(judged.error.checklist.len(), 4);
        assert!(judged.needs_user);

        let password = judge(&record(AuthType::Password), &refused, 1);
        assert_eq!(password.error.upstream_code, "LOGIN");
        assert!(password.error.checklist.is_empty() && password.needs_user);

        let not_connected = Outcome::Imap(ImapError::NotConnected {
            server: "s".into(),
            user: "u".into(),
            text: "User is authenticated but not connected.".into(),
        });
        let first = judge(&oauth, &not_connected, 1);
        assert_eq!(first.error.reason, "imap.not_connected");
        assert_eq!(first.error.checklist.len(), 5);
        assert!(!first.needs_user, "a passing fault at first");
        assert!(judge(&oauth, &not_connected, NOT_CONNECTED_PERSISTS_AFTER).needs_user);

        let throttled = Outcome::Imap(ImapError::Throttled {
            server: "s".into(),
            backoff: Duration::from_millis(900),
            text: "Request is throttled.".into(),
        });
        let judged = judge(&oauth, &throttled, 1);
        assert_eq!(judged.throttle, Some(Duration::from_millis(900)));
        assert!(!judged.needs_user);

        let broker = |code| {
            Outcome::Session(SessionError::Broker(BrokerError::Refused {
                source_id: "s".into(),
                code,
                reason: "entra.secret_expired".into(),
                message: "the client secret expired".into(),
                upstream_code: "AADSTS7000222".into(),
            }))
        };
        let expired = judge(&oauth, &broker(tonic::Code::FailedPrecondition), 1);
        assert_eq!(expired.error.reason, "entra.secret_expired");
        assert_eq!(expired.error.upstream_code, "AADSTS7000222");
        assert!(expired.needs_user);
        assert!(!judge(&oauth, &broker(tonic::Code::Unavailable), 1).needs_user);

        let no_credential = Outcome::Session(SessionError::NoCredential {
            source_id: "s".into(),
        });
        let judged = judge(&oauth, &no_credential, 1);
        assert_eq!(judged.error.reason, "fetcher.no_service_credential");
        assert!(judged.error.message.contains("auth.credential_file"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let min = Duration::from_secs(5);
        let max = Duration::from_secs(60);
        let full = |failures| backoff_delay(failures, min, max, 1.0);
        assert_eq!(full(1), Duration::from_secs(5));
        assert_eq!(full(2), Duration::from_secs(10));
        assert_eq!(full(3), Duration::from_secs(20));
        assert_eq!(full(5), Duration::from_secs(60));
        assert_eq!(full(400), Duration::from_secs(60), "no overflow");
        assert_eq!(backoff_delay(2, min, max, 0.0), Duration::from_secs(5));
        for _ in 0..100 {
            let fraction = random_fraction();
            assert!((0.0..1.0).contains(&fraction), "{fraction}");
        }
    }
}
