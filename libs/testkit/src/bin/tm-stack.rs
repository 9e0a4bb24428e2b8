//! `tm-stack`: the local stack by hand.
//!
//! - `tm-stack up [--corpus DIR]`: start Redis, Dovecot and the Entra stand-in with the
//!   "everything right" tenant, print how to reach them, run until Ctrl-C.
//!
//! The demo of the whole system (`scripts/demo`) is `tm-demo` in the `threatmail-e2e`
//! package: it runs threatmail itself on this stack.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{
    INTEL_MAILBOX, Mailbox, PHISH_MAILBOX, TenantFixture, sample_message,
};

/// The folder the second half of the corpus goes to.
const REPORTS_FOLDER: &str = "Phish Reports";

#[derive(Parser)]
#[command(
    name = "tm-stack",
    about = "The threatmail local stack: Redis, Dovecot, an Entra stand-in"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the stack and keep it running until Ctrl-C.
    Up {
        /// A folder of .eml files to load into soc-phish@corp.example.
        #[arg(long)]
        corpus: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up { corpus } => up(corpus.as_deref()).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!(
                "tm-stack: {}",
                threatmail_core::error::chain(error.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// The "everything right" tenant with the corpus (or generated mail) in the phish mailbox,
/// split over INBOX and Phish Reports; returns the fixture and the message count.
fn fixture(corpus: Option<&Path>) -> anyhow::Result<(TenantFixture, usize)> {
    let messages = match corpus {
        Some(dir) => read_corpus(dir)?,
        None => (1..=6).map(sample_message).collect(),
    };
    let total = messages.len();
    let half = total.div_ceil(2);
    let (inbox, reports) = messages.split_at(half);
    let mut fixture = TenantFixture::everything_right();
    let tenant = fixture
        .primary_tenant_mut()
        .context("the fixture has a tenant")?;
    let mailbox = tenant
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .context("the fixture has the phish mailbox")?;
    *mailbox = Mailbox::new(PHISH_MAILBOX)
        .with_messages("INBOX", inbox.to_vec())
        .with_messages(REPORTS_FOLDER, reports.to_vec());
    Ok((fixture, total))
}

fn read_corpus(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read the corpus folder {}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "eml"))
        .collect();
    paths.sort();
    anyhow::ensure!(!paths.is_empty(), "no .eml files in {}", dir.display());
    paths
        .iter()
        .map(|path| {
            std::fs::read(path).with_context(|| format!("failed to read {}", path.display()))
        })
        .collect()
}

fn describe(stack: &LocalStack) -> anyhow::Result<()> {
    let (tenant_id, domain, app_name, client_id, sp_object_id) = stack.tenant().read(|f| {
        let tenant = f.primary_tenant().context("no tenant")?;
        let app = tenant.apps.first().context("no app")?;
        anyhow::Ok((
            tenant.id.clone(),
            tenant.domains.first().cloned().unwrap_or_default(),
            app.display_name.clone(),
            app.client_id.clone(),
            app.service_principal_object_id.clone(),
        ))
    })?;
    println!("threatmail local stack (loopback only; stopped on exit)");
    println!("  Redis          {}", stack.redis.url());
    println!(
        "  IMAP (TLS)     localhost:{}",
        stack.dovecot.imaps_addr().port()
    );
    println!(
        "  IMAP (plain)   localhost:{}",
        stack.dovecot.imap_addr().port()
    );
    println!("  Entra          {}", stack.entra.token_url(&tenant_id));
    println!("  test CA        {}", stack.ca_cert_path().display());
    println!("  tenant         {domain} ({tenant_id})");
    println!("  app            {app_name}, client id {client_id}");
    println!("  enterprise app object id {sp_object_id} (New-ServicePrincipal, FullAccess)");
    println!("  mailboxes      {PHISH_MAILBOX}, {INTEL_MAILBOX}");
    Ok(())
}

async fn up(corpus: Option<&Path>) -> anyhow::Result<()> {
    let (fixture, total) = fixture(corpus)?;
    let stack = LocalStack::start(fixture).await?;
    describe(&stack)?;
    let secret_file = stack.work_dir().join("client-secret");
    let secret = stack.tenant().read(|f| {
        f.primary_app()
            .and_then(|app| app.secrets.first())
            .map(|s| (s.value.expose().to_owned(), s.expires))
    });
    if let Some((secret, expires)) = secret {
        write_private(&secret_file, &secret)?;
        println!("  client secret  in {} (mode 0600)", secret_file.display());
        // The date the form's secret expiry field wants (`--secret-expires`).
        let date = humantime::format_rfc3339_seconds(expires).to_string();
        println!("  it expires     {}", &date[..10]);
    }
    println!("loaded {total} messages; press Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())?;
    Ok(())
}
