//! A throw-away `redis-server` (the Debian package) on a free loopback port.
//!
//! Each [`RedisServer`] has its own temp dir for the working directory and the log, keeps
//! nothing on disk (`--save "" --appendonly no`) and is killed and reaped when dropped.
//! Modelled on redis-rs' `redis-test` server helper.

use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::net::free_port;

/// How long a fresh server may take to answer `PING`.
const START_LIMIT: Duration = Duration::from_secs(15);
/// How often a start is retried with another port when the port was taken in a race.
const START_ATTEMPTS: usize = 5;

/// A running `redis-server`; stopped (killed and reaped) on drop.
pub struct RedisServer {
    child: Child,
    port: u16,
    // Removed only after `Drop::drop` has killed and reaped the child.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisServer")
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl RedisServer {
    /// Starts a server on a free 127.0.0.1 port and waits until it answers `PING`.
    ///
    /// Synchronous, so it works inside and outside a tokio runtime.
    pub fn start() -> anyhow::Result<Self> {
        let binary = find_redis_server()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&binary) {
                Ok(server) => return Ok(server),
                Err(StartError::PortTaken(error)) => last_error = Some(error),
                Err(StartError::Other(error)) => return Err(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "redis-server did not start after {START_ATTEMPTS} attempts"
            )))
    }

    fn start_once(binary: &Path) -> Result<Self, StartError> {
        let dir = tempfile::Builder::new()
            .prefix("threatmail-redis-")
            .tempdir()
            .context("failed to create a temp dir for redis-server")?;
        let port = free_port()?;
        let log = dir.path().join("redis.log");
        let child = Command::new(binary)
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--protected-mode", "yes"])
            .arg("--dir")
            .arg(dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("failed to run {}", binary.display()))?;
        let mut server = Self { child, port, dir };
        match server.wait_until_ready() {
            Ok(()) => Ok(server),
            Err(error) => {
                let log_text = std::fs::read_to_string(&log).unwrap_or_default();
                // `server` is dropped here: the child is killed and reaped.
                let error = error.context(format!(
                    "redis-server on port {port} did not come up; its log:\n{log_text}"
                ));
                if log_text.contains("Address already in use") {
                    Err(StartError::PortTaken(error))
                } else {
                    Err(StartError::Other(error))
                }
            }
        }
    }

    /// Polls with `PING` (bounded) until the server answers `+PONG`.
    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("redis-server exited early with {status}");
            }
            if ping(self.addr()).is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {START_LIMIT:?} waiting for redis-server to answer PING");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address (127.0.0.1 and the port).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port))
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The server's working directory (and log) inside its temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// A client for this server.
    pub fn client(&self) -> ::redis::Client {
        // Cannot fail: the URL is a loopback IP literal and a port, which always parses.
        ::redis::Client::open(self.url()).expect("a loopback redis:// URL always parses")
    }

    /// A connection manager (reconnecting, cloneable) for this server.
    pub async fn connection_manager(&self) -> anyhow::Result<::redis::aio::ConnectionManager> {
        self.client()
            .get_connection_manager()
            .await
            .with_context(|| format!("failed to connect to redis at {}", self.url()))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL is fine: nothing is persisted. `wait` reaps it so no zombie is left.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum StartError {
    /// The free port was taken between choosing it and binding it; try another one.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(error: anyhow::Error) -> Self {
        Self::Other(error)
    }
}

impl From<std::io::Error> for StartError {
    fn from(error: std::io::Error) -> Self {
        Self::Other(error.into())
    }
}

/// One `PING` over a fresh connection, with short timeouts.
fn ping(addr: SocketAddr) -> anyhow::Result<()> {
    let timeout = Duration::from_millis(500);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply)?;
    if &reply != b"+PONG\r\n" {
        bail!(
            "unexpected PING reply {:?}",
            String::from_utf8_lossy(&reply)
        );
    }
    Ok(())
}

/// Finds `redis-server` on `PATH` or in `/usr/bin` (Debian's location).
fn find_redis_server() -> anyhow::Result<PathBuf> {
    find_program("redis-server", &["/usr/bin", "/usr/local/bin"]).ok_or_else(|| {
        anyhow::anyhow!(
            "redis-server not found: install the Debian package redis-server (scripts/test does this)"
        )
    })
}

/// Looks for an executable `name` on `PATH`, then in `extra` directories.
pub(crate) fn find_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}
