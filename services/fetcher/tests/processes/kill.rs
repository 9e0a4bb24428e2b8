//! A fetcher killed with SIGKILL at random points of a sync, at least 20 times, restarted
//! each time: in the end every message is stored exactly once and the checkpoint is at the
//! folder's last UID.

use std::time::Duration;

use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX};
use tokio::time::Instant;

use crate::harness::{
    CONVERGE, Fetcher, Fleet, Rng, Timing, check_fencing, check_stored_once, messages,
};

const FOLDER: &str = "Phish Reports";
/// Kills that must land while the folder is not yet fully synced.
const KILLS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut rng = Rng::from_env("sigkill");
    let seeded = messages(300);
    let total = u32::try_from(seeded.len())?;
    let mailbox = Mailbox::new(PHISH_MAILBOX).with_messages(FOLDER, seeded.clone());
    // Small batches, so the sync spans many commits and most kills land inside it; a
    // short lease, since each restart waits for the dead one's to lapse.
    let timing = Timing {
        batch_messages: 3,
        lease_ttl: Duration::from_millis(1000),
        renew_interval: Duration::from_millis(250),
    };
    let fleet = Fleet::start(mailbox, timing).await?;
    let id = fleet.add_source(&[FOLDER]).await?;

    // How long one batch takes, as last observed; a kill lands at a random point of one.
    let mut batch_time = Duration::from_millis(30);
    let mut incarnation = 0;
    while incarnation < KILLS {
        let mut fetcher = fleet.spawn("fetcher-k", incarnation)?;
        incarnation += 1;
        // Mostly within the sync: after this process's first or second committed batch,
        // plus a random part of a batch's time (but before the batch after that commits),
        // so the kill lands at any step of a batch (fetching, parsing, writing, renewing).
        // One time in five at a random moment from the start instead (start-up, login,
        // waiting for the dead one's lease, the first batches), but never later than the
        // above, so each life syncs only a few batches and all the kills land inside the
        // sync, on a fast machine too.
        let anywhere = rng.below(5) == 0;
        let batches = 1 + usize::try_from(rng.below(2))?;
        let part = rng.fraction();
        let at_random = rng.up_to(Duration::from_millis(1200));
        let after_batches = async {
            if let Some(observed) = after_commits(&fetcher, batches).await? {
                batch_time = observed;
            }
            // A random point of the next batch, at the latest as it commits.
            tokio::select! {
                () = tokio::time::sleep(batch_time.mul_f64(part)) => {}
                next = after_commits(&fetcher, batches + 1) => { next?; }
            }
            anyhow::Ok(())
        };
        if anywhere {
            tokio::select! {
                () = tokio::time::sleep(at_random) => {}
                waited = after_batches => waited?,
            }
        } else {
            after_batches.await?;
        }
        fetcher.check_running()?;
        fetcher.kill();
        let done = fleet.last_uid(&id, FOLDER).await?;
        eprintln!(
            "kill {incarnation} ({}): {done} of {total} done",
            if anywhere { "anywhere" } else { "mid-batch" }
        );
        assert!(
            done < total,
            "the folder synced before {KILLS} kills landed in it (only {incarnation} did)"
        );
    }

    let mut last = fleet.spawn("fetcher-k", incarnation)?;
    fleet.wait_complete(&id, &[(FOLDER, total)]).await?;
    last.check_running()?;
    last.kill();

    let commits = fleet.commits();
    check_fencing(&commits);
    assert!(
        fleet.last_token(&id, FOLDER).await? >= commits.iter().map(|c| c.fence).max().unwrap_or(0)
    );
    check_stored_once(&fleet.store, &id, &[(FOLDER, seeded)]).await?;
    assert_eq!(fleet.last_uid(&id, FOLDER).await?, total, "checkpoint");
    fleet.stop().await
}

/// Waits, looking every 2 ms, until `fetcher` has committed `count` batches; returns the
/// time per batch seen meanwhile, when more than one commit was seen arriving.
async fn after_commits(fetcher: &Fetcher, count: usize) -> anyhow::Result<Option<Duration>> {
    let deadline = Instant::now() + CONVERGE;
    let mut first: Option<(Instant, usize)> = None;
    loop {
        let seen = fetcher.commits().len();
        if seen > 0 && first.is_none() {
            first = Some((Instant::now(), seen));
        }
        if let Some((at, then)) = first
            && seen >= count
        {
            let more = u32::try_from(seen - then)?;
            return Ok((more > 0).then(|| at.elapsed() / more));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} committed {seen} batches, not {count}",
            fetcher.instance
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
