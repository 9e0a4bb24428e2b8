//! The threatmail fetcher service: IMAP sessions and incremental folder sync.
//!
//! - [`imap`]: connecting, logging in, listing, opening and fetching.
//! - [`sync`]: one (source, folder) synced under its lease into the store.
//! - [`scheduler`]: which folders this fetcher syncs and when, live from the sources in
//!   Redis, with leases, back-off and status; [`session`]: one source's session;
//!   [`connections`]: the fleet's per-mailbox connection cap; [`broker`]: tokens;
//!   [`diagnosis`]: what a failure tells the user.
//! - [`grpc`]: `ListFolders` for the registry, services only.
//!
//! [`run`] serves it on a listener until the shutdown token is cancelled, and runs the
//! scheduler beside it when `redis_url` is set; `main.rs` only loads the configuration and
//! calls it, and tests call it directly.

pub mod broker;
pub mod config;
pub mod connections;
pub mod diagnosis;
pub mod grpc;
pub mod imap;
pub mod scheduler;
pub mod session;
pub mod sync;

use std::sync::Arc;

pub use config::Config;

use anyhow::Context as _;
use threatmail_auth::{AuthLayer, Authenticator, CredentialInterceptor};
use threatmail_proto::v1::fetcher_server::FetcherServer;
use threatmail_source::SourceStore;
use threatmail_store::{BlobStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

use crate::broker::Broker;
use crate::connections::ConnectionSlots;
use crate::scheduler::{Scheduler, SchedulerParts};
use crate::session::SessionParts;

/// Serves the fetcher service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(threatmail_core::config::ConfigError { problems }.into());
    }
    let extra_ca = match &config.imap.ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("failed to read imap.ca_file {}", path.display()))?,
        ),
        None => None,
    };
    let tls = imap::connect::tls_config(extra_ca.as_deref())
        .map_err(|problem| anyhow::anyhow!("imap.ca_file: {problem}"))?;
    let service = grpc::FetcherService::new(
        tls.clone(),
        config.imap.connect_timeout,
        config.imap.command_timeout,
    );
    let authenticator = Authenticator::new(config.auth.service_credentials()?, None);
    let service = AuthLayer::new(authenticator, grpc::policy()).layer(FetcherServer::new(service));

    let stop_scheduler = shutdown.child_token();
    let _stop_on_exit = stop_scheduler.clone().drop_guard();
    let scheduler = match &config.redis_url {
        Some(url) => Some(tokio::spawn(
            scheduler(&config, url, tls)
                .await?
                .run(stop_scheduler.clone()),
        )),
        None => {
            tracing::warn!(
                "redis_url is not set: this fetcher syncs nothing and serves only ListFolders"
            );
            None
        }
    };
    tracing::info!(listen = %config.listen, "fetcher starting");
    let router = threatmail_runtime::grpc_server().add_service(service);
    let served = threatmail_runtime::serve(router, listener, shutdown).await;
    stop_scheduler.cancel();
    if let Some(task) = scheduler
        && let Err(error) = task.await
    {
        tracing::error!(error = %threatmail_core::error::chain(&error), "the scheduler task failed");
    }
    served?;
    tracing::info!("fetcher stopped");
    Ok(())
}

/// The scheduler the configuration describes, connected to Redis.
async fn scheduler(
    config: &Config,
    redis_url: &str,
    tls: Arc<rustls::ClientConfig>,
) -> anyhow::Result<Scheduler> {
    // A batch write may queue behind others; redis-rs's default reply timeout (0.5 s)
    // would turn it into an unknown outcome (safe to retry, but wasted work).
    let redis_config = redis::aio::ConnectionManagerConfig::new()
        .set_response_timeout(Some(config.imap.command_timeout))
        .set_connection_timeout(Some(threatmail_runtime::REDIS_CONNECT_TIMEOUT));
    let conn = threatmail_runtime::connect_redis(redis_url, redis_config).await?;
    let blobs = BlobStore::from_config(&config.blobs)?;
    let broker = match config.auth.own_credential()? {
        Some(credential) => Some(Broker::new(
            &config.broker_url,
            CredentialInterceptor::new(&credential)?,
            config.broker_timeout,
        )?),
        None => {
            tracing::warn!(
                "auth.credential_file is not set: ms-oauth2 sources cannot get tokens from the \
                 token broker and will show fetcher.no_service_credential"
            );
            None
        }
    };
    let keyring = if config.has_master_key() {
        Some(Arc::new(config.master_key.keyring()?))
    } else {
        None
    };
    let instance = config
        .sync
        .instance_name
        .clone()
        .unwrap_or_else(|| format!("fetcher-{}", uuid::Uuid::new_v4().simple()));
    Ok(Scheduler::new(SchedulerParts {
        sources: SourceStore::new(conn.clone()),
        store: Store::new(conn.clone(), blobs),
        session: SessionParts {
            broker,
            keyring,
            slots: ConnectionSlots::new(conn),
            tls,
            connect_timeout: config.imap.connect_timeout,
            cap: config.sync.connections_per_mailbox,
            slot_ttl: config.sync.lease_ttl,
            max_age: config.sync.session_max_age,
            retire_before_expiry: config.sync.retire_before_token_expiry,
            instance,
        },
        settings: config.sync.clone(),
        command_timeout: config.imap.command_timeout,
    }))
}
