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
    /// The .eml files to parse.
    #[arg(required = true)]
    files: Vec<PathBuf>,
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
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut unreadable = 0usize;
    for file in &args.files {
        let raw = match std::fs::read(file) {
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
