//! The threatmail fetcher service: IMAP sessions and (as the fetcher issue adds it)
//! incremental folder sync.
//!
//! [`run`] serves it on a listener until the shutdown token is cancelled; `main.rs` only
//! loads the configuration and calls it, and tests call it directly.

pub mod broker;
pub mod config;
pub mod connections;
pub mod grpc;
pub mod imap;
pub mod sync;

pub use config::Config;

use anyhow::Context as _;
use threatmail_proto::v1::fetcher_server::FetcherServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the fetcher service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
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
        tls,
        config.imap.connect_timeout,
        config.imap.command_timeout,
    );
    tracing::info!(listen = %config.listen, "fetcher starting");
    let router = threatmail_runtime::grpc_server().add_service(FetcherServer::new(service));
    threatmail_runtime::serve(router, listener, shutdown).await?;
    tracing::info!("fetcher stopped");
    Ok(())
}
