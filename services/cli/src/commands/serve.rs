//! `threatmail serve --target all|registry|token-broker|fetcher|mailbox`: run services in
//! this process (monolithic mode with `all`), from one configuration file.
//!
//! The file has one section per service (`[registry]`, `[token_broker]`, `[fetcher]`,
//! `[mailbox]`), each exactly the service's own configuration, and a top-level
//! `[telemetry]` that applies to the process; `THREATMAIL_<SECTION>__<KEY>` variables win.
//! Services of the same process that call each other need no service credentials in the
//! file: one is made for the run where neither side has one configured.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use secrecy::SecretString;
use serde::Deserialize;
use threatmail_auth::credential::CredentialError;
use threatmail_auth::{AuthSettings, ServiceCredential};
use threatmail_runtime::ServiceConfig;
use threatmail_telemetry::TelemetryConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Arguments of `threatmail serve`.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// Which services to run; several may be given (`--target registry,mailbox`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    target: Vec<Target>,
    /// The configuration file (default: THREATMAIL_CONFIG, else built-in defaults).
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(crate) enum Target {
    All,
    Registry,
    TokenBroker,
    Fetcher,
    Mailbox,
}

/// The configuration of `serve`: every service's section.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ServeConfig {
    pub(crate) telemetry: TelemetryConfig,
    pub(crate) registry: threatmail_registry::Config,
    pub(crate) token_broker: threatmail_token_broker::Config,
    pub(crate) fetcher: threatmail_fetcher::Config,
    pub(crate) mailbox: threatmail_mailbox::Config,
}

impl ServeConfig {
    /// Loads the file then the environment, and runs each selected service's own checks;
    /// every problem is reported at once.
    pub(crate) fn load(
        file: Option<PathBuf>,
        env: &BTreeMap<String, String>,
        targets: &[Target],
    ) -> Result<Self, threatmail_core::config::ConfigError> {
        let file = file.or_else(|| env.get("THREATMAIL_CONFIG").map(PathBuf::from));
        let mut config: ServeConfig = threatmail_core::config::load(file.as_deref(), env)?;
        let mut problems = Vec::new();
        config.wire_in_process_urls(targets);
        if let Err(error) = config.wire_in_process_callers(targets) {
            problems.push(format!("auth: {error}"));
        }
        let mut check = |section: &str, found: Vec<String>| {
            problems.extend(found.into_iter().map(|p| format!("{section}.{p}")));
        };
        if runs(targets, Target::Registry) {
            check("registry", config.registry.validate());
        }
        if runs(targets, Target::TokenBroker) {
            check("token_broker", config.token_broker.validate());
        }
        if runs(targets, Target::Fetcher) {
            check("fetcher", config.fetcher.validate());
        }
        if runs(targets, Target::Mailbox) {
            check("mailbox", config.mailbox.validate());
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(threatmail_core::config::ConfigError { problems })
        }
    }
}

impl ServeConfig {
    /// A caller's address of a service that runs in this process, left at its default,
    /// follows that service's `listen` (so moving a port moves its callers too); an address
    /// set in the configuration is left as it is.
    fn wire_in_process_urls(&mut self, targets: &[Target]) {
        let here = |target| runs(targets, target);
        let defaults = (
            threatmail_registry::Config::default(),
            threatmail_fetcher::Config::default(),
        );
        if here(Target::TokenBroker) {
            let broker = local_url(self.token_broker.listen);
            if here(Target::Registry) && self.registry.broker_url == defaults.0.broker_url {
                self.registry.broker_url.clone_from(&broker);
            }
            if here(Target::Fetcher) && self.fetcher.broker_url == defaults.1.broker_url {
                self.fetcher.broker_url = broker;
            }
        }
        if here(Target::Fetcher)
            && here(Target::Registry)
            && self.registry.fetcher_url == defaults.0.fetcher_url
        {
            self.registry.fetcher_url = local_url(self.fetcher.listen);
        }
    }

    /// Services of this process that call each other get a credential made for this run
    /// (kept in memory, never written) where neither side has one configured: the
    /// registry's for the broker's `TestCredentials` and the fetcher's `ListFolders`, the
    /// fetcher's for the broker's `GetToken`. A credential or an allowed hash given in the
    /// configuration is left as it is.
    fn wire_in_process_callers(&mut self, targets: &[Target]) -> Result<(), CredentialError> {
        let here = |target| runs(targets, target);
        if here(Target::Registry) && self.registry.auth.own_credential()?.is_none() {
            let callees = [
                (here(Target::TokenBroker), &mut self.token_broker.auth),
                (here(Target::Fetcher), &mut self.fetcher.auth),
            ];
            wire("registry", &mut self.registry.auth, callees)?;
        }
        if here(Target::Fetcher) && self.fetcher.auth.own_credential()?.is_none() {
            let callees = [(here(Target::TokenBroker), &mut self.token_broker.auth)];
            wire("fetcher", &mut self.fetcher.auth, callees)?;
        }
        Ok(())
    }
}

/// Makes `caller` a credential and allows it in each callee that runs here and does not
/// name `caller` yet.
fn wire<const N: usize>(
    caller: &str,
    own: &mut AuthSettings,
    callees: [(bool, &mut AuthSettings); N],
) -> Result<(), CredentialError> {
    let mut callees: Vec<&mut AuthSettings> = callees
        .into_iter()
        .filter(|(here, auth)| *here && !auth.services.contains_key(caller))
        .map(|(_, auth)| auth)
        .collect();
    if callees.is_empty() {
        return Ok(());
    }
    let credential = ServiceCredential::generate(caller)?;
    for auth in &mut callees {
        auth.services.insert(caller.to_owned(), credential.hash());
    }
    own.credential = Some(SecretString::from(credential.expose().to_owned()));
    Ok(())
}

/// How a service of this process reaches one listening at `listen` (a wildcard address by
/// loopback).
fn local_url(listen: std::net::SocketAddr) -> String {
    let ip = match listen.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => std::net::Ipv4Addr::LOCALHOST.into(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    format!("http://{}", std::net::SocketAddr::new(ip, listen.port()))
}

fn runs(targets: &[Target], target: Target) -> bool {
    targets.contains(&Target::All) || targets.contains(&target)
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let config = match ServeConfig::load(args.config.clone(), &env, &args.target) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return Ok(ExitCode::from(2));
        }
    };
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(serve(config, args.target))
}

async fn serve(config: ServeConfig, targets: Vec<Target>) -> anyhow::Result<ExitCode> {
    let _telemetry = threatmail_telemetry::init("threatmail", &config.telemetry)?;
    let shutdown = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    // Bind every listener before starting anything, so a taken port fails the whole start.
    let mut bound = Vec::new();
    for (target, section, addr) in [
        (Target::Registry, "registry", config.registry.listen),
        (
            Target::TokenBroker,
            "token_broker",
            config.token_broker.listen,
        ),
        (Target::Fetcher, "fetcher", config.fetcher.listen),
        (Target::Mailbox, "mailbox", config.mailbox.listen),
    ] {
        if runs(&targets, target) {
            let listener = TcpListener::bind(addr).await.map_err(|error| {
                anyhow::anyhow!(
                    "failed to listen on {addr} for {section}.listen: {error} (set it, or \
                     THREATMAIL_{}__LISTEN, to a free address)",
                    section.to_ascii_uppercase()
                )
            })?;
            bound.push((target, listener));
        }
    }
    for (target, listener) in bound {
        let stop = shutdown.clone();
        match target {
            Target::Registry => {
                tasks.spawn(named(
                    "registry",
                    threatmail_registry::run(config.registry.clone(), listener, stop),
                ));
            }
            Target::TokenBroker => {
                tasks.spawn(named(
                    "token-broker",
                    threatmail_token_broker::run(config.token_broker.clone(), listener, stop),
                ));
            }
            Target::Fetcher => {
                tasks.spawn(named(
                    "fetcher",
                    threatmail_fetcher::run(config.fetcher.clone(), listener, stop),
                ));
            }
            Target::Mailbox => {
                tasks.spawn(named(
                    "mailbox",
                    threatmail_mailbox::run(config.mailbox.clone(), listener, stop),
                ));
            }
            Target::All => {}
        }
    }
    tokio::spawn(threatmail_runtime::cancel_on_signal(shutdown.clone()));
    let mut failed = false;
    // The first service to stop (with an error, or because of a signal) stops the others.
    while let Some(joined) = tasks.join_next().await {
        shutdown.cancel();
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((name, Err(error))) => {
                failed = true;
                eprintln!(
                    "error: {name}: {}",
                    threatmail_core::error::chain(error.as_ref())
                );
            }
            Err(error) => {
                failed = true;
                eprintln!("error: a service task failed: {error}");
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn named(
    name: &'static str,
    service: impl std::future::Future<Output = anyhow::Result<()>>,
) -> (&'static str, anyhow::Result<()>) {
    (name, service.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_and_env_reach_each_service() {
        let env: BTreeMap<String, String> = [
            ("THREATMAIL_FETCHER__LISTEN", "127.0.0.1:6001"),
            ("THREATMAIL_MAILBOX__LISTEN", "127.0.0.1:6002"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let config =
            ServeConfig::load(None, &env, &[Target::Fetcher, Target::Mailbox]).expect("loads");
        assert_eq!(config.fetcher.listen.port(), 6001);
        assert_eq!(config.mailbox.listen.port(), 6002);
    }

    #[test]
    fn callers_follow_the_ports_of_services_in_the_same_process() {
        let key = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
        let env: BTreeMap<String, String> = [
            ("THREATMAIL_TOKEN_BROKER__LISTEN", "0.0.0.0:6102"),
            ("THREATMAIL_FETCHER__LISTEN", "127.0.0.1:6103"),
            ("THREATMAIL_REGISTRY__MASTER_KEY__KEY", key),
            ("THREATMAIL_TOKEN_BROKER__MASTER_KEY__KEY", key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let all = ServeConfig::load(None, &env, &[Target::All]).expect("loads");
        assert_eq!(all.registry.broker_url, "http://127.0.0.1:6102");
        assert_eq!(all.fetcher.broker_url, "http://127.0.0.1:6102");
        assert_eq!(all.registry.fetcher_url, "http://127.0.0.1:6103");

        // The broker elsewhere: the fetcher's address stays as configured (the default).
        let fetcher = ServeConfig::load(None, &env, &[Target::Fetcher]).expect("loads");
        assert_eq!(fetcher.fetcher.broker_url, "http://127.0.0.1:50052");

        // An address given explicitly is kept.
        let mut env = env;
        env.insert(
            "THREATMAIL_REGISTRY__BROKER_URL".to_owned(),
            "http://broker.internal:50052".to_owned(),
        );
        let all = ServeConfig::load(None, &env, &[Target::All]).expect("loads");
        assert_eq!(all.registry.broker_url, "http://broker.internal:50052");
        assert_eq!(all.fetcher.broker_url, "http://127.0.0.1:6102");
    }

    #[test]
    fn services_of_one_process_get_credentials_for_each_other() {
        let mut config = ServeConfig::default();
        config
            .wire_in_process_callers(&[Target::All])
            .expect("wired");
        let registry = config.registry.auth.own_credential().expect("valid");
        let fetcher = config.fetcher.auth.own_credential().expect("valid");
        let (Some(registry), Some(fetcher)) = (registry, fetcher) else {
            panic!("both callers get a credential");
        };
        let broker = &config.token_broker.auth.services;
        assert_eq!(broker.get("registry"), Some(&registry.hash()));
        assert_eq!(broker.get("fetcher"), Some(&fetcher.hash()));
        assert_eq!(
            config.fetcher.auth.services.get("registry"),
            Some(&registry.hash())
        );

        // Alone, a fetcher keeps what it was given: nothing to wire.
        let mut alone = ServeConfig::default();
        alone
            .wire_in_process_callers(&[Target::Fetcher])
            .expect("wired");
        assert!(alone.fetcher.auth.credential.is_none());
        assert!(alone.fetcher.auth.services.is_empty());
    }

    #[test]
    fn a_configured_caller_hash_is_left_alone() {
        let mut config = ServeConfig::default();
        let hash = format!("sha256:{}", "0".repeat(64));
        config
            .token_broker
            .auth
            .services
            .insert("fetcher".to_owned(), hash);
        config
            .wire_in_process_callers(&[Target::All])
            .expect("wired");
        assert!(config.fetcher.auth.credential.is_none(), "not overridden");
        assert!(
            config.token_broker.auth.services["fetcher"].ends_with("0000"),
            "kept as configured"
        );
    }

    #[test]
    fn unknown_sections_and_bad_values_are_all_reported() {
        let env: BTreeMap<String, String> = [
            ("THREATMAIL_FETCHER__LISTEN", "nowhere"),
            ("THREATMAIL_SCHEDULER__X", "1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let error = ServeConfig::load(None, &env, &[Target::All]).expect_err("bad");
        assert_eq!(error.problems.len(), 2, "{error}");
    }
}
