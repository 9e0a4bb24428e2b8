//! The fleet under test: the local stack (Redis, the Entra stand-in, Dovecot judging tokens
//! like Exchange) and the token broker in-process, a source written to Redis as the registry
//! writes it, and fetchers as real `threatmail-fetcher` processes, each started from its own
//! configuration file with short polls, leases and batches, its JSON log in a temp dir, and
//! killed when dropped.
//!
//! What the fetchers committed is read back from their logs: the store logs every committed
//! batch (folder, fencing token, first and last UID) and every write refused for a stale
//! fence at debug level, and each log file belongs to one process.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use secrecy::SecretString;
use threatmail_auth::ServiceCredential;
use threatmail_source::{
    FolderSelection, Keyring, MasterKey, SecretSlot, SourceId, SourceRecord, SourceStore,
};
use threatmail_store::identity::{Identity, sha256_hex};
use threatmail_store::{BlobStore, MessageId, MessageRef, Store};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a test waits for the fleet to converge.
pub(crate) const CONVERGE: Duration = Duration::from_secs(90);

/// Lease timing of the fetchers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) lease_ttl: Duration,
    pub(crate) renew_interval: Duration,
    pub(crate) batch_messages: usize,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            lease_ttl: Duration::from_millis(1500),
            renew_interval: Duration::from_millis(300),
            batch_messages: 4,
        }
    }
}

/// Everything but the fetchers.
pub(crate) struct Fleet {
    pub(crate) stack: LocalStack,
    pub(crate) sources: SourceStore,
    pub(crate) store: Store,
    pub(crate) redis: redis::aio::ConnectionManager,
    broker_addr: SocketAddr,
    credential_file: PathBuf,
    work: tempfile::TempDir,
    /// Every fetcher log written, with its instance name and incarnation.
    logs: std::sync::Mutex<Vec<(String, usize, PathBuf)>>,
    shutdown: CancellationToken,
    broker: Option<JoinHandle<anyhow::Result<()>>>,
    timing: Timing,
    /// The registry's master key, to seal the source's secret.
    keyring: Keyring,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if std::thread::panicking() {
            // The fetchers' logs and configurations, for a look at what went wrong; not
            // the blobs (copies of live phishing mail).
            let _ = std::fs::remove_dir_all(self.work.path().join("blobs"));
            self.work.disable_cleanup(true);
            eprintln!("kept the fetchers' logs in {}", self.work.path().display());
        }
    }
}

impl Fleet {
    /// The stack with `mailbox` (the phishing mailbox) seeded, and the broker.
    pub(crate) async fn start(mailbox: Mailbox, timing: Timing) -> anyhow::Result<Self> {
        let mut fixture = TenantFixture::everything_right();
        *fixture
            .primary_tenant_mut()
            .expect("tenant")
            .exchange
            .mailbox_mut(PHISH_MAILBOX)
            .expect("mailbox") = mailbox;
        let stack = LocalStack::start(fixture).await?;
        let work = tempfile::Builder::new().prefix("tm-fleet-").tempdir()?;
        let master = MasterKey::generate("k1")?;
        let master_key = master.to_line();
        let credential = ServiceCredential::generate("fetcher")?;
        // The fetchers read their credential from a file: a secret never goes in argv.
        let credential_file = work.path().join("fetcher.credential");
        std::fs::write(&credential_file, credential.expose())?;

        let shutdown = CancellationToken::new();
        let mut broker = threatmail_token_broker::Config {
            redis_url: stack.redis.url(),
            ..Default::default()
        };
        broker.master_key.key = Some(master_key);
        broker
            .auth
            .services
            .insert("fetcher".to_owned(), credential.hash());
        broker.entra.ca_file = Some(stack.ca_cert_path());
        broker.entra.global.authority = Some(stack.entra.authority());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let broker_addr = listener.local_addr()?;
        let task = tokio::spawn(threatmail_token_broker::run(
            broker,
            listener,
            shutdown.child_token(),
        ));
        threatmail_testkit::net::wait_for_port(broker_addr, Duration::from_secs(10)).await?;

        let redis = stack.redis.connection_manager().await?;
        let blob_dir = work.path().join("blobs");
        std::fs::create_dir_all(&blob_dir)?;
        Ok(Fleet {
            sources: SourceStore::new(redis.clone()),
            store: Store::new(redis.clone(), BlobStore::directory(&blob_dir)),
            redis,
            stack,
            broker_addr,
            credential_file,
            work,
            logs: std::sync::Mutex::new(Vec::new()),
            shutdown,
            broker: Some(task),
            timing,
            keyring: Keyring::new(master, Vec::new())?,
        })
    }

    /// Stores an `ms-oauth2` source for the fixture's app on the phishing mailbox over TLS,
    /// polled at every scheduler poll, with `folders` selected, as the registry stores it.
    pub(crate) async fn add_source(&self, folders: &[&str]) -> anyhow::Result<SourceId> {
        let (tenant, app, secret) = self.stack.tenant().read(|f| {
            let app = f.primary_app().cloned().expect("app");
            (
                f.primary_tenant().map(|t| t.id.clone()).unwrap_or_default(),
                app.client_id.clone(),
                SecretString::from(app.secrets[0].value.expose().to_owned()),
            )
        });
        let id = SourceId::new_random();
        let mut record = SourceRecord::new_oauth(
            id.clone(),
            "Phishing reports",
            PHISH_MAILBOX,
            &tenant,
            &app,
            0,
        );
        record.set_secret(&self.keyring, SecretSlot::Current, &secret, None)?;
        let addr = self.stack.dovecot.imaps_addr();
        record.host = Some(addr.ip().to_string());
        record.port = addr.port();
        record.poll_interval_secs = 0;
        let stored = self.sources.create(&record).await?;
        let selection: Vec<FolderSelection> = folders
            .iter()
            .map(|name| FolderSelection {
                raw_name: (*name).to_owned(),
                display_name: (*name).to_owned(),
                fetch: true,
            })
            .collect();
        self.sources
            .set_folders(&id, stored.version, &selection)
            .await?;
        Ok(id)
    }

    /// Writes `instance`'s configuration file and starts a fetcher process from it; its
    /// log goes to `<instance>-<incarnation>.log`.
    pub(crate) fn spawn(&self, instance: &str, incarnation: usize) -> anyhow::Result<Fetcher> {
        let blob_dir = self.work.path().join("blobs");
        let Timing {
            lease_ttl,
            renew_interval,
            batch_messages,
        } = self.timing;
        let config = format!(
            // Port 0: each process gets its own gRPC port from the kernel, with no race
            // over a port picked beforehand (nothing here calls the fetchers' gRPC).
            r#"listen = "127.0.0.1:0"
redis_url = {redis}
broker_url = "http://{broker}"
broker_timeout = "10s"

[telemetry]
filter = "info,threatmail_store::write=debug,threatmail_fetcher::scheduler=debug"
format = "json"

[auth]
credential_file = {credential}

[blobs]
kind = "directory"
path = {blobs}

[imap]
connect_timeout = "10s"
command_timeout = "20s"
ca_file = {ca}

[sync]
poll_interval = "200ms"
lease_ttl = "{lease}ms"
renew_interval = "{renew}ms"
batch_messages = {batch_messages}
retry_min = "200ms"
retry_max = "800ms"
connections_per_mailbox = 16
instance_name = "{instance}"
"#,
            redis = toml_string(&self.stack.redis.url()),
            broker = self.broker_addr,
            credential = toml_path(&self.credential_file),
            blobs = toml_path(&blob_dir),
            ca = toml_path(&self.stack.ca_cert_path()),
            lease = lease_ttl.as_millis(),
            renew = renew_interval.as_millis(),
        );
        let config_path = self.work.path().join(format!("{instance}.toml"));
        std::fs::write(&config_path, config)?;
        let log = self
            .work
            .path()
            .join(format!("{instance}-{incarnation}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_threatmail-fetcher"))
            .arg("--config")
            .arg(&config_path)
            // Only the file configures it: no RUST_LOG or THREATMAIL_* from the test's
            // environment.
            .env_clear()
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(log.with_extension("out"))?)
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push((instance.to_owned(), incarnation, log.clone()));
        Ok(Fetcher {
            instance: instance.to_owned(),
            incarnation,
            child: Some(child),
            log,
        })
    }

    /// Every batch committed, by every fetcher, from all logs so far.
    pub(crate) fn commits(&self) -> Vec<Commit> {
        let logs = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        logs.iter()
            .flat_map(|(instance, incarnation, path)| read_commits(instance, *incarnation, path))
            .collect()
    }

    /// The folder's checkpoint's last UID (0 before the first write).
    pub(crate) async fn last_uid(&self, id: &SourceId, folder: &str) -> anyhow::Result<u32> {
        Ok(self
            .store
            .checkpoint(id, folder)
            .await?
            .map_or(0, |c| c.last_uid))
    }

    /// Waits until every folder's checkpoint is at its last UID.
    pub(crate) async fn wait_complete(
        &self,
        id: &SourceId,
        folders: &[(&str, u32)],
    ) -> anyhow::Result<()> {
        threatmail_testkit::net::wait_for("every folder to be synced", CONVERGE, || async {
            for (folder, total) in folders {
                if self.last_uid(id, folder).await.ok()? != *total {
                    return None;
                }
            }
            Some(())
        })
        .await
    }

    /// The folder's lease as Redis holds it: (fencing token, owner).
    pub(crate) async fn lease(
        &self,
        id: &SourceId,
        folder: &str,
    ) -> anyhow::Result<Option<(u64, String)>> {
        let mut conn = self.redis.clone();
        let value: Option<String> = redis::cmd("GET")
            .arg(threatmail_store::keys::lease_key(id, folder))
            .query_async(&mut conn)
            .await?;
        Ok(value.and_then(|v| {
            let (token, owner) = v.split_once(':')?;
            Some((token.parse().ok()?, owner.to_owned()))
        }))
    }

    /// The last fencing token handed out for the folder.
    pub(crate) async fn last_token(&self, id: &SourceId, folder: &str) -> anyhow::Result<u64> {
        let mut conn = self.redis.clone();
        let value: Option<u64> = redis::cmd("GET")
            .arg(threatmail_store::keys::fence_seq_key(id, folder))
            .query_async(&mut conn)
            .await?;
        Ok(value.unwrap_or(0))
    }

    /// Stops the broker.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        if let Some(task) = self.broker.take() {
            tokio::time::timeout(Duration::from_secs(20), task).await???;
        }
        Ok(())
    }
}

fn toml_string(text: &str) -> String {
    format!("{text:?}")
}

fn toml_path(path: &Path) -> String {
    toml_string(&path.display().to_string())
}

/// A fetcher process; killed (SIGKILL) and reaped when dropped.
pub(crate) struct Fetcher {
    pub(crate) instance: String,
    incarnation: usize,
    child: Option<Child>,
    log: PathBuf,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Fetcher {
    /// SIGKILL, then reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Kill works on a stopped process too; an error means it has exited already.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`) with kill(1).
    pub(crate) fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// Whether the process is still running (it must not have exited by itself).
    pub(crate) fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!(
                "{} exited by itself with {status}; log {}:\n{}",
                self.instance,
                self.log.display(),
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// The batches this process committed so far.
    pub(crate) fn commits(&self) -> Vec<Commit> {
        read_commits(&self.instance, self.incarnation, &self.log)
    }

    /// Its log so far.
    pub(crate) fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One committed batch, as the store logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Commit {
    /// The fetcher's instance name (its lease owner name).
    pub(crate) instance: String,
    /// `<instance>#<incarnation>`: one process.
    pub(crate) process: String,
    pub(crate) folder: String,
    pub(crate) fence: u64,
    pub(crate) first_uid: u32,
    pub(crate) last_uid: u32,
}

fn read_commits(instance: &str, incarnation: usize, path: &Path) -> Vec<Commit> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        // A process killed mid-line leaves a partial last line; it parses as nothing.
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|event| {
            let fields = event.get("fields")?;
            if fields.get("message")?.as_str()? != "batch committed" {
                return None;
            }
            let number = |name: &str| fields.get(name).and_then(serde_json::Value::as_u64);
            Some(Commit {
                instance: instance.to_owned(),
                process: format!("{instance}#{incarnation}"),
                folder: fields.get("folder")?.as_str()?.to_owned(),
                fence: number("fence")?,
                first_uid: u32::try_from(number("first_uid")?).ok()?,
                last_uid: u32::try_from(number("last_uid")?).ok()?,
            })
        })
        .collect()
}

/// Checks what the fencing tokens show for every folder: each token was used by one
/// process only, the batches' UID ranges never overlap (no UID was committed twice), and
/// along the folder's UIDs the tokens never go down (nothing was written under a lease
/// after a later lease of the folder had written). Returns the commits per folder in UID
/// order.
pub(crate) fn check_fencing(commits: &[Commit]) -> BTreeMap<String, Vec<Commit>> {
    let mut by_folder: BTreeMap<String, Vec<Commit>> = BTreeMap::new();
    for commit in commits {
        by_folder
            .entry(commit.folder.clone())
            .or_default()
            .push(commit.clone());
    }
    for (folder, list) in &mut by_folder {
        let mut owners: BTreeMap<u64, BTreeSet<&str>> = BTreeMap::new();
        for commit in list.iter() {
            assert!(
                commit.first_uid <= commit.last_uid,
                "a batch of {folder:?} with its UIDs out of order: {commit:?}"
            );
            owners
                .entry(commit.fence)
                .or_default()
                .insert(&commit.process);
        }
        for (token, instances) in &owners {
            assert_eq!(
                instances.len(),
                1,
                "token {token} of {folder:?} committed by several processes: {instances:?}"
            );
        }
        list.sort_by_key(|c| (c.first_uid, c.last_uid));
        let mut runs: Vec<(String, u64, usize)> = Vec::new();
        for commit in list.iter() {
            match runs.last_mut() {
                Some((instance, fence, n))
                    if *instance == commit.process && *fence == commit.fence =>
                {
                    *n += 1
                }
                _ => runs.push((commit.process.clone(), commit.fence, 1)),
            }
        }
        let runs: Vec<String> = runs
            .iter()
            .map(|(instance, fence, n)| format!("{instance}@{fence}x{n}"))
            .collect();
        eprintln!("{folder}: {}", runs.join(" "));
        for pair in list.windows(2) {
            let (before, after) = (&pair[0], &pair[1]);
            assert!(
                before.last_uid < after.first_uid,
                "UIDs of {folder:?} committed twice: {before:?} and {after:?}"
            );
            assert!(
                before.fence <= after.fence,
                "{folder:?}: UIDs after those of token {} written under the older token {}: \
                 {before:?} then {after:?}",
                before.fence,
                after.fence
            );
        }
    }
    by_folder
}

/// The phishing corpus, read in place (never copied), or `None` after a notice when it is
/// missing outside CI; under `CI=true` a missing corpus fails the test.
pub(crate) fn phishing_corpus() -> Option<Vec<Vec<u8>>> {
    let dir = match std::env::var_os("THREATMAIL_CORPUS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/corpus"),
    }
    .join("phishing");
    if !dir.is_dir() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but the corpus is missing at {}",
            dir.display()
        );
        eprintln!(
            "notice: corpus not found at {}; using generated messages",
            dir.display()
        );
        return None;
    }
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus folder")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e.eq_ignore_ascii_case("eml")))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no .eml files in {}", dir.display());
    Some(
        paths
            .iter()
            .map(|p| std::fs::read(p).expect("corpus file"))
            .collect(),
    )
}

/// `count` messages: the corpus's first ones, or generated distinct reports without it.
pub(crate) fn messages(count: usize) -> Vec<Vec<u8>> {
    match phishing_corpus() {
        Some(corpus) => {
            assert!(
                corpus.len() >= count,
                "the corpus has {} messages, {count} wanted",
                corpus.len()
            );
            corpus.into_iter().take(count).collect()
        }
        None => (1..=count).map(report).collect(),
    }
}

/// A small generated report.
fn report(n: usize) -> Vec<u8> {
    format!(
        "From: user{n}@corp.example\r\nTo: soc-phish@corp.example\r\nSubject: suspicious mail {n}\r\nDate: Mon, 1 Dec 2026 10:{:02}:00 +0000\r\nMessage-ID: <chaos-{n}@corp.example>\r\n\r\nPlease look at https://login-{n}.example.com/reset\r\n",
        n % 60
    )
    .into_bytes()
}

/// `raw` with every line end CRLF, as IMAP carries messages (the seeding does the same).
pub(crate) fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
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

/// Checks that every seeded message is stored exactly once: one record per identity (the
/// same bytes, or the same Message-ID, Date and From, are one record), as many records as
/// identities, each with exactly one location per (folder, UID) it was seeded at, the
/// SHA-256 of each seeded message on its location, and the record's blob equal to the
/// bytes IMAP served.
pub(crate) async fn check_stored_once(
    store: &Store,
    id: &SourceId,
    folders: &[(&str, Vec<Vec<u8>>)],
) -> anyhow::Result<()> {
    struct Expected {
        places: Vec<(String, u32, String)>,
        first: Vec<u8>,
    }
    let mut expected: BTreeMap<MessageId, Expected> = BTreeMap::new();
    for (folder, messages) in folders {
        for (index, raw) in messages.iter().enumerate() {
            let served = crlf(raw);
            let parsed = threatmail_parse::parse_message(&served);
            let message_id = Identity::of(&served, &parsed.message).message_id(id);
            let entry = expected.entry(message_id).or_insert_with(|| Expected {
                places: Vec::new(),
                first: served.clone(),
            });
            entry.places.push((
                (*folder).to_owned(),
                u32::try_from(index)? + 1,
                sha256_hex(&served),
            ));
        }
    }
    let count = store.count(id).await?;
    assert_eq!(
        count,
        expected.len(),
        "records stored vs distinct messages seeded (lost or duplicated)"
    );
    for (message_id, wanted) in &expected {
        let stored = store
            .get(&MessageRef {
                source_id: id.clone(),
                id: message_id.clone(),
            })
            .await?
            .unwrap_or_else(|| panic!("message at {:?} lost", wanted.places[0]));
        let mut places: Vec<(String, u32, String)> = stored
            .locations
            .iter()
            .map(|l| (l.folder.clone(), l.uid, l.sha256.clone()))
            .collect();
        places.sort();
        let mut wanted_places = wanted.places.clone();
        wanted_places.sort();
        assert_eq!(places, wanted_places, "locations of {message_id:?}");
        assert_eq!(
            stored.record.sha256,
            sha256_hex(&wanted.first),
            "SHA-256 of the record at {:?}",
            wanted.places[0]
        );
        let blob = store
            .blobs()
            .get(&stored.record.sha256)
            .await?
            .expect("blob");
        assert!(
            blob == wanted.first,
            "stored bytes of {:?} differ",
            wanted.places[0]
        );
    }
    Ok(())
}

/// A small seeded random number generator (SplitMix64), so a failing run can be replayed
/// with `THREATMAIL_CHAOS_SEED`.
pub(crate) struct Rng(u64);

impl Rng {
    /// Seeded from `THREATMAIL_CHAOS_SEED`, else from the clock; the seed is printed (the
    /// test harness shows it when a test fails).
    pub(crate) fn from_env(test: &str) -> Self {
        let seed = std::env::var("THREATMAIL_CHAOS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or_default()
            });
        eprintln!("{test}: THREATMAIL_CHAOS_SEED={seed}");
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub(crate) fn fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A duration uniform in `0..=max`.
    pub(crate) fn up_to(&mut self, max: Duration) -> Duration {
        let millis = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.below(millis.saturating_add(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(process: &str, fence: u64, first_uid: u32, last_uid: u32) -> Commit {
        Commit {
            instance: process.split('#').next().unwrap_or_default().to_owned(),
            process: process.to_owned(),
            folder: "F".to_owned(),
            fence,
            first_uid,
            last_uid,
        }
    }

    #[test]
    fn a_fenced_history_passes() {
        let by_folder = check_fencing(&[
            commit("b#0", 2, 5, 8),
            commit("a#0", 1, 1, 4),
            commit("b#0", 2, 9, 9),
        ]);
        assert_eq!(by_folder["F"].len(), 3);
    }

    #[test]
    #[should_panic(expected = "committed twice")]
    fn overlapping_batches_fail() {
        check_fencing(&[commit("a#0", 1, 1, 4), commit("b#0", 2, 4, 8)]);
    }

    #[test]
    #[should_panic(expected = "several processes")]
    fn one_token_in_two_processes_fails() {
        check_fencing(&[commit("a#0", 1, 1, 4), commit("a#1", 1, 5, 8)]);
    }

    #[test]
    #[should_panic(expected = "older token")]
    fn a_write_under_an_older_lease_after_a_newer_one_fails() {
        check_fencing(&[commit("b#0", 2, 1, 4), commit("a#0", 1, 5, 8)]);
    }
}
