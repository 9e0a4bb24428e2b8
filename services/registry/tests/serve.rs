//! The service answers gRPC health on its listener and stops when asked.

#[tokio::test]
async fn serves_health_and_stops_on_shutdown() -> anyhow::Result<()> {
    threatmail_testkit::grpc::assert_serves_health_and_stops(|listener, shutdown| {
        threatmail_registry::run(threatmail_registry::Config::default(), listener, shutdown)
    })
    .await
}
