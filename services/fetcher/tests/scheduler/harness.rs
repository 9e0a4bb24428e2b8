//! A fetcher with everything it talks to, for real and in-process: the local stack (Redis,
//! the Entra stand-in, Dovecot judging tokens like Exchange), the token broker through its
//! own `run`, and the fetcher through its own `run` with short polls and leases. Sources
//! are written to Redis as the registry writes them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;
use threatmail_auth::ServiceCredential;
use threatmail_fetcher::imap::Session;
use threatmail_fetcher::imap::connect::{Endpoint, connect, tls_config};
use threatmail_fetcher::imap::login::{Credentials, login};
use threatmail_source::{
    FolderSelection, FolderStatus, Keyring, MasterKey, SecretSlot, SourceId, SourceRecord,
    SourceStore,
};
use threatmail_store::{BlobStore, Store};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::TenantFixture;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A registry client presenting an API key.
pub(crate) type RegistryClient = threatmail_proto::v1::registry_client::RegistryClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        threatmail_auth::CredentialInterceptor,
    >,
>;

/// How long a test waits for the fetcher to converge.
pub(crate) const CONVERGE: Duration = Duration::from_secs(60);

/// Everything running.
pub(crate) struct Harness {
    pub(crate) stack: LocalStack,
    pub(crate) keyring: Keyring,
    master_key: SecretString,
    fetcher_credential: ServiceCredential,
    pub(crate) broker_addr: SocketAddr,
    pub(crate) sources: SourceStore,
    pub(crate) store: Store,
    pub(crate) blob_dir: tempfile::TempDir,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Harness {
    /// The stack with `fixture` and the broker (no fetcher yet).
    pub(crate) async fn start(fixture: TenantFixture) -> anyhow::Result<Self> {
        let stack = LocalStack::start(fixture).await?;
        let master = MasterKey::generate("k1")?;
        let master_key = master.to_line();
        let keyring = Keyring::new(master, Vec::new())?;
        let fetcher_credential = ServiceCredential::generate("fetcher")?;
        let shutdown = CancellationToken::new();

        let mut broker = threatmail_token_broker::Config {
            redis_url: stack.redis.url(),
            ..Default::default()
        };
        broker.master_key.key = Some(master_key.clone());
        broker
            .auth
            .services
            .insert("fetcher".to_owned(), fetcher_credential.hash());
        broker.entra.ca_file = Some(stack.ca_cert_path());
        broker.entra.global.authority = Some(stack.entra.authority());
        // Forced refreshes are honoured at once (no grace), so a test sees each one.
        broker.cache.force_refresh_grace = Duration::ZERO;
        // Tokens of a few seconds (tests that shorten them) are still handed out.
        broker.cache.floor = Duration::from_secs(1);
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let broker_addr = listener.local_addr()?;
        let tasks = vec![tokio::spawn(threatmail_token_broker::run(
            broker,
            listener,
            shutdown.child_token(),
        ))];
        threatmail_testkit::net::wait_for_port(broker_addr, Duration::from_secs(10)).await?;

        let conn = stack.redis.connection_manager().await?;
        let blob_dir = tempfile::tempdir()?;
        Ok(Harness {
            sources: SourceStore::new(conn.clone()),
            store: Store::new(conn, BlobStore::directory(blob_dir.path())),
            stack,
            keyring,
            master_key,
            fetcher_credential,
            broker_addr,
            blob_dir,
            shutdown,
            tasks,
        })
    }

    /// A fetcher configuration for this stack: polls every 200 ms, leases of 3 s.
    pub(crate) fn fetcher_config(&self, instance: &str) -> threatmail_fetcher::Config {
        let mut config = threatmail_fetcher::Config {
            redis_url: Some(self.stack.redis.url()),
            broker_url: format!("http://{}", self.broker_addr),
            broker_timeout: Duration::from_secs(10),
            blobs: threatmail_store::BlobStoreConfig::Directory {
                path: self.blob_dir.path().to_owned(),
            },
            ..Default::default()
        };
        config.imap.ca_file = Some(self.stack.ca_cert_path());
        config.imap.connect_timeout = Duration::from_secs(10);
        config.imap.command_timeout = Duration::from_secs(20);
        config.auth.credential = Some(SecretString::from(
            self.fetcher_credential.expose().to_owned(),
        ));
        config.master_key.key = Some(self.master_key.clone());
        let sync = &mut config.sync;
        sync.poll_interval = Duration::from_millis(200);
        sync.lease_ttl = Duration::from_secs(3);
        sync.renew_interval = Duration::from_millis(500);
        sync.batch_messages = 25;
        sync.retry_min = Duration::from_millis(200);
        sync.retry_max = Duration::from_millis(800);
        sync.connections_per_mailbox = 2;
        sync.instance_name = Some(instance.to_owned());
        config
    }

    /// Starts a fetcher with `config`; it stops with the harness or when `stop` is
    /// cancelled.
    pub(crate) async fn spawn_fetcher(
        &mut self,
        config: threatmail_fetcher::Config,
    ) -> anyhow::Result<CancellationToken> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let stop = self.shutdown.child_token();
        self.tasks.push(tokio::spawn(threatmail_fetcher::run(
            config,
            listener,
            stop.clone(),
        )));
        Ok(stop)
    }

    /// Stores an `ms-oauth2` source for the fixture's app on `mailbox`, served at `addr`
    /// over TLS, polled at every scheduler poll, with `folders` selected (raw names).
    pub(crate) async fn add_source(
        &self,
        name: &str,
        mailbox: &str,
        addr: SocketAddr,
        folders: &[&str],
    ) -> anyhow::Result<SourceId> {
        let (tenant, app, secret) = self.stack.tenant().read(|f| {
            let app = f.primary_app().cloned().expect("app");
            (
                f.primary_tenant().map(|t| t.id.clone()).unwrap_or_default(),
                app.client_id.clone(),
                SecretString::from(app.secrets[0].value.expose().to_owned()),
            )
        });
        let id = SourceId::new_random();
        let mut record = SourceRecord::new_oauth(id.clone(), name, mailbox, &tenant, &app, 0);
        record.set_secret(&self.keyring, SecretSlot::Current, &secret, None)?;
        record.host = Some(addr.ip().to_string());
        record.port = addr.port();
        record.poll_interval_secs = 0;
        let stored = self.sources.create(&record).await?;
        self.select(&id, stored.version, folders, &[]).await?;
        Ok(id)
    }

    /// Sets the selection: `on` fetched, `off` listed but not fetched.
    pub(crate) async fn select(
        &self,
        id: &SourceId,
        version: u64,
        on: &[&str],
        off: &[&str],
    ) -> anyhow::Result<u64> {
        let selection: Vec<FolderSelection> = on
            .iter()
            .map(|name| (name, true))
            .chain(off.iter().map(|name| (name, false)))
            .map(|(name, fetch)| FolderSelection {
                raw_name: (*name).to_owned(),
                display_name: (*name).to_owned(),
                fetch,
            })
            .collect();
        Ok(self.sources.set_folders(id, version, &selection).await?)
    }

    /// The source's current version.
    pub(crate) async fn version(&self, id: &SourceId) -> anyhow::Result<u64> {
        Ok(self.sources.get(id).await?.expect("source").version)
    }

    /// A folder's status as the registry's GetStatus reads it.
    pub(crate) async fn status(&self, id: &SourceId, folder: &str) -> anyhow::Result<FolderStatus> {
        let mut statuses = self
            .sources
            .folder_statuses(id, &[folder.to_owned()])
            .await?;
        Ok(statuses.remove(0))
    }

    /// Starts a registry on this stack's Redis (with the same master key) and returns a
    /// client of it presenting an API key with View.
    pub(crate) async fn registry(&mut self) -> anyhow::Result<RegistryClient> {
        use secrecy::ExposeSecret as _;
        let mut config = threatmail_registry::Config {
            redis_url: self.stack.redis.url(),
            ..Default::default()
        };
        config.master_key.key = Some(self.master_key.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        self.tasks.push(tokio::spawn(threatmail_registry::run(
            config,
            listener,
            self.shutdown.child_token(),
        )));
        let keys = threatmail_auth::RedisApiKeys::new(self.stack.redis.connection_manager().await?);
        let key = keys
            .create(
                "status check",
                threatmail_auth::RoleSet::of(&[threatmail_auth::Role::View]),
                0,
            )
            .await?;
        threatmail_testkit::net::wait_for_port(addr, Duration::from_secs(10)).await?;
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        Ok(
            threatmail_proto::v1::registry_client::RegistryClient::with_interceptor(
                channel,
                threatmail_auth::CredentialInterceptor::bearer(key.key.expose_secret())?,
            ),
        )
    }

    /// Waits until the registry's `GetStatus` shows `folder` as the fetcher wrote it (the
    /// status read just before and just after the call agree) in a state `done` accepts;
    /// returns both.
    pub(crate) async fn shown_status(
        &self,
        registry: &RegistryClient,
        id: &SourceId,
        folder: &str,
        done: impl Fn(&FolderStatus) -> bool,
    ) -> anyhow::Result<(FolderStatus, threatmail_proto::v1::FolderStatus)> {
        threatmail_testkit::net::wait_for("GetStatus to show the status", CONVERGE, || {
            let mut registry = registry.clone();
            let done = &done;
            async move {
                let before = self.status(id, folder).await.ok()?;
                let reply = registry
                    .get_status(threatmail_proto::v1::GetStatusRequest {
                        id: id.as_str().to_owned(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                let after = self.status(id, folder).await.ok()?;
                let shown = reply
                    .folders
                    .into_iter()
                    .find(|f| f.raw_name == folder.as_bytes())?;
                (before == after && done(&before)).then_some((before, shown))
            }
        })
        .await
    }

    /// Waits until `folder`'s status satisfies `done`.
    pub(crate) async fn wait_status(
        &self,
        what: &str,
        id: &SourceId,
        folder: &str,
        done: impl Fn(&FolderStatus) -> bool,
    ) -> anyhow::Result<FolderStatus> {
        threatmail_testkit::net::wait_for(what, CONVERGE, || {
            let status = self.status(id, folder);
            let done = &done;
            async move { status.await.ok().filter(|s| done(s)) }
        })
        .await
    }

    /// Waits for a poll of `folder` that began after `since` (Unix seconds) to finish: its
    /// status's last poll two seconds later, as polls are recorded to the second.
    pub(crate) async fn polled_after(
        &self,
        what: &str,
        id: &SourceId,
        folder: &str,
        since: i64,
    ) -> anyhow::Result<FolderStatus> {
        self.wait_status(what, id, folder, |s| {
            s.last_poll.is_some_and(|p| p >= since + 2)
        })
        .await
    }

    /// Like [`Harness::wait_status`], and also returns the reason of every error the
    /// status showed while waiting (one entry per look that saw one), for tests of what a
    /// user sees during a fault.
    pub(crate) async fn wait_status_seeing_errors(
        &self,
        what: &str,
        id: &SourceId,
        folder: &str,
        done: impl Fn(&FolderStatus) -> bool,
    ) -> anyhow::Result<(FolderStatus, Vec<String>)> {
        let seen = std::sync::Mutex::new(Vec::new());
        let status = self
            .wait_status(what, id, folder, |status| {
                if let Some(error) = &status.last_error {
                    seen.lock().expect("lock").push(error.reason.clone());
                }
                done(status)
            })
            .await?;
        Ok((status, seen.into_inner().expect("lock")))
    }

    /// A session on Dovecot as `mailbox`, for checking the mailbox from the outside.
    pub(crate) async fn imap(&self, mailbox: &str) -> anyhow::Result<Session> {
        let token = self.stack.primary_token().await?.access_token;
        let endpoint = Endpoint {
            host: "localhost".to_owned(),
            port: self.stack.dovecot.imaps_addr().port(),
            tls: true,
        };
        let ca = std::fs::read(self.stack.ca_cert_path())?;
        let client = connect(
            &endpoint,
            tls_config(Some(&ca)).map_err(anyhow::Error::msg)?,
            Duration::from_secs(10),
        )
        .await?;
        let credentials = Credentials::XOAuth2 {
            user: mailbox.to_owned(),
            token: SecretString::from(token),
        };
        Ok(login(client, &credentials, "dovecot", Duration::from_secs(10)).await?)
    }

    /// Stops everything and checks each task stopped cleanly.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            tokio::time::timeout(Duration::from_secs(20), task).await???;
        }
        Ok(())
    }
}

/// The corpus root, or `None` (after a notice) when it is missing outside CI; under
/// `CI=true` a missing corpus fails the test.
pub(crate) fn phishing_corpus() -> Option<Vec<Vec<u8>>> {
    let dir = match std::env::var_os("THREATMAIL_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    }
    .join("phishing");
    if !dir.is_dir() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the corpus is missing at {}",
            dir.display()
        );
        eprintln!("notice: corpus not found at {}; skipping", dir.display());
        return None;
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no .eml files in {}", dir.display());
    Some(
        paths
            .iter()
            .map(|p| std::fs::read(p).expect("corpus file"))
            .collect(),
    )
}

/// `raw` with every line end CRLF, as IMAP carries messages.
pub(crate) fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut previous = 0u8;
    for &byte in raw {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

/// A small generated report.
pub(crate) fn report(n: usize) -> Vec<u8> {
    format!(
        "From: user{n}@corp.example\r\nTo: soc-phish@corp.example\r\nSubject: suspicious mail {n}\r\nDate: Mon, 1 Dec 2026 10:{:02}:00 +0000\r\nMessage-ID: <sched-{n}@corp.example>\r\n\r\nPlease look at https://login-{n}.example.com/reset\r\n",
        n % 60
    )
    .into_bytes()
}

/// Changes the flags of `uids` in the selected folder as a person would
/// (`UID STORE <uids> <change>`, e.g. `+FLAGS (\Seen)`).
pub(crate) async fn set_flags(
    session: &mut Session,
    uids: &str,
    change: &str,
) -> anyhow::Result<()> {
    use futures::TryStreamExt as _;
    let _: Vec<_> = session.uid_store(uids, change).await?.try_collect().await?;
    Ok(())
}

/// Every message's flags in `folder` (SELECTed), by UID; without `\Recent`, which belongs
/// to a session (RFC 3501 §2.3.2), not to the message.
pub(crate) async fn flags(
    session: &mut Session,
    folder: &str,
) -> anyhow::Result<std::collections::BTreeMap<u32, Vec<String>>> {
    session.select(folder).await?;
    use futures::TryStreamExt as _;
    let fetched: Vec<_> = session
        .uid_fetch("1:*", "FLAGS")
        .await?
        .try_collect()
        .await?;
    Ok(fetched
        .iter()
        .filter_map(|f| {
            let mut flags: Vec<String> = f
                .flags()
                .filter(|flag| !matches!(flag, async_imap::types::Flag::Recent))
                .map(|flag| format!("{flag:?}"))
                .collect();
            flags.sort();
            f.uid.map(|uid| (uid, flags))
        })
        .collect())
}
