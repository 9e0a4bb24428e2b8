//! A fetcher killed with SIGKILL at random points of a sync, at least 20 times, restarted
//! each time: in the end every message is stored exactly once and the checkpoint is at the
//! folder's last UID.

use std::time::Duration;

use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX};

use crate::harness::{CONVERGE, Fleet, Rng, Timing, check_fencing, check_stored_once, messages};

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

    let mut incarnation = 0;
    while incarnation < KILLS {
        let mut fetcher = fleet.spawn("fetcher-k", incarnation)?;
        incarnation += 1;
        let anywhere = rng.below(5) == 0;
        if anywhere {
            // Anywhere: start-up, login, waiting for the dead one's lease, or syncing.
            tokio::time::sleep(rng.up_to(Duration::from_millis(1200))).await;
        } else {
            // Within the sync: after this process's first or second committed batch,
            // plus up to about a batch's time, so the kill lands at any step of a batch
            // (fetching, parsing, writing, renewing).
            let batches = 1 + usize::try_from(rng.below(2))?;
            threatmail_testkit::net::wait_for("committed batches", CONVERGE, || {
                let fetcher = &fetcher;
                async move { (fetcher.commits().len() >= batches).then_some(()) }
            })
            .await?;
            tokio::time::sleep(rng.up_to(Duration::from_millis(60))).await;
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
