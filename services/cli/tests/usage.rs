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
