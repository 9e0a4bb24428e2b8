//! The registry with everything it talks to, in-process on the local stack (Redis, the
//! Entra stand-in, Dovecot judging tokens like Exchange), the token broker and a fetcher
//! through their own `run`; and the real `threatmail` binary run against it as a user
//! would, with the registry's address and an API key file in its environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use threatmail_auth::{RedisApiKeys, Role, RoleSet, ServiceCredential};
use threatmail_source::MasterKey;
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{PHISH_MAILBOX, TenantFixture, sample_message};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The second folder of the phishing mailbox (a space in its name, like Exchange's).
pub(crate) const PHISH_REPORTS: &str = "Phish Reports";

/// What one run of the binary did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// stdout parsed as one JSON document.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON document ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Both streams, for checks that a secret appears in neither.
    pub(crate) fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    /// Fails with both streams unless the exit status is `code`.
    pub(crate) fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "exit status {} (wanted {code})\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Everything running.
pub(crate) struct Harness {
    pub(crate) stack: LocalStack,
    pub(crate) registry_addr: SocketAddr,
    /// A file holding an admin API key (empty when started without one).
    pub(crate) admin_key_file: PathBuf,
    dir: tempfile::TempDir,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn spawn<F, Fut>(
    tasks: &mut Vec<JoinHandle<anyhow::Result<()>>>,
    shutdown: &CancellationToken,
    run: F,
) -> anyhow::Result<SocketAddr>
where
    F: FnOnce(TcpListener, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tasks.push(tokio::spawn(run(listener, shutdown.child_token())));
    Ok(addr)
}

/// The fixture of DESIGN §1 done right, with a second folder in the phishing mailbox.
pub(crate) fn fixture() -> TenantFixture {
    let mut fixture = TenantFixture::everything_right();
    if let Some(mailbox) = fixture
        .primary_tenant_mut()
        .and_then(|t| t.exchange.mailbox_mut(PHISH_MAILBOX))
    {
        let with = std::mem::replace(mailbox, threatmail_testkit::tenant::Mailbox::new(""));
        *mailbox = with.with_messages(PHISH_REPORTS, vec![sample_message(7)]);
    }
    fixture
}

impl Harness {
    /// Starts the stack, the broker, a fetcher that only lists folders, and the registry;
    /// with `admin`, also writes an admin API key into a file the binary is pointed at.
    pub(crate) async fn start(admin: bool) -> anyhow::Result<Self> {
        Self::start_with(admin, false).await
    }

    /// As [`Harness::start`]; with `syncing`, the fetcher also syncs the selected folders
    /// of every source (its scheduler reads them from Redis), polling every 200 ms.
    pub(crate) async fn start_with(admin: bool, syncing: bool) -> anyhow::Result<Self> {
        let stack = LocalStack::start(fixture()).await?;
        let master_key = MasterKey::generate("k1")?.to_line();
        let registry_credential = ServiceCredential::generate("registry")?;
        let fetcher_credential = ServiceCredential::generate("fetcher")?;
        let dir = tempfile::tempdir()?;
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();

        let mut broker = threatmail_token_broker::Config {
            redis_url: stack.redis.url(),
            ..Default::default()
        };
        broker.master_key.key = Some(master_key.clone());
        broker
            .auth
            .services
            .insert("registry".to_owned(), registry_credential.hash());
        broker
            .auth
            .services
            .insert("fetcher".to_owned(), fetcher_credential.hash());
        broker.entra.ca_file = Some(stack.ca_cert_path());
        broker.entra.global.authority = Some(stack.entra.authority());
        let broker_addr = spawn(&mut tasks, &shutdown, |listener, stop| {
            threatmail_token_broker::run(broker, listener, stop)
        })
        .await?;

        let mut fetcher = threatmail_fetcher::Config::default();
        fetcher.imap.ca_file = Some(stack.ca_cert_path());
        fetcher.imap.connect_timeout = Duration::from_secs(10);
        fetcher.imap.command_timeout = Duration::from_secs(10);
        // ListFolders is for services only: the registry presents its credential.
        fetcher
            .auth
            .services
            .insert("registry".to_owned(), registry_credential.hash());
        if syncing {
            fetcher.redis_url = Some(stack.redis.url());
            fetcher.broker_url = format!("http://{broker_addr}");
            fetcher.broker_timeout = Duration::from_secs(10);
            fetcher.blobs = threatmail_store::BlobStoreConfig::Directory {
                path: dir.path().join("blobs"),
            };
            fetcher.auth.credential =
                Some(SecretString::from(fetcher_credential.expose().to_owned()));
            fetcher.master_key.key = Some(master_key.clone());
            fetcher.sync.poll_interval = Duration::from_millis(200);
            fetcher.sync.lease_ttl = Duration::from_secs(3);
            fetcher.sync.renew_interval = Duration::from_millis(500);
            fetcher.sync.retry_min = Duration::from_millis(200);
            fetcher.sync.retry_max = Duration::from_millis(800);
        }
        let fetcher_addr = spawn(&mut tasks, &shutdown, |listener, stop| {
            threatmail_fetcher::run(fetcher, listener, stop)
        })
        .await?;

        let mut registry = threatmail_registry::Config {
            redis_url: stack.redis.url(),
            broker_url: format!("http://{broker_addr}"),
            fetcher_url: format!("http://{fetcher_addr}"),
            upstream_timeout: Duration::from_secs(20),
            ..Default::default()
        };
        registry.master_key.key = Some(master_key);
        registry.auth.credential =
            Some(SecretString::from(registry_credential.expose().to_owned()));
        let registry_addr = spawn(&mut tasks, &shutdown, |listener, stop| {
            threatmail_registry::run(registry, listener, stop)
        })
        .await?;

        let admin_key_file = dir.path().join("admin.key");
        let harness = Harness {
            stack,
            registry_addr,
            admin_key_file,
            dir,
            shutdown,
            tasks,
        };
        if admin {
            let key = harness.api_key(&[Role::Admin]).await?;
            harness.write_file("admin.key", &key)?;
        }
        Ok(harness)
    }

    /// A new API key with `roles`, written straight into Redis.
    pub(crate) async fn api_key(&self, roles: &[Role]) -> anyhow::Result<String> {
        let keys = RedisApiKeys::new(self.stack.redis.connection_manager().await?);
        let made = keys.create("test", RoleSet::of(roles), 0).await?;
        Ok(made.key.expose_secret().to_owned())
    }

    /// Writes `text` to a file (mode 0600) in the harness's directory.
    pub(crate) fn write_file(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = self.dir.path().join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        file.write_all(text.as_bytes())?;
        Ok(path)
    }

    /// The fixture's current first client secret.
    pub(crate) fn secret(&self) -> String {
        self.stack.tenant().read(|f| {
            f.primary_app()
                .and_then(|a| a.secrets.first())
                .map(|s| s.value.expose().to_owned())
                .unwrap_or_default()
        })
    }

    /// Adds a second client secret to the fixture's app (as an administrator does before a
    /// rollover) and returns its value.
    pub(crate) fn add_secret(&self) -> anyhow::Result<String> {
        let secret = threatmail_testkit::tenant::ClientSecret::new(std::time::Duration::from_secs(
            365 * 24 * 3600,
        ));
        let value = secret.value.expose().to_owned();
        self.change_tenant(|f| {
            if let Some(app) = f.primary_app_mut() {
                app.secrets.push(secret);
            }
        })?;
        Ok(value)
    }

    /// The form's fields for the fixture, as flags (everything but the secret), with the
    /// phishing mailbox on Dovecot's TLS port.
    pub(crate) fn form(&self, name: &str) -> Vec<String> {
        let (tenant, app) = self.stack.tenant().read(|f| {
            (
                f.primary_tenant().map(|t| t.id.clone()).unwrap_or_default(),
                f.primary_app()
                    .map(|a| a.client_id.clone())
                    .unwrap_or_default(),
            )
        });
        let imaps = self.stack.dovecot.imaps_addr();
        [
            "--name",
            name,
            "--account-type",
            "imap",
            "--auth-type",
            "ms-oauth2",
            "--email",
            PHISH_MAILBOX,
            "--app-id",
            &app,
            "--tenant-id",
            &tenant,
            "--host",
            &imaps.ip().to_string(),
            "--port",
            &imaps.port().to_string(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    }

    /// Changes the fixture and pushes it to Dovecot (the stand-in reads it live).
    pub(crate) fn change_tenant(
        &self,
        change: impl FnOnce(&mut TenantFixture),
    ) -> anyhow::Result<()> {
        self.stack.tenant().update(change);
        tokio::task::block_in_place(|| self.stack.apply_tenant())
    }

    /// Runs `threatmail ARGS` against the registry with the admin key file, `stdin` piped
    /// in (or nothing), and `env` added.
    pub(crate) async fn run(&self, args: &[&str], stdin: Option<&str>) -> anyhow::Result<Run> {
        self.run_with(
            args,
            stdin,
            &[(
                "TM_API_KEY_FILE",
                self.admin_key_file.to_str().unwrap_or_default(),
            )],
        )
        .await
    }

    /// Runs `threatmail ARGS` with exactly `env` (beside the registry's address).
    pub(crate) async fn run_with(
        &self,
        args: &[&str],
        stdin: Option<&str>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Run> {
        let mut command = binary();
        command.env("TM_REGISTRY_URL", format!("http://{}", self.registry_addr));
        for (name, value) in env {
            command.env(name, value);
        }
        run(command, args, stdin).await
    }

    /// Stops every server and checks each stopped cleanly.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        for task in std::mem::take(&mut self.tasks) {
            tokio::time::timeout(Duration::from_secs(15), task)
                .await
                .context("a server did not stop")???;
        }
        Ok(())
    }
}

/// The binary with none of the caller's `TM_*` / `THREATMAIL_*` settings.
pub(crate) fn binary() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_threatmail"));
    for (name, _) in std::env::vars() {
        if name.starts_with("TM_") || name.starts_with("THREATMAIL_") {
            command.env_remove(name);
        }
    }
    command
}

/// Runs `command ARGS` to the end.
pub(crate) async fn run(
    mut command: tokio::process::Command,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<Run> {
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().context("failed to start threatmail")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
        drop(pipe);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .context("threatmail did not finish in 120 s")??;
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}
