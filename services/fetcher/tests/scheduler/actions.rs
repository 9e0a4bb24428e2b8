//! Actions after processing through the scheduler on real Dovecot: mark seen, move (into a
//! folder that is selected too), the action applied at the next sync to messages committed
//! without it (a crash between the commit and the action), messages a person marked unread
//! again left unread, a missing move target, and a UIDVALIDITY change.

use futures::TryStreamExt as _;
use threatmail_fetcher::imap::Session;
use threatmail_fetcher::scheduler::ACTION_FAILED;
use threatmail_source::record::AfterProcessing;
use threatmail_source::{ConnectionState, FolderStatus, SourceId};
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

use crate::harness::{Harness, crlf, flags, report, set_flags};

const FOLDER: &str = "Phish Reports";
const TARGET: &str = "Processed";

async fn start(messages: Vec<Vec<u8>>) -> anyhow::Result<Harness> {
    let mut fixture = TenantFixture::everything_right();
    *fixture
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .expect("mailbox") = Mailbox::new(PHISH_MAILBOX).with_messages(FOLDER, messages);
    Harness::start(fixture).await
}

/// [`start`], with the move target made too.
async fn start_with_target(messages: Vec<Vec<u8>>) -> anyhow::Result<Harness> {
    let harness = start(messages).await?;
    harness
        .stack
        .dovecot
        .create_folder(PHISH_MAILBOX, TARGET)
        .await?;
    Ok(harness)
}

/// A source on Dovecot with `folders` selected and `action` after processing.
async fn source(
    harness: &Harness,
    folders: &[&str],
    action: AfterProcessing,
) -> anyhow::Result<SourceId> {
    let dovecot = harness.stack.dovecot.imaps_addr();
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, dovecot, folders)
        .await?;
    set_action(harness, &id, action).await?;
    Ok(id)
}

async fn set_action(
    harness: &Harness,
    id: &SourceId,
    action: AfterProcessing,
) -> anyhow::Result<()> {
    let mut record = harness.sources.get(id).await?.expect("source");
    let version = record.version;
    record.after_processing = action;
    harness.sources.update(&record, version).await?;
    Ok(())
}

/// A fetcher writing batches of five (so a sync has several batches, each acted on).
async fn spawn(harness: &mut Harness) -> anyhow::Result<()> {
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.batch_messages = 5;
    harness.spawn_fetcher(config).await?;
    Ok(())
}

fn move_to(folder: &str) -> AfterProcessing {
    AfterProcessing::MoveTo {
        folder: folder.to_owned(),
    }
}

/// The bytes of every message in `folder`, sorted.
async fn bodies(session: &mut Session, folder: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let mailbox = session.select(folder).await?;
    if mailbox.exists == 0 {
        return Ok(Vec::new());
    }
    let fetched: Vec<_> = session
        .uid_fetch("1:*", "BODY.PEEK[]")
        .await?
        .try_collect()
        .await?;
    let mut out: Vec<Vec<u8>> = fetched
        .iter()
        .filter_map(|f| f.body().map(<[u8]>::to_vec))
        .collect();
    out.sort();
    Ok(out)
}

fn served(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = messages.iter().map(|m| crlf(m)).collect();
    out.sort();
    out
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn synced_to(uid: u32) -> impl Fn(&FolderStatus) -> bool {
    move |s| s.last_uid == Some(uid) && s.connection_state == ConnectionState::Idle
}

/// Every stored message gets `\Seen` and keeps its other flags; one over the size limit
/// (UID 13, skipped, no record) is left as it is, by later polls too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mark_seen_sets_seen_on_every_synced_message_and_nothing_else() -> anyhow::Result<()> {
    let mut messages: Vec<Vec<u8>> = (1..=12).map(report).collect();
    let mut large = report(13);
    large.extend(std::iter::repeat_n(b'x', 4000));
    large.extend_from_slice(b"\r\n");
    messages.push(large);
    let mut harness = start(messages.clone()).await?;
    let mut imap = harness.imap(PHISH_MAILBOX).await?;
    imap.select(FOLDER).await?;
    set_flags(&mut imap, "1,4,7", "+FLAGS (\\Flagged)").await?;
    set_flags(&mut imap, "2", "+FLAGS (\\Seen)").await?;
    let before = flags(&mut imap, FOLDER).await?;
    assert_eq!(before.len(), 13);

    let id = source(&harness, &[FOLDER], AfterProcessing::MarkSeen).await?;
    let mut config = harness.fetcher_config("fetcher-a");
    config.sync.batch_messages = 5;
    config.sync.max_message_bytes = 2000;
    harness.spawn_fetcher(config).await?;
    let synced = harness
        .wait_status("the folder to sync", &id, FOLDER, synced_to(13))
        .await?;
    assert_eq!(synced.last_error, None);
    assert_eq!(
        synced.messages_skipped, 1,
        "the status shows the message over the size limit"
    );
    assert_eq!(harness.store.count(&id).await?, 12);
    let skipped = harness.store.skipped(&id, FOLDER).await?;
    assert_eq!(
        skipped.iter().map(|s| s.1).collect::<Vec<_>>(),
        [13],
        "{skipped:?}"
    );
    let first = synced.last_poll.unwrap_or_default();
    harness
        .polled_after("later polls", &id, FOLDER, first)
        .await?;

    let after = flags(&mut imap, FOLDER).await?;
    for (uid, flags) in &before {
        let mut expected = flags.clone();
        if *uid != 13 && !expected.iter().any(|f| f == "Seen") {
            expected.push("Seen".to_owned());
            expected.sort();
        }
        assert_eq!(after.get(uid), Some(&expected), "flags of UID {uid}");
    }
    assert_eq!(after.len(), before.len(), "nothing moved or removed");
    imap.logout().await?;
    harness.stop().await
}

/// Appends reports `uids` to the folder and waits until the sync has stored them without
/// an error; the reports appended and the status.
async fn deliver(
    harness: &Harness,
    id: &SourceId,
    uids: std::ops::RangeInclusive<usize>,
) -> anyhow::Result<(Vec<Vec<u8>>, FolderStatus)> {
    let last = u32::try_from(*uids.end())?;
    let new: Vec<Vec<u8>> = uids.map(report).collect();
    harness
        .stack
        .dovecot
        .append(PHISH_MAILBOX, FOLDER, &new)
        .await?;
    let status = harness
        .wait_status("the new mail", id, FOLDER, synced_to(last))
        .await?;
    assert_eq!(status.last_error, None);
    Ok((new, status))
}

/// Whether `uid` has `\Seen` in `flags`.
fn seen(flags: &std::collections::BTreeMap<u32, Vec<String>>, uid: u32) -> bool {
    flags
        .get(&uid)
        .is_some_and(|f| f.iter().any(|flag| flag == "Seen"))
}

/// Mark seen applies once: a message a person marks unread again stays unread at later
/// polls and when new mail comes. Only the messages after the last UID the action is
/// recorded through get it again (as after a crash between a commit and its action).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_marked_unread_again_stay_unread() -> anyhow::Result<()> {
    let messages: Vec<Vec<u8>> = (1..=8).map(report).collect();
    let mut harness = start(messages).await?;
    let id = source(&harness, &[FOLDER], AfterProcessing::MarkSeen).await?;
    spawn(&mut harness).await?;
    harness
        .wait_status("the folder to sync", &id, FOLDER, synced_to(8))
        .await?;
    let mut imap = harness.imap(PHISH_MAILBOX).await?;
    let synced = flags(&mut imap, FOLDER).await?;
    assert!((1..=8).all(|uid| seen(&synced, uid)), "{synced:?}");

    // A person marks 2 and 7 unread; and the record of how far the action went is put
    // back to UID 5, as if the fetcher had crashed after committing 6-8 but before
    // recording their action.
    set_flags(&mut imap, "2,7", "-FLAGS (\\Seen)").await?;
    let mut redis = harness.stack.redis.connection_manager().await?;
    let _: () = redis::cmd("HSET")
        .arg(threatmail_store::keys::checkpoint_key(&id, FOLDER))
        .arg("acted_uid")
        .arg(5)
        .query_async(&mut redis)
        .await?;
    let changed = unix_now();
    harness
        .polled_after("polls after the change", &id, FOLDER, changed)
        .await?;
    let after = flags(&mut imap, FOLDER).await?;
    assert!(
        !seen(&after, 2),
        "UID 2 was acted on before the record: left unread"
    );
    assert!(seen(&after, 7), "UID 7 is after the record: reconciled");

    let (_, status) = deliver(&harness, &id, 9..=10).await?;
    let first = status.last_poll.unwrap_or_default();
    harness
        .polled_after("later polls", &id, FOLDER, first)
        .await?;
    let last = flags(&mut imap, FOLDER).await?;
    let unseen: Vec<u32> = (1..=10).filter(|uid| !seen(&last, *uid)).collect();
    assert_eq!(
        unseen,
        [2],
        "only the message marked unread again is unread: {last:?}"
    );
    assert_eq!(
        harness
            .store
            .actions_done(&id, FOLDER)
            .await?
            .map(|d| d.through_uid),
        Some(10)
    );
    assert_eq!(harness.store.count(&id).await?, 10);
    imap.logout().await?;
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn move_puts_every_message_in_the_target_once_with_one_record_each() -> anyhow::Result<()> {
    let messages: Vec<Vec<u8>> = (1..=12).map(report).collect();
    let mut harness = start_with_target(messages.clone()).await?;
    // The target is selected too: its messages add locations, never records, and are not
    // moved into themselves.
    let id = source(&harness, &[FOLDER, TARGET], move_to(TARGET)).await?;
    spawn(&mut harness).await?;
    harness
        .wait_status("the folder to sync", &id, FOLDER, synced_to(12))
        .await?;
    let target = harness
        .wait_status("the target to sync", &id, TARGET, synced_to(12))
        .await?;
    assert_eq!(target.last_error, None);

    let mut imap = harness.imap(PHISH_MAILBOX).await?;
    assert_eq!(bodies(&mut imap, FOLDER).await?, Vec::<Vec<u8>>::new());
    assert_eq!(bodies(&mut imap, TARGET).await?, served(&messages));
    assert_eq!(harness.store.count(&id).await?, 12);
    assert_eq!(harness.store.count_in_folder(&id, FOLDER).await?, 12);
    assert_eq!(harness.store.count_in_folder(&id, TARGET).await?, 12);

    // Later polls change nothing (the target is not moved into itself).
    let first = target.last_poll.unwrap_or_default();
    let later = harness
        .polled_after("later polls", &id, TARGET, first)
        .await?;
    assert_eq!(later.last_uid, Some(12));
    assert_eq!(bodies(&mut imap, TARGET).await?, served(&messages));
    assert_eq!(harness.store.count(&id).await?, 12);
    imap.logout().await?;
    harness.stop().await
}

/// Committed without the action (as after a crash between the commit and the action):
/// the next sync applies it to the already-committed messages, and to new mail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_committed_without_their_action_get_it_at_the_next_sync() -> anyhow::Result<()> {
    let messages: Vec<Vec<u8>> = (1..=8).map(report).collect();
    let mut harness = start_with_target(messages.clone()).await?;
    let id = source(&harness, &[FOLDER], AfterProcessing::None).await?;
    spawn(&mut harness).await?;
    harness
        .wait_status("the folder to sync", &id, FOLDER, synced_to(8))
        .await?;
    let mut imap = harness.imap(PHISH_MAILBOX).await?;
    assert_eq!(bodies(&mut imap, FOLDER).await?, served(&messages));

    set_action(&harness, &id, move_to(TARGET)).await?;
    let switched = unix_now();
    harness
        .polled_after("polls after the switch", &id, FOLDER, switched)
        .await?;
    assert_eq!(bodies(&mut imap, FOLDER).await?, Vec::<Vec<u8>>::new());
    assert_eq!(bodies(&mut imap, TARGET).await?, served(&messages));
    assert_eq!(harness.store.count(&id).await?, 8);

    let (new, _) = deliver(&harness, &id, 9..=11).await?;
    let all: Vec<Vec<u8>> = messages.iter().chain(&new).cloned().collect();
    assert_eq!(bodies(&mut imap, FOLDER).await?, Vec::<Vec<u8>>::new());
    assert_eq!(bodies(&mut imap, TARGET).await?, served(&all));
    assert_eq!(harness.store.count(&id).await?, 11);
    imap.logout().await?;
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_move_target_is_shown_and_nothing_moves_until_it_exists() -> anyhow::Result<()> {
    const MISSING: &str = "Triaged Phish";
    let messages: Vec<Vec<u8>> = (1..=6).map(report).collect();
    let mut harness = start(messages.clone()).await?;
    let id = source(&harness, &[FOLDER], move_to(MISSING)).await?;
    spawn(&mut harness).await?;
    let refused =
        |uid: u32| move |s: &FolderStatus| s.last_uid == Some(uid) && s.last_error.is_some();
    let failed = harness
        .wait_status("the refused move", &id, FOLDER, refused(6))
        .await?;
    let error = failed.last_error.clone().expect("error");
    assert_eq!(error.reason, ACTION_FAILED);
    assert!(
        error.message.contains(MISSING) && error.message.contains("create the folder"),
        "{error:?}"
    );
    assert_eq!(failed.connection_state, ConnectionState::Failed);
    assert_eq!(failed.messages_synced, 6);
    let mut imap = harness.imap(PHISH_MAILBOX).await?;
    assert_eq!(bodies(&mut imap, FOLDER).await?, served(&messages));
    assert_eq!(harness.store.count(&id).await?, 6);

    // New mail is still stored.
    let new: Vec<Vec<u8>> = (7..=8).map(report).collect();
    harness
        .stack
        .dovecot
        .append(PHISH_MAILBOX, FOLDER, &new)
        .await?;
    harness
        .wait_status("the new mail", &id, FOLDER, refused(8))
        .await?;
    assert_eq!(harness.store.count(&id).await?, 8);
    let all: Vec<Vec<u8>> = messages.iter().chain(&new).cloned().collect();
    assert_eq!(bodies(&mut imap, FOLDER).await?, served(&all));

    // Once the target exists, the next poll moves everything.
    harness
        .stack
        .dovecot
        .create_folder(PHISH_MAILBOX, MISSING)
        .await?;
    let recovered = harness
        .wait_status("the move to succeed", &id, FOLDER, |s| {
            synced_to(8)(s) && s.last_error.is_none()
        })
        .await?;
    assert_eq!(recovered.retry_count, 0);
    assert_eq!(bodies(&mut imap, FOLDER).await?, Vec::<Vec<u8>>::new());
    assert_eq!(bodies(&mut imap, MISSING).await?, served(&all));
    assert_eq!(harness.store.count(&id).await?, 8);
    imap.logout().await?;
    harness.stop().await
}

/// The folder rebuilt (a new UIDVALIDITY) with the same messages plus one: exactly one new
/// record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_folder_adds_exactly_the_one_new_record() -> anyhow::Result<()> {
    let mut harness = start((1..=6).map(report).collect()).await?;
    let id = source(&harness, &[FOLDER], AfterProcessing::None).await?;
    spawn(&mut harness).await?;
    let first = harness
        .wait_status("the folder to sync", &id, FOLDER, synced_to(6))
        .await?;
    assert_eq!(harness.store.count(&id).await?, 6);

    // Dovecot ends a session whose selected folder is deleted; delete from another one.
    let mut admin = harness.imap(PHISH_MAILBOX).await?;
    admin.delete(FOLDER).await?;
    admin.logout().await?;
    harness
        .stack
        .dovecot
        .append(
            PHISH_MAILBOX,
            FOLDER,
            &(1..=7).map(report).collect::<Vec<_>>(),
        )
        .await?;
    let rebuilt = harness
        .wait_status("the rebuilt folder to sync", &id, FOLDER, |s| {
            synced_to(7)(s) && s.uidvalidity != first.uidvalidity
        })
        .await?;
    assert!(rebuilt.uidvalidity.is_some());
    assert_eq!(harness.store.count(&id).await?, 7);
    assert_eq!(rebuilt.messages_synced, 7);
    // Later polls: still seven.
    let at = rebuilt.last_poll.unwrap_or_default();
    harness.polled_after("later polls", &id, FOLDER, at).await?;
    assert_eq!(harness.store.count(&id).await?, 7);
    harness.stop().await
}

/// Moves through the Exchange fault proxy: with Exchange's capabilities (MOVE) the fetcher
/// sends `UID MOVE`; without MOVE it falls back to `UID COPY` + `UID STORE` + `UID
/// EXPUNGE` (UIDPLUS). Never a plain `EXPUNGE`, which would remove messages other clients
/// marked deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_use_uid_move_or_copy_and_uid_expunge_never_expunge() -> anyhow::Result<()> {
    use threatmail_testkit::exchange_proxy::{Capabilities, Dialect, Script};

    for with_move in [true, false] {
        let messages: Vec<Vec<u8>> = (1..=7).map(report).collect();
        let mut harness = start_with_target(messages.clone()).await?;
        let mut capabilities = Capabilities::exchange();
        if !with_move {
            capabilities.after_auth.retain(|atom| atom != "MOVE");
        }
        let dialect = Dialect::exchange().capabilities(capabilities);
        let proxy = harness
            .stack
            .exchange_proxy(Script::exchange().dialect(dialect))
            .await?;
        let id = harness
            .add_source("Phishing reports", PHISH_MAILBOX, proxy.addr(), &[FOLDER])
            .await?;
        set_action(&harness, &id, move_to(TARGET)).await?;
        spawn(&mut harness).await?;
        let done = harness
            .wait_status("the folder to sync", &id, FOLDER, synced_to(7))
            .await?;
        assert_eq!(done.last_error, None, "with MOVE: {with_move}");

        let mut imap = harness.imap(PHISH_MAILBOX).await?;
        assert_eq!(bodies(&mut imap, FOLDER).await?, Vec::<Vec<u8>>::new());
        assert_eq!(bodies(&mut imap, TARGET).await?, served(&messages));
        assert_eq!(harness.store.count(&id).await?, 7);
        imap.logout().await?;

        let names: Vec<String> = proxy
            .control()
            .commands_for(PHISH_MAILBOX)
            .into_iter()
            .map(|c| c.name)
            .collect();
        let sent = |name: &str| names.iter().any(|n| n == name);
        assert!(!sent("EXPUNGE"), "a plain EXPUNGE was sent: {names:?}");
        assert!(sent("SELECT") && !sent("EXAMINE"), "{names:?}");
        if with_move {
            assert!(sent("UID MOVE") && !sent("UID COPY"), "{names:?}");
        } else {
            assert!(
                !sent("UID MOVE") && sent("UID COPY") && sent("UID STORE") && sent("UID EXPUNGE"),
                "{names:?}"
            );
        }
        harness.stop().await?;
    }
    Ok(())
}
