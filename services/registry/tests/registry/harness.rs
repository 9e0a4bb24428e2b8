//! The registry with everything it talks to, for real and in-process: the local stack
//! (Redis, the Entra stand-in, Dovecot judging tokens like Exchange), the token broker and
//! a fetcher through their own `run`, and the registry itself. Every log line of the test
//! binary is captured, so a test can check that no secret was written.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use threatmail_auth::{CredentialInterceptor, RedisApiKeys, Role, RoleSet, ServiceCredential};
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::registry_client::RegistryClient;
use threatmail_source::MasterKey;
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{PHISH_MAILBOX, TenantFixture};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A registry client presenting one credential.
pub(crate) type Client = RegistryClient<InterceptedService<Channel, CredentialInterceptor>>;

/// Every log line written by the test binary.
#[derive(Clone, Default)]
pub(crate) struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    /// Everything logged so far.
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The captured logs (installed on first use): everything of ours at TRACE.
pub(crate) fn logs() -> Logs {
    static LOGS: OnceLock<Logs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Logs::default();
        let writer = logs.clone();
        let filter = tracing_subscriber::EnvFilter::new(
            "debug,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info,\
             threatmail_registry=trace,threatmail_token_broker=trace,threatmail_fetcher=trace,\
             threatmail_auth=trace,threatmail_source=trace",
        );
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        logs
    })
    .clone()
}

/// Everything running.
pub(crate) struct Harness {
    /// Redis, stand-in, Dovecot.
    pub(crate) stack: LocalStack,
    /// The master key line shared by the registry and the broker.
    pub(crate) master_key: SecretString,
    /// The registry's own credential (to call the broker).
    pub(crate) registry_credential: ServiceCredential,
    /// A service allowed to call the registry.
    pub(crate) fetcher_credential: ServiceCredential,
    /// The registry.
    pub(crate) registry_addr: SocketAddr,
    /// The broker.
    pub(crate) broker_addr: SocketAddr,
    /// The fetcher.
    pub(crate) fetcher_addr: SocketAddr,
    /// An admin API key.
    pub(crate) admin: String,
    fixture: TenantFixture,
    shutdown: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<anyhow::Result<()>>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn spawn<F, Fut>(
    tasks: &mut Vec<JoinHandle<anyhow::Result<()>>>,
    shutdown: &CancellationToken,
    run: F,
) -> anyhow::Result<SocketAddr>
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tasks.push(tokio::spawn(run(listener, shutdown.child_token())));
    Ok(addr)
}

impl Harness {
    /// Starts the stack with `fixture`, the broker, a fetcher and the registry.
    pub(crate) async fn start(fixture: TenantFixture) -> anyhow::Result<Self> {
        logs();
        let stack = LocalStack::start(fixture.clone()).await?;
        let master_key = MasterKey::generate("k1")?.to_line();
        let registry_credential = ServiceCredential::generate("registry")?;
        let fetcher_credential = ServiceCredential::generate("fetcher")?;
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut broker = threatmail_token_broker::Config {
            redis_url: stack.redis.url(),
            ..Default::default()
        };
        broker.master_key.key = Some(master_key.clone());
        broker
            .auth
            .services
            .insert("registry".to_owned(), registry_credential.hash());
        broker.entra.ca_file = Some(stack.ca_cert_path());
        broker.entra.global.authority = Some(stack.entra.authority());
        let broker_addr = spawn(&mut tasks, &shutdown, |listener, stop| {
            threatmail_token_broker::run(broker, listener, stop)
        })
        .await?;

        let mut fetcher = threatmail_fetcher::Config::default();
        fetcher.imap.ca_file = Some(stack.ca_cert_path());
        fetcher.imap.connect_timeout = Duration::from_secs(10);
        fetcher.imap.command_timeout = Duration::from_secs(10);
        // ListFolders is for services only: the registry presents its credential.
        fetcher
            .auth
            .services
            .insert("registry".to_owned(), registry_credential.hash());
        let fetcher_addr = spawn(&mut tasks, &shutdown, |listener, stop| {
            threatmail_fetcher::run(fetcher, listener, stop)
        })
        .await?;

        let mut harness = Harness {
            stack,
            master_key,
            registry_credential,
            fetcher_credential,
            registry_addr: "127.0.0.1:0".parse()?,
            broker_addr,
            fetcher_addr,
            admin: String::new(),
            fixture,
            shutdown,
            tasks: Mutex::new(tasks),
        };
        harness.registry_addr = harness.spawn_registry(harness.registry_config()).await?;
        harness.admin = harness.api_key(&[Role::Admin]).await?;
        Ok(harness)
    }

    /// The configuration of the harness's registry.
    pub(crate) fn registry_config(&self) -> threatmail_registry::Config {
        let mut config = threatmail_registry::Config {
            redis_url: self.stack.redis.url(),
            broker_url: format!("http://{}", self.broker_addr),
            fetcher_url: format!("http://{}", self.fetcher_addr),
            upstream_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        config.master_key.key = Some(self.master_key.clone());
        config
            .auth
            .services
            .insert("fetcher".to_owned(), self.fetcher_credential.hash());
        config.auth.credential = Some(SecretString::from(
            self.registry_credential.expose().to_owned(),
        ));
        config
    }

    /// Starts another registry (e.g. with other master keys) on the same Redis.
    pub(crate) async fn spawn_registry(
        &self,
        config: threatmail_registry::Config,
    ) -> anyhow::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(threatmail_registry::run(
            config,
            listener,
            self.shutdown.child_token(),
        ));
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(task);
        Ok(addr)
    }

    /// A new API key with `roles`.
    pub(crate) async fn api_key(&self, roles: &[Role]) -> anyhow::Result<String> {
        let keys = RedisApiKeys::new(self.stack.redis.connection_manager().await?);
        let made = keys.create("test", RoleSet::of(roles), 0).await?;
        Ok(made.key.expose_secret().to_owned())
    }

    /// A client of `addr` presenting `bearer` (an API key or a service credential).
    pub(crate) async fn client_of(&self, addr: SocketAddr, bearer: &str) -> anyhow::Result<Client> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .context("the registry does not accept connections")?;
        Ok(RegistryClient::with_interceptor(
            channel,
            CredentialInterceptor::bearer(bearer)?,
        ))
    }

    /// A client of the registry presenting `bearer`.
    pub(crate) async fn client(&self, bearer: &str) -> anyhow::Result<Client> {
        self.client_of(self.registry_addr, bearer).await
    }

    /// A client without any credential.
    pub(crate) async fn anonymous(&self) -> anyhow::Result<RegistryClient<Channel>> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{}", self.registry_addr))?
                .connect()
                .await?;
        Ok(RegistryClient::new(channel))
    }

    /// The form filled in right for the fixture as it is now: its tenant, app, first
    /// secret, the phishing mailbox on Dovecot's TLS port.
    pub(crate) fn spec(&self) -> pb::SourceSpec {
        let (tenant, app, secret) = self.stack.tenant().read(|f| {
            let tenant = f.primary_tenant().map(|t| t.id.clone()).unwrap_or_default();
            let app = f.primary_app().cloned();
            let secret = app
                .as_ref()
                .and_then(|a| a.secrets.first())
                .map(|s| s.value.expose().to_owned())
                .unwrap_or_default();
            (tenant, app, secret)
        });
        let app = app.map(|a| a.client_id).unwrap_or_default();
        let imaps = self.stack.dovecot.imaps_addr();
        pb::SourceSpec {
            name: "Phishing reports".to_owned(),
            account_type: "imap".to_owned(),
            auth_type: pb::AuthType::MsOauth2 as i32,
            email: PHISH_MAILBOX.to_owned(),
            secret_key: secret,
            app_id: app,
            tenant_id: tenant,
            host: imaps.ip().to_string(),
            port: u32::from(imaps.port()),
            ..Default::default()
        }
    }

    /// The fixture's app as it is now.
    pub(crate) fn app(&self) -> threatmail_testkit::tenant::AppRegistration {
        self.stack
            .tenant()
            .read(|f| f.primary_app().cloned())
            .unwrap_or_else(|| threatmail_testkit::tenant::AppRegistration::new("none"))
    }

    /// Changes the fixture and pushes it to Dovecot (the stand-in reads it live).
    pub(crate) fn change_tenant(
        &self,
        change: impl FnOnce(&mut TenantFixture),
    ) -> anyhow::Result<()> {
        self.stack.tenant().update(change);
        tokio::task::block_in_place(|| self.stack.apply_tenant())
    }

    /// Puts the fixture back as it was at start.
    pub(crate) fn reset_tenant(&self) -> anyhow::Result<()> {
        let original = self.fixture.clone();
        self.change_tenant(move |f| *f = original)
    }

    /// Stops every server and checks each stopped cleanly.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let tasks: Vec<_> =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .context("a server did not stop")???;
        }
        Ok(())
    }

    /// Every key and value in Redis, as text.
    pub(crate) async fn redis_dump(&self) -> anyhow::Result<BTreeMap<String, String>> {
        let mut conn = self.stack.redis.connection_manager().await?;
        let keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut conn).await?;
        let mut dump = BTreeMap::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await?;
            let value = match kind.as_str() {
                "string" => {
                    let v: Vec<u8> = redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                    String::from_utf8_lossy(&v).into_owned()
                }
                "hash" => {
                    let v: Vec<(Vec<u8>, Vec<u8>)> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await?;
                    v.iter()
                        .map(|(f, v)| {
                            format!(
                                "{}={}",
                                String::from_utf8_lossy(f),
                                String::from_utf8_lossy(v)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                "set" => {
                    let v: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut conn)
                        .await?;
                    v.iter()
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                "list" => {
                    let v: Vec<Vec<u8>> = redis::cmd("LRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await?;
                    v.iter()
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                "zset" => {
                    let v: Vec<Vec<u8>> = redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query_async(&mut conn)
                        .await?;
                    v.iter()
                        .map(|m| String::from_utf8_lossy(m).into_owned())
                        .collect::<Vec<_>>()
                        .join("\n")
                }
                other => anyhow::bail!("key {key} has type {other}, which the scan cannot read"),
            };
            dump.insert(key, value);
        }
        Ok(dump)
    }
}

/// The `threatmail-reason` of a status.
pub(crate) fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("threatmail-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}
