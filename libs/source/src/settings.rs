//! The master-key settings shared by every service that seals or opens secrets.
//!
//! A key is written `<key id>:<base64 of 32 bytes>`. Either `key` holds the primary key
//! (and `previous_keys` older ones kept for opening), or `key_file` names a file with one key
//! per line, the primary first: rotating then means putting a new line on top and restarting,
//! and dropping the old line once the registry has re-sealed everything.

use std::path::PathBuf;

use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;

use crate::crypto::{CryptoError, Keyring, MasterKey};

/// The `master_key` section of a service's configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MasterKeySettings {
    /// The primary key, `<key id>:<base64>` (prefer `key_file`).
    pub key: Option<SecretString>,
    /// Older keys still used for opening, same format.
    pub previous_keys: Vec<SecretString>,
    /// A file of keys, one per line, the primary first.
    pub key_file: Option<PathBuf>,
}

impl MasterKeySettings {
    /// What is wrong with the settings, as one configuration problem line (`master_key…:
    /// what, why`), or `None` when the keyring builds.
    pub fn problem(&self) -> Option<String> {
        let error = self.keyring().err()?;
        let mut line = match &error {
            CryptoError::BadKey { position, problem } if position == "master_key" => {
                format!("master_key: {problem}")
            }
            CryptoError::KeyFile { .. } => format!("master_key.key_file: {error}"),
            other => format!("master_key: {other}"),
        };
        let mut cause = std::error::Error::source(&error);
        while let Some(inner) = cause {
            let text = inner.to_string();
            if !line.contains(&text) {
                line.push_str(&format!(": {text}"));
            }
            cause = inner.source();
        }
        Some(line)
    }

    /// Builds the keyring.
    pub fn keyring(&self) -> Result<Keyring, CryptoError> {
        match (&self.key, &self.key_file) {
            (Some(_), Some(_)) => Err(CryptoError::BadKey {
                position: "master_key".to_owned(),
                problem: "set either `key` or `key_file`, not both".to_owned(),
            }),
            (None, Some(path)) if self.previous_keys.is_empty() => Keyring::from_file(path),
            (None, Some(_)) => Err(CryptoError::BadKey {
                position: "master_key.previous_keys".to_owned(),
                problem: "with `key_file`, put previous keys in the file after the primary"
                    .to_owned(),
            }),
            (Some(key), None) => {
                let primary = MasterKey::parse(key.expose_secret(), "master_key.key")?;
                let previous = self
                    .previous_keys
                    .iter()
                    .enumerate()
                    .map(|(n, key)| {
                        MasterKey::parse(
                            key.expose_secret(),
                            &format!("master_key.previous_keys[{n}]"),
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Keyring::new(primary, previous)
            }
            (None, None) => Err(CryptoError::BadKey {
                position: "master_key".to_owned(),
                problem: "not set: set master_key.key_file to a file holding `<key id>:<base64 \
                          of 32 random bytes>` (the same keys for the registry and the broker)"
                    .to_owned(),
            }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn inline_key_and_key_file_both_build_a_keyring() {
        let line = MasterKey::generate("k7").unwrap().to_line();
        let settings = MasterKeySettings {
            key: Some(line.clone()),
            ..Default::default()
        };
        assert_eq!(settings.keyring().unwrap().primary_key_id(), "k7");

        let dir = std::env::temp_dir().join(format!("tm-source-key-{}", std::process::id()));
        std::fs::write(&dir, format!("{}\n", line.expose_secret())).unwrap();
        let settings = MasterKeySettings {
            key_file: Some(dir.clone()),
            ..Default::default()
        };
        let keyring = settings.keyring();
        let _ = std::fs::remove_file(&dir);
        assert_eq!(keyring.unwrap().primary_key_id(), "k7");

        let error = MasterKeySettings::default().keyring().unwrap_err();
        assert!(error.to_string().contains("key_file"), "{error}");

        let unset = MasterKeySettings::default().problem().unwrap();
        assert!(unset.starts_with("master_key: not set"), "{unset}");
        let missing = MasterKeySettings {
            key_file: Some(PathBuf::from("/nonexistent/threatmail-master-key")),
            ..Default::default()
        };
        let line = missing.problem().unwrap();
        assert!(line.starts_with("master_key.key_file: "), "{line}");
        assert!(line.contains("No such file"), "the OS's reason: {line}");
    }
}
