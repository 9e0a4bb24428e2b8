//! What every threatmail service process shares: loading its configuration, starting
//! telemetry, serving gRPC with health and per-RPC spans, and stopping gracefully.
//!
//! A service crate is a library whose `run(config, listener, shutdown)` the tests drive
//! directly; its `main` is one call to [`service_main`].

pub mod frames;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::de::DeserializeOwned;
use threatmail_telemetry::TelemetryConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The settings every service has.
pub trait ServiceConfig: DeserializeOwned {
    /// Where the gRPC server listens.
    fn listen(&self) -> SocketAddr;
    /// Logging and tracing.
    fn telemetry(&self) -> &TelemetryConfig;
    /// Problems a type cannot express (ranges, combinations), each a line a person can act
    /// on; empty when the configuration is good.
    fn validate(&self) -> Vec<String> {
        Vec::new()
    }
}

/// How long in-flight RPCs get to finish after shutdown was asked for.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Loads a service configuration: the file named by `--config FILE` or `THREATMAIL_CONFIG`,
/// then `THREATMAIL_*` variables of `env`, then the service's own checks. All problems are
/// reported together.
pub fn load_config<C: ServiceConfig>(
    config_file: Option<PathBuf>,
    env: &BTreeMap<String, String>,
) -> Result<C, threatmail_core::config::ConfigError> {
    let file = config_file.or_else(|| env.get("THREATMAIL_CONFIG").map(PathBuf::from));
    let config: C = threatmail_core::config::load(file.as_deref(), env)?;
    let problems = config.validate();
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(threatmail_core::config::ConfigError { problems })
    }
}

/// The whole `main` of a service binary: arguments, configuration, telemetry, signals.
///
/// `run` gets the configuration, a bound listener and a token cancelled on SIGINT/SIGTERM.
pub fn service_main<C, F, Fut>(service_name: &'static str, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let config_file = match parse_args(service_name) {
        Ok(Some(path)) => Some(path),
        Ok(None) => None,
        Err(code) => return code,
    };
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config: C = match load_config(config_file, &env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("threatmail-{service_name}: {error}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("threatmail-{service_name}: failed to start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let _telemetry = match threatmail_telemetry::init(service_name, config.telemetry()) {
            Ok(guard) => guard,
            Err(error) => {
                eprintln!("threatmail-{service_name}: {error}");
                return ExitCode::from(2);
            }
        };
        let listen = config.listen();
        let listener = match TcpListener::bind(listen).await {
            Ok(listener) => listener,
            Err(error) => {
                eprintln!(
                    "threatmail-{service_name}: failed to listen on {listen}: {error} (set `listen` or THREATMAIL_LISTEN to a free address)"
                );
                return ExitCode::FAILURE;
            }
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        match run(config, listener, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                let error = threatmail_core::error::chain(error.as_ref());
                tracing::error!(%error, "service stopped with an error");
                eprintln!("threatmail-{service_name}: {error}");
                ExitCode::FAILURE
            }
        }
    })
}

fn parse_args(service_name: &str) -> Result<Option<PathBuf>, ExitCode> {
    let mut args = std::env::args_os().skip(1);
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => match args.next() {
                Some(path) => config = Some(PathBuf::from(path)),
                None => {
                    eprintln!("threatmail-{service_name}: --config needs a file");
                    return Err(ExitCode::from(2));
                }
            },
            Some("--help") | Some("-h") => {
                println!(
                    "threatmail-{service_name} [--config FILE]\n\nSettings come from FILE (or THREATMAIL_CONFIG), then THREATMAIL_* variables.\nSee the README's Configuration section."
                );
                return Err(ExitCode::SUCCESS);
            }
            _ => {
                eprintln!("threatmail-{service_name}: unexpected argument {arg:?}; try --help");
                return Err(ExitCode::from(2));
            }
        }
    }
    Ok(config)
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutdown requested");
    token.cancel();
}

/// The router [`grpc_server`] makes and [`serve`] serves.
pub type GrpcRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<frames::SmallFramesLayer, tower::layer::util::Identity>,
>;

/// A gRPC server with what every service has: one span per RPC continuing the caller's W3C
/// trace, the standard health service, a per-request timeout, and replies sent in DATA
/// frames that concurrent calls can share a socket write with ([`frames`]).
pub fn grpc_server() -> GrpcRouter {
    let (reporter, health) = tonic_health::server::health_reporter();
    // The reporter starts out SERVING for the empty service name, which is what
    // `grpc_health_probe` and Kubernetes ask about; per-service names are set by callers.
    drop(reporter);
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(60))
        .trace_fn(threatmail_telemetry::server_span)
        .layer(frames::SmallFramesLayer)
        .add_service(health)
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then lets in-flight RPCs
/// finish.
///
/// Accepted connections get `TCP_NODELAY`. tonic applies its own `tcp_nodelay` setting only
/// to listeners it binds itself, not to a caller's listener; without it a reply larger than
/// one segment (a 1.5 KB token, a page of records) sits in the kernel until the peer's
/// delayed ACK, about 40 ms on Linux (Nagle's algorithm, RFC 896, against RFC 1122's
/// delayed ACK).
pub async fn serve(
    router: GrpcRouter,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    use tokio_stream::StreamExt as _;
    let incoming = incoming(listener).map(|accepted| accepted.map(frames::Unvectored));
    router
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await
}

/// The connections accepted on `listener`, each with `TCP_NODELAY` set.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// How long a service waits for Redis at start.
pub const REDIS_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A connection manager to the Redis at `url` with `config`, or an error naming the URL (its
/// password hidden) and the setting to check.
pub async fn connect_redis(
    url: &str,
    config: redis::aio::ConnectionManagerConfig,
) -> anyhow::Result<redis::aio::ConnectionManager> {
    use anyhow::Context as _;
    let shown = threatmail_core::redact::url(url);
    let client = redis::Client::open(url)
        .with_context(|| format!("redis_url {shown:?} is not a Redis URL"))?;
    tokio::time::timeout(
        REDIS_CONNECT_TIMEOUT,
        client.get_connection_manager_with_config(config),
    )
    .await
    .with_context(|| format!("timed out connecting to redis at {shown} (check redis_url)"))?
    .with_context(|| format!("failed to connect to redis at {shown} (check redis_url)"))
}

/// Runs the read `query` again once when its first try met a dropped connection or an I/O
/// error. After Redis restarts, a connection manager learns that its connection died from
/// the first command sent on it, which fails while it reconnects; only for reads, which
/// change nothing if the first try did reach Redis.
pub async fn read_again_if_dropped<T, F, Fut>(mut query: F) -> redis::RedisResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<T>>,
{
    match query().await {
        Err(error) if error.is_connection_dropped() || error.is_io_error() => query().await,
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use tokio_stream::StreamExt as _;

    /// A Redis that is not there: the error names the URL without its password, and the
    /// setting.
    #[tokio::test]
    async fn an_unreachable_redis_is_named_without_its_password() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("redis://:s3cretpass@127.0.0.1:{port}/");
        let error = super::connect_redis(
            &url,
            redis::aio::ConnectionManagerConfig::new().set_number_of_retries(0),
        )
        .await
        .err()
        .unwrap();
        let text = format!("{error:#}");
        assert!(
            text.contains(&format!("redis://:***@127.0.0.1:{port}/")),
            "{text}"
        );
        assert!(
            text.contains("redis_url") && !text.contains("s3cretpass"),
            "{text}"
        );
    }

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.nodelay().unwrap());
    }
}
