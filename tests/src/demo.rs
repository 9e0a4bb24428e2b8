//! The demo flow (`tm-demo`, `scripts/demo`): the corpus loaded over `INBOX` and
//! `Phish Reports`, `threatmail serve --target all`, and the user's steps through the CLI,
//! each command shown as it runs; then every seeded message checked to be in the Threat
//! Mailbox exactly once. `tests/tests/demo.rs` runs the same flow.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};
use threatmail_proto::v1 as pb;
use threatmail_testkit::imap::{LoginOutcome, folder_bodies, login_xoauth2};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

use crate::{Deployment, Layout, Tuning};

/// The folder the second half of the corpus goes to.
pub const REPORTS_FOLDER: &str = "Phish Reports";
/// The source's name in the demo.
pub const SOURCE_NAME: &str = "SOC phishing reports";

/// A corpus message: its file and its bytes.
pub type CorpusMessage = (PathBuf, Vec<u8>);

/// The `.eml` files of `dir`, sorted by name, with their bytes.
pub fn read_corpus(dir: &Path) -> anyhow::Result<Vec<CorpusMessage>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read the corpus folder {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file() && path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "no .eml files in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let bytes = std::fs::read(&path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            Ok((path, bytes))
        })
        .collect()
}

/// The bytes as IMAP carries them: every line ended by CRLF.
fn crlf(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + bytes.len() / 32);
    let mut previous = 0u8;
    for &byte in bytes {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Quotes an argument for display the way a shell would need it.
fn shown(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@=,".contains(c))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// Runs `threatmail args…` with its output on the terminal, showing the command first.
async fn step(deployment: &Deployment, args: &[String]) -> anyhow::Result<()> {
    let line: Vec<String> = args.iter().map(|a| shown(a)).collect();
    println!("\n$ threatmail {}", line.join(" "));
    // Awaited, not waited for: the stack's Entra stand-in answers on this runtime.
    let status = tokio::process::Command::from(deployment.command())
        .args(args)
        .status()
        .await
        .context("failed to run threatmail")?;
    anyhow::ensure!(
        status.success(),
        "`threatmail {}` failed ({status}); the services' logs:\n{}",
        line.join(" "),
        deployment.logs_tail(30)
    );
    Ok(())
}

/// What a demo run did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Messages found in the Threat Mailbox exactly once (all of the corpus).
    pub messages: usize,
    /// The temporary directory everything lived in; gone once the run returns.
    pub work_dir: PathBuf,
}

/// Runs the demo on the `.eml` files of `corpus` with the `threatmail` binary; every process
/// it started is stopped and every file it wrote removed when it returns, success or not.
pub async fn run(
    corpus_dir: &Path,
    threatmail: PathBuf,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let corpus = read_corpus(corpus_dir)?;
    let folders = split_corpus(&corpus);
    let [(_, inbox), (_, reports)] = folders;
    let fixture = seeded_fixture(&folders)?;

    println!(
        "starting the local stack: Redis, Dovecot (IMAP over TLS, XOAUTH2 checked as Exchange \
         Online does) and the Entra stand-in"
    );
    let stack = LocalStack::start(fixture).await?;
    let work_dir = stack.work_dir().to_owned();
    println!(
        "loaded {} messages from {} into {PHISH_MAILBOX}: {} in INBOX, {} in {REPORTS_FOLDER}",
        corpus.len(),
        corpus_dir.display(),
        inbox.len(),
        reports.len()
    );
    println!("starting `threatmail serve --target all`");
    let mut deployment =
        Deployment::start(stack, threatmail, Layout::OneProcess, &Tuning::default()).await?;

    let mut add = deployment.source_add_args(SOURCE_NAME)?;
    add.push("--tags".to_owned());
    add.push("demo".to_owned());
    step(&deployment, &add).await?;
    let select = [
        "source",
        "folders",
        SOURCE_NAME,
        "--select",
        "INBOX",
        "--select",
        REPORTS_FOLDER,
    ]
    .map(str::to_owned);
    step(&deployment, &select).await?;
    let timeout = format!("{}s", timeout.as_secs());
    let watch = [
        "source",
        "status",
        SOURCE_NAME,
        "--watch",
        "--timeout",
        &timeout,
    ];
    step(&deployment, &watch.map(str::to_owned)).await?;
    deployment.check_running()?;
    step(&deployment, &["mailbox".to_owned(), "summary".to_owned()]).await?;

    let messages = check_exactly_once(&deployment, &folders).await?;
    println!(
        "\ndemo OK: every one of the {messages} corpus messages is in the Threat Mailbox exactly \
         once, with the bytes the server holds; stopping everything and removing its files",
    );
    Ok(Outcome { messages, work_dir })
}

/// The corpus over the demo's two folders: the first half in `INBOX`, the rest in
/// [`REPORTS_FOLDER`].
pub fn split_corpus(corpus: &[CorpusMessage]) -> [(&'static str, &[CorpusMessage]); 2] {
    let (inbox, reports) = corpus.split_at(corpus.len().div_ceil(2));
    [("INBOX", inbox), (REPORTS_FOLDER, reports)]
}

/// The fixture with everything right and the phish mailbox holding `folders` (seeded in
/// order, so the n-th message of a folder gets UID n).
pub fn seeded_fixture(folders: &[(&str, &[CorpusMessage])]) -> anyhow::Result<TenantFixture> {
    let mut fixture = TenantFixture::everything_right();
    let mailbox = fixture
        .primary_tenant_mut()
        .and_then(|t| t.exchange.mailbox_mut(PHISH_MAILBOX))
        .context("the fixture has the phish mailbox")?;
    let mut seeded = Mailbox::new(PHISH_MAILBOX);
    for (folder, part) in folders {
        seeded = seeded.with_messages(folder, part.iter().map(|(_, b)| b.clone()).collect());
    }
    *mailbox = seeded;
    Ok(fixture)
}

/// Checks through the mailbox service that every message of `folders` (as
/// [`seeded_fixture`] seeded them) is in the Threat Mailbox exactly once: each (folder, UID)
/// the seeding made is a location of exactly one record, with the same bytes, and no record
/// has a location nobody seeded. Returns how many messages that is.
pub async fn check_exactly_once(
    deployment: &Deployment,
    folders: &[(&str, &[CorpusMessage])],
) -> anyhow::Result<usize> {
    // The bytes to expect are the server's: IMAP carries CRLF line ends, and a server may
    // change what it cannot store (Dovecot turns a NUL byte into 0x80). What it changed is
    // told, not counted against threatmail.
    let served = served_bodies(deployment, folders).await?;
    let mut expected: BTreeMap<(String, u32), String> = BTreeMap::new();
    let mut changed_by_server = Vec::new();
    for (folder, part) in folders {
        for (n, (path, raw)) in part.iter().enumerate() {
            let uid = u32::try_from(n + 1)?;
            let place = ((*folder).to_owned(), uid);
            let Some(bytes) = served.get(&place) else {
                anyhow::bail!(
                    "{folder} UID {uid} ({}) is not on the server",
                    path.display()
                );
            };
            if *bytes != crlf(raw) {
                changed_by_server.push(format!("{} ({folder} UID {uid})", path.display()));
            }
            expected.insert(place, hex_sha256(bytes));
        }
    }
    if !changed_by_server.is_empty() {
        println!(
            "note: the IMAP server serves {} message(s) with other bytes than their file (beyond \
             CRLF line ends); the Threat Mailbox keeps what the server serves: {}",
            changed_by_server.len(),
            changed_by_server.join(", ")
        );
    }
    let found = locations(deployment).await?;
    let mut problems = Vec::new();
    for (place, sha256) in &expected {
        match found.get(place).map(Vec::as_slice) {
            Some([(_, stored)]) if stored == sha256 => {}
            Some([(record, stored)]) => problems.push(format!(
                "{} UID {}: record {record} holds other bytes (SHA-256 {stored}, expected {sha256})",
                place.0, place.1
            )),
            Some(many) if many.len() > 1 => problems.push(format!(
                "{} UID {}: stored {} times",
                place.0,
                place.1,
                many.len()
            )),
            _ => problems.push(format!("{} UID {}: not in the Threat Mailbox", place.0, place.1)),
        }
    }
    for place in found.keys().filter(|p| !expected.contains_key(*p)) {
        problems.push(format!(
            "{} UID {}: a location nobody seeded",
            place.0, place.1
        ));
    }
    anyhow::ensure!(
        problems.is_empty(),
        "{} of {} messages are wrong:\n  {}",
        problems.len(),
        expected.len(),
        problems.join("\n  ")
    );
    Ok(expected.len())
}

type Locations = BTreeMap<(String, u32), Vec<(String, String)>>;

/// What the IMAP server serves in each seeded folder: (folder, UID) → bytes.
async fn served_bodies(
    deployment: &Deployment,
    folders: &[(&str, &[CorpusMessage])],
) -> anyhow::Result<BTreeMap<(String, u32), Vec<u8>>> {
    let token = deployment.stack.primary_token().await?;
    let outcome = login_xoauth2(
        deployment.stack.dovecot.imaps_addr(),
        deployment.stack.tls()?,
        PHISH_MAILBOX,
        &token.access_token,
    )
    .await?;
    let LoginOutcome::LoggedIn(mut session) = outcome else {
        anyhow::bail!("the mailbox refused the stand-in's token: {outcome:?}");
    };
    let mut served = BTreeMap::new();
    for (folder, _) in folders {
        for (uid, bytes) in folder_bodies(&mut session, folder).await? {
            served.insert(((*folder).to_owned(), uid), bytes);
        }
    }
    let _ = session.logout().await;
    Ok(served)
}

/// Every record's locations, from the mailbox service: (folder, UID) → (record, SHA-256).
async fn locations(deployment: &Deployment) -> anyhow::Result<Locations> {
    let key = deployment.api_key()?;
    let interceptor = threatmail_auth::CredentialInterceptor::bearer(&key)
        .map_err(|_| anyhow::anyhow!("the API key is not printable ASCII"))?;
    let channel = tonic::transport::Endpoint::from_shared(deployment.mailbox_url())?
        .connect()
        .await?;
    let mut client = pb::mailbox_client::MailboxClient::with_interceptor(channel, interceptor)
        .max_decoding_message_size(256 << 20);
    let started = Instant::now();
    let mut request = pb::ListMessagesRequest {
        page_size: 1000,
        ..Default::default()
    };
    let mut ids = Vec::new();
    loop {
        let reply = client.list_messages(request.clone()).await?.into_inner();
        ids.extend(reply.messages.into_iter().map(|m| m.id));
        if reply.next_page_token.is_empty() {
            break;
        }
        request.page_token = reply.next_page_token;
    }
    let mut found = Locations::new();
    for id in ids {
        let message = client
            .get_message(pb::GetMessageRequest { id: id.clone() })
            .await?
            .into_inner();
        for location in message.locations {
            found
                .entry((location.folder, location.uid))
                .or_default()
                .push((id.clone(), location.sha256));
        }
    }
    println!(
        "checked every record's locations through the mailbox service in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(found)
}
