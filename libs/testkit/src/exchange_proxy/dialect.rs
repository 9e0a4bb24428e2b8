//! What Exchange Online says where Dovecot would say something else: the greeting, the
//! capability sets before and after authentication, and the texts of the login replies.
//!
//! Sources are in `/work/shared/notes/microsoft-facts.md` ("Capabilities advertised by
//! outlook.office365.com", "XOAUTH2 SASL string"); the post-auth order follows the traces
//! in simonrob/email-oauth2-proxy #74 and mscdex/node-imap #689.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Exchange Online's capabilities before authentication [IMAPSYNC-368], [MAILKIT-1494].
pub const EXCHANGE_CAPABILITIES_BEFORE_AUTH: &[&str] = &[
    "IMAP4",
    "IMAP4rev1",
    "AUTH=PLAIN",
    "AUTH=XOAUTH2",
    "SASL-IR",
    "UIDPLUS",
    "ID",
    "UNSELECT",
    "CHILDREN",
    "IDLE",
    "NAMESPACE",
    "LITERAL+",
];

/// Exchange Online's capabilities after authentication: the same plus `MOVE`,
/// `CLIENTACCESSRULES`, `CLIENTNETWORKPRESENCELOCATION` and `BACKENDAUTHENTICATE`, in the
/// order real sessions list them [MAILKIT-1494], [EOP-74].
pub const EXCHANGE_CAPABILITIES_AFTER_AUTH: &[&str] = &[
    "IMAP4",
    "IMAP4rev1",
    "AUTH=PLAIN",
    "AUTH=XOAUTH2",
    "SASL-IR",
    "UIDPLUS",
    "MOVE",
    "ID",
    "UNSELECT",
    "CLIENTACCESSRULES",
    "CLIENTNETWORKPRESENCELOCATION",
    "BACKENDAUTHENTICATE",
    "CHILDREN",
    "IDLE",
    "NAMESPACE",
    "LITERAL+",
];

/// The back-end server name put in the default greeting (shaped like the ones in public
/// traces; not a real host).
pub const DEFAULT_SERVER_NAME: &str = "MW4PR03CA0001.NAMPRD03.PROD.OUTLOOK.COM";

/// `* OK The Microsoft Exchange IMAP4 service is ready. [<base64 of UTF-16LE name>]`
/// (without the line end) [MAILKIT-1494].
pub fn exchange_greeting(server_name: &str) -> String {
    let utf16: Vec<u8> = server_name
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    format!(
        "* OK The Microsoft Exchange IMAP4 service is ready. [{}]",
        STANDARD.encode(utf16)
    )
}

/// How one connection's server words are rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dialect {
    /// The greeting line (without CRLF) sent instead of Dovecot's; `None` keeps Dovecot's.
    pub greeting: Option<String>,
    /// The capability atoms before and after authentication; `None` keeps Dovecot's.
    /// Replaces `* CAPABILITY` lines and `[CAPABILITY …]` response codes.
    pub capabilities: Option<Capabilities>,
    /// Puts two spaces after this atom in `* CAPABILITY` lines (case BR-01: a line the
    /// nom parser behind async-imap rejects).
    pub double_space_after: Option<String>,
    /// Exchange's texts for the tagged replies of `AUTHENTICATE` (`OK AUTHENTICATE
    /// completed.` / `NO AUTHENTICATE failed.`), `LOGIN` (`OK LOGIN completed.` /
    /// `NO LOGIN failed.`) and `CAPABILITY` (`OK CAPABILITY completed.`), and no SASL
    /// error challenge: Dovecot's `+ <base64 JSON>` after a refused XOAUTH2 token is
    /// answered by the proxy and never reaches the client, which gets the tagged NO at
    /// once as from Exchange [MS-IMAP-OAUTH], MailKit #690.
    pub exchange_replies: bool,
}

/// Capability atoms for each state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Before authentication.
    pub before_auth: Vec<String>,
    /// After authentication.
    pub after_auth: Vec<String>,
}

impl Capabilities {
    /// Exchange Online's two sets.
    pub fn exchange() -> Self {
        Self {
            before_auth: owned(EXCHANGE_CAPABILITIES_BEFORE_AUTH),
            after_auth: owned(EXCHANGE_CAPABILITIES_AFTER_AUTH),
        }
    }

    /// The set for a state.
    pub fn for_state(&self, authenticated: bool) -> &[String] {
        if authenticated {
            &self.after_auth
        } else {
            &self.before_auth
        }
    }
}

fn owned(atoms: &[&str]) -> Vec<String> {
    atoms.iter().map(|&a| a.to_owned()).collect()
}

impl Dialect {
    /// Exchange Online: its greeting (with [`DEFAULT_SERVER_NAME`]), its capabilities and
    /// its login reply texts.
    pub fn exchange() -> Self {
        Self {
            greeting: Some(exchange_greeting(DEFAULT_SERVER_NAME)),
            capabilities: Some(Capabilities::exchange()),
            double_space_after: None,
            exchange_replies: true,
        }
    }

    /// Dovecot's own words, untouched.
    pub fn dovecot() -> Self {
        Self {
            greeting: None,
            capabilities: None,
            double_space_after: None,
            exchange_replies: false,
        }
    }

    /// Sets the greeting line (without CRLF).
    pub fn greeting(mut self, line: impl Into<String>) -> Self {
        self.greeting = Some(line.into());
        self
    }

    /// Two spaces after `atom` in `* CAPABILITY` lines (case BR-01), e.g. `IMAP4rev1`.
    pub fn double_space_after(mut self, atom: &str) -> Self {
        self.double_space_after = Some(atom.to_owned());
        self
    }

    /// Sets the capability sets.
    pub fn capabilities(mut self, capabilities: Capabilities) -> Self {
        self.capabilities = Some(capabilities);
        self
    }

    /// Turns Exchange's login reply texts on or off.
    pub fn exchange_replies(mut self, on: bool) -> Self {
        self.exchange_replies = on;
        self
    }

    /// The `* CAPABILITY …` line (with CRLF) to send instead of `dovecot_atoms`.
    pub(crate) fn capability_line(&self, authenticated: bool, dovecot_atoms: &[u8]) -> Vec<u8> {
        let atoms: Vec<String> = match &self.capabilities {
            Some(caps) => caps.for_state(authenticated).to_vec(),
            None => String::from_utf8_lossy(dovecot_atoms)
                .split(' ')
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect(),
        };
        let mut line = b"* CAPABILITY".to_vec();
        let mut previous: Option<&str> = None;
        for atom in &atoms {
            line.push(b' ');
            if previous.is_some() && previous == self.double_space_after.as_deref() {
                line.push(b' ');
            }
            line.extend_from_slice(atom.as_bytes());
            previous = Some(atom);
        }
        line.extend_from_slice(b"\r\n");
        line
    }

    /// `line` with the atoms of its `[CAPABILITY …]` response code replaced, when this
    /// dialect has its own capabilities and the line has such a code.
    pub(crate) fn rewrite_capability_code(
        &self,
        line: &[u8],
        authenticated: bool,
    ) -> Option<Vec<u8>> {
        let caps = self.capabilities.as_ref()?;
        const CODE: &[u8] = b"[CAPABILITY ";
        let open = line.windows(CODE.len()).position(|w| w == CODE)?;
        let close = open + line[open..].iter().position(|&b| b == b']')?;
        let mut out = line[..open + CODE.len()].to_vec();
        out.extend_from_slice(caps.for_state(authenticated).join(" ").as_bytes());
        out.extend_from_slice(&line[close..]);
        Some(out)
    }
}

/// Exchange's text for a tagged reply to `command` with `status`, if it has one.
pub(crate) fn exchange_reply(command: &str, status: &str) -> Option<&'static str> {
    match (command, status) {
        ("AUTHENTICATE", "OK") => Some("OK AUTHENTICATE completed."),
        ("AUTHENTICATE", "NO") => Some("NO AUTHENTICATE failed."),
        ("LOGIN", "OK") => Some("OK LOGIN completed."),
        ("LOGIN", "NO") => Some("NO LOGIN failed."),
        ("CAPABILITY", "OK") => Some("OK CAPABILITY completed."),
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn greeting_carries_the_utf16le_server_name() {
        // The greeting of case BR-07.
        assert_eq!(
            exchange_greeting("MBX01.EXAMPLE.COM"),
            "* OK The Microsoft Exchange IMAP4 service is ready. \
             [TQBCAFgAMAAxAC4ARQBYAEEATQBQAEwARQAuAEMATwBNAA==]"
        );
    }

    #[test]
    fn capability_lines() {
        let exchange = Dialect::exchange();
        assert_eq!(
            exchange.capability_line(false, b"IMAP4rev1 STARTTLS"),
            b"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID \
              UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\n"
                .to_vec()
        );
        assert_eq!(
            exchange.capability_line(true, b""),
            b"* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS MOVE ID \
              UNSELECT CLIENTACCESSRULES CLIENTNETWORKPRESENCELOCATION BACKENDAUTHENTICATE \
              CHILDREN IDLE NAMESPACE LITERAL+\r\n"
                .to_vec()
        );
        let br01 = Dialect::exchange().double_space_after("IMAP4rev1");
        assert!(
            br01.capability_line(false, b"")
                .starts_with(b"* CAPABILITY IMAP4 IMAP4rev1  AUTH=PLAIN AUTH=XOAUTH2 ")
        );
        // Dovecot's own atoms, with only the double space added.
        let dovecot = Dialect::dovecot().double_space_after("IMAP4rev1");
        assert_eq!(
            dovecot.capability_line(false, b"IMAP4rev1 SASL-IR ID"),
            b"* CAPABILITY IMAP4rev1  SASL-IR ID\r\n".to_vec()
        );
    }

    #[test]
    fn capability_codes() {
        let exchange = Dialect::exchange();
        let line = b"a OK [CAPABILITY IMAP4rev1 ENABLE] Logged in\r\n";
        let rewritten = exchange.rewrite_capability_code(line, true).unwrap();
        let text = String::from_utf8(rewritten).unwrap();
        assert!(text.starts_with("a OK [CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN "));
        assert!(text.ends_with(" NAMESPACE LITERAL+] Logged in\r\n"));
        assert_eq!(
            exchange.rewrite_capability_code(b"a OK done\r\n", true),
            None
        );
        assert_eq!(Dialect::dovecot().rewrite_capability_code(line, true), None);
    }

    #[test]
    fn reply_texts() {
        assert_eq!(
            exchange_reply("AUTHENTICATE", "NO"),
            Some("NO AUTHENTICATE failed.")
        );
        assert_eq!(exchange_reply("AUTHENTICATE", "BAD"), None);
        assert_eq!(exchange_reply("SELECT", "OK"), None);
    }
}
