//! The threatmail registry service: email sources, their folder selection and status, and "Save and Continue" validation.
//!
//! [`run`] serves it on a listener until the shutdown token is cancelled; `main.rs` only
//! loads the configuration and calls it, and tests call it directly.

pub mod config;

pub use config::Config;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the registry service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(listen = %config.listen, "registry starting");
    threatmail_runtime::serve(threatmail_runtime::grpc_server(), listener, shutdown).await?;
    tracing::info!("registry stopped");
    Ok(())
}
