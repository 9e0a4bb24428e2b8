//! Peak memory parsing one synthetic 50 MB message, against its size.
//!
//! ```text
//! cargo run --release -p threatmail-bench --bin peak_memory -- [--size-mb N] [attachment|text|html ...]
//! ```
//! For each shape (default: all three) a deterministic message of about N MB (default 50) is
//! written to `target/bench/`, then parsed in a child process (this binary with `--child`),
//! which reports its peak resident set (`VmHWM`) after reading the file and after parsing and
//! building the summary. The parent prints the peaks against the message size.
//!
//! - `attachment`: a short HTML body with indicators and one base64 attachment of the rest.
//! - `text`: a `text/plain` body (quoted-printable) of the whole size, indicators throughout.
//! - `html`: a `text/html` body of the whole size, links and indicators throughout.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;
use threatmail_bench::{peak_rss, scratch_dir};
use threatmail_parse::parse_message;

const SHAPES: [&str; 3] = ["attachment", "text", "html"];

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--child") {
        args.next();
        let path = PathBuf::from(args.next().context("--child needs a file")?);
        return child(&path);
    }
    let mut size_mb = 50usize;
    let mut shapes = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size-mb" => size_mb = args.next().context("--size-mb needs a value")?.parse()?,
            shape if SHAPES.contains(&shape) => shapes.push(shape.to_string()),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    if shapes.is_empty() {
        shapes = SHAPES.iter().map(|s| s.to_string()).collect();
    }
    let exe = std::env::current_exe()?;
    println!(
        "{:10} {:>10} {:>14} {:>14} {:>8} {:>10}",
        "shape", "size MB", "peak read MB", "peak parse MB", "ratio", "parse s"
    );
    for shape in &shapes {
        let path = scratch_dir()?.join(format!("synthetic-{shape}-{size_mb}mb.eml"));
        if !path.exists() {
            write_message(&path, shape, size_mb << 20)?;
        }
        let size = std::fs::metadata(&path)?.len();
        let output = Command::new(&exe)
            .arg("--child")
            .arg(&path)
            .output()
            .context("failed to run the child")?;
        anyhow::ensure!(
            output.status.success(),
            "child failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let read = report["peak_after_read"].as_f64().unwrap_or(0.0);
        let parsed = report["peak_after_parse"].as_f64().unwrap_or(0.0);
        println!(
            "{shape:10} {:>10.1} {:>14.1} {:>14.1} {:>7.2}x {:>10.2}   ({} indicators, {} warnings)",
            size as f64 / 1048576.0,
            read / 1048576.0,
            parsed / 1048576.0,
            parsed / size as f64,
            report["seconds"].as_f64().unwrap_or(0.0),
            report["indicators"],
            report["warnings"],
        );
    }
    Ok(())
}

/// Reads and parses one file, printing peak memory as JSON.
fn child(path: &Path) -> anyhow::Result<()> {
    let raw = std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))?;
    let peak_after_read = peak_rss()?;
    let started = std::time::Instant::now();
    let parsed = parse_message(&raw);
    let summary = parsed.summary();
    let seconds = started.elapsed().as_secs_f64();
    let peak_after_parse = peak_rss()?;
    println!(
        "{}",
        serde_json::json!({
            "size": raw.len(),
            "peak_after_read": peak_after_read,
            "peak_after_parse": peak_after_parse,
            "seconds": seconds,
            "indicators": parsed.indicators.len(),
            "warnings": parsed.warnings.len(),
            "urls": summary.urls.len(),
        })
    );
    Ok(())
}

/// A line of prose with indicators, numbered so every line differs.
fn prose_line(i: usize) -> String {
    format!(
        "Line {i}: block hxxps://host{}.example[.]com/path/{i} and 198.51.100.{} (sender user{i}@example.net), sha256 {:064x}, see CVE-2026-{:05}.\r\n",
        i % 1000,
        i % 250,
        i as u128 * 0x9E37_79B9_7F4A_7C15,
        i % 100_000
    )
}

fn write_message(path: &Path, shape: &str, size: usize) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let head = "From: Sender <sender@example.com>\r\nTo: soc@example.org\r\nSubject: [TLP:AMBER] synthetic large message\r\nDate: Tue, 01 Dec 2026 08:00:00 +0000\r\nMessage-ID: <synthetic@example.com>\r\nMIME-Version: 1.0\r\n";
    out.write_all(head.as_bytes())?;
    let mut written = head.len();
    match shape {
        "attachment" => {
            let intro = "Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n--b0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>See <a href=\"https://files.example.net/d/1\">the file</a> from 203.0.113.9.</p>\r\n--b0\r\nContent-Type: application/octet-stream; name=\"dump.bin\"\r\nContent-Disposition: attachment; filename=\"dump.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n";
            out.write_all(intro.as_bytes())?;
            written += intro.len();
            // Base64 lines of pseudo-random data up to the size.
            const ALPHABET: &[u8] =
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            let mut state: u64 = 0x2545_F491_4F6C_DD1D;
            let mut line = [0u8; 78];
            line[76] = b'\r';
            line[77] = b'\n';
            while written + line.len() + 10 < size {
                for b in &mut line[..76] {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    *b = ALPHABET[(state % 64) as usize];
                }
                out.write_all(&line)?;
                written += line.len();
            }
            out.write_all(b"--b0--\r\n")?;
        }
        "text" => {
            let intro = "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n";
            out.write_all(intro.as_bytes())?;
            written += intro.len();
            let mut i = 0;
            while written < size {
                let line = prose_line(i).replace('=', "=3D");
                out.write_all(line.as_bytes())?;
                written += line.len();
                i += 1;
            }
        }
        _ => {
            let intro = "Content-Type: text/html; charset=utf-8\r\n\r\n<html><head><title>digest</title></head><body>\r\n";
            out.write_all(intro.as_bytes())?;
            written += intro.len();
            let mut i = 0;
            while written < size {
                let line = format!(
                    "<p><a href=\"https://link{}.example.org/x?i={i}\">https://shown{}.example.com/</a> {}</p>\r\n",
                    i % 500,
                    i % 500,
                    prose_line(i).trim_end()
                );
                out.write_all(line.as_bytes())?;
                written += line.len();
                i += 1;
            }
            out.write_all(b"</body></html>\r\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
