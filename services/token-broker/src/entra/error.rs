//! Entra's refusals, typed by the OAuth `error` value and the AADSTS code, never by the
//! description's wording (Microsoft says the texts change), each with the gRPC status, the
//! machine-readable reason and the one line naming the setup step to recheck.
//!
//! The codes are those of DESIGN §3 and the test kit's stand-in table (ENTRA.md); steps are
//! the administrator's steps of DESIGN §1 (1 register the app, 2 IMAP.AccessAsApp + admin
//! consent, 3 client secret, 4 enterprise application, 5 Exchange service principal and
//! FullAccess, 6 IMAP enabled).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cache::policy::{FetchFailure, Retry};

/// What went wrong, as far as the broker can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntraErrorKind {
    /// AADSTS90002: no such tenant GUID or domain.
    TenantNotFound,
    /// AADSTS900023: the tenant is neither a GUID nor a domain name.
    TenantMalformed,
    /// AADSTS9001023: `common`/`organizations`/`consumers` with client credentials.
    TenantNotSpecific,
    /// AADSTS700016 / 700011: no app with this client id in the tenant.
    AppNotFound,
    /// AADSTS7000229: the app has no service principal in the tenant.
    NoServicePrincipal,
    /// AADSTS7000215: wrong secret (often the secret's ID pasted instead of its value).
    SecretWrong,
    /// AADSTS7000222: the secret has expired.
    SecretExpired,
    /// AADSTS7000218: no secret sent.
    SecretMissing,
    /// AADSTS1002012: a scope that is not `<resource>/.default` (BR-09).
    ScopeNotDefault,
    /// AADSTS70011 / 700022: a malformed scope.
    ScopeInvalid,
    /// AADSTS500011: the scope's resource is not in the tenant.
    ResourceNotInTenant,
    /// AADSTS7000112: the app (enterprise application) is disabled.
    AppDisabled,
    /// AADSTS53003: blocked by Conditional Access.
    ConditionalAccess,
    /// HTTP 429 or AADSTS50196: too many requests.
    Throttled,
    /// 5xx or `temporarily_unavailable`/`server_error`.
    Unavailable,
    /// No answer: connection refused or reset, TLS failure, timeout.
    Unreachable,
    /// AADSTS70003 / 900144 / 900561: Entra calls the request malformed (a bug of ours).
    MalformedRequest,
    /// A refusal this table does not know, or an answer that is not Entra's format.
    Unexpected,
}

/// How many seconds a `Retry-After` may ask for before it is treated as a day at most.
const MAX_RETRY_AFTER: u64 = 24 * 3600;

/// One failed token request, with the context needed to explain it. Holds no secret and no
/// token; it is shared between replicas in the failure record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntraError {
    /// What went wrong.
    pub kind: EntraErrorKind,
    /// The HTTP status, if an answer came.
    pub http_status: Option<u16>,
    /// The OAuth `error` value.
    pub error: Option<String>,
    /// The first AADSTS code.
    pub code: Option<u32>,
    /// `Retry-After` in seconds.
    pub retry_after_secs: Option<u64>,
    /// Entra's trace id, for Microsoft support.
    pub trace_id: Option<String>,
    /// Entra's correlation id (ours, echoed).
    pub correlation_id: Option<String>,
    /// The tenant asked for.
    pub tenant: String,
    /// The client id sent.
    pub client_id: String,
    /// The scope sent.
    pub scope: String,
    /// For [`EntraErrorKind::Unreachable`]: what failed ("timed out", "connection failed").
    pub detail: Option<String>,
}

/// The error body of Entra's token endpoint (RFC 6749 §5.2 plus Entra's fields).
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    error: Option<String>,
    #[serde(default)]
    error_codes: Vec<u32>,
    trace_id: Option<String>,
    correlation_id: Option<String>,
}

/// The context of a request: what was asked, for the diagnosis.
#[derive(Debug, Clone, Copy)]
pub struct RequestContext<'a> {
    /// The tenant in the URL.
    pub tenant: &'a str,
    /// The client id sent.
    pub client_id: &'a str,
    /// The scope sent.
    pub scope: &'a str,
}

impl EntraError {
    fn bare(kind: EntraErrorKind, context: RequestContext<'_>) -> Self {
        EntraError {
            kind,
            http_status: None,
            error: None,
            code: None,
            retry_after_secs: None,
            trace_id: None,
            correlation_id: None,
            tenant: context.tenant.to_owned(),
            client_id: context.client_id.to_owned(),
            scope: context.scope.to_owned(),
            detail: None,
        }
    }

    /// No answer came (`detail` says what failed).
    pub fn unreachable(context: RequestContext<'_>, detail: &str) -> Self {
        EntraError {
            detail: Some(detail.to_owned()),
            ..Self::bare(EntraErrorKind::Unreachable, context)
        }
    }

    /// An answer that is neither a token nor an error in Entra's format.
    pub fn unexpected(context: RequestContext<'_>, status: u16, detail: &str) -> Self {
        EntraError {
            http_status: Some(status),
            detail: Some(detail.to_owned()),
            ..Self::bare(EntraErrorKind::Unexpected, context)
        }
    }

    /// Types a refusal from its status, `Retry-After` (seconds) and body.
    pub fn classify(
        context: RequestContext<'_>,
        status: u16,
        retry_after_secs: Option<u64>,
        body: &[u8],
    ) -> Self {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let body = parsed.unwrap_or_default();
        let code = body.error_codes.first().copied();
        let kind = kind_of(status, body.error.as_deref(), code);
        EntraError {
            kind,
            http_status: Some(status),
            error: body.error,
            code,
            retry_after_secs: retry_after_secs.map(|s| s.min(MAX_RETRY_AFTER)),
            trace_id: body.trace_id,
            correlation_id: body.correlation_id,
            ..Self::bare(kind, context)
        }
    }

    /// `AADSTS<code>`, else `HTTP <status>`, else the detail.
    pub fn upstream_code(&self) -> String {
        match (self.code, self.http_status, &self.detail) {
            (Some(code), _, _) => format!("AADSTS{code}"),
            (None, Some(status), _) => format!("HTTP {status}"),
            (None, None, Some(detail)) => detail.clone(),
            (None, None, None) => String::new(),
        }
    }

    /// Whether it is about the credentials or the tenant's setup (the user's to fix) rather
    /// than about reaching Entra or a bug.
    pub fn is_setup_problem(&self) -> bool {
        !matches!(
            self.kind,
            EntraErrorKind::Throttled
                | EntraErrorKind::Unavailable
                | EntraErrorKind::Unreachable
                | EntraErrorKind::MalformedRequest
                | EntraErrorKind::Unexpected
        )
    }

    /// The machine-readable reason, e.g. `entra.secret_wrong`.
    pub fn reason(&self) -> &'static str {
        use EntraErrorKind as K;
        match self.kind {
            K::TenantNotFound => "entra.tenant_not_found",
            K::TenantMalformed => "entra.tenant_malformed",
            K::TenantNotSpecific => "entra.tenant_not_specific",
            K::AppNotFound => "entra.app_not_found",
            K::NoServicePrincipal => "entra.no_service_principal",
            K::SecretWrong => "entra.secret_wrong",
            K::SecretExpired => "entra.secret_expired",
            K::SecretMissing => "entra.secret_missing",
            K::ScopeNotDefault => "entra.scope_not_default",
            K::ScopeInvalid => "entra.scope_invalid",
            K::ResourceNotInTenant => "entra.resource_not_in_tenant",
            K::AppDisabled => "entra.app_disabled",
            K::ConditionalAccess => "entra.conditional_access",
            K::Throttled => "entra.throttled",
            K::Unavailable => "entra.unavailable",
            K::Unreachable => "entra.unreachable",
            K::MalformedRequest => "entra.malformed_request",
            K::Unexpected => "entra.unexpected",
        }
    }

    /// The gRPC status code a caller gets.
    pub fn grpc_code(&self) -> tonic::Code {
        use EntraErrorKind as K;
        match self.kind {
            K::Throttled | K::Unavailable | K::Unreachable => tonic::Code::Unavailable,
            K::MalformedRequest => tonic::Code::Internal,
            K::Unexpected => tonic::Code::Unknown,
            _ => tonic::Code::FailedPrecondition,
        }
    }

    /// The source field or setting to look at.
    pub fn field(&self) -> &'static str {
        use EntraErrorKind as K;
        match self.kind {
            K::TenantNotFound | K::TenantMalformed | K::TenantNotSpecific => "tenant_id",
            K::AppNotFound | K::NoServicePrincipal | K::AppDisabled | K::ConditionalAccess => {
                "app_id"
            }
            K::SecretWrong | K::SecretExpired | K::SecretMissing => "secret_key",
            K::ScopeNotDefault | K::ScopeInvalid => "scope",
            K::ResourceNotInTenant => "cloud",
            K::Throttled
            | K::Unavailable
            | K::Unreachable
            | K::MalformedRequest
            | K::Unexpected => "",
        }
    }

    /// One line a person can act on, naming the setup step to recheck.
    pub fn diagnosis(&self) -> String {
        use EntraErrorKind as K;
        let tenant = &self.tenant;
        let client = &self.client_id;
        let scope = &self.scope;
        match self.kind {
            K::TenantNotFound => format!(
                "Entra ID has no tenant {tenant:?}: recheck the Directory (tenant) ID on the app \
                 registration's Overview page (setup step 1) and the source's cloud"
            ),
            K::TenantMalformed => format!(
                "the tenant ID {tenant:?} is neither a GUID nor a domain name: copy the Directory \
                 (tenant) ID from the app registration's Overview page (setup step 1)"
            ),
            K::TenantNotSpecific => format!(
                "{tenant:?} cannot be used for app-only access: enter the Directory (tenant) ID \
                 from the app registration's Overview page (setup step 1)"
            ),
            K::AppNotFound => format!(
                "tenant {tenant} has no app with Application (client) ID {client}: copy the \
                 Application (client) ID from the app registration's Overview page and check \
                 the tenant ID (setup step 1)"
            ),
            K::NoServicePrincipal => format!(
                "app {client} has no enterprise application (service principal) in tenant \
                 {tenant}: grant admin consent for IMAP.AccessAsApp, which creates it (setup \
                 steps 2 and 4), or check the tenant ID"
            ),
            K::SecretWrong => "Entra ID rejected the client secret: enter the secret's Value, \
                 not its Secret ID, from the app's Certificates & secrets page (setup step 3)"
                .to_owned(),
            K::SecretExpired => "the client secret has expired: create a new client secret on \
                 the app's Certificates & secrets page and enter its value (setup step 3)"
                .to_owned(),
            K::SecretMissing => "no client secret was sent: enter the client secret's value \
                 (setup step 3)"
                .to_owned(),
            K::ScopeNotDefault | K::ScopeInvalid => format!(
                "Entra ID refused the scope {scope}: client credentials need an Exchange Online \
                 /.default scope such as https://outlook.office365.com/.default; fix the \
                 broker's scope setting (a configuration error, no setup step)"
            ),
            K::ResourceNotInTenant => format!(
                "tenant {tenant} has no Office 365 Exchange Online for scope {scope}: check the \
                 source's cloud and that the tenant has Exchange Online (setup step 2)"
            ),
            K::AppDisabled => format!(
                "the enterprise application of app {client} is disabled: set \"Enabled for users \
                 to sign in\" to Yes in its Properties (setup step 4)"
            ),
            K::ConditionalAccess => format!(
                "a Conditional Access policy blocked app {client}: ask the tenant's admin to \
                 exclude its service principal from the policy (setup step 4)"
            ),
            K::Throttled => match self.retry_after_secs {
                Some(secs) => format!(
                    "Entra ID is throttling token requests; the broker asks again after {secs} s"
                ),
                None => "Entra ID is throttling token requests; the broker backs off".to_owned(),
            },
            K::Unavailable => format!(
                "Entra ID is unavailable ({}); the broker retries with back-off",
                self.upstream_code()
            ),
            K::Unreachable => format!(
                "the broker could not reach Entra ID ({}); check its network, the authority \
                 setting and the CA file",
                self.detail.as_deref().unwrap_or("no answer")
            ),
            K::MalformedRequest => format!(
                "Entra ID called the broker's token request malformed ({}): a threatmail bug, \
                 not a setup problem; please report it",
                self.upstream_code()
            ),
            K::Unexpected => match self.code {
                Some(code) => format!(
                    "Entra ID refused the token request with {} AADSTS{code}, which threatmail \
                     does not know: see https://login.microsoftonline.com/error?code={code}",
                    self.error.as_deref().unwrap_or("an error")
                ),
                None => format!(
                    "Entra ID gave an answer threatmail cannot read ({}): check the authority \
                     setting",
                    self.upstream_code()
                ),
            },
        }
    }
}

fn kind_of(status: u16, error: Option<&str>, code: Option<u32>) -> EntraErrorKind {
    use EntraErrorKind as K;
    if let Some(kind) = code.and_then(kind_of_code) {
        return kind;
    }
    match (status, error) {
        (429, _) => K::Throttled,
        (500..=599, _) | (_, Some("temporarily_unavailable" | "server_error")) => K::Unavailable,
        (_, Some("invalid_tenant")) => K::TenantNotFound,
        (_, Some("unsupported_grant_type")) => K::MalformedRequest,
        (_, Some("invalid_scope")) => K::ScopeInvalid,
        _ => K::Unexpected,
    }
}

fn kind_of_code(code: u32) -> Option<EntraErrorKind> {
    use EntraErrorKind as K;
    Some(match code {
        90002 => K::TenantNotFound,
        900023 => K::TenantMalformed,
        9001023 => K::TenantNotSpecific,
        700016 | 700011 => K::AppNotFound,
        7000229 => K::NoServicePrincipal,
        7000215 => K::SecretWrong,
        7000222 => K::SecretExpired,
        7000218 => K::SecretMissing,
        1002012 => K::ScopeNotDefault,
        70011 | 700022 => K::ScopeInvalid,
        500011 => K::ResourceNotInTenant,
        7000112 => K::AppDisabled,
        53003 => K::ConditionalAccess,
        50196 => K::Throttled,
        70003 | 900144 | 900561 => K::MalformedRequest,
        _ => return None,
    })
}

impl FetchFailure for EntraError {
    fn retry(&self) -> Retry {
        match self.kind {
            EntraErrorKind::Throttled
            | EntraErrorKind::Unavailable
            | EntraErrorKind::Unreachable => Retry::Transient {
                after: self.retry_after_secs.map(Duration::from_secs),
            },
            _ => Retry::Permanent,
        }
    }
}

impl fmt::Display for EntraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.diagnosis(), self.upstream_code())
    }
}

impl std::error::Error for EntraError {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    const CONTEXT: RequestContext<'static> = RequestContext {
        tenant: "corp.example",
        client_id: "11111111-2222-3333-4444-555555555555",
        scope: "https://outlook.office365.com/.default",
    };

    fn body(error: &str, code: u32) -> Vec<u8> {
        json!({
            "error": error,
            "error_description": format!("AADSTS{code}: words that must not matter"),
            "error_codes": [code],
            "trace_id": "t", "correlation_id": "c",
        })
        .to_string()
        .into_bytes()
    }

    #[test]
    fn every_design_code_has_its_kind_status_reason_and_step() {
        use EntraErrorKind as K;
        use tonic::Code as C;
        // (status, error, code, kind, grpc, permanent, words of the diagnosis)
        let table: &[(u16, &str, u32, K, C, bool, &str)] = &[
            (
                400,
                "invalid_tenant",
                90002,
                K::TenantNotFound,
                C::FailedPrecondition,
                true,
                "step 1",
            ),
            (
                400,
                "invalid_request",
                900023,
                K::TenantMalformed,
                C::FailedPrecondition,
                true,
                "step 1",
            ),
            (
                400,
                "invalid_request",
                9001023,
                K::TenantNotSpecific,
                C::FailedPrecondition,
                true,
                "step 1",
            ),
            (
                400,
                "unauthorized_client",
                700016,
                K::AppNotFound,
                C::FailedPrecondition,
                true,
                "step 1",
            ),
            (
                400,
                "invalid_client",
                700011,
                K::AppNotFound,
                C::FailedPrecondition,
                true,
                "Application (client) ID",
            ),
            (
                401,
                "invalid_client",
                7000229,
                K::NoServicePrincipal,
                C::FailedPrecondition,
                true,
                "steps 2 and 4",
            ),
            (
                401,
                "invalid_client",
                7000215,
                K::SecretWrong,
                C::FailedPrecondition,
                true,
                "not its Secret ID",
            ),
            (
                401,
                "invalid_client",
                7000222,
                K::SecretExpired,
                C::FailedPrecondition,
                true,
                "expired",
            ),
            (
                401,
                "invalid_client",
                7000218,
                K::SecretMissing,
                C::FailedPrecondition,
                true,
                "step 3",
            ),
            (
                400,
                "invalid_scope",
                1002012,
                K::ScopeNotDefault,
                C::FailedPrecondition,
                true,
                "https://outlook.office365.com/.default",
            ),
            (
                400,
                "invalid_scope",
                70011,
                K::ScopeInvalid,
                C::FailedPrecondition,
                true,
                "scope",
            ),
            (
                400,
                "invalid_resource",
                500011,
                K::ResourceNotInTenant,
                C::FailedPrecondition,
                true,
                "step 2",
            ),
            (
                400,
                "unauthorized_client",
                7000112,
                K::AppDisabled,
                C::FailedPrecondition,
                true,
                "step 4",
            ),
            (
                400,
                "invalid_grant",
                53003,
                K::ConditionalAccess,
                C::FailedPrecondition,
                true,
                "Conditional Access",
            ),
            (
                429,
                "temporarily_unavailable",
                50196,
                K::Throttled,
                C::Unavailable,
                false,
                "throttling",
            ),
            (
                400,
                "unsupported_grant_type",
                70003,
                K::MalformedRequest,
                C::Internal,
                true,
                "bug",
            ),
            (
                400,
                "invalid_request",
                900144,
                K::MalformedRequest,
                C::Internal,
                true,
                "bug",
            ),
            (
                503,
                "temporarily_unavailable",
                90006,
                K::Unavailable,
                C::Unavailable,
                false,
                "unavailable",
            ),
            (
                500,
                "server_error",
                50000,
                K::Unavailable,
                C::Unavailable,
                false,
                "unavailable",
            ),
            (
                400,
                "invalid_request",
                4242,
                K::Unexpected,
                C::Unknown,
                true,
                "error?code=4242",
            ),
        ];
        for (status, error, code, kind, grpc, permanent, words) in table {
            let typed = EntraError::classify(CONTEXT, *status, None, &body(error, *code));
            assert_eq!(typed.kind, *kind, "AADSTS{code}");
            assert_eq!(typed.grpc_code(), *grpc, "AADSTS{code}");
            assert_eq!(typed.code, Some(*code));
            assert_eq!(typed.upstream_code(), format!("AADSTS{code}"));
            assert_eq!(
                typed.retry() == Retry::Permanent,
                *permanent,
                "AADSTS{code}"
            );
            assert!(typed.reason().starts_with("entra."));
            let diagnosis = typed.diagnosis();
            assert!(diagnosis.contains(words), "AADSTS{code}: {diagnosis}");
            assert!(!diagnosis.contains("must not matter"));
            assert!(!diagnosis.contains('\n'));
        }
    }

    #[test]
    fn the_code_wins_over_the_error_value_and_texts_never_matter() {
        // The same code under an older `error` value (Entra changed 90002's over time).
        let old = EntraError::classify(CONTEXT, 400, None, &body("invalid_request", 90002));
        assert_eq!(old.kind, EntraErrorKind::TenantNotFound);
        // Without a code, the error value and status decide.
        let cases: &[(u16, &[u8], EntraErrorKind)] = &[
            (429, b"Too Many Requests", EntraErrorKind::Throttled),
            (
                502,
                b"<html>bad gateway</html>",
                EntraErrorKind::Unavailable,
            ),
            (
                400,
                br#"{"error":"invalid_tenant"}"#,
                EntraErrorKind::TenantNotFound,
            ),
            (
                400,
                br#"{"error":"temporarily_unavailable"}"#,
                EntraErrorKind::Unavailable,
            ),
            (404, b"<html>404</html>", EntraErrorKind::Unexpected),
        ];
        for (status, body, kind) in cases {
            assert_eq!(
                EntraError::classify(CONTEXT, *status, Some(7), body).kind,
                *kind
            );
        }
        let throttled = EntraError::classify(CONTEXT, 429, Some(30), b"");
        assert_eq!(
            throttled.retry(),
            Retry::Transient {
                after: Some(Duration::from_secs(30))
            }
        );
        assert!(throttled.diagnosis().contains("after 30 s"));
        let huge = EntraError::classify(CONTEXT, 429, Some(u64::MAX), b"");
        assert_eq!(huge.retry_after_secs, Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn the_scope_diagnosis_names_the_scope_br_09() {
        let context = RequestContext {
            scope: "https://outlook.office365.com/IMAP.AccessAsApp",
            ..CONTEXT
        };
        let typed = EntraError::classify(context, 400, None, &body("invalid_scope", 1002012));
        assert_eq!(typed.retry(), Retry::Permanent);
        assert!(
            typed
                .diagnosis()
                .contains("https://outlook.office365.com/IMAP.AccessAsApp")
        );
        assert_eq!(typed.field(), "scope");
    }
}
