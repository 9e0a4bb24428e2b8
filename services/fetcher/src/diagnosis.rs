//! What a failed sync attempt tells the user, in the two layers of DESIGN §1.
//!
//! The broker names token faults exactly (its reason and message pass through). Exchange
//! answers every IMAP-side setup fault (no service principal, one made with the wrong
//! object id, no FullAccess, a wrong mailbox address, IMAP off for the mailbox) with the
//! same `NO AUTHENTICATE failed.`, or accepts the login and then says `BAD User is
//! authenticated but not connected.`; for those the status carries one ordered checklist,
//! most likely first, the same steps as the registry's Save and Continue checklist
//! (`threatmail_source::checklist`).

pub use threatmail_source::checklist::{AUTHENTICATE_FAILED, NOT_CONNECTED};

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
/// Exchange Online PowerShell command that checks it (`threatmail_source::checklist`, shared
/// with the registry's Save and Continue).
pub fn checklist(reason: &str, facts: SourceFacts<'_>) -> Vec<String> {
    let facts = threatmail_source::checklist::Facts {
        mailbox: facts.mailbox,
        app_id: facts.app_id,
        object_id: facts.object_id,
        object_id_from_token: false,
        connection_limit_fix: "close other IMAP clients or lower sync.connections_per_mailbox",
    };
    threatmail_source::checklist::steps(reason, facts)
        .iter()
        .map(threatmail_source::checklist::Step::one_line)
        .collect()
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
