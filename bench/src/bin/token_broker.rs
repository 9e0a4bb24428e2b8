//! Cached `GetToken` over loopback gRPC, side by side with an empty unary call (the gRPC
//! health `Check` on the same server: the ceiling), both with the same number of
//! concurrent callers.
//!
//! A broker runs as `threatmail_token_broker::run` with production cache settings on a real
//! Redis and the test kit's Entra stand-in; one source is stored, its token fetched once,
//! then every measured call is served from the broker's cache (checked: the stand-in sees
//! one request). The server and the callers run on separate tokio runtimes in this process.
//! Rounds alternate baseline and `GetToken` so drift affects both alike; figures are
//! reported against the same run's baseline.
//!
//! ```text
//! cargo run --release -p threatmail-bench --bin token_broker -- [--seconds 2] [--callers 64] [--rounds 10]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use threatmail_auth::{CredentialInterceptor, ServiceCredential};
use threatmail_proto::v1::GetTokenRequest;
use threatmail_proto::v1::token_broker_client::TokenBrokerClient;
use threatmail_source::{Keyring, MasterKey, SecretSlot, SourceId, SourceRecord, SourceStore};
use threatmail_testkit::ca::TestCa;
use threatmail_testkit::entra::EntraStandIn;
use threatmail_testkit::redis::RedisServer;
use threatmail_testkit::tenant::{TenantFixture, TenantHandle};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// gRPC connections the callers share (round-robin), like a few fetcher processes.
const CHANNELS: usize = 4;

/// The size of the token handed out, for the report.
static TOKEN_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Args {
    seconds: u64,
    callers: usize,
    rounds: usize,
    /// Measure only one call (for profiling): `empty` or `get-token`.
    only: Option<Call>,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        seconds: 2,
        callers: 64,
        rounds: 10,
        only: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--seconds" => parsed.seconds = value.parse()?,
            "--callers" => parsed.callers = value.parse()?,
            "--rounds" => parsed.rounds = value.parse()?,
            "--only" => {
                parsed.only = Some(match value.as_str() {
                    "empty" => Call::Empty,
                    "get-token" => Call::GetToken,
                    _ => bail!("--only takes empty or get-token"),
                })
            }
            _ => bail!("unknown argument {arg}; use --seconds, --callers, --rounds, --only"),
        }
    }
    Ok(parsed)
}

/// Everything the server side keeps alive.
struct Server {
    _ca: TestCa,
    _dir: tempfile_dir::Dir,
    _redis: RedisServer,
    entra: EntraStandIn,
    tenant_id: String,
    client_id: String,
    addr: std::net::SocketAddr,
    credential: ServiceCredential,
    source: SourceId,
}

/// A temp dir without another dependency: removed on drop.
mod tempfile_dir {
    pub(crate) struct Dir(pub(crate) std::path::PathBuf);

    impl Dir {
        pub(crate) fn new() -> std::io::Result<Self> {
            let path = std::env::temp_dir().join(format!("tm-bench-broker-{}", std::process::id()));
            std::fs::create_dir_all(&path)?;
            Ok(Dir(path))
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

async fn start_server() -> anyhow::Result<Server> {
    let ca = TestCa::new()?;
    let dir = tempfile_dir::Dir::new()?;
    let ca_file = dir.0.join("ca.pem");
    ca.write_cert(&ca_file)?;
    let redis = RedisServer::start()?;
    let tenant = TenantHandle::new(TenantFixture::everything_right());
    let entra = EntraStandIn::start(&ca, tenant.clone()).await?;
    // `everything_right` always has one tenant with one app holding one secret.
    let (tenant_id, client_id, secret) = tenant.read(|f| {
        let app = f.primary_app().expect("the fixture has an app");
        (
            f.primary_tenant()
                .expect("the fixture has a tenant")
                .id
                .clone(),
            app.client_id.clone(),
            app.secrets[0].value.expose().to_owned(),
        )
    });
    let master = MasterKey::generate("bench")?;
    let master_line = master.to_line();
    let keyring = Keyring::new(master, Vec::new())?;
    let credential = ServiceCredential::generate("fetcher")?;

    let source = SourceId::new_random();
    let mut record = SourceRecord::new_oauth(
        source.clone(),
        "bench",
        "soc-phish@corp.example",
        &tenant_id,
        &client_id,
        0,
    );
    record.set_secret(&keyring, SecretSlot::Current, &secret.into(), None)?;
    SourceStore::new(redis.connection_manager().await?)
        .insert(&record)
        .await?;

    // Production cache settings; only the endpoints point at the local stack.
    let mut config = threatmail_token_broker::Config {
        redis_url: redis.url(),
        ..Default::default()
    };
    config.master_key.key = Some(master_line);
    config
        .auth
        .services
        .insert("fetcher".into(), credential.hash());
    config.entra.ca_file = Some(ca_file);
    config.entra.global.authority = Some(entra.authority());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(threatmail_token_broker::run(
        config,
        listener,
        tokio_util::sync::CancellationToken::new(),
    ));
    Ok(Server {
        _ca: ca,
        _dir: dir,
        _redis: redis,
        entra,
        tenant_id,
        client_id,
        addr,
        credential,
        source,
    })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Empty,
    GetToken,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Empty => "empty unary (health Check)",
            Call::GetToken => "GetToken (cached)",
        }
    }
}

struct Figures {
    /// Every call's latency, sorted.
    latencies: Vec<Duration>,
    elapsed: Duration,
    /// CPU time of this process (server and callers) during the round.
    cpu: Duration,
    /// CPU time of the server runtime's threads during the round.
    server_cpu: Duration,
}

/// This process's user + system CPU time, from `/proc/self/stat` (Linux; zero elsewhere).
fn process_cpu() -> Duration {
    stat_cpu("/proc/self/stat")
}

/// CPU time of this process's threads whose name starts with `prefix` (the runtimes name
/// their threads `broker` and `callers`), from `/proc/self/task/*/stat`.
fn threads_cpu(prefix: &str) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .map(|task| stat_cpu(task.path().join("stat")))
        .sum()
}

/// User + system CPU time from a procfs `stat` file.
fn stat_cpu(path: impl AsRef<std::path::Path>) -> Duration {
    let Ok(stat) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return Duration::ZERO;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    fn quantile(&self, q: f64) -> Duration {
        let n = self.latencies.len();
        self.latencies[((n as f64 * q) as usize).min(n - 1)]
    }

    /// CPU time per call, both sides together.
    fn cpu_per_call(&self) -> Duration {
        self.cpu / self.calls()
    }

    /// CPU time per call of the server alone.
    fn server_cpu_per_call(&self) -> Duration {
        self.server_cpu / self.calls()
    }

    fn calls(&self) -> u32 {
        u32::try_from(self.latencies.len()).unwrap_or(u32::MAX)
    }

    fn pooled<'a>(all: impl Iterator<Item = &'a Figures>) -> Figures {
        let mut pooled = Figures {
            latencies: Vec::new(),
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
            server_cpu: Duration::ZERO,
        };
        for figures in all {
            pooled.latencies.extend_from_slice(&figures.latencies);
            pooled.elapsed += figures.elapsed;
            pooled.cpu += figures.cpu;
            pooled.server_cpu += figures.server_cpu;
        }
        pooled.latencies.sort_unstable();
        pooled
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

async fn measure(
    call: Call,
    channels: &[Channel],
    credential: &ServiceCredential,
    source: &SourceId,
    callers: usize,
    length: Duration,
) -> anyhow::Result<Figures> {
    let start = Instant::now();
    let cpu_before = process_cpu();
    let server_cpu_before = threads_cpu("broker");
    let deadline = start + length;
    let mut tasks = Vec::new();
    for i in 0..callers {
        let channel = channels[i % channels.len()].clone();
        let interceptor = CredentialInterceptor::new(credential)?;
        let source = source.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(64 * 1024);
            let mut health = HealthClient::new(channel.clone());
            let mut broker = TokenBrokerClient::with_interceptor(channel, interceptor);
            while Instant::now() < deadline {
                let began = Instant::now();
                match call {
                    Call::Empty => {
                        health
                            .check(HealthCheckRequest {
                                service: String::new(),
                            })
                            .await?;
                    }
                    Call::GetToken => {
                        let reply = broker
                            .get_token(GetTokenRequest {
                                source_id: source.clone(),
                                min_validity_seconds: 0,
                                force_refresh: false,
                            })
                            .await?
                            .into_inner();
                        if reply.access_token.is_empty() {
                            anyhow::bail!("an empty token");
                        }
                        TOKEN_BYTES.store(
                            reply.access_token.len(),
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                }
                latencies.push(began.elapsed());
            }
            anyhow::Ok(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = start.elapsed();
    let cpu = process_cpu().saturating_sub(cpu_before);
    let server_cpu = threads_cpu("broker").saturating_sub(server_cpu_before);
    latencies.sort_unstable();
    if latencies.is_empty() {
        bail!("no call finished");
    }
    Ok(Figures {
        latencies,
        elapsed,
        cpu,
        server_cpu,
    })
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("broker")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("callers")
        .enable_all()
        .build()?;
    let server = Arc::new(server_rt.block_on(start_server())?);
    let addr = server.addr;
    let results = client_rt.block_on(async {
        let mut channels = Vec::new();
        for _ in 0..CHANNELS {
            let mut attempts = 0;
            let channel = loop {
                match tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                    .connect()
                    .await
                {
                    Ok(channel) => break channel,
                    Err(_) if attempts < 100 => {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(error) => return Err(error.into()),
                }
            };
            channels.push(channel);
        }
        // Warm up both paths (the first GetToken asks the stand-in).
        for call in [Call::Empty, Call::GetToken] {
            measure(
                call,
                &channels,
                &server.credential,
                &server.source,
                args.callers,
                Duration::from_secs(1),
            )
            .await?;
        }
        let length = Duration::from_secs(args.seconds);
        let mut results = Vec::new();
        for round in 0..args.rounds {
            for call in [Call::Empty, Call::GetToken] {
                if args.only.is_some_and(|only| only != call) {
                    continue;
                }
                let figures = measure(
                    call,
                    &channels,
                    &server.credential,
                    &server.source,
                    args.callers,
                    length,
                )
                .await?;
                results.push((round, call, figures));
            }
        }
        anyhow::Ok(results)
    })?;
    let entra_requests = server
        .entra
        .request_count(&server.tenant_id, &server.client_id);
    if entra_requests != 1 {
        bail!("the stand-in saw {entra_requests} requests; every measured call should be cached");
    }

    println!(
        "token_broker: {} callers over {CHANNELS} connections, {} s per round, {} rounds, release={}, token {} bytes",
        args.callers,
        args.seconds,
        args.rounds,
        !cfg!(debug_assertions),
        TOKEN_BYTES.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!("| round | empty calls/s | GetToken calls/s | ratio | empty p99 | GetToken p99 |");
    println!("|---|---|---|---|---|---|");
    let mut ratios = Vec::new();
    for round in 0..args.rounds {
        let of = |call: Call| {
            results
                .iter()
                .find(|(r, c, _)| *r == round && *c == call)
                .map(|(_, _, f)| f)
        };
        let (Some(empty), Some(token)) = (of(Call::Empty), of(Call::GetToken)) else {
            continue;
        };
        let ratio = token.per_second() / empty.per_second();
        ratios.push(ratio);
        println!(
            "| {} | {:.0} | {:.0} | {ratio:.2}x | {:.2} ms | {:.2} ms |",
            round + 1,
            empty.per_second(),
            token.per_second(),
            ms(empty.quantile(0.99)),
            ms(token.quantile(0.99)),
        );
    }
    println!();
    println!(
        "| call | calls | calls/s | p50 | p99 | CPU per call (both sides) | of which the server |"
    );
    println!("|---|---|---|---|---|---|---|");
    let mut pooled = Vec::new();
    for call in [Call::Empty, Call::GetToken] {
        let figures = Figures::pooled(
            results
                .iter()
                .filter(|(_, c, _)| *c == call)
                .map(|(_, _, f)| f),
        );
        if figures.latencies.is_empty() {
            continue;
        }
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {:.1} µs | {:.1} µs |",
            call.name(),
            figures.latencies.len(),
            figures.per_second(),
            ms(figures.quantile(0.50)),
            ms(figures.quantile(0.99)),
            figures.cpu_per_call().as_secs_f64() * 1e6,
            figures.server_cpu_per_call().as_secs_f64() * 1e6,
        );
        pooled.push(figures);
    }
    if let [empty, token] = pooled.as_slice() {
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        println!(
            "\nGetToken vs the ceiling: throughput {:.2}x pooled, {median:.2}x median of {} rounds \
             (target >= 0.80), {:.2}x by CPU per call; p50 {:.2}x, p99 {:.2}x the ceiling's, p99 \
             {:.2} ms (target <= 2 ms); stand-in requests: {entra_requests}",
            token.per_second() / empty.per_second(),
            ratios.len(),
            empty.cpu_per_call().as_secs_f64() / token.cpu_per_call().as_secs_f64(),
            ms(token.quantile(0.50)) / ms(empty.quantile(0.50)),
            ms(token.quantile(0.99)) / ms(empty.quantile(0.99)),
            ms(token.quantile(0.99)),
        );
    }
    // Stopping the runtimes drops the broker task; the stack is dropped after.
    drop(client_rt);
    drop(server_rt);
    Ok(())
}
