//! The email source record, defined once for the registry and the token broker, so the two
//! can never disagree on it.
//!
//! - [`record`]: the fields of an Email Source ([`SourceRecord`]), its sealed secrets and
//!   the [`Credentials`] the broker opens from it; which secrets expire soon.
//! - [`store`]: its Redis layout under the hash tag `tm:{<source id>}:…`, and reading it.
//! - [`crypto`]: the master [`Keyring`] (AEAD with key ids, so keys rotate) and the keyed
//!   credential [`Fingerprint`].
//! - [`cloud`]: Global, US Government and China, each giving authority, scope and IMAP host.
//! - [`settings`]: the master-key settings every service that opens secrets shares.

pub mod cloud;
pub mod crypto;
pub mod record;
pub mod settings;
pub mod store;

pub use cloud::Cloud;
pub use crypto::{Fingerprint, Keyring, MasterKey, Purpose, Sealed};
pub use record::{
    CredentialSecret, Credentials, ExpiringSecret, SECRET_EXPIRY_WARNING, SecretSlot, SourceId,
    SourceRecord,
};
pub use settings::MasterKeySettings;
pub use store::SourceStore;
