//! Configuration applies live: a newly selected folder is synced, a deselected one and a
//! disabled source stop, within a poll and with no restart. A second source (another
//! mailbox) and a second folder serve as witnesses that polls went on meanwhile.

use threatmail_source::ConnectionState;
use threatmail_testkit::tenant::{INTEL_MAILBOX, Mailbox, PHISH_MAILBOX, TenantFixture};

use crate::harness::{Harness, report};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selection_and_enabling_apply_live() -> anyhow::Result<()> {
    let mut fixture = TenantFixture::everything_right();
    *fixture
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .expect("mailbox") = Mailbox::new(PHISH_MAILBOX)
        .with_messages("Alpha", (1..=3).map(report).collect())
        .with_messages("Beta", (4..=5).map(report).collect());
    let mut harness = Harness::start(fixture).await?;
    let dovecot = harness.stack.dovecot.imaps_addr();
    let phish = harness
        .add_source("Phishing reports", PHISH_MAILBOX, dovecot, &["Alpha"])
        .await?;
    let intel = harness
        .add_source("Intel feed", INTEL_MAILBOX, dovecot, &["INBOX"])
        .await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;

    harness
        .wait_status("Alpha to sync", &phish, "Alpha", |s| s.last_uid == Some(3))
        .await?;
    harness
        .wait_status("the intel INBOX to sync", &intel, "INBOX", |s| {
            s.last_uid == Some(1)
        })
        .await?;
    assert_eq!(harness.store.count(&phish).await?, 3);
    let beta = harness.status(&phish, "Beta").await?;
    assert_eq!(beta.last_poll, None, "Beta is not selected: {beta:?}");

    // Selected while running: synced at a following poll.
    let version = harness.version(&phish).await?;
    harness
        .select(&phish, version, &["Alpha", "Beta"], &[])
        .await?;
    harness
        .wait_status("Beta to sync once selected", &phish, "Beta", |s| {
            s.last_uid == Some(2)
        })
        .await?;
    assert_eq!(harness.store.count(&phish).await?, 5);

    // Deselected: it stops (and says so); Beta, still selected, shows polls went on.
    let version = harness.version(&phish).await?;
    harness
        .select(&phish, version, &["Beta"], &["Alpha"])
        .await?;
    harness
        .wait_status("Alpha to show disabled", &phish, "Alpha", |s| {
            s.connection_state == ConnectionState::Disabled
        })
        .await?;
    let dovecot_seed = &harness.stack.dovecot;
    dovecot_seed
        .append(PHISH_MAILBOX, "Alpha", &[report(7), report(8)])
        .await?;
    dovecot_seed
        .append(PHISH_MAILBOX, "Beta", &[report(9)])
        .await?;
    harness
        .wait_status("Beta's new mail", &phish, "Beta", |s| s.last_uid == Some(3))
        .await?;
    let alpha = harness.status(&phish, "Alpha").await?;
    assert_eq!(
        alpha.last_uid,
        Some(3),
        "deselected Alpha was not synced: {alpha:?}"
    );
    assert_eq!(alpha.connection_state, ConnectionState::Disabled);
    assert_eq!(harness.store.count(&phish).await?, 6);

    // The source disabled: it stops; the other source, still on, shows polls went on.
    let mut record = harness.sources.get(&phish).await?.expect("source");
    record.enabled = false;
    let version = record.version;
    harness.sources.update(&record, version).await?;
    harness
        .wait_status("Beta to show disabled", &phish, "Beta", |s| {
            s.connection_state == ConnectionState::Disabled
        })
        .await?;
    dovecot_seed
        .append(PHISH_MAILBOX, "Beta", &[report(10)])
        .await?;
    dovecot_seed
        .append(INTEL_MAILBOX, "INBOX", &[report(11)])
        .await?;
    harness
        .wait_status("the intel INBOX's new mail", &intel, "INBOX", |s| {
            s.last_uid == Some(2)
        })
        .await?;
    assert_eq!(
        harness.store.count(&phish).await?,
        6,
        "nothing synced from the disabled source"
    );
    assert_eq!(harness.status(&phish, "Beta").await?.last_uid, Some(3));

    // Re-enabled, then deleted while running: it stops and leaves no status behind.
    let mut record = harness.sources.get(&phish).await?.expect("source");
    record.enabled = true;
    let version = record.version;
    harness.sources.update(&record, version).await?;
    harness
        .wait_status("Beta to sync again", &phish, "Beta", |s| {
            s.last_uid == Some(4)
        })
        .await?;
    assert!(harness.sources.delete(&phish).await?);
    dovecot_seed
        .append(INTEL_MAILBOX, "INBOX", &[report(12)])
        .await?;
    harness
        .wait_status("the intel INBOX's newest mail", &intel, "INBOX", |s| {
            s.last_uid == Some(3)
        })
        .await?;
    for folder in ["Alpha", "Beta"] {
        let status = harness.status(&phish, folder).await?;
        assert_eq!(
            status,
            threatmail_source::FolderStatus::new(folder),
            "no status is written for a deleted source"
        );
    }
    harness.stop().await
}

/// A running fetcher reports itself at every poll, and a clean stop ends the report at once
/// (a killed one lapses by itself: the process tests), so status can say when none runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetcher_reports_itself_running_and_stopped() -> anyhow::Result<()> {
    use std::time::Duration;
    use threatmail_testkit::net::wait_for;

    let mut harness = Harness::start(TenantFixture::everything_right()).await?;
    let config = harness.fetcher_config("fetcher-r");
    let stop = harness.spawn_fetcher(config).await?;
    let sources = harness.sources.clone();
    wait_for(
        "the fetcher's first report",
        Duration::from_secs(10),
        || async {
            let fleet = sources.fleet().await.ok()?;
            (fleet.running == ["fetcher-r"]).then_some(())
        },
    )
    .await?;

    stop.cancel();
    // Well within the report's own lapse (three polls and two seconds).
    let fleet = wait_for(
        "the report of the stop",
        Duration::from_millis(1500),
        || async {
            let fleet = sources.fleet().await.ok()?;
            fleet.running.is_empty().then_some(fleet)
        },
    )
    .await?;
    assert_eq!(
        fleet.last_lapsed.map(|(name, _)| name).as_deref(),
        Some("fetcher-r")
    );
    harness.stop().await
}
