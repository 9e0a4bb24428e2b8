//! How sources, folder trees, Save and Continue outcomes and status look: tables and
//! indented trees for people, JSON objects for `--json`.

use std::io::Write as _;

use serde_json::{Value, json};
use threatmail_proto::v1 as pb;

use crate::commands::client::{problem_json, problem_line};

/// `2026-12-04 10:00` (UTC) of Unix seconds; "never" for 0.
pub(crate) fn when(seconds: i64) -> String {
    if seconds == 0 {
        return "never".to_owned();
    }
    let text = threatmail_store::time::format_rfc3339_ms(seconds.saturating_mul(1000));
    format!("{} {}", &text[..10], &text[11..16])
}

fn auth_name(value: i32) -> &'static str {
    match pb::AuthType::try_from(value) {
        Ok(pb::AuthType::Password) => "password",
        _ => "ms-oauth2",
    }
}

fn cloud_name(value: i32) -> &'static str {
    match pb::Cloud::try_from(value) {
        Ok(pb::Cloud::UsGovernment) => "us-government",
        Ok(pb::Cloud::China) => "china",
        _ => "global",
    }
}

fn after_name(value: i32) -> &'static str {
    match pb::AfterProcessing::try_from(value) {
        Ok(pb::AfterProcessing::MarkSeen) => "mark-seen",
        Ok(pb::AfterProcessing::Move) => "move",
        _ => "none",
    }
}

fn raw_text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

/// A source as JSON (never a secret: the registry sends none).
pub(crate) fn source_json(source: &pb::Source) -> Value {
    let spec = source.spec.clone().unwrap_or_default();
    json!({
        "id": source.id,
        "version": source.version,
        "name": spec.name,
        "account_type": if spec.account_type.is_empty() { "imap" } else { spec.account_type.as_str() },
        "auth_type": auth_name(spec.auth_type),
        "email": spec.email,
        "app_id": spec.app_id,
        "tenant_id": spec.tenant_id,
        "object_id": spec.object_id,
        "secret_set": source.secret_set,
        "secret_expires": spec.secret_expires,
        "next_secret_set": source.next_secret_set,
        "next_secret_expires": spec.next_secret_expires,
        "cloud": cloud_name(spec.cloud),
        "host": spec.host,
        "port": spec.port,
        "tls": spec.tls.unwrap_or(true),
        "enabled": spec.enabled.unwrap_or(true),
        "poll_interval_seconds": spec.poll_interval_seconds,
        "after_processing": after_name(spec.after_processing),
        "move_to_folder": spec.move_to_folder,
        "sender_allow_list": spec.sender_allow_list,
        "default_tlp": spec.default_tlp,
        "tags": spec.tags,
        "folders": source.folders.iter().map(|f| json!({
            "display_name": f.display_name,
            "raw_name": raw_text(&f.raw_name),
            "fetch": f.fetch,
        })).collect::<Vec<_>>(),
        "created_at": source.created_at,
        "updated_at": source.updated_at,
    })
}

/// A folder tree as JSON.
pub(crate) fn folder_json(folder: &pb::Folder) -> Value {
    json!({
        "display_name": folder.display_name,
        "raw_name": raw_text(&folder.raw_name),
        "delimiter": folder.delimiter,
        "attributes": folder.attributes,
        "selectable": folder.selectable,
        "children": folder.children.iter().map(folder_json).collect::<Vec<_>>(),
    })
}

/// A Save and Continue outcome as JSON.
pub(crate) fn test_json(reply: &pb::TestSourceResponse) -> Value {
    json!({
        "ok": reply.ok,
        "stages": reply.stages.iter().map(|s| json!({ "name": s.name, "outcome": s.outcome })).collect::<Vec<_>>(),
        "problems": reply.problems.iter().map(problem_json).collect::<Vec<_>>(),
        "warnings": reply.warnings.iter().map(problem_json).collect::<Vec<_>>(),
        "checklist": reply.checklist.as_ref().map(|c| json!({
            "reason": c.reason,
            "summary": c.summary,
            "steps": c.steps.iter().map(|s| json!({
                "id": s.id, "message": s.message, "field": s.field, "command": s.command,
            })).collect::<Vec<_>>(),
        })),
        "folders": reply.folders.iter().map(folder_json).collect::<Vec<_>>(),
        "claims": reply.claims.as_ref().map(|c| json!({
            "decoded": c.decoded, "audience": c.audience, "tenant_id": c.tenant_id,
            "app_id": c.app_id, "object_id": c.object_id, "roles": c.roles,
        })),
        "capabilities": reply.capabilities,
    })
}

/// A status as JSON.
pub(crate) fn status_json(status: &pb::SourceStatus) -> Value {
    json!({
        "id": status.id,
        "enabled": status.enabled,
        "caught_up": super::watch::caught_up(status),
        "folders": status.folders.iter().map(|f| json!({
            "display_name": f.display_name,
            "raw_name": raw_text(&f.raw_name),
            "fetch": f.fetch,
            "connection_state": f.connection_state,
            "last_poll": f.last_poll,
            "uidvalidity": f.uidvalidity,
            "last_uid": f.last_uid,
            "messages_synced": f.messages_synced,
            "messages_skipped": f.messages_skipped,
            "retry_count": f.retry_count,
            "last_error": f.last_error.as_ref().map(problem_json),
            "last_error_at": f.last_error_at,
            "last_error_checklist": f.last_error_checklist,
        })).collect::<Vec<_>>(),
        "warnings": status.warnings.iter().map(problem_json).collect::<Vec<_>>(),
        "expiring_secrets": status.expiring_secrets.iter().map(|s| json!({
            "slot": s.slot, "expires_at": s.expires_at, "expired": s.expired,
        })).collect::<Vec<_>>(),
    })
}

/// The table of `source list`.
pub(super) fn print_list(sources: &[pb::Source]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if sources.is_empty() {
        writeln!(out, "no sources yet: add one with `threatmail source add`")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<36}  {:<24} {:<9} {:<32} {:>7}  ENABLED",
        "ID", "NAME", "AUTH", "EMAIL", "FOLDERS"
    )?;
    for source in sources {
        let spec = source.spec.clone().unwrap_or_default();
        writeln!(
            out,
            "{:<36}  {:<24} {:<9} {:<32} {:>7}  {}",
            source.id,
            spec.name,
            auth_name(spec.auth_type),
            spec.email,
            source.folders.iter().filter(|f| f.fetch).count(),
            if spec.enabled.unwrap_or(true) {
                "yes"
            } else {
                "no"
            }
        )?;
    }
    Ok(())
}

/// `source show`.
pub(super) fn print_source(source: &pb::Source) -> anyhow::Result<()> {
    let spec = source.spec.clone().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let or_none = |text: &str| {
        if text.is_empty() {
            "-".to_owned()
        } else {
            text.to_owned()
        }
    };
    let secret = |set: bool, expires: &str| match (set, expires.is_empty()) {
        (false, _) => "not set".to_owned(),
        (true, true) => "set (expiry not given)".to_owned(),
        (true, false) => format!("set, expires {expires}"),
    };
    let host = if spec.host.is_empty() {
        "(the cloud's)".to_owned()
    } else {
        spec.host.clone()
    };
    let port = if spec.port == 0 { 993 } else { spec.port };
    let rows: Vec<(&str, String)> = vec![
        ("Id", source.id.clone()),
        ("Name", spec.name.clone()),
        ("Version", source.version.to_string()),
        ("Auth type", auth_name(spec.auth_type).to_owned()),
        ("Email", spec.email.clone()),
        ("App id", or_none(&spec.app_id)),
        ("Tenant id", or_none(&spec.tenant_id)),
        ("Object id", or_none(&spec.object_id)),
        ("Secret", secret(source.secret_set, &spec.secret_expires)),
        (
            "Next secret",
            secret(source.next_secret_set, &spec.next_secret_expires),
        ),
        ("Cloud", cloud_name(spec.cloud).to_owned()),
        (
            "Server",
            format!(
                "{host}:{port}{}",
                if spec.tls.unwrap_or(true) {
                    " (TLS)"
                } else {
                    " (no TLS)"
                }
            ),
        ),
        (
            "Enabled",
            if spec.enabled.unwrap_or(true) {
                "yes"
            } else {
                "no"
            }
            .to_owned(),
        ),
        (
            "Poll every",
            format!(
                "{}s",
                if spec.poll_interval_seconds == 0 {
                    300
                } else {
                    spec.poll_interval_seconds
                }
            ),
        ),
        (
            "After",
            match after_name(spec.after_processing) {
                "move" => format!("move to {:?}", spec.move_to_folder),
                other => other.to_owned(),
            },
        ),
        ("Allowed", or_none(&spec.sender_allow_list.join(", "))),
        ("Default TLP", or_none(&spec.default_tlp)),
        ("Tags", or_none(&spec.tags.join(", "))),
        ("Created", when(source.created_at)),
        ("Updated", when(source.updated_at)),
    ];
    for (label, value) in rows {
        writeln!(out, "{:<13}{value}", format!("{label}:"))?;
    }
    writeln!(out, "Folders:")?;
    if source.folders.is_empty() {
        writeln!(
            out,
            "  none selected: threatmail source folders {} --select INBOX",
            source.id
        )?;
    }
    for folder in &source.folders {
        writeln!(
            out,
            "  [{}] {}",
            if folder.fetch { "x" } else { " " },
            folder.display_name
        )?;
    }
    Ok(())
}

fn selected(folder: &pb::Folder, selection: &[pb::FolderSelection]) -> Option<bool> {
    selection
        .iter()
        .find(|s| s.raw_name == folder.raw_name)
        .map(|s| s.fetch)
}

fn tree_lines(
    folders: &[pb::Folder],
    selection: &[pb::FolderSelection],
    depth: usize,
    lines: &mut Vec<String>,
) {
    for folder in folders {
        let mark = match (folder.selectable, selected(folder, selection)) {
            (_, Some(true)) => "[x]",
            (true, _) => "[ ]",
            (false, _) => "   ",
        };
        let note = if folder.selectable {
            ""
        } else {
            "  (holds folders only)"
        };
        lines.push(format!(
            "  {mark} {}{}{note}",
            "  ".repeat(depth),
            folder.display_name
        ));
        tree_lines(&folder.children, selection, depth + 1, lines);
    }
}

/// The folder tree, with the selection marked (`[x]` fetched).
pub(super) fn print_tree(
    folders: &[pb::Folder],
    email: &str,
    selection: &[pb::FolderSelection],
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Folders of {email} ([x] = synced; pick with --select NAME):"
    )?;
    let mut lines = Vec::new();
    tree_lines(folders, selection, 0, &mut lines);
    if lines.is_empty() {
        writeln!(out, "  (the server listed no folders)")?;
    }
    for line in lines {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

/// A Save and Continue outcome: the stages, the folder tree when it passed, otherwise
/// each problem and the checklist with its commands.
pub(super) fn print_test(
    reply: &pb::TestSourceResponse,
    email: &str,
    selection: &[pb::FolderSelection],
) -> anyhow::Result<()> {
    let stages: Vec<String> = reply
        .stages
        .iter()
        .map(|s| format!("{} {}", s.name, s.outcome))
        .collect();
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "Save and Continue: {} ({})",
            if reply.ok { "passed" } else { "failed" },
            stages.join(", ")
        )?;
        // The checklist's summary repeats its problem's message: say it once, above it.
        let summary = reply.checklist.as_ref().map(|c| c.summary.as_str());
        for problem in reply
            .problems
            .iter()
            .filter(|p| Some(p.message.as_str()) != summary)
        {
            writeln!(out, "  problem: {}", problem_line(problem))?;
        }
        if let Some(checklist) = &reply.checklist {
            writeln!(out, "\n{} [{}]", checklist.summary, checklist.reason)?;
            writeln!(out, "Check, in this order:")?;
            for (i, step) in checklist.steps.iter().enumerate() {
                let field = if step.field.is_empty() {
                    String::new()
                } else {
                    format!(" (field {})", step.field)
                };
                writeln!(out, "  {}. {}{field}", i + 1, step.message)?;
                if !step.command.is_empty() {
                    writeln!(out, "     PS> {}", step.command)?;
                }
            }
        }
        for warning in &reply.warnings {
            writeln!(out, "  warning: {}", problem_line(warning))?;
        }
        if reply.ok {
            writeln!(out)?;
        }
    }
    if reply.ok {
        print_tree(&reply.folders, email, selection)?;
    }
    Ok(())
}

/// Why a new secret was not saved: what the `stage` that tried it answered.
pub(super) fn print_secret_refused(
    reply: &pb::TestSourceResponse,
    stage: &str,
) -> anyhow::Result<()> {
    let mut out = std::io::stderr().lock();
    writeln!(
        out,
        "error: the secret was not saved: it was refused at the {stage} stage"
    )?;
    for problem in &reply.problems {
        writeln!(out, "  problem: {}", problem_line(problem))?;
    }
    writeln!(
        out,
        "nothing changed; fix the value (or pass --no-test to save it without this check)"
    )?;
    Ok(())
}

/// One line for stderr: why Save and Continue failed.
pub(super) fn test_failure_line(reply: &pb::TestSourceResponse) -> String {
    let reasons: Vec<&str> = reply
        .problems
        .iter()
        .map(|p| p.reason.as_str())
        .filter(|r| !r.is_empty())
        .collect();
    // Every stage may have passed and a check after them failed (a move target that is
    // not in the mailbox).
    let at = match reply.stages.iter().find(|s| s.outcome == "failed") {
        Some(stage) => format!("at the {} stage", stage.name),
        None => "after its stages passed".to_owned(),
    };
    format!(
        "Save and Continue failed {at} ({}): fix what is listed above",
        reasons.join(", ")
    )
}

/// `source status`.
pub(super) fn print_status(source: &pb::Source, status: &pb::SourceStatus) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let name = source
        .spec
        .as_ref()
        .map(|s| s.name.as_str())
        .unwrap_or_default();
    writeln!(
        out,
        "Source {name:?} ({}){}",
        status.id,
        if status.enabled { "" } else { " — disabled" }
    )?;
    for line in status_lines(status) {
        writeln!(out, "{line}")?;
    }
    for warning in &status.warnings {
        writeln!(out, "warning: {}", problem_line(warning))?;
    }
    Ok(())
}

/// The per-folder lines of a status (also what `--watch` redraws).
pub(super) fn status_lines(status: &pb::SourceStatus) -> Vec<String> {
    if status.folders.is_empty() {
        return vec![format!(
            "  no folder selected: threatmail source folders {} --select INBOX",
            status.id
        )];
    }
    let mut lines = vec![format!(
        "  {:<28} {:<11} {:>8}  {:<16} LAST ERROR",
        "FOLDER", "STATE", "SYNCED", "LAST POLL (UTC)"
    )];
    // A failure of the source's login is every folder's: its text and checklist are shown
    // at the first folder, and the others point there.
    let mut shown: Vec<(String, &str)> = Vec::new();
    for folder in &status.folders {
        let state = match (folder.fetch, folder.connection_state.as_str()) {
            (false, _) => "not synced",
            // Selected, and no fetcher has polled it since: a new selection, or one made
            // again after the folder was deselected.
            (true, "unknown" | "disabled") => "queued",
            (true, state) => state,
        };
        let retries = if folder.retry_count > 0 {
            format!(" (retry {})", folder.retry_count)
        } else {
            String::new()
        };
        let mut checklist = folder.last_error_checklist.as_slice();
        let error = match &folder.last_error {
            None => "-".to_owned(),
            Some(p) => {
                let text = problem_line(p);
                let key = format!("{text}\n{}", checklist.join("\n"));
                match shown.iter().find(|(seen, _)| *seen == key) {
                    Some((_, first)) => {
                        checklist = &[];
                        format!("as {first}{retries}")
                    }
                    None => {
                        shown.push((key, folder.display_name.as_str()));
                        format!("{text}{retries}")
                    }
                }
            }
        };
        lines.push(format!(
            "  {:<28} {:<11} {:>8}  {:<16} {error}",
            folder.display_name,
            state,
            folder.messages_synced,
            when(folder.last_poll)
        ));
        if folder.messages_skipped > 0 {
            lines.push(format!(
                "      {} message(s) over the size limit were not fetched (the fetcher's \
                 sync.max_message_bytes)",
                folder.messages_skipped
            ));
        }
        for (i, step) in checklist.iter().enumerate() {
            lines.push(format!("      {}. {step}", i + 1));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error names the stage that failed, or says they all passed (a check after
    /// them failed), never a made-up stage.
    #[test]
    fn the_failure_line_names_the_failed_stage_or_says_none_did() {
        let stage = |name: &str, outcome: &str| pb::TestStage {
            name: name.to_owned(),
            outcome: outcome.to_owned(),
        };
        let problem = pb::Problem {
            reason: "validation.folder_not_found".to_owned(),
            ..Default::default()
        };
        let mut reply = pb::TestSourceResponse {
            problems: vec![problem],
            stages: vec![
                stage("validate", "ok"),
                stage("token", "ok"),
                stage("login", "ok"),
            ],
            ..Default::default()
        };
        let line = test_failure_line(&reply);
        assert!(
            line.starts_with(
                "Save and Continue failed after its stages passed (validation.folder_not_found)"
            ),
            "{line}"
        );
        reply.stages[2].outcome = "failed".to_owned();
        let line = test_failure_line(&reply);
        assert!(line.contains("failed at the login stage"), "{line}");
    }

    #[test]
    fn messages_over_the_size_limit_are_shown_under_their_folder() {
        let status = pb::SourceStatus {
            id: "s1".to_owned(),
            folders: vec![pb::FolderStatus {
                display_name: "INBOX".to_owned(),
                fetch: true,
                connection_state: "idle".to_owned(),
                messages_synced: 12,
                messages_skipped: 3,
                ..Default::default()
            }],
            ..Default::default()
        };
        let lines = status_lines(&status);
        assert!(
            lines[2].contains("3 message(s) over the size limit were not fetched"),
            "{lines:?}"
        );
        assert_eq!(status_json(&status)["folders"][0]["messages_skipped"], 3);
    }

    #[test]
    fn a_selected_folder_no_fetcher_has_polled_is_queued() {
        let folder = |name: &str, fetch: bool, state: &str| pb::FolderStatus {
            display_name: name.to_owned(),
            fetch,
            connection_state: state.to_owned(),
            ..Default::default()
        };
        let status = pb::SourceStatus {
            id: "s1".to_owned(),
            folders: vec![
                folder("New", true, "unknown"),
                folder("Again", true, "disabled"),
                folder("Left", false, "disabled"),
                folder("Busy", true, "syncing"),
            ],
            ..Default::default()
        };
        let lines = status_lines(&status);
        let state_of = |name: &str| {
            lines
                .iter()
                .find(|l| l.trim_start().starts_with(name))
                .map(|l| l.split_whitespace().nth(1).unwrap_or_default().to_owned())
        };
        assert_eq!(state_of("New").as_deref(), Some("queued"));
        assert_eq!(state_of("Again").as_deref(), Some("queued"));
        assert_eq!(state_of("Left").as_deref(), Some("not"));
        assert_eq!(state_of("Busy").as_deref(), Some("syncing"));
    }

    #[test]
    fn a_failure_every_folder_shares_is_shown_once() {
        let refused = |name: &str| pb::FolderStatus {
            display_name: name.to_owned(),
            fetch: true,
            connection_state: "failed".to_owned(),
            retry_count: 2,
            last_error: Some(pb::Problem {
                reason: "imap.authenticate_failed".to_owned(),
                message: "Exchange refused the login".to_owned(),
                ..Default::default()
            }),
            last_error_checklist: vec!["check the grant".to_owned(), "wait".to_owned()],
            ..Default::default()
        };
        let mut other = refused("Feeds");
        other.last_error_checklist = vec!["something else".to_owned()];
        let status = pb::SourceStatus {
            id: "s1".to_owned(),
            folders: vec![refused("INBOX"), refused("Phish Reports"), other],
            ..Default::default()
        };
        let lines = status_lines(&status);
        let text = lines.join("\n");
        assert!(!text.contains("queued"), "{text}");
        assert_eq!(text.matches("check the grant").count(), 1, "{text}");
        assert_eq!(
            text.matches("Exchange refused the login").count(),
            2,
            "{text}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Phish Reports") && l.contains("as INBOX (retry 2)")),
            "{text}"
        );
        assert!(text.contains("1. something else"), "{text}");
    }
}
