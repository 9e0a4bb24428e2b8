//! `threatmail parse FILE.eml…`: parse mail offline and print records as JSON.
//!
//! Each message becomes one JSON object: `file`, the full record (headers, bodies, attachments
//! and attached messages, every indicator with where it was found, TLP markings, link
//! mismatches, file names, warnings) and `summary`, which holds exactly the fields of an answer
//! key in `../shared/corpus/labelled` so it can be compared with one as it is. A file that cannot
//! be read gets a one-line error naming it; the other files are still processed and the exit
//! status is non-zero.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde::Serialize;
use threatmail_parse::{ParsedMessage, Summary, parse_message};

/// Arguments of `threatmail parse`.
#[derive(Debug, clap::Args)]
pub(crate) struct ParseArgs {
    /// The .eml files to parse (`-`: standard input).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Refuse a message larger than this many bytes (the fetcher's default limit).
    #[arg(long, default_value_t = 50 * 1024 * 1024, value_name = "BYTES")]
    max_bytes: u64,
    /// Print each message's object on one line (JSON Lines) instead of indented.
    #[arg(long)]
    compact: bool,
    /// Print only `file` and `summary` for each message.
    #[arg(long)]
    summary_only: bool,
}

#[derive(Serialize)]
struct Output<'a> {
    file: String,
    #[serde(flatten)]
    record: Option<&'a ParsedMessage>,
    summary: Summary,
}

pub(crate) fn run(args: ParseArgs) -> anyhow::Result<ExitCode> {
    match parse_files(&args) {
        // `… | head`: the reader has what it wanted.
        Err(error) if super::client::is_broken_pipe(&error) => Ok(ExitCode::SUCCESS),
        other => other,
    }
}

/// The bytes of `file` (`-`: standard input), at most `max` of them.
fn read_limited(file: &std::path::Path, max: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let source: Box<dyn std::io::Read> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::fs::File::open(file)?)
    };
    let mut raw = Vec::new();
    source.take(max.saturating_add(1)).read_to_end(&mut raw)?;
    if raw.len() as u64 > max {
        return Err(std::io::Error::other(format!(
            "larger than the {max}-byte limit (--max-bytes)"
        )));
    }
    Ok(raw)
}

fn parse_files(args: &ParseArgs) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut unreadable = 0usize;
    for file in &args.files {
        let raw = match read_limited(file, args.max_bytes) {
            Ok(raw) => raw,
            Err(error) => {
                // Flush what was printed so far so the error lines up with the output.
                out.flush().context("failed to write to stdout")?;
                eprintln!("error: failed to read {}: {error}", file.display());
                unreadable += 1;
                continue;
            }
        };
        let parsed = parse_message(&raw);
        let output = Output {
            file: file.display().to_string(),
            record: (!args.summary_only).then_some(&parsed),
            summary: parsed.summary(),
        };
        if args.compact {
            serde_json::to_writer(&mut out, &output)
        } else {
            serde_json::to_writer_pretty(&mut out, &output)
        }
        .context("failed to write to stdout")?;
        out.write_all(b"\n").context("failed to write to stdout")?;
    }
    out.flush().context("failed to write to stdout")?;
    Ok(if unreadable > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
