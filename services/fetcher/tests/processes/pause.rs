//! A fetcher paused with SIGSTOP mid-sync past its lease while another takes its folder,
//! then resumed with SIGCONT: it commits nothing after the takeover (its stale fence is
//! refused or its renewal fails first), and every message is stored exactly once.

use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX};

use crate::harness::{CONVERGE, Fleet, Timing, check_fencing, check_stored_once, messages};

const FOLDER: &str = "Phish Reports";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetcher_paused_past_its_lease_commits_nothing_after_the_takeover() -> anyhow::Result<()>
{
    let seeded = messages(160);
    let total = u32::try_from(seeded.len())?;
    let mailbox = Mailbox::new(PHISH_MAILBOX).with_messages(FOLDER, seeded.clone());
    let fleet = Fleet::start(mailbox, Timing::default()).await?;
    let id = fleet.add_source(&[FOLDER]).await?;

    let mut paused = fleet.spawn("fetcher-paused", 0)?;
    threatmail_testkit::net::wait_for("a first commit", CONVERGE, || {
        let paused = &paused;
        async move { (!paused.commits().is_empty()).then_some(()) }
    })
    .await?;
    paused.signal("STOP")?;
    // Frozen now: nothing new can leave it, but a write it sent just before may still be
    // running in Redis, so the checkpoint is read once it has stopped moving.
    let mut at_stop = fleet.last_uid(&id, FOLDER).await?;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let now = fleet.last_uid(&id, FOLDER).await?;
        if now == at_stop {
            break;
        }
        at_stop = now;
    }
    let (old_token, owner) = fleet.lease(&id, FOLDER).await?.expect("the lease is held");
    assert_eq!(owner, "fetcher-paused");
    assert!(
        at_stop < total,
        "paused mid-sync: {at_stop} of {total} done"
    );

    let mut other = fleet.spawn("fetcher-other", 0)?;
    // The lease lapses while the first is stopped; the other takes it and commits.
    threatmail_testkit::net::wait_for("the takeover", CONVERGE, || {
        let other = &other;
        async move {
            other
                .commits()
                .iter()
                .any(|c| c.fence > old_token)
                .then_some(())
        }
    })
    .await?;
    paused.signal("CONT")?;

    fleet.wait_complete(&id, &[(FOLDER, total)]).await?;
    // Resumed, it notices it lost the lease: its renewal fails or its write is refused.
    let noticed = threatmail_testkit::net::wait_for("the paused one to notice", CONVERGE, || {
        let paused = &paused;
        async move {
            let log = paused.log_text();
            ["batch refused: stale fence", "lost the folder's lease"]
                .into_iter()
                .find(|needle| log.contains(needle))
        }
    })
    .await?;
    eprintln!("the paused fetcher, resumed, logged {noticed:?}");
    paused.check_running()?;
    other.check_running()?;
    paused.kill();
    other.kill();

    let commits = fleet.commits();
    let by_folder = check_fencing(&commits);
    let list = &by_folder[FOLDER];
    for commit in list.iter().filter(|c| c.instance == "fetcher-paused") {
        assert!(
            commit.last_uid <= at_stop,
            "the paused fetcher committed after it was stopped: {commit:?} (at stop {at_stop})"
        );
    }
    let after: Vec<_> = list.iter().filter(|c| c.first_uid > at_stop).collect();
    assert!(!after.is_empty());
    for commit in after {
        assert!(
            commit.instance == "fetcher-other" && commit.fence > old_token,
            "after the stop only the other fetcher commits, under a newer lease: {commit:?}"
        );
    }
    check_stored_once(&fleet.store, &id, &[(FOLDER, seeded)]).await?;
    fleet.stop().await
}
