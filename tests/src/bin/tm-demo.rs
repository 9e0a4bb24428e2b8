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

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use threatmail_e2e::threatmail_binary;

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
    let threatmail = match args.threatmail {
        Some(path) => Ok(path),
        None => threatmail_binary(),
    };
    let outcome = match threatmail {
        Ok(threatmail) => threatmail_e2e::demo::run(&args.corpus, threatmail, args.timeout).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("tm-demo: {error:#}");
            ExitCode::FAILURE
        }
    }
}
