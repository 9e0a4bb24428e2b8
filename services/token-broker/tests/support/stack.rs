//! The local stack the broker's tests run on: the test CA, a real Redis, the Entra stand-in
//! with a tenant fixture, a master key, a service credential, and brokers started with
//! [`threatmail_token_broker::run`] on loopback ports, with short lifetimes and locks.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret as _, SecretString};
use threatmail_auth::{CredentialInterceptor, ServiceCredential};
use threatmail_proto::v1::token_broker_client::TokenBrokerClient;
use threatmail_proto::v1::{GetTokenRequest, GetTokenResponse};
use threatmail_source::{Keyring, MasterKey, SecretSlot, SourceId, SourceRecord, SourceStore};
use threatmail_testkit::ca::TestCa;
use threatmail_testkit::entra::EntraStandIn;
use threatmail_testkit::redis::RedisServer;
use threatmail_testkit::tenant::{ClientSecret, TenantFixture, TenantHandle};
use threatmail_token_broker::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A broker client presenting a credential.
pub type Client = TokenBrokerClient<InterceptedService<Channel, CredentialInterceptor>>;

/// Everything a broker test needs.
pub struct Stack {
    pub ca: TestCa,
    pub dir: tempfile::TempDir,
    pub redis: RedisServer,
    pub tenant: TenantHandle,
    pub entra: EntraStandIn,
    pub master_key: SecretString,
    pub keyring: Keyring,
    pub fetcher: ServiceCredential,
    pub tenant_id: String,
    pub client_id: String,
    pub secret: SecretString,
}

/// A running broker.
pub struct Broker {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

impl Stack {
    /// Starts Redis and the stand-in with [`TenantFixture::everything_right`].
    pub async fn start() -> Stack {
        let ca = TestCa::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        ca.write_cert(&dir.path().join("ca.pem")).unwrap();
        let redis = RedisServer::start().unwrap();
        let tenant = TenantHandle::new(TenantFixture::everything_right());
        let entra = EntraStandIn::start(&ca, tenant.clone()).await.unwrap();
        let master = MasterKey::generate("test1").unwrap();
        let master_key = master.to_line();
        let keyring = Keyring::new(master, Vec::new()).unwrap();
        let (tenant_id, client_id, secret) = tenant.read(|f| {
            let app = f.primary_app().unwrap();
            (
                f.primary_tenant().unwrap().id.clone(),
                app.client_id.clone(),
                SecretString::from(app.secrets[0].value.expose()),
            )
        });
        Stack {
            ca,
            dir,
            redis,
            tenant,
            entra,
            master_key,
            keyring,
            fetcher: ServiceCredential::generate("fetcher").unwrap(),
            tenant_id,
            client_id,
            secret,
        }
    }

    /// A configuration for this stack: the stand-in as every cloud's authority, its CA
    /// trusted by file, tokens of a few seconds, short locks and back-offs.
    pub fn config(&self) -> Config {
        let mut config = Config {
            redis_url: self.redis.url(),
            ..Config::default()
        };
        config.master_key.key = Some(self.master_key.clone());
        config
            .auth
            .services
            .insert("fetcher".into(), self.fetcher.hash());
        config.entra.ca_file = Some(self.dir.path().join("ca.pem"));
        config.entra.connect_timeout = Duration::from_secs(1);
        config.entra.request_timeout = Duration::from_secs(2);
        config.entra.global.authority = Some(self.entra.authority());
        config.entra.us_government.authority = Some(self.entra.authority());
        config.entra.china.authority = Some(self.entra.authority());
        let cache = &mut config.cache;
        cache.floor = Duration::from_secs(1);
        cache.refresh_percent = 50;
        cache.lock_ttl = Duration::from_secs(3);
        cache.lock_poll = Duration::from_millis(50);
        cache.memory_ttl = Duration::from_secs(1);
        cache.source_ttl = Duration::ZERO;
        cache.force_refresh_grace = Duration::ZERO;
        cache.transient_backoff_min = Duration::from_millis(200);
        cache.transient_backoff_max = Duration::from_secs(2);
        cache.permanent_backoff_min = Duration::from_secs(30);
        cache.permanent_backoff_max = Duration::from_secs(60);
        config
    }

    /// Starts a broker with `config` on a free port.
    pub async fn broker(&self, config: Config) -> Broker {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(threatmail_token_broker::run(
            config,
            listener,
            shutdown.clone(),
        ));
        // Wait (bounded) until it answers.
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Broker {
            addr,
            shutdown,
            task,
        }
    }

    /// A client of `broker` presenting `bearer` (the fetcher's credential by default).
    pub async fn client_with(&self, broker: &Broker, bearer: &str) -> Client {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        TokenBrokerClient::with_interceptor(channel, CredentialInterceptor::bearer(bearer).unwrap())
    }

    /// A client of `broker` as the fetcher.
    pub async fn client(&self, broker: &Broker) -> Client {
        self.client_with(broker, self.fetcher.expose()).await
    }

    /// Stores a source for the fixture's app with `secret` as its current secret, changed
    /// by `edit`.
    pub async fn add_source_with(
        &self,
        secret: &SecretString,
        edit: impl FnOnce(&mut SourceRecord, &Keyring),
    ) -> SourceId {
        let id = SourceId::new_random();
        let mut record = SourceRecord::new_oauth(
            id.clone(),
            &format!("source {id}"),
            "soc-phish@corp.example",
            &self.tenant_id,
            &self.client_id,
            0,
        );
        record
            .set_secret(&self.keyring, SecretSlot::Current, secret, None)
            .unwrap();
        edit(&mut record, &self.keyring);
        SourceStore::new(self.redis.connection_manager().await.unwrap())
            .insert(&record)
            .await
            .unwrap();
        id
    }

    /// A source with the fixture's valid secret.
    pub async fn add_source(&self) -> SourceId {
        let secret = self.secret.clone();
        self.add_source_with(&secret, |_, _| {}).await
    }

    /// Adds a fresh valid secret to the fixture's app and returns its value.
    pub fn new_app_secret(&self) -> SecretString {
        let secret = ClientSecret::new(Duration::from_secs(3600));
        let value = SecretString::from(secret.value.expose());
        self.tenant
            .update(|f| f.primary_app_mut().unwrap().secrets.push(secret));
        value
    }

    /// Requests made to the stand-in for the fixture's tenant and app.
    pub fn requests(&self) -> u64 {
        self.entra.request_count(&self.tenant_id, &self.client_id)
    }
}

/// `GetToken` for `source`.
pub async fn get_token(
    client: &mut Client,
    source: &SourceId,
) -> Result<GetTokenResponse, tonic::Status> {
    client
        .get_token(GetTokenRequest {
            source_id: source.to_string(),
            min_validity_seconds: 0,
            force_refresh: false,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// `GetToken` with `force_refresh`.
pub async fn force_token(
    client: &mut Client,
    source: &SourceId,
) -> Result<GetTokenResponse, tonic::Status> {
    client
        .get_token(GetTokenRequest {
            source_id: source.to_string(),
            min_validity_seconds: 0,
            force_refresh: true,
        })
        .await
        .map(tonic::Response::into_inner)
}

/// The `threatmail-reason` of a failed call.
pub fn reason(status: &tonic::Status) -> String {
    status
        .metadata()
        .get("threatmail-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Polls `condition` every 20 ms for at most `limit`.
pub async fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The secret's text.
pub fn text(secret: &SecretString) -> &str {
    secret.expose_secret()
}
