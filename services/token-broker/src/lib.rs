//! The threatmail token broker service: the one place that gets, caches, refreshes and
//! explains Entra ID tokens (DESIGN §3).
//!
//! - [`broker`]: the three operations (a source's token with rollover and its diagnosis,
//!   draft credential tests, invalidation).
//! - [`cache`]: the token cache shared by replicas through Redis, with one Entra request in
//!   flight per key.
//! - [`entra`]: the token endpoint client and the typed errors.
//! - [`claims`]: what a token says about the setup.
//! - [`grpc`], [`error`]: the API and its one error mapping.
//!
//! [`run`] serves it on a listener until the shutdown token is cancelled; `main.rs` only
//! loads the configuration and calls it, and tests call it directly.

pub mod broker;
pub mod cache;
pub mod claims;
pub mod clock;
pub mod config;
pub mod entra;
pub mod error;
pub mod grpc;

use std::sync::Arc;

use anyhow::Context as _;
pub use config::Config;
use threatmail_auth::{AuthLayer, Authenticator, RedisApiKeys};
use threatmail_proto::v1::token_broker_server::TokenBrokerServer;
use threatmail_source::SourceStore;
use threatmail_source::cloud::ALL_CLOUDS;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

use crate::broker::{Broker, BrokerParts};
use crate::cache::TokenCache;
use crate::cache::redis::RedisStore;
use crate::clock::{Clock, SystemClock};
use crate::entra::{ClientSettings, EntraClient};

/// Serves the token broker service on `listener` until `shutdown` is cancelled.
///
/// If this future is dropped (the process dies, or a test aborts the task), in-flight
/// refreshes stop at once and their Redis locks are left to expire, as after a crash.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let problems = config.problems();
    if !problems.is_empty() {
        return Err(threatmail_core::config::ConfigError { problems }.into());
    }
    let keyring = Arc::new(config.master_key.keyring()?);
    let services = config.auth.service_credentials()?;
    let clouds = ALL_CLOUDS
        .into_iter()
        .map(|cloud| {
            config
                .cloud_endpoints(cloud)
                .map_err(|problems| threatmail_core::config::ConfigError { problems })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let extra_ca = match &config.entra.ca_file {
        Some(path) => Some((
            path.display().to_string(),
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?,
        )),
        None => None,
    };
    let entra = EntraClient::new(&ClientSettings {
        extra_ca,
        connect_timeout: config.entra.connect_timeout,
        request_timeout: config.entra.request_timeout,
    })?;
    let conn = threatmail_runtime::connect_redis(
        &config.redis_url,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let store = RedisStore::new(conn.clone(), Arc::clone(&keyring), Arc::clone(&clock));
    let cache = TokenCache::new(store, Arc::clone(&clock), config.cache.policy());
    let _stop_on_drop = cache.stop_token().drop_guard();
    let broker = Arc::new(Broker::new(BrokerParts {
        sources: SourceStore::new(conn.clone()),
        keyring,
        entra,
        clouds,
        cache: cache.clone(),
        clock,
        source_ttl: config.cache.source_ttl,
    }));
    let authenticator = Authenticator::new(services, Some(Arc::new(RedisApiKeys::new(conn))));
    let service = AuthLayer::new(authenticator, grpc::policy()).layer(TokenBrokerServer::new(
        grpc::TokenBrokerService::new(broker),
    ));
    tracing::info!(listen = %config.listen, "token-broker starting");
    let router = threatmail_runtime::grpc_server().add_service(service);
    threatmail_runtime::serve(router, listener, shutdown).await?;
    cache.shutdown(threatmail_runtime::SHUTDOWN_GRACE).await;
    tracing::info!("token-broker stopped");
    Ok(())
}
