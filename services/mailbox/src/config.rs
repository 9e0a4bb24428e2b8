//! Settings of the mailbox service.
//!
//! ```toml
//! listen = "127.0.0.1:50054"
//! redis_url = "redis://127.0.0.1:6379/"
//! drain_interval = "5s"     # how often outboxes left by crashed writers are drained
//!
//! [auth]                    # who may call besides API keys (see threatmail-auth)
//! services = { registry = "sha256:…" }
//!
//! [blobs]                   # where raw messages are (the fetchers write them)
//! kind = "directory"
//! path = "/var/lib/threatmail/blobs"
//!
//! [export]
//! default_tlp = "TLP:AMBER" # for messages with no marking whose source sets none
//! max_messages = 1000       # most reports in one ExportStix bundle
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use threatmail_auth::AuthSettings;
use threatmail_core::config::duration;
use threatmail_parse::Tlp;
use threatmail_store::BlobStoreConfig;
use threatmail_telemetry::TelemetryConfig;

/// The mailbox service's configuration (file, then `THREATMAIL_*` variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// The Redis holding records, sources and API keys.
    pub redis_url: String,
    /// Who may call.
    pub auth: AuthSettings,
    /// The blob store of raw messages.
    pub blobs: BlobStoreConfig,
    /// How often every source's outbox is drained (what a crashed writer left).
    #[serde(with = "duration")]
    pub drain_interval: Duration,
    /// STIX export.
    pub export: ExportConfig,
}

/// The `export` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// The TLP of a message with no marking whose source sets no default.
    pub default_tlp: Tlp,
    /// The most reports in one bundle.
    pub max_messages: u32,
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            default_tlp: Tlp::Amber,
            max_messages: 1000,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            telemetry: TelemetryConfig::default(),
            redis_url: "redis://127.0.0.1:6379/".to_owned(),
            auth: AuthSettings::default(),
            blobs: BlobStoreConfig::default(),
            drain_interval: Duration::from_secs(5),
            export: ExportConfig::default(),
        }
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
        let mut problems = Vec::new();
        if self.drain_interval.is_zero() {
            problems.push("drain_interval must be more than 0s".to_owned());
        }
        if let Err(error) = redis::Client::open(self.redis_url.as_str()) {
            problems.push(format!(
                "redis_url: {:?} is not a Redis URL ({error})",
                threatmail_core::redact::url(&self.redis_url)
            ));
        }
        if self.export.max_messages == 0 || self.export.max_messages > 10_000 {
            problems.push("export.max_messages must be 1 to 10000".to_owned());
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
        problems
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use threatmail_runtime::ServiceConfig as _;

    use super::*;

    /// A mistyped Redis URL is a configuration problem (exit 2 with the others), and the
    /// password in it is not shown.
    #[test]
    fn a_mistyped_redis_url_is_reported_without_its_password() {
        let env: BTreeMap<String, String> = [(
            "THREATMAIL_REDIS_URL",
            "redis//default:p4ssw0rdXYZ@127.0.0.1:6379/",
        )]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config: Config = threatmail_core::config::load(None, &env).unwrap();
        let text = config.validate().join("\n");
        assert!(text.contains("redis_url"), "{text}");
        assert!(text.contains("127.0.0.1:6379"), "{text}");
        assert!(!text.contains("p4ssw0rdXYZ"), "{text}");
    }
}
