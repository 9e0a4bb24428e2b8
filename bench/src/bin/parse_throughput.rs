//! Parse + extract throughput over the corpus, side by side with PyPI `ioc-finder` on the same
//! decoded text, in one run.
//!
//! ```text
//! cargo run --release -p threatmail-bench --bin parse_throughput -- [--iterations N] [--threads N] [--no-ioc-finder] [DIR...]
//! ```
//! Folders default to the corpus's `phishing/` and `edge/`. Ours is measured from raw bytes
//! (MIME parsing, decoding, hashing, extraction, summary) on one thread, and on `--threads`
//! threads (default: the machine's cores) splitting the messages; ioc-finder gets only the
//! decoded in-scope text of each message (what our scanners read), which is the most it can be
//! given, and runs on one thread, with its default indicator types and with every type.
//!
//! Also on one thread, in the same run, what bounds ours: mail-parser's own `parse` of the raw
//! corpus with nothing else, MD5 + SHA-1 + SHA-256 of buffers of exactly the sizes of every
//! attachment the records list (hashing speed does not depend on the bytes), and extraction
//! alone on the in-scope text. Hashing plus extraction is a floor for any pipeline that
//! hashes every attachment and scans the in-scope text with this extractor, however fast its
//! MIME parsing.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};
use threatmail_bench::{corpus_dir, eml_files, scratch_dir, venv_python, workspace_root};
use threatmail_parse::{MessageRecord, extract_text, parse_message, parse_message_with_texts};

struct Args {
    iterations: usize,
    threads: usize,
    ioc_finder: bool,
    dirs: Vec<PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut args = Args {
        iterations: 10,
        threads: std::thread::available_parallelism().map_or(1, usize::from),
        ioc_finder: true,
        dirs: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--iterations" => {
                args.iterations = it.next().context("--iterations needs a value")?.parse()?;
            }
            "--threads" => {
                args.threads = it.next().context("--threads needs a value")?.parse()?;
            }
            "--no-ioc-finder" => args.ioc_finder = false,
            _ => args.dirs.push(PathBuf::from(arg)),
        }
    }
    if args.dirs.is_empty() {
        args.dirs = vec![corpus_dir().join("phishing"), corpus_dir().join("edge")];
    }
    Ok(args)
}

/// Runs `f` `n` times; returns the fastest run.
fn best_of(n: usize, mut f: impl FnMut()) -> Duration {
    (0..n.max(1))
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    let mut messages = Vec::new();
    for dir in &args.dirs {
        for file in eml_files(dir)? {
            messages.push(
                std::fs::read(&file)
                    .with_context(|| format!("failed to read {}", file.display()))?,
            );
        }
    }
    anyhow::ensure!(!messages.is_empty(), "no messages found");
    let raw_bytes: usize = messages.iter().map(Vec::len).sum();
    let n = messages.len();

    // Ours, from raw bytes, on one thread.
    let mut sink = 0usize;
    let parse_time = best_of(args.iterations, || {
        for raw in &messages {
            sink += parse_message(raw).summary().urls.len();
        }
    });
    // And on several, each taking every `threads`-th message.
    let threads = args.threads.max(1);
    let parallel_time = best_of(args.iterations, || {
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let messages = &messages;
                    scope.spawn(move || {
                        messages
                            .iter()
                            .skip(t)
                            .step_by(threads)
                            .map(|raw| parse_message(raw).summary().urls.len())
                            .sum::<usize>()
                    })
                })
                .collect();
            for worker in workers {
                sink += worker.join().unwrap_or_default();
            }
        });
    });

    // mail-parser's own parse, nothing else.
    let mail_parser_time = best_of(args.iterations, || {
        for raw in &messages {
            sink += mail_parser::MessageParser::default()
                .parse(raw)
                .map_or(0, |m| m.parts.len());
        }
    });
    // Hashing: buffers of the sizes of every attachment of every record, nested ones included.
    let mut sizes = Vec::new();
    for raw in &messages {
        attachment_sizes(&parse_message(raw).message, &mut sizes);
    }
    let attachment_bytes: usize = sizes.iter().sum();
    let buffer = vec![0x5au8; sizes.iter().copied().max().unwrap_or(0)];
    let hash_time = best_of(args.iterations, || {
        for &size in &sizes {
            let bytes = &buffer[..size];
            sink += usize::from(Md5::digest(bytes)[0])
                + usize::from(Sha1::digest(bytes)[0])
                + usize::from(Sha256::digest(bytes)[0]);
        }
    });

    // The decoded in-scope text of each message, for both extractors.
    let texts: Vec<String> = messages
        .iter()
        .map(|raw| {
            let (_, texts) = parse_message_with_texts(raw);
            texts
                .iter()
                .filter(|t| t.location.in_key_scope())
                .map(|t| t.text.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    let text_bytes: usize = texts.iter().map(String::len).sum();
    let extract_time = best_of(args.iterations, || {
        for text in &texts {
            sink += extract_text(text).indicators.len();
        }
    });

    let per_s = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    let mb_s = |bytes: usize, d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    println!(
        "corpus: {n} messages, {:.1} MB raw, {:.2} MB decoded in-scope text ({} folders)",
        raw_bytes as f64 / 1e6,
        text_bytes as f64 / 1e6,
        args.dirs.len()
    );
    println!(
        "threatmail parse+extract (raw bytes): {:>10.0} messages/s {:>8.1} MB/s  (best of {}, {:.1} ms per pass)",
        per_s(n, parse_time),
        mb_s(raw_bytes, parse_time),
        args.iterations,
        parse_time.as_secs_f64() * 1e3
    );
    println!(
        "threatmail parse+extract, {threads} threads:  {:>10.0} messages/s {:>8.1} MB/s",
        per_s(n, parallel_time),
        mb_s(raw_bytes, parallel_time)
    );
    println!(
        "threatmail extract only (same text):  {:>10.0} messages/s {:>8.1} MB/s",
        per_s(n, extract_time),
        mb_s(text_bytes, extract_time)
    );

    let floor = hash_time + extract_time;
    println!(
        "mail-parser parse alone (raw bytes):  {:>10.0} messages/s {:>8.1} MB/s  ({:.1} ms per pass)",
        per_s(n, mail_parser_time),
        mb_s(raw_bytes, mail_parser_time),
        mail_parser_time.as_secs_f64() * 1e3
    );
    println!(
        "MD5+SHA-1+SHA-256 of the attachments:  {:>9.0} messages/s {:>8.1} MB/s  ({} attachments, {:.1} MB, {:.1} ms per pass)",
        per_s(n, hash_time),
        mb_s(attachment_bytes, hash_time),
        sizes.len(),
        attachment_bytes as f64 / 1e6,
        hash_time.as_secs_f64() * 1e3
    );
    println!(
        "floor, hashing + extraction only:     {:>10.0} messages/s  ({:.1} ms per pass; ours is {:.2}x it)",
        per_s(n, floor),
        floor.as_secs_f64() * 1e3,
        parse_time.as_secs_f64() / floor.as_secs_f64()
    );

    if args.ioc_finder {
        let path = scratch_dir()?.join("throughput-texts.jsonl");
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        for text in &texts {
            serde_json::to_writer(&mut file, &serde_json::json!({ "text": text }))?;
            file.write_all(b"\n")?;
        }
        file.flush()?;
        drop(file);
        let python = venv_python()?;
        let script = workspace_root().join("bench/python/ioc_finder_bench.py");
        for types in ["default", "all"] {
            let output = Command::new(&python)
                .arg(&script)
                .arg(&path)
                .arg(types)
                .output()
                .with_context(|| format!("failed to run {}", python.display()))?;
            anyhow::ensure!(
                output.status.success(),
                "ioc-finder bench failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
            let seconds = report["seconds"]
                .as_f64()
                .context("no seconds in ioc-finder report")?;
            let theirs = report["messages"].as_f64().unwrap_or(0.0) / seconds;
            let theirs_mb = report["text_bytes"].as_f64().unwrap_or(0.0) / 1e6 / seconds;
            println!(
                "ioc-finder 9.4.1, {types:7} types (same text): {theirs:>6.0} messages/s {theirs_mb:>6.2} MB/s  ({seconds:.2} s, one pass)"
            );
            println!(
                "  ratio: parse+extract {:.0}x on 1 thread, {:.0}x on {threads}; extract only {:.0}x; mail-parser alone {:.0}x; hashing + extraction floor {:.0}x",
                per_s(n, parse_time) / theirs,
                per_s(n, parallel_time) / theirs,
                per_s(n, extract_time) / theirs,
                per_s(n, mail_parser_time) / theirs,
                per_s(n, floor) / theirs
            );
        }
    }
    // Keep the optimiser from discarding the work.
    std::hint::black_box(sink);
    Ok(())
}

/// The sizes of the attachments of `record` and of the messages attached to it.
fn attachment_sizes(record: &MessageRecord, sizes: &mut Vec<usize>) {
    for attachment in &record.attachments {
        sizes.push(usize::try_from(attachment.size).unwrap_or(usize::MAX));
        if let Some(nested) = &attachment.message {
            attachment_sizes(nested, sizes);
        }
    }
}
