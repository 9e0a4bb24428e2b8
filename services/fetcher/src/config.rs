//! Settings of the fetcher service.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
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
}

/// How the fetcher talks IMAP.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImapConfig {
    /// Connect, TLS, greeting and login together must finish within this.
    #[serde(with = "threatmail_core::config::duration")]
    pub connect_timeout: Duration,
    /// Every other command must be answered within this.
    #[serde(with = "threatmail_core::config::duration")]
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

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            telemetry: TelemetryConfig::default(),
            imap: ImapConfig::default(),
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
        problems
    }
}
