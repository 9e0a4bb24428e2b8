//! Settings of the registry service.
//!
//! ```toml
//! listen = "127.0.0.1:50051"
//! redis_url = "redis://127.0.0.1:6379/"
//! broker_url = "http://127.0.0.1:50052"    # the token broker, for tests and folder lists
//! fetcher_url = "http://127.0.0.1:50053"   # a fetcher, for logins and folder lists
//! upstream_timeout = "30s"                 # one broker or fetcher call
//!
//! [master_key]              # seals and opens source secrets (shared with the broker)
//! key_file = "/run/secrets/threatmail-master-key"
//!
//! [auth]
//! services = { fetcher = "sha256:…" }      # services that may read sources
//! credential_file = "/run/secrets/threatmail-registry-credential"   # to call the broker
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use threatmail_auth::AuthSettings;
use threatmail_source::MasterKeySettings;
use threatmail_telemetry::TelemetryConfig;

/// The registry service's configuration (file, then `THREATMAIL_*` variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// The Redis holding sources, folder selections, status and API keys.
    pub redis_url: String,
    /// The master key(s) sealing source secrets.
    pub master_key: MasterKeySettings,
    /// Which services may call, and the registry's own credential for the broker and
    /// fetcher.
    pub auth: AuthSettings,
    /// The token broker's gRPC address.
    pub broker_url: String,
    /// A fetcher's gRPC address.
    pub fetcher_url: String,
    /// How long one call to the broker or the fetcher may take.
    #[serde(with = "threatmail_core::config::duration")]
    pub upstream_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            telemetry: TelemetryConfig::default(),
            redis_url: "redis://127.0.0.1:6379/".to_owned(),
            master_key: MasterKeySettings::default(),
            auth: AuthSettings::default(),
            broker_url: "http://127.0.0.1:50052".to_owned(),
            fetcher_url: "http://127.0.0.1:50053".to_owned(),
            upstream_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    /// Every problem with the settings, each a line a person can act on.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        problems.extend(self.master_key.problem());
        if let Err(error) = self.auth.service_credentials() {
            problems.push(format!("auth: {error}"));
        }
        if let Err(error) = self.auth.own_credential() {
            problems.push(format!("auth: {error}"));
        }
        if let Err(error) = redis::Client::open(self.redis_url.as_str()) {
            problems.push(format!(
                "redis_url: {:?} is not a Redis URL ({error})",
                threatmail_core::redact::url(&self.redis_url)
            ));
        }
        for (key, url) in [
            ("broker_url", &self.broker_url),
            ("fetcher_url", &self.fetcher_url),
        ] {
            if let Some(problem) = threatmail_core::config::grpc_url_problem(url) {
                problems.push(format!("{key}: {problem}"));
            } else if tonic::transport::Endpoint::from_shared(url.clone()).is_err() {
                problems.push(format!(
                    "{key}: {url:?} is not a gRPC address such as http://127.0.0.1:50052"
                ));
            }
        }
        if self.upstream_timeout.is_zero() {
            problems.push("upstream_timeout must be more than 0s".to_owned());
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

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let env: BTreeMap<String, String> = [
            ("THREATMAIL_BROKER_URL", "localhost:50052"),
            ("THREATMAIL_REDIS_URL", "mysql://x"),
            ("THREATMAIL_UPSTREAM_TIMEOUT", "0s"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config: Config = threatmail_core::config::load(None, &env).unwrap();
        let problems = config.problems();
        let text = problems.join("\n");
        assert_eq!(problems.len(), 4, "{text}");
        for needle in ["master_key", "broker_url", "redis_url", "upstream_timeout"] {
            assert!(text.contains(needle), "{needle} missing from {text}");
        }
    }

    #[test]
    fn defaults_point_at_the_local_services() {
        let config = Config::default();
        assert_eq!(config.broker_url, "http://127.0.0.1:50052");
        assert_eq!(config.fetcher_url, "http://127.0.0.1:50053");
        assert_eq!(config.listen.port(), 50051);
    }
}
