//! Benchmark harness: the binaries under `src/bin/` each print figures against a baseline
//! measured in the same run.
//!
//! - `parse_throughput`: parse + extract over the corpus (messages/s, MB/s), side by side with
//!   PyPI `ioc-finder` on the same decoded text.
//! - `peak_memory`: peak resident memory parsing one synthetic 50 MB message, in a child
//!   process, against the message's size.
//! - `scan_linearity`: extraction speed on hostile text (long base64 runs ending in `@` or `.`)
//!   against prose of the same size.
//! - `sync`: a 12,000-message folder synced end to end by the fetcher's `sync_folder` over
//!   TLS + XOAUTH2, against a bare async-imap `UID FETCH 1:* BODY.PEEK[]` and mbsync.
//!
//! The corpus (`../shared/corpus`) is read in place and never copied; generated files go to
//! `target/bench/`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context as _;

/// The workspace root (the folder holding `bench/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// The corpus root: `THREATMAIL_CORPUS`, else `../shared/corpus` beside the workspace.
pub fn corpus_dir() -> PathBuf {
    match std::env::var_os("THREATMAIL_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => workspace_root().join("../shared/corpus"),
    }
}

/// Where generated files go (`target/bench/`), created if missing.
pub fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = workspace_root().join("target/bench");
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    Ok(dir)
}

/// Every `.eml` below `dir`, sorted.
pub fn eml_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("failed to read folder {}", dir.display()))?
        {
            let path = entry?.path();
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

/// The python of `target/bench-venv` (made by `bench/python/venv.sh`, with ioc-finder 9.4.1).
pub fn venv_python() -> anyhow::Result<PathBuf> {
    let script = workspace_root().join("bench/python/venv.sh");
    let output = Command::new("bash")
        .arg(&script)
        .output()
        .with_context(|| format!("failed to run {}", script.display()))?;
    anyhow::ensure!(
        output.status.success(),
        "{} failed: {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

/// This process's peak resident set size in bytes (`VmHWM` of `/proc/self/status`).
pub fn peak_rss() -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("failed to read /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM in /proc/self/status")?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .context("malformed VmHWM line")?
        .parse()?;
    Ok(kib * 1024)
}
