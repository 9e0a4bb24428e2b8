//! Settings of the fetcher service.
//!
//! ```toml
//! listen = "127.0.0.1:50053"
//! redis_url = "redis://127.0.0.1:6379/"    # unset: this fetcher syncs nothing (ListFolders only)
//! broker_url = "http://127.0.0.1:50052"    # the token broker
//! broker_timeout = "30s"                   # one GetToken call
//!
//! [auth]
//! services = { registry = "sha256:…" }     # who may call ListFolders
//! credential_file = "/run/secrets/threatmail-fetcher-credential"   # to call the broker
//!
//! [master_key]              # opens the passwords of `password` sources (the registry's keys)
//! key_file = "/run/secrets/threatmail-master-key"
//!
//! [blobs]                   # where raw messages go (the mailbox service reads them)
//! kind = "directory"
//! path = "/var/lib/threatmail/blobs"
//!
//! [imap]
//! connect_timeout = "30s"
//! command_timeout = "60s"
//! ca_file = "/etc/threatmail/extra-ca.pem"
//!
//! [sync]
//! poll_interval = "30s"     # how often sources and folder selections are read again
//! lease_ttl = "60s"         # a folder lease; a dead fetcher's folders are free after this
//! renew_interval = "20s"    # renewal while a folder syncs (under lease_ttl)
//! batch_messages = 50       # messages per body fetch and per atomic write
//! batch_bytes = 16777216    # announced bytes per body fetch
//! max_message_bytes = 52428800   # larger messages are recorded as skipped
//! session_max_age = "50m"   # a session is closed after this
//! retire_before_token_expiry = "5m"  # ... or this long before its token expires
//! connections_per_mailbox = 4        # across the whole fleet
//! retry_min = "5s"          # first back-off after a failure (doubles, with jitter)
//! retry_max = "10m"         # longest back-off
//! instance_name = "fetcher-a"        # lease owner; default: a random one per process
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use threatmail_auth::AuthSettings;
use threatmail_core::config::{duration, grpc_url_problem};
use threatmail_source::MasterKeySettings;
use threatmail_store::BlobStoreConfig;
use threatmail_telemetry::TelemetryConfig;

/// The fetcher service's configuration (file, then `THREATMAIL_*` variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// IMAP connections.
    pub imap: ImapConfig,
    /// The Redis holding sources, folder selections, leases, checkpoints and records;
    /// unset, the fetcher serves only `ListFolders` and syncs nothing.
    pub redis_url: Option<String>,
    /// The token broker's gRPC address.
    pub broker_url: String,
    /// How long one call to the broker may take.
    #[serde(with = "duration")]
    pub broker_timeout: Duration,
    /// Which services may call, and this fetcher's own credential for the broker.
    pub auth: AuthSettings,
    /// The master key(s), to open the passwords of `password` sources; not needed when
    /// every source uses `ms-oauth2` (their secrets stay with the broker).
    pub master_key: MasterKeySettings,
    /// Where raw messages go.
    pub blobs: BlobStoreConfig,
    /// The scheduler's intervals, leases and limits.
    pub sync: SyncSettings,
}

/// How the fetcher talks IMAP.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImapConfig {
    /// Connect, TLS, greeting and login together must finish within this.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Every other command must be answered within this.
    #[serde(with = "duration")]
    pub command_timeout: Duration,
    /// Extra CA certificates (PEM) to trust besides the public web PKI, for a private IMAP
    /// server or the local test stack. Certificate checks are never turned off.
    pub ca_file: Option<PathBuf>,
}

impl Default for ImapConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(60),
            ca_file: None,
        }
    }
}

/// The `sync` section: the scheduler (DESIGN §4).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// How often sources and folder selections are read again and due folders started; a
    /// change of configuration takes effect within one of these.
    #[serde(with = "duration")]
    pub poll_interval: Duration,
    /// How long a folder lease is taken or renewed for.
    #[serde(with = "duration")]
    pub lease_ttl: Duration,
    /// How often a held lease is renewed while its folder syncs.
    #[serde(with = "duration")]
    pub renew_interval: Duration,
    /// Messages per body fetch and per atomic write.
    pub batch_messages: usize,
    /// Announced bytes per body fetch.
    pub batch_bytes: u64,
    /// Messages larger than this are recorded as skipped, never fetched.
    pub max_message_bytes: u64,
    /// A session is logged out once it is this old.
    #[serde(with = "duration")]
    pub session_max_age: Duration,
    /// A session is logged out this long before its token expires (Exchange ends it with
    /// `* BYE Session invalidated - AccessTokenExpired` at the token's expiry).
    #[serde(with = "duration")]
    pub retire_before_token_expiry: Duration,
    /// IMAP connections per mailbox across the whole fleet (Exchange limits them per
    /// mailbox, shared by every app that opens it).
    pub connections_per_mailbox: u32,
    /// The first back-off after a failure; it doubles with each further one, with jitter.
    #[serde(with = "duration")]
    pub retry_min: Duration,
    /// The longest back-off.
    #[serde(with = "duration")]
    pub retry_max: Duration,
    /// This fetcher's name as a lease owner; unset: `fetcher-<random>` per process.
    pub instance_name: Option<String>,
}

impl Default for SyncSettings {
    fn default() -> Self {
        SyncSettings {
            poll_interval: Duration::from_secs(30),
            lease_ttl: Duration::from_secs(60),
            renew_interval: Duration::from_secs(20),
            batch_messages: 50,
            batch_bytes: 16 * 1024 * 1024,
            max_message_bytes: 50 * 1024 * 1024,
            session_max_age: Duration::from_secs(50 * 60),
            retire_before_token_expiry: Duration::from_secs(5 * 60),
            connections_per_mailbox: 4,
            retry_min: Duration::from_secs(5),
            retry_max: Duration::from_secs(10 * 60),
            instance_name: None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            telemetry: TelemetryConfig::default(),
            imap: ImapConfig::default(),
            redis_url: None,
            broker_url: "http://127.0.0.1:50052".to_owned(),
            broker_timeout: Duration::from_secs(30),
            auth: AuthSettings::default(),
            master_key: MasterKeySettings::default(),
            blobs: BlobStoreConfig::default(),
            sync: SyncSettings::default(),
        }
    }
}

impl Config {
    /// Whether a master key is configured (it is optional: only `password` sources need it).
    pub fn has_master_key(&self) -> bool {
        self.master_key.key.is_some()
            || self.master_key.key_file.is_some()
            || !self.master_key.previous_keys.is_empty()
    }

    /// Every problem with the settings, each a line a person can act on.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.imap.connect_timeout.is_zero() {
            problems.push("imap.connect_timeout must be more than 0s".to_owned());
        }
        if self.imap.command_timeout.is_zero() {
            problems.push("imap.command_timeout must be more than 0s".to_owned());
        }
        if let Some(path) = &self.imap.ca_file
            && !path.is_file()
        {
            problems.push(format!(
                "imap.ca_file: {} is not a readable file",
                path.display()
            ));
        }
        if let Some(url) = &self.redis_url
            && let Err(error) = redis::Client::open(url.as_str())
        {
            problems.push(format!(
                "redis_url: {:?} is not a Redis URL ({error})",
                threatmail_core::redact::url(url)
            ));
        }
        if let Some(problem) = grpc_url_problem(&self.broker_url) {
            problems.push(format!("broker_url: {problem}"));
        } else if tonic::transport::Endpoint::from_shared(self.broker_url.clone()).is_err() {
            problems.push(format!(
                "broker_url: {:?} is not a gRPC address such as http://127.0.0.1:50052",
                self.broker_url
            ));
        }
        if self.broker_timeout.is_zero() {
            problems.push("broker_timeout must be more than 0s".to_owned());
        }
        if let Err(error) = self.auth.service_credentials() {
            problems.push(format!("auth: {error}"));
        }
        if let Err(error) = self.auth.own_credential() {
            problems.push(format!("auth: {error}"));
        }
        if self.has_master_key() {
            problems.extend(self.master_key.problem());
        }
        if let BlobStoreConfig::S3 {
            secret_access_key_file: Some(path),
            ..
        } = &self.blobs
            && !path.is_file()
        {
            problems.push(format!(
                "blobs.secret_access_key_file: {} is not a readable file",
                path.display()
            ));
        }
        problems.extend(self.sync.problems());
        problems
    }
}

impl SyncSettings {
    /// Every problem with the `sync` section.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (key, value) in [
            ("sync.poll_interval", self.poll_interval),
            ("sync.lease_ttl", self.lease_ttl),
            ("sync.renew_interval", self.renew_interval),
            ("sync.session_max_age", self.session_max_age),
            ("sync.retry_min", self.retry_min),
        ] {
            if value.is_zero() {
                problems.push(format!("{key} must be more than 0s"));
            }
        }
        if self.renew_interval >= self.lease_ttl {
            problems.push(format!(
                "sync.renew_interval ({:?}) must be shorter than sync.lease_ttl ({:?}), or \
                 leases lapse while their folders sync",
                self.renew_interval, self.lease_ttl
            ));
        }
        if self.retry_max < self.retry_min {
            problems.push(format!(
                "sync.retry_max ({:?}) must not be shorter than sync.retry_min ({:?})",
                self.retry_max, self.retry_min
            ));
        }
        if self.batch_messages == 0 {
            problems.push("sync.batch_messages must be at least 1".to_owned());
        }
        if self.batch_bytes == 0 {
            problems.push("sync.batch_bytes must be at least 1".to_owned());
        }
        if self.max_message_bytes == 0 {
            problems.push("sync.max_message_bytes must be at least 1".to_owned());
        }
        if self.connections_per_mailbox == 0 {
            problems.push("sync.connections_per_mailbox must be at least 1".to_owned());
        }
        if let Some(name) = &self.instance_name
            && (name.is_empty()
                || name.len() > 128
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        {
            problems.push(format!(
                "sync.instance_name: {name:?} must be 1-128 characters of A-Z a-z 0-9 - _ ."
            ));
        }
        problems
    }
}

impl threatmail_runtime::ServiceConfig for Config {
    fn listen(&self) -> SocketAddr {
        self.listen
    }

    fn telemetry(&self) -> &TelemetryConfig {
        &self.telemetry
    }

    fn validate(&self) -> Vec<String> {
        self.problems()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Config {
        let env: BTreeMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        threatmail_core::config::load(None, &env).unwrap()
    }

    #[test]
    fn defaults_are_valid_and_sync_nothing_without_redis() {
        let config = Config::default();
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        assert!(config.redis_url.is_none());
        assert_eq!(config.sync.lease_ttl, Duration::from_secs(60));
    }

    #[test]
    fn sync_settings_read_humane_durations_from_the_environment() {
        let config = load(&[
            ("THREATMAIL_REDIS_URL", "redis://127.0.0.1:1/"),
            ("THREATMAIL_SYNC__POLL_INTERVAL", "200ms"),
            ("THREATMAIL_SYNC__LEASE_TTL", "2s"),
            ("THREATMAIL_SYNC__RENEW_INTERVAL", "500ms"),
            ("THREATMAIL_SYNC__CONNECTIONS_PER_MAILBOX", "2"),
        ]);
        assert!(config.problems().is_empty(), "{:?}", config.problems());
        assert_eq!(config.sync.poll_interval, Duration::from_millis(200));
        assert_eq!(config.sync.lease_ttl, Duration::from_secs(2));
        assert_eq!(config.sync.connections_per_mailbox, 2);
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let config = load(&[
            ("THREATMAIL_REDIS_URL", "mysql://x"),
            ("THREATMAIL_BROKER_URL", "localhost:50052"),
            ("THREATMAIL_SYNC__LEASE_TTL", "1s"),
            ("THREATMAIL_SYNC__RENEW_INTERVAL", "2s"),
            ("THREATMAIL_SYNC__BATCH_MESSAGES", "0"),
            ("THREATMAIL_SYNC__RETRY_MIN", "1m"),
            ("THREATMAIL_SYNC__RETRY_MAX", "1s"),
            ("THREATMAIL_SYNC__CONNECTIONS_PER_MAILBOX", "0"),
            ("THREATMAIL_SYNC__INSTANCE_NAME", "a b"),
            ("THREATMAIL_MASTER_KEY__KEY", "not a key"),
        ]);
        let problems = config.problems();
        let text = problems.join("\n");
        for needle in [
            "redis_url",
            "broker_url",
            "sync.renew_interval",
            "sync.batch_messages",
            "sync.retry_max",
            "sync.connections_per_mailbox",
            "sync.instance_name",
            "master_key",
        ] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
        assert_eq!(problems.len(), 8, "{text}");
    }
}
