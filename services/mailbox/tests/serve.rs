//! The service answers gRPC health on its listener and stops when asked.

#[tokio::test]
async fn serves_health_and_stops_on_shutdown() -> anyhow::Result<()> {
    let redis = threatmail_testkit::redis::RedisServer::start()?;
    let blobs = tempfile::tempdir()?;
    let config = threatmail_mailbox::Config {
        redis_url: redis.url(),
        blobs: threatmail_store::BlobStoreConfig::Directory {
            path: blobs.path().to_path_buf(),
        },
        ..threatmail_mailbox::Config::default()
    };
    threatmail_testkit::grpc::assert_serves_health_and_stops(|listener, shutdown| {
        threatmail_mailbox::run(config, listener, shutdown)
    })
    .await
}
