//! Every message of `../shared/corpus` (phishing, edge and labelled) parses without a panic, and
//! its record and summary serialise.

mod common;

use threatmail_parse::parse_message;

#[test]
fn every_corpus_message_parses() {
    let Some(corpus) = common::corpus_dir() else {
        return;
    };
    let files = common::eml_files(&corpus);
    assert!(
        files.len() >= 360,
        "only {} messages under {}",
        files.len(),
        corpus.display()
    );
    let mut warnings = 0;
    let mut indicators = 0;
    for file in &files {
        let raw = std::fs::read(file).expect("readable corpus file");
        let parsed = parse_message(&raw);
        assert_eq!(parsed.size, raw.len() as u64);
        let json = serde_json::to_string(&parsed).expect("record serialises");
        assert!(json.len() > 2);
        serde_json::to_string(&parsed.summary()).expect("summary serialises");
        warnings += parsed.warnings.len();
        indicators += parsed.indicators.len();
    }
    println!(
        "{} messages, {warnings} warnings, {indicators} indicators",
        files.len()
    );
}
