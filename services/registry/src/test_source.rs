//! "Save and Continue" (DESIGN §1): every field checked, a token requested through the
//! broker, an IMAP login tried through a fetcher, the folder tree listed; a failure names
//! the setup step to recheck.
//!
//! The stages run in order and a stage runs only when the ones before it succeeded, so the
//! problems reported are the real ones rather than consequences: invalid fields are all
//! reported without asking Entra; Entra's refusal is reported without trying IMAP. What the
//! token says (no IMAP role, another `oid` than the one entered) is kept until the login's
//! outcome is known: it explains a refused login exactly, and after a successful one it is
//! only a warning.

use secrecy::{ExposeSecret as _, SecretString};
use threatmail_auth::{Caller, Requirement, Role};
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::imap_connection::Auth;
use threatmail_source::record::{AfterProcessing, AuthType};
use threatmail_source::{Cloud, SecretSlot, SourceRecord};

use crate::diagnosis::{
    self, AUTHENTICATE_FAILED, Context, NOT_CONNECTED, OBJECT_ID_MISMATCH, TokenFindings,
};
use crate::error::{RegistryError, Result, reason_of};
use crate::folders::flatten;
use crate::registry::{Registry, parse_id};
use crate::spec::{self, Checked, Stored, now_secs, problem};
use crate::upstream::upstream_error;

const VALIDATE: &str = "validate";
const TOKEN: &str = "token";
const LOGIN: &str = "login";

fn stage(name: &str, outcome: &str) -> pb::TestStage {
    pb::TestStage {
        name: name.to_owned(),
        outcome: outcome.to_owned(),
    }
}

fn cloud_proto(cloud: Cloud) -> pb::Cloud {
    match cloud {
        Cloud::Global => pb::Cloud::Global,
        Cloud::UsGovernment => pb::Cloud::UsGovernment,
        Cloud::China => pb::Cloud::China,
    }
}

/// A token for the test, or why there is none.
enum TokenOutcome {
    Token {
        access_token: String,
        findings: Box<TokenFindings>,
        claims: Option<pb::TokenClaims>,
    },
    Refused(Vec<pb::Problem>),
}

impl Registry {
    /// Tests a draft source. `caller` is who asked: a new source (no `source_id`) is tested
    /// for a caller who may create one, a stored one (whose secrets are reused where the
    /// draft leaves them out) for a caller who may update it.
    #[tracing::instrument(skip_all, fields(source_id = %request.source_id))]
    pub async fn test(
        &self,
        request: pb::TestSourceRequest,
        caller: Option<&Caller>,
    ) -> Result<pb::TestSourceResponse> {
        let stored_record = if request.source_id.trim().is_empty() {
            if !caller.is_some_and(|c| c.meets(Requirement::Role(Role::Create))) {
                return Err(RegistryError::Denied(
                    "testing a new source needs the Create Threat Mailbox permission (testing \
                     changes to a stored one, with its id, needs Update)"
                        .to_owned(),
                ));
            }
            None
        } else {
            if !caller.is_some_and(|c| c.meets(Requirement::Role(Role::Update))) {
                return Err(RegistryError::Denied(
                    "testing with a stored source's secrets needs the Update Threat Mailbox \
                     permission"
                        .to_owned(),
                ));
            }
            let id = parse_id(&request.source_id)?;
            Some(self.load(&id).await?.0)
        };
        let spec = request.spec.unwrap_or_default();
        let stored = stored_record
            .as_ref()
            .map_or(Stored::default(), |r| Stored {
                secret: r.secret.is_some(),
                next_secret: r.next_secret.is_some(),
            });
        let outcome = spec::check(&spec, stored, now_secs());
        let mut reply = pb::TestSourceResponse {
            warnings: outcome.warnings,
            ..Default::default()
        };
        let Some(checked) = outcome.checked else {
            reply.problems = outcome.problems;
            reply.stages = vec![
                stage(VALIDATE, "failed"),
                stage(TOKEN, "skipped"),
                stage(LOGIN, "skipped"),
            ];
            return Ok(reply);
        };
        reply.stages.push(stage(VALIDATE, "ok"));
        reply.warnings.extend(
            self.same_mailbox(&checked, request.source_id.trim())
                .await?,
        );

        let secret = match (&checked.secret, &stored_record) {
            (Some(secret), _) => secret.clone(),
            (None, Some(record)) => {
                spec::stored_secret(record, &self.keyring, SecretSlot::Current)?
                    .unwrap_or_else(|| SecretString::from(""))
            }
            (None, None) => SecretString::from(""),
        };

        let (auth, findings) = match checked.auth_type {
            AuthType::Password => {
                reply.stages.push(stage(TOKEN, "skipped"));
                (
                    Auth::Password(secret.expose_secret().to_owned()),
                    TokenFindings::default(),
                )
            }
            AuthType::MsOauth2 => match self.token_for(&checked, &secret).await? {
                TokenOutcome::Refused(problems) => {
                    reply.problems = problems;
                    reply.stages.push(stage(TOKEN, "failed"));
                    reply.stages.push(stage(LOGIN, "skipped"));
                    return Ok(reply);
                }
                TokenOutcome::Token {
                    access_token,
                    findings,
                    claims,
                } => {
                    reply.stages.push(stage(TOKEN, "ok"));
                    reply.claims = claims;
                    self.test_next_secret(&checked, stored_record.as_ref(), &mut reply)
                        .await?;
                    (Auth::AccessToken(access_token), *findings)
                }
            },
        };

        let connection = pb::ImapConnection {
            host: checked.imap_host().to_owned(),
            port: u32::from(checked.port),
            tls: checked.tls,
            username: checked.username.clone(),
            auth: Some(auth),
        };
        match self.upstreams.list_folders(connection).await {
            Ok(listed) => {
                reply.stages.push(stage(LOGIN, "ok"));
                after_login(&checked, &findings, &listed, &mut reply);
                reply.folders = listed.folders;
                reply.capabilities = listed.capabilities;
            }
            Err(status) => {
                let reason = reason_of(&status);
                if !reason.starts_with("imap.") {
                    return Err(upstream_error("fetcher", &status));
                }
                reply.stages.push(stage(LOGIN, "failed"));
                let refused = reason == AUTHENTICATE_FAILED || reason == NOT_CONNECTED;
                match (refused, checked.auth_type) {
                    (true, AuthType::Password) => reply.problems.push(diagnosis::refused_password(
                        status.message(),
                        &checked.username,
                    )),
                    (true, AuthType::MsOauth2) => {
                        let found = diagnosis::refused_login(
                            &reason,
                            "",
                            &findings,
                            Context {
                                mailbox: &checked.username,
                                app_id: &checked.app_id,
                                entered_object_id: checked.object_id.as_deref(),
                            },
                        );
                        reply.problems.extend(found.problems);
                        reply.checklist = found.checklist;
                    }
                    (false, _) => reply.problems.push(diagnosis::connection_problem(
                        &reason,
                        status.message(),
                        checked.imap_host(),
                        checked.port,
                    )),
                }
            }
        }
        reply.ok = reply.problems.is_empty();
        tracing::info!(
            ok = reply.ok,
            problems = reply.problems.len(),
            warnings = reply.warnings.len(),
            "source tested"
        );
        Ok(reply)
    }

    /// Asks the broker for a token with the draft credentials.
    async fn token_for(&self, checked: &Checked, secret: &SecretString) -> Result<TokenOutcome> {
        let request = pb::TestCredentialsRequest {
            tenant_id: checked.tenant_id.clone(),
            client_id: checked.app_id.clone(),
            client_secret: secret.expose_secret().to_owned(),
            cloud: cloud_proto(checked.cloud) as i32,
            object_id: checked.object_id.clone().unwrap_or_default(),
        };
        let reply = match self.upstreams.test_credentials(request).await {
            Ok(reply) => reply,
            // Entra unreachable, throttling or down: about Entra, not the registry.
            Err(status) if reason_of(&status).starts_with("entra.") => {
                let p = threatmail_proto::problem_of(&status)
                    .unwrap_or_else(|| problem(&reason_of(&status), "", status.message()));
                return Ok(TokenOutcome::Refused(vec![p]));
            }
            Err(status) => return Err(upstream_error("token broker", &status)),
        };
        if reply.access_token.is_empty() {
            let mut problems = reply.problems;
            for p in &mut problems {
                // The Secret ID is a GUID, a Value never is: say what was pasted.
                if p.reason == "entra.secret_wrong" && spec::looks_like_secret_id(secret) {
                    p.message = format!(
                        "{} The secret key entered is a GUID, which is the shape of a secret's \
                         Secret ID: paste its Value instead (shown once, when it is created).",
                        p.message
                    );
                }
            }
            if problems.is_empty() {
                problems.push(problem(
                    "entra.no_token",
                    "",
                    "the broker got no token and gave no reason",
                ));
            }
            return Ok(TokenOutcome::Refused(problems));
        }
        let findings = TokenFindings::from_broker(&reply.problems, reply.claims.as_ref());
        Ok(TokenOutcome::Token {
            access_token: reply.access_token,
            findings: Box::new(findings),
            claims: reply.claims,
        })
    }

    /// Tests the next secret too, when there is one; its refusal is a warning (the current
    /// one works).
    async fn test_next_secret(
        &self,
        checked: &Checked,
        stored: Option<&SourceRecord>,
        reply: &mut pb::TestSourceResponse,
    ) -> Result<()> {
        let next = match (&checked.next_secret, stored) {
            (Some(next), _) => Some(next.clone()),
            (None, Some(record)) => spec::stored_secret(record, &self.keyring, SecretSlot::Next)?,
            (None, None) => None,
        };
        let Some(next) = next else {
            return Ok(());
        };
        if let TokenOutcome::Refused(problems) = self.token_for(checked, &next).await? {
            for mut p in problems {
                p.field = "next_secret_key".to_owned();
                p.message = format!("the next secret was refused: {}", p.message);
                reply.warnings.push(p);
            }
        }
        Ok(())
    }
}

impl Registry {
    /// A warning when another source already reads the mailbox `checked` logs in to (same
    /// address and server): each source keeps its own copy of every message, so the mail
    /// would be stored, counted and exported twice.
    async fn same_mailbox(&self, checked: &Checked, own_id: &str) -> Result<Option<pb::Problem>> {
        let host = checked.host.as_deref().unwrap_or(checked.cloud.imap_host());
        let others = self.store.list().await?;
        let Some(other) = others.iter().find(|other| {
            other.id.as_str() != own_id
                && other.username.eq_ignore_ascii_case(&checked.username)
                && other.imap_host().eq_ignore_ascii_case(host)
                && other.port == checked.port
        }) else {
            return Ok(None);
        };
        Ok(Some(problem(
            "source.mailbox_already_a_source",
            "email",
            format!(
                "source {:?} ({}) already reads {} on this server: each source stores its own \
                 copy of every message, so its mail would be stored and exported twice; select \
                 more folders on that source instead",
                other.name, other.id, checked.username
            ),
        )))
    }
}

/// What a successful login leaves to say: token findings the login survived, and whether
/// the move target exists.
fn after_login(
    checked: &Checked,
    findings: &TokenFindings,
    listed: &pb::ListFoldersResponse,
    reply: &mut pb::TestSourceResponse,
) {
    if let Some(mismatch) = &findings.object_id_mismatch {
        let oid = findings
            .token_object_id
            .as_deref()
            .unwrap_or("the token's oid");
        let mut warning = mismatch.clone();
        warning.reason = OBJECT_ID_MISMATCH.to_owned();
        warning.message = format!(
            "the Object ID entered ({}) is not the one in the token ({oid}); the login \
             worked, so Exchange has the right one: correct the Object ID field to {oid}",
            checked.object_id.as_deref().unwrap_or_default()
        );
        reply.warnings.push(warning);
    }
    if let Some(consent) = &findings.consent_missing {
        reply.warnings.push(consent.clone());
    }
    if let AfterProcessing::MoveTo { folder } = &checked.after_processing {
        let all = flatten(&listed.folders);
        if !all
            .iter()
            .any(|f| f.raw_name == *folder || f.display_name == *folder)
        {
            reply.problems.push(problem(
                "validation.folder_not_found",
                "move_to_folder",
                format!(
                    "the server has no folder {folder:?} to move processed messages to; \
                     create it, or choose one of the folders listed"
                ),
            ));
        }
    }
}
