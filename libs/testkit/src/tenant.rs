//! The tenant fixture: the administrator's Microsoft-side setup as plain data.
//!
//! DESIGN §1 lists six steps an administrator does in Entra ID and Exchange Online. A
//! [`TenantFixture`] holds their outcome: tenants and verified domains, app registrations
//! (client id, the app registration's object id, the enterprise application's object id,
//! secrets with expiry, the `IMAP.AccessAsApp` permission, admin consent), and per tenant
//! the Exchange side (`New-ServicePrincipal`, `Add-MailboxPermission … FullAccess`,
//! mailboxes with IMAP on or off and their folders). Every step can be left out or done
//! wrong by editing the data; [`TenantFixture::everything_right`] is the starting point.
//!
//! The Entra stand-in answers token requests from it, and [`TenantFixture::oauth_settings`]
//! turns it into what the test Dovecot needs to judge tokens the way Exchange does. Both share
//! one [`TenantHandle`], so a test can rotate a secret or revoke consent while they run.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;

use crate::jwt::{EXCHANGE_AUDIENCE, IMAP_ROLE, issuer_of, random_bytes};

/// The verified domain of [`TenantFixture::everything_right`].
pub const CORP_DOMAIN: &str = "corp.example";
/// The app's display name in [`TenantFixture::everything_right`].
pub const APP_DISPLAY_NAME: &str = "threatmail-imap";
/// The first mailbox of [`TenantFixture::everything_right`].
pub const PHISH_MAILBOX: &str = "soc-phish@corp.example";
/// The second mailbox of [`TenantFixture::everything_right`].
pub const INTEL_MAILBOX: &str = "soc-intel@corp.example";

/// What the test Dovecot needs to validate XOAUTH2 tokens like Exchange Online.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OAuthSettings {
    /// Accepted `iss` values, `https://sts.windows.net/<tid>/`.
    pub issuers: Vec<String>,
    /// RS256 public keys by kid.
    pub signing_keys: Vec<SigningKeyFile>,
    /// The (app, service principal, mailbox) combinations Exchange would let in.
    pub grants: Vec<MailboxGrant>,
}

/// A `kid` and its RS256 public key in SPKI PEM; Dovecot reads it from a file named after
/// the kid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKeyFile {
    /// The key id, also the file name.
    pub kid: String,
    /// `-----BEGIN PUBLIC KEY-----` PEM.
    pub public_key_pem: String,
}

/// One FullAccess grant as Exchange honours it: a token with `appid` = `app_id` and
/// `oid` = `object_id` may open `mailbox`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MailboxGrant {
    /// The application (client) id, lower case.
    pub app_id: String,
    /// The object id the service principal was registered with in Exchange, lower case.
    pub object_id: String,
    /// The mailbox address, lower case.
    pub mailbox: String,
}

/// A secret string (client secret value) whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretValue(String);

impl SecretValue {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Self {
        SecretValue(value.into())
    }

    /// The secret itself, for sending it in a request.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(<redacted>)")
    }
}

impl From<&str> for SecretValue {
    fn from(value: &str) -> Self {
        SecretValue::new(value)
    }
}

/// A new lower-case GUID, as Entra writes ids.
pub fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A secret value in the shape Entra generates: 40 characters, the 4th and 5th being `Q~`
/// (e.g. `abc8Q~…`), from letters, digits and `. _ ~ -` (so it needs URL-encoding care).
pub fn generate_secret_value() -> SecretValue {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-";
    let bytes = random_bytes(38);
    let mut value = String::with_capacity(40);
    for (i, b) in bytes.iter().enumerate() {
        if i == 3 {
            value.push_str("8Q~");
            continue;
        }
        let alphabet = if i < 3 { &ALPHABET[..52] } else { ALPHABET };
        value.push(char::from(alphabet[usize::from(*b) % alphabet.len()]));
    }
    SecretValue(value)
}

/// A client secret of an app registration (step 3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSecret {
    /// The secret's id (a GUID shown next to it in the portal; pasting it instead of the
    /// value is a common mistake, answered with AADSTS7000215).
    pub id: String,
    /// The value, shown once when the secret is made.
    pub value: SecretValue,
    /// The description typed in the portal.
    pub description: String,
    /// When it stops working (AADSTS7000222 afterwards).
    pub expires: SystemTime,
}

impl ClientSecret {
    /// A fresh secret valid for `lifetime` from now.
    pub fn new(lifetime: Duration) -> Self {
        ClientSecret {
            id: new_guid(),
            value: generate_secret_value(),
            description: "threatmail".to_owned(),
            expires: SystemTime::now() + lifetime,
        }
    }

    /// A secret that expired an hour ago.
    pub fn expired() -> Self {
        let mut secret = ClientSecret::new(Duration::ZERO);
        secret.expires = SystemTime::now() - Duration::from_secs(3600);
        secret
    }

    /// Whether it has expired at `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        self.expires <= now
    }
}

/// An app registration in Entra ID, with its enterprise application (steps 1–4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRegistration {
    /// The display name.
    pub display_name: String,
    /// The Application (client) ID.
    pub client_id: String,
    /// The **app registration's** object id (the wrong one for `New-ServicePrincipal`).
    pub object_id: String,
    /// The **enterprise application's** (service principal's) object id: the token's `oid`.
    pub service_principal_object_id: String,
    /// Whether the enterprise application exists in the tenant (without it: AADSTS7000229).
    pub service_principal_exists: bool,
    /// Whether the enterprise application is enabled for sign-in (without it: AADSTS7000112).
    pub enabled: bool,
    /// Client secrets (step 3).
    pub secrets: Vec<ClientSecret>,
    /// *Office 365 Exchange Online → Application permissions → IMAP.AccessAsApp* added
    /// (step 2).
    pub imap_permission: bool,
    /// Admin consent granted for the tenant (step 2); without it tokens carry no `roles`.
    pub admin_consent: bool,
}

impl AppRegistration {
    /// A registered app with fresh ids and its enterprise application, enabled, but no
    /// secret, no permission and no consent yet.
    pub fn new(display_name: &str) -> Self {
        AppRegistration {
            display_name: display_name.to_owned(),
            client_id: new_guid(),
            object_id: new_guid(),
            service_principal_object_id: new_guid(),
            service_principal_exists: true,
            enabled: true,
            secrets: Vec::new(),
            imap_permission: false,
            admin_consent: false,
        }
    }

    /// Adds a secret.
    pub fn with_secret(mut self, secret: ClientSecret) -> Self {
        self.secrets.push(secret);
        self
    }

    /// Adds `IMAP.AccessAsApp` and grants admin consent (step 2 done right).
    pub fn with_imap_access_consented(mut self) -> Self {
        self.imap_permission = true;
        self.admin_consent = true;
        self
    }

    /// The `roles` a token for `resource` carries: `IMAP.AccessAsApp` for an Exchange
    /// resource when the permission is added and consented, otherwise `None` (no claim).
    pub fn roles_for(&self, resource: &str) -> Option<Vec<String>> {
        let exchange = is_exchange_resource(resource);
        (exchange && self.imap_permission && self.admin_consent).then(|| vec![IMAP_ROLE.to_owned()])
    }

    /// The secret whose value is `value`, if any.
    pub fn secret_with_value(&self, value: &str) -> Option<&ClientSecret> {
        self.secrets.iter().find(|s| s.value.expose() == value)
    }
}

/// Whether `resource` is one of Office 365 Exchange Online's identifiers.
pub fn is_exchange_resource(resource: &str) -> bool {
    let resource = resource.trim_end_matches('/');
    resource.eq_ignore_ascii_case(EXCHANGE_AUDIENCE)
        || resource.eq_ignore_ascii_case("https://ps.outlook.com")
}

/// A service principal as registered in Exchange Online with
/// `New-ServicePrincipal -AppId <app_id> -ObjectId <object_id>`: exactly the ids given,
/// which may be the wrong ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeServicePrincipal {
    /// `-AppId`.
    pub app_id: String,
    /// `-ObjectId` (should be the enterprise application's object id).
    pub object_id: String,
}

/// A mailbox access right of `Add-MailboxPermission -AccessRights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessRight {
    /// `FullAccess`: what IMAP app-only access needs.
    FullAccess,
    /// `ReadPermission`: not enough for IMAP.
    ReadPermission,
}

/// `Add-MailboxPermission -Identity <identity> -User <user> -AccessRights <rights>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxPermission {
    /// `-Identity`: the mailbox.
    pub identity: String,
    /// `-User`: the object id given (that of a registered service principal, hopefully).
    pub user: String,
    /// `-AccessRights`.
    pub access_rights: Vec<AccessRight>,
}

/// A mailbox with its folders and raw messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mailbox {
    /// The primary SMTP address.
    pub address: String,
    /// IMAP enabled for the mailbox (step 6).
    pub imap_enabled: bool,
    /// (folder display name, raw RFC 5322 messages); `/` separates levels.
    pub folders: Vec<(String, Vec<Vec<u8>>)>,
}

impl Mailbox {
    /// An IMAP-enabled mailbox with an empty INBOX.
    pub fn new(address: &str) -> Self {
        Mailbox {
            address: address.to_owned(),
            imap_enabled: true,
            folders: vec![("INBOX".to_owned(), Vec::new())],
        }
    }

    /// Adds messages to a folder (made if missing).
    pub fn with_messages(mut self, folder: &str, messages: Vec<Vec<u8>>) -> Self {
        match self.folders.iter_mut().find(|(name, _)| name == folder) {
            Some((_, existing)) => existing.extend(messages),
            None => self.folders.push((folder.to_owned(), messages)),
        }
        self
    }

    /// Loads a mailbox from a directory: `*.eml` files at the top go to `INBOX`, each
    /// subdirectory is a folder (nested ones as `Parent/Child`); files are taken in name
    /// order.
    pub fn load_dir(address: &str, dir: &Path) -> anyhow::Result<Mailbox> {
        let mut mailbox = Mailbox::new(address);
        mailbox.folders.clear();
        load_folder(dir, None, &mut mailbox.folders)?;
        if !mailbox.folders.iter().any(|(name, _)| name == "INBOX") {
            mailbox.folders.insert(0, ("INBOX".to_owned(), Vec::new()));
        }
        Ok(mailbox)
    }

    /// Number of messages in all folders.
    pub fn message_count(&self) -> usize {
        self.folders.iter().map(|(_, m)| m.len()).sum()
    }
}

fn load_folder(
    dir: &Path,
    name: Option<&str>,
    folders: &mut Vec<(String, Vec<Vec<u8>>)>,
) -> anyhow::Result<()> {
    let mut entries = std::fs::read_dir(dir)
        .with_context(|| format!("failed to read {}", dir.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("failed to list {}", dir.display()))?;
    entries.sort_by_key(|e| e.file_name());
    let mut messages = Vec::new();
    let mut subdirs = Vec::new();
    for entry in entries {
        let path = entry.path();
        if path.is_dir() {
            subdirs.push((entry.file_name().to_string_lossy().into_owned(), path));
        } else if path
            .extension()
            .is_some_and(|ext| ext.eq_ignore_ascii_case("eml"))
        {
            messages.push(
                std::fs::read(&path)
                    .with_context(|| format!("failed to read {}", path.display()))?,
            );
        }
    }
    let this = name.unwrap_or("INBOX").to_owned();
    if name.is_some() || !messages.is_empty() {
        folders.push((this.clone(), messages));
    }
    for (sub, path) in subdirs {
        let child = match name {
            Some(parent) => format!("{parent}/{sub}"),
            None => sub,
        };
        load_folder(&path, Some(&child), folders)?;
    }
    Ok(())
}

/// Exchange Online's side of a tenant (steps 5 and 6).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExchangeOnline {
    /// `New-ServicePrincipal` registrations.
    pub service_principals: Vec<ExchangeServicePrincipal>,
    /// `Add-MailboxPermission` grants.
    pub mailbox_permissions: Vec<MailboxPermission>,
    /// The mailboxes.
    pub mailboxes: Vec<Mailbox>,
}

impl ExchangeOnline {
    /// `New-ServicePrincipal -AppId <app_id> -ObjectId <object_id>`.
    pub fn new_service_principal(&mut self, app_id: &str, object_id: &str) {
        self.service_principals.push(ExchangeServicePrincipal {
            app_id: app_id.to_owned(),
            object_id: object_id.to_owned(),
        });
    }

    /// `Add-MailboxPermission -Identity <mailbox> -User <user> -AccessRights FullAccess`.
    pub fn add_full_access(&mut self, mailbox: &str, user: &str) {
        self.mailbox_permissions.push(MailboxPermission {
            identity: mailbox.to_owned(),
            user: user.to_owned(),
            access_rights: vec![AccessRight::FullAccess],
        });
    }

    /// `Remove-MailboxPermission -Identity <mailbox> -User <user>` (all rights).
    pub fn remove_mailbox_permission(&mut self, mailbox: &str, user: &str) {
        self.mailbox_permissions.retain(|p| {
            !(p.identity.eq_ignore_ascii_case(mailbox) && p.user.eq_ignore_ascii_case(user))
        });
    }

    /// The mailbox with this address.
    pub fn mailbox(&self, address: &str) -> Option<&Mailbox> {
        self.mailboxes
            .iter()
            .find(|m| m.address.eq_ignore_ascii_case(address))
    }

    /// The mailbox with this address, to change it.
    pub fn mailbox_mut(&mut self, address: &str) -> Option<&mut Mailbox> {
        self.mailboxes
            .iter_mut()
            .find(|m| m.address.eq_ignore_ascii_case(address))
    }

    /// The grants Exchange honours: each registered service principal (AppId A, ObjectId O)
    /// times each FullAccess permission for user O on an IMAP-enabled mailbox M.
    fn grants(&self) -> impl Iterator<Item = MailboxGrant> + '_ {
        self.service_principals.iter().flat_map(move |sp| {
            self.mailbox_permissions
                .iter()
                .filter(move |p| {
                    p.user.eq_ignore_ascii_case(&sp.object_id)
                        && p.access_rights.contains(&AccessRight::FullAccess)
                })
                .filter_map(move |p| {
                    let mailbox = self.mailbox(&p.identity)?;
                    mailbox.imap_enabled.then(|| MailboxGrant {
                        app_id: sp.app_id.to_ascii_lowercase(),
                        object_id: sp.object_id.to_ascii_lowercase(),
                        mailbox: mailbox.address.to_ascii_lowercase(),
                    })
                })
        })
    }
}

/// An Entra ID tenant with its Exchange Online organisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The Directory (tenant) ID, a lower-case GUID.
    pub id: String,
    /// Verified domains (e.g. `corp.example`); the token endpoint takes any of them in
    /// place of the id.
    pub domains: Vec<String>,
    /// App registrations.
    pub apps: Vec<AppRegistration>,
    /// Resources with a service principal in the tenant (scope `<resource>/.default` of
    /// any other resource: AADSTS500011).
    pub resources: Vec<String>,
    /// The Exchange side.
    pub exchange: ExchangeOnline,
}

impl Tenant {
    /// A tenant with a fresh id, one verified domain, Exchange Online, Graph and no apps.
    pub fn new(domain: &str) -> Self {
        Tenant {
            id: new_guid(),
            domains: vec![domain.to_owned()],
            apps: Vec::new(),
            resources: vec![
                EXCHANGE_AUDIENCE.to_owned(),
                "https://ps.outlook.com".to_owned(),
                "https://graph.microsoft.com".to_owned(),
            ],
            exchange: ExchangeOnline::default(),
        }
    }

    /// Adds a verified domain.
    pub fn with_domain(mut self, domain: &str) -> Self {
        self.domains.push(domain.to_owned());
        self
    }

    /// Adds an app registration.
    pub fn with_app(mut self, app: AppRegistration) -> Self {
        self.apps.push(app);
        self
    }

    /// Adds a mailbox.
    pub fn with_mailbox(mut self, mailbox: Mailbox) -> Self {
        self.exchange.mailboxes.push(mailbox);
        self
    }

    /// Whether `id_or_domain` names this tenant (GUID or verified domain, any case).
    pub fn is_named(&self, id_or_domain: &str) -> bool {
        self.id.eq_ignore_ascii_case(id_or_domain)
            || self
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(id_or_domain))
    }

    /// The v1 issuer of its tokens.
    pub fn issuer(&self) -> String {
        issuer_of(&self.id)
    }

    /// The app with this client id (any case).
    pub fn app(&self, client_id: &str) -> Option<&AppRegistration> {
        self.apps
            .iter()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    /// The app with this client id, to change it.
    pub fn app_mut(&mut self, client_id: &str) -> Option<&mut AppRegistration> {
        self.apps
            .iter_mut()
            .find(|a| a.client_id.eq_ignore_ascii_case(client_id))
    }

    /// The resource service principal matching `resource` (trailing `/` and case ignored).
    pub fn resource(&self, resource: &str) -> Option<&str> {
        let wanted = resource.trim_end_matches('/');
        self.resources
            .iter()
            .map(String::as_str)
            .find(|r| r.trim_end_matches('/').eq_ignore_ascii_case(wanted))
    }
}

/// The whole Microsoft-side setup of a test.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantFixture {
    /// The tenants.
    pub tenants: Vec<Tenant>,
}

impl TenantFixture {
    /// An empty fixture.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tenant.
    pub fn with_tenant(mut self, tenant: Tenant) -> Self {
        self.tenants.push(tenant);
        self
    }

    /// Steps 1–6 done right: tenant `corp.example`, app `threatmail-imap` with a secret valid
    /// for 180 days, `IMAP.AccessAsApp` consented, the service principal registered in
    /// Exchange with the enterprise application's object id, FullAccess on
    /// `soc-phish@corp.example` and `soc-intel@corp.example`, both IMAP-enabled with one
    /// message in INBOX.
    pub fn everything_right() -> Self {
        let app = AppRegistration::new(APP_DISPLAY_NAME)
            .with_secret(ClientSecret::new(Duration::from_secs(180 * 24 * 3600)))
            .with_imap_access_consented();
        let mut tenant = Tenant::new(CORP_DOMAIN)
            .with_domain("corpexample.onmicrosoft.com")
            .with_mailbox(
                Mailbox::new(PHISH_MAILBOX).with_messages("INBOX", vec![sample_message(1)]),
            )
            .with_mailbox(
                Mailbox::new(INTEL_MAILBOX).with_messages("INBOX", vec![sample_message(2)]),
            );
        tenant
            .exchange
            .new_service_principal(&app.client_id, &app.service_principal_object_id);
        for mailbox in [PHISH_MAILBOX, INTEL_MAILBOX] {
            tenant
                .exchange
                .add_full_access(mailbox, &app.service_principal_object_id);
        }
        TenantFixture::new().with_tenant(tenant.with_app(app))
    }

    /// The tenant named by a GUID or verified domain.
    pub fn tenant(&self, id_or_domain: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.is_named(id_or_domain))
    }

    /// The tenant named by a GUID or verified domain, to change it.
    pub fn tenant_mut(&mut self, id_or_domain: &str) -> Option<&mut Tenant> {
        self.tenants.iter_mut().find(|t| t.is_named(id_or_domain))
    }

    /// The first tenant (the only one of [`TenantFixture::everything_right`]).
    pub fn primary_tenant(&self) -> Option<&Tenant> {
        self.tenants.first()
    }

    /// The first tenant, to change it.
    pub fn primary_tenant_mut(&mut self) -> Option<&mut Tenant> {
        self.tenants.first_mut()
    }

    /// The first app of the first tenant.
    pub fn primary_app(&self) -> Option<&AppRegistration> {
        self.primary_tenant()?.apps.first()
    }

    /// The first app of the first tenant, to change it.
    pub fn primary_app_mut(&mut self) -> Option<&mut AppRegistration> {
        self.primary_tenant_mut()?.apps.first_mut()
    }

    /// What the test Dovecot needs: every tenant's issuer, the given public keys, and the
    /// grants Exchange would honour (see [`MailboxGrant`]). A service principal registered
    /// with the app registration's object id yields a grant no real token matches, since a
    /// token's `oid` is the enterprise application's object id: Exchange behaves the same.
    pub fn oauth_settings(&self, signing_keys: Vec<SigningKeyFile>) -> OAuthSettings {
        let grants: BTreeSet<MailboxGrant> = self
            .tenants
            .iter()
            .flat_map(|t| t.exchange.grants())
            .collect();
        OAuthSettings {
            issuers: self.tenants.iter().map(Tenant::issuer).collect(),
            signing_keys,
            grants: grants.into_iter().collect(),
        }
    }
}

/// A small plain-text message numbered `n`, for seeding mailboxes.
pub fn sample_message(n: u32) -> Vec<u8> {
    format!(
        "From: \"Reporter {n}\" <reporter{n}@corp.example>\r\n\
         To: soc@corp.example\r\n\
         Subject: Suspicious mail {n}\r\n\
         Date: Mon, 5 Jan 2026 10:00:0{d} +0000\r\n\
         Message-ID: <sample-{n}@corp.example>\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Please look at hxxps://login-corp[.]example/reset?id={n}\r\n",
        d = n % 10
    )
    .into_bytes()
}

/// A [`TenantFixture`] shared between a test and the servers that read it; clones share
/// the same data, so changes are seen at once by the Entra stand-in.
#[derive(Debug, Clone, Default)]
pub struct TenantHandle {
    inner: Arc<RwLock<TenantFixture>>,
}

impl TenantHandle {
    /// Shares `fixture`.
    pub fn new(fixture: TenantFixture) -> Self {
        TenantHandle {
            inner: Arc::new(RwLock::new(fixture)),
        }
    }

    /// Reads the fixture.
    pub fn read<R>(&self, f: impl FnOnce(&TenantFixture) -> R) -> R {
        // A panic in another test thread while holding the lock leaves the data usable.
        let guard = self.inner.read().unwrap_or_else(PoisonError::into_inner);
        f(&guard)
    }

    /// Changes the fixture (e.g. rotates a secret, revokes consent).
    pub fn update<R>(&self, f: impl FnOnce(&mut TenantFixture) -> R) -> R {
        let mut guard = self.inner.write().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// A copy of the fixture as it is now.
    pub fn snapshot(&self) -> TenantFixture {
        self.read(Clone::clone)
    }

    /// [`TenantFixture::oauth_settings`] of the current data.
    pub fn oauth_settings(&self, signing_keys: Vec<SigningKeyFile>) -> OAuthSettings {
        self.read(|f| f.oauth_settings(signing_keys))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn grants_of(fixture: &TenantFixture) -> Vec<MailboxGrant> {
        fixture.oauth_settings(Vec::new()).grants
    }

    #[test]
    fn everything_right_grants_both_mailboxes_to_the_enterprise_app() {
        let fixture = TenantFixture::everything_right();
        let tenant = fixture.primary_tenant().unwrap();
        let app = fixture.primary_app().unwrap();
        assert_ne!(app.object_id, app.service_principal_object_id);
        assert_ne!(app.client_id, app.service_principal_object_id);
        let settings = fixture.oauth_settings(vec![SigningKeyFile {
            kid: "k".into(),
            public_key_pem: "pem".into(),
        }]);
        assert_eq!(
            settings.issuers,
            vec![format!("https://sts.windows.net/{}/", tenant.id)]
        );
        assert_eq!(settings.signing_keys.len(), 1);
        let expected: Vec<MailboxGrant> = [INTEL_MAILBOX, PHISH_MAILBOX]
            .iter()
            .map(|m| MailboxGrant {
                app_id: app.client_id.clone(),
                object_id: app.service_principal_object_id.clone(),
                mailbox: (*m).to_owned(),
            })
            .collect();
        assert_eq!(settings.grants, expected);
    }

    #[test]
    fn sp_registered_with_the_app_registration_object_id_yields_a_grant_no_token_matches() {
        let mut fixture = TenantFixture::everything_right();
        let app = fixture.primary_app().unwrap().clone();
        let exchange = &mut fixture.primary_tenant_mut().unwrap().exchange;
        // Step 5 done with the wrong id, consistently.
        exchange.service_principals.clear();
        exchange.new_service_principal(&app.client_id, &app.object_id);
        exchange.mailbox_permissions.clear();
        exchange.add_full_access(PHISH_MAILBOX, &app.object_id);
        let grants = grants_of(&fixture);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].object_id, app.object_id);
        assert!(
            grants
                .iter()
                .all(|g| g.object_id != app.service_principal_object_id)
        );
    }

    #[test]
    fn no_sp_no_full_access_or_imap_disabled_yield_no_grant() {
        let mut no_sp = TenantFixture::everything_right();
        no_sp
            .primary_tenant_mut()
            .unwrap()
            .exchange
            .service_principals
            .clear();
        assert!(grants_of(&no_sp).is_empty());

        let mut no_access = TenantFixture::everything_right();
        no_access
            .primary_tenant_mut()
            .unwrap()
            .exchange
            .mailbox_permissions
            .clear();
        assert!(grants_of(&no_access).is_empty());

        let mut read_only = TenantFixture::everything_right();
        for p in &mut read_only
            .primary_tenant_mut()
            .unwrap()
            .exchange
            .mailbox_permissions
        {
            p.access_rights = vec![AccessRight::ReadPermission];
        }
        assert!(grants_of(&read_only).is_empty());

        let mut imap_off = TenantFixture::everything_right();
        imap_off
            .primary_tenant_mut()
            .unwrap()
            .exchange
            .mailbox_mut(PHISH_MAILBOX)
            .unwrap()
            .imap_enabled = false;
        let grants = grants_of(&imap_off);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].mailbox, INTEL_MAILBOX);
    }

    #[test]
    fn grants_are_lower_cased_and_need_an_existing_mailbox() {
        let mut fixture = TenantFixture::everything_right();
        let app = fixture.primary_app().unwrap().clone();
        let exchange = &mut fixture.primary_tenant_mut().unwrap().exchange;
        exchange.mailbox_permissions.clear();
        exchange.add_full_access(
            "SOC-Phish@Corp.Example",
            &app.service_principal_object_id.to_uppercase(),
        );
        exchange.add_full_access("nobody@corp.example", &app.service_principal_object_id);
        let grants = grants_of(&fixture);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].mailbox, PHISH_MAILBOX);
        assert_eq!(grants[0].object_id, app.service_principal_object_id);
    }

    #[test]
    fn roles_need_permission_and_consent_and_an_exchange_resource() {
        let mut app = AppRegistration::new("a").with_imap_access_consented();
        assert_eq!(
            app.roles_for("https://outlook.office365.com"),
            Some(vec![IMAP_ROLE.to_owned()])
        );
        assert!(app.roles_for("https://ps.outlook.com").is_some());
        assert_eq!(app.roles_for("https://graph.microsoft.com"), None);
        app.admin_consent = false;
        assert_eq!(app.roles_for("https://outlook.office365.com"), None);
    }

    #[test]
    fn tenants_are_found_by_id_or_domain_in_any_case() {
        let fixture = TenantFixture::everything_right();
        let id = fixture.primary_tenant().unwrap().id.clone();
        assert_eq!(id, id.to_ascii_lowercase());
        assert!(fixture.tenant(&id.to_uppercase()).is_some());
        assert!(fixture.tenant("CORP.example").is_some());
        assert!(fixture.tenant("corpexample.onmicrosoft.com").is_some());
        assert!(fixture.tenant("other.example").is_none());
    }

    #[test]
    fn secrets_look_like_entra_values_and_never_show_in_debug() {
        let secret = ClientSecret::new(Duration::from_secs(60));
        let value = secret.value.expose();
        assert_eq!(value.len(), 40);
        assert_eq!(&value[3..6], "8Q~");
        assert!(!format!("{secret:?}").contains(value));
        let fixture = TenantFixture::everything_right();
        let shown = format!("{fixture:?}");
        let app_secret = fixture.primary_app().unwrap().secrets[0].value.expose();
        assert!(!shown.contains(app_secret));
        assert!(ClientSecret::expired().is_expired_at(SystemTime::now()));
        assert!(!secret.is_expired_at(SystemTime::now()));
    }

    #[test]
    fn load_dir_maps_subdirectories_to_folders() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.eml"), b"Subject: b\r\n\r\nb").unwrap();
        std::fs::write(dir.path().join("a.eml"), b"Subject: a\r\n\r\na").unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();
        let phish = dir.path().join("Phish Reports");
        std::fs::create_dir_all(phish.join("2026")).unwrap();
        std::fs::write(phish.join("x.eml"), b"Subject: x\r\n\r\nx").unwrap();
        std::fs::write(phish.join("2026").join("y.EML"), b"Subject: y\r\n\r\ny").unwrap();
        let mailbox = Mailbox::load_dir("m@corp.example", dir.path()).unwrap();
        let names: Vec<&str> = mailbox.folders.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["INBOX", "Phish Reports", "Phish Reports/2026"]);
        assert_eq!(mailbox.folders[0].1[0], b"Subject: a\r\n\r\na");
        assert_eq!(mailbox.message_count(), 4);
    }

    #[test]
    fn handle_clones_share_changes() {
        let handle = TenantHandle::new(TenantFixture::everything_right());
        let other = handle.clone();
        other.update(|f| f.primary_app_mut().unwrap().admin_consent = false);
        assert!(!handle.read(|f| f.primary_app().unwrap().admin_consent));
    }
}
