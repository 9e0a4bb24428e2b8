//! `threatmail apikey create|list|revoke`: API keys with roles (view, create, update,
//! admin), through the registry with an admin key.
//!
//! The first admin key cannot come from the registry (every RPC needs a key), so
//! `apikey create --bootstrap` writes it straight into the registry's Redis, hashed exactly
//! as the registry stores keys (`threatmail_auth::RedisApiKeys`), and prints it once. It
//! refuses while an unrevoked admin key exists, so it cannot be used to mint keys beside
//! the registry's own audit trail once the system is set up; anyone who can write to that
//! Redis can already change every key, so it gives no one more than they had. The Redis
//! URL comes from `--redis-url`, `THREATMAIL_REDIS_URL` / `THREATMAIL_REGISTRY__REDIS_URL`,
//! or the `redis_url` (or `[registry] redis_url`) of the configuration file the registry
//! runs with.
//!
//! The key itself goes to stdout alone (or in the `--json` document), so
//! `threatmail apikey create … > key` stores it; everything else goes to stderr.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use serde_json::{Value, json};
use threatmail_auth::{RedisApiKeys, Role, RoleSet};
use threatmail_proto::v1 as pb;

use super::client::{self, RegistryArgs, rpc_error};

/// How long Redis may take to answer a bootstrap.
const REDIS_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `threatmail apikey`.
#[derive(Debug, clap::Args)]
pub(crate) struct ApiKeyArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(subcommand)]
    command: ApiKeyCommand,
}

#[derive(Debug, clap::Subcommand)]
enum ApiKeyCommand {
    /// Make a key; it is printed once, on stdout.
    Create(CreateArgs),
    /// Every key (never a key itself).
    List,
    /// Revoke a key by its id.
    Revoke {
        /// The key's id, as `list` shows it.
        id: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RoleArg {
    /// View Threat Mailbox: read sources, status, messages.
    View,
    /// Create Threat Mailbox: add sources (Save and Continue).
    Create,
    /// Update Threat Mailbox: change, delete sources, choose folders.
    Update,
    /// Everything, and API keys.
    Admin,
}

impl RoleArg {
    fn role(self) -> Role {
        match self {
            RoleArg::View => Role::View,
            RoleArg::Create => Role::Create,
            RoleArg::Update => Role::Update,
            RoleArg::Admin => Role::Admin,
        }
    }

    fn proto(self) -> pb::Role {
        match self {
            RoleArg::View => pb::Role::View,
            RoleArg::Create => pb::Role::Create,
            RoleArg::Update => pb::Role::Update,
            RoleArg::Admin => pb::Role::Admin,
        }
    }
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// What the key is for ("analyst laptop").
    #[arg(long)]
    name: String,
    /// A role; repeatable or comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', required = true, num_args = 1..)]
    role: Vec<RoleArg>,
    /// Make the first admin key directly in the registry's Redis (no registry or key
    /// needed; refused once an admin key exists).
    #[arg(long)]
    bootstrap: bool,
    /// With --bootstrap: the registry's Redis.
    #[arg(long, value_name = "URL", requires = "bootstrap")]
    redis_url: Option<String>,
    /// With --bootstrap: the registry's (or `serve`'s) configuration file, for its
    /// redis_url.
    #[arg(long, value_name = "FILE", requires = "bootstrap")]
    config: Option<PathBuf>,
}

/// Runs `threatmail apikey …`.
pub(crate) fn run(args: ApiKeyArgs) -> anyhow::Result<ExitCode> {
    let json = args.registry.json;
    match client::runtime()?.block_on(run_command(args)) {
        Err(error) if client::is_broken_pipe(&error) => Ok(ExitCode::SUCCESS),
        Err(error) if json => {
            let _ = outln!("{}", client::error_json(&error));
            Err(error)
        }
        other => other,
    }
}

fn role_names(roles: &[i32]) -> Vec<&'static str> {
    roles
        .iter()
        .map(|r| match pb::Role::try_from(*r) {
            Ok(pb::Role::View) => "view",
            Ok(pb::Role::Create) => "create",
            Ok(pb::Role::Update) => "update",
            Ok(pb::Role::Admin) => "admin",
            _ => "unknown",
        })
        .collect()
}

fn print(value: &Value) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Prints a key just made: alone on stdout, or in the JSON document.
fn print_new_key(id: &str, key: &str, roles: &[&str], json: bool) -> anyhow::Result<()> {
    if json {
        print(&json!({ "ok": true, "id": id, "key": key, "roles": roles }))
    } else {
        eprintln!(
            "API key {id} made with roles {}; it is shown this once (store it in a file with \
             mode 0600 and pass --api-key-file, or set TM_API_KEY):",
            roles.join(",")
        );
        let mut out = std::io::stdout().lock();
        writeln!(out, "{key}")?;
        Ok(())
    }
}

async fn run_command(args: ApiKeyArgs) -> anyhow::Result<ExitCode> {
    let json = args.registry.json;
    match args.command {
        ApiKeyCommand::Create(create) if create.bootstrap => bootstrap(&create, json).await?,
        ApiKeyCommand::Create(create) => {
            let mut client = args.registry.connect("admin").await?;
            let made = client
                .create_api_key(pb::CreateApiKeyRequest {
                    label: create.name.clone(),
                    roles: create.role.iter().map(|r| r.proto() as i32).collect(),
                })
                .await
                .map_err(|s| rpc_error("CreateApiKey", s))?
                .into_inner();
            print_new_key(&made.id, &made.key, &role_names(&made.roles), json)?;
        }
        ApiKeyCommand::List => {
            let mut client = args.registry.connect("admin").await?;
            let keys = client
                .list_api_keys(pb::ListApiKeysRequest {})
                .await
                .map_err(|s| rpc_error("ListApiKeys", s))?
                .into_inner()
                .keys;
            if json {
                print(&json!({
                    "ok": true,
                    "keys": keys.iter().map(|k| json!({
                        "id": k.id, "name": k.label, "roles": role_names(&k.roles),
                        "created_at": k.created_at, "revoked": k.revoked,
                    })).collect::<Vec<_>>(),
                }))?;
            } else {
                let mut out = std::io::stdout().lock();
                writeln!(
                    out,
                    "{:<16}  {:<28} {:<26} {:<16}  REVOKED",
                    "ID", "NAME", "ROLES", "CREATED (UTC)"
                )?;
                for key in &keys {
                    writeln!(
                        out,
                        "{:<16}  {:<28} {:<26} {:<16}  {}",
                        key.id,
                        key.label,
                        role_names(&key.roles).join(","),
                        super::source::when(key.created_at),
                        if key.revoked { "yes" } else { "no" }
                    )?;
                }
            }
        }
        ApiKeyCommand::Revoke { id } => {
            let mut client = args.registry.connect("admin").await?;
            client
                .revoke_api_key(pb::RevokeApiKeyRequest { id: id.clone() })
                .await
                .map_err(|s| rpc_error("RevokeApiKey", s))?;
            if json {
                print(&json!({ "ok": true, "id": id, "revoked": true }))?;
            } else {
                outln!("revoked API key {id}")?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The Redis URL for a bootstrap: the flag, the registry's variables, the configuration
/// file, the registry's default.
fn redis_url(
    flag: Option<&str>,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<String> {
    if let Some(url) = flag {
        anyhow::ensure!(
            threatmail_core::redact::url(url) == url,
            super::secret_input::UsageError(
                "--redis-url holds a password, which other users see in the process list: \
                 treat it as exposed, and give the URL in the registry's --config file or \
                 THREATMAIL_REGISTRY__REDIS_URL instead"
            )
        );
        return Ok(url.to_owned());
    }
    for name in ["THREATMAIL_REDIS_URL", "THREATMAIL_REGISTRY__REDIS_URL"] {
        if let Some(url) = env.get(name) {
            return Ok(url.clone());
        }
    }
    let file = config
        .map(Path::to_path_buf)
        .or_else(|| env.get("THREATMAIL_CONFIG").map(PathBuf::from));
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        let url = table.get("redis_url").or_else(|| {
            table
                .get("registry")
                .and_then(|r| r.as_table())
                .and_then(|r| r.get("redis_url"))
        });
        if let Some(url) = url {
            return url
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{}: redis_url is not a string", path.display()));
        }
    }
    Ok("redis://127.0.0.1:6379/".to_owned())
}

async fn bootstrap(create: &CreateArgs, json: bool) -> anyhow::Result<()> {
    if !create.role.contains(&RoleArg::Admin) {
        anyhow::bail!(
            "--bootstrap makes the first admin key: add --role admin (make other keys with \
             that key afterwards)"
        );
    }
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let secret_url = redis_url(create.redis_url.as_deref(), create.config.as_deref(), &env)?;
    // The URL as it may be printed (its password, if any, hidden).
    let url = threatmail_core::redact::url(&secret_url);
    let client = redis::Client::open(secret_url.as_str())
        .with_context(|| format!("{url:?} is not a Redis URL (redis://host:port/)"))?;
    let conn = tokio::time::timeout(REDIS_TIMEOUT, client.get_connection_manager())
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to the registry's Redis at {url}"))?
        .map_err(|e| {
            if e.kind() == redis::ErrorKind::AuthenticationFailed {
                anyhow::anyhow!(
                    "the registry's Redis at {url} refused the user or password ({e}): use the \
                     registry's own redis_url"
                )
            } else {
                anyhow::anyhow!(
                    "cannot reach the registry's Redis at {url} ({e}): start it, or give its \
                     URL with --redis-url or the registry's --config file"
                )
            }
        })?;
    // Concurrent bootstraps: one at a time, so the check below and the key it allows are
    // one step (two admin keys were made when four ran at once).
    let lock = BootstrapLock::take(conn.clone(), &url).await?;
    let made = bootstrap_locked(create, json, RedisApiKeys::new(conn), &url).await;
    lock.release().await;
    made
}

/// Held while a bootstrap checks for an admin key and makes one.
struct BootstrapLock {
    conn: redis::aio::ConnectionManager,
    token: String,
}

/// The lock's key; it lapses by itself should the holder die.
const BOOTSTRAP_LOCK: &str = "tm:apikeys:bootstrap";

impl BootstrapLock {
    async fn take(mut conn: redis::aio::ConnectionManager, url: &str) -> anyhow::Result<Self> {
        let token = format!("{}-{}", std::process::id(), rand_token());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let taken: Option<String> = redis::cmd("SET")
                .arg(BOOTSTRAP_LOCK)
                .arg(&token)
                .arg("NX")
                .arg("PX")
                .arg(30_000)
                .query_async(&mut conn)
                .await
                .with_context(|| format!("failed to take the bootstrap lock in {url}"))?;
            if taken.is_some() {
                return Ok(Self { conn, token });
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "another bootstrap has held {BOOTSTRAP_LOCK} in {url} for 10 s: try again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn release(mut self) {
        let _: Result<i64, _> = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(BOOTSTRAP_LOCK)
        .arg(&self.token)
        .invoke_async(&mut self.conn)
        .await;
    }
}

/// A few random hex digits (std's randomly keyed hasher), telling lock holders apart.
fn rand_token() -> String {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(0);
    format!("{:016x}", hasher.finish())
}

async fn bootstrap_locked(
    create: &CreateArgs,
    json: bool,
    keys: RedisApiKeys,
    url: &str,
) -> anyhow::Result<()> {
    let existing = keys
        .list()
        .await
        .with_context(|| format!("failed to read the API keys in {url}"))?;
    if let Some(admin) = existing
        .iter()
        .find(|k| !k.revoked && k.roles.grants(Role::Admin))
    {
        anyhow::bail!(
            "an admin API key already exists ({} {:?}): make more keys with it \
             (`threatmail apikey create` without --bootstrap), or revoke it first",
            admin.id,
            admin.label
        );
    }
    let name = create.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        anyhow::bail!("--name: say what the key is for, in at most 100 characters");
    }
    let roles: Vec<Role> = create.role.iter().map(|r| r.role()).collect();
    let set = RoleSet::of(&roles);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    let made = keys
        .create(name, set, now)
        .await
        .with_context(|| format!("failed to store the API key in {url}"))?;
    let names: Vec<&str> = set.roles().into_iter().map(Role::as_str).collect();
    print_new_key(&made.id, made.key.expose_secret(), &names, json)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_redis_url_comes_from_the_flag_the_variables_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let registry_file = dir.path().join("registry.toml");
        std::fs::write(&registry_file, "redis_url = \"redis://r:1/\"\n").unwrap();
        let serve_file = dir.path().join("serve.toml");
        std::fs::write(&serve_file, "[registry]\nredis_url = \"redis://s:2/\"\n").unwrap();
        let none = BTreeMap::new();
        let env: BTreeMap<String, String> =
            [("THREATMAIL_REDIS_URL".to_owned(), "redis://e:3/".to_owned())].into();
        assert_eq!(
            redis_url(Some("redis://f:4/"), Some(&registry_file), &env).unwrap(),
            "redis://f:4/"
        );
        assert_eq!(
            redis_url(None, Some(&registry_file), &env).unwrap(),
            "redis://e:3/"
        );
        assert_eq!(
            redis_url(None, Some(&registry_file), &none).unwrap(),
            "redis://r:1/"
        );
        assert_eq!(
            redis_url(None, Some(&serve_file), &none).unwrap(),
            "redis://s:2/"
        );
        assert_eq!(
            redis_url(None, None, &none).unwrap(),
            "redis://127.0.0.1:6379/"
        );
    }
}
