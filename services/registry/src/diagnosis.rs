//! Why a login failed, in the two layers of DESIGN §1.
//!
//! Entra's token endpoint and the token itself name some causes exactly (the broker turns
//! them into problems: tenant, app id, secret, expiry, consent, the token's `oid`). Exchange
//! does not: a missing or wrongly registered service principal, a missing FullAccess grant,
//! a wrong mailbox address and IMAP switched off for the mailbox all get the same
//! `NO AUTHENTICATE failed.` (or a login followed by `BAD User is authenticated but not
//! connected.`). For those the registry gives one ordered checklist, most likely first,
//! filled in with what it knows (the app id, the token's `oid`, the mailbox), and never
//! says which of them it is.

use threatmail_proto::v1 as pb;
use threatmail_source::checklist;

use crate::spec::problem;

pub use threatmail_source::checklist::{AUTHENTICATE_FAILED, NOT_CONNECTED};
/// The broker's reason for a token without `IMAP.AccessAsApp` (or not for Exchange).
pub const CONSENT_MISSING: &str = "token.imap_consent_missing";
/// The broker's reason for a token `oid` other than the Object ID entered.
pub const OBJECT_ID_MISMATCH: &str = "token.object_id_mismatch";

/// What the token told about the setup, from the broker.
#[derive(Debug, Clone, Default)]
pub struct TokenFindings {
    /// The broker's consent problem, if any.
    pub consent_missing: Option<pb::Problem>,
    /// The broker's object id problem, if any.
    pub object_id_mismatch: Option<pb::Problem>,
    /// The token's `oid` (the enterprise application's object id), when it could be read.
    pub token_object_id: Option<String>,
    /// Whether the token carries `IMAP.AccessAsApp` (false also when it could not be read).
    pub has_imap_role: bool,
}

impl TokenFindings {
    /// Sorts the broker's problems and claims.
    pub fn from_broker(problems: &[pb::Problem], claims: Option<&pb::TokenClaims>) -> Self {
        let find = |reason: &str| problems.iter().find(|p| p.reason == reason).cloned();
        let decoded = claims.filter(|c| c.decoded);
        TokenFindings {
            consent_missing: find(CONSENT_MISSING),
            object_id_mismatch: find(OBJECT_ID_MISMATCH),
            token_object_id: decoded
                .map(|c| c.object_id.clone())
                .filter(|oid| !oid.is_empty()),
            has_imap_role: decoded.is_some_and(|c| c.roles.iter().any(|r| r == "IMAP.AccessAsApp")),
        }
    }
}

/// What the source says about itself, for the checklist's wording.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The mailbox address.
    pub mailbox: &'a str,
    /// The Application (client) ID.
    pub app_id: &'a str,
    /// The Object ID the user entered, if any.
    pub entered_object_id: Option<&'a str>,
}

/// The diagnosis of a refused IMAP login of an `ms-oauth2` source.
#[derive(Debug, Clone, Default)]
pub struct Diagnosis {
    /// Exact causes (from the token).
    pub problems: Vec<pb::Problem>,
    /// The steps to recheck, when the cause cannot be told apart.
    pub checklist: Option<pb::Checklist>,
}

/// Diagnoses a login the fetcher reported with `reason` (`imap.authenticate_failed` or
/// `imap.not_connected`) and the server's `text`.
pub fn refused_login(
    reason: &str,
    server_text: &str,
    token: &TokenFindings,
    context: Context<'_>,
) -> Diagnosis {
    let upstream = if reason == NOT_CONNECTED {
        "BAD User is authenticated but not connected."
    } else {
        "NO AUTHENTICATE failed."
    };
    let with_upstream = |mut p: pb::Problem| {
        if p.upstream_code.is_empty() || p.upstream_code == "roles" || p.upstream_code == "oid" {
            p.upstream_code = upstream.to_owned();
        }
        p
    };
    // A token without the role is refused whatever else is set up: that is the cause.
    if let Some(consent) = &token.consent_missing {
        let mut exact = consent.clone();
        exact.message = format!(
            "{}; Exchange refused the login because of it ({upstream})",
            exact.message
        );
        return Diagnosis {
            problems: vec![with_upstream(exact)],
            checklist: None,
        };
    }
    let oid = token.token_object_id.as_deref();
    if let Some(mismatch) = &token.object_id_mismatch {
        // The user says New-ServicePrincipal was run with the Object ID entered; the token
        // says Exchange sees another one. That step is wrong, exactly; the others may
        // still be, so they follow as the checklist.
        let entered = context.entered_object_id.unwrap_or("the Object ID entered");
        let oid_text = oid.unwrap_or("the Enterprise application's Object ID");
        let mut exact = mismatch.clone();
        exact.message = format!(
            "Exchange refused the login ({upstream}) and the Object ID entered ({entered}) \
             is not the one in the token ({oid_text}), which is what Exchange checks: \
             New-ServicePrincipal was given another object id, usually the app \
             registration's. Register it with the Enterprise application's Object ID: \
             New-ServicePrincipal -AppId {app} -ObjectId {oid_text}, and grant FullAccess to \
             that id (setup steps 4 and 5)",
            app = context.app_id,
        );
        let mut checklist = checklist_for(reason, context, oid);
        checklist.summary = format!(
            "After registering the service principal with {oid_text}, if the login is still \
             refused, check these in order:"
        );
        checklist
            .steps
            .retain(|step| step.id != "exchange.service_principal");
        return Diagnosis {
            problems: vec![with_upstream(exact)],
            checklist: Some(checklist),
        };
    }
    let mut checklist = checklist_for(reason, context, oid);
    if !server_text.is_empty() && !checklist.summary.contains(server_text) {
        checklist.summary = format!("{} (server: {server_text})", checklist.summary);
    }
    let mut refused = problem(reason, "", checklist.summary.clone());
    refused.upstream_code = upstream.to_owned();
    Diagnosis {
        problems: vec![refused],
        checklist: Some(checklist),
    }
}

/// The ordered checklist of setup steps 5–6 for a refused login.
pub fn checklist_for(reason: &str, context: Context<'_>, oid: Option<&str>) -> pb::Checklist {
    let summary = if reason == NOT_CONNECTED {
        "Exchange accepted the login but would not open the mailbox (BAD User is \
         authenticated but not connected.). It gives this answer for each of the causes \
         below and does not say which; check them in this order:"
            .to_owned()
    } else {
        "Exchange refused the login (NO AUTHENTICATE failed.). The token was issued, but \
         Exchange gives this one answer for each of the causes below and does not say \
         which; check them in this order:"
            .to_owned()
    };
    let facts = checklist::Facts {
        mailbox: context.mailbox,
        app_id: context.app_id,
        object_id: oid,
        object_id_from_token: oid.is_some(),
        connection_limit_fix: "close other IMAP clients and test again",
    };
    let steps = checklist::steps(reason, facts)
        .into_iter()
        .map(|step| pb::ChecklistStep {
            id: step.id.to_owned(),
            message: step.message,
            field: step.field.to_owned(),
            command: step.command,
        })
        .collect();
    pb::Checklist {
        reason: reason.to_owned(),
        summary,
        steps,
    }
}

/// One text for a status message: the summary and the numbered steps.
pub fn checklist_text(checklist: &pb::Checklist) -> String {
    let mut text = checklist.summary.clone();
    for (n, step) in checklist.steps.iter().enumerate() {
        text.push_str(&format!(" ({}) {}", n + 1, step.message));
        if !step.command.is_empty() {
            text.push_str(&format!(" [{}]", step.command));
        }
        text.push(';');
    }
    if text.ends_with(';') {
        text.pop();
    }
    text
}

/// The problem for an IMAP failure that is not a refused login (the fetcher's reason and
/// message), naming the field to check.
pub fn connection_problem(reason: &str, message: &str, host: &str, port: u16) -> pb::Problem {
    let (field, advice) = match reason {
        "imap.unreachable" => (
            "host",
            format!("could not connect to {host}:{port}: check the host and port"),
        ),
        "imap.tls_failed" => (
            "tls",
            format!(
                "the TLS handshake with {host}:{port} failed: the server's certificate is not \
                 trusted or names another host, or the port does not speak implicit TLS \
                 (IMAPS is 993)"
            ),
        ),
        "imap.timeout" => (
            "host",
            format!(
                "{host}:{port} did not answer in time: check the host, the port and that a \
                 firewall lets IMAP through"
            ),
        ),
        "imap.greeting_refused" => (
            "host",
            format!("{host}:{port} refused the connection in its greeting"),
        ),
        _ => ("", format!("the IMAP session with {host}:{port} failed")),
    };
    // No upstream code: the server's words, if any, are in the message.
    problem(reason, field, format!("{advice} ({message})"))
}

/// The problem for a refused password login.
pub fn refused_password(message: &str, username: &str) -> pb::Problem {
    let mut p = problem(
        AUTHENTICATE_FAILED,
        "secret_key",
        format!(
            "the server refused the username {username:?} with this password: check both \
             ({message})"
        ),
    );
    p.upstream_code = "LOGIN".to_owned();
    p
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const CONTEXT: Context<'static> = Context {
        mailbox: "soc-phish@corp.example",
        app_id: "app-id",
        entered_object_id: None,
    };

    fn ids(checklist: &pb::Checklist) -> Vec<&str> {
        checklist.steps.iter().map(|s| s.id.as_str()).collect()
    }

    #[test]
    fn a_refusal_without_token_findings_is_the_ordered_checklist() {
        let token = TokenFindings {
            token_object_id: Some("sp-oid".into()),
            has_imap_role: true,
            ..Default::default()
        };
        let diagnosis = refused_login(AUTHENTICATE_FAILED, "AUTHENTICATE failed.", &token, CONTEXT);
        let checklist = diagnosis.checklist.unwrap();
        assert_eq!(
            ids(&checklist),
            [
                "exchange.service_principal",
                "exchange.full_access",
                "source.mailbox_address",
                "exchange.imap_enabled"
            ]
        );
        assert!(checklist.steps[0].command.contains("-ObjectId sp-oid"));
        assert!(checklist.steps[1].command.contains("-User sp-oid"));
        assert_eq!(diagnosis.problems.len(), 1);
        assert_eq!(diagnosis.problems[0].reason, AUTHENTICATE_FAILED);
        // It states no cause as fact.
        assert!(checklist.summary.contains("does not say which"));

        let not_connected = refused_login(NOT_CONNECTED, "", &TokenFindings::default(), CONTEXT)
            .checklist
            .unwrap();
        assert_eq!(not_connected.steps.len(), 5);
        assert_eq!(not_connected.steps[4].id, "exchange.connection_limit");
        assert!(
            not_connected.steps[0]
                .command
                .contains("<Enterprise application Object ID>")
        );
    }

    #[test]
    fn token_findings_are_exact_causes() {
        let consent = TokenFindings {
            consent_missing: Some(problem(CONSENT_MISSING, "app_id", "admin consent missing")),
            ..Default::default()
        };
        let diagnosis = refused_login(AUTHENTICATE_FAILED, "", &consent, CONTEXT);
        assert!(diagnosis.checklist.is_none());
        assert_eq!(diagnosis.problems[0].reason, CONSENT_MISSING);

        let mismatch = TokenFindings {
            object_id_mismatch: Some(problem(OBJECT_ID_MISMATCH, "object_id", "mismatch")),
            token_object_id: Some("sp-oid".into()),
            has_imap_role: true,
            ..Default::default()
        };
        let context = Context {
            entered_object_id: Some("reg-oid"),
            ..CONTEXT
        };
        let diagnosis = refused_login(AUTHENTICATE_FAILED, "", &mismatch, context);
        assert_eq!(diagnosis.problems[0].reason, OBJECT_ID_MISMATCH);
        assert!(diagnosis.problems[0].message.contains("reg-oid"));
        assert!(diagnosis.problems[0].message.contains("-ObjectId sp-oid"));
        let rest = diagnosis.checklist.unwrap();
        assert_eq!(rest.steps[0].id, "exchange.full_access");
    }

    #[test]
    fn checklist_text_numbers_the_steps() {
        let text = checklist_text(&checklist_for(AUTHENTICATE_FAILED, CONTEXT, None));
        assert!(text.contains(" (1) Setup step 5"));
        assert!(text.contains(" (4) Setup step 6"));
        assert!(!text.ends_with(';'));
    }
}
