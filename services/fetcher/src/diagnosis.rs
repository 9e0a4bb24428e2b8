//! What a failed sync attempt tells the user, in the two layers of DESIGN §1.
//!
//! The broker names token faults exactly (its reason and message pass through). Exchange
//! answers every IMAP-side setup fault (no service principal, one made with the wrong
//! object id, no FullAccess, a wrong mailbox address, IMAP off for the mailbox) with the
//! same `NO AUTHENTICATE failed.`, or accepts the login and then says `BAD User is
//! authenticated but not connected.`; for those the status carries one ordered checklist,
//! most likely first, worded like the registry's Save and Continue checklist so the user
//! sees the same steps in both places.

/// Reason of a refused AUTHENTICATE or LOGIN.
pub const AUTHENTICATE_FAILED: &str = "imap.authenticate_failed";
/// Reason of Exchange's "authenticated but not connected".
pub const NOT_CONNECTED: &str = "imap.not_connected";

/// What the checklist is filled in with.
#[derive(Debug, Clone, Copy)]
pub struct SourceFacts<'a> {
    /// The mailbox address (the SASL `user=`).
    pub mailbox: &'a str,
    /// The Application (client) ID.
    pub app_id: &'a str,
    /// The Object ID the user entered, if any.
    pub object_id: Option<&'a str>,
}

/// The one-line summary for a refused login of an `ms-oauth2` source (`reason` is
/// [`AUTHENTICATE_FAILED`] or [`NOT_CONNECTED`]), after the forced token refresh.
pub fn refused_login_summary(reason: &str, mailbox: &str, server_text: &str) -> String {
    let said = if server_text.is_empty() {
        String::new()
    } else {
        format!(" (server: {server_text})")
    };
    if reason == NOT_CONNECTED {
        format!(
            "Exchange accepted the login for {mailbox} but would not open the mailbox{said}. \
             It gives this answer for each of the causes in the checklist and does not say \
             which; check them in order"
        )
    } else {
        format!(
            "Exchange refused the login for {mailbox} with a fresh token{said}. The token was \
             issued, but Exchange gives this one answer for each of the causes in the \
             checklist and does not say which; check them in order"
        )
    }
}

/// The ordered checklist of setup steps 5–6 (most likely first), each step with the
/// Exchange Online PowerShell command that checks it.
pub fn checklist(reason: &str, facts: SourceFacts<'_>) -> Vec<String> {
    let SourceFacts {
        mailbox,
        app_id,
        object_id,
    } = facts;
    let oid = object_id.unwrap_or("<Enterprise application Object ID>");
    let mut steps = vec![
        format!(
            "Setup step 5: the app is registered in Exchange Online as a service principal \
             with the Enterprise application's Object ID, not the app registration's object \
             id [Get-ServicePrincipal | Where-Object AppId -eq '{app_id}'  # ObjectId must be \
             {oid}; if missing: New-ServicePrincipal -AppId {app_id} -ObjectId {oid}]"
        ),
        format!(
            "Setup step 5: that service principal has FullAccess on {mailbox} \
             [Get-MailboxPermission -Identity {mailbox} -User {oid}  # if missing: \
             Add-MailboxPermission -Identity {mailbox} -User {oid} -AccessRights FullAccess]"
        ),
        format!(
            "The Email field ({mailbox}) is the address of the mailbox that was granted (for a \
             shared mailbox, the shared mailbox's own address) [Get-Mailbox -Identity \
             {mailbox} | Format-List PrimarySmtpAddress]"
        ),
        format!(
            "Setup step 6: IMAP is enabled for {mailbox} [Get-CASMailbox -Identity {mailbox} \
             | Format-List ImapEnabled  # if False: Set-CASMailbox -Identity {mailbox} \
             -ImapEnabled $true]"
        ),
    ];
    if reason == NOT_CONNECTED {
        steps.push(format!(
            "Too many connections to {mailbox} at once: Exchange allows a small number per \
             mailbox, shared by every app that opens it; close other IMAP clients or lower \
             sync.connections_per_mailbox"
        ));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const FACTS: SourceFacts<'static> = SourceFacts {
        mailbox: "soc-phish@corp.example",
        app_id: "app-1",
        object_id: Some("oid-1"),
    };

    #[test]
    fn the_checklist_is_ordered_and_filled_in() {
        let steps = checklist(AUTHENTICATE_FAILED, FACTS);
        assert_eq!(steps.len(), 4);
        assert!(steps[0].contains("service principal") && steps[0].contains("app-1"));
        assert!(steps[0].contains("-ObjectId oid-1"));
        assert!(steps[1].contains("FullAccess") && steps[1].contains("soc-phish@corp.example"));
        assert!(steps[3].contains("IMAP is enabled"));
        let not_connected = checklist(NOT_CONNECTED, FACTS);
        assert_eq!(not_connected.len(), 5);
        assert!(not_connected[4].contains("Too many connections"));
    }

    #[test]
    fn summaries_name_the_mailbox_and_the_server_text() {
        let text = refused_login_summary(
            AUTHENTICATE_FAILED,
            "soc-phish@corp.example",
            "AUTHENTICATE failed.",
        );
        assert!(text.contains("soc-phish@corp.example") && text.contains("AUTHENTICATE failed."));
        assert!(
            refused_login_summary(NOT_CONNECTED, "m@x", "").contains("would not open the mailbox")
        );
    }
}
