//! The write path against a real Redis and a real blob directory: each message stored
//! exactly once with its locations, re-rendered copies found, crashes between the atomic
//! step and the outbox losing and duplicating nothing, fencing, checkpoints, analyst state.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::{TestStore, batch, mail, phishing, source};
use threatmail_store::{
    ActionsDone, BatchItem, Checkpoint, CrashPoint, Fence, Identity, IncomingMessage, ItemOutcome,
    MessageRef, StateChange, StoreError, WriteBatch,
};

/// Every event in the stream, by record.
async fn events_by_message(
    store: &threatmail_store::Store,
) -> anyhow::Result<BTreeMap<MessageRef, Vec<String>>> {
    let mut all: BTreeMap<MessageRef, Vec<String>> = BTreeMap::new();
    let mut after = "0".to_owned();
    loop {
        let events = store.events(&after, 500).await?;
        let Some(last) = events.last() else { break };
        after = last.stream_id.clone();
        for event in events {
            assert_eq!(event.kind, "message.stored");
            all.entry(event.message).or_default().push(event.stream_id);
        }
    }
    Ok(all)
}

#[tokio::test]
async fn the_corpus_written_twice_and_in_another_folder_is_stored_once_with_its_locations()
-> anyhow::Result<()> {
    let Some(corpus) = phishing() else {
        return Ok(());
    };
    let t = TestStore::start().await?;
    let src = source("phish");
    let messages: Vec<IncomingMessage> = corpus
        .iter()
        .enumerate()
        .map(|(n, (_, raw))| IncomingMessage::parse(n as u32 + 1, raw.clone()))
        .collect();
    // What each message's record must be, and which UIDs share it (distinct files can be
    // one message: the same Message-ID, Date and From).
    let mut expected: BTreeMap<MessageRef, BTreeSet<u32>> = BTreeMap::new();
    for message in &messages {
        let id = Identity::of(&message.raw, &message.parsed.message).message_id(&src);
        expected
            .entry(MessageRef {
                source_id: src.clone(),
                id,
            })
            .or_default()
            .insert(message.uid);
    }

    let mut first_outcomes = Vec::new();
    for round in 0..2 {
        for chunk in messages.chunks(25) {
            let outcome = t
                .store
                .write(&batch(&src, "INBOX", 7, chunk.to_vec()))
                .await?;
            assert_eq!(outcome.drained.as_ref().err(), None);
            if round == 0 {
                first_outcomes.extend(outcome.items);
            } else {
                for item in &outcome.items {
                    assert!(
                        matches!(item, ItemOutcome::AlreadyStored(_)),
                        "second write: {item:?}"
                    );
                }
            }
        }
    }
    let stored = first_outcomes
        .iter()
        .filter(|o| matches!(o, ItemOutcome::Stored(_)))
        .count();
    assert_eq!(stored, expected.len());
    for chunk in messages.chunks(40) {
        let outcome = t
            .store
            .write(&batch(&src, "Phish Reports", 3, chunk.to_vec()))
            .await?;
        for item in &outcome.items {
            assert!(
                matches!(item, ItemOutcome::LocationAdded(_)),
                "other folder: {item:?}"
            );
        }
    }

    assert_eq!(t.store.count(&src).await?, expected.len());
    let by_file: HashMap<u32, &[u8]> = messages.iter().map(|m| (m.uid, m.raw.as_slice())).collect();
    for (message, uids) in &expected {
        let got = t
            .store
            .get(message)
            .await?
            .unwrap_or_else(|| panic!("{message} missing"));
        let places: BTreeSet<(String, u32, u32)> = got
            .locations
            .iter()
            .map(|l| (l.folder.clone(), l.uidvalidity, l.uid))
            .collect();
        let wanted: BTreeSet<(String, u32, u32)> = uids
            .iter()
            .flat_map(|uid| {
                [
                    ("INBOX".to_owned(), 7, *uid),
                    ("Phish Reports".to_owned(), 3, *uid),
                ]
            })
            .collect();
        assert_eq!(places, wanted, "{message}");
        // The blob holds exactly the bytes first stored.
        let raw = t
            .store
            .blobs()
            .get(&got.record.sha256)
            .await?
            .expect("blob present");
        assert!(
            uids.iter().any(|uid| by_file[uid] == raw.as_slice()),
            "{message}: blob bytes"
        );
    }
    assert_eq!(
        t.store.checkpoint(&src, "INBOX").await?,
        Some(Checkpoint {
            uidvalidity: 7,
            last_uid: messages.len() as u32
        })
    );

    // One event per record, under the record's id, and nothing left in the outbox.
    let events = events_by_message(&t.store).await?;
    assert_eq!(
        events.keys().cloned().collect::<BTreeSet<_>>(),
        expected.keys().cloned().collect()
    );
    assert!(events.values().all(|ids| ids.len() == 1));
    assert_eq!(t.store.outbox_len(&src).await?, 0);
    eprintln!(
        "corpus: {} files, {} records, {} events",
        messages.len(),
        expected.len(),
        events.len()
    );
    Ok(())
}

#[tokio::test]
async fn a_crash_between_the_atomic_step_and_the_outbox_loses_no_event_and_repeats_none()
-> anyhow::Result<()> {
    let t = TestStore::start().await?;
    let src = source("crashy");
    let messages: Vec<IncomingMessage> = (1..=60)
        .map(|n| {
            mail(
                n,
                &format!("crash-{n}@test.example"),
                "Tue, 30 Apr 2024 10:00:00 +0000",
                "attacker@evil.example",
                &format!("invoice {n}"),
                &format!("pay at http://pay-{n}.evil.example.com/"),
            )
        })
        .collect();
    let mut crashes = 0;
    for (round, chunk) in messages.chunks(5).enumerate() {
        // A fresh handle each time, as a restarted fetcher has.
        let store = t.reopen().await?;
        let point = match round % 3 {
            0 => Some(CrashPoint::AfterCommit),
            1 => Some(CrashPoint::AfterEmit),
            _ => None,
        };
        if let Some(point) = point {
            store.inject_crash(point);
        }
        match store.write(&batch(&src, "INBOX", 1, chunk.to_vec())).await {
            Ok(outcome) => assert!(point.is_none(), "no crash at {point:?}: {outcome:?}"),
            Err(StoreError::InjectedCrash(at)) => {
                assert_eq!(Some(at), point);
                crashes += 1;
            }
            Err(other) => return Err(other.into()),
        }
        if round % 4 == 0 {
            // The restarted fetcher retries the batch it could not confirm.
            let again = t
                .reopen()
                .await?
                .write(&batch(&src, "INBOX", 1, chunk.to_vec()))
                .await?;
            assert!(
                again
                    .items
                    .iter()
                    .all(|i| matches!(i, ItemOutcome::AlreadyStored(_)))
            );
        }
    }
    assert_eq!(crashes, 8);
    // Entries of crashed writes may still wait in the outbox; the periodic drain of a
    // restarted process finishes them.
    let restarted = t.reopen().await?;
    restarted.drain_all().await?;
    assert_eq!(restarted.outbox_len(&src).await?, 0);

    let expected: BTreeSet<MessageRef> = messages
        .iter()
        .map(|m| MessageRef {
            source_id: src.clone(),
            id: Identity::of(&m.raw, &m.parsed.message).message_id(&src),
        })
        .collect();
    let events = events_by_message(&restarted).await?;
    assert_eq!(
        events.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "every record announced"
    );
    for (message, ids) in &events {
        assert_eq!(ids.len(), 1, "{message} announced {} times", ids.len());
    }
    // What the drain emitted (message 1's write crashed before emitting) is in the
    // cross-source indexes too.
    let found = restarted
        .list(&threatmail_store::ListQuery {
            indicator_value: Some("http://pay-1.evil.example.com/".into()),
            page_size: 10,
            ..Default::default()
        })
        .await?;
    let first = MessageRef {
        source_id: src.clone(),
        id: Identity::of(&messages[0].raw, &messages[0].parsed.message).message_id(&src),
    };
    assert_eq!(
        found
            .items
            .iter()
            .map(|i| i.message.clone())
            .collect::<Vec<_>>(),
        vec![first]
    );
    let by_sender = restarted
        .list(&threatmail_store::ListQuery {
            sender: Some("attacker@evil.example".into()),
            page_size: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(by_sender.items.len(), expected.len());
    // Draining again changes nothing.
    let report = restarted.drain_all().await?;
    assert_eq!(report.emitted, 0);
    assert_eq!(events_by_message(&restarted).await?.len(), expected.len());
    Ok(())
}

/// The same mail as Exchange may serve it after a UIDVALIDITY change: headers refolded,
/// CRLF turned into LF.
fn re_render(raw: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(raw).replace("\r\n", "\n");
    let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut refolded = String::new();
    // Unfold every header, then fold each long one at its first space after column 20.
    let mut unfolded: Vec<String> = Vec::new();
    for line in head.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = unfolded.last_mut() {
                last.push(' ');
                last.push_str(line.trim_start());
            }
        } else {
            unfolded.push(line.to_owned());
        }
    }
    for line in unfolded {
        match line.char_indices().skip(20).find(|(_, c)| *c == ' ') {
            Some((at, _)) if line.len() > 30 => {
                refolded.push_str(&line[..at]);
                refolded.push_str("\n\t");
                refolded.push_str(&line[at + 1..]);
            }
            _ => refolded.push_str(&line),
        }
        refolded.push('\n');
    }
    refolded.push('\n');
    refolded.push_str(body);
    refolded.into_bytes()
}

#[tokio::test]
async fn a_re_rendered_copy_after_a_uidvalidity_change_finds_the_existing_record()
-> anyhow::Result<()> {
    let t = TestStore::start().await?;
    let src = source("exchange");
    let original = mail(
        41,
        "CAF=abc123.4567@mail.example.com",
        "Wed, 1 May 2024 10:00:00 +0200",
        "\"Payroll Department\" <payroll@evil.example>",
        "Your salary statement for April is ready for review and signature",
        "Open https://evil.example/statement?id=1 to read it.",
    );
    let first = t
        .store
        .write(&batch(&src, "INBOX", 100, vec![original.clone()]))
        .await?;
    let ItemOutcome::Stored(record) = &first.items[0] else {
        panic!("{first:?}")
    };

    let copy_raw = re_render(&original.raw);
    assert_ne!(copy_raw, original.raw);
    assert!(
        !copy_raw.windows(2).any(|w| w == b"\r\n"),
        "line ends changed"
    );
    let copy = IncomingMessage::parse(1, copy_raw.clone());
    let after = t
        .store
        .write(&batch(&src, "INBOX", 200, vec![copy.clone()]))
        .await?;
    assert_eq!(
        after.items,
        vec![ItemOutcome::LocationAdded(record.clone())]
    );
    assert_eq!(t.store.count(&src).await?, 1);
    let stored = t.store.get(record).await?.expect("stored");
    assert_eq!(
        stored.record.sha256,
        threatmail_store::identity::sha256_hex(&original.raw)
    );
    let shas: BTreeSet<&str> = stored.locations.iter().map(|l| l.sha256.as_str()).collect();
    assert_eq!(shas.len(), 2, "each location names the bytes served there");
    assert_eq!(
        t.store.checkpoint(&src, "INBOX").await?,
        Some(Checkpoint {
            uidvalidity: 200,
            last_uid: 1
        })
    );
    // The copy's bytes now find the record directly, even with its headers gone.
    let again = t
        .store
        .write(&batch(&src, "INBOX", 200, vec![copy]))
        .await?;
    assert_eq!(
        again.items,
        vec![ItemOutcome::AlreadyStored(record.clone())]
    );

    // The same for every corpus message that has a Message-ID.
    let Some(corpus) = phishing() else {
        return Ok(());
    };
    let src = source("exchange-corpus");
    let mut checked = 0;
    for (n, (_, raw)) in corpus.iter().enumerate().take(120) {
        let message = IncomingMessage::parse(n as u32 + 1, raw.clone());
        if message.parsed.message.message_id.is_none() {
            continue;
        }
        let copy = IncomingMessage::parse(n as u32 + 1, re_render(raw));
        if copy.parsed.message.message_id != message.parsed.message.message_id
            || copy.parsed.message.date != message.parsed.message.date
        {
            // The refolding changed what a header means (a broken header block).
            continue;
        }
        let first = t
            .store
            .write(&batch(&src, "INBOX", 1, vec![message]))
            .await?;
        let second = t.store.write(&batch(&src, "INBOX", 2, vec![copy])).await?;
        let first_ref = first.items[0].message().cloned();
        assert!(
            matches!(&second.items[0], ItemOutcome::LocationAdded(m) if Some(m) == first_ref.as_ref())
                || matches!(&second.items[0], ItemOutcome::AlreadyStored(m) if Some(m) == first_ref.as_ref()),
            "corpus message {n}: {:?} then {:?}",
            first.items[0],
            second.items[0]
        );
        checked += 1;
    }
    assert!(checked > 50, "only {checked} corpus messages checked");
    Ok(())
}

#[tokio::test]
async fn a_stale_fencing_token_commits_nothing() -> anyhow::Result<()> {
    let t = TestStore::start().await?;
    let src = source("fenced");
    let one = mail(
        1,
        "f1@test",
        "Wed, 1 May 2024 10:00:00 +0000",
        "a@evil.example",
        "one",
        "x",
    );
    let two = mail(
        2,
        "f2@test",
        "Wed, 1 May 2024 10:00:00 +0000",
        "a@evil.example",
        "two",
        "y",
    );

    let lease = t
        .store
        .acquire_lease(&src, "INBOX", "fetcher-a", Duration::from_secs(30))
        .await?
        .expect("free lease");
    assert!(
        t.store
            .acquire_lease(&src, "INBOX", "fetcher-b", Duration::from_secs(30))
            .await?
            .is_none()
    );
    let mut fenced = batch(&src, "INBOX", 5, vec![one.clone()]);
    fenced.fence = Fence::Token(lease.token);
    t.store.write(&fenced).await?;

    // fetcher-a stalls; its lease lapses and fetcher-b takes the folder.
    assert!(
        t.store
            .renew_lease(&lease, Duration::from_millis(20))
            .await?
    );
    let taken = threatmail_testkit::net::wait_for(
        "the lease to pass to fetcher-b",
        Duration::from_secs(5),
        || {
            let store = t.store.clone();
            let src = src.clone();
            async move {
                store
                    .acquire_lease(&src, "INBOX", "fetcher-b", Duration::from_secs(30))
                    .await
                    .ok()
                    .flatten()
            }
        },
    )
    .await?;
    assert!(taken.token > lease.token, "tokens only grow");

    let mut stale = batch(&src, "INBOX", 5, vec![two.clone()]);
    stale.fence = Fence::Token(lease.token);
    match t.store.write(&stale).await {
        Err(StoreError::StaleFence { token, held, .. }) => {
            assert_eq!(token, lease.token);
            assert_eq!(held, format!("{}:fetcher-b", taken.token));
        }
        other => panic!("a stale token wrote: {other:?}"),
    }
    assert_eq!(t.store.count(&src).await?, 1);
    assert_eq!(
        t.store.checkpoint(&src, "INBOX").await?,
        Some(Checkpoint {
            uidvalidity: 5,
            last_uid: 1
        })
    );
    assert!(
        !t.store.renew_lease(&lease, Duration::from_secs(1)).await?,
        "a lost lease is not renewed"
    );
    assert!(
        !t.store.release_lease(&lease).await?,
        "a lost lease is not released"
    );

    // The new holder writes; after releasing, its token is stale too.
    stale.fence = Fence::Token(taken.token);
    t.store.write(&stale).await?;
    assert_eq!(t.store.count(&src).await?, 2);
    assert!(t.store.release_lease(&taken).await?);
    let mut after_release = batch(&src, "INBOX", 5, vec![]);
    after_release.fence = Fence::Token(taken.token);
    after_release.checkpoint_uid = Some(9);
    assert!(matches!(
        t.store.write(&after_release).await,
        Err(StoreError::StaleFence { ref held, .. }) if held == "none"
    ));
    Ok(())
}

#[tokio::test]
async fn checkpoints_only_advance_within_a_uidvalidity_and_skips_are_recorded() -> anyhow::Result<()>
{
    let t = TestStore::start().await?;
    let src = source("cp");
    let write = |uidvalidity: u32, checkpoint_uid: Option<u32>, items: Vec<BatchItem>| WriteBatch {
        source_id: src.clone(),
        folder: "INBOX".into(),
        uidvalidity,
        fence: Fence::Unfenced,
        items,
        checkpoint_uid,
    };
    t.store.write(&write(9, Some(10), vec![])).await?;
    let back = t.store.write(&write(9, Some(4), vec![])).await?;
    assert_eq!(
        back.checkpoint,
        Some(Checkpoint {
            uidvalidity: 9,
            last_uid: 10
        })
    );
    let reset = t.store.write(&write(10, Some(2), vec![])).await?;
    assert_eq!(
        reset.checkpoint,
        Some(Checkpoint {
            uidvalidity: 10,
            last_uid: 2
        })
    );
    let skipped = t
        .store
        .write(&write(
            10,
            Some(3),
            vec![BatchItem::Skipped {
                uid: 3,
                size: 80_000_000,
                reason: "over the 50 MB limit".into(),
            }],
        ))
        .await?;
    assert_eq!(skipped.items, vec![ItemOutcome::Skipped { uid: 3 }]);
    assert_eq!(
        skipped.checkpoint,
        Some(Checkpoint {
            uidvalidity: 10,
            last_uid: 3
        })
    );
    assert_eq!(
        t.store.skipped(&src, "INBOX").await?,
        vec![(10, 3, 80_000_000, "over the 50 MB limit".to_owned())]
    );
    assert_eq!(t.store.count(&src).await?, 0);
    Ok(())
}

/// Takes `src`'s INBOX lease and writes its checkpoint (UIDVALIDITY 7, UID 20) under it.
async fn checkpoint_at_20(
    t: &TestStore,
    src: &threatmail_source::SourceId,
) -> anyhow::Result<threatmail_store::Lease> {
    let lease = t
        .store
        .acquire_lease(src, "INBOX", "fetcher-a", Duration::from_secs(30))
        .await?
        .expect("free lease");
    let mut write = batch(src, "INBOX", 7, vec![]);
    write.fence = Fence::Token(lease.token);
    write.checkpoint_uid = Some(20);
    t.store.write(&write).await?;
    Ok(lease)
}

/// How far the action after processing went: written only under the held lease, only
/// forward for one action and UIDVALIDITY, replaced for another, and beside the checkpoint
/// without disturbing it.
#[tokio::test]
async fn actions_done_moves_forward_under_the_lease_only() -> anyhow::Result<()> {
    let t = TestStore::start().await?;
    let src = source("acted");
    let done = |uidvalidity: u32, action: &str, through_uid: u32| ActionsDone {
        uidvalidity,
        action: action.to_owned(),
        through_uid,
    };
    assert_eq!(t.store.actions_done(&src, "INBOX").await?, None);
    let lease = checkpoint_at_20(&t, &src).await?;

    assert!(
        t.store
            .record_actions_done(&lease, &done(7, "seen", 10))
            .await?
    );
    assert!(
        t.store
            .record_actions_done(&lease, &done(7, "seen", 4))
            .await?
    );
    assert_eq!(
        t.store.actions_done(&src, "INBOX").await?,
        Some(done(7, "seen", 10)),
        "never backwards"
    );
    assert!(
        t.store
            .record_actions_done(&lease, &done(7, "move:Done", 3))
            .await?
    );
    assert_eq!(
        t.store.actions_done(&src, "INBOX").await?,
        Some(done(7, "move:Done", 3)),
        "another action starts its own record"
    );
    assert!(
        t.store
            .record_actions_done(&lease, &done(8, "move:Done", 1))
            .await?
    );
    assert_eq!(
        t.store.actions_done(&src, "INBOX").await?,
        Some(done(8, "move:Done", 1)),
        "so does another UIDVALIDITY"
    );
    assert_eq!(
        t.store.checkpoint(&src, "INBOX").await?,
        Some(Checkpoint {
            uidvalidity: 7,
            last_uid: 20
        }),
        "the checkpoint is untouched"
    );

    assert!(t.store.release_lease(&lease).await?);
    assert!(
        !t.store
            .record_actions_done(&lease, &done(8, "move:Done", 30))
            .await?,
        "a lease no longer held writes nothing"
    );
    assert_eq!(
        t.store.actions_done(&src, "INBOX").await?,
        Some(done(8, "move:Done", 1))
    );
    Ok(())
}

/// A checkpoint is claimed for the mailbox a sync logs in to: one written before mailboxes
/// were recorded is kept, the same mailbox keeps it, another mailbox drops it (with how
/// far actions went and the skipped messages), and a lease no longer held changes nothing.
#[tokio::test]
async fn a_checkpoint_is_kept_for_its_mailbox_only() -> anyhow::Result<()> {
    let t = TestStore::start().await?;
    let src = source("claimed");
    let lease = checkpoint_at_20(&t, &src).await?;
    let at_20 = Some(Checkpoint {
        uidvalidity: 7,
        last_uid: 20,
    });

    // Written before any mailbox was recorded: taken as the current mailbox's.
    assert!(
        !t.store
            .claim_checkpoint(&lease, "a@corp.example@imap:993")
            .await?
    );
    assert_eq!(t.store.checkpoint(&src, "INBOX").await?, at_20);
    assert!(
        !t.store
            .claim_checkpoint(&lease, "a@corp.example@imap:993")
            .await?
    );
    assert_eq!(t.store.checkpoint(&src, "INBOX").await?, at_20);

    assert!(
        t.store
            .claim_checkpoint(&lease, "b@corp.example@imap:993")
            .await?
    );
    assert_eq!(t.store.checkpoint(&src, "INBOX").await?, None);
    assert!(
        !t.store
            .claim_checkpoint(&lease, "b@corp.example@imap:993")
            .await?
    );

    assert!(t.store.release_lease(&lease).await?);
    assert!(matches!(
        t.store
            .claim_checkpoint(&lease, "a@corp.example@imap:993")
            .await,
        Err(StoreError::StaleFence { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn analyst_state_survives_re_ingest() -> anyhow::Result<()> {
    let t = TestStore::start().await?;
    let src = source("analyst");
    let message = mail(
        1,
        "s@test",
        "Wed, 1 May 2024 10:00:00 +0000",
        "a@evil.example",
        "hello",
        "x",
    );
    let outcome = t
        .store
        .write(&batch(&src, "INBOX", 1, vec![message.clone()]))
        .await?;
    let record = outcome.items[0].message().cloned().expect("stored");
    let change = StateChange {
        read: Some(true),
        starred: Some(true),
        reviewed: Some(true),
        comment: Some("credential phish, blocked the domain".into()),
    };
    let state = t
        .store
        .set_analyst_state(&record, &change, "API key k1")
        .await?
        .expect("exists");
    assert!(state.read && state.starred && state.reviewed);

    // Re-ingest: the same bytes again, in another folder, and after a UIDVALIDITY change.
    t.store
        .write(&batch(&src, "INBOX", 1, vec![message.clone()]))
        .await?;
    t.store
        .write(&batch(&src, "Archive", 1, vec![message.clone()]))
        .await?;
    t.store
        .write(&batch(&src, "INBOX", 2, vec![message]))
        .await?;
    let after = t.store.get(&record).await?.expect("stored");
    assert_eq!(after.state, state);
    assert_eq!(
        after.state.comment.as_deref(),
        Some("credential phish, blocked the domain")
    );
    assert_eq!(after.state.updated_by, "API key k1");
    assert_eq!(after.locations.len(), 3);

    let partial = StateChange {
        starred: Some(false),
        ..StateChange::default()
    };
    let changed = t
        .store
        .set_analyst_state(&record, &partial, "API key k2")
        .await?
        .expect("exists");
    assert!(changed.read && !changed.starred && changed.reviewed);
    let missing = MessageRef {
        source_id: src.clone(),
        id: threatmail_store::MessageId::from_hex(&"0".repeat(32))?,
    };
    assert_eq!(
        t.store.set_analyst_state(&missing, &partial, "x").await?,
        None
    );
    Ok(())
}
