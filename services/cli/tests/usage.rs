//! Usage errors: exit 2 with clap's message, and a note naming a `TM_*` variable that is set
//! but empty when that is where the empty value came from.

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
    let open = dir.path().join("open-key");
    std::fs::write(&open, "tmk1.0000000000000000.notarealkey\n")?;
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644))?;
    let nobody = "http://127.0.0.1:1";
    let path = open.to_str().unwrap_or_default();
    let output = threatmail(&[
        "source",
        "list",
        "--registry",
        nobody,
        "--api-key-file",
        path,
    ]);
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("can be read by other users"), "{stderr}");

    let two = dir.path().join("two-lines");
    std::fs::write(&two, "tmk1.a.b\ntmk1.c.d\n")?;
    std::fs::set_permissions(&two, std::fs::Permissions::from_mode(0o600))?;
    let path = two.to_str().unwrap_or_default();
    let output = threatmail(&[
        "source",
        "list",
        "--registry",
        nobody,
        "--api-key-file",
        path,
    ]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("more than one line"), "{stderr}");
    assert!(!stderr.contains("can be read by other users"), "{stderr}");
    Ok(())
}
