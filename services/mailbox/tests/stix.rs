//! ExportStix over gRPC: the corpus's bundle passes the OASIS `stix2-validator` (PyPI 3.3.2,
//! in the venv `scripts/test` makes), with TLP 2.0 and 1.0 markings; tags become labels;
//! senders outside an allow-list are left out; re-exports are identical; paging splits a
//! selection across bundles.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use common::{Stack, mail, phishing, stix_validator};
use serde_json::Value;
use threatmail_proto::v1 as pb;

/// Every bundle of `selection`, following next_page_token.
async fn export_all(
    client: &mut common::Client,
    selection: pb::ListMessagesRequest,
    max_messages: u32,
) -> anyhow::Result<(Vec<Value>, u32)> {
    let mut bundles = Vec::new();
    let mut excluded = 0;
    let mut selection = selection;
    loop {
        let reply = client
            .export_stix(pb::ExportStixRequest {
                selection: Some(selection.clone()),
                max_messages,
            })
            .await?
            .into_inner();
        excluded += reply.excluded_count;
        let bundle: Value = serde_json::from_str(&reply.bundle_json)?;
        let reports = objects_of(&bundle, "report").len();
        assert_eq!(reports as u32, reply.message_count);
        bundles.push(bundle);
        if reply.next_page_token.is_empty() {
            return Ok((bundles, excluded));
        }
        selection.page_token = reply.next_page_token;
    }
}

fn objects_of<'a>(bundle: &'a Value, kind: &str) -> Vec<&'a Value> {
    bundle["objects"]
        .as_array()
        .map(|objects| objects.iter().filter(|o| o["type"] == kind).collect())
        .unwrap_or_default()
}

/// Runs the validator on `bundle`; returns its output. Fails the test if it finds the
/// bundle invalid or warns about anything but the UUID version of domain objects (see
/// `stix.rs`: deterministic ids are UUIDv5 on purpose) and attachment MIME types missing
/// from IANA's registry (the validator fetches the registry when it can; mail carries
/// types such as `application/ics` as senders wrote them).
fn validate(validator: &std::path::Path, bundle: &Value) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bundle.json");
    std::fs::write(&file, serde_json::to_vec_pretty(bundle)?)?;
    if let Some(keep) = std::env::var_os("THREATMAIL_KEEP_BUNDLE") {
        std::fs::copy(&file, keep)?;
    }
    let output = Command::new(validator).arg("-v").arg(&file).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "stix2_validator failed ({}):\n{text}",
        output.status
    );
    assert!(text.contains("STIX JSON: Valid"), "not valid:\n{text}");
    let unexpected: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("[!] Warning") && !l.contains("{103}") && !l.contains("{271}"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "warnings:\n{}",
        unexpected.join("\n")
    );
    Ok(text)
}

const TLP2_RED: &str = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1";
const TLP2_AMBER_STRICT: &str = "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003";
const TLP2_CLEAR: &str = "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487";
const TLP2_GREEN: &str = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb";
const TLP2_AMBER: &str = "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421";
const TLP1_WHITE: &str = "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc9";
const TLP1_AMBER: &str = "marking-definition--f88d31f6-486f-44da-b317-01333bde0b82";

fn markings(object: &Value) -> BTreeSet<String> {
    object["object_marking_refs"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn the_corpus_export_passes_stix2_validator_with_tlp_markings() -> anyhow::Result<()> {
    let Some(corpus) = phishing() else {
        return Ok(());
    };
    let validator = stix_validator();
    let stack = Stack::start().await?;
    let phish = stack
        .add_source(
            "phish",
            "Reported phishing",
            &["phishing", "user-reported"],
            &[],
            Some("TLP:GREEN"),
        )
        .await?;
    for chunk in corpus.chunks(50) {
        stack.write(&phish, "INBOX", chunk.to_vec()).await?;
    }
    // A source whose allow-list admits only the company's own reporters.
    let reports = stack
        .add_source(
            "reports",
            "Forwarded reports",
            &["forwarded"],
            &["corp.example"],
            None,
        )
        .await?;
    stack
        .write(
            &reports,
            "INBOX",
            vec![
                mail(
                    1,
                    "ok1@corp.example",
                    "alice@corp.example",
                    "FW: phish TLP:CLEAR",
                    "see https://evil-login.example.com/a",
                ),
                mail(
                    2,
                    "ok2@corp.example",
                    "bob@corp.example",
                    "FW: TLP:AMBER+STRICT lure",
                    "see https://evil-login.example.com/b",
                ),
                mail(
                    3,
                    "ok3@corp.example",
                    "carol@corp.example",
                    "TLP:RED incident",
                    "CVE-2024-3400 and 198.51.100.23",
                ),
                mail(
                    4,
                    "spam@evil.example",
                    "attacker@evil.example",
                    "Not from us",
                    "https://evil-login.example.com/c",
                ),
            ],
        )
        .await?;
    let mut client = stack.client(&stack.viewer).await?;

    let (bundles, excluded) =
        export_all(&mut client, pb::ListMessagesRequest::default(), 0).await?;
    assert_eq!(bundles.len(), 1);
    let bundle = &bundles[0];
    assert_eq!(excluded, 1, "the allow-list leaves one message out");
    let all_reports = objects_of(bundle, "report");
    assert_eq!(all_reports.len(), corpus.len() + 3);

    // Markings: TLP 2.0 objects as published, and the TLP 1.0 ones where they exist.
    let definitions: BTreeMap<&str, &Value> = objects_of(bundle, "marking-definition")
        .into_iter()
        .filter_map(|o| Some((o["id"].as_str()?, o)))
        .collect();
    for id in [
        TLP2_RED,
        TLP2_AMBER_STRICT,
        TLP2_CLEAR,
        TLP2_GREEN,
        TLP1_WHITE,
        TLP1_AMBER,
    ] {
        assert!(definitions.contains_key(id), "{id} missing");
    }
    assert_eq!(definitions[TLP2_AMBER_STRICT]["name"], "TLP:AMBER+STRICT");
    let by_reference: BTreeMap<String, &Value> = all_reports
        .iter()
        .map(|r| {
            (
                r["external_references"][0]["external_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                *r,
            )
        })
        .collect();
    let report_of = |subject: &str| {
        all_reports
            .iter()
            .find(|r| r["name"] == subject)
            .unwrap_or_else(|| panic!("no report {subject:?}"))
    };
    assert!(markings(report_of("FW: phish TLP:CLEAR")).contains(TLP2_CLEAR));
    assert!(markings(report_of("FW: phish TLP:CLEAR")).contains(TLP1_WHITE));
    assert_eq!(
        markings(report_of("FW: TLP:AMBER+STRICT lure")),
        BTreeSet::from([TLP2_AMBER_STRICT.to_owned(), TLP1_AMBER.to_owned()])
    );
    assert!(markings(report_of("TLP:RED incident")).contains(TLP2_RED));
    assert!(!all_reports.iter().any(|r| r["name"] == "Not from us"));
    // Reports of unmarked corpus messages take their source's default (GREEN); every
    // report and indicator carries a TLP 2.0 marking.
    let phish_reports: Vec<&&Value> = by_reference
        .iter()
        .filter(|(reference, _)| reference.starts_with("phish/"))
        .map(|(_, r)| r)
        .collect();
    assert_eq!(phish_reports.len(), corpus.len());
    assert!(
        phish_reports
            .iter()
            .any(|r| markings(r).contains(TLP2_GREEN))
    );
    let tlp2: BTreeSet<&str> = [
        TLP2_CLEAR,
        TLP2_GREEN,
        TLP2_AMBER,
        TLP2_AMBER_STRICT,
        TLP2_RED,
    ]
    .into();
    for object in objects_of(bundle, "report")
        .into_iter()
        .chain(objects_of(bundle, "indicator"))
    {
        assert!(
            markings(object).iter().any(|m| tlp2.contains(m.as_str())),
            "{}",
            object["id"]
        );
    }
    // The source's tags are the labels.
    assert_eq!(
        phish_reports[0]["labels"],
        serde_json::json!(["phishing", "user-reported"])
    );
    // Indicators with patterns, observables, CVEs as vulnerabilities.
    let indicators = objects_of(bundle, "indicator");
    assert!(indicators.len() > 100, "{} indicators", indicators.len());
    assert!(indicators.iter().all(|i| i["pattern_type"] == "stix"));
    assert!(indicators.iter().any(|i| {
        i["pattern"]
            .as_str()
            .is_some_and(|p| p.starts_with("[url:value = "))
    }));
    assert!(!objects_of(bundle, "url").is_empty());
    assert!(!objects_of(bundle, "email-message").is_empty());
    assert!(!objects_of(bundle, "file").is_empty());
    assert!(
        objects_of(bundle, "vulnerability")
            .iter()
            .any(|v| v["name"] == "CVE-2024-3400")
    );
    // Every object a report names is in the bundle.
    let ids: BTreeSet<&str> = bundle["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["id"].as_str())
        .collect();
    for report in &all_reports {
        for reference in report["object_refs"].as_array().into_iter().flatten() {
            assert!(
                ids.contains(reference.as_str().unwrap_or_default()),
                "{reference} missing"
            );
        }
    }

    // Deterministic: the same selection exports byte for byte the same.
    let (again, _) = export_all(&mut client, pb::ListMessagesRequest::default(), 0).await?;
    assert_eq!(
        serde_json::to_string(&again[0])?,
        serde_json::to_string(bundle)?
    );

    // Paging: 7 reports per bundle, together the same reports.
    let (pages, excluded_paged) =
        export_all(&mut client, pb::ListMessagesRequest::default(), 7).await?;
    assert!(pages.len() > 40);
    assert_eq!(excluded_paged, 1);
    let paged: Vec<String> = pages
        .iter()
        .flat_map(|b| {
            objects_of(b, "report")
                .into_iter()
                .map(|r| r["id"].to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    let whole: Vec<String> = all_reports.iter().map(|r| r["id"].to_string()).collect();
    assert_eq!(paged, whole);

    if let Some(validator) = validator {
        let text = validate(&validator, bundle)?;
        eprintln!("stix2_validator: {} lines of output", text.lines().count());
        validate(&validator, &pages[0])?;
    }
    stack.stop().await
}
