//! The test kit's `redis-server`: real servers side by side, isolated, gone after drop.

use std::time::Duration;

use redis::AsyncCommands as _;
use threatmail_testkit::redis::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_side_by_side_do_not_share_keys() -> anyhow::Result<()> {
    let first = RedisServer::start()?;
    let second = RedisServer::start()?;
    assert_ne!(first.port(), second.port());
    assert_eq!(first.url(), format!("redis://127.0.0.1:{}/", first.port()));

    let mut a = first.connection_manager().await?;
    let mut b = second.connection_manager().await?;
    let () = a.set("tm:test:key", "on first").await?;
    let () = b.set("tm:test:key", "on second").await?;
    let () = a.set("tm:test:only-first", 1).await?;

    let on_a: String = a.get("tm:test:key").await?;
    let on_b: String = b.get("tm:test:key").await?;
    assert_eq!(on_a, "on first");
    assert_eq!(on_b, "on second");
    let missing: Option<i64> = b.get("tm:test:only-first").await?;
    assert_eq!(missing, None);

    // No persistence is configured.
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut a)
        .await?;
    assert_eq!(save, ["save", ""]);
    let appendonly: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("appendonly")
        .query_async(&mut a)
        .await?;
    assert_eq!(appendonly, ["appendonly", "no"]);
    Ok(())
}

#[tokio::test]
async fn port_is_closed_and_dir_removed_after_drop() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let addr = server.addr();
    let dir = server.dir().to_path_buf();
    assert!(dir.exists());
    tokio::net::TcpStream::connect(addr).await?;
    drop(server);
    // The child was killed and reaped inside drop, so the listener is already gone.
    let connected =
        tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await?;
    assert!(connected.is_err(), "something still listens on {addr}");
    assert!(!dir.exists(), "{} was not removed", dir.display());
    Ok(())
}

/// `start` is synchronous: it also works without any runtime.
#[test]
fn starts_outside_a_runtime() -> anyhow::Result<()> {
    let server = RedisServer::start()?;
    let mut connection = server.client().get_connection()?;
    let pong: String = redis::cmd("PING").query(&mut connection)?;
    assert_eq!(pong, "PONG");
    Ok(())
}
