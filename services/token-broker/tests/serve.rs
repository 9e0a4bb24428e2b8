//! The service answers gRPC health on its listener without a credential, refuses to start
//! with a bad configuration, and stops when asked.

#![allow(clippy::unwrap_used)]

#[path = "support/stack.rs"]
mod stack;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test]
async fn serves_health_and_stops_on_shutdown() -> anyhow::Result<()> {
    let stack = stack::Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))?
        .connect()
        .await?;
    let reply = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(reply.status(), ServingStatus::Serving);
    broker.shutdown.cancel();
    broker.task.await??;
    assert!(
        tokio::net::TcpStream::connect(broker.addr).await.is_err(),
        "listener closed after shutdown"
    );
    Ok(())
}

#[tokio::test]
async fn a_bad_configuration_is_refused_with_every_problem() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let error = threatmail_token_broker::run(
        threatmail_token_broker::Config::default(),
        listener,
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .expect_err("no master key, no services");
    let text = format!("{error:#}");
    assert!(text.contains("master_key"), "{text}");
    assert!(text.contains("auth.services"), "{text}");
    Ok(())
}
