//! The per-mailbox connection cap against a real Redis.

use std::time::Duration;

use threatmail_fetcher::connections::ConnectionSlots;
use threatmail_testkit::redis::RedisServer;

async fn leases(redis: &RedisServer) -> anyhow::Result<ConnectionSlots> {
    Ok(ConnectionSlots::new(redis.connection_manager().await?))
}

#[tokio::test]
async fn connection_cap_holds_across_fetchers_and_frees_on_expiry() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let a = leases(&redis).await?;
    let b = leases(&redis).await?;
    let ttl = Duration::from_millis(400);
    let mailbox = "SOC-Phish@corp.example";

    assert!(a.take_connection_slot(mailbox, "a-1", 2, ttl).await?);
    assert!(
        b.take_connection_slot("soc-phish@corp.example", "b-1", 2, ttl)
            .await?
    );
    assert!(
        !b.take_connection_slot(mailbox, "b-2", 2, ttl).await?,
        "cap of 2 reached"
    );
    // Refreshing a held slot is not a new connection.
    assert!(a.take_connection_slot(mailbox, "a-1", 2, ttl).await?);
    a.release_connection_slot(mailbox, "a-1").await?;
    assert!(b.take_connection_slot(mailbox, "b-2", 2, ttl).await?);
    // A fetcher that died: its slots lapse.
    let freed =
        threatmail_testkit::net::wait_for("slots to expire", Duration::from_secs(5), || {
            let a = a.clone();
            async move {
                a.take_connection_slot(mailbox, "a-2", 2, ttl)
                    .await
                    .ok()
                    .filter(|t| *t)
            }
        })
        .await?;
    assert!(freed);
    Ok(())
}
