//! End-to-end folder sync (fetch, parse, extract, store) over TLS + XOAUTH2, side by side in
//! the same run with a bare async-imap `UID FETCH 1:* BODY.PEEK[]` of the same folder (the
//! ceiling) and with mbsync (Debian's isync) pulling the same folder into a Maildir.
//!
//! The test kit's local stack runs: a real Dovecot (implicit TLS, tokens judged like
//! Exchange Online), the Entra stand-in and a real Redis. The phishing corpus is copied
//! until there are `--messages` distinct messages (each copy gets its own `Message-ID` and
//! first header line, so the store's identity keeps every one) and appended to one folder.
//! Then the contenders run one after another, each starting from nothing, every run of
//! ours and of mbsync between two ceiling runs (`C O C M C M C O C`, `--rounds` pairs)
//! and compared with them, so load changes on a shared machine hit both sides alike:
//!
//! - **ours**: connect, TLS, `AUTHENTICATE XOAUTH2` with a stand-in token, then
//!   `threatmail_fetcher::sync::sync_folder` with its default limits into a fresh
//!   `threatmail_store::Store` (the Redis flushed, blobs in a directory with every file
//!   synced); fails unless exactly `--messages` records are stored;
//! - **ceiling**: the same connect and login, `EXAMINE`, then async-imap's `uid_fetch("1:*",
//!   "BODY.PEEK[]")`, every body read fully and counted, nothing else;
//! - **mbsync**: `mbsync` with a generated config pulling the folder into a fresh Maildir
//!   (`Sync Pull`, its default `FSync yes`), over the same TLS port. It logs in with
//!   XOAUTH2 through Cyrus SASL's `kdexoauth2` plugin (Debian package
//!   `libsasl2-modules-kdexoauth2`) when that works, otherwise with the mailbox password that
//!   the test Dovecot is given for it (`--mbsync-auth login` forces that).
//!
//! Each run writes into a directory of its own under `target/bench/`, and all of them are
//! removed after the last run, not between runs: creating thousands of files on ext4 just
//! after thousands were deleted costs kernel time that belongs to the deletion.
//!
//! Secrets stay out of argv and output: mbsync reads its password or token from a 0600 file
//! through `PassCmd`.
//!
//! ```text
//! cargo run --release -p threatmail-bench --bin sync -- [--messages 12000] [--rounds 3] [--mbsync-auth auto|xoauth2|login] [--only ceiling|ours|mbsync]
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use secrecy::SecretString;
use threatmail_fetcher::connections::ConnectionSlots;
use threatmail_fetcher::imap::Session;
use threatmail_fetcher::imap::connect::{Endpoint, connect, tls_config};
use threatmail_fetcher::imap::login::{Credentials, login};
use threatmail_fetcher::imap::select_folder::Access;
use threatmail_fetcher::sync::{SyncContext, SyncLimits, sync_folder};
use threatmail_source::SourceId;
use threatmail_store::{BlobStore, Store};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{PHISH_MAILBOX, TenantFixture};

/// The folder synced (a space in it, so every client has to quote it).
const FOLDER: &str = "Bench Sync";
/// Connect, login and every command's limit: generous, this is a large folder.
const LIMIT: Duration = Duration::from_secs(600);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum MbsyncAuth {
    Auto,
    XOAuth2,
    Login,
}

struct Args {
    messages: usize,
    rounds: usize,
    mbsync_auth: MbsyncAuth,
    /// Run only one contender (for profiling).
    only: Option<Contender>,
    /// Ours keeps blobs in memory instead of a directory (to see the disk's share).
    memory_blobs: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut parsed = Args {
        messages: 12_000,
        rounds: 3,
        mbsync_auth: MbsyncAuth::Auto,
        only: None,
        memory_blobs: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--messages" => parsed.messages = value.parse::<usize>()?.max(1),
            "--rounds" => parsed.rounds = value.parse::<usize>()?.max(1),
            "--mbsync-auth" => {
                parsed.mbsync_auth = match value.as_str() {
                    "auto" => MbsyncAuth::Auto,
                    "xoauth2" => MbsyncAuth::XOAuth2,
                    "login" => MbsyncAuth::Login,
                    _ => bail!("--mbsync-auth takes auto, xoauth2 or login"),
                }
            }
            "--blobs" => {
                parsed.memory_blobs = match value.as_str() {
                    "dir" => false,
                    "memory" => true,
                    _ => bail!("--blobs takes dir or memory"),
                }
            }
            "--only" => {
                parsed.only = Some(match value.as_str() {
                    "ceiling" => Contender::Ceiling,
                    "ours" => Contender::Ours,
                    "mbsync" => Contender::Mbsync,
                    _ => bail!("--only takes ceiling, ours or mbsync"),
                })
            }
            _ => bail!("unknown argument {arg}; use --messages, --rounds, --mbsync-auth, --only"),
        }
    }
    Ok(parsed)
}

/// Line ends made CRLF, as IMAP carries a message.
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32);
    let mut previous = 0u8;
    for &byte in raw {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        out.push(byte);
        previous = byte;
    }
    out
}

/// Copy `index` of `raw`: a first header line naming the copy and its own `Message-ID`;
/// the original `Message-ID` header (if any) is kept under another name, so the store's
/// identity (SHA-256, then Message-ID + Date + From) sees a new message.
fn distinct_copy(raw: &[u8], index: usize) -> Vec<u8> {
    let mut out =
        format!("X-Bench-Copy: {index}\r\nMessage-ID: <bench-sync-{index}@threatmail.invalid>\r\n")
            .into_bytes();
    out.reserve(raw.len() + 16);
    let mut in_header = true;
    for line in raw.split_inclusive(|&b| b == b'\n') {
        if in_header && (line == b"\r\n" || line == b"\n") {
            in_header = false;
        }
        if in_header && line.len() >= 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
            out.extend_from_slice(b"X-Original-");
        }
        out.extend_from_slice(line);
    }
    out
}

/// One contender's run.
#[derive(Debug, Clone, Copy)]
struct Run {
    elapsed: Duration,
    messages: usize,
    /// What it kept: bodies read, blobs written, Maildir files (checked, not reported).
    bytes: u64,
    /// The folder's size (the same for every contender): MB/s are of this.
    folder_bytes: u64,
    /// CPU on the client side: this process (ceiling), this process and Redis (ours),
    /// the mbsync process (mbsync).
    client_cpu: Duration,
    /// CPU of Dovecot's processes for the session (imap-login's TLS, imap).
    server_cpu: Duration,
    /// Of `client_cpu`, Redis's share (ours only).
    redis_cpu: Duration,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64()
    }

    fn megabytes_per_second(&self) -> f64 {
        self.folder_bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    fn client_cpu_per_message(&self) -> Duration {
        self.client_cpu / u32::try_from(self.messages.max(1)).unwrap_or(u32::MAX)
    }

    fn redis_cpu_per_message(&self) -> Duration {
        self.redis_cpu / u32::try_from(self.messages.max(1)).unwrap_or(u32::MAX)
    }

    fn server_cpu_per_message(&self) -> Duration {
        self.server_cpu / u32::try_from(self.messages.max(1)).unwrap_or(u32::MAX)
    }
}

/// CPU times at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    /// This process's threads.
    own: Duration,
    /// This process's children that have been waited for (mbsync).
    children: Duration,
    /// Dovecot's master and its reaped children (a session's imap-login and imap
    /// processes are counted once they have exited).
    dovecot: Duration,
    /// redis-server (`INFO cpu`).
    redis: Duration,
}

/// (user + system, children's user + system) of a process, from `/proc/<pid>/stat`.
fn proc_cpu(pid: &str) -> anyhow::Result<(Duration, Duration)> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("failed to read {path}"))?;
    // Fields after the command name (in parentheses, may hold spaces): utime, stime,
    // cutime, cstime are fields 14 to 17 of the line, 12 to 15 after the name.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("malformed stat")?;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    anyhow::ensure!(fields.len() == 4, "malformed {path}");
    // The kernel's USER_HZ is 100 on every Linux this runs on.
    let ticks = |t: u64| Duration::from_millis(t * 10);
    Ok((ticks(fields[0] + fields[1]), ticks(fields[2] + fields[3])))
}

struct Bench {
    stack: LocalStack,
    tls: Arc<rustls::ClientConfig>,
    expected_messages: usize,
    expected_bytes: u64,
    scratch: PathBuf,
    memory_blobs: bool,
    /// The directories runs wrote, removed only after the last run: ext4 avoids reusing
    /// inodes freed in the last minutes and checks each candidate on disk
    /// (`recently_deleted` in `fs/ext4/ialloc.c`), so a run creating thousands of files
    /// right after another run deleted thousands pays for that deletion in kernel time.
    written: std::sync::Mutex<Vec<PathBuf>>,
}

impl Bench {
    fn endpoint(&self) -> Endpoint {
        Endpoint {
            host: "localhost".to_owned(),
            port: self.stack.dovecot.imaps_addr().port(),
            tls: true,
        }
    }

    /// CPU times now; Dovecot's after a pause, so that a session that just logged out has
    /// been reaped by its master.
    async fn cpu(&self) -> anyhow::Result<Cpu> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (own, children) = proc_cpu("self")?;
        let pid_file = self
            .stack
            .dovecot
            .mail_dir()
            .parent()
            .context("the mail dir has a parent")?
            .join("run/master.pid");
        let pid = std::fs::read_to_string(&pid_file)
            .with_context(|| format!("failed to read {}", pid_file.display()))?;
        let (master, reaped) = proc_cpu(pid.trim())?;
        let mut conn = self.redis_connection().await?;
        let info: String = redis::cmd("INFO").arg("cpu").query_async(&mut conn).await?;
        let seconds = |key: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        Ok(Cpu {
            own,
            children,
            dovecot: master + reaped,
            redis: Duration::from_secs_f64(seconds("used_cpu_user:") + seconds("used_cpu_sys:")),
        })
    }

    /// A Redis connection with the fetcher's reply timeout (its `command_timeout`; the
    /// client's default half second is too short for a FLUSHALL of the last round).
    async fn redis_connection(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        let config = redis::aio::ConnectionManagerConfig::new().set_response_timeout(Some(LIMIT));
        Ok(self
            .stack
            .redis
            .client()
            .get_connection_manager_with_config(config)
            .await?)
    }

    /// A stand-in token, fetched before the clock starts (a fetcher gets it from the
    /// broker's cache).
    async fn token(&self) -> anyhow::Result<SecretString> {
        Ok(SecretString::from(
            self.stack.primary_token().await?.access_token,
        ))
    }

    /// TCP, TLS, greeting and `AUTHENTICATE XOAUTH2`, as the fetcher does it.
    async fn session(&self, token: SecretString) -> anyhow::Result<Session> {
        let client = connect(&self.endpoint(), self.tls.clone(), LIMIT).await?;
        let credentials = Credentials::XOAuth2 {
            user: PHISH_MAILBOX.to_owned(),
            token,
        };
        Ok(login(client, &credentials, "dovecot", LIMIT).await?)
    }

    /// The ceiling: a bare `UID FETCH 1:* BODY.PEEK[]`, every body read.
    async fn ceiling(&self) -> anyhow::Result<Run> {
        let token = self.token().await?;
        let before = self.cpu().await?;
        let started = Instant::now();
        let mut session = self.session(token).await?;
        session.examine(FOLDER).await?;
        let mut messages = 0;
        let mut bytes = 0u64;
        {
            let mut fetches = session.uid_fetch("1:*", "BODY.PEEK[]").await?;
            while let Some(fetch) = fetches.next().await {
                let fetch = fetch?;
                let body = fetch.body().context("a FETCH response without a body")?;
                bytes += body.len() as u64;
                messages += 1;
            }
        }
        session.logout().await?;
        let elapsed = started.elapsed();
        let after = self.cpu().await?;
        let run = Run {
            elapsed,
            messages,
            bytes,
            folder_bytes: self.expected_bytes,
            client_cpu: after.own.saturating_sub(before.own),
            server_cpu: after.dovecot.saturating_sub(before.dovecot),
            redis_cpu: Duration::ZERO,
        };
        self.check("ceiling", &run)?;
        Ok(run)
    }

    /// A new directory for one run, removed by [`Bench::remove_written`].
    fn run_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        let mut written = self
            .written
            .lock()
            .map_err(|_| anyhow::anyhow!("a run panicked"))?;
        let dir = self
            .scratch
            .join(format!("{name}-{}-{}", std::process::id(), written.len()));
        remove_if_there(&dir)?;
        written.push(dir.clone());
        Ok(dir)
    }

    /// Removes every run's directory (after the last run).
    fn remove_written(&self) -> anyhow::Result<()> {
        let written = std::mem::take(
            &mut *self
                .written
                .lock()
                .map_err(|_| anyhow::anyhow!("a run panicked"))?,
        );
        written.iter().try_for_each(|dir| remove_if_there(dir))
    }

    /// Ours: `sync_folder` into a fresh store (Redis flushed, a new blob directory).
    async fn ours(&self) -> anyhow::Result<Run> {
        let mut admin = self.redis_connection().await?;
        let _: () = redis::cmd("FLUSHALL").query_async(&mut admin).await?;
        let blobs = self.run_dir("sync-blobs")?;
        let store = Store::new(
            self.redis_connection().await?,
            if self.memory_blobs {
                BlobStore::object_store(Arc::new(object_store::memory::InMemory::new()), "")
            } else {
                BlobStore::directory(&blobs)
            },
        );
        let source_id = SourceId::new_random();
        let limits = SyncLimits {
            command_timeout: LIMIT,
            ..SyncLimits::default()
        };
        // As the scheduler does: the fleet's throttling holds are read before each batch.
        let holds = ConnectionSlots::new(self.redis_connection().await?);
        let token = self.token().await?;
        let before = self.cpu().await?;
        let started = Instant::now();
        let mut session = self.session(token).await?;
        let lease = store
            .acquire_lease(&source_id, FOLDER, "bench", limits.lease_ttl)
            .await?
            .context("the lease is free")?;
        let context = SyncContext {
            server: "dovecot",
            user: PHISH_MAILBOX,
            store: &store,
            source_id: &source_id,
            access: Access::ReadOnly,
            limits: &limits,
            holds: Some(&holds),
        };
        let report = sync_folder(&mut session, context, FOLDER, &lease).await?;
        store.release_lease(&lease).await?;
        session.logout().await?;
        let elapsed = started.elapsed();
        let after = self.cpu().await?;
        let stored = store.count(&source_id).await?;
        if report.stored != self.expected_messages || stored != self.expected_messages {
            bail!(
                "ours stored {} records (report: {report:?}), expected {}",
                stored,
                self.expected_messages
            );
        }
        let run = Run {
            elapsed,
            messages: report.stored,
            bytes: if self.memory_blobs {
                self.expected_bytes
            } else {
                dir_bytes(&blobs)?.1
            },
            folder_bytes: self.expected_bytes,
            client_cpu: (after.own + after.redis).saturating_sub(before.own + before.redis),
            server_cpu: after.dovecot.saturating_sub(before.dovecot),
            redis_cpu: after.redis.saturating_sub(before.redis),
        };
        self.check("ours", &run)?;
        Ok(run)
    }

    /// mbsync into a fresh Maildir.
    async fn mbsync(&self, auth: MbsyncAuth, secret: &str) -> anyhow::Result<Run> {
        let dir = self.run_dir("sync-mbsync")?;
        std::fs::create_dir_all(dir.join("maildir"))?;
        let secret_file = dir.join("secret");
        write_private(&secret_file, secret.as_bytes())?;
        let config = dir.join("mbsyncrc");
        let mechanism = match auth {
            MbsyncAuth::XOAuth2 => "XOAUTH2",
            _ => "LOGIN",
        };
        let text = format!(
            "IMAPAccount bench\n\
             Host localhost\n\
             Port {port}\n\
             User {PHISH_MAILBOX}\n\
             PassCmd \"cat {secret}\"\n\
             AuthMechs {mechanism}\n\
             SSLType IMAPS\n\
             CertificateFile {ca}\n\
             \n\
             IMAPStore far\n\
             Account bench\n\
             \n\
             MaildirStore near\n\
             Path {maildir}/\n\
             Inbox {maildir}/INBOX\n\
             \n\
             Channel bench\n\
             Far :far:\"{FOLDER}\"\n\
             Near :near:bench\n\
             Sync Pull\n\
             Create Near\n\
             Expunge None\n\
             SyncState *\n",
            port = self.stack.dovecot.imaps_addr().port(),
            secret = secret_file.display(),
            ca = self.stack.ca_cert_path().display(),
            maildir = dir.join("maildir").display(),
        );
        write_private(&config, text.as_bytes())?;
        let before = self.cpu().await?;
        let started = Instant::now();
        let output = Command::new("mbsync")
            .arg("-q")
            .arg("-c")
            .arg(&config)
            .arg("bench")
            .env("HOME", &dir)
            .output()
            .context("failed to run mbsync (Debian package isync)")?;
        let elapsed = started.elapsed();
        let after = self.cpu().await?;
        if !output.status.success() {
            bail!(
                "mbsync ({mechanism}) failed with {}: {}{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let maildir = dir.join("maildir/bench");
        let (new, new_bytes) = dir_bytes(&maildir.join("new"))?;
        let (cur, cur_bytes) = dir_bytes(&maildir.join("cur"))?;
        let run = Run {
            elapsed,
            messages: new + cur,
            bytes: new_bytes + cur_bytes,
            folder_bytes: self.expected_bytes,
            client_cpu: after.children.saturating_sub(before.children),
            server_cpu: after.dovecot.saturating_sub(before.dovecot),
            redis_cpu: Duration::ZERO,
        };
        self.check("mbsync", &run)?;
        Ok(run)
    }

    /// Every contender must end with every message, and (give or take line ends: mbsync
    /// keeps CRLF as Dovecot sends it) every byte.
    fn check(&self, who: &str, run: &Run) -> anyhow::Result<()> {
        if run.messages != self.expected_messages {
            bail!(
                "{who} got {} messages, expected {}",
                run.messages,
                self.expected_messages
            );
        }
        if run.bytes < self.expected_bytes * 95 / 100 {
            bail!(
                "{who} got {} bytes, expected about {}",
                run.bytes,
                self.expected_bytes
            );
        }
        Ok(())
    }
}

/// (files, bytes) directly or below `dir`.
fn dir_bytes(dir: &Path) -> anyhow::Result<(usize, u64)> {
    let mut files = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("failed to read {}", dir.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                files += 1;
                bytes += entry.metadata()?.len();
            }
        }
    }
    Ok((files, bytes))
}

fn remove_if_there(dir: &Path) -> anyhow::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("failed to remove {}", dir.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// 32 hex digits from the kernel's random source.
fn random_hex() -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Contender {
    Ceiling,
    Ours,
    Mbsync,
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = args()?;
    let corpus_dir = threatmail_bench::corpus_dir().join("phishing");
    let files = threatmail_bench::eml_files(&corpus_dir)?;
    if files.is_empty() {
        bail!(
            "no corpus at {} (set THREATMAIL_CORPUS)",
            corpus_dir.display()
        );
    }
    let corpus: Vec<Vec<u8>> = files
        .iter()
        .map(|path| Ok(crlf(&std::fs::read(path)?)))
        .collect::<anyhow::Result<_>>()?;
    let messages: Vec<Vec<u8>> = (0..args.messages)
        .map(|i| distinct_copy(&corpus[i % corpus.len()], i))
        .collect();
    let expected_bytes: u64 = messages.iter().map(|m| m.len() as u64).sum();

    let started = Instant::now();
    let stack = LocalStack::start(TenantFixture::everything_right()).await?;
    stack
        .dovecot
        .append(PHISH_MAILBOX, FOLDER, &messages)
        .await?;
    drop(messages);
    println!(
        "sync bench: {} messages ({:.1} MB, from {} corpus files) in {PHISH_MAILBOX} {FOLDER:?} on Dovecot 127.0.0.1:{} (TLS), seeded in {:.1} s",
        args.messages,
        expected_bytes as f64 / 1e6,
        corpus.len(),
        stack.dovecot.imaps_addr().port(),
        started.elapsed().as_secs_f64()
    );
    let ca = std::fs::read(stack.ca_cert_path())?;
    let tls = tls_config(Some(&ca)).map_err(anyhow::Error::msg)?;
    let bench = Bench {
        stack,
        tls,
        expected_messages: args.messages,
        expected_bytes,
        scratch: threatmail_bench::scratch_dir()?,
        memory_blobs: args.memory_blobs,
        written: std::sync::Mutex::new(Vec::new()),
    };

    // mbsync's login: XOAUTH2 through the SASL plugin when it works, else a password (the
    // mailbox has none until then, so an XOAUTH2 run cannot have used one).
    let mbsync_auth = match args.mbsync_auth {
        MbsyncAuth::Auto if args.only.is_some_and(|only| only != Contender::Mbsync) => {
            MbsyncAuth::Login
        }
        MbsyncAuth::Auto => {
            let token = bench.stack.primary_token().await?.access_token;
            match probe_mbsync_xoauth2(&bench, &token).await {
                Ok(()) => MbsyncAuth::XOAuth2,
                Err(error) => {
                    println!(
                        "mbsync: XOAUTH2 did not work ({error:#}); using LOGIN with a password"
                    );
                    MbsyncAuth::Login
                }
            }
        }
        chosen => chosen,
    };
    let password = random_hex()?;
    if mbsync_auth == MbsyncAuth::Login {
        bench.stack.dovecot.set_password(PHISH_MAILBOX, &password)?;
    }
    println!("mbsync logs in with {mbsync_auth:?}");

    // Each of ours and mbsync runs between two ceiling runs (shared with its neighbours):
    // C O C M C M C O C …, so each is compared with the ceiling measured right before and
    // right after it, under the same load. Rounds swap the order of ours and mbsync.
    let mut sequence = vec![Contender::Ceiling];
    for round in 0..args.rounds {
        let pair = if round % 2 == 0 {
            [Contender::Ours, Contender::Mbsync]
        } else {
            [Contender::Mbsync, Contender::Ours]
        };
        for contender in pair {
            sequence.extend([contender, Contender::Ceiling]);
        }
    }
    if let Some(only) = args.only {
        sequence = vec![only; args.rounds];
    }
    let mut runs: Vec<(Contender, Run)> = Vec::new();
    for contender in sequence {
        let run = match contender {
            Contender::Ceiling => bench.ceiling().await?,
            Contender::Ours => bench.ours().await?,
            Contender::Mbsync => {
                let secret = match mbsync_auth {
                    MbsyncAuth::XOAuth2 => bench.stack.primary_token().await?.access_token,
                    _ => password.clone(),
                };
                bench.mbsync(mbsync_auth, &secret).await?
            }
        };
        println!(
            "run {}: {contender:?}: {} messages in {:.2} s = {:.0} msg/s, {:.1} MB/s; CPU per message: client {:.0} us (Redis {:.0} us), Dovecot {:.0} us",
            runs.len() + 1,
            run.messages,
            run.elapsed.as_secs_f64(),
            run.per_second(),
            run.megabytes_per_second(),
            run.client_cpu_per_message().as_secs_f64() * 1e6,
            run.redis_cpu_per_message().as_secs_f64() * 1e6,
            run.server_cpu_per_message().as_secs_f64() * 1e6,
        );
        runs.push((contender, run));
    }
    bench.remove_written()?;

    let of = |who: Contender| -> Vec<Run> {
        runs.iter()
            .filter(|(c, _)| *c == who)
            .map(|(_, r)| *r)
            .collect()
    };
    let (ceiling, ours, mbsync) = (
        of(Contender::Ceiling),
        of(Contender::Ours),
        of(Contender::Mbsync),
    );
    for (name, list) in [("ceiling", &ceiling), ("ours", &ours), ("mbsync", &mbsync)] {
        if list.is_empty() {
            continue;
        }
        let cpu = |f: fn(&Run) -> Duration| {
            median(list.iter().map(|r| f(r).as_secs_f64() * 1e6).collect())
        };
        println!(
            "{name}: median {:.0} msg/s, {:.1} MB/s; CPU per message: client {:.0} us (Redis {:.0} us), Dovecot {:.0} us",
            median(list.iter().map(Run::per_second).collect()),
            median(list.iter().map(Run::megabytes_per_second).collect()),
            cpu(Run::client_cpu_per_message),
            cpu(Run::redis_cpu_per_message),
            cpu(Run::server_cpu_per_message),
        );
    }
    if args.only.is_some() {
        return Ok(());
    }
    // Each run against the mean rate of the ceiling runs right before and after it.
    let against_neighbours = |who: Contender| -> Vec<f64> {
        runs.iter()
            .enumerate()
            .filter(|(_, (c, _))| *c == who)
            .filter_map(|(i, (_, run))| {
                let before = runs.get(i.checked_sub(1)?)?.1.per_second();
                let after = runs.get(i + 1)?.1.per_second();
                Some(run.per_second() / ((before + after) / 2.0))
            })
            .collect()
    };
    let pooled = |list: &[Run]| {
        list.iter().map(|r| r.messages).sum::<usize>() as f64
            / list.iter().map(|r| r.elapsed.as_secs_f64()).sum::<f64>()
    };
    let ours_vs_ceiling = against_neighbours(Contender::Ours);
    let mbsync_vs_ceiling = against_neighbours(Contender::Mbsync);
    println!(
        "ours / ceiling (each run against the ceiling runs beside it): median {:.2}x (runs {}), pooled {:.2}x (target >= 0.5x)",
        median(ours_vs_ceiling.clone()),
        list(&ours_vs_ceiling),
        pooled(&ours) / pooled(&ceiling)
    );
    println!(
        "mbsync / ceiling (the same way): median {:.2}x (runs {})",
        median(mbsync_vs_ceiling.clone()),
        list(&mbsync_vs_ceiling),
    );
    // Ours against the mbsync run of the same round (adjacent, one ceiling run between).
    let vs_mbsync: Vec<f64> = ours
        .iter()
        .zip(&mbsync)
        .map(|(o, m)| o.per_second() / m.per_second())
        .collect();
    println!(
        "ours / mbsync ({mbsync_auth:?}): median {:.2}x (rounds {}), pooled {:.2}x, by the ceiling ratios {:.2}x (target > 1x)",
        median(vs_mbsync.clone()),
        list(&vs_mbsync),
        pooled(&ours) / pooled(&mbsync),
        median(ours_vs_ceiling.clone()) / median(mbsync_vs_ceiling.clone()),
    );
    Ok(())
}

fn list(values: &[f64]) -> String {
    values
        .iter()
        .map(|v| format!("{v:.2}x"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether mbsync can log in with XOAUTH2 (the kdexoauth2 SASL plugin): a run against an
/// empty folder.
async fn probe_mbsync_xoauth2(bench: &Bench, token: &str) -> anyhow::Result<()> {
    let dir = bench.scratch.join("sync-mbsync-probe");
    remove_if_there(&dir)?;
    std::fs::create_dir_all(dir.join("maildir"))?;
    let secret_file = dir.join("secret");
    write_private(&secret_file, token.as_bytes())?;
    let config = dir.join("mbsyncrc");
    let text = format!(
        "IMAPAccount probe\n\
         Host localhost\n\
         Port {port}\n\
         User {PHISH_MAILBOX}\n\
         PassCmd \"cat {secret}\"\n\
         AuthMechs XOAUTH2\n\
         SSLType IMAPS\n\
         CertificateFile {ca}\n\
         \n\
         IMAPStore far\n\
         Account probe\n\
         \n\
         MaildirStore near\n\
         Path {dir}/maildir/\n\
         Inbox {dir}/maildir/INBOX\n\
         \n\
         Channel probe\n\
         Far :far:INBOX\n\
         Near :near:probe\n\
         Sync Pull\n\
         Create Near\n\
         Expunge None\n\
         SyncState *\n",
        port = bench.stack.dovecot.imaps_addr().port(),
        secret = secret_file.display(),
        ca = bench.stack.ca_cert_path().display(),
        dir = dir.display(),
    );
    write_private(&config, text.as_bytes())?;
    let logins_before = xoauth2_logins(bench);
    let output = Command::new("mbsync")
        .arg("-c")
        .arg(&config)
        .arg("probe")
        .env("HOME", &dir)
        .output()
        .context("failed to run mbsync (Debian package isync)")?;
    remove_if_there(&dir)?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let last = said.lines().rev().find(|l| !l.trim().is_empty());
        bail!(
            "mbsync exited with {}: {}",
            output.status,
            last.unwrap_or("no message")
        );
    }
    // Dovecot logs each login with its mechanism (through its log process, so a moment
    // later): the probe's must show up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while xoauth2_logins(bench) <= logins_before {
        if Instant::now() >= deadline {
            bail!("mbsync succeeded but Dovecot logged no new XOAUTH2 login");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Logins Dovecot logged as XOAUTH2 (`imap-login: Info: Login: user=<…>, method=XOAUTH2, …`).
fn xoauth2_logins(bench: &Bench) -> usize {
    bench
        .stack
        .dovecot
        .log_text()
        .lines()
        .filter(|l| l.contains("imap-login: Info: Login:") && l.contains("method=XOAUTH2"))
        .count()
}
