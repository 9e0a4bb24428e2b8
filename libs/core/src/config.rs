//! Configuration loading shared by every service: a TOML file first, then `THREATMAIL_*`
//! environment variables, which win.
//!
//! A variable names a setting by its path, sections joined by a double underscore:
//! `THREATMAIL_LISTEN` sets `listen`, `THREATMAIL_TELEMETRY__FILTER` sets `telemetry.filter`.
//! The environment is passed in as a map, so tests never touch the process environment.
//! Every bad setting is reported at once, each named by the file key or variable that set
//! it, so a person fixes them all in one go.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;

/// The prefix of every configuration variable.
pub const ENV_PREFIX: &str = "THREATMAIL_";

/// Variables with the prefix that are not settings (read by the tools themselves).
const NOT_SETTINGS: &[&str] = &["CONFIG", "CORPUS", "TARGET"];

/// What is wrong with `url` as the address of a threatmail gRPC service, if anything: it
/// must be `http://host:port`. The services speak gRPC over HTTP/2 without TLS, so an
/// `https://` address is refused: the client would send its API key or service credential
/// in clear while the address says otherwise.
pub fn grpc_url_problem(url: &str) -> Option<String> {
    if url.starts_with("https://") {
        return Some(format!(
            "{url:?}: https:// is not supported, as threatmail's services speak gRPC without \
             TLS (credentials would go in clear); use http:// on loopback or a private \
             network, or a TLS tunnel that listens on a local http:// port"
        ));
    }
    let host = url.strip_prefix("http://").unwrap_or_default();
    let host = host.split('/').next().unwrap_or_default();
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!(
            "{url:?} is not a gRPC address such as http://HOST:PORT"
        ));
    }
    None
}

/// Everything wrong with one configuration, each problem on its own line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// One entry per bad setting: where it was set and what is wrong.
    pub problems: Vec<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid configuration")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl ConfigError {
    /// A configuration error with a single problem.
    pub fn one(problem: impl Into<String>) -> Self {
        Self {
            problems: vec![problem.into()],
        }
    }
}

/// Loads a `T` from an optional TOML file and the `THREATMAIL_*` entries of `env`.
pub fn load<T: DeserializeOwned>(
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<T, ConfigError> {
    let (mut table, file_name) = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|error| {
                ConfigError::one(format!("failed to read {}: {error}", path.display()))
            })?;
            let table = text.parse::<toml::Table>().map_err(|error| {
                // The line, never its text (it may hold a secret).
                let line = error.span().map(|span| {
                    text.as_bytes()[..span.start.min(text.len())]
                        .iter()
                        .filter(|b| **b == b'\n')
                        .count()
                        + 1
                });
                let at = line.map(|n| format!(" (line {n})")).unwrap_or_default();
                ConfigError::one(format!(
                    "{}{at}: {}",
                    path.display(),
                    clean_message(error.message())
                ))
            })?;
            (table, path.display().to_string())
        }
        None => (toml::Table::new(), String::from("(no file)")),
    };
    let mut origins = BTreeMap::new();
    let mut typed_from_env = BTreeSet::new();
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if rest.is_empty() || NOT_SETTINGS.contains(&rest) {
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let typed = typed_env_value(value);
        if !typed.is_str() {
            typed_from_env.insert(path.join("."));
        }
        if let Err(problem) = insert_path(&mut table, &path, typed) {
            return Err(ConfigError::one(format!("{name}: {problem}")));
        }
        origins.insert(path.join("."), name.clone());
    }
    deserialize_reporting_all(table, &origins, &typed_from_env, env, &file_name)
}

/// Deserialises, and on each error removes the offending key and tries again, so that
/// every problem is found in one run rather than one per attempt.
fn deserialize_reporting_all<T: DeserializeOwned>(
    mut table: toml::Table,
    origins: &BTreeMap<String, String>,
    typed_from_env: &BTreeSet<String>,
    env: &BTreeMap<String, String>,
    file_name: &str,
) -> Result<T, ConfigError> {
    let mut problems = Vec::new();
    let mut retyped = BTreeSet::new();
    // Each round removes or retypes one key, so the loop ends; the bound is a guard.
    for _ in 0..64 {
        let value = toml::Value::Table(table.clone());
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(config) if problems.is_empty() => return Ok(config),
            Ok(_) => return Err(ConfigError { problems }),
            Err(error) => {
                let path = error.path().to_string();
                let path = if path == "." { String::new() } else { path };
                let inner = error.into_inner().to_string();
                // serde_path_to_error's path already ends at an unknown field's name.
                let (key_path, unknown) = match unknown_field(&inner) {
                    Some(field) if path.is_empty() => (field.to_owned(), true),
                    Some(field) if path.rsplit('.').next() == Some(field) => (path.clone(), true),
                    Some(field) => (format!("{path}.{field}"), true),
                    None => (path.clone(), false),
                };
                // An environment value that looked like a number or boolean may be meant
                // as a string ("8080" for a name): retry it as one before reporting.
                if !unknown
                    && typed_from_env.contains(&key_path)
                    && retyped.insert(key_path.clone())
                    && let Some(name) = origins.get(&key_path)
                {
                    let raw = env.get(name).cloned().unwrap_or_default();
                    let segments: Vec<String> = key_path.split('.').map(str::to_owned).collect();
                    let _ = insert_path(&mut table, &segments, toml::Value::String(raw));
                    continue;
                }
                let place = origins
                    .get(&key_path)
                    .cloned()
                    .unwrap_or_else(|| format!("{file_name}: {}", display_key(&key_path)));
                let hint = if unknown && SERVE_SECTIONS.contains(&key_path.as_str()) {
                    " (a section of `threatmail serve`'s file: a single service reads its own \
                     settings at the top level of its file)"
                } else {
                    ""
                };
                problems.push(format!("{place}: {}{hint}", clean_message(&inner)));
                if key_path.is_empty() || !remove_path(&mut table, &key_path) {
                    // Nothing left to remove (a missing required field): stop here.
                    return Err(ConfigError { problems });
                }
            }
        }
    }
    Err(ConfigError { problems })
}

/// The per-service sections of `threatmail serve`'s file, which a single service's own
/// file does not have: given one, the error says so.
const SERVE_SECTIONS: [&str; 4] = ["registry", "token_broker", "fetcher", "mailbox"];

fn display_key(path: &str) -> &str {
    if path.is_empty() { "(top level)" } else { path }
}

fn unknown_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("unknown field `")?;
    rest.split('`').next()
}

fn clean_message(message: &str) -> String {
    // toml's messages can span lines; one line per problem reads better. A value the
    // message quotes may be a secret (a master key in the wrong place): it is left out.
    crate::redact::values_in_message(message)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn typed_env_value(value: &str) -> toml::Value {
    if let Ok(boolean) = value.parse::<bool>() {
        return toml::Value::Boolean(boolean);
    }
    if let Ok(integer) = value.parse::<i64>() {
        return toml::Value::Integer(integer);
    }
    toml::Value::String(value.to_owned())
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty setting name".to_owned());
    };
    let mut current = table;
    for segment in parents {
        let entry = current
            .entry(segment.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{segment}` is not a section"))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn remove_path(table: &mut toml::Table, path: &str) -> bool {
    let segments: Vec<&str> = path.split('.').collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut current = table;
    for segment in parents {
        match current
            .get_mut(*segment)
            .and_then(toml::Value::as_table_mut)
        {
            Some(next) => current = next,
            None => return false,
        }
    }
    current.remove(*last).is_some()
}

/// Durations written as human strings ("30s", "5m", "1h 30m").
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Deserialises a human duration string.
    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|error| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?} ({error}); write e.g. \"30s\" or \"5m\""
            ))
        })
    }

    /// Serialises a duration as a human string.
    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*value).to_string())
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn grpc_addresses_must_be_plain_http() {
        assert_eq!(super::grpc_url_problem("http://127.0.0.1:50051"), None);
        assert_eq!(
            super::grpc_url_problem("http://registry.internal:50051/"),
            None
        );
        let tls = super::grpc_url_problem("https://registry.internal:50051").unwrap_or_default();
        assert!(tls.contains("https:// is not supported"), "{tls}");
        assert!(tls.contains("http://"), "{tls}");
        for bad in ["", "127.0.0.1:50051", "http://", "http:// x", "grpc://h:1"] {
            let problem = super::grpc_url_problem(bad).unwrap_or_default();
            assert!(
                problem.contains("is not a gRPC address"),
                "{bad}: {problem}"
            );
        }
    }
    use std::net::SocketAddr;
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Sample {
        listen: SocketAddr,
        name: String,
        #[serde(with = "duration")]
        poll: Duration,
        enabled: bool,
        inner: Inner,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default, deny_unknown_fields)]
    struct Inner {
        filter: String,
        port: u16,
    }

    impl Default for Sample {
        fn default() -> Self {
            Self {
                listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
                name: "default".into(),
                poll: Duration::from_secs(60),
                enabled: true,
                inner: Inner::default(),
            }
        }
    }

    impl Default for Inner {
        fn default() -> Self {
            Self {
                filter: "info".into(),
                port: 1,
            }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn write(text: &str) -> tempfile_path::TempPath {
        tempfile_path::TempPath::new(text)
    }

    /// A minimal temp-file helper so this crate needs no test dependency.
    mod tempfile_path {
        pub(super) struct TempPath(pub(super) std::path::PathBuf);
        impl TempPath {
            pub(super) fn new(text: &str) -> Self {
                static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path =
                    std::env::temp_dir().join(format!("tm-config-{}-{n}.toml", std::process::id()));
                std::fs::write(&path, text).expect("write temp config");
                Self(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    /// `threatmail serve`'s file given to a single service: the error says what it is.
    #[test]
    fn a_serve_section_in_a_single_services_file_is_explained() {
        let file = write("[mailbox]\nlisten = \"127.0.0.1:1\"\n");
        let error = load::<Sample>(Some(&file.0), &env(&[])).expect_err("unknown section");
        assert_eq!(error.problems.len(), 1, "{error:?}");
        assert!(
            error.problems[0].contains("unknown field `mailbox`")
                && error.problems[0].contains("a section of `threatmail serve`'s file"),
            "{error:?}"
        );
        let other = write("[nonsense]\n");
        let error = load::<Sample>(Some(&other.0), &env(&[])).expect_err("unknown section");
        assert!(!error.problems[0].contains("threatmail serve"), "{error:?}");
    }

    #[test]
    fn defaults_without_file_or_env() {
        let config: Sample = load(None, &env(&[])).expect("defaults load");
        assert_eq!(config, Sample::default());
    }

    #[test]
    fn env_wins_over_file_and_nested_keys_use_double_underscore() {
        let file = write("name = \"from-file\"\npoll = \"5m\"\n[inner]\nfilter = \"debug\"\n");
        let config: Sample = load(
            Some(&file.0),
            &env(&[
                ("THREATMAIL_NAME", "from-env"),
                ("THREATMAIL_INNER__PORT", "993"),
                ("THREATMAIL_ENABLED", "false"),
                ("THREATMAIL_CONFIG", "ignored.toml"),
                ("OTHER", "x"),
            ]),
        )
        .expect("config loads");
        assert_eq!(config.name, "from-env");
        assert_eq!(config.poll, Duration::from_secs(300));
        assert_eq!(config.inner.filter, "debug");
        assert_eq!(config.inner.port, 993);
        assert!(!config.enabled);
    }

    #[test]
    fn numeric_looking_env_value_for_a_string_setting_is_kept_as_a_string() {
        let config: Sample = load(None, &env(&[("THREATMAIL_NAME", "8080")])).expect("loads");
        assert_eq!(config.name, "8080");
    }

    #[test]
    fn every_bad_setting_is_reported_at_once() {
        let file = write("listen = \"not an address\"\npoll = \"soon\"\ncolour = \"red\"\n");
        let error = load::<Sample>(
            Some(&file.0),
            &env(&[
                ("THREATMAIL_INNER__PORT", "99999"),
                ("THREATMAIL_BOGUS", "1"),
            ]),
        )
        .expect_err("bad config");
        let text = error.to_string();
        assert_eq!(error.problems.len(), 5, "{text}");
        assert!(text.contains("listen"), "{text}");
        assert!(text.contains("invalid duration \"soon\""), "{text}");
        assert!(text.contains("colour"), "{text}");
        assert!(text.contains("THREATMAIL_INNER__PORT"), "{text}");
        assert!(text.contains("THREATMAIL_BOGUS"), "{text}");
    }

    /// A string where a section belongs (a master key written straight in) is reported
    /// without the string, which may be the secret.
    #[test]
    fn a_value_in_the_wrong_place_is_not_echoed() {
        let key = "k1:QxY7HMatBvlJeiV94eaveomVqPcmfw61hwhj4q3HDw8=";
        let file = write(&format!("inner = \"{key}\"\n"));
        let from_file = load::<Sample>(Some(&file.0), &env(&[])).expect_err("a string");
        let from_env =
            load::<Sample>(None, &env(&[("THREATMAIL_INNER", key)])).expect_err("a string");
        for error in [from_file, from_env] {
            let text = error.to_string();
            assert!(
                text.contains("inner") && text.contains("not shown"),
                "{text}"
            );
            assert!(!text.contains("QxY7"), "{text}");
        }
    }

    #[test]
    fn unreadable_or_malformed_file_names_the_file() {
        let missing = Path::new("/nonexistent/threatmail.toml");
        let error = load::<Sample>(Some(missing), &env(&[])).expect_err("missing file");
        assert!(error.to_string().contains("/nonexistent/threatmail.toml"));
        let bad = write("name = ");
        let error = load::<Sample>(Some(&bad.0), &env(&[])).expect_err("bad toml");
        assert!(error.to_string().contains("tm-config-"), "{error}");
        let duplicate = write("name = \"a\"\n\n[inner]\nport = 1\nport = 2\n");
        let error = load::<Sample>(Some(&duplicate.0), &env(&[])).expect_err("duplicate key");
        assert!(error.to_string().contains("(line 5)"), "{error}");
    }
}
