//! The email source record, defined once for the registry and the token broker, so the two
//! can never disagree on it.
//!
//! - [`record`]: the fields of an Email Source ([`SourceRecord`]), its sealed secrets and
//!   the [`Credentials`] the broker opens from it; which secrets expire soon.
//! - [`store`]: its Redis layout under the hash tag `tm:{<source id>}:…`: create, update
//!   and folder selection with versions (optimistic concurrency), unique names, delete,
//!   list, folder status.
//! - [`folders`]: the folder selection, raw names kept for commands.
//! - [`status`]: per-folder sync status as the fetchers write it.
//! - [`fleet`]: which fetchers are running, as their schedulers report it.
//! - [`crypto`]: the master [`Keyring`] (AEAD with key ids, so keys rotate) and the keyed
//!   credential [`Fingerprint`].
//! - [`cloud`]: Global, US Government and China, each giving authority, scope and IMAP host.
//! - [`settings`]: the master-key settings every service that opens secrets shares.

pub mod checklist;
pub mod cloud;
pub mod crypto;
pub mod fleet;
pub mod folders;
pub mod record;
pub mod settings;
pub mod status;
pub mod store;

pub use cloud::Cloud;
pub use crypto::{Fingerprint, Keyring, MasterKey, Purpose, Sealed};
pub use fleet::Fleet;
pub use folders::FolderSelection;
pub use record::{
    CredentialSecret, Credentials, ExpiringSecret, SECRET_EXPIRY_WARNING, SecretSlot, SourceId,
    SourceRecord,
};
pub use settings::MasterKeySettings;
pub use status::{ConnectionState, FolderError, FolderStatus};
pub use store::SourceStore;
