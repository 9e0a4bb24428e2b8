//! `threatmail source …`: email sources in the registry (DESIGN §1, the user's side).
//!
//! `add` fills the Add Email Source form from flags, runs "Save and Continue" (the
//! registry's `TestSource`: fields, token, IMAP login, folder tree) and saves the source
//! only when it passes, printing the folder tree; otherwise it prints the diagnosis (the
//! exact cause, or the ordered checklist) and exits 1 with nothing saved. `folders` picks
//! folders by their display names as the tree shows them (the registry stores the server's
//! raw names); `status --watch` follows a first sync. The secret is read from a file, a
//! named variable, a prompt without echo, or stdin ([`super::secret_input`]), never from
//! the command line.
//!
//! A `SOURCE` argument is a source's id or its name.

mod render;
mod watch;

pub(crate) use render::when;

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use serde_json::json;
use threatmail_proto::v1 as pb;

use super::client::{self, RegistryArgs, RegistryClient, problem_json, problem_line, rpc_error};
use super::secret_input::SecretSource;

/// Arguments of `threatmail source`.
#[derive(Debug, clap::Args)]
pub(crate) struct SourceArgs {
    #[command(flatten)]
    registry: RegistryArgs,
    #[command(subcommand)]
    command: SourceCommand,
}

#[derive(Debug, clap::Subcommand)]
enum SourceCommand {
    /// Add an email source: fill the form, run Save and Continue, save it if it passes and
    /// print its folder tree (or the diagnosis, exit 1, nothing saved).
    Add(Box<AddArgs>),
    /// Every source.
    List,
    /// One source's fields and folder selection (never its secrets).
    Show {
        /// The source's id or name.
        source: String,
    },
    /// Per-folder sync status and expiring secrets; --watch follows a sync until every
    /// selected folder has caught up.
    Status(StatusArgs),
    /// Change fields of a source (only those given).
    Update(Box<UpdateArgs>),
    /// Delete a source, its folder selection and status.
    Rm {
        /// The source's id or name.
        source: String,
        /// Do not ask (asked only on a terminal).
        #[arg(long, short)]
        yes: bool,
    },
    /// Run Save and Continue again on a stored source (with its stored secrets).
    Test {
        /// The source's id or name.
        source: String,
    },
    /// The folder tree with the selection; --select / --deselect change it.
    Folders(FoldersArgs),
    /// Replace the client secret, or stage the next one (--next) before the current
    /// expires.
    Secret(SecretArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuthTypeArg {
    /// Microsoft 365 app-only OAuth 2.0 (client credentials, XOAUTH2).
    MsOauth2,
    /// A username and password (LOGIN), for any other IMAP server.
    Password,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum CloudArg {
    Global,
    UsGovernment,
    China,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AfterArg {
    /// Leave the mailbox untouched.
    None,
    /// Set \Seen.
    MarkSeen,
    /// Move to --move-to.
    Move,
}

/// The form's fields; in `update`, only those given change.
#[derive(Debug, Clone, Default, clap::Args)]
struct FormArgs {
    /// A name for the source (unique).
    #[arg(long)]
    name: Option<String>,
    /// The account type.
    #[arg(long, value_name = "TYPE", value_parser = ["imap"])]
    account_type: Option<String>,
    /// How to log in (default ms-oauth2).
    #[arg(long, value_enum)]
    auth_type: Option<AuthTypeArg>,
    /// The mailbox address (or the IMAP username for `password`).
    #[arg(long, value_name = "ADDRESS")]
    email: Option<String>,
    /// The Application (client) ID.
    #[arg(long, value_name = "GUID")]
    app_id: Option<String>,
    /// The Directory (tenant) ID: a GUID or a verified domain.
    #[arg(long, value_name = "GUID|DOMAIN")]
    tenant_id: Option<String>,
    /// The Enterprise application's Object ID used with New-ServicePrincipal (optional;
    /// it sharpens the diagnosis).
    #[arg(long, value_name = "GUID")]
    object_id: Option<String>,
    /// When the secret expires: 2027-06-30 or RFC 3339.
    #[arg(long, value_name = "DATE")]
    secret_expires: Option<String>,
    /// The Microsoft cloud (gives the Entra authority and the IMAP host).
    #[arg(long, value_enum)]
    cloud: Option<CloudArg>,
    /// The IMAP host (default: the cloud's, outlook.office365.com); required for password.
    #[arg(long)]
    host: Option<String>,
    /// The IMAP port (default 993).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Implicit TLS (default true).
    #[arg(long, value_name = "BOOL")]
    tls: Option<bool>,
    /// Synced by the fetchers (default true).
    #[arg(long, value_name = "BOOL")]
    enabled: Option<bool>,
    /// How often to poll: 30s to 1d (default 5m).
    #[arg(long, value_name = "DURATION", value_parser = parse_interval)]
    poll_interval: Option<u32>,
    /// Tags added to every message of the source and to its exports (comma-separated;
    /// in update, replaces them).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    tags: Option<Vec<String>>,
    /// Senders (addresses or @domains) whose mail counts as allowed (comma-separated).
    #[arg(long, value_delimiter = ',', num_args = 1..)]
    allow_senders: Option<Vec<String>>,
    /// TLP for messages that carry no marking (TLP:CLEAR, TLP:GREEN, TLP:AMBER, …).
    #[arg(long, value_name = "TLP")]
    default_tlp: Option<String>,
    /// What to do with a message once stored.
    #[arg(long, value_enum)]
    after_processing: Option<AfterArg>,
    /// For --after-processing move: the folder to move to.
    #[arg(long, value_name = "FOLDER")]
    move_to: Option<String>,
}

fn parse_interval(text: &str) -> Result<u32, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("{e}: write e.g. 30s, 5m or 1h"))?;
    // The registry reads 0 seconds as "the default", so a zero (or sub-second) interval
    // given here would be saved as 5m without a word: refuse it, as the registry refuses
    // every other value out of range.
    if duration.as_secs() == 0 {
        return Err("a poll interval of less than a second: poll every 30s to 1d".to_owned());
    }
    u32::try_from(duration.as_secs()).map_err(|_| "too long".to_owned())
}

impl FormArgs {
    /// Whether a field that decides how the source logs in is given.
    fn touches_login(&self) -> bool {
        self.auth_type.is_some()
            || self.email.is_some()
            || self.app_id.is_some()
            || self.tenant_id.is_some()
            || self.object_id.is_some()
            || self.cloud.is_some()
            || self.host.is_some()
            || self.port.is_some()
            || self.tls.is_some()
    }

    /// Writes the given fields into `spec`.
    fn apply(&self, spec: &mut pb::SourceSpec) {
        let set = |target: &mut String, value: &Option<String>| {
            if let Some(value) = value {
                target.clone_from(value);
            }
        };
        set(&mut spec.name, &self.name);
        set(&mut spec.account_type, &self.account_type);
        set(&mut spec.email, &self.email);
        set(&mut spec.app_id, &self.app_id);
        set(&mut spec.tenant_id, &self.tenant_id);
        set(&mut spec.object_id, &self.object_id);
        set(&mut spec.secret_expires, &self.secret_expires);
        set(&mut spec.host, &self.host);
        set(&mut spec.default_tlp, &self.default_tlp);
        set(&mut spec.move_to_folder, &self.move_to);
        if let Some(auth) = self.auth_type {
            spec.auth_type = match auth {
                AuthTypeArg::MsOauth2 => pb::AuthType::MsOauth2,
                AuthTypeArg::Password => pb::AuthType::Password,
            } as i32;
        }
        if let Some(cloud) = self.cloud {
            spec.cloud = match cloud {
                CloudArg::Global => pb::Cloud::Global,
                CloudArg::UsGovernment => pb::Cloud::UsGovernment,
                CloudArg::China => pb::Cloud::China,
            } as i32;
        }
        if let Some(after) = self.after_processing {
            spec.after_processing = match after {
                AfterArg::None => pb::AfterProcessing::None,
                AfterArg::MarkSeen => pb::AfterProcessing::MarkSeen,
                AfterArg::Move => pb::AfterProcessing::Move,
            } as i32;
        }
        if let Some(port) = self.port {
            spec.port = u32::from(port);
        }
        if self.tls.is_some() {
            spec.tls = self.tls;
        }
        if self.enabled.is_some() {
            spec.enabled = self.enabled;
        }
        if let Some(seconds) = self.poll_interval {
            spec.poll_interval_seconds = seconds;
        }
        if let Some(tags) = &self.tags {
            spec.tags = clean_list(tags);
        }
        if let Some(senders) = &self.allow_senders {
            spec.sender_allow_list = clean_list(senders);
        }
    }
}

fn clean_list(items: &[String]) -> Vec<String> {
    items
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect()
}

#[derive(Debug, clap::Args)]
struct AddArgs {
    #[command(flatten)]
    form: FormArgs,
    #[command(flatten)]
    secret: SecretSource,
    /// Folders to select once saved (display names, as the tree shows them).
    #[arg(long, value_name = "FOLDER")]
    select: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct UpdateArgs {
    /// The source's id or name.
    source: String,
    #[command(flatten)]
    form: FormArgs,
    #[command(flatten)]
    secret: SecretSource,
    /// Replace the secret with one typed at the prompt (or read from stdin).
    #[arg(long, conflicts_with_all = ["secret_key_file", "secret_key_env"])]
    new_secret: bool,
    /// Save a change of how the source logs in (secret, tenant, app, mailbox, server)
    /// without running Save and Continue on it first.
    #[arg(long)]
    no_test: bool,
}

#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// The source's id or name.
    source: String,
    /// Follow the sync until every selected folder has caught up (or Ctrl-C).
    #[arg(long)]
    watch: bool,
    /// How often to ask while watching.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Give up watching after this long (exit 1); default: never.
    #[arg(long, value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
}

#[derive(Debug, clap::Args)]
struct FoldersArgs {
    /// The source's id or name.
    source: String,
    /// Fetch this folder (its display name, as the tree shows it); repeatable.
    #[arg(long, value_name = "FOLDER")]
    select: Vec<String>,
    /// Stop fetching this folder; repeatable.
    #[arg(long, value_name = "FOLDER")]
    deselect: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct SecretArgs {
    /// The source's id or name.
    source: String,
    /// Stage the next secret (rollover) instead of replacing the current one.
    #[arg(long)]
    next: bool,
    /// Remove the staged next secret.
    #[arg(long, conflicts_with_all = ["next", "expires", "secret_key_file", "secret_key_env"])]
    clear_next: bool,
    /// When this secret expires: 2027-06-30 or RFC 3339.
    #[arg(long, value_name = "DATE", required_unless_present = "clear_next")]
    expires: Option<String>,
    /// Save without first asking Entra ID for a token with it (for a password source, the
    /// server for a login).
    #[arg(long, conflicts_with = "clear_next")]
    no_test: bool,
    #[command(flatten)]
    secret: SecretSource,
}

/// Runs `threatmail source …`.
pub(crate) fn run(args: SourceArgs) -> anyhow::Result<ExitCode> {
    let json = args.registry.json;
    match client::runtime()?.block_on(run_command(args)) {
        Err(error) if client::is_broken_pipe(&error) => Ok(ExitCode::SUCCESS),
        Err(error) if json => {
            let _ = outln!("{}", client::error_json(&error));
            Err(error)
        }
        other => other,
    }
}

async fn run_command(args: SourceArgs) -> anyhow::Result<ExitCode> {
    let json = args.registry.json;
    let registry = &args.registry;
    // Before anything else (a registry or key problem would hide it): a secret given as an
    // argument is refused, saying where it goes.
    match &args.command {
        SourceCommand::Add(add) => add.secret.refuse_argument()?,
        SourceCommand::Update(update) => update.secret.refuse_argument()?,
        SourceCommand::Secret(secret) => secret.secret.refuse_argument()?,
        _ => {}
    }
    match args.command {
        SourceCommand::Add(add) => {
            let client = registry.connect("Create Threat Mailbox").await?;
            add_source(client, *add, json).await
        }
        SourceCommand::List => {
            let mut client = registry.connect("View Threat Mailbox").await?;
            let sources = list(&mut client).await?;
            if json {
                print_json(
                    &json!({ "ok": true, "sources": sources.iter().map(render::source_json).collect::<Vec<_>>() }),
                )?;
            } else {
                render::print_list(&sources)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SourceCommand::Show { source } => {
            let mut client = registry.connect("View Threat Mailbox").await?;
            let found = resolve(&mut client, &source).await?;
            if json {
                print_json(&json!({ "ok": true, "source": render::source_json(&found) }))?;
            } else {
                render::print_source(&found)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SourceCommand::Status(status) => {
            let mut client = registry.connect("View Threat Mailbox").await?;
            let found = resolve(&mut client, &status.source).await?;
            if status.watch {
                watch::watch(&mut client, &found, status.interval, status.timeout, json).await
            } else {
                let reply = get_status(&mut client, &found.id).await?;
                if json {
                    print_json(&json!({ "ok": true, "status": render::status_json(&reply) }))?;
                } else {
                    render::print_status(&found, &reply)?;
                }
                Ok(ExitCode::SUCCESS)
            }
        }
        SourceCommand::Update(update) => {
            let mut client = registry.connect("Update Threat Mailbox").await?;
            let found = resolve(&mut client, &update.source).await?;
            let mut spec = found.spec.clone().unwrap_or_default();
            update.form.apply(&mut spec);
            let new_secret = update.secret.is_named() || update.new_secret;
            if new_secret {
                spec.secret_key = update
                    .secret
                    .read("New secret key (not shown): ")?
                    .expose_secret()
                    .to_owned();
            }
            // Save and Continue on the changed source (stored secrets stand in for those
            // not given): a login that no longer works is not saved.
            let mut warnings = Vec::new();
            if (new_secret || update.form.touches_login()) && !update.no_test {
                let reply = test(&mut client, spec.clone(), &found.id).await?;
                if !reply.ok {
                    if json {
                        print_json(&json!({
                            "ok": false,
                            "saved": false,
                            "error": render::test_failure_line(&reply),
                            "source": render::source_json(&found),
                            "test": render::test_json(&reply),
                        }))?;
                    } else {
                        render::print_test(&reply, &spec.email, &found.folders)?;
                    }
                    eprintln!(
                        "error: not saved: {}; or pass --no-test to save it untested",
                        render::test_failure_line(&reply)
                    );
                    return Ok(ExitCode::FAILURE);
                }
                warnings = reply.warnings;
            }
            let saved = update_source(&mut client, &found, spec, false).await?;
            report_saved(&saved, "updated", &warnings, json)?;
            Ok(ExitCode::SUCCESS)
        }
        SourceCommand::Rm { source, yes } => {
            let mut client = registry.connect("Update Threat Mailbox").await?;
            let found = resolve(&mut client, &source).await?;
            let name = found
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            if !yes && !json && std::io::stdin().is_terminal() && !confirm(&name)? {
                eprintln!("nothing deleted");
                return Ok(ExitCode::FAILURE);
            }
            let deleted = client
                .delete_source(pb::DeleteSourceRequest {
                    id: found.id.clone(),
                })
                .await
                .map_err(|s| rpc_error("DeleteSource", s))?
                .into_inner()
                .deleted;
            if json {
                print_json(
                    &json!({ "ok": true, "id": found.id, "name": name, "deleted": deleted }),
                )?;
            } else if deleted {
                outln!("deleted source {name:?} ({})", found.id)?;
            } else {
                outln!("source {name:?} ({}) was already gone", found.id)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SourceCommand::Test { source } => {
            let mut client = registry.connect("Create and Update Threat Mailbox").await?;
            let found = resolve(&mut client, &source).await?;
            let reply = test(
                &mut client,
                found.spec.clone().unwrap_or_default(),
                &found.id,
            )
            .await?;
            let spec = found.spec.clone().unwrap_or_default();
            if json {
                print_json(&json!({
                    "ok": reply.ok,
                    "source": render::source_json(&found),
                    "test": render::test_json(&reply),
                }))?;
            } else {
                render::print_test(&reply, &spec.email, &found.folders)?;
            }
            if reply.ok {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: {}", render::test_failure_line(&reply));
                Ok(ExitCode::FAILURE)
            }
        }
        SourceCommand::Folders(folders) => {
            let mut client = registry.connect("Update Threat Mailbox").await?;
            let found = resolve(&mut client, &folders.source).await?;
            select_folders(&mut client, found, &folders.select, &folders.deselect, json).await
        }
        SourceCommand::Secret(secret) => {
            let mut client = registry.connect("Update Threat Mailbox").await?;
            let found = resolve(&mut client, &secret.source).await?;
            let mut spec = found.spec.clone().unwrap_or_default();
            let mut warnings = Vec::new();
            let mut tested = !secret.clear_next;
            let what = if secret.clear_next {
                "next secret removed"
            } else {
                let value = secret.secret.read(if secret.next {
                    "Next secret key (not shown): "
                } else {
                    "New secret key (not shown): "
                })?;
                let expires = secret.expires.clone().unwrap_or_default();
                if secret.no_test {
                    tested = false;
                } else {
                    // Tried as the current secret, so a next one is judged on its own even
                    // when the current one no longer works (the reason to roll over).
                    let mut trial = spec.clone();
                    trial.secret_key = value.expose_secret().to_owned();
                    trial.secret_expires = expires.clone();
                    trial.next_secret_key.clear();
                    trial.next_secret_expires.clear();
                    let reply = test(&mut client, trial, &found.id).await?;
                    if let Some(stage) = refused_secret_stage(&reply, spec.auth_type()) {
                        if json {
                            print_json(&json!({
                                "ok": false,
                                "saved": false,
                                "error": format!("the secret was not saved: it was refused at the {stage} stage"),
                                "source": render::source_json(&found),
                                "test": render::test_json(&reply),
                            }))?;
                        }
                        render::print_secret_refused(&reply, stage)?;
                        return Ok(ExitCode::FAILURE);
                    }
                    warnings = reply.warnings;
                }
                if secret.next {
                    spec.next_secret_key = value.expose_secret().to_owned();
                    spec.next_secret_expires = expires;
                    "next secret staged"
                } else {
                    spec.secret_key = value.expose_secret().to_owned();
                    spec.secret_expires = expires;
                    "secret replaced"
                }
            };
            let password = spec.auth_type() == pb::AuthType::Password;
            let saved = update_source(&mut client, &found, spec, secret.clear_next).await?;
            report_saved(&saved, what, &warnings, json)?;
            if !json && !secret.clear_next {
                if !tested {
                    eprintln!(
                        "not tested; check it with `threatmail source test {}` (Save and Continue also tries the next secret)",
                        saved.id
                    );
                } else {
                    eprintln!(
                        "tested first: {}",
                        if password {
                            "the server accepted the login"
                        } else {
                            "Entra ID gave a token for it"
                        }
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The stage that refused the secret under test, if one did: the fields' validation (a bad
/// expiry date), then the token stage for an OAuth source, the login for a password source
/// (where the password is what the login tries).
fn refused_secret_stage(
    reply: &pb::TestSourceResponse,
    auth: pb::AuthType,
) -> Option<&'static str> {
    let judged = match auth {
        pb::AuthType::Password => "login",
        _ => "token",
    };
    ["validate", judged].into_iter().find(|stage| {
        reply
            .stages
            .iter()
            .any(|s| s.name == *stage && s.outcome == "failed")
    })
}

fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

fn confirm(name: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    eprint!("delete source {name:?} with its folder selection and status? [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn list(client: &mut RegistryClient) -> anyhow::Result<Vec<pb::Source>> {
    Ok(client
        .list_sources(pb::ListSourcesRequest {})
        .await
        .map_err(|s| rpc_error("ListSources", s))?
        .into_inner()
        .sources)
}

/// The source whose id is `wanted`, else whose name is (ignoring case and surrounding
/// spaces, as the registry keeps names unique).
async fn resolve(client: &mut RegistryClient, wanted: &str) -> anyhow::Result<pb::Source> {
    let wanted_trim = wanted.trim();
    let sources = match client.list_sources(pb::ListSourcesRequest {}).await {
        Ok(reply) => reply.into_inner().sources,
        Err(status) if status.code() == tonic::Code::PermissionDenied => {
            return Err(rpc_error("ListSources", status).context(
                "the source is looked up first, which needs the View Threat Mailbox permission \
                 besides the one the command needs: use a key with both (e.g. view,update)",
            ));
        }
        Err(status) => return Err(rpc_error("ListSources", status)),
    };
    let by_name = |s: &&pb::Source| {
        s.spec
            .as_ref()
            .is_some_and(|spec| spec.name.trim().to_lowercase() == wanted_trim.to_lowercase())
    };
    if let Some(found) = sources.iter().find(|s| s.id == wanted_trim) {
        return Ok(found.clone());
    }
    if let Some(found) = sources.iter().find(by_name) {
        return Ok(found.clone());
    }
    let names: Vec<String> = sources
        .iter()
        .filter_map(|s| s.spec.as_ref().map(|spec| format!("{:?}", spec.name)))
        .collect();
    if names.is_empty() {
        anyhow::bail!(
            "no source is named or has the id {wanted:?}: there are no sources yet (`threatmail source add`)"
        );
    }
    anyhow::bail!(
        "no source is named or has the id {wanted:?}: the sources are {}",
        names.join(", ")
    )
}

async fn get_status(client: &mut RegistryClient, id: &str) -> anyhow::Result<pb::SourceStatus> {
    Ok(client
        .get_status(pb::GetStatusRequest { id: id.to_owned() })
        .await
        .map_err(|s| rpc_error("GetStatus", s))?
        .into_inner())
}

async fn test(
    client: &mut RegistryClient,
    spec: pb::SourceSpec,
    source_id: &str,
) -> anyhow::Result<pb::TestSourceResponse> {
    Ok(client
        .test_source(pb::TestSourceRequest {
            spec: Some(spec),
            source_id: source_id.to_owned(),
        })
        .await
        .map_err(|s| rpc_error("TestSource", s))?
        .into_inner())
}

async fn update_source(
    client: &mut RegistryClient,
    found: &pb::Source,
    spec: pb::SourceSpec,
    clear_next_secret: bool,
) -> anyhow::Result<pb::Source> {
    Ok(client
        .update_source(pb::UpdateSourceRequest {
            id: found.id.clone(),
            expected_version: found.version,
            spec: Some(spec),
            clear_next_secret,
        })
        .await
        .map_err(|s| rpc_error("UpdateSource", s))?
        .into_inner())
}

/// What was saved, with the warnings of the Save and Continue run before it (on stderr).
fn report_saved(
    saved: &pb::Source,
    what: &str,
    warnings: &[pb::Problem],
    json: bool,
) -> anyhow::Result<()> {
    if json {
        print_json(&json!({
            "ok": true,
            "source": render::source_json(saved),
            "warnings": warnings.iter().map(problem_json).collect::<Vec<_>>(),
        }))
    } else {
        let name = saved
            .spec
            .as_ref()
            .map(|s| s.name.as_str())
            .unwrap_or_default();
        outln!(
            "{what}: source {name:?} ({}), version {}",
            saved.id,
            saved.version
        )?;
        for warning in warnings {
            eprintln!("warning: {}", problem_line(warning));
        }
        Ok(())
    }
}

async fn add_source(
    mut client: RegistryClient,
    add: AddArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut spec = pb::SourceSpec {
        account_type: "imap".to_owned(),
        auth_type: pb::AuthType::MsOauth2 as i32,
        ..Default::default()
    };
    add.form.apply(&mut spec);
    let prompt = if spec.auth_type == pb::AuthType::Password as i32 {
        "Password (not shown): "
    } else {
        "Client secret Value (not shown): "
    };
    spec.secret_key = add.secret.read(prompt)?.expose_secret().to_owned();

    let reply = test(&mut client, spec.clone(), "").await?;
    if !reply.ok {
        if json {
            print_json(&json!({ "ok": false, "saved": false, "test": render::test_json(&reply) }))?;
        } else {
            render::print_test(&reply, &spec.email, &[])?;
            outln!("\nNothing was saved: fix the above and run `threatmail source add` again.")?;
        }
        eprintln!("error: {}", render::test_failure_line(&reply));
        return Ok(ExitCode::FAILURE);
    }
    let mut saved = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(spec.clone()),
        })
        .await
        .map_err(|s| rpc_error("CreateSource", s))?
        .into_inner();
    if !add.select.is_empty() {
        let saved_note = || {
            format!(
                "source {:?} ({}) was saved, but its folders were not selected (choose them \
                 with `threatmail source folders {} --select …`)",
                spec.name.trim(),
                saved.id,
                saved.id
            )
        };
        let selection = selection_with(&saved, &add.select, &[]).with_context(saved_note)?;
        saved = set_folders(&mut client, &saved, selection)
            .await
            .with_context(saved_note)?;
    }
    if json {
        print_json(&json!({
            "ok": true,
            "saved": true,
            "source": render::source_json(&saved),
            "test": render::test_json(&reply),
        }))?;
    } else {
        render::print_test(&reply, &spec.email, &saved.folders)?;
        outln!("\nSaved source {:?} ({}).", spec.name.trim(), saved.id)?;
        if saved.folders.iter().any(|f| f.fetch) {
            outln!(
                "Follow the first sync with: threatmail source status {} --watch",
                saved.id
            )?;
        } else {
            outln!(
                "Next, choose folders to sync: threatmail source folders {} --select INBOX",
                saved.id
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The stored selection with `select` fetched and `deselect` not. A folder not in the
/// selection yet is sent by its display name alone, for the registry to find in the live
/// list and store with the server's raw name (BR-04).
fn selection_with(
    source: &pb::Source,
    select: &[String],
    deselect: &[String],
) -> anyhow::Result<Vec<pb::FolderSelection>> {
    use threatmail_source::folders::display_name_matches;
    let mut selection = source.folders.clone();
    for wanted in deselect {
        match selection
            .iter_mut()
            .find(|f| display_name_matches(wanted, &f.display_name))
        {
            Some(entry) => entry.fetch = false,
            None => {
                let chosen: Vec<String> = selection
                    .iter()
                    .filter(|f| f.fetch)
                    .map(|f| format!("{:?}", f.display_name))
                    .collect();
                anyhow::bail!(
                    "--deselect {wanted:?}: that folder is not selected (selected: {})",
                    if chosen.is_empty() {
                        "none".to_owned()
                    } else {
                        chosen.join(", ")
                    }
                );
            }
        }
    }
    for wanted in select {
        if deselect.iter().any(|d| display_name_matches(wanted, d)) {
            anyhow::bail!("{wanted:?} is both selected and deselected: choose one");
        }
        match selection
            .iter_mut()
            .find(|f| display_name_matches(wanted, &f.display_name))
        {
            Some(entry) => entry.fetch = true,
            None => selection.push(pb::FolderSelection {
                raw_name: Vec::new(),
                display_name: wanted.trim().to_owned(),
                fetch: true,
            }),
        }
    }
    Ok(selection)
}

async fn set_folders(
    client: &mut RegistryClient,
    source: &pb::Source,
    folders: Vec<pb::FolderSelection>,
) -> anyhow::Result<pb::Source> {
    Ok(client
        .set_folders(pb::SetFoldersRequest {
            id: source.id.clone(),
            expected_version: source.version,
            folders,
        })
        .await
        .map_err(|s| rpc_error("SetFolders", s))?
        .into_inner())
}

async fn select_folders(
    client: &mut RegistryClient,
    found: pb::Source,
    select: &[String],
    deselect: &[String],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let source = if select.is_empty() && deselect.is_empty() {
        found
    } else {
        let selection = selection_with(&found, select, deselect)?;
        set_folders(client, &found, selection).await?
    };
    let tree = client
        .list_folders(pb::ListSourceFoldersRequest {
            id: source.id.clone(),
        })
        .await
        .map_err(|s| rpc_error("ListFolders", s))?
        .into_inner();
    if json {
        print_json(&json!({
            "ok": true,
            "source": render::source_json(&source),
            "tree": tree.folders.iter().map(render::folder_json).collect::<Vec<_>>(),
        }))?;
    } else {
        let email = source
            .spec
            .as_ref()
            .map(|s| s.email.as_str())
            .unwrap_or_default();
        render::print_tree(&tree.folders, email, &source.folders)?;
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Zero is the registry's "default": an interval that rounds to it is refused, not
    /// saved as 5 minutes.
    #[test]
    fn a_poll_interval_under_a_second_is_refused() {
        assert_eq!(parse_interval("30s"), Ok(30));
        assert_eq!(parse_interval("1h"), Ok(3600));
        for zero in ["0s", "1ms", "999ms"] {
            let refused = parse_interval(zero).expect_err(zero);
            assert!(refused.contains("30s to 1d"), "{zero}: {refused}");
        }
    }

    fn source(folders: &[(&str, &str, bool)]) -> pb::Source {
        pb::Source {
            id: "s".into(),
            version: 3,
            folders: folders
                .iter()
                .map(|(raw, display, fetch)| pb::FolderSelection {
                    raw_name: raw.as_bytes().to_vec(),
                    display_name: (*display).to_owned(),
                    fetch: *fetch,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn selecting_keeps_raw_names_and_adds_new_folders_by_display_name() {
        let stored = source(&[
            ("&BCQEOARIBDgEPQQz-", "Фишинг", false),
            ("INBOX", "INBOX", true),
        ]);
        let selection = selection_with(
            &stored,
            &["Фишинг".to_owned(), "Phish Reports".to_owned()],
            &["inbox".to_owned()],
        )
        .unwrap();
        assert_eq!(selection.len(), 3);
        assert_eq!(selection[0].raw_name, b"&BCQEOARIBDgEPQQz-");
        assert!(selection[0].fetch);
        assert!(!selection[1].fetch, "INBOX matches in any case");
        assert!(selection[2].raw_name.is_empty());
        assert_eq!(selection[2].display_name, "Phish Reports");
        assert!(selection[2].fetch);
    }

    #[test]
    fn deselecting_an_unselected_folder_says_what_is_selected() {
        let stored = source(&[("INBOX", "INBOX", true)]);
        let error = selection_with(&stored, &[], &["Spam".to_owned()]).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("\"Spam\""), "{text}");
        assert!(text.contains("\"INBOX\""), "{text}");
    }

    #[test]
    fn the_same_folder_cannot_be_both() {
        let stored = source(&[]);
        assert!(selection_with(&stored, &["A".to_owned()], &["A".to_owned()]).is_err());
    }

    #[test]
    fn intervals_read_as_seconds() {
        assert_eq!(parse_interval("5m"), Ok(300));
        assert!(parse_interval("soon").is_err());
    }
}
