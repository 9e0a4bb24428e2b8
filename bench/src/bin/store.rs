//! Stored messages per second into a real Redis through `threatmail-store`, side by side in
//! the same run with a bare `redis-benchmark` pipeline of the same number of commands (the
//! ceiling).
//!
//! The phishing corpus is parsed once, then copied until there are `--messages` distinct
//! messages (each copy gets its own Message-ID and first header line, so its own identity).
//! Writers (`--writers`, each its own folder, one batch of `--batch` messages in flight)
//! write them through `Store::write`: one script per batch for records, indexes,
//! locations, checkpoint and outbox, then the outbox drain (read, one script emitting
//! events and cross-source index entries, delete). The writers share one multiplexed
//! connection, so their calls are pipelined on the wire.
//!
//! Redis counts every command it runs, those inside scripts included (`INFO commandstats`).
//! The ceiling is `redis-benchmark` running that many `SET`s, with the same total payload
//! (`-d` = bytes received per command), `--writers` clients each pipelining `-P 16`, on
//! the same server. Also reported: the same writes with the blobs going to a real
//! directory (each synced to disk) instead of memory.
//!
//! ```text
//! cargo run --release -p threatmail-bench --bin store -- [--messages 12000] [--writers 8] [--batch 50] [--rounds 3]
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use threatmail_source::SourceId;
use threatmail_store::{BatchItem, BlobStore, Fence, IncomingMessage, Store, WriteBatch};
use threatmail_testkit::redis::RedisServer;

struct Args {
    messages: usize,
    writers: usize,
    batch: usize,
    rounds: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        messages: 12_000,
        writers: 8,
        batch: 50,
        rounds: 3,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value: usize = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?
            .parse()
            .with_context(|| format!("{arg} needs a number"))?;
        match arg.as_str() {
            "--messages" => parsed.messages = value,
            "--writers" => parsed.writers = value.max(1),
            "--batch" => parsed.batch = value.max(1),
            "--rounds" => parsed.rounds = value.max(1),
            other => bail!("unknown argument {other}"),
        }
    }
    Ok(parsed)
}

/// `n` distinct messages made from the corpus: copy `k` of a message gets the Message-ID
/// `bench-<k>-<original>` and a first header line naming the copy.
fn messages(corpus: &[IncomingMessage], n: usize) -> Vec<IncomingMessage> {
    (0..n)
        .map(|i| {
            let base = &corpus[i % corpus.len()];
            let copy = i / corpus.len();
            let mut message = base.clone();
            let id = format!(
                "bench-{copy}-{}",
                base.parsed.message.message_id.as_deref().unwrap_or("none")
            );
            message.parsed.message.message_id = Some(id);
            let mut raw = format!("X-Bench-Copy: {copy}\r\n").into_bytes();
            raw.extend_from_slice(&base.raw);
            message.raw = raw;
            message
        })
        .collect()
}

/// `INFO commandstats` as command → (calls, microseconds spent).
async fn command_stats(
    conn: &mut redis::aio::ConnectionManager,
) -> anyhow::Result<HashMap<String, (u64, u64)>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, fields) = rest.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((name.to_owned(), (field("calls=")?, field("usec=")?)))
        })
        .collect())
}

async fn stat(conn: &mut redis::aio::ConnectionManager, field: &str) -> anyhow::Result<u64> {
    let info: String = redis::cmd("INFO").arg("stats").query_async(conn).await?;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {field} in INFO stats"))
}

struct StoreRun {
    elapsed: Duration,
    /// Commands Redis ran, script-internal ones included (INFO and CONFIG excluded).
    commands: u64,
    /// Commands the client sent.
    sent: u64,
    bytes_in: u64,
    /// Time Redis spent executing them.
    server_busy: Duration,
}

/// Writes `messages` through a fresh store on `redis` (after FLUSHALL).
async fn store_run(
    redis: &RedisServer,
    blobs: BlobStore,
    messages: &Arc<Vec<IncomingMessage>>,
    args: &Args,
) -> anyhow::Result<StoreRun> {
    // No reply timeout anywhere: FLUSHALL of a large data set, or a batch of big records
    // queued behind others, can take longer than the default half second.
    let config = || redis::aio::ConnectionManagerConfig::new().set_response_timeout(None);
    let mut admin = redis
        .client()
        .get_connection_manager_with_config(config())
        .await?;
    let _: () = redis::cmd("FLUSHALL").query_async(&mut admin).await?;
    let conn = redis
        .client()
        .get_connection_manager_with_config(config())
        .await?;
    let store = Store::new(conn, blobs);
    let source = SourceId::parse("bench")?;
    // Scripts loaded before the clock starts, as in a long-running fetcher.
    store.drain(&source).await?;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut admin)
        .await?;
    let bytes_before = stat(&mut admin, "total_net_input_bytes").await?;
    let started = Instant::now();
    let per_writer = messages.len().div_ceil(args.writers);
    let mut tasks = Vec::new();
    for writer in 0..args.writers {
        let store = store.clone();
        let source = source.clone();
        let messages = Arc::clone(messages);
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let start = writer * per_writer;
            let end = (start + per_writer).min(messages.len());
            let folder = format!("Folder {writer}");
            for (n, chunk) in messages[start..end].chunks(batch).enumerate() {
                let items: Vec<BatchItem> = chunk
                    .iter()
                    .enumerate()
                    .map(|(k, m)| {
                        let mut m = m.clone();
                        m.uid = (n * batch + k + 1) as u32;
                        BatchItem::from(m)
                    })
                    .collect();
                let last = (n * batch + chunk.len()) as u32;
                let outcome = store
                    .write(&WriteBatch {
                        source_id: source.clone(),
                        folder: folder.clone(),
                        uidvalidity: 1,
                        fence: Fence::Unfenced,
                        items,
                        checkpoint_uid: Some(last),
                    })
                    .await?;
                if let Err(error) = outcome.drained {
                    bail!("drain failed: {error}");
                }
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    let elapsed = started.elapsed();
    let bytes_in = stat(&mut admin, "total_net_input_bytes").await? - bytes_before;
    let stats = command_stats(&mut admin).await?;
    let counted = |name: &str| stats.get(name).map_or(0, |s| s.0);
    let admin_commands = counted("info") + counted("config");
    let commands = stats.values().map(|s| s.0).sum::<u64>() - admin_commands;
    let top_level = ["evalsha", "eval", "xrange", "xdel", "sadd", "script"];
    let sent = top_level.iter().map(|c| counted(c)).sum();
    // Time the server spent on what the client sent (a script's includes its commands).
    let server_busy = Duration::from_micros(
        top_level
            .iter()
            .map(|c| stats.get(*c).map_or(0, |s| s.1))
            .sum(),
    );
    if store.count(&source).await? != messages.len() {
        bail!(
            "stored {} records, expected {}",
            store.count(&source).await?,
            messages.len()
        );
    }
    if store.outbox_len(&source).await? != 0 {
        bail!("the outbox was not drained");
    }
    Ok(StoreRun {
        elapsed,
        commands,
        sent,
        bytes_in,
        server_busy,
    })
}

/// `redis-benchmark` running `commands` SETs of `value_bytes` each; its requests/s and the
/// exact command line.
fn ceiling(
    redis: &RedisServer,
    commands: u64,
    value_bytes: u64,
    clients: usize,
) -> anyhow::Result<(f64, String)> {
    let argv = [
        "-h".to_owned(),
        "127.0.0.1".to_owned(),
        "-p".to_owned(),
        redis.port().to_string(),
        "-n".to_owned(),
        commands.to_string(),
        "-c".to_owned(),
        clients.to_string(),
        "-P".to_owned(),
        "16".to_owned(),
        "-d".to_owned(),
        value_bytes.to_string(),
        "-r".to_owned(),
        "1000000".to_owned(),
        "-t".to_owned(),
        "set".to_owned(),
        "--csv".to_owned(),
    ];
    let output = Command::new("redis-benchmark")
        .args(&argv)
        .output()
        .context("failed to run redis-benchmark (Debian package redis-tools)")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // `"test","rps",…` then `"SET","123456.78",…`
    let rps = text
        .lines()
        .find(|l| l.starts_with("\"SET\""))
        .and_then(|l| l.split(',').nth(1))
        .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
        .with_context(|| format!("no SET line in redis-benchmark's output:\n{text}"))?;
    Ok((rps, format!("redis-benchmark {}", argv.join(" "))))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let corpus_dir = threatmail_bench::corpus_dir().join("phishing");
    let files = threatmail_bench::eml_files(&corpus_dir)?;
    if files.is_empty() {
        bail!(
            "no corpus at {} (set THREATMAIL_CORPUS)",
            corpus_dir.display()
        );
    }
    let corpus: Vec<IncomingMessage> = files
        .iter()
        .map(|path| Ok(IncomingMessage::parse(0, std::fs::read(path)?)))
        .collect::<anyhow::Result<_>>()?;
    let messages = Arc::new(messages(&corpus, args.messages));
    let raw_bytes: usize = messages.iter().map(|m| m.raw.len()).sum();
    let redis = RedisServer::start()?;
    println!(
        "store bench: {} messages ({:.1} MB raw, from {} corpus files), {} writers, batches of {}, redis-server on 127.0.0.1:{}",
        messages.len(),
        raw_bytes as f64 / 1e6,
        corpus.len(),
        args.writers,
        args.batch,
        redis.port()
    );
    let mut ratios = Vec::new();
    let mut last_command = String::new();
    for round in 1..=args.rounds {
        let memory = BlobStore::object_store(Arc::new(object_store::memory::InMemory::new()), "");
        let run = store_run(&redis, memory, &messages, &args).await?;
        let store_rate = messages.len() as f64 / run.elapsed.as_secs_f64();
        let value_bytes = (run.bytes_in / run.commands.max(1)).max(1);
        let (rps, command) = ceiling(&redis, run.commands, value_bytes, args.writers)?;
        let ceiling_seconds = run.commands as f64 / rps;
        let ceiling_rate = messages.len() as f64 / ceiling_seconds;
        let ratio = store_rate / ceiling_rate;
        ratios.push(ratio);
        println!(
            "round {round}: store {:.0} msg/s ({:.2} s, redis busy {:.2} s, {} commands run = {:.1}/msg, {} sent = {:.2}/msg, {:.1} MB in); ceiling {rps:.0} SET/s -> {:.2} s = {ceiling_rate:.0} msg/s; ratio {ratio:.2}x",
            store_rate,
            run.elapsed.as_secs_f64(),
            run.server_busy.as_secs_f64(),
            run.commands,
            run.commands as f64 / messages.len() as f64,
            run.sent,
            run.sent as f64 / messages.len() as f64,
            run.bytes_in as f64 / 1e6,
            ceiling_seconds,
        );
        last_command = command;
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median ratio {:.2}x of the ceiling (target >= 0.5x); ceiling command (last round): {last_command}",
        ratios[ratios.len() / 2]
    );

    // The same writes with blobs in a real directory, each file synced.
    let dir = threatmail_bench::scratch_dir()?.join("store-blobs");
    let _ = std::fs::remove_dir_all(&dir);
    let run = store_run(&redis, BlobStore::directory(&dir), &messages, &args).await?;
    println!(
        "with a blob directory ({}): {:.0} msg/s ({:.2} s)",
        dir.display(),
        messages.len() as f64 / run.elapsed.as_secs_f64(),
        run.elapsed.as_secs_f64()
    );
    remove_quietly(&dir);
    Ok(())
}

fn remove_quietly(dir: &Path) {
    if let Err(error) = std::fs::remove_dir_all(dir) {
        eprintln!("note: failed to remove {}: {error}", dir.display());
    }
}
