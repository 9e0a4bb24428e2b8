//! `threatmail corpus …`: statistics over a folder of mail and scoring against answer keys.
//!
//! - `stats DIR…`: messages, bytes, warnings and indicators per type (all places, and in the
//!   answer keys' scope) over every `.eml` below the folders.
//! - `score DIR`: holds `threatmail parse` against every `NAME.expected.json` of a labelled
//!   folder: per type true/false positives and misses, overall precision and recall, trap
//!   hits, TLP accuracy and exact matches of file names, link mismatches and attachments; exits
//!   non-zero below the given thresholds.
//! - `text DIR…`: for every message, the decoded in-scope text the scanners read (joined) and
//!   what our extractor finds in that joined text, as JSON Lines, so another extractor can be
//!   run over exactly the same text (see `bench/python/compare_ioc_finder.py`).

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use serde::Serialize;
use threatmail_parse::{
    AnswerKey, IndicatorKind, Scorecard, extract_text, parse_message, parse_message_with_texts,
};

use super::terminal::field;

/// Arguments of `threatmail corpus`.
#[derive(Debug, clap::Args)]
pub(crate) struct CorpusArgs {
    #[command(subcommand)]
    command: CorpusCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CorpusCommand {
    /// Messages, warnings and indicators per type over folders of .eml files.
    Stats(StatsArgs),
    /// Score `threatmail parse` against the answer keys of a labelled folder.
    Score(ScoreArgs),
    /// Print each message's decoded in-scope text and our extraction of it, as JSON Lines.
    Text(TextArgs),
}

#[derive(Debug, clap::Args)]
struct StatsArgs {
    /// Folders to read (every .eml below them).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ScoreArgs {
    /// A labelled folder: NAME.eml next to NAME.expected.json.
    dir: PathBuf,
    /// Exit non-zero if overall precision is below this.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    min_precision: f64,
    /// Exit non-zero if overall recall is below this.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    min_recall: f64,
    /// Exit non-zero if more `not_iocs` entries than this are found.
    #[arg(long)]
    max_trap_hits: Option<usize>,
    /// Exit non-zero if fewer messages than this fraction have the right TLP.
    #[arg(long, default_value_t = 0.0, value_parser = fraction)]
    min_tlp_accuracy: f64,
    /// Also print each message's false positives, misses and mismatching fields.
    #[arg(long, short)]
    verbose: bool,
    /// Print the scorecard as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct TextArgs {
    /// Folders to read (every .eml below them).
    #[arg(required = true)]
    dirs: Vec<PathBuf>,
}

/// A fraction from 0 to 1 (a threshold of precision, recall or accuracy).
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("a fraction from 0 to 1, such as 0.98".to_owned()),
    }
}

pub(crate) fn run(args: CorpusArgs) -> anyhow::Result<ExitCode> {
    let outcome = match args.command {
        CorpusCommand::Stats(args) => stats(args),
        CorpusCommand::Score(args) => score(args),
        CorpusCommand::Text(args) => text(args),
    };
    match outcome {
        // `… | head`: the reader has what it wanted.
        Err(error) if super::client::is_broken_pipe(&error) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// Every `.eml` below `dir`, sorted.
fn eml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir)
            .with_context(|| format!("failed to read folder {}", dir.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("failed to read folder {}", dir.display()))?
                .path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "eml") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[derive(Debug, Default, Serialize)]
struct Stats {
    messages: u64,
    bytes: u64,
    unreadable: u64,
    messages_with_warnings: u64,
    warnings: BTreeMap<String, u64>,
    /// Distinct indicators per message, summed, from every place (headers included).
    indicators: BTreeMap<String, u64>,
    /// The same, answer-key scope only.
    indicators_in_scope: BTreeMap<String, u64>,
    defanged: u64,
    tlp: BTreeMap<String, u64>,
    link_mismatches: u64,
    attachments: u64,
    seconds: f64,
}

fn stats(args: StatsArgs) -> anyhow::Result<ExitCode> {
    let mut stats = Stats::default();
    let started = Instant::now();
    for dir in &args.dirs {
        for file in eml_files(dir)? {
            let raw = match std::fs::read(&file) {
                Ok(raw) => raw,
                Err(error) => {
                    eprintln!("error: failed to read {}: {error}", file.display());
                    stats.unreadable += 1;
                    continue;
                }
            };
            let parsed = parse_message(&raw);
            let summary = parsed.summary();
            stats.messages += 1;
            stats.bytes += raw.len() as u64;
            if !parsed.warnings.is_empty() {
                stats.messages_with_warnings += 1;
            }
            for warning in &parsed.warnings {
                *stats.warnings.entry(warning.kind.to_string()).or_default() += 1;
            }
            for indicator in &parsed.indicators {
                *stats
                    .indicators
                    .entry(indicator.kind.to_string())
                    .or_default() += 1;
                stats.defanged += u64::from(indicator.defanged);
            }
            for kind in IndicatorKind::ALL {
                *stats
                    .indicators_in_scope
                    .entry(kind.to_string())
                    .or_default() += summary.set(kind).len() as u64;
            }
            let tlp = summary.tlp.clone().unwrap_or_else(|| "none".to_string());
            *stats.tlp.entry(tlp).or_default() += 1;
            stats.link_mismatches += summary.link_mismatches.len() as u64;
            stats.attachments += summary.attachments.len() as u64;
        }
    }
    stats.seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&stats)?);
    } else {
        print_stats(&stats);
    }
    Ok(if stats.unreadable > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn print_stats(stats: &Stats) {
    println!(
        "messages: {} ({} bytes, {} unreadable) in {:.2} s",
        stats.messages, stats.bytes, stats.unreadable, stats.seconds
    );
    let total: u64 = stats.warnings.values().sum();
    println!(
        "warnings: {total} in {} messages",
        stats.messages_with_warnings
    );
    for (kind, n) in &stats.warnings {
        println!("  {kind}: {n}");
    }
    println!("indicators per type (all places / answer-key scope):");
    for kind in IndicatorKind::ALL {
        let name = kind.to_string();
        println!(
            "  {name:8} {:6} / {:6}",
            stats.indicators.get(&name).copied().unwrap_or(0),
            stats.indicators_in_scope.get(&name).copied().unwrap_or(0)
        );
    }
    println!("defanged indicators: {}", stats.defanged);
    let tlp: Vec<String> = stats.tlp.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("tlp: {}", tlp.join(", "));
    println!(
        "link mismatches: {}; named attachments: {}",
        stats.link_mismatches, stats.attachments
    );
}

fn score(args: ScoreArgs) -> anyhow::Result<ExitCode> {
    let mut card = Scorecard::default();
    let mut keys: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("failed to read folder {}", args.dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    keys.sort();
    anyhow::ensure!(
        !keys.is_empty(),
        "no answer keys (*.expected.json) in {}",
        args.dir.display()
    );
    for key_path in &keys {
        let key: AnswerKey = serde_json::from_slice(
            &std::fs::read(key_path)
                .with_context(|| format!("failed to read {}", key_path.display()))?,
        )
        .with_context(|| format!("failed to parse answer key {}", key_path.display()))?;
        let eml = args.dir.join(&key.message);
        let raw =
            std::fs::read(&eml).with_context(|| format!("failed to read {}", eml.display()))?;
        card.add(&key, &parse_message(&raw).summary());
    }
    let overall = card.overall();
    let (tlp_ok, total) = card.tlp_accuracy();
    let tlp_accuracy = tlp_ok as f64 / total as f64;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&card)?);
    } else {
        print_score(&card, args.verbose);
    }
    let mut failures = Vec::new();
    if overall.precision() < args.min_precision {
        failures.push(format!(
            "precision {:.4} is below {}",
            overall.precision(),
            args.min_precision
        ));
    }
    if overall.recall() < args.min_recall {
        failures.push(format!(
            "recall {:.4} is below {}",
            overall.recall(),
            args.min_recall
        ));
    }
    if let Some(max) = args.max_trap_hits
        && card.trap_hits() > max
    {
        failures.push(format!("{} trap hits, more than {max}", card.trap_hits()));
    }
    if tlp_accuracy < args.min_tlp_accuracy {
        failures.push(format!(
            "TLP accuracy {tlp_accuracy:.4} is below {}",
            args.min_tlp_accuracy
        ));
    }
    for failure in &failures {
        eprintln!("error: {failure}");
    }
    Ok(if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_score(card: &Scorecard, verbose: bool) {
    if verbose {
        for m in &card.messages {
            for (kind, values) in &m.false_positives {
                println!(
                    "{}: false positive {kind}: {}",
                    field(&m.message),
                    field(&values.join(" "))
                );
            }
            for (kind, values) in &m.misses {
                println!(
                    "{}: miss {kind}: {}",
                    field(&m.message),
                    field(&values.join(" "))
                );
            }
            if !m.trap_hits.is_empty() {
                println!(
                    "{}: trap hit: {}",
                    field(&m.message),
                    field(&m.trap_hits.join(" "))
                );
            }
            for (ok, field) in [
                (m.tlp_ok, "tlp"),
                (m.file_names_ok, "file_names"),
                (m.link_mismatches_ok, "link_mismatches"),
                (m.attachments_ok, "attachments"),
            ] {
                if !ok {
                    println!("{}: {field} differs from the key", m.message);
                }
            }
        }
        println!();
    }
    println!(
        "{:8} {:>5} {:>5} {:>5} {:>9} {:>7}",
        "type", "TP", "FP", "FN", "precision", "recall"
    );
    for kind in IndicatorKind::ALL {
        let c = card.per_type.get(&kind).copied().unwrap_or_default();
        println!(
            "{:8} {:>5} {:>5} {:>5} {:>9.4} {:>7.4}",
            kind.to_string(),
            c.tp,
            c.fp,
            c.fn_,
            c.precision(),
            c.recall()
        );
    }
    let o = card.overall();
    println!(
        "{:8} {:>5} {:>5} {:>5} {:>9.4} {:>7.4}",
        "overall",
        o.tp,
        o.fp,
        o.fn_,
        o.precision(),
        o.recall()
    );
    let (tlp_ok, total) = card.tlp_accuracy();
    let exact = |f: fn(&threatmail_parse::MessageScore) -> bool| {
        card.messages.iter().filter(|m| f(m)).count()
    };
    println!("trap hits: {}", card.trap_hits());
    println!("tlp: {tlp_ok}/{total} right");
    println!(
        "exact per message: file_names {}/{total}, link_mismatches {}/{total}, attachments {}/{total}",
        exact(|m| m.file_names_ok),
        exact(|m| m.link_mismatches_ok),
        exact(|m| m.attachments_ok)
    );
}

/// One line of `corpus text`.
#[derive(Serialize)]
struct TextLine {
    file: String,
    /// The in-scope texts the scanners read, joined by newlines.
    text: String,
    /// What our extractor finds in `text`, per answer-key set.
    ours: BTreeMap<&'static str, Vec<String>>,
}

fn text(args: TextArgs) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut unreadable = 0;
    for dir in &args.dirs {
        for file in eml_files(dir)? {
            let raw = match std::fs::read(&file) {
                Ok(raw) => raw,
                Err(error) => {
                    eprintln!("error: failed to read {}: {error}", file.display());
                    unreadable += 1;
                    continue;
                }
            };
            let (_, texts) = parse_message_with_texts(&raw);
            let text: Vec<&str> = texts
                .iter()
                .filter(|t| t.location.in_key_scope())
                .map(|t| t.text.as_str())
                .collect();
            let text = text.join("\n");
            let extraction = extract_text(&text);
            let ours = IndicatorKind::ALL
                .iter()
                .map(|&k| {
                    let values = extraction
                        .values(k)
                        .into_iter()
                        .map(str::to_string)
                        .collect();
                    (k.key_field(), values)
                })
                .collect();
            let line = TextLine {
                file: file.display().to_string(),
                text,
                ours,
            };
            serde_json::to_writer(&mut out, &line).context("failed to write to stdout")?;
            out.write_all(b"\n").context("failed to write to stdout")?;
        }
    }
    out.flush().context("failed to write to stdout")?;
    Ok(if unreadable > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
