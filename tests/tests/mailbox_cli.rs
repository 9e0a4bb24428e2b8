//! `threatmail mailbox list|show|raw|summary|export --stix` against a real deployment that
//! synced the shipped sample messages (their indicators are known: samples/mail/README.md).

use serde_json::Value;
use sha2::{Digest as _, Sha256};
use threatmail_e2e::demo::{self, REPORTS_FOLDER, SOURCE_NAME};
use threatmail_e2e::{Deployment, Layout, Tuning, threatmail_binary, workspace_root};
use threatmail_testkit::stack::LocalStack;

async fn synced_samples() -> anyhow::Result<(Deployment, usize)> {
    let corpus = demo::read_corpus(&workspace_root().join("samples/mail"))?;
    let folders = demo::split_corpus(&corpus);
    let stack = LocalStack::start(demo::seeded_fixture(&folders)?).await?;
    let deployment = Deployment::start(
        stack,
        threatmail_binary()?,
        Layout::OneProcess,
        &Tuning::default(),
    )
    .await?;
    let mut add = deployment.source_add_args(SOURCE_NAME)?;
    add.extend(["--select", "INBOX", "--select", REPORTS_FOLDER].map(str::to_owned));
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    ok(&deployment, &add).await?;
    ok(
        &deployment,
        &[
            "source",
            "status",
            SOURCE_NAME,
            "--watch",
            "--timeout",
            "120s",
        ],
    )
    .await?;
    let count = demo::check_exactly_once(&deployment, &folders).await?;
    Ok((deployment, count))
}

async fn ok(deployment: &Deployment, args: &[&str]) -> anyhow::Result<std::process::Output> {
    let output = deployment.run(args).await?;
    anyhow::ensure!(
        output.status.success(),
        "threatmail {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr),
        deployment.logs_tail(20)
    );
    Ok(output)
}

/// `mailbox list --json`: one summary object per line.
async fn listed(deployment: &Deployment, filters: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut args = vec!["mailbox", "list", "--json", "--limit", "0"];
    args.extend(filters);
    let output = ok(deployment, &args).await?;
    String::from_utf8(output.stdout)?
        .lines()
        .map(|line| Ok(serde_json::from_str(line)?))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_commands_show_what_was_synced() -> anyhow::Result<()> {
    let (deployment, count) = synced_samples().await?;
    let all = listed(&deployment, &[]).await?;
    assert_eq!(all.len(), count);

    // Filters: an indicator type, a defanged indicator as an analyst pastes it, a subject.
    let with_cves = listed(&deployment, &["--type", "cve"]).await?;
    let subjects: Vec<&str> = with_cves
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    assert_eq!(
        with_cves.len(),
        2,
        "the advisory and the newsletter: {subjects:?}"
    );
    let defanged = "hxxps://invoices-portal[.]example[.]com/download/INV-88213.php";
    let holding = listed(&deployment, &["--indicator", defanged]).await?;
    assert_eq!(holding.len(), 1);
    assert!(
        holding[0]["subject"]
            .as_str()
            .unwrap_or_default()
            .contains("Advisory 2026-114")
    );
    let by_subject = listed(&deployment, &["--subject", "wire transfer"]).await?;
    assert_eq!(by_subject.len(), 1);

    // show: the advisory's indicators, TLP and where each was found.
    let id = holding[0]["id"].as_str().unwrap_or_default().to_owned();
    let shown = ok(&deployment, &["mailbox", "show", &id, "--json"]).await?;
    let message: Value = serde_json::from_slice(&shown.stdout)?;
    let text = message.to_string();
    for expected in [
        "https://invoices-portal.example.com/download/INV-88213.php",
        "203.0.113.77",
        "203.0.113.0/24",
        "CVE-2026-31337",
        "TLP:AMBER",
    ] {
        assert!(
            text.contains(expected),
            "{expected} missing from show: {text}"
        );
    }
    let values: Vec<&str> = message["indicators"]
        .as_array()
        .map(|all| all.iter().filter_map(|i| i["value"].as_str()).collect())
        .unwrap_or_default();
    assert!(values.contains(&"CVE-2026-31337"), "{values:?}");
    assert!(
        !values.iter().any(|v| v.contains("Trojan") || *v == "4.2.1"),
        "an AV name or a version number is no indicator: {values:?}"
    );

    // raw: the bytes whose SHA-256 the record names.
    let raw = ok(&deployment, &["mailbox", "raw", &id]).await?;
    let sha: String = Sha256::digest(&raw.stdout)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(Some(sha.as_str()), holding[0]["sha256"].as_str());

    // summary --json and export --stix.
    let summary = ok(&deployment, &["mailbox", "summary", "--json"]).await?;
    let summary: Value = serde_json::from_slice(&summary.stdout)?;
    assert_eq!(summary["messages"].as_u64(), Some(count as u64));
    assert_eq!(
        summary["folders"]["INBOX"].as_u64(),
        Some(count.div_ceil(2) as u64)
    );
    let export = ok(&deployment, &["mailbox", "export", "--stix"]).await?;
    let bundle: Value = serde_json::from_slice(&export.stdout)?;
    assert_eq!(bundle["type"], "bundle");
    let reports = bundle["objects"]
        .as_array()
        .map(|objects| objects.iter().filter(|o| o["type"] == "report").count());
    assert_eq!(reports, Some(count));
    // One report per page: the same bundle, id and markings included.
    let paged = ok(&deployment, &["mailbox", "export", "--stix", "--page", "1"]).await?;
    let paged: Value = serde_json::from_slice(&paged.stdout)?;
    assert_eq!(paged["id"], bundle["id"]);
    let by_id = |bundle: &Value| -> std::collections::BTreeMap<String, Value> {
        bundle["objects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|o| (o["id"].as_str().unwrap_or_default().to_owned(), o.clone()))
            .collect()
    };
    assert_eq!(by_id(&paged), by_id(&bundle));
    assert_eq!(
        (&message["ok"], &summary["ok"]),
        (&Value::Bool(true), &Value::Bool(true))
    );
    Ok(())
}

/// What `mailbox` says when a list is cut or empty, or a command fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_commands_say_what_they_left_out_and_why_they_failed() -> anyhow::Result<()> {
    let (deployment, count) = synced_samples().await?;
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    // Cut by --limit: said on stderr, the table stays a table.
    let cut = ok(&deployment, &["mailbox", "list", "--limit", "2"]).await?;
    assert_eq!(
        text(&cut.stdout).lines().count(),
        3,
        "a header and two rows"
    );
    assert!(
        text(&cut.stderr).contains("more match"),
        "{}",
        text(&cut.stderr)
    );
    let whole = ok(
        &deployment,
        &["mailbox", "list", "--limit", &count.to_string()],
    )
    .await?;
    assert_eq!(text(&whole.stdout).lines().count(), count + 1);
    assert!(
        whole.stderr.is_empty(),
        "nothing was cut: {}",
        text(&whole.stderr)
    );
    let none = ok(
        &deployment,
        &["mailbox", "list", "--subject", "no such subject"],
    )
    .await?;
    assert!(
        text(&none.stderr).contains("no message matches"),
        "{}",
        text(&none.stderr)
    );

    // A failure with --json: the error as a JSON document on stdout, exit 1.
    let missing = deployment
        .run(&["mailbox", "show", "no-source/no-message", "--json"])
        .await?;
    assert_eq!(missing.status.code(), Some(1));
    let error: Value = serde_json::from_slice(&missing.stdout)?;
    assert_eq!(error["ok"], Value::Bool(false));
    assert!(
        error["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{error}"
    );

    // A bad value is a usage error (exit 2), before anything is asked.
    for bad in [["--since", "notadate"], ["--type", "bogus"]] {
        let refused = deployment
            .run(&[&["mailbox", "list"][..], &bad[..]].concat())
            .await?;
        assert_eq!(
            refused.status.code(),
            Some(2),
            "{bad:?}: {}",
            text(&refused.stderr)
        );
        assert!(refused.stdout.is_empty(), "{bad:?}");
    }
    Ok(())
}
