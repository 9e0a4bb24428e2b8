//! Exchange's behaviours met by the scheduler, through the fault proxy in front of the real
//! Dovecot: the fleet-wide connection cap, a response that cannot be parsed, throttling,
//! sessions ended at token expiry, drops inside literals, "not connected", BR-01, stalls, a
//! hold on the mailbox set in the middle of a sync, a folder deselected in the middle of
//! a fetch, and the progress a slow sync shows.

use std::time::Duration;

use threatmail_fetcher::connections::ConnectionSlots;
use threatmail_source::ConnectionState;
use threatmail_source::SourceId;
use threatmail_testkit::exchange_proxy::{
    ExchangeControl, ExchangeProxy, Fault, FaultKind, Script, When,
};
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

use crate::harness::{Harness, report};

fn fixture(folders: &[(&str, usize)]) -> TenantFixture {
    let mut fixture = TenantFixture::everything_right();
    let mut mailbox = Mailbox::new(PHISH_MAILBOX);
    let mut n = 0;
    for (folder, count) in folders {
        mailbox = mailbox.with_messages(folder, (n + 1..=n + count).map(report).collect());
        n += count;
    }
    *fixture
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .expect("mailbox") = mailbox;
    fixture
}

/// A fault proxy running `script` in front of the test Dovecot, and a source on it with
/// `folders` selected.
async fn proxied(
    harness: &Harness,
    script: Script,
    folders: &[&str],
) -> anyhow::Result<(ExchangeProxy, SourceId)> {
    let proxy = harness.stack.exchange_proxy(script).await?;
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, proxy.addr(), folders)
        .await?;
    Ok((proxy, id))
}

/// Two fetchers, four folders, a cap of one connection per mailbox: never two sessions at
/// once, and every folder gets synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_holds_across_fetchers() -> anyhow::Result<()> {
    let folders = ["F1", "F2", "F3", "F4"];
    let mut harness = Harness::start(fixture(
        &folders.iter().map(|f| (*f, 3)).collect::<Vec<_>>(),
    ))
    .await?;
    let (proxy, id) = proxied(&harness, Script::passthrough(), &folders).await?;
    for instance in ["fetcher-a", "fetcher-b"] {
        let mut config = harness.fetcher_config(instance);
        config.sync.connections_per_mailbox = 1;
        harness.spawn_fetcher(config).await?;
    }
    for folder in folders {
        harness
            .wait_status("every folder to sync", &id, folder, |s| {
                s.last_uid == Some(3)
            })
            .await?;
    }
    assert_eq!(harness.store.count(&id).await?, 12);
    assert_eq!(proxy.control().peak_sessions(PHISH_MAILBOX), 1);
    harness.stop().await
}

/// A line the parser rejects (one the BR-01 mending leaves alone) ends that connection (its
/// read buffer holds the bad bytes); the sync resumes from the last committed UID on a new
/// one, and the same bytes are not read again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unparseable_response_ends_the_connection_and_the_sync_resumes() -> anyhow::Result<()> {
    let mut harness = Harness::start(fixture(&[("Phish Reports", 12)])).await?;
    // On a connection, UID FETCH 1 asks for sizes and 2, 3, … for batches of bodies: the
    // second batch of the first two connections meets garbage.
    let (proxy, id) = proxied(
        &harness,
        Script::passthrough().rule(
            When::command("UID FETCH")
                .nth(3)
                .then(Fault::inject_line("* 1 FETCH (UID 5))"))
                .times(2),
        ),
        &["Phish Reports"],
    )
    .await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.batch_messages = 4;
    harness.spawn_fetcher(config).await?;
    let done = harness
        .wait_status("the sync to complete", &id, "Phish Reports", |s| {
            s.last_uid == Some(12) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert_eq!(proxy.control().script().rules()[0].fired(), 2);
    assert_eq!(harness.store.count(&id).await?, 12);
    assert_eq!(done.messages_synced, 12, "{done:?}");
    assert_eq!((done.retry_count, &done.last_error), (0, &None));
    // Each garbled connection was given up (no command after the garbage on it, not even
    // LOGOUT), and the next one went on from the last commit (12 records, none twice).
    let commands = proxy.control().commands_for(PHISH_MAILBOX);
    for garbled in commands
        .iter()
        .filter(|c| c.fault == Some(FaultKind::Injected))
    {
        assert!(
            !commands
                .iter()
                .any(|c| c.connection == garbled.connection && c.at > garbled.at),
            "connection {} was used after the garbage",
            garbled.connection
        );
    }
    assert!(proxy.control().connections() >= 3);
    harness.stop().await
}

/// Exchange's throttled reply, asking for `backoff`, to the first `EXAMINE`.
fn throttle_once(backoff: Duration) -> Script {
    Script::passthrough().rule(
        When::command("EXAMINE")
            .then(Fault::throttle(backoff))
            .once(),
    )
}

/// When the throttle was answered, if it has been.
fn throttle_replied(control: &ExchangeControl) -> Option<std::time::Instant> {
    control
        .commands_for(PHISH_MAILBOX)
        .iter()
        .find(|c| c.fault == Some(FaultKind::Throttled))
        .and_then(|c| c.replied_at)
}

/// Nothing reached the mailbox within `backoff` of the throttle's reply.
fn assert_waited(control: &ExchangeControl, replied: std::time::Instant, backoff: Duration) {
    let next = control
        .first_command_after(PHISH_MAILBOX, replied)
        .expect("the fetchers came back");
    assert!(
        next.at.duration_since(replied) >= backoff,
        "the next command ({}) came {:?} after the throttle",
        next.name,
        next.at.duration_since(replied)
    );
}

/// Throttled: nothing reaches Exchange for that mailbox before the suggested back-off has
/// passed; then the sync completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_holds_the_mailbox_for_the_suggested_backoff() -> anyhow::Result<()> {
    let backoff = Duration::from_millis(1500);
    let mut harness = Harness::start(fixture(&[("Phish Reports", 3)])).await?;
    let (proxy, id) = proxied(&harness, throttle_once(backoff), &["Phish Reports"]).await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;
    harness
        .wait_status("the sync after the back-off", &id, "Phish Reports", |s| {
            s.last_uid == Some(3)
        })
        .await?;
    let control = proxy.control();
    let replied = throttle_replied(control).expect("the throttle was answered");
    assert_waited(control, replied, backoff);
    assert_eq!(harness.store.count(&id).await?, 3);
    harness.stop().await
}

/// Throttling is per mailbox and for the whole fleet: after one fetcher is throttled, no
/// fetcher sends that mailbox anything before the back-off has passed, not even for
/// another source on the same mailbox added meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_holds_the_mailbox_for_every_fetcher_and_source() -> anyhow::Result<()> {
    let backoff = Duration::from_secs(3);
    let mut harness = Harness::start(fixture(&[("Phish Reports", 3), ("INBOX", 2)])).await?;
    let (proxy, first) = proxied(&harness, throttle_once(backoff), &["Phish Reports"]).await?;
    for instance in ["fetcher-a", "fetcher-b"] {
        let config = harness.fetcher_config(instance);
        harness.spawn_fetcher(config).await?;
    }
    let control = proxy.control();
    let replied = threatmail_testkit::net::wait_for(
        "the throttle to be answered",
        Duration::from_secs(30),
        || {
            let control = control.clone();
            async move { throttle_replied(&control) }
        },
    )
    .await?;
    // Another source on the same mailbox, while the throttle holds: both fetchers see it.
    let second = harness
        .add_source("Advisories", PHISH_MAILBOX, proxy.addr(), &["INBOX"])
        .await?;
    for (id, folder, count) in [(&first, "Phish Reports", 3), (&second, "INBOX", 2)] {
        harness
            .wait_status("the syncs after the back-off", id, folder, |s| {
                s.last_uid == Some(count)
            })
            .await?;
        assert_eq!(harness.store.count(id).await?, count as usize);
    }
    assert_waited(control, replied, backoff);
    harness.stop().await
}

/// Tokens of a few seconds and Exchange ending each session at its token's expiry
/// (`* BYE Session invalidated - AccessTokenExpired`): the sync goes on over new sessions
/// with fresh tokens and completes, every message once, no error shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_ended_at_token_expiry_are_replaced_without_an_error() -> anyhow::Result<()> {
    let mut harness = Harness::start(fixture(&[("Phish Reports", 40)])).await?;
    harness
        .stack
        .entra
        .controls()
        .set_token_lifetime(Duration::from_secs(4));
    // Each body fetch takes a while, so the sync outlives several tokens.
    let (proxy, id) = proxied(
        &harness,
        Script::exchange()
            .rule(When::command("UID FETCH").then(Fault::stall(Duration::from_millis(250)))),
        &["Phish Reports"],
    )
    .await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.batch_messages = 2;
    config.sync.retire_before_token_expiry = Duration::from_millis(500);
    harness.spawn_fetcher(config).await?;
    let (done, seen_errors) = harness
        .wait_status_seeing_errors("the sync to complete", &id, "Phish Reports", |s| {
            s.last_uid == Some(40)
        })
        .await?;
    assert!(seen_errors.is_empty(), "errors shown: {seen_errors:?}");
    assert_eq!((done.retry_count, &done.last_error), (0, &None));
    assert_eq!(harness.store.count(&id).await?, 40);
    // Polls after the end fetch nothing (UIDNEXT says so), so every connection that
    // fetched was part of the sync: the first session, and those that replaced sessions
    // ended at their token's expiry.
    let fetching: std::collections::BTreeSet<u64> = proxy
        .control()
        .commands()
        .iter()
        .filter(|c| c.name == "UID FETCH")
        .map(|c| c.connection)
        .collect();
    let logins = fetching.len();
    assert!(
        logins >= 2,
        "the sync outlived its first session ({fetching:?})"
    );
    harness.stop().await
}

/// The connection dropped in the middle of a message's literal, at 20 random offsets (one
/// per connection, in its second batch of bodies): the sync goes on from the last commit
/// each time, and in the end nothing is lost and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_inside_literals_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    use std::hash::{BuildHasher as _, Hasher as _};
    let random = |limit: u64| {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(limit);
        hasher.finish() % limit
    };
    let mut harness = Harness::start(fixture(&[("Phish Reports", 60)])).await?;
    let mut script = Script::passthrough();
    let mut offsets = Vec::new();
    for _ in 0..20 {
        let (literal, after_bytes) = (1 + random(2) as u32, random(200));
        offsets.push((literal, after_bytes));
        script = script.rule(
            When::command("UID FETCH")
                .nth(3)
                .then(Fault::DropInLiteral {
                    literal,
                    after_bytes,
                })
                .once(),
        );
    }
    let (proxy, id) = proxied(&harness, script, &["Phish Reports"]).await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.batch_messages = 2;
    config.sync.retry_max = Duration::from_millis(300);
    harness.spawn_fetcher(config).await?;
    let done = harness
        .wait_status("the sync to complete", &id, "Phish Reports", |s| {
            s.last_uid == Some(60) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    let fired: u32 = proxy
        .control()
        .script()
        .rules()
        .iter()
        .map(|r| r.fired())
        .sum();
    assert_eq!(fired, 20, "offsets {offsets:?}");
    assert_eq!(harness.store.count(&id).await?, 60);
    assert_eq!(done.messages_synced, 60);
    for uid in 1..=60u32 {
        let raw = report(uid as usize);
        let parsed = threatmail_parse::parse_message(&raw);
        let message_id =
            threatmail_store::identity::Identity::of(&raw, &parsed.message).message_id(&id);
        let stored = harness
            .store
            .get(&threatmail_store::MessageRef {
                source_id: id.clone(),
                id: message_id,
            })
            .await?
            .unwrap_or_else(|| panic!("UID {uid} lost (offsets {offsets:?})"));
        assert_eq!(
            stored.locations.len(),
            1,
            "UID {uid}: {:?}",
            stored.locations
        );
        assert_eq!(stored.locations[0].uid, uid);
    }
    harness.stop().await
}

/// Case BR-07: `BAD User is authenticated but not connected.` after a good login. Once it
/// is a passing fault (retried, shown as retrying); when it persists it is the IMAP-side
/// checklist, shown as failed; when the cause goes away the folder recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_connected_is_retried_then_diagnosed_when_it_persists() -> anyhow::Result<()> {
    let mut harness = Harness::start(fixture(&[("Phish Reports", 3)])).await?;
    let (proxy, id) = proxied(
        &harness,
        Script::exchange().rule(When::mailbox_command().then(Fault::not_connected())),
        &["Phish Reports"],
    )
    .await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;
    let retrying = harness
        .wait_status("a retry", &id, "Phish Reports", |s| s.retry_count >= 1)
        .await?;
    if retrying.retry_count < 3 {
        assert_eq!(
            retrying.connection_state,
            ConnectionState::Retrying,
            "not yet persistent: {retrying:?}"
        );
    }
    let error = retrying.last_error.clone().expect("last error");
    assert_eq!(error.reason, "imap.not_connected");
    assert_eq!(
        error.upstream_code,
        "BAD User is authenticated but not connected."
    );
    let failed = harness
        .wait_status("the diagnosis", &id, "Phish Reports", |s| {
            s.connection_state == ConnectionState::Failed
        })
        .await?;
    assert!(failed.retry_count >= 3, "{failed:?}");
    let error = failed.last_error.expect("last error");
    assert_eq!(error.checklist.len(), 5, "{:?}", error.checklist);
    assert!(error.checklist[4].contains("Too many connections"));
    assert_eq!(harness.store.count(&id).await?, 0);

    // The cause goes away: the next retry syncs and the error is cleared.
    proxy.control().update_script(|s| s.clear_rules());
    let recovered = harness
        .wait_status("the recovery", &id, "Phish Reports", |s| {
            s.last_uid == Some(3) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert_eq!((recovered.retry_count, &recovered.last_error), (0, &None));
    harness.stop().await
}

/// Case BR-01 with Exchange's own capability set: a `* CAPABILITY` line with two spaces
/// between atoms (which the parser behind async-imap rejects) does not keep a source
/// without an action after processing from syncing: its sync sends no CAPABILITY.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br01_a_garbled_capability_line_does_not_stop_the_sync() -> anyhow::Result<()> {
    use threatmail_testkit::exchange_proxy::Dialect;

    let mut harness = Harness::start(fixture(&[("INBOX", 4)])).await?;
    let (_proxy, id) = proxied(
        &harness,
        Script::passthrough().dialect(Dialect::exchange().double_space_after("IMAP4rev1")),
        &["INBOX"],
    )
    .await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;
    let status = harness
        .wait_status("the sync through the garbling server", &id, "INBOX", |s| {
            s.last_uid == Some(4)
        })
        .await?;
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(harness.store.count(&id).await?, 4);
    harness.stop().await
}

/// Case BR-01 with a move after processing, which asks for the server's capabilities (MOVE,
/// UIDPLUS) before moving: the garbled line is mended, so every message is stored once and
/// moved with `UID MOVE`, with no error shown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br01_a_garbled_capability_line_does_not_stop_the_move() -> anyhow::Result<()> {
    use threatmail_source::record::AfterProcessing;
    use threatmail_testkit::exchange_proxy::Dialect;

    let mut harness = Harness::start(fixture(&[("INBOX", 4)])).await?;
    harness
        .stack
        .dovecot
        .create_folder(PHISH_MAILBOX, "Processed")
        .await?;
    let (proxy, id) = proxied(
        &harness,
        Script::passthrough().dialect(Dialect::exchange().double_space_after("IMAP4rev1")),
        &["INBOX"],
    )
    .await?;
    let mut record = harness.sources.get(&id).await?.expect("source");
    let version = record.version;
    record.after_processing = AfterProcessing::MoveTo {
        folder: "Processed".to_owned(),
    };
    harness.sources.update(&record, version).await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;
    let status = harness
        .wait_status(
            "the sync and move through the garbling server",
            &id,
            "INBOX",
            |s| s.last_uid == Some(4),
        )
        .await?;
    assert!(status.last_error.is_none(), "{status:?}");
    assert_eq!(harness.store.count(&id).await?, 4);
    let names: Vec<String> = proxy.commands().into_iter().map(|c| c.name).collect();
    assert!(
        names.iter().any(|n| n == "CAPABILITY") && names.iter().any(|n| n == "UID MOVE"),
        "{names:?}"
    );
    let mut imap = harness.imap(PHISH_MAILBOX).await?;
    assert_eq!(imap.select("INBOX").await?.exists, 0, "every message moved");
    assert_eq!(imap.select("Processed").await?.exists, 4);
    imap.logout().await?;
    harness.stop().await
}

/// A server that stops answering in the middle of a sync (a stall far past the command
/// timeout, on the first connection's second body fetch): the command times out, that
/// connection is given up, the folder shows the transient error and backs off, and the
/// sync resumes on a new connection from the last commit; every message once, the error
/// cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_command_times_out_and_the_sync_resumes() -> anyhow::Result<()> {
    let mut harness = Harness::start(fixture(&[("INBOX", 30)])).await?;
    let (proxy, id) = proxied(
        &harness,
        Script::exchange().rule(
            When::command("UID FETCH")
                .connection(1)
                .nth(3)
                .then(Fault::stall(Duration::from_secs(60))),
        ),
        &["INBOX"],
    )
    .await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.imap.command_timeout = Duration::from_secs(2);
    harness.spawn_fetcher(config).await?;
    let (done, seen_errors) = harness
        .wait_status_seeing_errors("the sync to complete", &id, "INBOX", |s| {
            s.last_uid == Some(30) && s.last_error.is_none()
        })
        .await?;
    assert!(
        !seen_errors.is_empty(),
        "the stall was shown while it lasted"
    );
    assert_eq!(done.last_error, None, "cleared once the sync completed");
    assert_eq!(harness.store.count(&id).await?, 30);
    let connections: std::collections::BTreeSet<u64> = proxy
        .control()
        .commands()
        .iter()
        .filter(|c| c.name == "UID FETCH")
        .map(|c| c.connection)
        .collect();
    assert!(
        connections.len() >= 2 && connections.contains(&1),
        "the stalled connection was given up for a new one: {connections:?}"
    );
    harness.stop().await
}

/// Waits until `folder`'s sync has committed its first batches (the checkpoint at UID 2).
async fn under_way(harness: &Harness, id: &SourceId, folder: &str) -> anyhow::Result<()> {
    threatmail_testkit::net::wait_for(
        &format!("{folder}'s sync to be under way"),
        Duration::from_secs(30),
        || async {
            let checkpoint = harness.store.checkpoint(id, folder).await.ok().flatten()?;
            (checkpoint.last_uid >= 2).then_some(())
        },
    )
    .await
}

/// A folder deselected while its bodies are being fetched: its sync stops there, and the
/// folder after it in the same round, on the same mailbox, syncs completely with no error,
/// on a session the interrupted command's answer cannot confuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_deselected_mid_fetch_leaves_the_next_folder_intact() -> anyhow::Result<()> {
    let mut harness = Harness::start(fixture(&[("Alpha", 20), ("Beta", 3)])).await?;
    let (proxy, id) = proxied(
        &harness,
        Script::exchange()
            .rule(When::command("UID FETCH").then(Fault::stall(Duration::from_millis(400)))),
        &["Alpha", "Beta"],
    )
    .await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.batch_messages = 2;
    harness.spawn_fetcher(config).await?;
    under_way(&harness, &id, "Alpha").await?;
    let version = harness.version(&id).await?;
    harness.select(&id, version, &["Beta"], &["Alpha"]).await?;
    let (beta, seen_errors) = harness
        .wait_status_seeing_errors("Beta to sync", &id, "Beta", |s| s.last_uid == Some(3))
        .await?;
    assert!(
        seen_errors.is_empty(),
        "errors shown for Beta: {seen_errors:?}"
    );
    assert_eq!((beta.retry_count, &beta.last_error), (0, &None));
    let alpha = harness
        .store
        .checkpoint(&id, "Alpha")
        .await?
        .map_or(0, |c| c.last_uid);
    assert!(
        alpha < 20,
        "Alpha's sync was stopped before its end ({alpha})"
    );
    // Beta's EXAMINE went out on a new connection, not behind Alpha's unanswered FETCH.
    let commands = proxy.control().commands();
    let beta_examine = commands
        .iter()
        .filter(|c| c.name == "EXAMINE")
        .nth(1)
        .expect("Beta was examined");
    let last_alpha_fetch = commands
        .iter()
        .rfind(|c| c.name == "UID FETCH" && c.at < beta_examine.at)
        .expect("Alpha was fetched");
    assert_ne!(
        beta_examine.connection, last_alpha_fetch.connection,
        "Beta's EXAMINE was sent behind Alpha's interrupted FETCH: {commands:#?}"
    );
    assert_eq!(harness.store.count(&id).await?, alpha as usize + 3);
    harness.stop().await
}

/// The mailbox held in the middle of a folder's sync (Exchange throttled another session
/// on it): the syncing fetcher sends it nothing but its LOGOUT until the hold ends, and the
/// folder completes afterwards, every message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_set_mid_sync_stops_the_fetches_until_it_ends() -> anyhow::Result<()> {
    let hold = Duration::from_secs(3);
    let mut harness = Harness::start(fixture(&[("Phish Reports", 20)])).await?;
    let (proxy, id) = proxied(
        &harness,
        Script::exchange()
            .rule(When::command("UID FETCH").then(Fault::stall(Duration::from_millis(300)))),
        &["Phish Reports"],
    )
    .await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.batch_messages = 2;
    harness.spawn_fetcher(config).await?;
    under_way(&harness, &id, "Phish Reports").await?;
    // As another fetcher does when Exchange throttles it.
    ConnectionSlots::new(harness.stack.redis.connection_manager().await?)
        .hold_mailbox(PHISH_MAILBOX, hold, "fetcher-z")
        .await?;
    let held_at = std::time::Instant::now();
    harness
        .wait_status("the sync after the hold", &id, "Phish Reports", |s| {
            s.last_uid == Some(20)
        })
        .await?;
    assert_eq!(harness.store.count(&id).await?, 20);
    // The FETCH sent just before the hold was seen may still go out.
    let grace = Duration::from_millis(500);
    let during: Vec<(String, Duration)> = proxy
        .control()
        .commands_for(PHISH_MAILBOX)
        .iter()
        .filter(|c| c.at > held_at + grace && c.at < held_at + hold && c.name != "LOGOUT")
        .map(|c| (c.name.clone(), c.at.duration_since(held_at)))
        .collect();
    assert!(during.is_empty(), "sent during the hold: {during:?}");
    harness.stop().await
}

/// A long first sync shows the records committed so far, not 0 until it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_under_way_shows_its_progress() -> anyhow::Result<()> {
    const FOLDER: &str = "Phish Reports";
    let mut harness = Harness::start(fixture(&[(FOLDER, 100)])).await?;
    // Each batch's fetch waits a second, so the sync lasts a few renewals of its lease.
    let stall = When::command("UID FETCH").then(Fault::Stall {
        duration: Duration::from_secs(1),
    });
    let (_proxy, id) = proxied(&harness, Script::passthrough().rule(stall), &[FOLDER]).await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;

    let midway = harness
        .wait_status("progress in the middle of the sync", &id, FOLDER, |s| {
            s.connection_state == ConnectionState::Syncing
                && s.messages_synced > 0
                && s.messages_synced < 100
        })
        .await?;
    assert_eq!(midway.messages_synced % 25, 0, "whole batches: {midway:?}");
    let done = harness
        .wait_status("the end of the sync", &id, FOLDER, |s| {
            s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert_eq!(done.messages_synced, 100);
    harness.stop().await
}

/// A failed folder is tried again when its back-off ends, not at the next poll: with a
/// 30 s poll interval, a dropped EXAMINE is retried within the back-off's second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_folder_is_retried_when_its_back_off_ends() -> anyhow::Result<()> {
    const FOLDER: &str = "Phish Reports";
    let mut harness = Harness::start(fixture(&[(FOLDER, 3)])).await?;
    let drop_once = When::command("EXAMINE").then(Fault::Disconnect).once();
    let (proxy, id) = proxied(&harness, Script::passthrough().rule(drop_once), &[FOLDER]).await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.poll_interval = Duration::from_secs(30);
    harness.spawn_fetcher(config).await?;
    harness
        .wait_status("the sync after the retry", &id, FOLDER, |s| {
            s.last_uid == Some(3) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    let examines: Vec<_> = proxy
        .control()
        .commands_for(PHISH_MAILBOX)
        .into_iter()
        .filter(|c| c.name.eq_ignore_ascii_case("EXAMINE"))
        .collect();
    let (dropped, retried) = (&examines[0], &examines[1]);
    assert_eq!(dropped.fault, Some(FaultKind::Disconnected));
    let waited = retried.at.duration_since(dropped.at);
    // A first failure backs off about retry_min (200 ms here); the poll interval is 30 s.
    assert!(
        waited < Duration::from_secs(10),
        "retried {waited:?} after the drop"
    );
    harness.stop().await
}

/// A source fixed by its user (here: its port) is tried at the next poll, not when the
/// back-off its failures earned ends (30 to 60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_source_is_tried_at_the_next_poll() -> anyhow::Result<()> {
    const FOLDER: &str = "Phish Reports";
    let mut harness = Harness::start(fixture(&[(FOLDER, 3)])).await?;
    let closed = threatmail_testkit::net::free_port()?;
    let wrong: std::net::SocketAddr = format!("127.0.0.1:{closed}").parse()?;
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, wrong, &[FOLDER])
        .await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.retry_min = Duration::from_secs(60);
    config.sync.retry_max = Duration::from_secs(60);
    harness.spawn_fetcher(config).await?;
    let failed = harness
        .wait_status("the refused connection", &id, FOLDER, |s| {
            s.retry_count >= 1
        })
        .await?;
    assert_eq!(
        failed.last_error.as_ref().map(|e| e.reason.as_str()),
        Some("imap.unreachable"),
        "{failed:?}"
    );

    let mut record = harness.sources.get(&id).await?.expect("source");
    let version = record.version;
    record.port = harness.stack.dovecot.imaps_addr().port();
    harness.sources.update(&record, version).await?;
    let fixed_at = std::time::Instant::now();
    let synced = harness
        .wait_status("the sync after the fix", &id, FOLDER, |s| {
            s.last_uid == Some(3) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert!(synced.last_error.is_none(), "{synced:?}");
    let waited = fixed_at.elapsed();
    assert!(
        waited < Duration::from_secs(15),
        "synced {waited:?} after the fix; the back-off was at least 30 s"
    );
    harness.stop().await
}
