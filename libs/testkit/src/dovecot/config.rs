//! The files a test Dovecot reads: `dovecot.conf`, the oauth2 args file, the grant and
//! password files and the key files, rendered from plain data and validated first.
//!
//! How XOAUTH2 is judged (the notes' "Per-mailbox grants", approach 3, keyed on `oid`):
//!
//! 1. A `static` passdb with `noauthenticate nodelay=yes` runs first for every mechanism.
//!    It authenticates nothing (result NEXT, so it can never make a login succeed), but
//!    the fields of a NEXT result survive later failures (`auth_fields_snapshot`), and
//!    `nodelay` makes `auth-request-handler.c` answer a failure at once instead of through
//!    the 500 ms failure flush timer that `auth_failure_delay = 0` still leaves in place.
//! 2. The `oauth2` passdb validates the JWT locally: RS256 signature by `kid`, `exp`,
//!    `nbf`, `iat`, `iss` against the allow-list. Its `pass_attrs` build
//!    `grant_key = <appid>/<oid>`, prefixed with `noaud/` unless `aud` is exactly
//!    `https://outlook.office365.com` (compared with `eq` against an environment variable,
//!    because a literal `:` breaks `%{if}` in 2.3.19) and with `norole/` unless `roles`
//!    holds `IMAP.AccessAsApp`. A prefixed key matches no grant line.
//! 3. A `passwd-file` passdb looks up `<grant_key>/<mailbox>` in `grants.passwd`, one line
//!    per FullAccess grant. Exchange knows a service principal by the AppId and ObjectId
//!    given to `New-ServicePrincipal`, and a token's `oid` is the enterprise application's
//!    object id, so a grant registered with the app registration's object id never matches.
//!
//! Plain `LOGIN`/`AUTHENTICATE PLAIN` go to a passwd-file of per-mailbox password hashes,
//! and the seeder logs in as a master user (`<mailbox>*threatmail-seed`) with a random
//! per-instance secret. Nothing else can log in.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, ensure};
use base64::Engine as _;

use super::{MailboxGrant, OAuthSettings};

/// The master user the seeder logs in as, `<mailbox>*threatmail-seed`.
pub(crate) const SEED_MASTER_USER: &str = "threatmail-seed";
/// Separates the mailbox from the master user in a master login.
pub(crate) const MASTER_SEPARATOR: char = '*';
/// The only audience Exchange Online accepts for IMAP tokens.
pub(crate) const EXCHANGE_AUDIENCE: &str = "https://outlook.office365.com";
/// The role an app needs to open mailboxes over IMAP.
pub(crate) const IMAP_ROLE_REGEX: &str = "(^|[^A-Za-z0-9._-])IMAP[.]AccessAsApp([^A-Za-z0-9._-]|$)";
/// The environment variable that carries [`EXCHANGE_AUDIENCE`] into the auth process.
const AUDIENCE_ENV: &str = "THREATMAIL_EXCHANGE_AUDIENCE";
/// Stands in for "no issuer configured": with `issuers` unset Dovecot would accept any
/// issuer, so an allow-list of one value no issuer uses refuses every token instead.
const NO_ISSUER: &str = "urn:threatmail:testkit:no-issuer-configured";
/// The marker a reload probe looks for; see `Dovecot::reload`.
/// (A query parameter: `#` would start a comment in the args file.)
pub(crate) const GENERATION_MARKER: &str = "?threatmail-testkit-generation=";

/// Everything `dovecot.conf` needs; fixed for the life of an instance.
pub(crate) struct MainConfig<'a> {
    pub(crate) instance_name: &'a str,
    pub(crate) dir: &'a Path,
    pub(crate) user: &'a str,
    pub(crate) group: &'a str,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) imap_port: u16,
    pub(crate) imaps_port: u16,
    pub(crate) dh_pem: Option<&'a Path>,
    pub(crate) auth_debug: bool,
}

impl MainConfig<'_> {
    /// Renders `dovecot.conf`.
    pub(crate) fn render(&self) -> String {
        let d = self.dir.display();
        let dh = match self.dh_pem {
            Some(path) => format!("ssl_dh = <{}\n", path.display()),
            None => String::new(),
        };
        let debug = if self.auth_debug { "yes" } else { "no" };
        format!(
            r#"# Written by threatmail-testkit (libs/testkit/src/dovecot/config.rs) for one test
# instance. Everything lives in {d}.
instance_name = {instance}
base_dir = {d}/run
state_dir = {d}/state
listen = 127.0.0.1
protocols = imap
log_path = {d}/log/dovecot.log
default_internal_user = {user}
default_internal_group = {group}
default_login_user = {user}
first_valid_uid = 1
# The audience check compares with this variable: a literal ':' breaks %{{if}} in 2.3.19.
import_environment = TZ CORE_OUTOFMEM CORE_ERROR LISTEN_PID LISTEN_FDS {audience_env}={audience}

ssl = yes
ssl_cert = <{d}/tls/cert.pem
ssl_key = <{d}/tls/key.pem
{dh}disable_plaintext_auth = no

auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
auth_verbose = yes
auth_debug = {debug}
auth_cache_size = 0
auth_master_user_separator = {separator}

mail_location = maildir:{d}/mail/%u:LAYOUT=fs
mail_fsync = never
namespace inbox {{
  inbox = yes
  # Exchange Online's hierarchy separator.
  separator = /
}}
protocol imap {{
  mail_max_userip_connections = 1000
}}

# 1. Fast refusals: authenticates nothing (NEXT), only sets nodelay; see config.rs.
passdb {{
  driver = static
  args = noauthenticate nodelay=yes
}}
# 2. The token itself.
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {d}/oauth2.conf
  result_success = continue-ok
  result_failure = return-fail
  result_internalfail = return-fail
}}
# 3. FullAccess: <appid>/<oid>/<mailbox>.
passdb {{
  driver = passwd-file
  mechanisms = xoauth2 oauthbearer
  args = username_format=%{{passdb:grant_key}}/%Lu {d}/grants.passwd
  result_success = return-ok
  result_failure = return-fail
  result_internalfail = return-fail
}}
# Per-mailbox passwords (Dovecot::set_password).
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=SHA256 username_format=%Lu {d}/passwords.passwd
}}
# The seeder: <mailbox>*{seed_user} with a per-instance random secret. Master passdbs
# form their own chain, so it gets its own nodelay step.
passdb {{
  driver = static
  master = yes
  args = noauthenticate nodelay=yes
}}
passdb {{
  driver = passwd-file
  master = yes
  mechanisms = plain login
  args = scheme=SHA256 username_format=%Lu {d}/seed.passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={d}/mail/%u allow_all_users=yes
}}

service imap-login {{
  chroot =
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
  # No socket, no brute-force tarpit (refusals from 127.0.0.1 would climb to 15 s).
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"#,
            instance = self.instance_name,
            user = self.user,
            group = self.group,
            uid = self.uid,
            gid = self.gid,
            audience_env = AUDIENCE_ENV,
            audience = EXCHANGE_AUDIENCE,
            separator = MASTER_SEPARATOR,
            seed_user = SEED_MASTER_USER,
            imap_port = self.imap_port,
            imaps_port = self.imaps_port,
        )
    }
}

/// Renders the oauth2 args file for `settings`; `generation` goes into the challenge's
/// `openid-configuration` URL so a probe can tell which version the auth process loaded.
pub(crate) fn render_oauth2(dir: &Path, settings: &OAuthSettings, generation: u64) -> String {
    let issuers = if settings.issuers.is_empty() {
        NO_ISSUER.to_owned()
    } else {
        settings.issuers.join(" ")
    };
    // grant_key = [noaud/][norole/]<appid>/<oid>. pass_attrs is split on spaces, so none
    // may appear inside. A missing claim expands to "", and a missing aud is refused by the
    // second test even if the environment variable were lost.
    let grant_key = format!(
        "grant_key=%{{if;%{{oauth2:aud}};eq;%{{env:{AUDIENCE_ENV}}};;noaud/}}\
         %{{if;%{{oauth2:aud}};eq;;noaud/;}}\
         %{{if;%{{oauth2:roles}};~;{IMAP_ROLE_REGEX};;norole/}}\
         %{{oauth2:appid}}/%{{oauth2:oid}}"
    );
    format!(
        "# Written by threatmail-testkit (libs/testkit/src/dovecot/config.rs).\n\
         introspection_mode = local\n\
         local_validation_key_dict = fs:posix:prefix={keys}/\n\
         issuers = {issuers}\n\
         active_attribute =\n\
         active_value =\n\
         # sub is required by the JWT code; a literal format makes both sides equal, the\n\
         # mailbox is checked by the grants passdb instead.\n\
         username_attribute = sub\n\
         username_format = threatmail-app-token\n\
         openid_configuration_url = https://login.microsoftonline.com/common/.well-known/openid-configuration{GENERATION_MARKER}{generation}\n\
         pass_attrs = {grant_key}\n",
        keys = dir.join("keys").display(),
    )
}

/// Checks `settings` for values that would corrupt a file or a path.
pub(crate) fn validate_oauth(settings: &OAuthSettings) -> anyhow::Result<()> {
    for issuer in &settings.issuers {
        ensure!(
            !issuer.is_empty() && issuer.chars().all(|c| c.is_ascii_graphic()),
            "issuer {issuer:?} must be non-empty printable ASCII without spaces"
        );
    }
    let mut kids = std::collections::BTreeSet::new();
    for key in &settings.signing_keys {
        ensure!(
            !key.kid.is_empty()
                && key.kid != "."
                && key.kid != ".."
                && key
                    .kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.=".contains(c)),
            "kid {:?} must be made of letters, digits and -_.= (Dovecot escapes others in \
             key file names)",
            key.kid
        );
        ensure!(
            key.public_key_pem.contains("-----BEGIN PUBLIC KEY-----"),
            "the key for kid {:?} must be an SPKI PEM (BEGIN PUBLIC KEY)",
            key.kid
        );
        ensure!(kids.insert(&key.kid), "kid {:?} appears twice", key.kid);
    }
    for grant in &settings.grants {
        for (what, value) in [("app id", &grant.app_id), ("object id", &grant.object_id)] {
            ensure!(
                is_id(value),
                "grant {what} {value:?} must be non-empty printable ASCII without '/', ':' \
                 or '#'"
            );
        }
        validate_mailbox(&grant.mailbox)?;
    }
    Ok(())
}

fn is_id(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && !"/:#".contains(c))
}

/// Mailbox addresses become user names, file names and passwd-file keys.
pub(crate) fn validate_mailbox(mailbox: &str) -> anyhow::Result<()> {
    ensure!(
        !mailbox.is_empty()
            && mailbox != "."
            && mailbox != ".."
            && mailbox
                .chars()
                .all(|c| c.is_ascii_graphic() && !"/:#\"\\*%".contains(c)),
        "mailbox {mailbox:?} must be printable ASCII without spaces or any of / : # \" \\ * %"
    );
    Ok(())
}

/// Dovecot lower-cases user names (`%Lu`, ASCII only); files must match that.
pub(crate) fn user_key(mailbox: &str) -> String {
    mailbox.to_ascii_lowercase()
}

/// Renders `grants.passwd`: one `<appid>/<oid>/<mailbox>` per line, no password needed
/// (the oauth2 passdb's `continue-ok` already verified the credentials).
pub(crate) fn render_grants(grants: &[MailboxGrant]) -> String {
    let mut out = String::from("# <appid>/<oid>/<mailbox>, one FullAccess grant per line\n");
    for grant in grants {
        let _ = writeln!(
            out,
            "{}/{}/{}",
            grant.app_id,
            grant.object_id,
            user_key(&grant.mailbox)
        );
    }
    out
}

/// `{SHA256}` (base64) of a password, the form the password passdbs expect.
pub(crate) fn password_hash(password: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, password.as_bytes());
    format!(
        "{{SHA256}}{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// Renders a passwd-file from `(user, hash)` pairs.
pub(crate) fn render_passwords<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = String::new();
    for (user, hash) in entries {
        let _ = writeln!(out, "{user}:{hash}");
    }
    out
}

/// The key file path Dovecot derives for an RS256 token without `azp` (Entra v1):
/// `keys/default/RS256/<kid>`.
pub(crate) fn key_dir(dir: &Path) -> std::path::PathBuf {
    dir.join("keys").join("default").join("RS256")
}

/// Refuses password values the passwd-file format or IMAP quoting cannot carry.
pub(crate) fn validate_password(password: &str) -> anyhow::Result<()> {
    if password.is_empty() {
        bail!("the password must not be empty");
    }
    if password.contains(['\r', '\n', '\0']) {
        bail!("the password must not contain CR, LF or NUL");
    }
    Ok(())
}

/// Finds Debian's DH parameters (`dovecot-core` ships them).
pub(crate) fn dh_pem() -> Option<&'static Path> {
    let path = Path::new("/usr/share/dovecot/dh.pem");
    path.exists().then_some(path)
}

/// Reads a file for diagnosis, never failing.
pub(crate) fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::super::SigningKeyFile;
    use super::*;

    #[test]
    fn grant_key_has_no_spaces_and_no_literal_colon_in_if() {
        let text = render_oauth2(Path::new("/tmp/x"), &OAuthSettings::default(), 3);
        let line = text
            .lines()
            .find(|l| l.starts_with("pass_attrs = "))
            .unwrap_or_default();
        let value = line.trim_start_matches("pass_attrs = ");
        assert!(!value.contains(' '), "{value}");
        assert!(!value.contains("https:"), "{value}");
        assert!(text.contains(&format!("issuers = {NO_ISSUER}\n")));
        assert!(text.contains(&format!("{GENERATION_MARKER}3\n")));
    }

    #[test]
    fn validation_refuses_unsafe_values() {
        let key = |kid: &str| SigningKeyFile {
            kid: kid.to_owned(),
            public_key_pem: "-----BEGIN PUBLIC KEY-----\n".to_owned(),
        };
        let grant = |app: &str, oid: &str, mailbox: &str| MailboxGrant {
            app_id: app.to_owned(),
            object_id: oid.to_owned(),
            mailbox: mailbox.to_owned(),
        };
        let ok = OAuthSettings {
            issuers: vec!["https://sts.windows.net/t/".to_owned()],
            signing_keys: vec![key("nOo3ZDrODXEK1jKWhXslHR_KXEg")],
            grants: vec![grant("a", "o", "Alice@Corp.Test")],
        };
        assert!(validate_oauth(&ok).is_ok());
        let bad = [
            OAuthSettings {
                issuers: vec!["two words".to_owned()],
                ..ok.clone()
            },
            OAuthSettings {
                signing_keys: vec![key("../x")],
                ..ok.clone()
            },
            OAuthSettings {
                signing_keys: vec![key("k"), key("k")],
                ..ok.clone()
            },
            OAuthSettings {
                grants: vec![grant("a/b", "o", "m@x")],
                ..ok.clone()
            },
            OAuthSettings {
                grants: vec![grant("a", "", "m@x")],
                ..ok.clone()
            },
            OAuthSettings {
                grants: vec![grant("a", "o", "m@x:y")],
                ..ok.clone()
            },
        ];
        for settings in bad {
            assert!(validate_oauth(&settings).is_err(), "{settings:?}");
        }
    }

    #[test]
    fn grants_are_lower_case_keys() {
        let text = render_grants(&[MailboxGrant {
            app_id: "app".to_owned(),
            object_id: "oid".to_owned(),
            mailbox: "Alice@Corp.Test".to_owned(),
        }]);
        assert!(text.ends_with("app/oid/alice@corp.test\n"), "{text}");
    }

    #[test]
    fn password_hash_is_dovecot_sha256() {
        // echo -n secret | openssl dgst -sha256 -binary | base64
        assert_eq!(
            password_hash("secret"),
            "{SHA256}K7gNU3sdo+OL0wNhqoVWhr3g6s1xYv72ol/pe/Unols="
        );
    }
}
