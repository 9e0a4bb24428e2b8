//! Imports `.eml` files into a store, as one folder of one source (no lease: the importer
//! is the folder's only writer), for trying the mailbox service and the CLI by hand.
//!
//! ```text
//! cargo run -p threatmail-store --example import -- \
//!     --redis redis://127.0.0.1:6379/ --blobs /tmp/blobs --source demo --folder INBOX FILE.eml…
//! ```

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use threatmail_source::SourceId;
use threatmail_store::{BatchItem, BlobStore, Fence, IncomingMessage, Store, WriteBatch};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut redis = "redis://127.0.0.1:6379/".to_owned();
    let mut blobs = PathBuf::from("data/blobs");
    let mut source = "demo".to_owned();
    let mut folder = "INBOX".to_owned();
    let mut files = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--redis" => redis = value()?,
            "--blobs" => blobs = PathBuf::from(value()?),
            "--source" => source = value()?,
            "--folder" => folder = value()?,
            other if other.starts_with("--") => bail!("unknown option {other}"),
            _ => files.push(PathBuf::from(arg)),
        }
    }
    let conn = redis::Client::open(redis.as_str())?
        .get_connection_manager()
        .await
        .with_context(|| format!("failed to connect to {redis}"))?;
    let store = Store::new(conn, BlobStore::directory(&blobs));
    let source_id = SourceId::parse(&source)?;
    let uidvalidity = 1;
    let start = store
        .checkpoint(&source_id, &folder)
        .await?
        .filter(|c| c.uidvalidity == uidvalidity)
        .map_or(0, |c| c.last_uid);
    let (mut new, mut known) = (0, 0);
    for (n, chunk) in files.chunks(50).enumerate() {
        let items: Vec<BatchItem> = chunk
            .iter()
            .enumerate()
            .map(|(k, path)| {
                let raw = std::fs::read(path)
                    .with_context(|| format!("failed to read {}", path.display()))?;
                let uid = start + (n * 50 + k) as u32 + 1;
                Ok(BatchItem::from(IncomingMessage::parse(uid, raw)))
            })
            .collect::<anyhow::Result<_>>()?;
        let last = start + (n * 50 + chunk.len()) as u32;
        let outcome = store
            .write(&WriteBatch {
                source_id: source_id.clone(),
                folder: folder.clone(),
                uidvalidity,
                fence: Fence::Unfenced,
                items,
                checkpoint_uid: Some(last),
            })
            .await?;
        for item in &outcome.items {
            match item {
                threatmail_store::ItemOutcome::Stored(_) => new += 1,
                _ => known += 1,
            }
        }
    }
    println!(
        "{new} new, {known} already stored; source {source} now holds {} records",
        store.count(&source_id).await?
    );
    Ok(())
}
