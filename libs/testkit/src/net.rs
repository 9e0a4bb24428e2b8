//! Loopback ports and bounded waiting.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::bail;

/// A port on 127.0.0.1 that was free a moment ago.
///
/// The listener is dropped before the port is handed to a child process, so two callers can
/// in rare cases race for it; servers that fail to bind are restarted by their starters.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Polls `check` until it returns `Some`, at most for `limit`; never a fixed sleep.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_for_port(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    wait_for(&format!("a listener on {addr}"), limit, || async move {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
}

/// Blocking variant of [`wait_for_port`] for starters that run outside a runtime.
pub fn wait_for_port_blocking(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(5);
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            bail!("timed out after {limit:?} waiting for a listener on {addr}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
