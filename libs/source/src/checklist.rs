//! The ordered checklist of IMAP-side setup steps (DESIGN §1, steps 5–6), defined once for
//! the registry's Save and Continue and the fetcher's folder status, so a user sees the same
//! steps, in the same order, with the same PowerShell in both places.
//!
//! Exchange answers every one of these faults (no service principal, one made with the
//! wrong object id, no FullAccess, a wrong mailbox address, IMAP off for the mailbox) with
//! the same `NO AUTHENTICATE failed.`, or accepts the login and then says `BAD User is
//! authenticated but not connected.`; the checklist never claims to know which.

/// Reason of a refused AUTHENTICATE or LOGIN.
pub const AUTHENTICATE_FAILED: &str = "imap.authenticate_failed";
/// Reason of Exchange's "authenticated but not connected".
pub const NOT_CONNECTED: &str = "imap.not_connected";

/// What the checklist is filled in with.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The mailbox address (the SASL `user=`).
    pub mailbox: &'a str,
    /// The Application (client) ID.
    pub app_id: &'a str,
    /// The service principal's Object ID, when known.
    pub object_id: Option<&'a str>,
    /// Whether `object_id` is the token's `oid` (then the step says so).
    pub object_id_from_token: bool,
    /// What to do about too many connections, for the last step of [`NOT_CONNECTED`].
    pub connection_limit_fix: &'a str,
}

/// One step: what to check and the PowerShell that checks or fixes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Stable id, e.g. `exchange.service_principal`.
    pub id: &'static str,
    /// What to check, naming the setup step.
    pub message: String,
    /// The form field it concerns, empty when none.
    pub field: &'static str,
    /// Exchange Online PowerShell, empty when none.
    pub command: String,
}

impl Step {
    /// `message [command]` on one line.
    pub fn one_line(&self) -> String {
        if self.command.is_empty() {
            self.message.clone()
        } else {
            format!("{} [{}]", self.message, self.command)
        }
    }
}

/// The steps for a refused login with `reason`, most likely first.
pub fn steps(reason: &str, facts: Facts<'_>) -> Vec<Step> {
    let Facts {
        mailbox,
        app_id,
        object_id,
        object_id_from_token,
        connection_limit_fix,
    } = facts;
    let oid = object_id.unwrap_or("<Enterprise application Object ID>");
    let oid_known = match object_id {
        Some(o) if object_id_from_token => format!(" ({o}, the oid in the token)"),
        _ => String::new(),
    };
    let mut steps = vec![
        Step {
            id: "exchange.service_principal",
            message: format!(
                "Setup step 5: the app is registered in Exchange Online as a service principal \
                 with the Enterprise application's Object ID{oid_known}, not the app \
                 registration's object id"
            ),
            field: "object_id",
            command: format!(
                "Get-ServicePrincipal | Where-Object AppId -eq '{app_id}'  # ObjectId must be \
                 {oid}; if missing: New-ServicePrincipal -AppId {app_id} -ObjectId {oid}"
            ),
        },
        Step {
            id: "exchange.full_access",
            message: format!("Setup step 5: that service principal has FullAccess on {mailbox}"),
            field: "email",
            command: format!(
                "Get-MailboxPermission -Identity {mailbox} -User {oid}  # if missing: \
                 Add-MailboxPermission -Identity {mailbox} -User {oid} -AccessRights FullAccess"
            ),
        },
        Step {
            id: "source.mailbox_address",
            message: format!(
                "The Email field ({mailbox}) is the address of the mailbox that was granted \
                 (for a shared mailbox, the shared mailbox's own address)"
            ),
            field: "email",
            command: format!("Get-Mailbox -Identity {mailbox} | Format-List PrimarySmtpAddress"),
        },
        Step {
            id: "exchange.imap_enabled",
            message: format!("Setup step 6: IMAP is enabled for {mailbox}"),
            field: "",
            command: format!(
                "Get-CASMailbox -Identity {mailbox} | Format-List ImapEnabled  # if False: \
                 Set-CASMailbox -Identity {mailbox} -ImapEnabled $true"
            ),
        },
    ];
    if reason == NOT_CONNECTED {
        steps.push(Step {
            id: "exchange.connection_limit",
            message: format!(
                "Too many connections to {mailbox} at once: Exchange allows a small number per \
                 mailbox, shared by every app that opens it; {connection_limit_fix}"
            ),
            field: "",
            command: String::new(),
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: Facts<'static> = Facts {
        mailbox: "soc-phish@corp.example",
        app_id: "app-1",
        object_id: Some("oid-1"),
        object_id_from_token: true,
        connection_limit_fix: "close other IMAP clients",
    };

    #[test]
    fn the_steps_are_ordered_and_filled_in() {
        let steps = steps(AUTHENTICATE_FAILED, FACTS);
        let ids: Vec<&str> = steps.iter().map(|s| s.id).collect();
        assert_eq!(
            ids,
            [
                "exchange.service_principal",
                "exchange.full_access",
                "source.mailbox_address",
                "exchange.imap_enabled"
            ]
        );
        assert!(steps[0].message.contains("(oid-1, the oid in the token)"));
        assert!(steps[0].command.contains("-AppId app-1 -ObjectId oid-1"));
        assert!(
            steps[1]
                .one_line()
                .contains("soc-phish@corp.example -User oid-1")
        );
    }

    #[test]
    fn not_connected_adds_the_connection_limit_and_an_unknown_oid_is_a_placeholder() {
        let facts = Facts {
            object_id: None,
            ..FACTS
        };
        let steps = steps(NOT_CONNECTED, facts);
        assert_eq!(steps.len(), 5);
        assert!(steps[4].message.ends_with("close other IMAP clients"));
        assert!(steps[4].one_line() == steps[4].message, "no command");
        assert!(
            steps[0]
                .command
                .contains("<Enterprise application Object ID>")
        );
        assert!(!steps[0].message.contains("the oid in the token"));
    }
}
