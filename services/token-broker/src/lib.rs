//! The threatmail token broker service: the one place that gets, caches and refreshes Entra ID tokens.
//!
//! [`run`] serves it on a listener until the shutdown token is cancelled; `main.rs` only
//! loads the configuration and calls it, and tests call it directly.

pub mod cache;
pub mod claims;
pub mod clock;
pub mod config;
pub mod entra;

pub use config::Config;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves the token broker service on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!(listen = %config.listen, "token-broker starting");
    threatmail_runtime::serve(threatmail_runtime::grpc_server(), listener, shutdown).await?;
    tracing::info!("token-broker stopped");
    Ok(())
}
