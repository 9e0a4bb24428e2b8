//! The operating-system side of a test Dovecot: the unprivileged user it runs as, file
//! ownership, signals and the sweep that leaves no process behind.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// The system user a root test process runs Dovecot as.
pub(crate) const TEST_USER: &str = "threatmail-test";

/// Serialises user creation inside this process; a file lock does it across processes.
static USERADD: Mutex<()> = Mutex::new(());

/// Who Dovecot runs as, and whether files must be handed over to that user.
#[derive(Debug, Clone)]
pub(crate) struct RunAs {
    pub(crate) user: String,
    pub(crate) group: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    /// True when the test process is root: Dovecot is started through `runuser` and every
    /// file it reads is chowned to `uid:gid`.
    pub(crate) via_runuser: bool,
}

impl RunAs {
    /// The current user, or [`TEST_USER`] (created if missing) when running as root.
    pub(crate) fn detect() -> anyhow::Result<Self> {
        // /proc/self belongs to the effective uid of the process reading it.
        let euid = std::fs::metadata("/proc/self")
            .context("failed to stat /proc/self")?
            .uid();
        if euid == 0 {
            ensure_test_user()?;
            Ok(Self {
                user: TEST_USER.to_owned(),
                group: id(&["-gn", TEST_USER])?,
                uid: id(&["-u", TEST_USER])?.parse()?,
                gid: id(&["-g", TEST_USER])?.parse()?,
                via_runuser: true,
            })
        } else {
            Ok(Self {
                user: id(&["-un"])?,
                group: id(&["-gn"])?,
                uid: euid,
                gid: id(&["-g"])?.parse()?,
                via_runuser: false,
            })
        }
    }

    /// Gives `path` to the run user (only needed when the test process is root).
    pub(crate) fn hand_over(&self, path: &Path) -> anyhow::Result<()> {
        if self.via_runuser {
            std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
                .with_context(|| format!("failed to chown {}", path.display()))?;
        }
        Ok(())
    }

    /// Creates a directory (and parents) owned by the run user.
    pub(crate) fn create_dir(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        self.hand_over(path)
    }

    /// Writes `contents` to `path` atomically: a temp file in the same directory, owned by
    /// the run user with `mode`, renamed over the target. Dovecot never sees half a file.
    pub(crate) fn write_atomic(
        &self,
        path: &Path,
        contents: &[u8],
        mode: u32,
    ) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .with_context(|| format!("{} has no parent directory", path.display()))?;
        let mut temp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(dir)
            .with_context(|| format!("failed to create a temp file in {}", dir.display()))?;
        temp.write_all(contents)?;
        temp.as_file().sync_data().ok();
        std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(mode))?;
        self.hand_over(temp.path())?;
        temp.persist(path)
            .with_context(|| format!("failed to rename a temp file to {}", path.display()))?;
        Ok(())
    }
}

/// Creates [`TEST_USER`] once, idempotently, safe against parallel test processes.
fn ensure_test_user() -> anyhow::Result<()> {
    let _in_process = USERADD
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if user_exists()? {
        return Ok(());
    }
    // useradd takes its own lock on /etc/passwd but fails (exit 10) instead of waiting when
    // another useradd holds it; this lock makes concurrent test binaries queue up instead.
    let lock_path = Path::new("/tmp/threatmail-testkit-useradd.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(lock_path)
        .with_context(|| format!("failed to open {}", lock_path.display()))?;
    lock.lock()
        .with_context(|| format!("failed to lock {}", lock_path.display()))?;
    if user_exists()? {
        return Ok(());
    }
    let useradd = crate::redis::find_program("useradd", &["/usr/sbin", "/sbin"])
        .context("useradd not found: install the Debian package passwd")?;
    let output = Command::new(useradd)
        .args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ])
        .stdin(Stdio::null())
        .output()
        .context("failed to run useradd")?;
    // Exit status 9: the name is already in use (someone else was faster). Fine.
    if output.status.success() || output.status.code() == Some(9) {
        return Ok(());
    }
    bail!(
        "failed to create the system user {TEST_USER} ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

fn user_exists() -> anyhow::Result<bool> {
    let status = Command::new("id")
        .args(["-u", TEST_USER])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("failed to run id")?;
    Ok(status.success())
}

/// Runs `id ARGS` and returns its trimmed output.
fn id(args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("id")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("failed to run id")?;
    if !output.status.success() {
        bail!(
            "id {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// Sends `signal` (a name such as `HUP`) to `pid` with kill(1); no libc binding needed.
pub(crate) fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let output = Command::new("kill")
        .args(["-s", signal, &pid.to_string()])
        .stdin(Stdio::null())
        .output()
        .context("failed to run kill")?;
    if !output.status.success() {
        bail!(
            "kill -s {signal} {pid} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// Pids of live processes whose command line starts with `prefix` (Dovecot names its
/// processes `<instance_name>/<service>`, e.g. `dovecot-tm-1a2b/auth`). This survives a
/// process being re-parented after its master died, unlike walking parent pids.
pub(crate) fn processes_with_title(prefix: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let path: PathBuf = ["/proc", &pid.to_string(), "cmdline"].iter().collect();
            std::fs::read(path).is_ok_and(|cmdline| cmdline.starts_with(prefix.as_bytes()))
        })
        .filter(|pid| !is_zombie(*pid))
        .collect()
}

fn is_zombie(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return true;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X')
}

/// SIGKILLs every process titled `prefix…` until none is left (bounded).
pub(crate) fn kill_leftovers(prefix: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let pids = processes_with_title(prefix);
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in pids {
            let _ = send_signal(pid, "KILL");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether every ancestor of `dir` lets others search it (so the run user can reach it).
pub(crate) fn world_traversable(dir: &Path) -> bool {
    dir.ancestors().all(|ancestor| {
        std::fs::metadata(ancestor).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0)
    })
}
