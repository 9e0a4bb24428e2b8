//! A mailbox service on its own Redis and blob directory, with API keys and sources, for
//! the service's tests. The corpus is read in place, never copied, and only parsed.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use secrecy::ExposeSecret as _;
use threatmail_auth::{CredentialInterceptor, RedisApiKeys, Role, RoleSet};
use threatmail_proto::v1::mailbox_client::MailboxClient;
use threatmail_source::{SourceId, SourceRecord, SourceStore};
use threatmail_store::{
    BatchItem, BlobStore, BlobStoreConfig, Fence, IncomingMessage, Store, WriteBatch,
};
use threatmail_testkit::redis::RedisServer;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub(crate) type Client = MailboxClient<InterceptedService<Channel, CredentialInterceptor>>;

/// The service, its Redis, its blobs and three API keys.
pub(crate) struct Stack {
    pub(crate) redis: RedisServer,
    pub(crate) blobs: tempfile::TempDir,
    pub(crate) store: Store,
    pub(crate) addr: SocketAddr,
    pub(crate) viewer: String,
    pub(crate) updater: String,
    pub(crate) nobody: String,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Stack {
    pub(crate) async fn start() -> anyhow::Result<Self> {
        let redis = RedisServer::start()?;
        let blobs = tempfile::tempdir()?;
        let conn = redis.connection_manager().await?;
        let store = Store::new(conn.clone(), BlobStore::directory(blobs.path()));
        let keys = RedisApiKeys::new(conn);
        let viewer = keys
            .create("analyst", RoleSet::of(&[Role::View]), 0)
            .await?;
        let updater = keys
            .create("lead", RoleSet::of(&[Role::View, Role::Update]), 0)
            .await?;
        let nobody = keys
            .create("creator", RoleSet::of(&[Role::Create]), 0)
            .await?;
        let config = threatmail_mailbox::Config {
            redis_url: redis.url(),
            blobs: BlobStoreConfig::Directory {
                path: blobs.path().to_path_buf(),
            },
            ..threatmail_mailbox::Config::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(threatmail_mailbox::run(config, listener, shutdown.clone()));
        Ok(Stack {
            redis,
            blobs,
            store,
            addr,
            viewer: viewer.key.expose_secret().to_owned(),
            updater: updater.key.expose_secret().to_owned(),
            nobody: nobody.key.expose_secret().to_owned(),
            shutdown,
            server,
        })
    }

    /// A client presenting `key`.
    pub(crate) async fn client(&self, key: &str) -> anyhow::Result<Client> {
        let channel = threatmail_testkit::net::wait_for(
            "the mailbox service to accept connections",
            std::time::Duration::from_secs(10),
            || async {
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                    .ok()?
                    .connect()
                    .await
                    .ok()
            },
        )
        .await?;
        Ok(
            MailboxClient::with_interceptor(channel, CredentialInterceptor::bearer(key)?)
                .max_decoding_message_size(256 << 20),
        )
    }

    /// A client without a credential.
    pub(crate) async fn anonymous(&self) -> anyhow::Result<MailboxClient<Channel>> {
        Ok(MailboxClient::connect(format!("http://{}", self.addr)).await?)
    }

    /// Stores a source record.
    pub(crate) async fn add_source(
        &self,
        id: &str,
        name: &str,
        tags: &[&str],
        allow_list: &[&str],
        default_tlp: Option<&str>,
    ) -> anyhow::Result<SourceId> {
        let source_id = SourceId::parse(id)?;
        let mut record = SourceRecord::new_oauth(
            source_id.clone(),
            name,
            "soc-phish@corp.example",
            "corp.example",
            "11111111-2222-3333-4444-555555555555",
            1_714_550_400,
        );
        record.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        record.sender_allow_list = allow_list.iter().map(|a| (*a).to_owned()).collect();
        record.default_tlp = default_tlp.map(str::to_owned);
        SourceStore::new(self.redis.connection_manager().await?)
            .insert(&record)
            .await?;
        Ok(source_id)
    }

    /// Writes `messages` to `folder` of `source`.
    pub(crate) async fn write(
        &self,
        source: &SourceId,
        folder: &str,
        messages: Vec<IncomingMessage>,
    ) -> anyhow::Result<threatmail_store::WriteOutcome> {
        let last = messages.iter().map(|m| m.uid).max();
        Ok(self
            .store
            .write(&WriteBatch {
                source_id: source.clone(),
                folder: folder.to_owned(),
                uidvalidity: 1,
                fence: Fence::Unfenced,
                items: messages.into_iter().map(BatchItem::from).collect(),
                checkpoint_uid: last,
            })
            .await?)
    }

    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.server.await??;
        Ok(())
    }
}

/// A small real message.
pub(crate) fn mail(
    uid: u32,
    message_id: &str,
    from: &str,
    subject: &str,
    body: &str,
) -> IncomingMessage {
    let raw = format!(
        "Message-ID: <{message_id}>\r\nDate: Wed, 1 May 2024 10:00:00 +0000\r\nFrom: {from}\r\nTo: soc@corp.example\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    );
    IncomingMessage::parse(uid, raw.into_bytes())
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
    assert!(
        !in_ci(),
        "corpus not found at {} (set THREATMAIL_CORPUS); required when CI=true",
        dir.display()
    );
    eprintln!("notice: corpus not found at {}; skipping", dir.display());
    None
}

pub(crate) fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The phishing corpus, parsed, UIDs from 1 in file-name order.
pub(crate) fn phishing() -> Option<Vec<IncomingMessage>> {
    let dir = corpus_dir()?.join("phishing");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("failed to read {}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    Some(
        files
            .iter()
            .enumerate()
            .map(|(n, path)| {
                let raw = std::fs::read(path)
                    .unwrap_or_else(|e| panic!("failed to read {}: {e}", path.display()));
                IncomingMessage::parse(n as u32 + 1, raw)
            })
            .collect(),
    )
}

/// The `stix2_validator` of the venv `scripts/test` makes (`THREATMAIL_STIX_VALIDATOR`, else
/// `target/py-venv/bin/stix2_validator`), or `None` (after a notice) outside CI.
pub(crate) fn stix_validator() -> Option<PathBuf> {
    let path = match std::env::var_os("THREATMAIL_STIX_VALIDATOR") {
        Some(path) => PathBuf::from(path),
        None => {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/py-venv/bin/stix2_validator")
        }
    };
    if path.is_file() {
        return Some(path);
    }
    assert!(
        !in_ci(),
        "stix2_validator not found at {} (scripts/test makes it; or set THREATMAIL_STIX_VALIDATOR); required when CI=true",
        path.display()
    );
    eprintln!(
        "notice: stix2_validator not found at {}; skipping (run scripts/test, or: python3 -m venv target/py-venv && target/py-venv/bin/pip install stix2-validator==3.3.2)",
        path.display()
    );
    None
}
