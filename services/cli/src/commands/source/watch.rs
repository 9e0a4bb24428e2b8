//! `source status --watch`: asks the registry for the status every interval and shows each
//! selected folder's progress (messages synced, state, last poll, last error) until every
//! selected folder has caught up — polled at least once and idle — or one has failed in a
//! way that needs the user, or Ctrl-C. On a terminal the lines are redrawn in place on
//! stderr; otherwise a block is written whenever something changed. The final status goes
//! to stdout (a table, or one JSON document with `--json`).

use std::io::{IsTerminal as _, Write as _};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::json;
use threatmail_proto::v1 as pb;
use tokio::time::Instant;

use super::render;
use crate::commands::client::{RegistryClient, problem_line};

/// Exit status after Ctrl-C (128 + SIGINT, as shells report it).
const INTERRUPTED: u8 = 130;

fn fetched(status: &pb::SourceStatus) -> impl Iterator<Item = &pb::FolderStatus> {
    status.folders.iter().filter(|f| f.fetch)
}

/// Whether every selected folder has completed a poll and is idle (and one is selected).
pub(crate) fn caught_up(status: &pb::SourceStatus) -> bool {
    fetched(status).next().is_some()
        && fetched(status).all(|f| f.last_poll > 0 && f.connection_state == "idle")
}

/// The selected folders that failed in a way only the user can fix, since the source was
/// last changed (Unix seconds): a failure from before a change (the fix the user just made)
/// says nothing yet about the source as it is, and the fetchers try it again at their next
/// poll, so the watch waits for that attempt.
fn failed(status: &pb::SourceStatus, changed_at: i64) -> Vec<&pb::FolderStatus> {
    fetched(status)
        .filter(|f| f.connection_state == "failed" && f.last_error_at >= changed_at)
        .collect()
}

fn summary(status: &pb::SourceStatus, elapsed: Duration) -> String {
    let total = fetched(status).count();
    let done = fetched(status)
        .filter(|f| f.last_poll > 0 && f.connection_state == "idle")
        .count();
    let synced: u64 = fetched(status).map(|f| f.messages_synced).sum();
    let width = 20;
    let filled = (done * width).checked_div(total).unwrap_or(0);
    format!(
        "  [{}{}] {done}/{total} folders caught up, {synced} messages synced, {}s",
        "#".repeat(filled),
        "-".repeat(width - filled),
        elapsed.as_secs()
    )
}

/// Follows `source`'s status; see the module comment.
pub(super) async fn watch(
    client: &mut RegistryClient,
    source: &pb::Source,
    interval: Duration,
    timeout: Option<Duration>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if !source.folders.iter().any(|f| f.fetch) {
        anyhow::bail!(
            "no folder of this source is selected, so there is no sync to watch: \
             threatmail source folders {} --select INBOX",
            source.id
        );
    }
    let terminal = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut drawn = 0usize;
    let mut shown = String::new();
    let interval = interval.max(Duration::from_millis(100));
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let (status, code) = loop {
        let status = super::get_status(client, &source.id).await?;
        let mut lines = render::status_lines(&status);
        // "No fetcher is running" among them: without it the watch would wait in silence.
        for warning in &status.warnings {
            lines.push(format!("warning: {}", problem_line(warning)));
        }
        lines.push(summary(&status, started.elapsed()));
        let block = lines.join("\n");
        {
            let mut err = std::io::stderr().lock();
            if terminal {
                if drawn > 0 {
                    // Up to the first line drawn, then clear to the end of the screen.
                    write!(err, "\x1b[{drawn}A\x1b[J")?;
                }
                writeln!(err, "{block}")?;
                drawn = lines.len();
            } else {
                // The elapsed seconds alone are no change worth a new block.
                let content = lines[..lines.len() - 1].join("\n");
                if content != shown {
                    writeln!(err, "{block}")?;
                    shown = content;
                }
            }
        }
        if caught_up(&status) {
            break (status, ExitCode::SUCCESS);
        }
        let failures = failed(&status, source.updated_at);
        if !failures.is_empty() {
            let names: Vec<&str> = failures.iter().map(|f| f.display_name.as_str()).collect();
            eprintln!(
                "error: the sync of {} failed and needs you: fix the last error shown, then \
                 the fetchers retry",
                names.join(", ")
            );
            break (status, ExitCode::FAILURE);
        }
        if timeout.is_some_and(|t| started.elapsed() >= t) {
            eprintln!(
                "error: not caught up after {}s: the fetchers may not be running or may be \
                 behind (see the states above)",
                started.elapsed().as_secs()
            );
            break (status, ExitCode::FAILURE);
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = &mut ctrl_c => {
                eprintln!("stopped watching (the sync goes on)");
                break (status, ExitCode::from(INTERRUPTED));
            }
        }
    };
    if json {
        super::print_json(&json!({
            "ok": code == ExitCode::SUCCESS,
            "status": render::status_json(&status),
        }))?;
    } else {
        render::print_status(source, &status)?;
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(fetch: bool, state: &str, last_poll: i64) -> pb::FolderStatus {
        pb::FolderStatus {
            display_name: "F".into(),
            fetch,
            connection_state: state.into(),
            last_poll,
            ..Default::default()
        }
    }

    fn status(folders: Vec<pb::FolderStatus>) -> pb::SourceStatus {
        pb::SourceStatus {
            id: "s".into(),
            folders,
            ..Default::default()
        }
    }

    #[test]
    fn caught_up_needs_every_selected_folder_polled_and_idle() {
        assert!(!caught_up(&status(vec![])));
        assert!(!caught_up(&status(vec![folder(true, "idle", 0)])));
        assert!(!caught_up(&status(vec![folder(true, "syncing", 10)])));
        assert!(!caught_up(&status(vec![
            folder(true, "idle", 10),
            folder(true, "connecting", 0)
        ])));
        assert!(caught_up(&status(vec![
            folder(true, "idle", 10),
            folder(false, "unknown", 0)
        ])));
    }

    #[test]
    fn only_selected_folders_count_as_failed() {
        let s = status(vec![
            folder(false, "failed", 0),
            folder(true, "retrying", 0),
        ]);
        assert!(failed(&s, 0).is_empty());
        let s = status(vec![folder(true, "failed", 0)]);
        assert_eq!(failed(&s, 0).len(), 1);
    }

    /// A failure from before the source's last change (the fix just made) does not end the
    /// watch; one at or after it does.
    #[test]
    fn a_failure_from_before_the_last_change_does_not_count() {
        let failed_at = |at: i64| {
            status(vec![pb::FolderStatus {
                last_error_at: at,
                ..folder(true, "failed", 0)
            }])
        };
        assert!(failed(&failed_at(99), 100).is_empty());
        assert_eq!(failed(&failed_at(100), 100).len(), 1);
        assert_eq!(failed(&failed_at(150), 100).len(), 1);
    }
}
