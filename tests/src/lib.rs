//! threatmail deployed for real on the local stack: `threatmail serve` processes started
//! from one configuration file, the first admin API key bootstrapped, and the CLI run
//! against them as a user would. The demo (`tm-demo`, the README's first command) and the
//! whole-system tests in `tests/tests/` both drive the system through this.
//!
//! Everything lives in the stack's temporary directory (configuration, master key, client
//! secret, API key, blobs, logs) and every process is stopped when the [`Deployment`] is
//! dropped, so a run leaves nothing behind.

pub mod demo;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use threatmail_source::MasterKey;
use threatmail_testkit::net::{free_port, wait_for_port};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::PHISH_MAILBOX;

/// How the services are laid out in processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `threatmail serve --target all`: every service in one process, service credentials
    /// made by the process itself.
    OneProcess,
    /// Each service in its own `threatmail serve --target …` process, with `fetchers`
    /// fetcher processes, and service credentials in files as a real deployment has them.
    Split {
        /// How many fetcher processes.
        fetchers: usize,
    },
}

/// Settings the configuration file gets beyond addresses and secrets.
#[derive(Debug, Clone)]
pub struct Tuning {
    /// The fetchers' `sync.poll_interval`.
    pub poll_interval: Duration,
    /// The fetchers' `sync.lease_ttl`.
    pub lease_ttl: Duration,
    /// The processes' log filter.
    pub log_filter: String,
    /// JSON log lines (for tests that read them) instead of human ones.
    pub json_logs: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(2),
            lease_ttl: Duration::from_secs(10),
            log_filter: "info".to_owned(),
            json_logs: false,
        }
    }
}

/// One `threatmail serve` process.
#[derive(Debug)]
struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

/// threatmail running on a [`LocalStack`].
pub struct Deployment {
    /// Redis, Dovecot and the Entra stand-in.
    pub stack: LocalStack,
    threatmail: PathBuf,
    dir: PathBuf,
    config: PathBuf,
    api_key_file: PathBuf,
    secret_file: PathBuf,
    registry: SocketAddr,
    mailbox: SocketAddr,
    processes: Vec<Process>,
}

/// The `threatmail` binary: `THREATMAIL_BIN` when set, else the one beside the running
/// executable's directory in the same target dir (`cargo test --workspace` and
/// `cargo build` put it there).
pub fn threatmail_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("THREATMAIL_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("failed to find the running executable")?;
    // target/debug/deps/<test> or target/debug/<bin>
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join("threatmail");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "the threatmail binary is not built next to {}; run `cargo build -p threatmail` \
         (or set THREATMAIL_BIN)",
        exe.display()
    )
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The real phishing corpus beside the checkout (`../shared/corpus/phishing`), or `None`
/// after a notice when it is missing; under `CI=true` a missing corpus is an error.
pub fn phishing_corpus() -> anyhow::Result<Option<PathBuf>> {
    let dir = workspace_root().join("../shared/corpus/phishing");
    if dir.is_dir() {
        return Ok(Some(dir));
    }
    anyhow::ensure!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the corpus is missing at {}",
        dir.display()
    );
    eprintln!(
        "note: {} is missing; using the shipped samples",
        dir.display()
    );
    Ok(None)
}

/// Writes `text` to a new file only its owner can read.
pub fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn toml_string(text: &str) -> String {
    // TOML basic strings share JSON's escapes for everything a path or URL holds.
    serde_json::Value::String(text.to_owned()).to_string()
}

fn seconds(duration: Duration) -> String {
    toml_string(&format!("{}ms", duration.as_millis()))
}

/// `threatmail credential create --name NAME -o FILE --json`: the credential's hash.
async fn create_credential(threatmail: &Path, name: &str, file: &Path) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(threatmail)
        .args(["credential", "create", "--json", "--name", name, "--output"])
        .arg(file)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "threatmail credential create --name {name} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    reply["hash"]
        .as_str()
        .map(str::to_owned)
        .context("threatmail credential create printed no hash")
}

impl Deployment {
    /// Writes the configuration, starts the processes of `layout`, waits until they listen
    /// and bootstraps an admin API key.
    pub async fn start(
        stack: LocalStack,
        threatmail: PathBuf,
        layout: Layout,
        tuning: &Tuning,
    ) -> anyhow::Result<Self> {
        let dir = stack.work_dir().join("threatmail");
        std::fs::create_dir(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
        let master_key = dir.join("master-key");
        write_private(
            &master_key,
            &format!(
                "{}\n",
                MasterKey::generate("demo")?.to_line().expose_secret()
            ),
        )?;
        let secret_file = dir.join("client-secret");
        let secret = stack
            .tenant()
            .read(|f| {
                f.primary_app()
                    .and_then(|app| app.secrets.first())
                    .map(|s| s.value.expose().to_owned())
            })
            .context("the tenant's app has no client secret")?;
        write_private(&secret_file, &secret)?;

        let port = || -> anyhow::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], free_port()?)))
        };
        let (registry, broker, mailbox) = (port()?, port()?, port()?);
        let fetcher_count = match layout {
            Layout::OneProcess => 1,
            Layout::Split { fetchers } => fetchers.max(1),
        };
        let fetchers: Vec<SocketAddr> = (0..fetcher_count)
            .map(|_| port())
            .collect::<anyhow::Result<_>>()?;

        let mut config = String::new();
        let redis = toml_string(&stack.redis.url());
        let key_file = toml_string(&master_key.display().to_string());
        let ca = toml_string(&stack.ca_cert_path().display().to_string());
        let blobs = toml_string(&dir.join("blobs").display().to_string());
        let format = if tuning.json_logs { "json" } else { "human" };
        let filter = toml_string(&tuning.log_filter);
        writeln!(
            config,
            "[telemetry]\nfilter = {filter}\nformat = \"{format}\"\n"
        )?;
        writeln!(
            config,
            "[registry]\nlisten = \"{registry}\"\nredis_url = {redis}\n\
             broker_url = \"http://{broker}\"\nfetcher_url = \"http://{}\"\n\
             master_key.key_file = {key_file}\n",
            fetchers[0]
        )?;
        writeln!(
            config,
            "[token_broker]\nlisten = \"{broker}\"\nredis_url = {redis}\n\
             master_key.key_file = {key_file}\nentra.ca_file = {ca}\n\
             entra.global.authority = {}\n",
            toml_string(&stack.entra.authority())
        )?;
        writeln!(
            config,
            "[fetcher]\nlisten = \"{}\"\nredis_url = {redis}\nbroker_url = \"http://{broker}\"\n\
             master_key.key_file = {key_file}\nimap.ca_file = {ca}\n\
             blobs = {{ kind = \"directory\", path = {blobs} }}\n\
             sync.poll_interval = {}\nsync.lease_ttl = {}\nsync.renew_interval = {}\n\
             sync.retry_min = \"1s\"\nsync.retry_max = \"10s\"\n",
            fetchers[0],
            seconds(tuning.poll_interval),
            seconds(tuning.lease_ttl),
            seconds(tuning.lease_ttl / 3),
        )?;
        writeln!(
            config,
            "[mailbox]\nlisten = \"{mailbox}\"\nredis_url = {redis}\n\
             blobs = {{ kind = \"directory\", path = {blobs} }}\n\
             drain_interval = \"1s\"\n"
        )?;
        let mut targets: Vec<(String, &str, BTreeMap<String, String>)> = Vec::new();
        match layout {
            Layout::OneProcess => targets.push(("all".to_owned(), "all", BTreeMap::new())),
            Layout::Split { .. } => {
                // Service credentials in files, made as the deployment guide says
                // (`threatmail credential create`), each side configured as in production.
                let registry_file = dir.join("registry-credential");
                let fetcher_file = dir.join("fetcher-credential");
                let registry_credential =
                    create_credential(&threatmail, "registry", &registry_file).await?;
                let fetcher_credential =
                    create_credential(&threatmail, "fetcher", &fetcher_file).await?;
                let credential = |section: &str, file: &Path| {
                    (
                        format!("THREATMAIL_{section}__AUTH__CREDENTIAL_FILE"),
                        file.display().to_string(),
                    )
                };
                let allow = |section: &str, caller: &str, hash: &str| {
                    (
                        format!(
                            "THREATMAIL_{section}__AUTH__SERVICES__{}",
                            caller.to_uppercase()
                        ),
                        hash.to_owned(),
                    )
                };
                targets.push((
                    "token-broker".to_owned(),
                    "token-broker",
                    BTreeMap::from([
                        allow("TOKEN_BROKER", "registry", &registry_credential),
                        allow("TOKEN_BROKER", "fetcher", &fetcher_credential),
                    ]),
                ));
                targets.push((
                    "registry".to_owned(),
                    "registry",
                    BTreeMap::from([credential("REGISTRY", &registry_file)]),
                ));
                for (n, listen) in fetchers.iter().enumerate() {
                    targets.push((
                        format!("fetcher-{}", n + 1),
                        "fetcher",
                        BTreeMap::from([
                            credential("FETCHER", &fetcher_file),
                            allow("FETCHER", "registry", &registry_credential),
                            ("THREATMAIL_FETCHER__LISTEN".to_owned(), listen.to_string()),
                            (
                                "THREATMAIL_FETCHER__SYNC__INSTANCE_NAME".to_owned(),
                                format!("fetcher-{}", n + 1),
                            ),
                        ]),
                    ));
                }
                targets.push(("mailbox".to_owned(), "mailbox", BTreeMap::new()));
            }
        }
        let config_path = dir.join("threatmail.toml");
        std::fs::write(&config_path, &config)?;

        let mut deployment = Deployment {
            stack,
            threatmail,
            api_key_file: dir.join("admin-api-key"),
            config: config_path,
            secret_file,
            dir,
            registry,
            mailbox,
            processes: Vec::new(),
        };
        for (name, target, env) in targets {
            deployment.spawn(&name, target, &env)?;
        }
        let mut listening = vec![registry, broker, mailbox];
        listening.extend(&fetchers);
        for addr in listening {
            if let Err(error) = wait_for_port(addr, Duration::from_secs(60)).await {
                anyhow::bail!(
                    "{error:#}; the services' logs:\n{}",
                    deployment.logs_tail(40)
                );
            }
        }
        deployment.bootstrap_api_key().await?;
        Ok(deployment)
    }

    fn spawn(
        &mut self,
        name: &str,
        target: &str,
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut command = self.command();
        command
            .args(["serve", "--target", target, "--config"])
            .arg(&self.config)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = command
            .spawn()
            .with_context(|| format!("failed to start {}", self.threatmail.display()))?;
        self.processes.push(Process {
            name: name.to_owned(),
            child,
            log,
        });
        Ok(())
    }

    /// `threatmail` with the environment a user of this deployment has: the registry's
    /// and the mailbox's address and the admin key's file; no `THREATMAIL_*` setting leaks
    /// in from the caller's environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.threatmail);
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("THREATMAIL_") || key == "TM_API_KEY" {
                command.env_remove(key);
            }
        }
        command
            .env("TM_REGISTRY_URL", format!("http://{}", self.registry))
            .env("TM_MAILBOX_URL", format!("http://{}", self.mailbox))
            .env("TM_API_KEY_FILE", &self.api_key_file)
            .env("NO_COLOR", "1");
        command
    }

    async fn bootstrap_api_key(&self) -> anyhow::Result<()> {
        let key = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.api_key_file)?;
        let mut command = tokio::process::Command::from(self.command());
        let output = command
            .env_remove("TM_API_KEY_FILE")
            .args([
                "apikey",
                "create",
                "--bootstrap",
                "--name",
                "local admin",
                "--role",
                "admin",
                "--config",
            ])
            .arg(&self.config)
            .stdout(key)
            .stderr(Stdio::piped())
            // spawn, not output(): output() would capture stdout instead of the file.
            .spawn()?
            .wait_with_output()
            .await?;
        anyhow::ensure!(
            output.status.success(),
            "threatmail apikey create --bootstrap failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    }

    /// Runs `threatmail args…` and returns what it printed. Awaited, so the stack's
    /// in-process servers (the Entra stand-in) keep answering meanwhile.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<Output> {
        tokio::process::Command::from(self.command())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("failed to run threatmail {}", args.join(" ")))
    }

    /// The `source add` arguments of the form filled in right for the fixture's primary
    /// tenant, app and the phish mailbox (the local Dovecot as the IMAP host).
    pub fn source_add_args(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let (tenant, app, object_id) = self.stack.tenant().read(|f| {
            let tenant = f.primary_tenant().context("no tenant")?;
            let app = f.primary_app().context("no app")?;
            anyhow::Ok((
                tenant.id.clone(),
                app.client_id.clone(),
                app.service_principal_object_id.clone(),
            ))
        })?;
        let imaps = self.stack.dovecot.imaps_addr();
        Ok([
            "source",
            "add",
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
            "--object-id",
            &object_id,
            "--secret-key-file",
            &self.secret_file.display().to_string(),
            "--host",
            "localhost",
            "--port",
            &imaps.port().to_string(),
        ]
        .map(str::to_owned)
        .to_vec())
    }

    /// The mailbox service's address.
    pub fn mailbox_url(&self) -> String {
        format!("http://{}", self.mailbox)
    }

    /// The admin API key (for direct gRPC checks).
    pub fn api_key(&self) -> anyhow::Result<String> {
        Ok(std::fs::read_to_string(&self.api_key_file)?
            .trim()
            .to_owned())
    }

    /// The log of process `name` (`all`, `registry`, `token-broker`, `fetcher-1`, …).
    pub fn log(&self, name: &str) -> anyhow::Result<String> {
        let process = self
            .processes
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("no process {name}"))?;
        Ok(std::fs::read_to_string(&process.log)?)
    }

    /// The last `lines` lines of every process's log, for failure messages.
    pub fn logs_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        for process in &self.processes {
            let log = std::fs::read_to_string(&process.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            let _ = writeln!(text, "--- {} ({})", process.name, process.log.display());
            for line in tail.into_iter().rev() {
                let _ = writeln!(text, "{line}");
            }
        }
        text
    }

    /// Whether every process is still running; the first that stopped, with its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        for process in &mut self.processes {
            if let Some(status) = process.child.try_wait()? {
                let log = std::fs::read_to_string(&process.log).unwrap_or_default();
                anyhow::bail!("{} stopped ({status}):\n{log}", process.name);
            }
        }
        Ok(())
    }

    /// Stops the processes: SIGTERM, then SIGKILL for any still running after 10 s.
    pub fn stop(&mut self) {
        for process in &self.processes {
            let _ = Command::new("kill")
                .args(["-TERM", &process.child.id().to_string()])
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for process in &mut self.processes {
            while Instant::now() < deadline {
                match process.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            let _ = process.child.kill();
            let _ = process.child.wait();
        }
        self.processes.clear();
    }
}

impl Drop for Deployment {
    fn drop(&mut self) {
        self.stop();
    }
}
