//! The auth settings of a service: which services may call it, and its own credential for
//! calling others.
//!
//! ```toml
//! [auth]
//! # Services allowed to call, each with the hash of its credential
//! # (`threatmail` prints both when it makes a credential).
//! services = { fetcher = "sha256:…", registry = "sha256:…" }
//! # or: lines of `<service name> sha256:<hex>`
//! services_file = "/run/secrets/threatmail-services"
//! # This service's own credential, for calling others.
//! credential_file = "/run/secrets/threatmail-credential"
//! ```
//!
//! As variables: `THREATMAIL_AUTH__SERVICES__FETCHER=sha256:…`,
//! `THREATMAIL_AUTH__SERVICES_FILE=…`, `THREATMAIL_AUTH__CREDENTIAL_FILE=…`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use secrecy::SecretString;
use serde::Deserialize;

use crate::credential::{CredentialError, ServiceCredential, ServiceCredentials};

/// The `auth` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// Service name → `sha256:<hex>` of its credential.
    pub services: BTreeMap<String, String>,
    /// A file of `<service name> sha256:<hex>` lines.
    pub services_file: Option<PathBuf>,
    /// This service's credential, `tms1.<name>.<secret>` (prefer `credential_file`).
    pub credential: Option<SecretString>,
    /// A file holding this service's credential.
    pub credential_file: Option<PathBuf>,
}

impl AuthSettings {
    /// The services allowed to call.
    pub fn service_credentials(&self) -> Result<ServiceCredentials, CredentialError> {
        let mut allowed = ServiceCredentials::new();
        for (name, hash) in &self.services {
            allowed.allow(name, hash)?;
        }
        if let Some(path) = &self.services_file {
            allowed.load_file(path)?;
        }
        Ok(allowed)
    }

    /// This service's own credential, if configured.
    pub fn own_credential(&self) -> Result<Option<ServiceCredential>, CredentialError> {
        match (&self.credential, &self.credential_file) {
            (Some(text), _) => ServiceCredential::parse(text).map(Some),
            (None, Some(path)) => ServiceCredential::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}
