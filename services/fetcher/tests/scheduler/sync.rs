//! The corpus synced by the scheduler: every message stored once with its bytes, a poll
//! with nothing new storing nothing, new mail picked up at the next poll, flags untouched.

use std::collections::BTreeMap;

use threatmail_source::ConnectionState;
use threatmail_store::identity::Identity;
use threatmail_store::{MessageId, MessageRef};
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

use crate::harness::{Harness, crlf, flags, phishing_corpus, report, set_flags};

const FOLDER: &str = "Phish Reports";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_syncs_once_then_only_new_mail_and_flags_stay() -> anyhow::Result<()> {
    let corpus = phishing_corpus().unwrap_or_else(|| (1..=12).map(report).collect());
    let total = u32::try_from(corpus.len())?;
    let mut fixture = TenantFixture::everything_right();
    *fixture
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .expect("mailbox") = Mailbox::new(PHISH_MAILBOX).with_messages(FOLDER, corpus.clone());
    let mut harness = Harness::start(fixture).await?;

    // Some messages flagged, some seen, the rest unseen: the sync must change none.
    let mut imap = harness.imap(PHISH_MAILBOX).await?;
    imap.select(FOLDER).await?;
    set_flags(&mut imap, "1,4,7", "+FLAGS (\\Flagged)").await?;
    set_flags(&mut imap, "2,5", "+FLAGS (\\Seen)").await?;
    let before = flags(&mut imap, FOLDER).await?;
    assert_eq!(before.len(), corpus.len());
    assert!(
        before.values().any(|f| f.iter().all(|flag| flag != "Seen")),
        "some messages are unseen: {before:?}"
    );

    let dovecot = harness.stack.dovecot.imaps_addr();
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, dovecot, &[FOLDER])
        .await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;

    let synced = harness
        .wait_status("the corpus to sync", &id, FOLDER, |s| {
            s.last_uid == Some(total) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert_eq!((synced.retry_count, &synced.last_error), (0, &None));
    assert!(synced.last_poll.is_some() && synced.uidvalidity.is_some());

    // Each message once: files with the same identity (the same bytes, or the same
    // Message-ID, Date and From) are one record with a location per UID; the stored bytes
    // are the file's with CRLF line ends.
    let mut expected: BTreeMap<MessageId, Vec<(u32, Vec<u8>)>> = BTreeMap::new();
    for (index, raw) in corpus.iter().enumerate() {
        let served = crlf(raw);
        let parsed = threatmail_parse::parse_message(&served);
        let message_id = Identity::of(&served, &parsed.message).message_id(&id);
        expected
            .entry(message_id)
            .or_default()
            .push((u32::try_from(index)? + 1, served));
    }
    assert_eq!(harness.store.count(&id).await?, expected.len());
    assert_eq!(synced.messages_synced, expected.len() as u64, "{synced:?}");
    for (message_id, copies) in &expected {
        let stored = harness
            .store
            .get(&MessageRef {
                source_id: id.clone(),
                id: message_id.clone(),
            })
            .await?
            .unwrap_or_else(|| panic!("message of UID {} not stored", copies[0].0));
        let mut uids: Vec<u32> = stored
            .locations
            .iter()
            .filter(|l| l.folder == FOLDER)
            .map(|l| l.uid)
            .collect();
        uids.sort_unstable();
        let wanted: Vec<u32> = copies.iter().map(|(uid, _)| *uid).collect();
        assert_eq!(uids, wanted, "locations of {message_id:?}");
        let blob = harness
            .store
            .blobs()
            .get(&stored.record.sha256)
            .await?
            .expect("blob");
        assert!(blob == copies[0].1, "bytes of UID {} differ", copies[0].0);
    }

    // Polls with nothing new store nothing (wait for polls at least two seconds later).
    let first_poll = synced.last_poll.unwrap_or_default();
    let later = harness
        .polled_after("later polls", &id, FOLDER, first_poll)
        .await?;
    assert_eq!(later.messages_synced, expected.len() as u64);
    assert_eq!(later.last_uid, Some(total));
    assert_eq!(harness.store.count(&id).await?, expected.len());

    // Ten new messages: exactly ten new records at the next poll.
    let new: Vec<Vec<u8>> = (1..=10).map(report).collect();
    harness
        .stack
        .dovecot
        .append(PHISH_MAILBOX, FOLDER, &new)
        .await?;
    let more = harness
        .wait_status("the new mail", &id, FOLDER, |s| {
            s.last_uid == Some(total + 10)
        })
        .await?;
    assert_eq!(more.messages_synced, expected.len() as u64 + 10);
    assert_eq!(harness.store.count(&id).await?, expected.len() + 10);

    let after = flags(&mut imap, FOLDER).await?;
    for (uid, flags) in &before {
        assert_eq!(after.get(uid), Some(flags), "flags of UID {uid} changed");
    }
    imap.logout().await?;
    harness.stop().await
}
