//! `threatmail`: the command-line interface of threatmail.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;

/// Turns the mailboxes where a security team collects threat mail into a Threat Mailbox.
#[derive(Debug, Parser)]
#[command(name = "threatmail", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Parse .eml files and print each record with its indicators as JSON (no services needed).
    Parse(commands::parse::ParseArgs),
    /// Corpus tools: statistics over a folder of mail, scoring against answer keys.
    Corpus(commands::corpus::CorpusArgs),
    /// Run services in this process: `--target all` runs every one (monolithic mode).
    Serve(commands::serve::ServeArgs),
    /// The Threat Mailbox from the mailbox service: list, show, raw, summary, export --stix.
    Mailbox(commands::mailbox::MailboxArgs),
    /// Email sources in the registry: add (Save and Continue), folders, list, show, status
    /// [--watch], update, rm, test, secret.
    Source(commands::source::SourceArgs),
    /// API keys with roles: create (--bootstrap for the first admin key), list, revoke.
    Apikey(commands::apikey::ApiKeyArgs),
    /// Service credentials for services run as separate processes: create.
    Credential(commands::credential::CredentialArgs),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return usage_error(&error),
    };
    let outcome = match cli.command {
        Command::Parse(args) => commands::parse::run(args),
        Command::Corpus(args) => commands::corpus::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Mailbox(args) => commands::mailbox::run(args),
        Command::Source(args) => commands::source::run(args),
        Command::Apikey(args) => commands::apikey::run(args),
        Command::Credential(args) => commands::credential::run(args),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {}", threatmail_core::error::chain(error.as_ref()));
            if error
                .downcast_ref::<commands::secret_input::UsageError>()
                .is_some()
            {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// Prints clap's error (or help) and exits as clap does; an empty value that came from a
/// `TM_*` variable set to nothing gets a note naming it.
fn usage_error(error: &clap::Error) -> ExitCode {
    let _ = error.print();
    if error.kind() == clap::error::ErrorKind::InvalidValue {
        let empty: Vec<String> = std::env::vars_os()
            .filter(|(name, value)| name.to_string_lossy().starts_with("TM_") && value.is_empty())
            .map(|(name, _)| name.to_string_lossy().into_owned())
            .collect();
        if !empty.is_empty() {
            eprintln!(
                "note: {} set but empty: unset it or give it a value",
                empty.join(", ")
            );
        }
    }
    ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(2))
}
