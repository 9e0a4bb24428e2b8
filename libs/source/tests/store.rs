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
