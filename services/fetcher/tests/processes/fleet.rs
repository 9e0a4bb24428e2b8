//! Three fetcher processes on one source with six folders: no folder is ever synced by two
//! at once (the fencing tokens of the commits show it), every folder completes; then, with
//! new mail in every folder, one is killed mid-sync and its folder is finished by the
//! others once its lease lapses.

use std::time::Duration;

use threatmail_testkit::net::wait_for;
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX};

use crate::harness::{
    CONVERGE, Fetcher, Fleet, Timing, check_fencing, check_stored_once, crlf, messages,
};

/// Messages per folder at the start, and appended to each before the kill.
const FIRST: usize = 20;
const MORE: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_fetchers_share_six_folders_and_finish_a_killed_ones() -> anyhow::Result<()> {
    let names: Vec<String> = (1..=6).map(|n| format!("Reports {n}")).collect();
    let all = messages(names.len() * (FIRST + MORE));
    let seeded: Vec<(&str, Vec<Vec<u8>>)> = names
        .iter()
        .zip(all.chunks(FIRST + MORE))
        .map(|(name, chunk)| (name.as_str(), chunk.to_vec()))
        .collect();
    let mut mailbox = Mailbox::new(PHISH_MAILBOX);
    for (name, chunk) in &seeded {
        mailbox = mailbox.with_messages(name, chunk[..FIRST].to_vec());
    }
    let fleet = Fleet::start(mailbox, Timing::default()).await?;
    let folders: Vec<&str> = names.iter().map(String::as_str).collect();
    let id = fleet.add_source(&folders).await?;

    // Three fetchers, six folders: all of them complete.
    let mut fetchers: Vec<Fetcher> = ["fetcher-a", "fetcher-b", "fetcher-c"]
        .iter()
        .map(|name| fleet.spawn(name, 0))
        .collect::<anyhow::Result<_>>()?;
    let first: Vec<(&str, u32)> = folders.iter().map(|f| (*f, FIRST as u32)).collect();
    fleet.wait_complete(&id, &first).await?;
    for fetcher in &mut fetchers {
        fetcher.check_running()?;
    }
    check_fencing(&fleet.commits());

    // More mail in every folder; while they sync it, the victim: a fetcher frozen
    // (SIGSTOP, so nothing moves while we look) holding the lease of a folder it has
    // started but not finished; then SIGKILL.
    for (name, chunk) in &seeded {
        let more: Vec<Vec<u8>> = chunk[FIRST..].iter().map(|raw| crlf(raw)).collect();
        fleet
            .stack
            .dovecot
            .append(PHISH_MAILBOX, name, &more)
            .await?;
    }
    let totals: Vec<(&str, u32)> = seeded
        .iter()
        .map(|(name, chunk)| (*name, chunk.len() as u32))
        .collect();
    let (victim, orphans) =
        threatmail_testkit::net::wait_for("a fetcher mid-sync", CONVERGE, || {
            let fleet = &fleet;
            let id = &id;
            let fetchers = &fetchers;
            let totals = &totals;
            async move {
                for (index, fetcher) in fetchers.iter().enumerate() {
                    let committed = fetcher.commits();
                    if committed.is_empty() {
                        continue;
                    }
                    fetcher.signal("STOP").ok()?;
                    let mut orphans = Vec::new();
                    for (folder, total) in totals {
                        let held = fleet.lease(id, folder).await.ok()?;
                        let done = fleet.last_uid(id, folder).await.ok()?;
                        if let Some((token, owner)) = held
                            && owner == fetcher.instance
                            && done < *total
                            && committed
                                .iter()
                                .any(|c| c.folder == *folder && c.fence == token)
                        {
                            orphans.push(((*folder).to_owned(), token, done));
                        }
                    }
                    if !orphans.is_empty() {
                        return Some((index, orphans));
                    }
                    fetcher.signal("CONT").ok()?;
                }
                None
            }
        })
        .await?;
    let victim_name = fetchers[victim].instance.clone();
    fetchers[victim].kill();
    eprintln!("killed {victim_name} holding {orphans:?}");

    fleet.wait_complete(&id, &totals).await?;
    for fetcher in &mut fetchers {
        if fetcher.instance != victim_name {
            fetcher.check_running()?;
        }
    }
    // The killed one stops reporting as running (so status can tell a fleet that stopped
    // from one that is idle); the others still report.
    let mut survivors: Vec<String> = fetchers
        .iter()
        .map(|f| f.instance.clone())
        .filter(|name| *name != victim_name)
        .collect();
    survivors.sort();
    let reported = wait_for(
        "the killed fetcher's report to lapse",
        Duration::from_secs(15),
        || async {
            let reported = fleet.sources.fleet().await.ok()?;
            (!reported.running.contains(&victim_name)).then_some(reported)
        },
    )
    .await?;
    assert_eq!(reported.running, survivors, "{reported:?}");
    for fetcher in &mut fetchers {
        fetcher.kill();
    }

    let commits = fleet.commits();
    let by_folder = check_fencing(&commits);
    for (folder, _) in &totals {
        let last_token = fleet.last_token(&id, folder).await?;
        let list = by_folder
            .get(*folder)
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!list.is_empty(), "nothing committed in {folder:?}");
        assert!(
            list.iter().all(|c| c.fence <= last_token),
            "{folder:?}: a commit with a token never handed out"
        );
    }
    for (folder, token, done) in &orphans {
        let list = &by_folder[folder.as_str()];
        let victims_last = list
            .iter()
            .filter(|c| c.instance == victim_name)
            .map(|c| c.last_uid)
            .max()
            .unwrap_or(0);
        assert!(
            victims_last <= *done,
            "{victim_name} committed in {folder:?} after it was frozen"
        );
        let rest: Vec<_> = list.iter().filter(|c| c.first_uid > *done).collect();
        assert!(!rest.is_empty(), "{folder:?} finished without commits?");
        for commit in rest {
            assert!(
                commit.instance != victim_name && commit.fence > *token,
                "{folder:?} after the kill must be finished by another fetcher under a \
                 newer lease than {token}: {commit:?}"
            );
        }
    }
    check_stored_once(&fleet.store, &id, &seeded).await?;
    fleet.stop().await
}
