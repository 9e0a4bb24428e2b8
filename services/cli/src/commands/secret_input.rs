//! Where a command reads a secret (a client secret or a password) from: a file, a named
//! environment variable, a prompt without echo on the terminal, or stdin when it is not a
//! terminal. Never from the command line, where other users can read it in the process
//! list.

use std::io::{IsTerminal as _, Read as _};
use std::path::PathBuf;

use anyhow::Context as _;
use secrecy::SecretString;

/// The flags naming where a secret comes from.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct SecretSource {
    /// Read the secret (the client secret's Value, or the password) from this file.
    #[arg(long, value_name = "FILE", conflicts_with = "secret_key_env")]
    pub(crate) secret_key_file: Option<PathBuf>,
    /// Read the secret from this environment variable (its name, not the secret).
    #[arg(long, value_name = "VAR")]
    pub(crate) secret_key_env: Option<String>,
    /// Not accepted: caught only to say where the secret goes instead.
    #[arg(
        long = "secret",
        alias = "secret-key",
        hide = true,
        value_name = "SECRET",
        value_parser = |text: &str| Ok::<_, std::convert::Infallible>(SecretString::from(text.to_owned()))
    )]
    pub(crate) on_the_command_line: Option<SecretString>,
}

impl SecretSource {
    /// Refuses a secret given as an argument, saying where it goes instead.
    pub(crate) fn refuse_argument(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.on_the_command_line.is_none(),
            UsageError(
                "a secret is never taken from the command line, where other users see it in \
                 the process list and your shell keeps it in its history: treat this one as \
                 exposed and make a new one; pass it with --secret-key-file FILE, \
                 --secret-key-env VAR, or on stdin / at the prompt"
            )
        );
        Ok(())
    }

    /// Whether a file or a variable was named.
    pub(crate) fn is_named(&self) -> bool {
        self.secret_key_file.is_some() || self.secret_key_env.is_some()
    }

    /// The secret: from the file or variable named, else a prompt (`prompt`) on the
    /// terminal, else all of stdin. Line ends at the end are dropped (a file or a pipe
    /// usually ends with one); anything else is kept for the registry to judge.
    pub(crate) fn read(&self, prompt: &str) -> anyhow::Result<SecretString> {
        let text = if let Some(path) = &self.secret_key_file {
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read the secret file {}", path.display()))?
        } else if let Some(name) = &self.secret_key_env {
            std::env::var(name).map_err(|_| {
                anyhow::anyhow!(
                    "the variable {name} named by --secret-key-env is not set (or not text): \
                     export it, or use --secret-key-file FILE"
                )
            })?
        } else if std::io::stdin().is_terminal() {
            rpassword::prompt_password(prompt).context("failed to read the secret at the prompt")?
        } else {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("failed to read the secret from stdin")?;
            text
        };
        let secret = text.trim_end_matches(['\r', '\n']);
        if secret.is_empty() {
            anyhow::bail!(
                "no secret was given: use --secret-key-file FILE or --secret-key-env VAR, type it \
                 at the prompt, or pipe it on stdin"
            );
        }
        Ok(SecretString::from(secret.to_owned()))
    }
}

/// A mistake in how the command was called (exit status 2).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) &'static str);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for UsageError {}
