//! How commands take what they are given, with no server: usage errors (exit 2, and a note
//! naming a `TM_*` variable set but empty), keys and passwords given the wrong way, `parse`'s
//! input (standard input, a size limit), a reader that stops early (`… | head`) and the
//! error of a service that cannot start.

use std::process::Command;

#[test]
fn an_empty_tm_variable_is_named_in_the_usage_error() -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_threatmail"))
        .args(["source", "list"])
        .env("TM_API_KEY_FILE", "")
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(
        stderr.contains("--api-key-file") && stderr.contains("TM_API_KEY_FILE set but empty"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    Ok(())
}

fn threatmail(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_threatmail"))
        .args(args)
        .env_remove("TM_API_KEY")
        .env_remove("TM_API_KEY_FILE")
        .output()
        .expect("threatmail runs")
}

/// A key passed where its file's path goes is refused without being printed.
#[test]
fn a_key_given_as_the_key_files_path_is_refused_unprinted() -> anyhow::Result<()> {
    let key = "tmk1.9cc89351b1cbb8ec.ErGkq8xY0a9s7d6f5g4h3j2k1l0";
    let output = threatmail(&["source", "list", "--api-key-file", key]);
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("a key itself"), "{stderr}");
    assert!(
        !stderr.contains("ErGk"),
        "the key is never printed: {stderr}"
    );
    Ok(())
}

/// A Redis password on the command line is refused without being printed.
#[test]
fn a_redis_password_in_an_argument_is_refused_unprinted() -> anyhow::Result<()> {
    let output = threatmail(&[
        "apikey",
        "create",
        "--bootstrap",
        "--role",
        "admin",
        "--name",
        "first",
        "--redis-url",
        "redis://:s3cretpass@127.0.0.1:1/",
    ]);
    assert_eq!(output.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8(output.stdout)?,
        String::from_utf8(output.stderr)?
    );
    assert!(all.contains("holds a password"), "{all}");
    assert!(!all.contains("s3cretpass"), "{all}");
    Ok(())
}

/// A key file other users may read is used with a warning; one of two lines is refused.
#[test]
fn key_files_are_checked() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir()?;
    // `source list` with a key file of `text` and `mode` (no registry listens there).
    let list_with = |name: &str, text: &str, mode: u32| -> anyhow::Result<std::process::Output> {
        let path = dir.path().join(name);
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        let path = path.to_str().unwrap_or_default().to_owned();
        Ok(threatmail(&[
            "source",
            "list",
            "--registry",
            "http://127.0.0.1:1",
            "--api-key-file",
            &path,
        ]))
    };
    let output = list_with("open-key", "tmk1.0000000000000000.notarealkey\n", 0o644)?;
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("can be read by other users"), "{stderr}");

    let output = list_with("two-lines", "tmk1.a.b\ntmk1.c.d\n", 0o600)?;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("more than one line"), "{stderr}");
    assert!(!stderr.contains("can be read by other users"), "{stderr}");
    Ok(())
}

/// An `https://` address is refused before anything is sent: the services speak gRPC
/// without TLS, so the API key would go in clear.
#[test]
fn an_https_address_is_refused_not_spoken_in_clear() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("key");
    std::fs::write(&key, "tmk1.0000000000000000.notarealkey\n")?;
    for (command, flag) in [("source", "--registry"), ("mailbox", "--url")] {
        let output = threatmail(&[
            command,
            flag,
            "https://127.0.0.1:1",
            "--api-key-file",
            key.to_str().unwrap_or_default(),
            "list",
        ]);
        assert_eq!(output.status.code(), Some(1), "{command}");
        let stderr = String::from_utf8(output.stderr)?;
        assert!(
            stderr.contains("https:// is not supported"),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("cannot reach"), "{command}: {stderr}");
    }
    Ok(())
}

fn sample() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../samples/mail")
}

/// `parse -` reads standard input; a file over `--max-bytes` is refused, naming the limit,
/// and the other files are still parsed (exit 1).
#[test]
fn parse_reads_stdin_and_refuses_what_is_over_the_limit() -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_threatmail"))
        .args(["parse", "-", "--compact", "--summary-only"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"Subject: hi\r\n\r\nsee http://198.51.100.9/x\r\n")?;
    let output = child.wait_with_output()?;
    assert!(output.status.success());
    let record: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    assert_eq!(record["file"], "-");
    assert_eq!(record["summary"]["ipv4"][0], "198.51.100.9");

    let dir = tempfile::tempdir()?;
    let big = dir.path().join("big.eml");
    std::fs::write(&big, vec![b'a'; 5000])?;
    let small = dir.path().join("small.eml");
    std::fs::write(&small, b"Subject: s\r\n\r\nbody\r\n")?;
    let output = threatmail(&[
        "parse",
        "--max-bytes",
        "4096",
        "--compact",
        big.to_str().unwrap_or_default(),
        small.to_str().unwrap_or_default(),
    ]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8(output.stderr)?.contains("4096-byte limit"));
    assert_eq!(
        String::from_utf8(output.stdout)?.lines().count(),
        1,
        "the small one"
    );
    Ok(())
}

/// A reader that stops early is no failure of `parse` or `corpus text`.
#[test]
fn a_reader_that_stops_early_is_no_failure() -> anyhow::Result<()> {
    use std::io::Read as _;
    let files: Vec<std::path::PathBuf> = std::fs::read_dir(sample())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    // Far more output than a pipe holds, so the writer meets the closed pipe.
    let dir = tempfile::tempdir()?;
    let mut many = Vec::new();
    for (n, file) in files.iter().cycle().take(400).enumerate() {
        let copy = dir.path().join(format!("{n}.eml"));
        std::fs::copy(file, &copy)?;
        many.push(copy);
    }
    for args in [
        vec!["parse".to_owned()],
        vec!["corpus".to_owned(), "text".to_owned()],
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_threatmail"));
        command.args(&args);
        if args[0] == "parse" {
            command.args(&many);
        } else {
            command.arg(dir.path());
        }
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let mut first = [0u8; 64];
        child
            .stdout
            .take()
            .expect("stdout")
            .read_exact(&mut first)?;
        // The pipe's reading end is closed here, as `head` does.
        let output = child.wait_with_output()?;
        let stderr = String::from_utf8(output.stderr)?;
        assert!(output.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
    Ok(())
}

/// A threshold outside 0..1 is a usage error.
#[test]
fn score_thresholds_are_fractions() {
    let output = threatmail(&["corpus", "score", ".", "--min-precision", "1.5"]);
    assert_eq!(output.status.code(), Some(2));
}

/// A cause that an error already prints inside its own message is said once: redis's
/// connection error holds the I/O error's text and also returns it as its source.
#[test]
fn a_service_that_cannot_start_says_each_cause_once() -> anyhow::Result<()> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_threatmail"));
    // Only this test's settings (scripts/test exports THREATMAIL_STIX_VALIDATOR).
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("THREATMAIL_") {
            command.env_remove(name);
        }
    }
    let output = command
        .args(["serve", "--target", "mailbox"])
        .env("THREATMAIL_MAILBOX__LISTEN", "127.0.0.1:0")
        .env("THREATMAIL_MAILBOX__REDIS_URL", "redis://127.0.0.1:1/")
        .env("THREATMAIL_MAILBOX__BLOBS__PATH", std::env::temp_dir())
        .output()?;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr)?;
    let error = stderr
        .lines()
        .find(|line| line.starts_with("error: mailbox:"))
        .unwrap_or_else(|| panic!("no error line in {stderr}"));
    assert!(error.contains("redis://127.0.0.1:1/"), "{error}");
    assert_eq!(error.matches("Connection refused").count(), 1, "{error}");
    Ok(())
}

/// An empty filter value (an unset shell variable, `--sender "$SENDER"`) is a usage error,
/// not a filter that lets every message through.
#[test]
fn an_empty_mailbox_filter_is_a_usage_error() -> anyhow::Result<()> {
    for flag in ["--sender", "--indicator", "--subject", "--folder"] {
        let output = threatmail(&["mailbox", "list", flag, ""]);
        assert_eq!(output.status.code(), Some(2), "{flag}");
        let stderr = String::from_utf8(output.stderr)?;
        assert!(stderr.contains("is empty"), "{flag}: {stderr}");
    }
    Ok(())
}
