//! The threatmail registry service: email sources, their folder selection and status,
//! "Save and Continue" validation, and API keys.
//!
//! - [`spec`]: the Add Email Source form, every field checked at once; record ↔ reply.
//! - [`registry`]: create, update (optimistic concurrency), get, list, delete, status.
//! - [`test_source`]: "Save and Continue": token through the broker, login and folder list
//!   through a fetcher, each failure diagnosed ([`diagnosis`]).
//! - [`folders`]: live folder lists of stored sources and the folder selection (BR-04).
//! - [`api_keys`]: API keys for the CLI (admin).
//! - [`grpc`], [`error`]: the API, its permission policy and its one error mapping;
//!   [`upstream`]: the clients of the broker and the fetcher.
//!
//! [`run`] serves it on a listener until the shutdown token is cancelled; `main.rs` only
//! loads the configuration and calls it, and tests call it directly.

pub mod api_keys;
pub mod config;
pub mod diagnosis;
pub mod error;
pub mod folders;
pub mod grpc;
pub mod registry;
pub mod spec;
pub mod test_source;
pub mod upstream;

use std::sync::Arc;

pub use config::Config;
use threatmail_auth::{AuthLayer, Authenticator, RedisApiKeys};
use threatmail_proto::v1::registry_server::RegistryServer;
use threatmail_source::SourceStore;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer as _;

use crate::registry::Registry;
use crate::upstream::Upstreams;

/// Serves the registry service on `listener` until `shutdown` is cancelled.
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
    let own = config.auth.own_credential()?;
    if own.is_none() {
        tracing::warn!(
            "auth.credential_file is not set: Save and Continue and folder lists of OAuth \
             sources need the registry's service credential to call the token broker"
        );
    }
    let upstreams = Upstreams::new(
        &config.broker_url,
        &config.fetcher_url,
        own.as_ref(),
        config.upstream_timeout,
    )?;
    let conn = threatmail_runtime::connect_redis(
        &config.redis_url,
        redis::aio::ConnectionManagerConfig::new(),
    )
    .await?;
    let api_keys = RedisApiKeys::new(conn.clone());
    let registry = Registry::new(SourceStore::new(conn), keyring, upstreams);
    let authenticator = Authenticator::new(services, Some(Arc::new(api_keys.clone())));
    let service = AuthLayer::new(authenticator, grpc::policy()).layer(RegistryServer::new(
        grpc::RegistryService::new(registry, api_keys),
    ));
    tracing::info!(listen = %config.listen, "registry starting");
    threatmail_runtime::serve(
        threatmail_runtime::grpc_server().add_service(service),
        listener,
        shutdown,
    )
    .await?;
    tracing::info!("registry stopped");
    Ok(())
}
