//! `tm-demo --corpus DIR`: the main job on the local stack, as `scripts/demo` runs it.
//!
//! Starts Redis, Dovecot and the Entra stand-in (a tenant set up as the administrator's
//! steps say), loads the corpus into one mailbox split over `INBOX` and `Phish Reports`,
//! starts `threatmail serve --target all`, and then does what a SOC engineer does, through
//! the CLI, each command shown as it runs: adds the source with the form's fields (Save and
//! Continue prints the folder tree), selects both folders, watches the first sync, and
//! prints the Threat Mailbox summary. It exits 0 only when every corpus message is in the
//! Threat Mailbox exactly once, with the bytes the server holds. Everything it starts or
//! writes is removed when it ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use sha2::{Digest as _, Sha256};
use threatmail_e2e::{Deployment, Layout, Tuning, threatmail_binary};
use threatmail_proto::v1 as pb;
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

/// The folder the second half of the corpus goes to.
const REPORTS_FOLDER: &str = "Phish Reports";
/// The source's name in the demo.
const SOURCE_NAME: &str = "SOC phishing reports";

#[derive(Parser)]
#[command(
    name = "tm-demo",
    about = "threatmail end to end on the local stack: sync a corpus into the Threat Mailbox"
)]
struct Args {
    /// A folder of .eml files to load into the mailbox.
    #[arg(long)]
    corpus: PathBuf,
    /// The threatmail binary (default: the one built beside this one).
    #[arg(long)]
    threatmail: Option<PathBuf>,
    /// Give up on the first sync after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match demo(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tm-demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn read_corpus(dir: &Path) -> anyhow::Result<Vec<(PathBuf, Vec<u8>)>> {
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
fn step(deployment: &Deployment, args: &[String]) -> anyhow::Result<()> {
    let line: Vec<String> = args.iter().map(|a| shown(a)).collect();
    println!("\n$ threatmail {}", line.join(" "));
    let status = deployment
        .command()
        .args(args)
        .status()
        .context("failed to run threatmail")?;
    anyhow::ensure!(
        status.success(),
        "`threatmail {}` failed ({status}); the services' logs:\n{}",
        line.join(" "),
        deployment.logs_tail(30)
    );
    Ok(())
}

async fn demo(args: Args) -> anyhow::Result<()> {
    let threatmail = match args.threatmail {
        Some(path) => path,
        None => threatmail_binary()?,
    };
    let corpus = read_corpus(&args.corpus)?;
    let half = corpus.len().div_ceil(2);
    let (inbox, reports) = corpus.split_at(half);
    let mut fixture = TenantFixture::everything_right();
    let mailbox = fixture
        .primary_tenant_mut()
        .and_then(|t| t.exchange.mailbox_mut(PHISH_MAILBOX))
        .context("the fixture has the phish mailbox")?;
    let bytes = |part: &[(PathBuf, Vec<u8>)]| part.iter().map(|(_, b)| b.clone()).collect();
    *mailbox = Mailbox::new(PHISH_MAILBOX)
        .with_messages("INBOX", bytes(inbox))
        .with_messages(REPORTS_FOLDER, bytes(reports));

    println!(
        "starting the local stack: Redis, Dovecot (IMAP over TLS, XOAUTH2 checked as Exchange \
         Online does) and the Entra stand-in"
    );
    let stack = LocalStack::start(fixture).await?;
    println!(
        "loaded {} messages from {} into {PHISH_MAILBOX}: {} in INBOX, {} in {REPORTS_FOLDER}",
        corpus.len(),
        args.corpus.display(),
        inbox.len(),
        reports.len()
    );
    println!("starting `threatmail serve --target all`");
    let mut deployment =
        Deployment::start(stack, threatmail, Layout::OneProcess, &Tuning::default()).await?;

    let mut add = deployment.source_add_args(SOURCE_NAME)?;
    add.push("--tags".to_owned());
    add.push("demo".to_owned());
    step(&deployment, &add)?;
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
    step(&deployment, &select)?;
    let timeout = format!("{}s", args.timeout.as_secs());
    let watch = [
        "source",
        "status",
        SOURCE_NAME,
        "--watch",
        "--timeout",
        &timeout,
    ];
    step(&deployment, &watch.map(str::to_owned))?;
    deployment.check_running()?;
    step(&deployment, &["mailbox".to_owned(), "summary".to_owned()])?;

    // Every seeded message must be in the Threat Mailbox exactly once: each (folder, UID)
    // the seeding made is a location of exactly one record, with the same bytes.
    let mut expected: BTreeMap<(String, u32), String> = BTreeMap::new();
    for (folder, part) in [("INBOX", inbox), (REPORTS_FOLDER, reports)] {
        for (n, (_, raw)) in part.iter().enumerate() {
            let uid = u32::try_from(n + 1)?;
            expected.insert((folder.to_owned(), uid), hex_sha256(&crlf(raw)));
        }
    }
    let found = locations(&deployment).await?;
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
    println!(
        "\ndemo OK: every one of the {} corpus messages is in the Threat Mailbox exactly once, \
         with the bytes the server holds; stopping everything and removing its files",
        expected.len()
    );
    Ok(())
}

type Locations = BTreeMap<(String, u32), Vec<(String, String)>>;

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
