//! A throw-away Dovecot (Debian's `dovecot-core` + `dovecot-imapd`) standing in for Exchange
//! Online's IMAP endpoint.
//!
//! Each [`Dovecot`] runs in its own temp dir with its own config, `instance_name`, base dir,
//! mail (maildir, `LAYOUT=fs`, `/` separator like Exchange) and two loopback ports: plain
//! IMAP and IMAPS (implicit TLS with a [`TestCa`] certificate). It runs as an unprivileged
//! user: the current one, or `threatmail-test` (created on first use) when the tests run as
//! root. Dropping the handle stops it and every process it started.
//!
//! XOAUTH2 and OAUTHBEARER are judged the way Exchange Online does (see [`config`] for the
//! passdb chain): a valid RS256 token from an allowed issuer, `aud` exactly
//! `https://outlook.office365.com`, the `IMAP.AccessAsApp` role, and a FullAccess grant
//! for (`appid`, `oid`, mailbox). [`Dovecot::set_oauth`] swaps the whole setup while the
//! server runs. Plain `LOGIN` works only for mailboxes given a password with
//! [`Dovecot::set_password`]. Refusals come back at once, not after Dovecot's usual
//! half-second failure flush.
//!
//! Test data goes in with [`Dovecot::append`] (one MULTIAPPEND per 8 MiB) and
//! [`Dovecot::load_dir`]; folder names are display names, encoded to modified UTF-7 here.

mod config;
mod process;
mod seed;

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::ca::{ServerCert, TestCa};
use crate::net::free_port;
use crate::redis::find_program;
pub use crate::tenant::{MailboxGrant, OAuthSettings, SigningKeyFile};
use config::{GENERATION_MARKER, MASTER_SEPARATOR, SEED_MASTER_USER};
use process::RunAs;

/// How long a fresh instance may take until both ports answer.
const START_LIMIT: Duration = Duration::from_secs(20);
/// How often a start is retried with other ports when a port was taken in a race.
const START_ATTEMPTS: usize = 5;
/// How long a reload may take until new logins see the new files.
const RELOAD_LIMIT: Duration = Duration::from_secs(20);
/// How long Dovecot may take to stop after SIGTERM before it is killed.
const STOP_LIMIT: Duration = Duration::from_secs(10);
/// The SASL user of reload probes; filtered out of [`Dovecot::logged_refusals`].
const PROBE_USER: &str = "threatmail-reload-probe";

/// How to start a [`Dovecot`].
#[derive(Clone)]
pub struct DovecotOptions {
    /// The certificate the IMAPS port (and STARTTLS) presents.
    pub tls: ServerCert,
    /// Token validation in effect from the start (no reload needed).
    pub oauth: OAuthSettings,
    /// `(mailbox, password)` pairs for plain `LOGIN` from the start.
    pub passwords: Vec<(String, String)>,
    /// `auth_debug = yes` (logs every passdb step, tokens included). Off by default.
    pub auth_debug: bool,
}

impl std::fmt::Debug for DovecotOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DovecotOptions")
            .field("oauth", &self.oauth)
            .field(
                "password_mailboxes",
                &self.passwords.iter().map(|(m, _)| m).collect::<Vec<_>>(),
            )
            .field("auth_debug", &self.auth_debug)
            .finish_non_exhaustive()
    }
}

impl DovecotOptions {
    /// Options with a fresh server certificate from `ca`, no OAuth setup and no passwords.
    pub fn new(ca: &TestCa) -> anyhow::Result<Self> {
        Ok(Self::with_cert(ca.issue_server_cert()?))
    }

    /// Options presenting `tls`.
    pub fn with_cert(tls: ServerCert) -> Self {
        Self {
            tls,
            oauth: OAuthSettings::default(),
            passwords: Vec::new(),
            auth_debug: false,
        }
    }

    /// Sets the initial token validation.
    pub fn oauth(mut self, settings: OAuthSettings) -> Self {
        self.oauth = settings;
        self
    }

    /// Adds an initial mailbox password.
    pub fn password(mut self, mailbox: &str, password: &str) -> Self {
        self.passwords
            .push((mailbox.to_owned(), password.to_owned()));
        self
    }

    /// Turns on `auth_debug`.
    pub fn auth_debug(mut self, on: bool) -> Self {
        self.auth_debug = on;
        self
    }
}

/// What the auth process is currently configured with.
struct AuthState {
    oauth: OAuthSettings,
    /// Lower-case mailbox → `{SHA256}` hash; plain passwords are not kept.
    passwords: std::collections::BTreeMap<String, String>,
    /// Bumped on every change; the auth process shows it in its OAuth error challenge.
    generation: u64,
}

/// A running Dovecot; stopped (TERM, reaped, leftovers killed) on drop.
pub struct Dovecot {
    child: Child,
    master_pid: u32,
    instance_name: String,
    imap_port: u16,
    imaps_port: u16,
    run_as: RunAs,
    /// The seeder's master-user secret (random per instance).
    seed_secret: String,
    state: Mutex<AuthState>,
    // Removed only after `Drop::drop` has stopped every process.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Dovecot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dovecot")
            .field("instance_name", &self.instance_name)
            .field("imap", &self.imap_addr())
            .field("imaps", &self.imaps_addr())
            .field("master_pid", &self.master_pid)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

enum StartError {
    /// A chosen port was taken before Dovecot bound it; try other ports.
    PortTaken(anyhow::Error),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for StartError {
    fn from(error: anyhow::Error) -> Self {
        Self::Other(error)
    }
}

impl From<std::io::Error> for StartError {
    fn from(error: std::io::Error) -> Self {
        Self::Other(error.into())
    }
}

impl Dovecot {
    /// Starts an instance and waits (bounded) until both ports answer.
    ///
    /// Synchronous, so it works inside and outside a tokio runtime.
    pub fn start(options: DovecotOptions) -> anyhow::Result<Self> {
        let dovecot =
            find_program("dovecot", &["/usr/sbin", "/usr/local/sbin"]).ok_or_else(|| {
                anyhow::anyhow!(
                    "dovecot not found: install the Debian packages dovecot-core dovecot-imapd \
                 (scripts/test does this)"
                )
            })?;
        if dovecot.starts_with("/usr/sbin") && !Path::new("/usr/lib/dovecot/imap-login").exists() {
            bail!("Dovecot's IMAP server is missing: install the Debian package dovecot-imapd");
        }
        config::validate_oauth(&options.oauth)?;
        for (mailbox, password) in &options.passwords {
            config::validate_mailbox(mailbox)?;
            config::validate_password(password)?;
        }
        let run_as = RunAs::detect()?;
        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            match Self::start_once(&dovecot, &run_as, &options) {
                Ok(server) => return Ok(server),
                Err(StartError::PortTaken(error)) => last_error = Some(error),
                Err(StartError::Other(error)) => return Err(error),
            }
        }
        Err(last_error
            .unwrap_or_else(|| anyhow::anyhow!("no attempt made"))
            .context(format!(
                "dovecot did not start after {START_ATTEMPTS} attempts"
            )))
    }

    fn start_once(
        dovecot: &Path,
        run_as: &RunAs,
        options: &DovecotOptions,
    ) -> Result<Self, StartError> {
        let base = if run_as.via_runuser && !process::world_traversable(&std::env::temp_dir()) {
            // The run user could not reach a temp dir under e.g. a 0700 home.
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("threatmail-dovecot-")
            .tempdir_in(&base)
            .with_context(|| format!("failed to create a temp dir in {}", base.display()))?;
        let d = dir.path();
        // The temp dir is 0700; owned by the run user it is still reachable for Dovecot.
        run_as.hand_over(d)?;
        for sub in ["run", "state", "log", "mail", "tls"] {
            run_as.create_dir(&d.join(sub))?;
        }
        run_as.create_dir(&config::key_dir(d))?;
        // Every directory on the way to the key files must be the run user's.
        run_as.hand_over(&d.join("keys"))?;
        run_as.hand_over(&d.join("keys").join("default"))?;

        let random = random_hex(8)?;
        let instance_name = format!("tm-{random}");
        let imap_port = free_port()?;
        let imaps_port = loop {
            let port = free_port()?;
            if port != imap_port {
                break port;
            }
        };
        let seed_secret = random_hex(24)?;

        run_as.write_atomic(
            &d.join("tls/cert.pem"),
            options.tls.cert_pem.as_bytes(),
            0o644,
        )?;
        run_as.write_atomic(
            &d.join("tls/key.pem"),
            options.tls.key_pem.as_bytes(),
            0o600,
        )?;
        let seed_hash = config::password_hash(&seed_secret);
        run_as.write_atomic(
            &d.join("seed.passwd"),
            config::render_passwords([(SEED_MASTER_USER, seed_hash.as_str())]).as_bytes(),
            0o600,
        )?;
        let passwords = options
            .passwords
            .iter()
            .map(|(mailbox, password)| (config::user_key(mailbox), config::password_hash(password)))
            .collect();
        let state = AuthState {
            oauth: options.oauth.clone(),
            passwords,
            generation: 0,
        };
        write_auth_files(run_as, d, &state)?;
        let main = config::MainConfig {
            instance_name: &instance_name,
            dir: d,
            user: &run_as.user,
            group: &run_as.group,
            uid: run_as.uid,
            gid: run_as.gid,
            imap_port,
            imaps_port,
            dh_pem: config::dh_pem(),
            auth_debug: options.auth_debug,
        };
        let conf = d.join("dovecot.conf");
        run_as.write_atomic(&conf, main.render().as_bytes(), 0o644)?;

        let stderr_path = d.join("log/stderr.log");
        let stderr = std::fs::File::create(&stderr_path)?;
        let mut command = if run_as.via_runuser {
            let runuser = find_program("runuser", &["/usr/sbin", "/sbin"])
                .context("runuser not found: install the Debian package util-linux")?;
            let mut command = Command::new(runuser);
            command.args(["-u", &run_as.user, "--"]).arg(dovecot);
            command
        } else {
            Command::new(dovecot)
        };
        command
            .arg("-F")
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone()?)
            .stderr(stderr);
        let child = command
            .spawn()
            .with_context(|| format!("failed to run {}", dovecot.display()))?;

        let mut server = Self {
            child,
            master_pid: 0,
            instance_name,
            imap_port,
            imaps_port,
            run_as: run_as.clone(),
            seed_secret,
            state: Mutex::new(state),
            dir,
        };
        match server.wait_until_ready() {
            Ok(()) => Ok(server),
            Err(error) => {
                let log = config::read_lossy(&server.log_path());
                let stderr = config::read_lossy(&stderr_path);
                let taken = log.contains("Address already in use")
                    || stderr.contains("Address already in use");
                // `server` is dropped here: its processes are stopped and the dir removed.
                let error = error.context(format!(
                    "dovecot (ports {imap_port}/{imaps_port}) did not come up\n\
                     --- dovecot.log ---\n{log}--- stderr ---\n{stderr}"
                ));
                if taken {
                    Err(StartError::PortTaken(error))
                } else {
                    Err(StartError::Other(error))
                }
            }
        }
    }

    /// Polls (bounded) until the master pid file exists, the plain port greets and the TLS
    /// port accepts connections.
    fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        let pid_file = self.dir.path().join("run/master.pid");
        let mut pause = Duration::from_millis(5);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("dovecot exited early with {status}");
            }
            if self.master_pid == 0
                && let Ok(text) = std::fs::read_to_string(&pid_file)
            {
                self.master_pid = text.trim().parse().unwrap_or(0);
            }
            if self.master_pid != 0
                && greets(self.imap_addr()).is_ok()
                && TcpStream::connect_timeout(&self.imaps_addr(), Duration::from_millis(500))
                    .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("timed out after {START_LIMIT:?} waiting for dovecot to listen");
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// The plain IMAP port (`127.0.0.1:PORT`); STARTTLS is offered there too.
    pub fn imap_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.imap_port))
    }

    /// The IMAPS port (implicit TLS); the certificate names `localhost` and `127.0.0.1`.
    pub fn imaps_addr(&self) -> SocketAddr {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.imaps_port))
    }

    /// Dovecot's `instance_name` (its processes are titled `dovecot-<name>/<service>`).
    pub fn instance_name(&self) -> &str {
        &self.instance_name
    }

    /// The root of all mail: one maildir (`LAYOUT=fs`) per lower-case mailbox address.
    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The instance's log (`auth_verbose = yes`: every refusal with its reason).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("log/dovecot.log")
    }

    /// The whole log, for diagnosis.
    pub fn log_text(&self) -> String {
        config::read_lossy(&self.log_path())
    }

    /// The log lines about refused or failed authentications (reload probes left out),
    /// e.g. `oauth2 failed: Local validation failed: Token has expired` or
    /// `passwd-file(bob@corp.test,…): unknown user` (no grant, wrong aud or role).
    pub async fn logged_refusals(&self) -> String {
        let text = tokio::fs::read(self.log_path())
            .await
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|line| !line.contains(PROBE_USER) && !line.contains(": Debug: "))
            .filter(|line| {
                line.contains(" auth: ")
                    || line.contains("auth failed")
                    || line.contains("temporary failure")
            })
            .fold(String::new(), |mut out, line| {
                out.push_str(line);
                out.push('\n');
                out
            })
    }

    /// Replaces the whole token validation setup (issuers, keys, grants) and returns once
    /// new logins are judged by it.
    ///
    /// The files are written atomically, then the master gets SIGHUP and starts a new auth
    /// process, which reads the oauth2 args, key files and grants afresh (the old one
    /// caches keys, and passwd-file only re-stats once a second). To know when that has
    /// happened, each change bumps a generation that the oauth2 args put into
    /// `openid_configuration_url`, which Dovecot echoes in the error challenge of a refused
    /// OAUTHBEARER login. A probe login with a non-token is repeated (bounded) until the
    /// challenge shows the new generation: from then on new connections reach an auth
    /// process that loaded everything written before the HUP.
    pub fn set_oauth(&self, settings: &OAuthSettings) -> anyhow::Result<()> {
        config::validate_oauth(settings)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.oauth = settings.clone();
        self.apply(&mut state)
    }

    /// Sets (or changes) the password for plain `LOGIN` to `mailbox`, effective on return
    /// (same reload as [`Dovecot::set_oauth`]).
    pub fn set_password(&self, mailbox: &str, password: &str) -> anyhow::Result<()> {
        config::validate_mailbox(mailbox)?;
        config::validate_password(password)?;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state
            .passwords
            .insert(config::user_key(mailbox), config::password_hash(password));
        self.apply(&mut state)
    }

    /// Removes the password of `mailbox`; plain `LOGIN` to it is refused on return.
    pub fn remove_password(&self, mailbox: &str) -> anyhow::Result<()> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.passwords.remove(&config::user_key(mailbox));
        self.apply(&mut state)
    }

    fn apply(&self, state: &mut AuthState) -> anyhow::Result<()> {
        state.generation += 1;
        write_auth_files(&self.run_as, self.dir.path(), state)?;
        process::send_signal(self.master_pid, "HUP")?;
        self.wait_for_generation(state.generation)
    }

    /// Probes (bounded) until the auth process reports `generation`.
    fn wait_for_generation(&self, generation: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + RELOAD_LIMIT;
        let mut pause = Duration::from_millis(5);
        loop {
            let seen = probe_generation(self.imap_addr());
            if matches!(seen, Ok(Some(g)) if g == generation) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {RELOAD_LIMIT:?} waiting for dovecot to load config \
                     generation {generation} (last probe: {seen:?})"
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Appends `messages` (raw bytes, stored exactly as given) to `folder` of `mailbox`,
    /// creating the folder and its parents first. One connection, one MULTIAPPEND per
    /// 8 MiB of messages.
    pub async fn append(
        &self,
        mailbox: &str,
        folder: &str,
        messages: &[Vec<u8>],
    ) -> anyhow::Result<()> {
        let levels = seed::folder_levels(folder)?;
        let mut session = self.seed_session(mailbox).await?;
        session.create_all(&levels).await?;
        let raw = levels.last().context("a folder has at least one level")?;
        for batch in seed::batches(messages) {
            session
                .append_batch(raw, &batch)
                .await
                .with_context(|| format!("failed to seed {mailbox} {folder:?}"))?;
        }
        session.logout().await;
        Ok(())
    }

    /// Creates `folder` (a display name such as `Входящие/Фишинг`) and its parents.
    pub async fn create_folder(&self, mailbox: &str, folder: &str) -> anyhow::Result<()> {
        self.append(mailbox, folder, &[]).await
    }

    /// Appends every `*.eml` file of `dir`, sorted by file name; returns how many.
    pub async fn load_dir(&self, mailbox: &str, folder: &str, dir: &Path) -> anyhow::Result<usize> {
        let mut paths = Vec::new();
        let mut entries = tokio::fs::read_dir(dir)
            .await
            .with_context(|| format!("failed to read {}", dir.display()))?;
        while let Some(entry) = entries.next_entry().await? {
            let path = entry.path();
            let is_eml = path
                .extension()
                .is_some_and(|ext| ext.eq_ignore_ascii_case("eml"));
            if is_eml && entry.file_type().await?.is_file() {
                paths.push(path);
            }
        }
        paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        let mut messages = Vec::with_capacity(paths.len());
        for path in &paths {
            messages.push(
                tokio::fs::read(path)
                    .await
                    .with_context(|| format!("failed to read {}", path.display()))?,
            );
        }
        self.append(mailbox, folder, &messages).await?;
        Ok(messages.len())
    }

    /// A session logged in to `mailbox` as the seeding master user.
    async fn seed_session(&self, mailbox: &str) -> anyhow::Result<seed::SeedSession> {
        config::validate_mailbox(mailbox)?;
        let mut session = seed::SeedSession::connect(self.imap_addr()).await?;
        let user = format!("{mailbox}{MASTER_SEPARATOR}{SEED_MASTER_USER}");
        session.login(&user, &self.seed_secret).await?;
        Ok(session)
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // TERM the master, which stops its children; wait (bounded) for it to go.
        if self.master_pid != 0 {
            let _ = process::send_signal(self.master_pid, "TERM");
        } else {
            let _ = process::send_signal(self.child.id(), "TERM");
        }
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() >= deadline => {
                    if self.master_pid != 0 {
                        let _ = process::send_signal(self.master_pid, "KILL");
                    }
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        // Anything the master left behind (it should leave nothing) is killed by title.
        process::kill_leftovers(&format!("dovecot-{}/", self.instance_name), STOP_LIMIT);
    }
}

/// Writes the oauth2 args, key files, grants and passwords for `state`.
fn write_auth_files(run_as: &RunAs, dir: &Path, state: &AuthState) -> anyhow::Result<()> {
    let key_dir = config::key_dir(dir);
    for key in &state.oauth.signing_keys {
        run_as.write_atomic(
            &key_dir.join(&key.kid),
            key.public_key_pem.as_bytes(),
            0o644,
        )?;
    }
    // Keys no longer configured go away (a revoked key must stop working).
    for entry in std::fs::read_dir(&key_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let keep = state
            .oauth
            .signing_keys
            .iter()
            .any(|key| std::ffi::OsStr::new(&key.kid) == name);
        if !keep {
            std::fs::remove_file(entry.path())?;
        }
    }
    run_as.write_atomic(
        &dir.join("grants.passwd"),
        config::render_grants(&state.oauth.grants).as_bytes(),
        0o600,
    )?;
    run_as.write_atomic(
        &dir.join("passwords.passwd"),
        config::render_passwords(
            state
                .passwords
                .iter()
                .map(|(u, h)| (u.as_str(), h.as_str())),
        )
        .as_bytes(),
        0o600,
    )?;
    run_as.write_atomic(
        &dir.join("oauth2.conf"),
        config::render_oauth2(dir, &state.oauth, state.generation).as_bytes(),
        0o600,
    )?;
    Ok(())
}

/// Connects and reads the `* OK` greeting (short timeouts).
fn greets(addr: SocketAddr) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    stream.set_read_timeout(Some(Duration::from_millis(1000)))?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("* OK") {
        bail!("unexpected greeting {line:?}");
    }
    Ok(())
}

/// One refused OAUTHBEARER login with a non-token; returns the config generation the
/// auth process put into its error challenge (`None` when there was no challenge).
fn probe_generation(addr: SocketAddr) -> anyhow::Result<Option<u64>> {
    let timeout = Duration::from_secs(5);
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    if !line.starts_with("* OK") {
        bail!("unexpected greeting {line:?}");
    }
    let response = STANDARD.encode(format!("n,a={PROBE_USER},\x01auth=Bearer probe\x01\x01"));
    writer.write_all(format!("p AUTHENTICATE OAUTHBEARER {response}\r\n").as_bytes())?;
    let mut generation = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("the server closed the connection during the probe");
        }
        if let Some(challenge) = line.strip_prefix("+ ") {
            let json = STANDARD.decode(challenge.trim_end())?;
            let json = String::from_utf8_lossy(&json);
            generation = json.split_once(GENERATION_MARKER).and_then(|(_, rest)| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse().ok()
            });
            // The client must answer the error challenge before the tagged NO comes.
            writer.write_all(b"\r\n")?;
        } else if line.starts_with("p ") {
            break;
        }
    }
    let _ = writer.write_all(b"q LOGOUT\r\n");
    // Drain so the server does not log a reset; errors do not matter any more.
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    Ok(generation)
}

/// `bytes` random bytes as lower-case hex.
fn random_hex(bytes: usize) -> anyhow::Result<String> {
    use ring::rand::SecureRandom as _;
    let mut buf = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| anyhow::anyhow!("failed to get random bytes"))?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}
