//! Shared helpers of the integration tests: where the corpus is, and reading it.
//!
//! The corpus (`../shared/corpus`, live malicious mail under a non-commercial licence) is never
//! copied into the repository; tests read it in place. Set `THREATMAIL_CORPUS` to use another
//! copy. Without it, a test fails when `CI=true` and prints a notice and passes otherwise.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The corpus root, or `None` (after a notice) when it is missing outside CI.
pub(crate) fn corpus_dir() -> Option<PathBuf> {
    let dir = match std::env::var_os("THREATMAIL_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    };
    if dir.is_dir() {
        return Some(dir);
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !in_ci,
        "corpus not found at {} (set THREATMAIL_CORPUS); required when CI=true",
        dir.display()
    );
    eprintln!(
        "notice: corpus not found at {}; skipping (set THREATMAIL_CORPUS)",
        dir.display()
    );
    None
}

/// Every `.eml` file under `dir`, sorted.
pub(crate) fn eml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "eml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}
