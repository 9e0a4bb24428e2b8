//! `threatmail credential create --name SERVICE --output FILE`: a service credential for
//! services run in separate processes (one process needs none: `serve --target all` makes
//! them for the run).
//!
//! The credential (`tms1.<name>.<secret>`) goes into a new file only its owner can read,
//! never to the terminal; the hash the called services list in `auth.services` is printed.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use serde_json::json;
use threatmail_auth::ServiceCredential;

/// Arguments of `threatmail credential`.
#[derive(Debug, clap::Args)]
pub(crate) struct CredentialArgs {
    #[command(subcommand)]
    command: CredentialCommand,
}

#[derive(Debug, clap::Subcommand)]
enum CredentialCommand {
    /// Make a service's credential in a new file (mode 0600) and print its hash.
    Create {
        /// The calling service: `registry` or `fetcher`.
        #[arg(long, value_parser = ["registry", "fetcher"])]
        name: String,
        /// The file to create (it must not exist): the service's `auth.credential_file`.
        #[arg(long, short)]
        output: PathBuf,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// The services that call `name`, for the hint.
fn callees(name: &str) -> &'static str {
    match name {
        "registry" => "[token_broker] and [fetcher]",
        _ => "[token_broker]",
    }
}

pub(crate) fn run(args: CredentialArgs) -> anyhow::Result<ExitCode> {
    let CredentialCommand::Create { name, output, json } = args.command;
    let credential = ServiceCredential::generate(&name)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&output)
        .with_context(|| {
            format!(
                "failed to create {} (it must not exist yet)",
                output.display()
            )
        })?;
    writeln!(file, "{}", credential.expose())
        .with_context(|| format!("failed to write {}", output.display()))?;
    let hash = credential.hash();
    if json {
        println!(
            "{}",
            json!({ "ok": true, "name": name, "file": output, "hash": hash })
        );
    } else {
        eprintln!(
            "wrote the {name} credential to {} (mode 0600): set it as the {name}'s \
             auth.credential_file, and list this hash as auth.services.{name} in {}:",
            output.display(),
            callees(&name)
        );
        println!("{hash}");
    }
    Ok(ExitCode::SUCCESS)
}
