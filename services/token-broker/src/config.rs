//! Settings of the token broker service.
//!
//! ```toml
//! listen = "127.0.0.1:50052"
//! redis_url = "redis://127.0.0.1:6379/"
//!
//! [master_key]              # opens source secrets, seals cached tokens
//! key_file = "/run/secrets/threatmail-master-key"
//!
//! [auth]                    # only these services may call GetToken
//! services = { fetcher = "sha256:…", registry = "sha256:…" }
//!
//! [entra]
//! ca_file = "/etc/threatmail/extra-ca.pem"   # extra CA to trust (the test kit's)
//! connect_timeout = "5s"
//! request_timeout = "10s"
//! [entra.global]            # also us_government, china
//! authority = "https://login.microsoftonline.com"
//! scope = "https://outlook.office365.com/.default"
//!
//! [cache]
//! floor = "5m"              # never hand out a token with less left
//! refresh_percent = 50      # refresh from half of a token's life
//! lock_ttl = "15s"          # a dead broker's refresh lock blocks others this long at most
//! ```
//!
//! Each cloud's authority and scope default to [`Cloud`]'s; a scope that is not that
//! cloud's Exchange Online `/.default` scope (an `…/IMAP.AccessAsApp` scope, a Graph scope)
//! is refused when the configuration loads, naming it (BR-09). Authorities must be
//! `https://`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use threatmail_auth::AuthSettings;
use threatmail_core::config::duration;
use threatmail_source::cloud::ALL_CLOUDS;
use threatmail_source::{Cloud, MasterKeySettings};
use threatmail_telemetry::TelemetryConfig;
use url::Url;

use crate::cache::policy::{Backoff, CachePolicy};

/// The token broker service's configuration (file, then `THREATMAIL_*` variables).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC server listens.
    pub listen: SocketAddr,
    /// Logging and tracing.
    pub telemetry: TelemetryConfig,
    /// The Redis holding sources, the shared token cache and API keys.
    pub redis_url: String,
    /// The master key(s).
    pub master_key: MasterKeySettings,
    /// Who may call.
    pub auth: AuthSettings,
    /// Entra ID.
    pub entra: EntraConfig,
    /// Cache margins and locks.
    pub cache: CacheConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            telemetry: TelemetryConfig::default(),
            redis_url: "redis://127.0.0.1:6379/".to_owned(),
            master_key: MasterKeySettings::default(),
            auth: AuthSettings::default(),
            entra: EntraConfig::default(),
            cache: CacheConfig::default(),
        }
    }
}

/// The `entra` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntraConfig {
    /// PEM certificates to trust besides the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Connect timeout.
    #[serde(with = "duration")]
    pub connect_timeout: Duration,
    /// Timeout of one token request.
    #[serde(with = "duration")]
    pub request_timeout: Duration,
    /// The Global cloud.
    pub global: CloudConfig,
    /// US Government (GCC High).
    pub us_government: CloudConfig,
    /// China (21Vianet).
    pub china: CloudConfig,
}

impl Default for EntraConfig {
    fn default() -> Self {
        EntraConfig {
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            global: CloudConfig::default(),
            us_government: CloudConfig::default(),
            china: CloudConfig::default(),
        }
    }
}

impl EntraConfig {
    /// The overrides of `cloud`.
    pub fn cloud(&self, cloud: Cloud) -> &CloudConfig {
        match cloud {
            Cloud::Global => &self.global,
            Cloud::UsGovernment => &self.us_government,
            Cloud::China => &self.china,
        }
    }
}

/// Overrides of one cloud's endpoints.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CloudConfig {
    /// The Entra authority, `https://host[:port]`.
    pub authority: Option<String>,
    /// The scope; only the cloud's Exchange Online `/.default` scope is accepted.
    pub scope: Option<String>,
}

/// The `cache` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Never hand out a token with less than this left.
    #[serde(with = "duration")]
    pub floor: Duration,
    /// Refresh from this percentage of a token's life (1–99).
    pub refresh_percent: u8,
    /// Expiry of the cross-replica refresh lock; longer than `entra.request_timeout`.
    #[serde(with = "duration")]
    pub lock_ttl: Duration,
    /// How often a waiting broker looks for another's new token.
    #[serde(with = "duration")]
    pub lock_poll: Duration,
    /// How long the in-memory copy is trusted before comparing with Redis.
    #[serde(with = "duration")]
    pub memory_ttl: Duration,
    /// A forced refresh accepts a token obtained this long before it was asked for.
    #[serde(with = "duration")]
    pub force_refresh_grace: Duration,
    /// How long a source record read from Redis is reused ("0s": every call reads it).
    #[serde(with = "duration")]
    pub source_ttl: Duration,
    /// First back-off after a transient failure.
    #[serde(with = "duration")]
    pub transient_backoff_min: Duration,
    /// Longest back-off after transient failures.
    #[serde(with = "duration")]
    pub transient_backoff_max: Duration,
    /// First back-off after a permanent-looking failure.
    #[serde(with = "duration")]
    pub permanent_backoff_min: Duration,
    /// Longest back-off after permanent-looking failures.
    #[serde(with = "duration")]
    pub permanent_backoff_max: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let policy = CachePolicy::default();
        CacheConfig {
            floor: policy.floor,
            refresh_percent: policy.refresh_percent,
            lock_ttl: policy.lock_ttl,
            lock_poll: policy.lock_poll,
            memory_ttl: policy.memory_ttl,
            force_refresh_grace: policy.force_refresh_grace,
            source_ttl: Duration::from_secs(5),
            transient_backoff_min: policy.transient_backoff.min,
            transient_backoff_max: policy.transient_backoff.max,
            permanent_backoff_min: policy.permanent_backoff.min,
            permanent_backoff_max: policy.permanent_backoff.max,
        }
    }
}

impl CacheConfig {
    /// The cache policy these settings give.
    pub fn policy(&self) -> CachePolicy {
        CachePolicy {
            floor: self.floor,
            refresh_percent: self.refresh_percent,
            lock_ttl: self.lock_ttl,
            lock_poll: self.lock_poll,
            memory_ttl: self.memory_ttl,
            force_refresh_grace: self.force_refresh_grace,
            transient_backoff: Backoff {
                min: self.transient_backoff_min,
                max: self.transient_backoff_max,
            },
            permanent_backoff: Backoff {
                min: self.permanent_backoff_min,
                max: self.permanent_backoff_max,
            },
        }
    }
}

/// One cloud's endpoints as the broker uses them.
#[derive(Debug, Clone)]
pub struct CloudEndpoints {
    /// The cloud.
    pub cloud: Cloud,
    /// The authority.
    pub authority: Url,
    /// `host:port` of the authority, for cache keys.
    pub authority_host: String,
    /// The scope.
    pub scope: String,
}

impl Config {
    /// The endpoints of `cloud`, or the problems with its settings.
    pub fn cloud_endpoints(&self, cloud: Cloud) -> Result<CloudEndpoints, Vec<String>> {
        let section = format!("entra.{}", cloud_section(cloud));
        let overrides = self.entra.cloud(cloud);
        let mut problems = Vec::new();
        let authority_text = overrides
            .authority
            .as_deref()
            .unwrap_or(cloud.authority())
            .trim()
            .to_owned();
        let authority = match Url::parse(&authority_text) {
            Ok(url) if url.scheme() != "https" => {
                problems.push(format!(
                    "{section}.authority: {authority_text:?} must be https:// (Entra ID only \
                     answers over TLS; trust a test CA with entra.ca_file instead)"
                ));
                None
            }
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                problems.push(format!(
                    "{section}.authority: {authority_text:?} has no host"
                ));
                None
            }
            Ok(url) if url.query().is_some() || !matches!(url.path(), "" | "/") => {
                problems.push(format!(
                    "{section}.authority: {authority_text:?} must be just https://host[:port], \
                     without a tenant or path"
                ));
                None
            }
            Ok(url) => Some(url),
            Err(error) => {
                problems.push(format!(
                    "{section}.authority: {authority_text:?} is not a URL ({error})"
                ));
                None
            }
        };
        let scope = overrides
            .scope
            .as_deref()
            .unwrap_or(cloud.scope())
            .trim()
            .to_owned();
        if !cloud.is_exchange_scope(&scope) {
            problems.push(format!(
                "{section}.scope: {scope:?} is not the Exchange Online /.default scope; use {} \
                 (an .../IMAP.AccessAsApp scope is refused by Entra with AADSTS1002012, and a \
                 Graph scope gives tokens Exchange rejects)",
                cloud.scope()
            ));
        }
        match (authority, problems.is_empty()) {
            (Some(authority), true) => Ok(CloudEndpoints {
                cloud,
                authority_host: crate::entra::authority_host(&authority),
                authority,
                scope,
            }),
            _ => Err(problems),
        }
    }

    /// Every problem that a type cannot express, one line each.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for cloud in ALL_CLOUDS {
            if let Err(mut more) = self.cloud_endpoints(cloud) {
                problems.append(&mut more);
            }
        }
        if let Some(path) = &self.entra.ca_file {
            match std::fs::read(path) {
                Ok(pem) => {
                    if reqwest::Certificate::from_pem_bundle(&pem).is_err() {
                        problems.push(format!(
                            "entra.ca_file: {} holds no PEM certificate",
                            path.display()
                        ));
                    }
                }
                Err(error) => problems.push(format!(
                    "entra.ca_file: failed to read {}: {error}",
                    path.display()
                )),
            }
        }
        problems.extend(self.master_key.problem());
        match self.auth.service_credentials() {
            Ok(services) if services.names().next().is_none() => problems.push(
                "auth.services: no service may call the broker; add the fetcher's and the \
                 registry's credential hashes (auth.services or auth.services_file)"
                    .to_owned(),
            ),
            Ok(_) => {}
            Err(error) => problems.push(format!("auth: {error}")),
        }
        if let Err(error) = redis::Client::open(self.redis_url.as_str()) {
            problems.push(format!(
                "redis_url: {:?} is not a Redis URL ({error})",
                threatmail_core::redact::url(&self.redis_url)
            ));
        }
        let cache = &self.cache;
        if !(1..=99).contains(&cache.refresh_percent) {
            problems.push(format!(
                "cache.refresh_percent: {} must be between 1 and 99",
                cache.refresh_percent
            ));
        }
        if cache.lock_ttl <= self.entra.request_timeout {
            problems.push(format!(
                "cache.lock_ttl: {} must be longer than entra.request_timeout ({}), or a slow \
                 request lets a second broker ask Entra too",
                humantime::format_duration(cache.lock_ttl),
                humantime::format_duration(self.entra.request_timeout)
            ));
        }
        if cache.lock_poll.is_zero() || cache.lock_poll >= cache.lock_ttl {
            problems
                .push("cache.lock_poll: must be above zero and below cache.lock_ttl".to_owned());
        }
        for (name, backoff) in [
            (
                "transient_backoff",
                (cache.transient_backoff_min, cache.transient_backoff_max),
            ),
            (
                "permanent_backoff",
                (cache.permanent_backoff_min, cache.permanent_backoff_max),
            ),
        ] {
            if backoff.0.is_zero() || backoff.0 > backoff.1 {
                problems.push(format!(
                    "cache.{name}_min must be above zero and at most cache.{name}_max"
                ));
            }
        }
        problems
    }
}

fn cloud_section(cloud: Cloud) -> &'static str {
    match cloud {
        Cloud::Global => "global",
        Cloud::UsGovernment => "us_government",
        Cloud::China => "china",
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
