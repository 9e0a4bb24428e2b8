//! Source records against a real Redis: the layout, insert-once, and nothing in clear.

use secrecy::ExposeSecret as _;
use threatmail_source::store::{self, SourceStore};
use threatmail_source::{Keyring, MasterKey, SecretSlot, SourceId, SourceRecord};
use threatmail_testkit::redis::RedisServer;

#[tokio::test]
async fn inserted_record_reads_back_with_version_and_its_secret_is_sealed() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let sources = SourceStore::new(redis.connection_manager().await?);
    let keyring = Keyring::new(MasterKey::generate("k1")?, Vec::new())?;
    let id = SourceId::new_random();
    let mut record = SourceRecord::new_oauth(
        id.clone(),
        "Phishing",
        "soc-phish@corp.example",
        "corp.example",
        "11111111-2222-3333-4444-555555555555",
        1_767_225_600,
    );
    record.set_secret(
        &keyring,
        SecretSlot::Current,
        &"abc8Q~topsecret".into(),
        None,
    )?;

    assert!(sources.get(&id).await?.is_none());
    let stored = sources.insert(&record).await?;
    assert_eq!(stored.version, 1);
    assert!(matches!(
        sources.insert(&record).await,
        Err(store::StoreError::AlreadyExists { .. })
    ));
    let read = sources.get(&id).await?.expect("the record is there");
    assert_eq!(read, stored);
    let credentials = read.credentials(&keyring)?;
    assert_eq!(
        credentials.secrets[0].value.expose_secret(),
        "abc8Q~topsecret"
    );

    let mut conn = redis.connection_manager().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await?;
    assert_eq!(keys, vec![format!("tm:{{{id}}}:source")]);
    let fields: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await?;
    assert_eq!(fields.len(), 2);
    for (field, value) in fields {
        assert!(
            !value.contains("topsecret"),
            "{field} holds the secret in clear"
        );
    }
    Ok(())
}

fn record(name: &str) -> anyhow::Result<SourceRecord> {
    Ok(SourceRecord::new_oauth(
        SourceId::new_random(),
        name,
        "soc-phish@corp.example",
        "corp.example",
        "11111111-2222-3333-4444-555555555555",
        1_767_225_600,
    ))
}

#[tokio::test]
async fn names_are_unique_in_any_case_and_move_with_renames() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let sources = SourceStore::new(redis.connection_manager().await?);
    let phishing = sources.create(&record("Phishing")?).await?;
    assert_eq!(phishing.version, 1);
    let clash = sources.create(&record("  phishing ")?).await;
    assert!(
        matches!(&clash, Err(store::StoreError::NameTaken { holder, .. }) if holder == phishing.id.as_str()),
        "{clash:?}"
    );
    let intel = sources.create(&record("Intel")?).await?;
    assert_eq!(
        sources
            .list()
            .await?
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        ["Intel", "Phishing"]
    );

    // Renaming onto a taken name is refused and changes nothing.
    let mut renamed = intel.clone();
    renamed.name = "PHISHING".to_owned();
    assert!(matches!(
        sources.update(&renamed, intel.version).await,
        Err(store::StoreError::NameTaken { .. })
    ));
    assert_eq!(sources.get(&intel.id).await?.expect("intel").version, 1);

    // A rename frees the old name at once.
    let mut renamed = phishing.clone();
    renamed.name = "Phish reports".to_owned();
    let renamed = sources.update(&renamed, phishing.version).await?;
    assert_eq!(renamed.version, 2);
    assert_eq!(
        sources.id_by_name("phish REPORTS").await?,
        Some(phishing.id.clone())
    );
    assert_eq!(sources.id_by_name("Phishing").await?, None);
    let reused = sources.create(&record("Phishing")?).await?;

    // A case-only rename keeps the reservation.
    let mut recased = reused.clone();
    recased.name = "PHISHING".to_owned();
    sources.update(&recased, reused.version).await?;
    assert_eq!(
        sources.id_by_name("phishing").await?,
        Some(reused.id.clone())
    );

    // Delete removes every key of the source and frees the name.
    assert!(sources.delete(&reused.id).await?);
    assert!(!sources.delete(&reused.id).await?);
    assert_eq!(sources.id_by_name("phishing").await?, None);
    assert_eq!(sources.list().await?.len(), 2);
    Ok(())
}

#[tokio::test]
async fn a_reservation_left_by_a_crash_is_taken_over_after_the_grace() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let sources = SourceStore::new(redis.connection_manager().await?);
    let mut conn = redis.connection_manager().await?;
    // A create that reserved the name and died before writing its record.
    let _: () = redis::cmd("HSET")
        .arg(store::NAMES_KEY)
        .arg("phishing")
        .arg("dead-source 1000")
        .query_async(&mut conn)
        .await?;
    let created = sources.create(&record("Phishing")?).await?;
    assert_eq!(sources.id_by_name("Phishing").await?, Some(created.id));
    // A fresh one (a create in flight) is respected.
    let _: () = redis::cmd("HSET")
        .arg(store::NAMES_KEY)
        .arg("intel")
        .arg(format!("in-flight {}", i64::MAX / 2))
        .query_async(&mut conn)
        .await?;
    assert!(matches!(
        sources.create(&record("Intel")?).await,
        Err(store::StoreError::NameTaken { .. })
    ));
    // Neither shows up in the list.
    assert_eq!(sources.list().await?.len(), 1);
    Ok(())
}

#[tokio::test]
async fn concurrent_updates_one_wins_the_other_is_told_to_retry() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let sources = SourceStore::new(redis.connection_manager().await?);
    let created = sources.create(&record("Phishing")?).await?;
    let mut a = created.clone();
    a.poll_interval_secs = 60;
    let mut b = created.clone();
    b.tags = vec!["vendor".to_owned()];
    let (ra, rb) = tokio::join!(
        sources.update(&a, created.version),
        sources.update(&b, created.version)
    );
    let (winner, loser) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        other => panic!("exactly one update must win: {other:?}"),
    };
    assert_eq!(winner.version, 2);
    assert!(
        matches!(
            loser,
            store::StoreError::VersionConflict {
                expected: 1,
                current: 2,
                ..
            }
        ),
        "{loser:?}"
    );
    // The loser reads again and reapplies its change: both survive.
    let mut again = sources.get(&created.id).await?.expect("source");
    if again.poll_interval_secs == 60 {
        again.tags = vec!["vendor".to_owned()];
    } else {
        again.poll_interval_secs = 60;
    }
    let version = again.version;
    sources.update(&again, version).await?;
    let last = sources.get(&created.id).await?.expect("source");
    assert_eq!(
        (last.version, last.poll_interval_secs, last.tags),
        (3, 60, vec!["vendor".to_owned()])
    );
    Ok(())
}

#[tokio::test]
async fn folder_selection_and_status_share_the_version_and_go_with_delete() -> anyhow::Result<()> {
    use threatmail_source::{ConnectionState, FolderSelection, FolderStatus};

    let redis = RedisServer::start()?;
    let sources = SourceStore::new(redis.connection_manager().await?);
    let created = sources.create(&record("Phishing")?).await?;
    let selection = vec![FolderSelection {
        raw_name: "&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-".to_owned(),
        display_name: "Фишинг&Спам".to_owned(),
        fetch: true,
    }];
    assert_eq!(
        sources
            .get_with_folders(&created.id)
            .await?
            .expect("source")
            .1,
        Vec::new()
    );
    let version = sources.set_folders(&created.id, 1, &selection).await?;
    assert_eq!(version, 2);
    assert!(matches!(
        sources.set_folders(&created.id, 1, &[]).await,
        Err(store::StoreError::VersionConflict { current: 2, .. })
    ));
    // The record's own update now needs the new version too.
    assert!(sources.update(&created, 1).await.is_err());
    let (read, folders) = sources
        .get_with_folders(&created.id)
        .await?
        .expect("source");
    assert_eq!((read.version, folders), (2, selection.clone()));

    let raw = selection[0].raw_name.clone();
    let mut status = FolderStatus::new(&raw);
    status.last_uid = Some(9);
    status.messages_synced = 9;
    status.connection_state = ConnectionState::Idle;
    sources.write_folder_status(&created.id, &status).await?;
    status.last_uid = None;
    sources.write_folder_status(&created.id, &status).await?;
    let read = sources
        .folder_statuses(&created.id, &[raw.clone(), "INBOX".to_owned()])
        .await?;
    assert_eq!(read, vec![status, FolderStatus::new("INBOX")]);

    assert!(matches!(
        sources.set_folders(&SourceId::new_random(), 1, &[]).await,
        Err(store::StoreError::NotFound { .. })
    ));
    sources.delete(&created.id).await?;
    let mut conn = redis.connection_manager().await?;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await?;
    assert!(keys.is_empty(), "left behind: {keys:?}");
    Ok(())
}

/// The fleet: a report holds for its lapse time and no longer, a clean stop ends it at once,
/// and the last one to stop is named.
#[tokio::test]
async fn fetcher_reports_lapse_by_themselves_and_the_last_is_named() -> anyhow::Result<()> {
    use std::time::Duration;
    let redis = RedisServer::start()?;
    let sources = SourceStore::new(redis.connection_manager().await?);
    assert_eq!(sources.fleet().await?, threatmail_source::Fleet::default());

    sources
        .report_fetcher("fetcher-b", Duration::from_secs(60))
        .await?;
    sources
        .report_fetcher("fetcher-a", Duration::from_millis(300))
        .await?;
    assert_eq!(sources.fleet().await?.running, ["fetcher-a", "fetcher-b"]);

    // fetcher-a stops reporting: it lapses by itself.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fleet = sources.fleet().await?;
    assert_eq!(fleet.running, ["fetcher-b"]);
    assert_eq!(
        fleet.last_lapsed.as_ref().map(|(name, _)| name.as_str()),
        Some("fetcher-a")
    );

    // fetcher-b stops cleanly: none runs, and it is the last one.
    sources.report_fetcher_stopped("fetcher-b").await?;
    let fleet = sources.fleet().await?;
    assert!(fleet.running.is_empty(), "{fleet:?}");
    let (name, at_ms) = fleet.last_lapsed.expect("a lapsed report");
    assert_eq!(name, "fetcher-b");
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    assert!(
        (now_ms - 5_000..=now_ms).contains(&at_ms),
        "{at_ms} vs {now_ms}"
    );

    // A report again: running again.
    sources
        .report_fetcher("fetcher-b", Duration::from_secs(60))
        .await?;
    assert_eq!(sources.fleet().await?.running, ["fetcher-b"]);
    Ok(())
}
