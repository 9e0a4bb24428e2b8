//! `threatmail parse FILE.eml…`: parse mail offline and print records as JSON.

use std::path::PathBuf;
use std::process::ExitCode;

/// Arguments of `threatmail parse`.
#[derive(Debug, clap::Args)]
pub(crate) struct ParseArgs {
    /// The .eml files to parse.
    #[arg(required = true)]
    files: Vec<PathBuf>,
}

pub(crate) fn run(args: ParseArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("parse is not built yet ({} files given)", args.files.len())
}
