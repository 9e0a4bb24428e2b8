//! The blob store: a real directory and an `object_store` store (the in-memory one stands
//! in for S3; both go through the same `ObjectStore` code path).

use std::sync::Arc;

use anyhow::Context as _;

use threatmail_store::identity::sha256_hex;
use threatmail_store::{BlobError, BlobStore};

async fn round_trip(store: &BlobStore) -> anyhow::Result<()> {
    let raw = b"Subject: hi\r\n\r\nbody\r\n".to_vec();
    let sha = sha256_hex(&raw);
    assert_eq!(store.get(&sha).await?, None);
    store.put(&sha, &raw).await?;
    store.put(&sha, &raw).await?;
    assert_eq!(store.get(&sha).await?, Some(raw));
    assert!(matches!(
        store.put("../x", b"x").await,
        Err(BlobError::InvalidName(_))
    ));
    Ok(())
}

#[tokio::test]
async fn a_directory_store_writes_each_blob_once_and_checks_it_on_read() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = BlobStore::directory(dir.path());
    round_trip(&store).await?;

    let raw = b"another message".to_vec();
    let sha = sha256_hex(&raw);
    store.put(&sha, &raw).await?;
    let path = dir.path().join("sha256").join(&sha[..2]).join(&sha);
    assert_eq!(std::fs::read(&path)?, raw);
    // Nothing but the blob is left in its folder: no temp file.
    let names: Vec<_> = std::fs::read_dir(path.parent().context("a blob has a folder")?)?
        .map(|entry| entry.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    assert_eq!(names, [std::ffi::OsString::from(&sha)]);
    std::fs::write(&path, b"tampered")?;
    assert!(matches!(
        store.get(&sha).await,
        Err(BlobError::Corrupt { .. })
    ));
    Ok(())
}

#[tokio::test]
async fn an_object_store_holds_blobs_under_the_prefix() -> anyhow::Result<()> {
    let memory = Arc::new(object_store::memory::InMemory::new());
    let store = BlobStore::object_store(memory.clone(), "tenant-a/");
    round_trip(&store).await?;
    let raw = b"Subject: hi\r\n\r\nbody\r\n";
    let sha = sha256_hex(raw);
    let path = object_store::path::Path::from(format!(
        "tenant-a/sha256/{}/{}/{sha}",
        &sha[..2],
        &sha[2..4]
    ));
    use object_store::ObjectStoreExt as _;
    assert_eq!(memory.get(&path).await?.bytes().await?.as_ref(), raw);
    memory.put(&path, b"tampered".to_vec().into()).await?;
    assert!(matches!(
        store.get(&sha).await,
        Err(BlobError::Corrupt { .. })
    ));
    Ok(())
}
