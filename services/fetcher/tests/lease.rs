//! Leases and connection slots against a real Redis.

use std::time::Duration;

use threatmail_fetcher::lease::Leases;
use threatmail_testkit::redis::RedisServer;

async fn leases(redis: &RedisServer) -> anyhow::Result<Leases> {
    Ok(Leases::new(redis.connection_manager().await?))
}

#[tokio::test]
async fn one_holder_at_a_time_and_fences_only_grow() -> anyhow::Result<()> {
    let redis = RedisServer::start()?;
    let a = leases(&redis).await?;
    let b = leases(&redis).await?;
    let ttl = Duration::from_millis(300);

    let first = a
        .acquire("src1", "inbox", "fetcher-a", ttl)
        .await?
        .expect("free lease");
    assert!(
        b.acquire("src1", "inbox", "fetcher-b", ttl)
            .await?
            .is_none(),
        "held by a"
    );
    // Another folder of the same source is a separate unit of work.
    let other = b
        .acquire("src1", "reports", "fetcher-b", ttl)
        .await?
        .expect("other folder");
    assert!(other.fence > first.fence, "fences grow per source");

    assert!(a.renew(&first, ttl).await?);
    // a stalls past its lease; b takes over with a larger fence.
    let taken =
        threatmail_testkit::net::wait_for("the lease to expire", Duration::from_secs(5), || {
            let b = b.clone();
            async move {
                b.acquire("src1", "inbox", "fetcher-b", ttl)
                    .await
                    .ok()
                    .flatten()
            }
        })
        .await?;
    assert!(taken.fence > first.fence);
    assert!(
        !a.renew(&first, ttl).await?,
        "a lost lease cannot be renewed"
    );
    assert!(
        !a.release(&first).await?,
        "nor released from under its new holder"
    );
    assert!(b.release(&taken).await?);
    assert!(
        a.acquire("src1", "inbox", "fetcher-a", ttl)
            .await?
            .is_some()
    );
    Ok(())
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
