//! Shared helpers of the store's tests: a store on a throw-away Redis and blob directory,
//! the corpus, and synthetic messages.
//!
//! The corpus (`../shared/corpus`, live malicious mail) is read in place and never copied;
//! tests only parse its bytes. Without it a test fails when `CI=true` and prints a notice
//! and passes otherwise.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use threatmail_parse::{
    Address, Indicator, IndicatorKind, Location, MessageRecord, ParsedMessage, Source,
};
use threatmail_source::SourceId;
use threatmail_store::{BatchItem, BlobStore, Fence, IncomingMessage, Store, WriteBatch};
use threatmail_testkit::redis::RedisServer;

/// A store on its own Redis and blob directory; both go away on drop.
pub(crate) struct TestStore {
    pub(crate) store: Store,
    pub(crate) redis: RedisServer,
    pub(crate) blobs: tempfile::TempDir,
}

impl TestStore {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let redis = RedisServer::start()?;
        let blobs = tempfile::tempdir()?;
        let store = Store::new(
            redis.connection_manager().await?,
            BlobStore::directory(blobs.path()),
        );
        Ok(TestStore {
            store,
            redis,
            blobs,
        })
    }

    /// A store whose blobs stay in memory (`object_store`'s in-memory store), for bulk
    /// tests about Redis: a directory of 10,000 blobs costs more to delete than the test.
    pub(crate) async fn start_with_memory_blobs() -> anyhow::Result<Self> {
        let redis = RedisServer::start()?;
        let blobs = tempfile::tempdir()?;
        let store = Store::new(
            redis.connection_manager().await?,
            BlobStore::object_store(
                std::sync::Arc::new(object_store::memory::InMemory::new()),
                "",
            ),
        );
        Ok(TestStore {
            store,
            redis,
            blobs,
        })
    }

    /// Another handle on the same Redis and blobs, as a restarted process has.
    pub(crate) async fn reopen(&self) -> anyhow::Result<Store> {
        Ok(Store::new(
            self.redis.connection_manager().await?,
            BlobStore::directory(self.blobs.path()),
        ))
    }

    /// A raw Redis connection, for looking at keys directly.
    pub(crate) async fn redis(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        self.redis.connection_manager().await
    }
}

pub(crate) fn source(id: &str) -> SourceId {
    SourceId::parse(id).expect("test source ids are valid")
}

/// An unfenced batch of `items` for `folder`, checkpoint at the last UID.
pub(crate) fn batch(
    source: &SourceId,
    folder: &str,
    uidvalidity: u32,
    items: Vec<IncomingMessage>,
) -> WriteBatch {
    let last = items.iter().map(|m| m.uid).max();
    WriteBatch {
        source_id: source.clone(),
        folder: folder.to_owned(),
        uidvalidity,
        fence: Fence::Unfenced,
        items: items.into_iter().map(BatchItem::from).collect(),
        checkpoint_uid: last,
    }
}

/// The corpus root, or `None` (after a notice) when it is missing outside CI.
pub(crate) fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("THREATMAIL_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !in_ci,
        "corpus not found at {} (set THREATMAIL_CORPUS); required when CI=true",
        dir.display()
    );
    eprintln!(
        "notice: corpus not found at {}; skipping (set THREATMAIL_CORPUS)",
        dir.display()
    );
    None
}

/// The phishing corpus as (file name, bytes), sorted by name.
pub(crate) fn phishing() -> Option<Vec<(String, Vec<u8>)>> {
    let dir = corpus_dir()?.join("phishing");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .eml files in {}", dir.display());
    Some(
        files
            .into_iter()
            .map(|path| {
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                (name, bytes)
            })
            .collect(),
    )
}

/// A small real message, parsed by the real parser.
pub(crate) fn mail(
    uid: u32,
    message_id: &str,
    date: &str,
    from: &str,
    subject: &str,
    body: &str,
) -> IncomingMessage {
    let raw = format!(
        "Message-ID: <{message_id}>\r\nDate: {date}\r\nFrom: {from}\r\nTo: soc@corp.example\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    );
    IncomingMessage::parse(uid, raw.into_bytes())
}

/// A message built without the parser (for bulk tests): a unique Message-ID, a date
/// `ms` (Unix ms), one URL indicator.
pub(crate) fn synthetic(uid: u32, n: usize, ms: i64) -> IncomingMessage {
    let message_id = format!("bulk-{n}@test.example");
    let raw = format!(
        "Message-ID: <{message_id}>\r\nSubject: bulk {n}\r\n\r\nhttp://bulk-{n}.example/\r\n"
    )
    .into_bytes();
    let parsed = ParsedMessage {
        size: raw.len() as u64,
        message: MessageRecord {
            message_id: Some(message_id),
            date: Some(threatmail_store::time::format_rfc3339_ms(ms).replace(".000", "")),
            from: vec![Address {
                name: None,
                address: Some(format!("sender{}@bulk.example", n % 7)),
            }],
            subject: Some(format!("bulk {n}")),
            ..MessageRecord::default()
        },
        structure: "text/plain".to_owned(),
        indicators: vec![Indicator {
            kind: IndicatorKind::Url,
            value: format!("http://bulk-{n}.example/"),
            unicode: None,
            defanged: false,
            occurrences: 1,
            locations: vec![Location {
                depth: 0,
                part: "1".to_owned(),
                source: Source::Text,
                defanged: false,
                derived_from: None,
            }],
        }],
        tlp: None,
        tlp_markings: Vec::new(),
        link_mismatches: Vec::new(),
        file_names: Vec::new(),
        warnings: Vec::new(),
    };
    IncomingMessage { uid, raw, parsed }
}
