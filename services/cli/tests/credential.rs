//! `threatmail credential create`: the credential lands in a new private file, never on
//! stdout or stderr, and the printed hash is the one the called services must list.

use std::os::unix::fs::PermissionsExt as _;
use std::process::Command;

use secrecy::SecretString;
use threatmail_auth::ServiceCredential;

fn threatmail() -> Command {
    Command::new(env!("CARGO_BIN_EXE_threatmail"))
}

#[test]
fn a_credential_goes_to_a_private_file_and_its_hash_to_stdout() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("fetcher-credential");
    let output = threatmail()
        .args(["credential", "create", "--name", "fetcher", "--output"])
        .arg(&path)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let text = std::fs::read_to_string(&path)?;
    let credential = ServiceCredential::parse(&SecretString::from(text.clone()))?;
    assert_eq!(credential.name(), "fetcher");
    let stdout = String::from_utf8(output.stdout)?;
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(stdout.trim(), credential.hash());
    assert!(stderr.contains("auth.services.fetcher"), "{stderr}");
    assert!(!stdout.contains(text.trim()) && !stderr.contains(text.trim()));
    assert_eq!(
        std::fs::metadata(&path)?.permissions().mode() & 0o777,
        0o600
    );

    // An existing file is never overwritten.
    let again = threatmail()
        .args(["credential", "create", "--name", "fetcher", "--output"])
        .arg(&path)
        .output()?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8(again.stderr)?.contains("must not exist"));
    assert_eq!(std::fs::read_to_string(&path)?, text, "left as it was");
    Ok(())
}

#[test]
fn only_the_services_that_call_others_get_credentials() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let output = threatmail()
        .args(["credential", "create", "--name", "mailbox", "--output"])
        .arg(dir.path().join("x"))
        .output()?;
    assert_eq!(output.status.code(), Some(2), "a usage error");
    assert!(!dir.path().join("x").exists());
    Ok(())
}
