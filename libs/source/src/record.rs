//! The email source record: the fields of the Add Email Source form (DESIGN §1, issue 4),
//! with its secrets sealed.
//!
//! A [`SourceRecord`] is what the registry stores and the token broker reads. Secrets (the
//! client secret or the password, and an optional next secret for rollover) are only ever
//! held sealed ([`StoredSecret`]), bound to the source id and slot; [`SourceRecord::credentials`]
//! opens them for the broker together with their fingerprints. Dates are Unix seconds.

use std::fmt;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::cloud::Cloud;
use crate::crypto::{CryptoError, Fingerprint, Keyring, Purpose, Sealed};

/// How long before a secret's expiry status starts warning (issue 3: 30 days).
pub const SECRET_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

/// The record layout version written in every record.
pub const SCHEMA_VERSION: u32 = 1;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// A source id with characters that do not belong in a Redis key.
    #[error("failed to read source id {0:?}: use 1-64 characters of A-Z a-z 0-9 - _")]
    InvalidId(String),
    /// The source does not log in with Microsoft OAuth 2.0.
    #[error("source {source_id} uses auth type {auth_type}, not ms-oauth2")]
    NotOAuth {
        /// The source.
        source_id: SourceId,
        /// Its auth type.
        auth_type: AuthType,
    },
    /// No client secret stored.
    #[error("source {source_id} has no client secret")]
    NoSecret {
        /// The source.
        source_id: SourceId,
    },
    /// A stored secret does not open.
    #[error("failed to open the {slot} secret of source {source_id}")]
    Crypto {
        /// The source.
        source_id: SourceId,
        /// Which secret.
        slot: SecretSlot,
        /// Why.
        #[source]
        source: CryptoError,
    },
}

/// Result alias of this module.
pub type Result<T, E = RecordError> = std::result::Result<T, E>;

/// A source's id: 1–64 characters of `A-Z a-z 0-9 - _` (a UUID when the registry makes one),
/// so it can sit inside a Redis hash tag.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceId(String);

impl SourceId {
    /// Checks `id`.
    pub fn parse(id: &str) -> Result<Self> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if ok {
            Ok(SourceId(id.to_owned()))
        } else {
            Err(RecordError::InvalidId(id.to_owned()))
        }
    }

    /// A new random id (a UUID v4).
    pub fn new_random() -> Self {
        SourceId(uuid::Uuid::new_v4().to_string())
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SourceId {
    type Error = RecordError;

    fn try_from(id: String) -> Result<Self> {
        SourceId::parse(&id)
    }
}

impl From<SourceId> for String {
    fn from(id: SourceId) -> String {
        id.0
    }
}

/// The account type; only IMAP for now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccountType {
    /// An IMAP mailbox.
    #[default]
    Imap,
}

/// How the source logs in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthType {
    /// Microsoft Entra ID app-only OAuth 2.0 (client credentials) and SASL XOAUTH2.
    #[default]
    MsOauth2,
    /// A password with IMAP LOGIN, for any other IMAP server.
    Password,
}

impl fmt::Display for AuthType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AuthType::MsOauth2 => "ms-oauth2",
            AuthType::Password => "password",
        })
    }
}

/// What the fetcher does to a message once it is stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum AfterProcessing {
    /// Leave the mailbox untouched (`EXAMINE`, `BODY.PEEK[]`).
    #[default]
    None,
    /// Set `\Seen`.
    MarkSeen,
    /// Move the message to another folder (not synced itself).
    MoveTo {
        /// The target folder's raw (modified UTF-7) name.
        folder: String,
    },
}

/// Which of a source's two secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SecretSlot {
    /// The secret in use.
    Current,
    /// The one to fall over to when the current one has expired (rollover).
    Next,
}

impl SecretSlot {
    /// `current` or `next`.
    pub fn as_str(self) -> &'static str {
        match self {
            SecretSlot::Current => "current",
            SecretSlot::Next => "next",
        }
    }
}

impl fmt::Display for SecretSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A sealed secret and the expiry date the user entered for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSecret {
    /// The secret, sealed for [`Purpose::SourceSecret`] and bound to (source id, slot).
    pub sealed: Sealed,
    /// When it stops working (Unix seconds), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// One email source as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceRecord {
    /// The layout version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// The id (also in the Redis key).
    pub id: SourceId,
    /// The record's version, kept in its own Redis field for optimistic concurrency, not in
    /// the JSON.
    #[serde(skip)]
    pub version: u64,
    /// The unique display name.
    pub name: String,
    /// `imap`.
    pub account_type: AccountType,
    /// `ms-oauth2` or `password`.
    pub auth_type: AuthType,
    /// The mailbox address or IMAP username (the SASL `user=`).
    pub username: String,
    /// The Application (client) ID; empty for `password`.
    #[serde(default)]
    pub app_id: String,
    /// The Directory (tenant) ID, a GUID or a verified domain; empty for `password`.
    #[serde(default)]
    pub tenant_id: String,
    /// The enterprise application's Object ID used with `New-ServicePrincipal`, if entered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// The client secret (or the password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<StoredSecret>,
    /// The next client secret, for rollover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_secret: Option<StoredSecret>,
    /// The Microsoft cloud (Global by default).
    #[serde(default)]
    pub cloud: Cloud,
    /// The IMAP host; `None` means the cloud's ([`Cloud::imap_host`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The IMAP port (993).
    pub port: u16,
    /// Implicit TLS (on by default).
    pub tls: bool,
    /// Whether the fetchers sync it.
    pub enabled: bool,
    /// Seconds between polls of a folder.
    pub poll_interval_secs: u64,
    /// What happens to a message after it is stored.
    #[serde(default)]
    pub after_processing: AfterProcessing,
    /// Senders whose mail counts as allowed (empty: every sender); others are stored but
    /// marked and left out of exports.
    #[serde(default)]
    pub sender_allow_list: Vec<String>,
    /// The TLP applied to a message without a marking, as `threatmail_parse`'s `Tlp`
    /// serialises it (`TLP:AMBER`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_tlp: Option<String>,
    /// Tags added to every message of the source and to its exports.
    #[serde(default)]
    pub tags: Vec<String>,
    /// When it was created (Unix seconds).
    pub created_at: i64,
    /// When it was last changed (Unix seconds).
    pub updated_at: i64,
}

impl SourceRecord {
    /// A new `ms-oauth2` record with the form's defaults (Global cloud, port 993, TLS,
    /// enabled, 5-minute polls) and no secret yet.
    pub fn new_oauth(
        id: SourceId,
        name: &str,
        username: &str,
        tenant_id: &str,
        app_id: &str,
        now: i64,
    ) -> Self {
        SourceRecord {
            schema: SCHEMA_VERSION,
            id,
            version: 0,
            name: name.to_owned(),
            account_type: AccountType::Imap,
            auth_type: AuthType::MsOauth2,
            username: username.to_owned(),
            app_id: app_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            object_id: None,
            secret: None,
            next_secret: None,
            cloud: Cloud::Global,
            host: None,
            port: 993,
            tls: true,
            enabled: true,
            poll_interval_secs: 300,
            after_processing: AfterProcessing::None,
            sender_allow_list: Vec::new(),
            default_tlp: None,
            tags: Vec::new(),
            created_at: now,
            updated_at: now,
        }
    }

    /// The IMAP host to connect to.
    pub fn imap_host(&self) -> &str {
        self.host.as_deref().unwrap_or(self.cloud.imap_host())
    }

    /// The associated data binding a sealed secret to this source and slot.
    pub fn secret_aad(id: &SourceId, slot: SecretSlot) -> Vec<u8> {
        format!("tm-source/{}/{}", id.as_str(), slot.as_str()).into_bytes()
    }

    /// Seals and stores `secret` in `slot` (replacing what was there).
    pub fn set_secret(
        &mut self,
        keyring: &Keyring,
        slot: SecretSlot,
        secret: &SecretString,
        expires_at: Option<i64>,
    ) -> Result<()> {
        let sealed = keyring
            .seal_secret(
                Purpose::SourceSecret,
                &Self::secret_aad(&self.id, slot),
                secret,
            )
            .map_err(|source| RecordError::Crypto {
                source_id: self.id.clone(),
                slot,
                source,
            })?;
        let stored = Some(StoredSecret { sealed, expires_at });
        match slot {
            SecretSlot::Current => self.secret = stored,
            SecretSlot::Next => self.next_secret = stored,
        }
        Ok(())
    }

    /// The sealed secret in `slot`.
    pub fn stored_secret(&self, slot: SecretSlot) -> Option<&StoredSecret> {
        match slot {
            SecretSlot::Current => self.secret.as_ref(),
            SecretSlot::Next => self.next_secret.as_ref(),
        }
    }

    /// Opens the secret in `slot`.
    pub fn open_secret(&self, keyring: &Keyring, slot: SecretSlot) -> Result<Option<SecretString>> {
        let Some(stored) = self.stored_secret(slot) else {
            return Ok(None);
        };
        keyring
            .open_secret(
                Purpose::SourceSecret,
                &Self::secret_aad(&self.id, slot),
                &stored.sealed,
            )
            .map(Some)
            .map_err(|source| RecordError::Crypto {
                source_id: self.id.clone(),
                slot,
                source,
            })
    }

    /// What the token broker needs: tenant, client id, cloud and the opened secrets
    /// (current first, then next) with their fingerprints.
    pub fn credentials(&self, keyring: &Keyring) -> Result<Credentials> {
        if self.auth_type != AuthType::MsOauth2 {
            return Err(RecordError::NotOAuth {
                source_id: self.id.clone(),
                auth_type: self.auth_type,
            });
        }
        let mut secrets = Vec::new();
        for slot in [SecretSlot::Current, SecretSlot::Next] {
            if let Some(value) = self.open_secret(keyring, slot)? {
                secrets.push(CredentialSecret {
                    slot,
                    fingerprint: keyring.fingerprint(&value),
                    value,
                    expires_at: self.stored_secret(slot).and_then(|s| s.expires_at),
                });
            }
        }
        if secrets.is_empty() {
            return Err(RecordError::NoSecret {
                source_id: self.id.clone(),
            });
        }
        Ok(Credentials {
            source_id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            client_id: self.app_id.clone(),
            cloud: self.cloud,
            object_id: self.object_id.clone(),
            enabled: self.enabled,
            secrets,
        })
    }

    /// The secrets that expire within `within` of `now` (or have expired), soonest first.
    pub fn expiring_secrets(&self, now: i64, within: Duration) -> Vec<ExpiringSecret> {
        let horizon = now.saturating_add(i64::try_from(within.as_secs()).unwrap_or(i64::MAX));
        let mut found: Vec<ExpiringSecret> = [SecretSlot::Current, SecretSlot::Next]
            .into_iter()
            .filter_map(|slot| {
                let expires_at = self.stored_secret(slot)?.expires_at?;
                (expires_at <= horizon).then_some(ExpiringSecret {
                    slot,
                    expires_at,
                    expired: expires_at <= now,
                })
            })
            .collect();
        found.sort_by_key(|s| s.expires_at);
        found
    }
}

/// A secret that expires soon, for status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiringSecret {
    /// Which secret.
    pub slot: SecretSlot,
    /// When (Unix seconds).
    pub expires_at: i64,
    /// Whether that moment has passed.
    pub expired: bool,
}

/// A source's login material for the token broker, secrets opened. `Debug` redacts them.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The source.
    pub source_id: SourceId,
    /// Directory (tenant) ID or domain.
    pub tenant_id: String,
    /// Application (client) ID.
    pub client_id: String,
    /// The cloud.
    pub cloud: Cloud,
    /// The Object ID the user entered, if any.
    pub object_id: Option<String>,
    /// Whether the source is enabled.
    pub enabled: bool,
    /// Current secret first, then the next one.
    pub secrets: Vec<CredentialSecret>,
}

/// One opened secret.
#[derive(Debug, Clone)]
pub struct CredentialSecret {
    /// Current or next.
    pub slot: SecretSlot,
    /// The value (`Debug` prints `[REDACTED]`).
    pub value: SecretString,
    /// Its keyed fingerprint.
    pub fingerprint: Fingerprint,
    /// The expiry date entered for it (Unix seconds).
    pub expires_at: Option<i64>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use secrecy::ExposeSecret as _;

    use super::*;
    use crate::crypto::MasterKey;

    fn keyring() -> Keyring {
        Keyring::new(MasterKey::generate("k1").unwrap(), Vec::new()).unwrap()
    }

    fn record() -> SourceRecord {
        SourceRecord::new_oauth(
            SourceId::parse("src-1").unwrap(),
            "Phishing",
            "soc-phish@corp.example",
            "corp.example",
            "11111111-2222-3333-4444-555555555555",
            1_767_225_600,
        )
    }

    #[test]
    fn ids_must_fit_in_a_hash_tag() {
        assert!(SourceId::parse("0b1c-AZ_9").is_ok());
        for bad in ["", "a}b", "a{b", "a:b", "with space", &"x".repeat(65)] {
            assert!(SourceId::parse(bad).is_err(), "{bad:?}");
        }
        assert!(serde_json::from_str::<SourceId>("\"a}b\"").is_err());
        assert_eq!(SourceId::new_random().as_str().len(), 36);
    }

    #[test]
    fn secrets_are_sealed_in_the_json_and_open_to_credentials() {
        let keyring = keyring();
        let mut record = record();
        record
            .set_secret(
                &keyring,
                SecretSlot::Current,
                &"cur8Q~value".into(),
                Some(100),
            )
            .unwrap();
        record
            .set_secret(&keyring, SecretSlot::Next, &"nxt8Q~value".into(), None)
            .unwrap();
        let json = serde_json::to_string(&record).unwrap();
        assert!(!json.contains("8Q~value"), "{json}");
        assert!(!json.contains("\"version\""), "{json}");
        let back: SourceRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back,
            SourceRecord {
                version: 0,
                ..record.clone()
            }
        );

        let credentials = back.credentials(&keyring).unwrap();
        assert_eq!(credentials.secrets.len(), 2);
        assert_eq!(credentials.secrets[0].slot, SecretSlot::Current);
        assert_eq!(credentials.secrets[0].value.expose_secret(), "cur8Q~value");
        assert_eq!(credentials.secrets[0].expires_at, Some(100));
        assert_eq!(
            credentials.secrets[1].fingerprint,
            keyring.fingerprint(&"nxt8Q~value".into())
        );
        let printed = format!("{credentials:?} {record:?}");
        assert!(!printed.contains("8Q~value"), "{printed}");
    }

    #[test]
    fn a_sealed_secret_moved_to_another_source_or_slot_does_not_open() {
        let keyring = keyring();
        let mut one = record();
        one.set_secret(&keyring, SecretSlot::Current, &"s".into(), None)
            .unwrap();
        let mut other = record();
        other.id = SourceId::parse("src-2").unwrap();
        other.secret = one.secret.clone();
        assert!(matches!(
            other.credentials(&keyring),
            Err(RecordError::Crypto {
                slot: SecretSlot::Current,
                ..
            })
        ));
        let mut swapped = one.clone();
        swapped.next_secret = swapped.secret.take();
        assert!(swapped.open_secret(&keyring, SecretSlot::Next).is_err());
    }

    #[test]
    fn password_sources_and_missing_secrets_have_no_credentials() {
        let keyring = keyring();
        assert!(matches!(
            record().credentials(&keyring),
            Err(RecordError::NoSecret { .. })
        ));
        let mut password = record();
        password.auth_type = AuthType::Password;
        assert!(matches!(
            password.credentials(&keyring),
            Err(RecordError::NotOAuth { .. })
        ));
    }

    #[test]
    fn expiring_secrets_lists_those_within_the_window_soonest_first() {
        let keyring = keyring();
        let day = 24 * 3600;
        let now = 1_000_000;
        let mut record = record();
        record
            .set_secret(
                &keyring,
                SecretSlot::Current,
                &"a".into(),
                Some(now + 40 * day),
            )
            .unwrap();
        record
            .set_secret(
                &keyring,
                SecretSlot::Next,
                &"b".into(),
                Some(now + 10 * day),
            )
            .unwrap();
        let soon = record.expiring_secrets(now, SECRET_EXPIRY_WARNING);
        assert_eq!(
            soon,
            vec![ExpiringSecret {
                slot: SecretSlot::Next,
                expires_at: now + 10 * day,
                expired: false
            }]
        );
        let later = record.expiring_secrets(now + 45 * day, SECRET_EXPIRY_WARNING);
        assert_eq!(later.len(), 2);
        assert!(later.iter().all(|s| s.expired));
        assert_eq!(later[0].slot, SecretSlot::Next);
    }

    #[test]
    fn after_processing_and_cloud_serialise_readably() {
        let mut record = record();
        record.after_processing = AfterProcessing::MoveTo {
            folder: "Processed".into(),
        };
        record.cloud = Cloud::UsGovernment;
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json["after_processing"],
            serde_json::json!({"action": "move-to", "folder": "Processed"})
        );
        assert_eq!(json["cloud"], "us-government");
        assert_eq!(json["auth_type"], "ms-oauth2");
        assert_eq!(record.imap_host(), "outlook.office365.us");
    }
}
