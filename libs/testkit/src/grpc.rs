//! Checks every gRPC service must pass, for the services' own tests.

use std::future::Future;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Starts a service through its `run(listener, shutdown)` on a loopback port, checks that
/// it answers gRPC health with SERVING, cancels the shutdown token and checks that `run`
/// returns cleanly and the port is closed.
pub async fn assert_serves_health_and_stops<F, Fut>(run: F) -> anyhow::Result<()>
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(run(listener, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await
        .context("the service does not accept gRPC connections")?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .context("the health check failed")?
        .into_inner();
    anyhow::ensure!(
        reply.status() == ServingStatus::Serving,
        "health is {:?}, not SERVING",
        reply.status()
    );
    shutdown.cancel();
    server.await?.context("run returned an error on shutdown")?;
    anyhow::ensure!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is still open after shutdown"
    );
    Ok(())
}
