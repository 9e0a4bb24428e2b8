//! The client-credentials grant of the stand-in: reading the form and deciding, from the
//! tenant fixture, between a token and an AADSTS refusal. No I/O, so it is unit-tested
//! directly.
//!
//! Checks run in this order (the first failure answers): tenant (900023, 9001023, 90002),
//! `grant_type` (900144, 70003), `client_id` (900144), `scope` (900144, 70011, 1002012),
//! the app (700016, 7000229), its credential (7000218, 7000215, 7000222), the app being
//! enabled (7000112), the resource (500011).

use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::errors::{self, AadstsError};
use crate::jwt::{AccessTokenClaims, resource_of_scope};
use crate::tenant::{AppRegistration, Tenant, TenantFixture};

/// The form fields of a token request, with HTTP Basic client authentication folded in.
#[derive(Default, Clone, PartialEq, Eq)]
pub(crate) struct TokenForm {
    pub(crate) grant_type: Option<String>,
    pub(crate) client_id: Option<String>,
    pub(crate) client_secret: Option<String>,
    pub(crate) scope: Option<String>,
}

impl std::fmt::Debug for TokenForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenForm")
            .field("grant_type", &self.grant_type)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

impl TokenForm {
    /// Reads a request body (only when it is `application/x-www-form-urlencoded`; any other
    /// body counts as empty) and an `Authorization: Basic` header (RFC 6749 §2.3.1: client id
    /// and secret each form-urlencoded, joined by `:`, then base64). Body fields win over
    /// the header. Empty values count as missing.
    pub(crate) fn parse(
        body: &[u8],
        content_type: Option<&str>,
        authorization: Option<&str>,
    ) -> Self {
        let mut form = TokenForm::default();
        let is_form = content_type.is_some_and(|ct| {
            ct.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
        if is_form {
            for (key, value) in form_urlencoded::parse(body) {
                let slot = match key.as_ref() {
                    "grant_type" => &mut form.grant_type,
                    "client_id" => &mut form.client_id,
                    "client_secret" => &mut form.client_secret,
                    "scope" => &mut form.scope,
                    _ => continue,
                };
                if slot.is_none() && !value.is_empty() {
                    *slot = Some(value.into_owned());
                }
            }
        }
        if let Some((id, secret)) = authorization.and_then(basic_credentials) {
            if form.client_id.is_none() && !id.is_empty() {
                form.client_id = Some(id);
            }
            if form.client_secret.is_none() && !secret.is_empty() {
                form.client_secret = Some(secret);
            }
        }
        form
    }
}

/// Client id and secret from `Basic base64(urlencode(id):urlencode(secret))`.
fn basic_credentials(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

/// Decodes one application/x-www-form-urlencoded value.
fn form_decode(value: &str) -> String {
    form_urlencoded::parse(format!("v={value}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Whether `s` is a GUID in 8-4-4-4-12 hex form.
pub(crate) fn is_guid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// Whether `s` is a DNS name with at least two labels.
fn is_domain_name(s: &str) -> bool {
    s.len() <= 253
        && s.contains('.')
        && s.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// Finds the tenant named in the URL.
pub(crate) fn resolve_tenant<'a>(
    fixture: &'a TenantFixture,
    segment: &str,
) -> Result<&'a Tenant, AadstsError> {
    if ["common", "organizations", "consumers"]
        .iter()
        .any(|m| segment.eq_ignore_ascii_case(m))
    {
        return Err(AadstsError::new(
            errors::TENANT_NOT_SPECIFIC,
            format!(
                "The client credentials grant is not supported on the /{segment} endpoint. Use a \
                 tenant-specific endpoint."
            ),
        ));
    }
    if !is_guid(segment) && !is_domain_name(segment) {
        return Err(AadstsError::new(
            errors::TENANT_MALFORMED,
            format!("Tenant identifier '{segment}' is neither a GUID nor a valid domain name."),
        ));
    }
    fixture.tenant(segment).ok_or_else(|| {
        AadstsError::new(
            errors::TENANT_NOT_FOUND,
            format!(
                "Tenant '{segment}' not found. Check the tenant ID and that you are signing in \
                 to the right cloud."
            ),
        )
    })
}

/// Decides a token request: the claims to sign, or the refusal.
pub(crate) fn decide(
    fixture: &TenantFixture,
    tenant_segment: &str,
    form: &TokenForm,
    now: SystemTime,
    lifetime: Duration,
) -> Result<AccessTokenClaims, AadstsError> {
    let tenant = resolve_tenant(fixture, tenant_segment)?;
    let missing = |name: &str| {
        AadstsError::new(
            errors::MISSING_PARAMETER,
            format!("The request body must contain the parameter '{name}'."),
        )
    };
    let grant_type = form
        .grant_type
        .as_deref()
        .ok_or_else(|| missing("grant_type"))?;
    if grant_type != "client_credentials" {
        return Err(AadstsError::new(
            errors::UNSUPPORTED_GRANT_TYPE,
            format!("The grant type '{grant_type}' is not supported by this endpoint."),
        ));
    }
    let client_id = form
        .client_id
        .as_deref()
        .ok_or_else(|| missing("client_id"))?;
    let scope = form.scope.as_deref().ok_or_else(|| missing("scope"))?;
    let resource = scope_resource(scope)?;

    let app = tenant.app(client_id).ok_or_else(|| {
        AadstsError::new(
            errors::APP_NOT_FOUND,
            format!(
                "Application with identifier '{client_id}' was not found in the directory \
                 '{tenant_segment}'. It may not be installed in this tenant, or the request was \
                 sent to the wrong tenant."
            ),
        )
    })?;
    if !app.service_principal_exists {
        return Err(AadstsError::new(
            errors::NO_SERVICE_PRINCIPAL,
            format!(
                "The client application {} has no service principal in the tenant {}.",
                app.client_id, tenant.id
            ),
        ));
    }
    check_secret(app, form.client_secret.as_deref(), now)?;
    if !app.enabled {
        return Err(AadstsError::new(
            errors::APP_DISABLED,
            format!(
                "Application '{}'({}) is disabled.",
                app.client_id, app.display_name
            ),
        ));
    }
    let audience = tenant.resource(resource).ok_or_else(|| {
        AadstsError::new(
            errors::RESOURCE_NOT_FOUND,
            format!(
                "The resource principal named {resource} was not found in the tenant named \
                 {tenant_segment}. The resource may not be installed in the tenant, or the \
                 request was sent to the wrong tenant."
            ),
        )
    })?;
    Ok(claims_for(tenant, app, audience, now, lifetime))
}

/// The claims of a token for `app` and `audience` issued at `now`.
pub(crate) fn claims_for(
    tenant: &Tenant,
    app: &AppRegistration,
    audience: &str,
    now: SystemTime,
    lifetime: Duration,
) -> AccessTokenClaims {
    AccessTokenClaims::new(&tenant.id, &app.client_id, &app.service_principal_object_id)
        .app_display_name(&app.display_name)
        .audience(audience)
        .roles(app.roles_for(audience))
        .issued_at(now)
        .lifetime(lifetime)
}

/// The resource of a client-credentials scope, or 70011 / 1002012.
pub(crate) fn scope_resource(scope: &str) -> Result<&str, AadstsError> {
    let malformed = || {
        AadstsError::new(
            errors::SCOPE_MALFORMED,
            format!("The value of the input parameter 'scope' is not valid: '{scope}'."),
        )
    };
    let mut items = scope.split_whitespace();
    let (Some(item), None) = (items.next(), items.next()) else {
        // Several scopes (Entra answers 700022 when they name different resources).
        return Err(malformed());
    };
    if item
        .chars()
        .any(|c| c.is_control() || matches!(c, '"' | '<' | '>' | '\\' | '{' | '}'))
    {
        return Err(malformed());
    }
    match resource_of_scope(item) {
        Some(resource) => Ok(resource),
        None if item == ".default" || item == "/.default" => Err(malformed()),
        None => Err(AadstsError::new(
            errors::SCOPE_NOT_DEFAULT,
            format!(
                "The scope {item} is not valid. Client credential flows need a scope of the \
                 form <resource>/.default."
            ),
        )),
    }
}

/// 7000218 (none), 7000215 (no match) or 7000222 (matches an expired secret).
fn check_secret(
    app: &AppRegistration,
    secret: Option<&str>,
    now: SystemTime,
) -> Result<(), AadstsError> {
    let Some(secret) = secret else {
        return Err(AadstsError::new(
            errors::NO_SECRET,
            "The request body must contain 'client_assertion' or 'client_secret'.",
        ));
    };
    match app.secret_with_value(secret) {
        Some(found) if found.is_expired_at(now) => Err(AadstsError::new(
            errors::EXPIRED_SECRET,
            format!(
                "The client secret keys of app '{}' are expired. Create a new secret for the app, \
                 or use a certificate credential.",
                app.client_id
            ),
        )),
        Some(_) => Ok(()),
        None => Err(AadstsError::new(
            errors::WRONG_SECRET,
            format!(
                "Invalid client secret provided. Send the secret's value, not its ID, of a secret \
                 of app '{}'.",
                app.client_id
            ),
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::tenant::ClientSecret;

    const FORM: Option<&str> = Some("application/x-www-form-urlencoded");

    struct Case {
        fixture: TenantFixture,
        tenant: String,
        form: TokenForm,
    }

    fn good() -> Case {
        let fixture = TenantFixture::everything_right();
        let app = fixture.primary_app().unwrap();
        let form = TokenForm {
            grant_type: Some("client_credentials".into()),
            client_id: Some(app.client_id.clone()),
            client_secret: Some(app.secrets[0].value.expose().to_owned()),
            scope: Some("https://outlook.office365.com/.default".into()),
        };
        let tenant = fixture.primary_tenant().unwrap().id.clone();
        Case {
            fixture,
            tenant,
            form,
        }
    }

    fn code(case: &Case) -> Option<u32> {
        decide(
            &case.fixture,
            &case.tenant,
            &case.form,
            SystemTime::now(),
            Duration::from_secs(3599),
        )
        .err()
        .map(|e| e.row.code)
    }

    #[test]
    fn the_good_request_gets_exchange_claims() {
        let case = good();
        let claims = decide(
            &case.fixture,
            "CORP.EXAMPLE",
            &case.form,
            SystemTime::now(),
            Duration::from_secs(60),
        )
        .unwrap();
        let app = case.fixture.primary_app().unwrap();
        assert_eq!(claims.audience, "https://outlook.office365.com");
        assert_eq!(claims.object_id, app.service_principal_object_id);
        assert_eq!(claims.tenant_id, case.tenant);
        assert_eq!(claims.roles, Some(vec!["IMAP.AccessAsApp".to_owned()]));
        assert_eq!(claims.lifetime, Duration::from_secs(60));
    }

    #[test]
    fn each_mistake_gets_its_code() {
        type Break = fn(&mut Case);
        let table: &[(u32, Break)] = &[
            (90002, |c| {
                c.tenant = "00000000-0000-0000-0000-000000000001".into()
            }),
            (90002, |c| c.tenant = "other.example".into()),
            (900023, |c| c.tenant = "{tenant-id}".into()),
            (900023, |c| c.tenant = "authorize".into()),
            (9001023, |c| c.tenant = "common".into()),
            (900144, |c| c.form.grant_type = None),
            (900144, |c| c.form.client_id = None),
            (900144, |c| c.form.scope = None),
            (70003, |c| c.form.grant_type = Some("password".into())),
            (70011, |c| c.form.scope = Some(".default".into())),
            (70011, |c| {
                c.form.scope = Some(
                    "https://outlook.office365.com/.default https://graph.microsoft.com/.default"
                        .into(),
                )
            }),
            (1002012, |c| {
                c.form.scope = Some("https://outlook.office365.com/IMAP.AccessAsApp".into())
            }),
            (1002012, |c| c.form.scope = Some("openid".into())),
            (700016, |c| {
                c.form.client_id = Some(crate::tenant::new_guid())
            }),
            (7000229, |c| {
                c.fixture
                    .primary_app_mut()
                    .unwrap()
                    .service_principal_exists = false
            }),
            (7000218, |c| c.form.client_secret = None),
            (7000215, |c| c.form.client_secret = Some("wrong".into())),
            (7000215, |c| {
                // The secret's ID pasted instead of its value.
                let id = c.fixture.primary_app().unwrap().secrets[0].id.clone();
                c.form.client_secret = Some(id);
            }),
            (7000222, |c| {
                let expired = ClientSecret::expired();
                c.form.client_secret = Some(expired.value.expose().to_owned());
                c.fixture.primary_app_mut().unwrap().secrets = vec![expired];
            }),
            (7000112, |c| {
                c.fixture.primary_app_mut().unwrap().enabled = false
            }),
            (500011, |c| {
                c.form.scope = Some("https://unknown.example/.default".into())
            }),
        ];
        assert_eq!(code(&good()), None);
        for (expected, breaker) in table {
            let mut case = good();
            breaker(&mut case);
            assert_eq!(code(&case), Some(*expected), "{:?}", case.form);
        }
    }

    #[test]
    fn no_consent_still_issues_a_token_without_roles() {
        let mut case = good();
        case.fixture.primary_app_mut().unwrap().admin_consent = false;
        let claims = decide(
            &case.fixture,
            &case.tenant,
            &case.form,
            SystemTime::now(),
            Duration::from_secs(60),
        )
        .unwrap();
        assert_eq!(claims.roles, None);
    }

    #[test]
    fn form_and_basic_auth_are_read() {
        let body = b"grant_type=client_credentials&client_id=abc&scope=https%3A%2F%2Foutlook.office365.com%2F.default&client_secret=a%2Bb%7Ec";
        let form = TokenForm::parse(body, FORM, None);
        assert_eq!(form.client_secret.as_deref(), Some("a+b~c"));
        assert_eq!(
            form.scope.as_deref(),
            Some("https://outlook.office365.com/.default")
        );

        let basic = STANDARD.encode("my%20id:s%2Bcr%3At~");
        let form = TokenForm::parse(
            b"grant_type=client_credentials",
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            Some(&format!("Basic {basic}")),
        );
        assert_eq!(form.client_id.as_deref(), Some("my id"));
        assert_eq!(form.client_secret.as_deref(), Some("s+cr:t~"));

        let ignored = TokenForm::parse(
            br#"{"grant_type":"client_credentials"}"#,
            Some("application/json"),
            None,
        );
        assert_eq!(ignored, TokenForm::default());
        assert!(!format!("{form:?}").contains("s+cr"));
    }

    #[test]
    fn guids_and_domains_are_told_apart() {
        assert!(is_guid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"));
        assert!(!is_guid("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f"));
        assert!(is_domain_name("corp.example"));
        assert!(!is_domain_name("undefined"));
        assert!(!is_domain_name("-bad.example"));
    }
}
