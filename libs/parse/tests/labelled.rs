//! Scores `threatmail-parse` against every answer key of `../shared/corpus/labelled` and fails
//! if the figures drop below what was reached (labelled README rule 7).

mod common;

use threatmail_parse::{AnswerKey, IndicatorKind, Scorecard, parse_message};

/// Overall precision reached on the developer set; the test fails below it.
const MIN_PRECISION: f64 = 1.0;
/// Overall recall reached on the developer set; the test fails below it.
const MIN_RECALL: f64 = 1.0;

#[test]
fn labelled_set_scores() {
    let Some(corpus) = common::corpus_dir() else {
        return;
    };
    let dir = corpus.join("labelled");
    let mut card = Scorecard::default();
    let mut structures_ok = 0;
    let files = common::eml_files(&dir);
    assert!(!files.is_empty(), "no messages in {}", dir.display());
    for eml in &files {
        let key_path = eml.with_extension("expected.json");
        let key: AnswerKey =
            serde_json::from_slice(&std::fs::read(&key_path).expect("key")).expect("valid key");
        let raw = std::fs::read(eml).expect("message");
        let parsed = parse_message(&raw);
        if parsed.structure == key.structure {
            structures_ok += 1;
        } else {
            println!(
                "{}: structure {} != {}",
                key.message, parsed.structure, key.structure
            );
        }
        card.add(&key, &parsed.summary());
    }
    for m in &card.messages {
        for (kind, values) in &m.false_positives {
            println!("{}: FP {kind}: {values:?}", m.message);
        }
        for (kind, values) in &m.misses {
            println!("{}: MISS {kind}: {values:?}", m.message);
        }
        if !m.trap_hits.is_empty() {
            println!("{}: TRAPS {:?}", m.message, m.trap_hits);
        }
        for (ok, what) in [
            (m.tlp_ok, "tlp"),
            (m.file_names_ok, "file_names"),
            (m.link_mismatches_ok, "link_mismatches"),
            (m.attachments_ok, "attachments"),
        ] {
            if !ok {
                println!("{}: {what} differs", m.message);
            }
        }
    }
    for kind in IndicatorKind::ALL {
        let c = card.per_type.get(&kind).copied().unwrap_or_default();
        println!("{kind:8} tp {:3} fp {:3} fn {:3}", c.tp, c.fp, c.fn_);
    }
    let overall = card.overall();
    let (tlp_ok, total) = card.tlp_accuracy();
    println!(
        "overall precision {:.4} recall {:.4}; trap hits {}; tlp {tlp_ok}/{total}; structures {structures_ok}/{total}",
        overall.precision(),
        overall.recall(),
        card.trap_hits()
    );
    assert!(
        overall.precision() >= MIN_PRECISION,
        "precision {} < {MIN_PRECISION}",
        overall.precision()
    );
    assert!(
        overall.recall() >= MIN_RECALL,
        "recall {} < {MIN_RECALL}",
        overall.recall()
    );
    assert_eq!(card.trap_hits(), 0, "trap hits");
    assert_eq!(tlp_ok, total, "TLP right for every message");
    for m in &card.messages {
        assert!(m.file_names_ok, "{}: file_names", m.message);
        assert!(m.link_mismatches_ok, "{}: link_mismatches", m.message);
        assert!(m.attachments_ok, "{}: attachments", m.message);
    }
    assert_eq!(structures_ok, total, "MIME structure of every message");
}
