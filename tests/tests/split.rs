//! The user's flow of DESIGN §1 with every service in its own process (issue 8): registry,
//! token broker, two fetchers and mailbox, each a `threatmail serve --target …` process on
//! the local stack, talking gRPC with service credentials from files. The source is added
//! through the CLI with the form's fields, both folders are selected, `source status
//! --watch` waits for the sync, and every seeded message must then be in the Threat Mailbox
//! exactly once.
//!
//! The processes write JSON log lines, read afterwards for two more checks:
//! - one W3C trace follows the work from fetcher to broker: every batch a fetcher committed
//!   (the store's `batch committed` event) lies in a round whose `trace_id` is also the
//!   `trace_id` of a `GetToken` RPC in the broker's log;
//! - no message was stored twice: the committed batches of each folder, across both
//!   fetchers, cover every seeded UID exactly once. Which fetcher synced which folder is
//!   reported, not asserted: leases decide that, and either may take both.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use anyhow::Context as _;
use serde_json::Value;
use threatmail_e2e::demo::{self, REPORTS_FOLDER};
use threatmail_e2e::{Deployment, Layout, Tuning, phishing_corpus, threatmail_binary};
use threatmail_testkit::stack::LocalStack;

const SOURCE: &str = "SOC phishing reports (split)";
const FETCHERS: usize = 2;
const GET_TOKEN: &str = "/threatmail.v1.TokenBroker/GetToken";
const NO_TRACE: &str = "00000000000000000000000000000000";

/// Runs `threatmail args…` and fails with its output and the services' logs unless it
/// exits 0.
async fn cli(deployment: &Deployment, args: &[&str]) -> anyhow::Result<Output> {
    let output = deployment.run(args).await?;
    anyhow::ensure!(
        output.status.success(),
        "`threatmail {}` failed ({}):\n{}{}\nthe services' logs:\n{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        deployment.logs_tail(30)
    );
    Ok(output)
}

/// The JSON log lines of one process (anything else it printed is left out; the checks
/// below fail when the lines they need are missing).
fn json_lines(deployment: &Deployment, process: &str) -> anyhow::Result<Vec<Value>> {
    Ok(deployment
        .log(process)?
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect())
}

/// The `trace_id` fields of the spans a log line was written in, root first.
fn trace_ids(line: &Value) -> Vec<&str> {
    line["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|span| span.get("trace_id")?.as_str())
        .collect()
}

/// One batch a fetcher committed, as the store logged it.
#[derive(Debug, Clone)]
struct Commit {
    fetcher: String,
    folder: String,
    fence: u64,
    first_uid: u64,
    last_uid: u64,
    trace_id: String,
}

fn commits(deployment: &Deployment, fetcher: &str) -> anyhow::Result<Vec<Commit>> {
    let mut found = Vec::new();
    for line in json_lines(deployment, fetcher)? {
        let fields = &line["fields"];
        if fields["message"] != "batch committed" {
            continue;
        }
        let number = |name: &str| {
            fields[name]
                .as_u64()
                .with_context(|| format!("no {name} in {line}"))
        };
        let (first_uid, last_uid) =
            match (fields["first_uid"].as_u64(), fields["last_uid"].as_u64()) {
                (Some(first), Some(last)) => (first, last),
                // A batch of no items (nothing new) stores nothing.
                _ => continue,
            };
        // Every span of the line that has a trace_id is in the same trace.
        let ids: BTreeSet<&str> = trace_ids(&line).into_iter().collect();
        let trace_id = match ids.into_iter().collect::<Vec<_>>().as_slice() {
            [one] => (*one).to_owned(),
            other => anyhow::bail!("a batch commit of {fetcher} under trace ids {other:?}: {line}"),
        };
        found.push(Commit {
            fetcher: fetcher.to_owned(),
            folder: fields["folder"]
                .as_str()
                .with_context(|| format!("no folder in {line}"))?
                .to_owned(),
            fence: number("fence")?,
            first_uid,
            last_uid,
            trace_id,
        });
    }
    Ok(found)
}

/// The trace ids of the broker's `GetToken` RPCs, from every line logged inside one.
fn get_token_traces(deployment: &Deployment) -> anyhow::Result<BTreeSet<String>> {
    let mut traces = BTreeSet::new();
    for line in json_lines(deployment, "token-broker")? {
        for span in line["spans"].as_array().into_iter().flatten() {
            if span["name"] == "rpc" && span["rpc.path"] == GET_TOKEN {
                let trace_id = span["trace_id"]
                    .as_str()
                    .with_context(|| format!("a GetToken rpc span without trace_id: {line}"))?;
                traces.insert(trace_id.to_owned());
            }
        }
    }
    Ok(traces)
}

#[tokio::test]
async fn each_service_in_its_own_process_syncs_every_message_once_under_one_trace_per_round()
-> anyhow::Result<()> {
    let (dir, what) = match phishing_corpus()? {
        Some(dir) => (dir, "the phishing corpus"),
        None => (
            threatmail_e2e::workspace_root().join("samples/mail"),
            "the shipped samples",
        ),
    };
    let corpus = demo::read_corpus(&dir)?;
    let folders = demo::split_corpus(&corpus);
    let stack = LocalStack::start(demo::seeded_fixture(&folders)?).await?;
    let tuning = Tuning {
        json_logs: true,
        log_filter: "info,threatmail_store=debug,threatmail_token_broker=debug".to_owned(),
        ..Tuning::default()
    };
    let mut deployment = Deployment::start(
        stack,
        threatmail_binary()?,
        Layout::Split { fetchers: FETCHERS },
        &tuning,
    )
    .await?;

    // The user's steps: Add Email Source with the form's fields (Save and Continue lists
    // the folders), select both, watch the first sync.
    let add = deployment.source_add_args(SOURCE)?;
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    let added = cli(&deployment, &add).await?;
    let tree = String::from_utf8_lossy(&added.stdout);
    assert!(
        tree.contains("INBOX") && tree.contains(REPORTS_FOLDER),
        "source add prints the folder tree: {tree}"
    );
    cli(
        &deployment,
        &[
            "source",
            "folders",
            SOURCE,
            "--select",
            "INBOX",
            "--select",
            REPORTS_FOLDER,
        ],
    )
    .await?;
    cli(
        &deployment,
        &["source", "status", SOURCE, "--watch", "--timeout", "120s"],
    )
    .await?;
    deployment.check_running()?;

    // Exactly once, through the mailbox service's gRPC API (as the demo checks it).
    let messages = demo::check_exactly_once(&deployment, &folders).await?;
    assert_eq!(messages, corpus.len());

    // What the logs show. The watch returned once every folder was idle, so every batch
    // is committed and logged.
    let mut all = Vec::new();
    for n in 1..=FETCHERS {
        all.extend(commits(&deployment, &format!("fetcher-{n}"))?);
    }
    let get_token = get_token_traces(&deployment)?;
    assert!(
        !all.is_empty(),
        "no batch commits in the fetchers' logs:\n{}",
        deployment.logs_tail(20)
    );

    // One trace id from fetcher to broker: each commit's round asked the broker for its
    // session's token under the round's own trace.
    let mut rounds = BTreeSet::new();
    for commit in &all {
        assert_ne!(commit.trace_id, NO_TRACE, "{commit:?}");
        assert!(
            get_token.contains(&commit.trace_id),
            "the round that committed {commit:?} has no GetToken in the broker's log under its \
             trace id; GetToken traces: {get_token:?}"
        );
        rounds.insert((commit.fetcher.clone(), commit.trace_id.clone()));
    }
    for (fetcher, trace_id) in &rounds {
        let batches = all.iter().filter(|c| &c.trace_id == trace_id).count();
        println!(
            "{fetcher}: a round under trace {trace_id}: GetToken at the broker, {batches} batches committed"
        );
    }
    let round_traces: BTreeSet<&String> = rounds.iter().map(|(_, trace)| trace).collect();
    assert_eq!(
        round_traces.len(),
        rounds.len(),
        "two fetchers' rounds share a trace id: {rounds:?}"
    );

    // No message stored twice: per folder, the committed UID ranges of both fetchers
    // together cover 1..=n with no UID in two batches.
    let mut by_folder: BTreeMap<&str, Vec<&Commit>> = BTreeMap::new();
    for commit in &all {
        by_folder.entry(&commit.folder).or_default().push(commit);
    }
    for (folder, part) in folders {
        let mut batches = by_folder.remove(folder).unwrap_or_default();
        batches.sort_by_key(|c| c.first_uid);
        let mut next = 1;
        for batch in &batches {
            assert!(
                batch.first_uid == next && batch.last_uid >= batch.first_uid,
                "{folder}: UIDs {}..={} committed after UID {} ({batch:?}); every batch: \
                 {batches:?}",
                batch.first_uid,
                batch.last_uid,
                next - 1
            );
            next = batch.last_uid + 1;
        }
        assert_eq!(
            next - 1,
            u64::try_from(part.len())?,
            "{folder}: committed UIDs end at {}, {} seeded",
            next - 1,
            part.len()
        );
        // Report who synced it.
        let mut who: BTreeMap<&str, (usize, u64, BTreeSet<u64>)> = BTreeMap::new();
        for batch in &batches {
            let entry = who.entry(&batch.fetcher).or_default();
            entry.0 += 1;
            entry.1 += batch.last_uid - batch.first_uid + 1;
            entry.2.insert(batch.fence);
        }
        for (fetcher, (count, uids, fences)) in who {
            println!(
                "{folder}: {fetcher} committed {count} batches, {uids} UIDs, under lease \
                 tokens {fences:?}"
            );
        }
    }
    assert!(
        by_folder.is_empty(),
        "commits to folders nobody seeded: {by_folder:?}"
    );
    println!(
        "{messages} messages of {what} ({}) stored once by {FETCHERS} fetchers; {} rounds, \
         each under its own trace id, found on the broker's GetToken calls",
        dir.display(),
        rounds.len()
    );
    Ok(())
}
