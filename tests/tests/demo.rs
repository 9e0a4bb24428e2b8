//! The README's first command, as a test: the demo flow (`scripts/demo` → `tm-demo`) on the
//! sample messages the project ships and on the real phishing corpus. Each run must find
//! every message in the Threat Mailbox exactly once and leave nothing behind.

use std::path::PathBuf;
use std::time::Duration;

use threatmail_e2e::{demo, threatmail_binary};

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn eml_count(dir: &std::path::Path) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
        .count())
}

#[tokio::test]
async fn the_demo_on_the_shipped_samples_passes_twice_and_leaves_nothing_behind()
-> anyhow::Result<()> {
    let samples = workspace().join("samples/mail");
    let expected = eml_count(&samples)?;
    assert!(expected >= 8, "the samples are there");
    for run in 1..=2 {
        let outcome = demo::run(&samples, threatmail_binary()?, Duration::from_secs(300)).await?;
        assert_eq!(outcome.messages, expected, "run {run}");
        assert!(
            !outcome.work_dir.exists(),
            "run {run} left {} behind",
            outcome.work_dir.display()
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_demo_on_the_phishing_corpus_stores_every_message_once() -> anyhow::Result<()> {
    let corpus = workspace().join("../shared/corpus/phishing");
    if !corpus.is_dir() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the corpus is missing at {}",
            corpus.display()
        );
        eprintln!("note: {} is missing; skipped outside CI", corpus.display());
        return Ok(());
    }
    let expected = eml_count(&corpus)?;
    let outcome = demo::run(&corpus, threatmail_binary()?, Duration::from_secs(600)).await?;
    assert_eq!(outcome.messages, expected);
    assert!(!outcome.work_dir.exists());
    Ok(())
}
