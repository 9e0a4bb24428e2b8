//! The Add Email Source form: every field checked at once, and the form turned into a
//! stored record and back.
//!
//! [`check`] reads a [`pb::SourceSpec`] and returns every problem (blocking, each naming
//! its field and the setup step to recheck) and every warning (not blocking) together, so
//! the user fixes them in one go. Secrets are only ever held as [`SecretString`] here and
//! are sealed by [`apply`]; [`to_proto`] never puts a secret in a reply, only whether one is
//! set and when it expires.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret as _, SecretString};
use threatmail_proto::v1 as pb;
use threatmail_source::record::{AccountType, AfterProcessing, AuthType};
use threatmail_source::{Cloud, FolderSelection, Keyring, SecretSlot, SourceId, SourceRecord};

use crate::error::RegistryError;

/// The default poll interval.
pub const DEFAULT_POLL_SECS: u64 = 300;
/// The shortest poll interval allowed.
pub const MIN_POLL_SECS: u64 = 30;
/// The longest poll interval allowed.
pub const MAX_POLL_SECS: u64 = 86_400;
/// Entra client secrets live at most 24 months [MS-CREDS]; a date further out is likely a
/// typo.
const MAX_SECRET_LIFETIME: Duration = Duration::from_secs(2 * 366 * 24 * 3600);
/// `common`, `organizations` and `consumers` are multi-tenant authorities, refused for
/// client credentials (AADSTS9001023).
const NOT_SPECIFIC_TENANTS: [&str; 3] = ["common", "organizations", "consumers"];

/// The form's fields, checked and normalised.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The name, trimmed.
    pub name: String,
    /// `ms-oauth2` or `password`.
    pub auth_type: AuthType,
    /// The mailbox address (lower-cased for `ms-oauth2`) or username.
    pub username: String,
    /// Application (client) ID, lower case; empty for `password`.
    pub app_id: String,
    /// Tenant GUID or domain, lower case; empty for `password`.
    pub tenant_id: String,
    /// The Object ID entered, lower case.
    pub object_id: Option<String>,
    /// A new secret, if one was entered.
    pub secret: Option<SecretString>,
    /// Its expiry (Unix seconds).
    pub secret_expires: Option<i64>,
    /// A new next secret, if one was entered.
    pub next_secret: Option<SecretString>,
    /// Its expiry.
    pub next_secret_expires: Option<i64>,
    /// The cloud.
    pub cloud: Cloud,
    /// The host; `None`: the cloud's.
    pub host: Option<String>,
    /// The port.
    pub port: u16,
    /// Implicit TLS.
    pub tls: bool,
    /// Synced.
    pub enabled: bool,
    /// Seconds between polls.
    pub poll_interval_secs: u64,
    /// After processing.
    pub after_processing: AfterProcessing,
    /// Allowed senders, lower case.
    pub sender_allow_list: Vec<String>,
    /// `TLP:…`.
    pub default_tlp: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
}

impl Checked {
    /// The IMAP host to connect to.
    pub fn imap_host(&self) -> &str {
        self.host.as_deref().unwrap_or(self.cloud.imap_host())
    }
}

/// Which secrets the source being edited already has.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stored {
    /// A current secret.
    pub secret: bool,
    /// A next secret.
    pub next_secret: bool,
}

/// What [`check`] found.
#[derive(Debug)]
pub struct Outcome {
    /// The checked fields, when there is no problem.
    pub checked: Option<Checked>,
    /// Blocking problems.
    pub problems: Vec<pb::Problem>,
    /// Warnings.
    pub warnings: Vec<pb::Problem>,
}

/// A problem about `field`.
pub fn problem(reason: &str, field: &str, message: impl Into<String>) -> pb::Problem {
    pb::Problem {
        reason: reason.to_owned(),
        message: message.into(),
        field: field.to_owned(),
        upstream_code: String::new(),
    }
}

/// Now, in Unix seconds.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// `2026-12-31T00:00:00Z`.
pub fn format_time(secs: i64) -> String {
    match u64::try_from(secs) {
        Ok(secs) => {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
        }
        Err(_) => String::new(),
    }
}

/// Reads an RFC 3339 time in UTC or a bare date (midnight UTC).
pub fn parse_time(text: &str) -> Option<i64> {
    let text = text.trim();
    let full = if text.len() == 10 {
        format!("{text}T00:00:00Z")
    } else {
        text.to_owned()
    };
    let time = humantime::parse_rfc3339_weak(&full).ok()?;
    let secs = time.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

/// Whether `text` is a GUID (`8-4-4-4-12` hex digits).
pub fn is_guid(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn is_label(label: &str) -> bool {
    !label.is_empty()
        && label.len() <= 63
        && !label.starts_with('-')
        && !label.ends_with('-')
        && label.chars().all(|c| c.is_alphanumeric() || c == '-')
}

/// Whether `text` is a domain name with at least two labels.
pub fn is_domain(text: &str) -> bool {
    let labels: Vec<&str> = text.split('.').collect();
    text.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| is_label(l))
        && labels
            .last()
            .is_some_and(|tld| !tld.chars().all(|c| c.is_ascii_digit()))
}

/// Whether `text` is a host name (one label or more) or an IP address.
fn is_host(text: &str) -> bool {
    text.parse::<std::net::IpAddr>().is_ok() || (text.len() <= 253 && text.split('.').all(is_label))
}

/// Whether `text` looks like a mail address: a local part without spaces and a domain.
pub fn is_email(text: &str) -> bool {
    let Some((local, domain)) = text.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "<>()[],;:\"@".contains(c))
        && is_domain(domain)
}

fn has_control(text: &str) -> bool {
    text.chars().any(char::is_control)
}

/// The canonical marking of a TLP the user typed (`amber`, `TLP:WHITE`, …).
pub fn canonical_tlp(text: &str) -> Option<&'static str> {
    let upper = text.trim().to_ascii_uppercase();
    let bare = upper.strip_prefix("TLP:").unwrap_or(&upper).trim();
    match bare {
        "CLEAR" | "WHITE" => Some("TLP:CLEAR"),
        "GREEN" => Some("TLP:GREEN"),
        "AMBER" => Some("TLP:AMBER"),
        "AMBER+STRICT" => Some("TLP:AMBER+STRICT"),
        "RED" => Some("TLP:RED"),
        _ => None,
    }
}

struct Checker {
    problems: Vec<pb::Problem>,
    warnings: Vec<pb::Problem>,
    now: i64,
}

impl Checker {
    fn required(&mut self, field: &str, message: &str) {
        self.problems
            .push(problem("validation.required", field, message));
    }

    fn invalid(&mut self, field: &str, message: impl Into<String>) {
        self.problems
            .push(problem("validation.invalid", field, message));
    }

    fn warn(&mut self, reason: &str, field: &str, message: impl Into<String>) {
        self.warnings.push(problem(reason, field, message));
    }

    fn expiry(&mut self, field: &str, text: &str, which: &str) -> Option<i64> {
        if text.trim().is_empty() {
            return None;
        }
        let Some(at) = parse_time(text) else {
            self.invalid(
                field,
                format!(
                    "{text:?} is not a date: write it as 2026-12-31 or 2026-12-31T23:59:59Z \
                     (UTC), as the app's Certificates & secrets page shows it"
                ),
            );
            return None;
        };
        let when = format_time(at);
        let warning_window =
            i64::try_from(threatmail_source::SECRET_EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
        let max_ahead = i64::try_from(MAX_SECRET_LIFETIME.as_secs()).unwrap_or(i64::MAX);
        if at <= self.now {
            self.warn(
                "source.secret_expired",
                field,
                format!(
                    "the {which} expiry date entered ({when}) has passed: if it is right, \
                     the secret no longer works; create a new one (setup step 3)"
                ),
            );
        } else if at - self.now <= warning_window {
            self.warn(
                "source.secret_expiring",
                field,
                format!(
                    "the {which} expires on {when}, within 30 days: create a new one and \
                     enter it as the next secret (setup step 3)"
                ),
            );
        } else if at - self.now > max_ahead {
            self.warn(
                "source.secret_expiry_unlikely",
                field,
                format!(
                    "the {which} expiry date {when} is more than 24 months away, longer \
                     than Entra allows for a client secret: check the date"
                ),
            );
        }
        Some(at)
    }
}

/// Checks every field of `spec`; `stored` says which secrets an edited source already has.
pub fn check(spec: &pb::SourceSpec, stored: Stored, now: i64) -> Outcome {
    let mut c = Checker {
        problems: Vec::new(),
        warnings: Vec::new(),
        now,
    };

    let name = spec.name.trim().to_owned();
    if name.is_empty() {
        c.required("name", "enter a name for the source");
    } else if name.chars().count() > 100 || has_control(&name) {
        c.invalid(
            "name",
            "use at most 100 characters, without control characters",
        );
    }

    let account_type = spec.account_type.trim();
    if !(account_type.is_empty() || account_type.eq_ignore_ascii_case("imap")) {
        c.invalid(
            "account_type",
            format!("{account_type:?} is not supported: the account type is imap"),
        );
    }

    let auth_type = match spec.auth_type() {
        pb::AuthType::Unspecified | pb::AuthType::MsOauth2 => AuthType::MsOauth2,
        pb::AuthType::Password => AuthType::Password,
    };
    let oauth = auth_type == AuthType::MsOauth2;

    let email = spec.email.trim();
    let username = if oauth {
        if email.is_empty() {
            c.required(
                "email",
                "enter the mailbox's address (the mailbox granted FullAccess in setup step 5)",
            );
        } else if !is_email(email) {
            c.invalid(
                "email",
                format!(
                    "{email:?} is not a mail address: enter the mailbox's address, e.g. \
                     soc-phish@corp.example (for a shared mailbox, its own address)"
                ),
            );
        }
        email.to_lowercase()
    } else {
        if email.is_empty() {
            c.required("email", "enter the IMAP username");
        } else if email
            .chars()
            .any(|ch| ch.is_whitespace() || ch.is_control())
        {
            c.invalid(
                "email",
                "the username contains spaces or control characters",
            );
        }
        email.to_owned()
    };

    let secret = spec.secret_key.as_str();
    if secret.is_empty() {
        if !stored.secret {
            if oauth {
                c.required(
                    "secret_key",
                    "paste the client secret's Value (Certificates & secrets, setup step 3)",
                );
            } else {
                c.required("secret_key", "enter the password");
            }
        }
    } else {
        check_secret(&mut c, "secret_key", secret, oauth);
    }

    let (app_id, tenant_id, object_id) = if oauth {
        check_oauth_ids(&mut c, spec)
    } else {
        (String::new(), String::new(), None)
    };

    let secret_expires = c.expiry("secret_expires", &spec.secret_expires, "client secret");
    let next_secret = spec.next_secret_key.as_str();
    if !next_secret.is_empty() {
        if !oauth {
            c.invalid(
                "next_secret_key",
                "a next secret is for ms-oauth2 client secret rollover; passwords have none",
            );
        }
        check_secret(&mut c, "next_secret_key", next_secret, oauth);
        if next_secret == secret {
            c.invalid(
                "next_secret_key",
                "the next secret is the same as the current one: create a second client \
                 secret (setup step 3)",
            );
        }
    }
    let next_secret_expires = c.expiry(
        "next_secret_expires",
        &spec.next_secret_expires,
        "next secret",
    );
    if next_secret_expires.is_some() && next_secret.is_empty() && !stored.next_secret {
        c.invalid(
            "next_secret_expires",
            "an expiry date without a next secret: enter the next secret too, or clear the date",
        );
    }

    let cloud = match spec.cloud() {
        pb::Cloud::Unspecified | pb::Cloud::Global => Cloud::Global,
        pb::Cloud::UsGovernment => Cloud::UsGovernment,
        pb::Cloud::China => Cloud::China,
    };

    let host_text = spec.host.trim();
    let host = if host_text.is_empty() {
        if !oauth {
            c.required("host", "enter the IMAP server's host name");
        }
        None
    } else if host_text.contains("://") {
        c.invalid(
            "host",
            format!("{host_text:?}: enter only the host name, e.g. imap.example.com, no scheme"),
        );
        None
    } else if host_text.parse::<std::net::IpAddr>().is_err() && host_text.contains(':') {
        c.invalid(
            "host",
            format!("{host_text:?}: enter the host name alone and the port in the port field"),
        );
        None
    } else if !is_host(host_text) {
        c.invalid("host", format!("{host_text:?} is not a host name"));
        None
    } else {
        Some(host_text.to_lowercase())
    };
    if !oauth
        && let Some(host) = &host
        && [Cloud::Global, Cloud::UsGovernment, Cloud::China]
            .iter()
            .any(|cl| cl.imap_host() == host)
    {
        c.warn(
            "source.password_on_exchange",
            "auth_type",
            "Exchange Online no longer accepts passwords for IMAP (it answers NO LOGIN \
             failed.): use ms-oauth2",
        );
    }

    let port = match spec.port {
        0 => 993,
        p => u16::try_from(p).unwrap_or_else(|_| {
            c.invalid(
                "port",
                format!("{p} is not a port: use 1 to 65535 (993 for IMAPS)"),
            );
            993
        }),
    };
    let tls = spec.tls.unwrap_or(true);
    if !tls {
        c.warn(
            "source.tls_off",
            "tls",
            "TLS is off: the login and every message cross the network unencrypted",
        );
    }
    let enabled = spec.enabled.unwrap_or(true);

    let poll_interval_secs = match u64::from(spec.poll_interval_seconds) {
        0 => DEFAULT_POLL_SECS,
        s if !(MIN_POLL_SECS..=MAX_POLL_SECS).contains(&s) => {
            c.invalid(
                "poll_interval_seconds",
                format!("{s} s: poll every {MIN_POLL_SECS} seconds to 1 day ({MAX_POLL_SECS} s)"),
            );
            DEFAULT_POLL_SECS
        }
        s => s,
    };

    let move_to = spec.move_to_folder.trim();
    let after_processing = match spec.after_processing() {
        pb::AfterProcessing::Unspecified | pb::AfterProcessing::None => AfterProcessing::None,
        pb::AfterProcessing::MarkSeen => AfterProcessing::MarkSeen,
        pb::AfterProcessing::Move => {
            if move_to.is_empty() {
                c.required(
                    "move_to_folder",
                    "name the folder processed messages are moved to",
                );
            }
            AfterProcessing::MoveTo {
                folder: move_to.to_owned(),
            }
        }
    };
    if !move_to.is_empty() && !matches!(after_processing, AfterProcessing::MoveTo { .. }) {
        c.invalid(
            "move_to_folder",
            "a folder to move to is set but after_processing is not move: choose move, or \
             clear the folder",
        );
    }

    let mut sender_allow_list: Vec<String> = Vec::new();
    for (i, entry) in spec.sender_allow_list.iter().enumerate() {
        let entry = entry.trim().to_lowercase();
        if entry.is_empty() {
            continue;
        }
        let domain = entry.strip_prefix('@').unwrap_or(&entry);
        let ok = if entry.contains('@') && !entry.starts_with('@') {
            is_email(&entry)
        } else {
            is_domain(domain)
        };
        if !ok {
            c.invalid(
                &format!("sender_allow_list[{i}]"),
                format!("{entry:?} is neither a mail address nor a domain such as example.com"),
            );
        } else if !sender_allow_list.contains(&entry) {
            sender_allow_list.push(entry);
        }
    }

    let default_tlp = if spec.default_tlp.trim().is_empty() {
        None
    } else {
        match canonical_tlp(&spec.default_tlp) {
            Some(tlp) => Some(tlp.to_owned()),
            None => {
                c.invalid(
                    "default_tlp",
                    format!(
                        "{:?} is not a TLP marking: use TLP:CLEAR, TLP:GREEN, TLP:AMBER, \
                         TLP:AMBER+STRICT or TLP:RED",
                        spec.default_tlp
                    ),
                );
                None
            }
        }
    };

    let mut tags: Vec<String> = Vec::new();
    for (i, tag) in spec.tags.iter().enumerate() {
        let tag = tag.trim();
        if tag.is_empty() {
            continue;
        }
        if tag.chars().count() > 64 || has_control(tag) {
            c.invalid(
                &format!("tags[{i}]"),
                "use at most 64 characters, without control characters",
            );
        } else if !tags.iter().any(|t| t.eq_ignore_ascii_case(tag)) {
            tags.push(tag.to_owned());
        }
    }

    let checked = c.problems.is_empty().then(|| Checked {
        name,
        auth_type,
        username,
        app_id,
        tenant_id,
        object_id,
        secret: (!secret.is_empty()).then(|| SecretString::from(secret)),
        secret_expires,
        next_secret: (!next_secret.is_empty()).then(|| SecretString::from(next_secret)),
        next_secret_expires,
        cloud,
        host,
        port,
        tls,
        enabled,
        poll_interval_secs,
        after_processing,
        sender_allow_list,
        default_tlp,
        tags,
    });
    Outcome {
        checked,
        problems: c.problems,
        warnings: c.warnings,
    }
}

fn check_secret(c: &mut Checker, field: &str, secret: &str, oauth: bool) {
    if secret.len() > 1024 {
        c.invalid(field, "longer than 1024 characters: paste the secret alone");
    } else if has_control(secret) {
        c.invalid(
            field,
            "contains a line break or control character: paste the secret alone",
        );
    } else if oauth && secret.trim() != secret {
        c.invalid(
            field,
            "starts or ends with a space: paste the client secret's Value without spaces",
        );
    }
}

fn check_oauth_ids(c: &mut Checker, spec: &pb::SourceSpec) -> (String, String, Option<String>) {
    let app_id = spec.app_id.trim().to_lowercase();
    if app_id.is_empty() {
        c.required(
            "app_id",
            "enter the Application (client) ID from the app registration's Overview (setup step 1)",
        );
    } else if !is_guid(&app_id) {
        c.invalid(
            "app_id",
            format!(
                "{:?} is not a GUID: the Application (client) ID looks like \
                 11111111-2222-3333-4444-555555555555 (app registration's Overview, setup step 1)",
                spec.app_id.trim()
            ),
        );
    }

    let tenant_id = spec.tenant_id.trim().to_lowercase();
    if tenant_id.is_empty() {
        c.required(
            "tenant_id",
            "enter the Directory (tenant) ID from the app registration's Overview (setup step 1)",
        );
    } else if NOT_SPECIFIC_TENANTS.contains(&tenant_id.as_str()) {
        c.problems.push(problem(
            "validation.tenant_not_specific",
            "tenant_id",
            format!(
                "{tenant_id:?} is not a tenant: app-only sign-in needs your own tenant, the \
                 Directory (tenant) ID GUID or a verified domain (setup step 1)"
            ),
        ));
    } else if tenant_id.contains('/') || tenant_id.contains(':') {
        c.invalid(
            "tenant_id",
            "paste only the Directory (tenant) ID (a GUID) or a verified domain, not a URL",
        );
    } else if !(is_guid(&tenant_id) || is_domain(&tenant_id)) {
        c.invalid(
            "tenant_id",
            format!(
                "{:?} is neither a GUID nor a domain: use the Directory (tenant) ID from the \
                 app registration's Overview (setup step 1)",
                spec.tenant_id.trim()
            ),
        );
    }

    let object_id = spec.object_id.trim().to_lowercase();
    let object_id = if object_id.is_empty() {
        None
    } else if !is_guid(&object_id) {
        c.invalid(
            "object_id",
            format!(
                "{:?} is not a GUID: the Object ID is on the Enterprise application's \
                 Overview (setup step 4); leave it empty if unsure",
                spec.object_id.trim()
            ),
        );
        None
    } else if object_id == app_id {
        c.problems.push(problem(
            "validation.object_id_is_app_id",
            "object_id",
            "the Object ID entered is the Application (client) ID: the Object ID is another \
             GUID, on the Enterprise application's Overview (setup step 4)",
        ));
        None
    } else if object_id == tenant_id {
        c.problems.push(problem(
            "validation.object_id_is_tenant_id",
            "object_id",
            "the Object ID entered is the Directory (tenant) ID: the Object ID is on the \
             Enterprise application's Overview (setup step 4)",
        ));
        None
    } else {
        Some(object_id)
    };
    (app_id, tenant_id, object_id)
}

fn seal_error(
    id: &SourceId,
) -> impl Fn(threatmail_source::record::RecordError) -> RegistryError + use<> {
    let id = id.clone();
    move |error| match error {
        threatmail_source::record::RecordError::Crypto { source, .. } => match source {
            threatmail_source::crypto::CryptoError::Seal => RegistryError::Seal {
                source_id: id.clone(),
            },
            other => RegistryError::SecretUnreadable {
                source_id: id.clone(),
                problem: other.to_string(),
            },
        },
        other => RegistryError::SecretUnreadable {
            source_id: id.clone(),
            problem: other.to_string(),
        },
    }
}

/// A new record from a checked form.
pub fn new_record(
    id: SourceId,
    checked: Checked,
    keyring: &Keyring,
    now: i64,
) -> Result<SourceRecord, RegistryError> {
    let mut record = SourceRecord::new_oauth(
        id,
        &checked.name,
        &checked.username,
        &checked.tenant_id,
        &checked.app_id,
        now,
    );
    apply(&mut record, checked, keyring, now, false)?;
    Ok(record)
}

/// Writes a checked form over `record`: every field replaced, secrets sealed where new
/// ones were entered (kept otherwise, their expiry updated), the next secret removed when
/// `clear_next` says so, and any secret sealed under an older master key sealed again under
/// the primary one.
pub fn apply(
    record: &mut SourceRecord,
    checked: Checked,
    keyring: &Keyring,
    now: i64,
    clear_next: bool,
) -> Result<(), RegistryError> {
    let sealing = seal_error(&record.id);
    record.name = checked.name;
    record.account_type = AccountType::Imap;
    record.auth_type = checked.auth_type;
    record.username = checked.username;
    record.app_id = checked.app_id;
    record.tenant_id = checked.tenant_id;
    record.object_id = checked.object_id;
    record.cloud = checked.cloud;
    record.host = checked.host;
    record.port = checked.port;
    record.tls = checked.tls;
    record.enabled = checked.enabled;
    record.poll_interval_secs = checked.poll_interval_secs;
    record.after_processing = checked.after_processing;
    record.sender_allow_list = checked.sender_allow_list;
    record.default_tlp = checked.default_tlp;
    record.tags = checked.tags;
    record.updated_at = now;

    for (slot, new, expires) in [
        (SecretSlot::Current, checked.secret, checked.secret_expires),
        (
            SecretSlot::Next,
            checked.next_secret,
            checked.next_secret_expires,
        ),
    ] {
        if slot == SecretSlot::Next && clear_next && new.is_none() {
            record.next_secret = None;
            continue;
        }
        match new {
            Some(value) => record
                .set_secret(keyring, slot, &value, expires)
                .map_err(&sealing)?,
            None => {
                let Some(stored) = record.stored_secret(slot) else {
                    continue;
                };
                if keyring.needs_reseal(&stored.sealed) {
                    let value = record
                        .open_secret(keyring, slot)
                        .map_err(&sealing)?
                        .unwrap_or_else(|| SecretString::from(""));
                    record
                        .set_secret(keyring, slot, &value, expires)
                        .map_err(&sealing)?;
                } else {
                    let stored = match slot {
                        SecretSlot::Current => record.secret.as_mut(),
                        SecretSlot::Next => record.next_secret.as_mut(),
                    };
                    if let Some(stored) = stored {
                        stored.expires_at = expires;
                    }
                }
            }
        }
    }
    Ok(())
}

/// The form's fields of a stored record (no secret), for replies.
pub fn spec_of(record: &SourceRecord) -> pb::SourceSpec {
    let (after_processing, move_to_folder) = match &record.after_processing {
        AfterProcessing::None => (pb::AfterProcessing::None, String::new()),
        AfterProcessing::MarkSeen => (pb::AfterProcessing::MarkSeen, String::new()),
        AfterProcessing::MoveTo { folder } => (pb::AfterProcessing::Move, folder.clone()),
    };
    let expires = |slot| {
        record
            .stored_secret(slot)
            .and_then(|s| s.expires_at)
            .map(format_time)
            .unwrap_or_default()
    };
    pb::SourceSpec {
        name: record.name.clone(),
        account_type: "imap".to_owned(),
        auth_type: match record.auth_type {
            AuthType::MsOauth2 => pb::AuthType::MsOauth2,
            AuthType::Password => pb::AuthType::Password,
        } as i32,
        email: record.username.clone(),
        secret_key: String::new(),
        app_id: record.app_id.clone(),
        tenant_id: record.tenant_id.clone(),
        object_id: record.object_id.clone().unwrap_or_default(),
        secret_expires: expires(SecretSlot::Current),
        cloud: match record.cloud {
            Cloud::Global => pb::Cloud::Global,
            Cloud::UsGovernment => pb::Cloud::UsGovernment,
            Cloud::China => pb::Cloud::China,
        } as i32,
        host: record.host.clone().unwrap_or_default(),
        port: u32::from(record.port),
        tls: Some(record.tls),
        enabled: Some(record.enabled),
        poll_interval_seconds: u32::try_from(record.poll_interval_secs).unwrap_or(u32::MAX),
        next_secret_key: String::new(),
        next_secret_expires: expires(SecretSlot::Next),
        after_processing: after_processing as i32,
        move_to_folder,
        sender_allow_list: record.sender_allow_list.clone(),
        default_tlp: record.default_tlp.clone().unwrap_or_default(),
        tags: record.tags.clone(),
    }
}

/// A stored source as a reply: the form without secrets, whether secrets are set, the
/// folder selection.
pub fn to_proto(record: &SourceRecord, folders: &[FolderSelection]) -> pb::Source {
    pb::Source {
        id: record.id.to_string(),
        version: record.version,
        spec: Some(spec_of(record)),
        secret_set: record.secret.is_some(),
        folders: folders
            .iter()
            .map(|f| pb::FolderSelection {
                raw_name: f.raw_name.as_bytes().to_vec(),
                display_name: f.display_name.clone(),
                fetch: f.fetch,
            })
            .collect(),
        next_secret_set: record.next_secret.is_some(),
        created_at: record.created_at,
        updated_at: record.updated_at,
    }
}

/// The secrets of a stored source as entered text, for a test that reuses them.
pub fn stored_secret(
    record: &SourceRecord,
    keyring: &Keyring,
    slot: SecretSlot,
) -> Result<Option<SecretString>, RegistryError> {
    record
        .open_secret(keyring, slot)
        .map_err(seal_error(&record.id))
}

/// Whether `secret` has the shape of a Secret ID (a GUID) rather than a secret's Value.
pub fn looks_like_secret_id(secret: &SecretString) -> bool {
    is_guid(secret.expose_secret().trim())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const APP: &str = "11111111-2222-3333-4444-555555555555";
    const TENANT: &str = "66666666-7777-8888-9999-000000000000";
    const NOW: i64 = 1_767_225_600;

    fn good() -> pb::SourceSpec {
        pb::SourceSpec {
            name: "Phishing".into(),
            auth_type: pb::AuthType::MsOauth2 as i32,
            email: "SOC-Phish@corp.example".into(),
            secret_key: "abc8Q~value".into(),
            app_id: APP.into(),
            tenant_id: TENANT.into(),
            ..Default::default()
        }
    }

    fn fields(outcome: &Outcome) -> Vec<(&str, &str)> {
        outcome
            .problems
            .iter()
            .map(|p| (p.field.as_str(), p.reason.as_str()))
            .collect()
    }

    #[test]
    fn a_good_form_gets_the_defaults() {
        let outcome = check(&good(), Stored::default(), NOW);
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
        let checked = outcome.checked.unwrap();
        assert_eq!(checked.username, "soc-phish@corp.example");
        assert_eq!(checked.imap_host(), "outlook.office365.com");
        assert_eq!(
            (checked.port, checked.tls, checked.enabled),
            (993, true, true)
        );
        assert_eq!(checked.poll_interval_secs, DEFAULT_POLL_SECS);
        assert_eq!(checked.after_processing, AfterProcessing::None);
        assert_eq!(checked.cloud, Cloud::Global);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let spec = pb::SourceSpec {
            name: " ".into(),
            account_type: "pop3".into(),
            email: "not an address".into(),
            secret_key: " abc8Q~value".into(),
            app_id: "my app".into(),
            tenant_id: "common".into(),
            object_id: "xyz".into(),
            secret_expires: "next tuesday".into(),
            host: "imaps://outlook.office365.com".into(),
            port: 70_000,
            poll_interval_seconds: 5,
            after_processing: pb::AfterProcessing::Move as i32,
            sender_allow_list: vec!["ok@corp.example".into(), "not a sender".into()],
            default_tlp: "purple".into(),
            tags: vec!["x".repeat(65)],
            next_secret_expires: "2026-06-01".into(),
            ..Default::default()
        };
        let outcome = check(&spec, Stored::default(), NOW);
        assert!(outcome.checked.is_none());
        let got = fields(&outcome);
        let expected = [
            ("name", "validation.required"),
            ("account_type", "validation.invalid"),
            ("email", "validation.invalid"),
            ("secret_key", "validation.invalid"),
            ("app_id", "validation.invalid"),
            ("tenant_id", "validation.tenant_not_specific"),
            ("object_id", "validation.invalid"),
            ("secret_expires", "validation.invalid"),
            ("next_secret_expires", "validation.invalid"),
            ("host", "validation.invalid"),
            ("port", "validation.invalid"),
            ("poll_interval_seconds", "validation.invalid"),
            ("move_to_folder", "validation.required"),
            ("sender_allow_list[1]", "validation.invalid"),
            ("default_tlp", "validation.invalid"),
            ("tags[0]", "validation.invalid"),
        ];
        for item in expected {
            assert!(got.contains(&item), "{item:?} missing from {got:?}");
        }
        assert_eq!(got.len(), expected.len(), "{got:?}");
        // No message repeats the secret.
        assert!(
            outcome
                .problems
                .iter()
                .all(|p| !p.message.contains("abc8Q~"))
        );
    }

    #[test]
    fn ids_are_checked_for_the_mistakes_people_make() {
        let table: Vec<(pb::SourceSpec, &str, &str)> = vec![
            (
                pb::SourceSpec {
                    object_id: APP.into(),
                    ..good()
                },
                "object_id",
                "validation.object_id_is_app_id",
            ),
            (
                pb::SourceSpec {
                    object_id: TENANT.into(),
                    ..good()
                },
                "object_id",
                "validation.object_id_is_tenant_id",
            ),
            (
                pb::SourceSpec {
                    tenant_id: format!("https://login.microsoftonline.com/{TENANT}/v2.0"),
                    ..good()
                },
                "tenant_id",
                "validation.invalid",
            ),
            (
                pb::SourceSpec {
                    tenant_id: "corp".into(),
                    ..good()
                },
                "tenant_id",
                "validation.invalid",
            ),
            (
                pb::SourceSpec {
                    app_id: String::new(),
                    ..good()
                },
                "app_id",
                "validation.required",
            ),
            (
                pb::SourceSpec {
                    secret_key: String::new(),
                    ..good()
                },
                "secret_key",
                "validation.required",
            ),
            (
                pb::SourceSpec {
                    host: "outlook.office365.com:993".into(),
                    ..good()
                },
                "host",
                "validation.invalid",
            ),
        ];
        for (spec, field, reason) in table {
            let outcome = check(&spec, Stored::default(), NOW);
            assert_eq!(fields(&outcome), vec![(field, reason)], "{field}");
        }
        // A domain tenant and a GUID in capitals are fine (and lower-cased).
        let spec = pb::SourceSpec {
            tenant_id: "Corp.Example".into(),
            app_id: APP.to_uppercase(),
            ..good()
        };
        let checked = check(&spec, Stored::default(), NOW).checked.unwrap();
        assert_eq!(
            (checked.tenant_id.as_str(), checked.app_id.as_str()),
            ("corp.example", APP)
        );
    }

    #[test]
    fn an_edited_source_keeps_its_stored_secret() {
        let spec = pb::SourceSpec {
            secret_key: String::new(),
            next_secret_expires: "2026-03-01".into(),
            ..good()
        };
        let outcome = check(
            &spec,
            Stored {
                secret: true,
                next_secret: true,
            },
            NOW,
        );
        assert!(outcome.problems.is_empty(), "{:?}", outcome.problems);
        assert!(outcome.checked.unwrap().secret.is_none());
    }

    #[test]
    fn expiry_dates_warn_without_blocking() {
        let day = 86_400;
        let table = [
            (format_time(NOW - day), "source.secret_expired"),
            (format_time(NOW + 10 * day), "source.secret_expiring"),
            (
                format_time(NOW + 900 * day),
                "source.secret_expiry_unlikely",
            ),
        ];
        for (date, reason) in table {
            let outcome = check(
                &pb::SourceSpec {
                    secret_expires: date.clone(),
                    ..good()
                },
                Stored::default(),
                NOW,
            );
            assert!(outcome.problems.is_empty(), "{date}");
            assert_eq!(outcome.warnings.len(), 1, "{date}");
            assert_eq!(outcome.warnings[0].reason, reason, "{date}");
        }
        assert_eq!(parse_time("2026-01-01"), Some(NOW));
        assert_eq!(parse_time("2026-01-01T00:00:00Z"), Some(NOW));
        assert_eq!(format_time(NOW), "2026-01-01T00:00:00Z");
    }

    #[test]
    fn password_sources_need_a_host_and_warn_on_exchange() {
        let spec = pb::SourceSpec {
            auth_type: pb::AuthType::Password as i32,
            email: "reports".into(),
            secret_key: " pass phrase ".into(),
            app_id: String::new(),
            tenant_id: String::new(),
            ..Default::default()
        };
        let outcome = check(&spec, Stored::default(), NOW);
        assert_eq!(
            fields(&outcome),
            vec![
                ("name", "validation.required"),
                ("host", "validation.required")
            ]
        );
        let outcome = check(
            &pb::SourceSpec {
                name: "Other".into(),
                host: "outlook.office365.com".into(),
                tls: Some(false),
                ..spec
            },
            Stored::default(),
            NOW,
        );
        let reasons: Vec<&str> = outcome.warnings.iter().map(|w| w.reason.as_str()).collect();
        assert_eq!(reasons, ["source.password_on_exchange", "source.tls_off"]);
        let checked = outcome.checked.unwrap();
        assert_eq!(checked.username, "reports");
        assert!(checked.app_id.is_empty());
    }

    #[test]
    fn lists_are_normalised() {
        let spec = pb::SourceSpec {
            sender_allow_list: vec![
                "Alerts@Vendor.example".into(),
                "@partner.example".into(),
                "feeds.example".into(),
                "alerts@vendor.example".into(),
                " ".into(),
            ],
            tags: vec!["phishing".into(), "Phishing".into(), " vendor ".into()],
            default_tlp: "amber+strict".into(),
            ..good()
        };
        let checked = check(&spec, Stored::default(), NOW).checked.unwrap();
        assert_eq!(
            checked.sender_allow_list,
            ["alerts@vendor.example", "@partner.example", "feeds.example"]
        );
        assert_eq!(checked.tags, ["phishing", "vendor"]);
        assert_eq!(checked.default_tlp.as_deref(), Some("TLP:AMBER+STRICT"));
    }

    #[test]
    fn tlp_markings_are_those_the_parser_writes() {
        for text in [
            "clear",
            "TLP:WHITE",
            "green",
            "TLP:AMBER",
            "amber+strict",
            "red",
        ] {
            let canonical = canonical_tlp(text).unwrap();
            let parsed: threatmail_parse::record::Tlp =
                serde_json::from_value(serde_json::Value::String(canonical.to_owned())).unwrap();
            assert_eq!(parsed.as_str(), canonical);
        }
        assert_eq!(canonical_tlp("TLP:PURPLE"), None);
    }

    #[test]
    fn records_round_trip_to_the_form_without_secrets() {
        let keyring = Keyring::new(
            threatmail_source::MasterKey::generate("k1").unwrap(),
            Vec::new(),
        )
        .unwrap();
        let spec = pb::SourceSpec {
            secret_expires: "2026-06-30".into(),
            next_secret_key: "nxt8Q~value".into(),
            after_processing: pb::AfterProcessing::Move as i32,
            move_to_folder: "Processed".into(),
            tags: vec!["t".into()],
            ..good()
        };
        let checked = check(&spec, Stored::default(), NOW).checked.unwrap();
        let record = new_record(SourceId::parse("s1").unwrap(), checked, &keyring, NOW).unwrap();
        let reply = to_proto(&record, &[]);
        let back = reply.spec.clone().unwrap();
        assert!(reply.secret_set && reply.next_secret_set);
        assert_eq!(back.secret_key, "");
        assert_eq!(back.next_secret_key, "");
        assert_eq!(back.secret_expires, "2026-06-30T00:00:00Z");
        assert_eq!(back.email, "soc-phish@corp.example");
        assert_eq!(back.move_to_folder, "Processed");
        assert_eq!(back.tls, Some(true));
        let printed = format!("{reply:?}");
        assert!(!printed.contains("8Q~value"), "{printed}");
        // Written back unchanged, it checks clean against the stored secrets.
        let again = check(
            &back,
            Stored {
                secret: true,
                next_secret: true,
            },
            NOW,
        );
        assert!(again.problems.is_empty(), "{:?}", again.problems);
    }

    #[test]
    fn an_update_reseals_secrets_of_an_old_master_key() {
        let old = threatmail_source::MasterKey::generate("old").unwrap();
        let old_line = old.to_line();
        let before = Keyring::new(old, Vec::new()).unwrap();
        let checked = check(&good(), Stored::default(), NOW).checked.unwrap();
        let mut record = new_record(SourceId::parse("s1").unwrap(), checked, &before, NOW).unwrap();
        let after = Keyring::new(
            threatmail_source::MasterKey::generate("new").unwrap(),
            vec![threatmail_source::MasterKey::parse(old_line.expose_secret(), "t").unwrap()],
        )
        .unwrap();
        assert!(after.needs_reseal(&record.secret.as_ref().unwrap().sealed));
        let unchanged = pb::SourceSpec {
            secret_key: String::new(),
            secret_expires: "2026-05-01".into(),
            ..good()
        };
        let checked = check(
            &unchanged,
            Stored {
                secret: true,
                next_secret: false,
            },
            NOW,
        )
        .checked
        .unwrap();
        apply(&mut record, checked, &after, NOW + 1, false).unwrap();
        let stored = record.secret.as_ref().unwrap();
        assert_eq!(stored.sealed.key_id(), Some("new"));
        assert_eq!(stored.expires_at, parse_time("2026-05-01"));
        assert_eq!(
            record
                .open_secret(&after, SecretSlot::Current)
                .unwrap()
                .unwrap()
                .expose_secret(),
            "abc8Q~value"
        );
    }
}
