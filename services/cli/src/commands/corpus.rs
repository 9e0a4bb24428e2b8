//! `threatmail corpus …`: statistics over a folder of mail and scoring against answer keys.

use std::process::ExitCode;

/// Arguments of `threatmail corpus`.
#[derive(Debug, clap::Args)]
pub(crate) struct CorpusArgs {}

pub(crate) fn run(_args: CorpusArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("corpus is not built yet")
}
