//! Credentials as presented and as stored.
//!
//! Callers send `authorization: Bearer <credential>` in gRPC metadata. A credential is
//! `tms1.<service name>.<secret>` for a service or `tmk1.<key id>.<secret>` for an API
//! key, the secret being 32 random bytes in base64url. Only a hash is stored or configured,
//! `sha256:<hex>` of the whole credential: the secrets are random, so a plain SHA-256 cannot
//! be guessed back, and verifying costs a microsecond. Hashes are compared in constant time.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// The service credential prefix.
pub const SERVICE_PREFIX: &str = "tms1";
/// The API key prefix.
pub const API_KEY_PREFIX: &str = "tmk1";

/// Errors reading credentials or their configuration. None carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A configured hash is not `sha256:<64 hex digits>`.
    #[error(
        "failed to read the credential hash of service {service:?}: expected sha256:<64 hex digits>"
    )]
    BadHash {
        /// The service.
        service: String,
    },
    /// A service name or key id with characters outside `a-z 0-9 -`.
    #[error("failed to read name {name:?}: use 1-32 characters of a-z 0-9 -")]
    BadName {
        /// The name.
        name: String,
    },
    /// A credentials file could not be read.
    #[error("failed to read {path}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line of a credentials file is not `<name> sha256:<hex>`.
    #[error("failed to read line {line} of {path}: expected `<service name> sha256:<hex>`")]
    BadLine {
        /// The file.
        path: String,
        /// The line number.
        line: usize,
    },
    /// A client credential is not `tms1.<name>.<secret>`.
    #[error("failed to read the service credential: expected tms1.<service name>.<secret>")]
    BadCredential,
    /// The system random generator failed.
    #[error("failed to generate a random secret")]
    Random,
}

/// A presented credential, split.
#[derive(Clone, Copy)]
pub(crate) enum Presented<'a> {
    Service { name: &'a str, whole: &'a str },
    ApiKey { id: &'a str, whole: &'a str },
}

impl fmt::Debug for Presented<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Presented::Service { name, .. } => write!(f, "Service({name})"),
            Presented::ApiKey { id, .. } => write!(f, "ApiKey({id})"),
        }
    }
}

/// Splits `tms1.<name>.<secret>` / `tmk1.<id>.<secret>`; `None` for anything else.
pub(crate) fn split(whole: &str) -> Option<Presented<'_>> {
    let mut parts = whole.splitn(3, '.');
    let (prefix, name, secret) = (parts.next()?, parts.next()?, parts.next()?);
    if !valid_name(name) || secret.is_empty() {
        return None;
    }
    match prefix {
        SERVICE_PREFIX => Some(Presented::Service { name, whole }),
        API_KEY_PREFIX => Some(Presented::ApiKey { id: name, whole }),
        _ => None,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// SHA-256 of a credential.
pub fn hash(credential: &str) -> [u8; 32] {
    Sha256::digest(credential.as_bytes()).into()
}

/// `sha256:<hex>` of a credential, the form configured and stored.
pub fn hash_string(credential: &str) -> String {
    format!("sha256:{}", hex::encode(hash(credential)))
}

fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex_digits = text.trim().strip_prefix("sha256:")?;
    let bytes = hex::decode(hex_digits).ok()?;
    bytes.try_into().ok()
}

/// Whether `presented` hashes to `expected`, in constant time.
pub(crate) fn matches(presented: &str, expected: &[u8; 32]) -> bool {
    hash(presented).ct_eq(expected).into()
}

/// 32 random bytes in base64url.
pub(crate) fn random_secret() -> Result<String, CredentialError> {
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| CredentialError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The services allowed to call, by name, with their credential hashes.
#[derive(Clone, Default)]
pub struct ServiceCredentials {
    by_name: BTreeMap<String, [u8; 32]>,
}

impl fmt::Debug for ServiceCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceCredentials")
            .field("services", &self.by_name.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceCredentials {
    /// None allowed.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows service `name` whose credential hashes to `hash` (`sha256:<hex>`).
    pub fn allow(&mut self, name: &str, hash: &str) -> Result<(), CredentialError> {
        if !valid_name(name) {
            return Err(CredentialError::BadName {
                name: name.to_owned(),
            });
        }
        let hash = parse_hash(hash).ok_or_else(|| CredentialError::BadHash {
            service: name.to_owned(),
        })?;
        self.by_name.insert(name.to_owned(), hash);
        Ok(())
    }

    /// Reads lines `<service name> sha256:<hex>` (`#` comments, blank lines skipped).
    pub fn load_file(&mut self, path: &Path) -> Result<(), CredentialError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::File {
            path: path.display().to_string(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(name), Some(hash), None) = (words.next(), words.next(), words.next()) else {
                return Err(CredentialError::BadLine {
                    path: path.display().to_string(),
                    line: n + 1,
                });
            };
            self.allow(name, hash)?;
        }
        Ok(())
    }

    /// The names allowed.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// Whether `whole` is the credential of service `name`.
    pub(crate) fn verify(&self, name: &str, whole: &str) -> bool {
        match self.by_name.get(name) {
            Some(expected) => matches(whole, expected),
            None => {
                // Same work for an unknown name, so timing does not tell names apart.
                let _ = matches(whole, &[0u8; 32]);
                false
            }
        }
    }
}

/// A service's own credential, for calling other services. `Debug` shows the name only.
#[derive(Clone)]
pub struct ServiceCredential {
    name: String,
    whole: SecretString,
}

impl fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceCredential({})", self.name)
    }
}

impl ServiceCredential {
    /// A new random credential for service `name`.
    pub fn generate(name: &str) -> Result<Self, CredentialError> {
        if !valid_name(name) {
            return Err(CredentialError::BadName {
                name: name.to_owned(),
            });
        }
        let whole = format!("{SERVICE_PREFIX}.{name}.{}", random_secret()?);
        Ok(ServiceCredential {
            name: name.to_owned(),
            whole: SecretString::from(whole),
        })
    }

    /// Reads `tms1.<name>.<secret>`.
    pub fn parse(text: &SecretString) -> Result<Self, CredentialError> {
        let whole = text.expose_secret().trim();
        match split(whole) {
            Some(Presented::Service { name, .. }) => Ok(ServiceCredential {
                name: name.to_owned(),
                whole: SecretString::from(whole),
            }),
            _ => Err(CredentialError::BadCredential),
        }
    }

    /// Reads a file holding the credential.
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        let text = std::fs::read_to_string(path).map_err(|source| CredentialError::File {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&SecretString::from(text))
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `sha256:<hex>`, for the called services' configuration.
    pub fn hash(&self) -> String {
        hash_string(self.whole.expose_secret())
    }

    /// The credential itself, for the `authorization` metadata.
    pub fn expose(&self) -> &str {
        self.whole.expose_secret()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn generated_credentials_verify_against_their_hash_only() {
        let credential = ServiceCredential::generate("fetcher").unwrap();
        assert!(credential.expose().starts_with("tms1.fetcher."));
        let mut allowed = ServiceCredentials::new();
        allowed.allow("fetcher", &credential.hash()).unwrap();
        assert!(allowed.verify("fetcher", credential.expose()));
        let other = ServiceCredential::generate("fetcher").unwrap();
        assert!(!allowed.verify("fetcher", other.expose()));
        assert!(!allowed.verify("registry", credential.expose()));
        assert!(!format!("{credential:?} {allowed:?}").contains(credential.expose()));
    }

    #[test]
    fn presented_credentials_are_split_by_prefix() {
        assert!(matches!(
            split("tms1.fetcher.abc"),
            Some(Presented::Service {
                name: "fetcher",
                ..
            })
        ));
        assert!(matches!(
            split("tmk1.0a1b.abc"),
            Some(Presented::ApiKey { id: "0a1b", .. })
        ));
        for bad in [
            "",
            "tms1",
            "tms1.fetcher",
            "tms1.fetcher.",
            "tms1.Fetcher.x",
            "tmx1.a.b",
            "Bearer x",
        ] {
            assert!(split(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn credential_files_are_read_and_checked() {
        let credential = ServiceCredential::generate("registry").unwrap();
        let path = std::env::temp_dir().join(format!("tm-auth-{}.txt", std::process::id()));
        std::fs::write(
            &path,
            format!("# services\n\nregistry {}\n", credential.hash()),
        )
        .unwrap();
        let mut allowed = ServiceCredentials::new();
        let loaded = allowed.load_file(&path);
        std::fs::write(&path, "registry sha256:beef\n").unwrap();
        let bad = ServiceCredentials::new().load_file(&path);
        std::fs::write(&path, credential.expose()).unwrap();
        let client = ServiceCredential::from_file(&path);
        let _ = std::fs::remove_file(&path);
        loaded.unwrap();
        assert!(allowed.verify("registry", credential.expose()));
        assert!(matches!(bad, Err(CredentialError::BadHash { .. })));
        assert_eq!(client.unwrap().name(), "registry");
    }
}
