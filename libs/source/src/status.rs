//! Per-folder sync status: what the fetchers report and the registry's `GetStatus` serves.
//!
//! Each folder of a source has one Redis hash, `tm:{<id>}:status:<hex of the raw name>`
//! (hex, because raw names may hold any byte a key should not), and the set
//! `tm:{<id>}:status-index` names the folders that have one, so deleting a source removes
//! them all in one script. The keys share the source's hash tag, so a fetcher can update a
//! folder's status in the same `MULTI` as its checkpoint. Fields:
//!
//! | field | holds |
//! |---|---|
//! | `raw_name` | the folder's raw name |
//! | `last_poll` | Unix seconds of the last completed poll |
//! | `uidvalidity`, `last_uid` | the checkpoint as of the last poll |
//! | `messages_synced` | records with a location in this folder, set by the fetcher from the store's count after each attempt (so batches committed by an attempt that failed later count too) |
//! | `messages_skipped` | messages of the folder's current UIDVALIDITY over the size limit, recorded as skipped and not fetched |
//! | `retry_count` | failed attempts since the last success |
//! | `connection_state` | [`ConnectionState`] as a word |
//! | `last_error` | [`FolderError`] as JSON, absent after a success |
//! | `updated_at` | Unix seconds of the last write |

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::record::SourceId;

/// `tm:{<id>}:status:<hex raw name>`.
pub fn status_key(id: &SourceId, raw_name: &str) -> String {
    format!(
        "tm:{{{}}}:status:{}",
        id.as_str(),
        hex::encode(raw_name.as_bytes())
    )
}

/// `tm:{<id>}:status-index`: the hex names of the folders with a status hash.
pub fn status_index_key(id: &SourceId) -> String {
    format!("tm:{{{}}}:status-index", id.as_str())
}

/// What a fetcher is doing with a folder.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnectionState {
    /// Never polled.
    #[default]
    Unknown,
    /// Opening the IMAP session (TLS, login).
    Connecting,
    /// Fetching new messages.
    Syncing,
    /// Up to date, waiting for the next poll.
    Idle,
    /// The last attempt failed; waiting to retry.
    Retrying,
    /// Failing in a way that needs the user (e.g. the login is refused).
    Failed,
    /// The source or the folder is switched off.
    Disabled,
}

/// Every state, in order.
pub const ALL_STATES: [ConnectionState; 7] = [
    ConnectionState::Unknown,
    ConnectionState::Connecting,
    ConnectionState::Syncing,
    ConnectionState::Idle,
    ConnectionState::Retrying,
    ConnectionState::Failed,
    ConnectionState::Disabled,
];

impl ConnectionState {
    /// The stored word: `unknown`, `connecting`, `syncing`, `idle`, `retrying`, `failed`,
    /// `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Unknown => "unknown",
            ConnectionState::Connecting => "connecting",
            ConnectionState::Syncing => "syncing",
            ConnectionState::Idle => "idle",
            ConnectionState::Retrying => "retrying",
            ConnectionState::Failed => "failed",
            ConnectionState::Disabled => "disabled",
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ConnectionState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ALL_STATES
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown connection state {text:?}"))
    }
}

/// The last failure of a folder, with its diagnosis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderError {
    /// Machine-readable, e.g. `imap.authenticate_failed`.
    pub reason: String,
    /// One line a person can act on.
    pub message: String,
    /// What the server or Entra said, e.g. `NO AUTHENTICATE failed.`.
    #[serde(default)]
    pub upstream_code: String,
    /// Steps to check in order, when the cause cannot be told apart (DESIGN §1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checklist: Vec<String>,
    /// When it happened (Unix seconds).
    pub at: i64,
}

/// One folder's status.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FolderStatus {
    /// The folder's raw name.
    pub raw_name: String,
    /// Last completed poll (Unix seconds).
    pub last_poll: Option<i64>,
    /// UIDVALIDITY as of the last poll.
    pub uidvalidity: Option<u32>,
    /// Highest UID stored.
    pub last_uid: Option<u32>,
    /// Records with a location in this folder, as the store counts them (set, not
    /// incremented, after each attempt).
    pub messages_synced: u64,
    /// Messages over the size limit, recorded as skipped and not fetched (of the folder's
    /// current UIDVALIDITY).
    pub messages_skipped: u64,
    /// The last failure, cleared by a success.
    pub last_error: Option<FolderError>,
    /// Failed attempts since the last success.
    pub retry_count: u32,
    /// What the fetcher is doing.
    pub connection_state: ConnectionState,
    /// Last write (Unix seconds).
    pub updated_at: Option<i64>,
}

/// The hash fields, in the order [`FolderStatus::from_fields`] reads them.
pub const FIELDS: [&str; 10] = [
    "raw_name",
    "last_poll",
    "uidvalidity",
    "last_uid",
    "messages_synced",
    "messages_skipped",
    "retry_count",
    "connection_state",
    "last_error",
    "updated_at",
];

impl FolderStatus {
    /// A folder never polled.
    pub fn new(raw_name: &str) -> Self {
        FolderStatus {
            raw_name: raw_name.to_owned(),
            ..FolderStatus::default()
        }
    }

    /// The (field, value) pairs to `HSET`; unset options are left out (and should be
    /// `HDEL`eted by a writer that clears them: see [`FolderStatus::cleared_fields`]).
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("raw_name", self.raw_name.clone()),
            ("messages_synced", self.messages_synced.to_string()),
            ("messages_skipped", self.messages_skipped.to_string()),
            ("retry_count", self.retry_count.to_string()),
            (
                "connection_state",
                self.connection_state.as_str().to_owned(),
            ),
        ];
        if let Some(v) = self.last_poll {
            fields.push(("last_poll", v.to_string()));
        }
        if let Some(v) = self.uidvalidity {
            fields.push(("uidvalidity", v.to_string()));
        }
        if let Some(v) = self.last_uid {
            fields.push(("last_uid", v.to_string()));
        }
        if let Some(error) = &self.last_error {
            // Strings and numbers always serialise.
            let json =
                serde_json::to_string(error).unwrap_or_else(|_| unreachable!("error serialises"));
            fields.push(("last_error", json));
        }
        if let Some(v) = self.updated_at {
            fields.push(("updated_at", v.to_string()));
        }
        fields
    }

    /// The optional fields this status leaves unset.
    pub fn cleared_fields(&self) -> Vec<&'static str> {
        let mut cleared = Vec::new();
        if self.last_poll.is_none() {
            cleared.push("last_poll");
        }
        if self.uidvalidity.is_none() {
            cleared.push("uidvalidity");
        }
        if self.last_uid.is_none() {
            cleared.push("last_uid");
        }
        if self.last_error.is_none() {
            cleared.push("last_error");
        }
        if self.updated_at.is_none() {
            cleared.push("updated_at");
        }
        cleared
    }

    /// Reads a status from its hash (`HGETALL`); `raw_name` is used when the hash lacks it.
    pub fn from_fields(raw_name: &str, fields: &HashMap<String, String>) -> Result<Self, String> {
        fn number<T: FromStr>(
            fields: &HashMap<String, String>,
            name: &str,
        ) -> Result<Option<T>, String> {
            fields
                .get(name)
                .map(|v| {
                    v.parse::<T>()
                        .map_err(|_| format!("field {name} is not a number: {v:?}"))
                })
                .transpose()
        }
        let last_error = fields
            .get("last_error")
            .map(|json| {
                serde_json::from_str::<FolderError>(json)
                    .map_err(|e| format!("field last_error is not a folder error: {e}"))
            })
            .transpose()?;
        let connection_state = fields
            .get("connection_state")
            .map(|s| s.parse::<ConnectionState>())
            .transpose()?
            .unwrap_or_default();
        Ok(FolderStatus {
            raw_name: fields
                .get("raw_name")
                .cloned()
                .unwrap_or_else(|| raw_name.to_owned()),
            last_poll: number(fields, "last_poll")?,
            uidvalidity: number(fields, "uidvalidity")?,
            last_uid: number(fields, "last_uid")?,
            messages_synced: number(fields, "messages_synced")?.unwrap_or_default(),
            messages_skipped: number(fields, "messages_skipped")?.unwrap_or_default(),
            last_error,
            retry_count: number(fields, "retry_count")?.unwrap_or_default(),
            connection_state,
            updated_at: number(fields, "updated_at")?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_hash_fields() {
        let status = FolderStatus {
            raw_name: "&BCQEOARIBDgEPQQz-".to_owned(),
            last_poll: Some(1_767_225_600),
            uidvalidity: Some(7),
            last_uid: Some(42),
            messages_synced: 40,
            messages_skipped: 2,
            last_error: Some(FolderError {
                reason: "imap.authenticate_failed".to_owned(),
                message: "Exchange refused the login".to_owned(),
                upstream_code: "NO AUTHENTICATE failed.".to_owned(),
                checklist: vec!["service principal".to_owned(), "FullAccess".to_owned()],
                at: 1_767_225_601,
            }),
            retry_count: 3,
            connection_state: ConnectionState::Retrying,
            updated_at: Some(1_767_225_602),
        };
        let fields: HashMap<String, String> = status
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert!(fields.keys().all(|k| FIELDS.contains(&k.as_str())));
        assert!(status.cleared_fields().is_empty());
        assert_eq!(FolderStatus::from_fields("x", &fields).unwrap(), status);

        let fresh = FolderStatus::new("INBOX");
        assert_eq!(fresh.cleared_fields().len(), 5);
        assert_eq!(
            FolderStatus::from_fields("INBOX", &HashMap::new()).unwrap(),
            fresh
        );
    }

    #[test]
    fn bad_fields_are_reported() {
        let mut fields = HashMap::new();
        fields.insert("last_uid".to_owned(), "many".to_owned());
        assert!(FolderStatus::from_fields("a", &fields).is_err());
        let mut fields = HashMap::new();
        fields.insert("connection_state".to_owned(), "dreaming".to_owned());
        assert!(FolderStatus::from_fields("a", &fields).is_err());
        for state in ALL_STATES {
            assert_eq!(state.as_str().parse::<ConnectionState>().unwrap(), state);
        }
    }

    #[test]
    fn keys_share_the_source_hash_tag_and_hex_the_name() {
        let id = SourceId::parse("src-1").unwrap();
        assert_eq!(status_key(&id, "A b"), "tm:{src-1}:status:412062");
        assert_eq!(status_index_key(&id), "tm:{src-1}:status-index");
    }
}
