//! The stand-in's error answers: the AADSTS table and Entra's JSON error body.
//!
//! Every refusal is an HTTP status plus a JSON object with `error` (an OAuth 2.0 error code,
//! RFC 6749 §5.2), `error_description` (`AADSTS<code>: <text>` followed by trace id,
//! correlation id and timestamp on `\r\n`-separated lines), `error_codes`, `timestamp`,
//! `trace_id`, `correlation_id` and `error_uri`. The descriptions are the stand-in's own
//! words; clients must map on `error` + code, never on text (Microsoft says the texts
//! change). Sources for each row are in `libs/testkit/ENTRA.md`.

use std::time::SystemTime;

use serde_json::{Value, json};

/// One row of the stand-in's error table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorRow {
    /// The AADSTS code.
    pub code: u32,
    /// The HTTP status.
    pub status: u16,
    /// The OAuth 2.0 `error` value.
    pub error: &'static str,
    /// When the stand-in answers it.
    pub situation: &'static str,
}

/// Unknown tenant GUID or domain.
pub const TENANT_NOT_FOUND: ErrorRow = row(90002, 400, "invalid_tenant", "tenant not found");
/// Tenant segment neither a GUID nor a domain name.
pub const TENANT_MALFORMED: ErrorRow = row(900023, 400, "invalid_request", "tenant malformed");
/// `/common`, `/organizations` or `/consumers` with client credentials.
pub const TENANT_NOT_SPECIFIC: ErrorRow = row(
    9001023,
    400,
    "invalid_request",
    "client credentials on a multi-tenant endpoint",
);
/// A required form field is missing or empty.
pub const MISSING_PARAMETER: ErrorRow = row(
    900144,
    400,
    "invalid_request",
    "grant_type, client_id or scope missing",
);
/// `grant_type` other than `client_credentials`.
pub const UNSUPPORTED_GRANT_TYPE: ErrorRow = row(
    70003,
    400,
    "unsupported_grant_type",
    "grant type not supported",
);
/// Malformed `scope`.
pub const SCOPE_MALFORMED: ErrorRow = row(70011, 400, "invalid_scope", "scope malformed");
/// `scope` not of the form `<resource>/.default`.
pub const SCOPE_NOT_DEFAULT: ErrorRow = row(1002012, 400, "invalid_scope", "scope not /.default");
/// No app with this client id in the tenant.
pub const APP_NOT_FOUND: ErrorRow = row(700016, 400, "unauthorized_client", "unknown client id");
/// The app has no service principal (enterprise application) in the tenant.
pub const NO_SERVICE_PRINCIPAL: ErrorRow = row(
    7000229,
    401,
    "invalid_client",
    "app without service principal",
);
/// Neither `client_secret` nor `client_assertion` sent.
pub const NO_SECRET: ErrorRow = row(7000218, 401, "invalid_client", "no secret");
/// The secret matches none of the app's secrets.
pub const WRONG_SECRET: ErrorRow = row(7000215, 401, "invalid_client", "wrong secret");
/// The secret matches an expired secret.
pub const EXPIRED_SECRET: ErrorRow = row(7000222, 401, "invalid_client", "expired secret");
/// The enterprise application is disabled.
pub const APP_DISABLED: ErrorRow = row(7000112, 400, "unauthorized_client", "app disabled");
/// `<resource>/.default` for a resource without a service principal in the tenant.
pub const RESOURCE_NOT_FOUND: ErrorRow =
    row(500011, 400, "invalid_resource", "resource not in tenant");
/// A method other than POST (or OPTIONS) on the token endpoint.
pub const METHOD_NOT_ALLOWED: ErrorRow =
    row(900561, 400, "invalid_request", "method other than POST");
/// Injected throttling (HTTP 429 with `Retry-After`).
pub const THROTTLED: ErrorRow = row(50196, 429, "temporarily_unavailable", "injected throttling");
/// Injected outage, HTTP 503.
pub const UNAVAILABLE: ErrorRow = row(90006, 503, "temporarily_unavailable", "injected 503");
/// Injected server error, any other 5xx.
pub const SERVER_ERROR: ErrorRow = row(50000, 500, "server_error", "injected 5xx other than 503");

/// Every error the token endpoint can answer, for tests to iterate over.
pub const ERROR_TABLE: &[ErrorRow] = &[
    TENANT_NOT_FOUND,
    TENANT_MALFORMED,
    TENANT_NOT_SPECIFIC,
    MISSING_PARAMETER,
    UNSUPPORTED_GRANT_TYPE,
    SCOPE_MALFORMED,
    SCOPE_NOT_DEFAULT,
    APP_NOT_FOUND,
    NO_SERVICE_PRINCIPAL,
    NO_SECRET,
    WRONG_SECRET,
    EXPIRED_SECRET,
    APP_DISABLED,
    RESOURCE_NOT_FOUND,
    METHOD_NOT_ALLOWED,
    THROTTLED,
    UNAVAILABLE,
    SERVER_ERROR,
];

const fn row(code: u32, status: u16, error: &'static str, situation: &'static str) -> ErrorRow {
    ErrorRow {
        code,
        status,
        error,
        situation,
    }
}

/// A refusal about to be sent: a table row and its description text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AadstsError {
    /// Code, status and `error`.
    pub row: ErrorRow,
    /// The text after `AADSTS<code>: `.
    pub text: String,
}

impl AadstsError {
    /// A refusal of kind `row` saying `text`.
    pub fn new(row: ErrorRow, text: impl Into<String>) -> Self {
        AadstsError {
            row,
            text: text.into(),
        }
    }

    /// Entra's JSON error body.
    pub fn body(&self, trace_id: &str, correlation_id: &str, now: SystemTime) -> Value {
        let timestamp = entra_timestamp(now);
        let code = self.row.code;
        json!({
            "error": self.row.error,
            "error_description": format!(
                "AADSTS{code}: {}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {timestamp}",
                self.text
            ),
            "error_codes": [code],
            "timestamp": timestamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}"),
        })
    }
}

/// Entra's timestamp format, `YYYY-MM-DD HH:MM:SSZ` (UTC).
pub fn entra_timestamp(now: SystemTime) -> String {
    humantime::format_rfc3339_seconds(now)
        .to_string()
        .replacen('T', " ", 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    #[test]
    fn body_has_every_field_in_entra_shape() {
        let at = UNIX_EPOCH + Duration::from_secs(1_767_225_600); // 2026-01-01 00:00:00Z
        let body = AadstsError::new(WRONG_SECRET, "nope.").body("t-1", "c-1", at);
        assert_eq!(body["error"], "invalid_client");
        assert_eq!(
            body["error_description"],
            "AADSTS7000215: nope.\r\nTrace ID: t-1\r\nCorrelation ID: c-1\r\nTimestamp: 2026-01-01 00:00:00Z"
        );
        assert_eq!(body["error_codes"], json!([7000215]));
        assert_eq!(body["timestamp"], "2026-01-01 00:00:00Z");
        assert_eq!(body["trace_id"], "t-1");
        assert_eq!(body["correlation_id"], "c-1");
        assert_eq!(
            body["error_uri"],
            "https://login.microsoftonline.com/error?code=7000215"
        );
        assert_eq!(body.as_object().unwrap().len(), 7);
    }

    #[test]
    fn table_codes_are_unique_and_statuses_match_error_values() {
        let codes: HashSet<u32> = ERROR_TABLE.iter().map(|r| r.code).collect();
        assert_eq!(codes.len(), ERROR_TABLE.len());
        for row in ERROR_TABLE {
            // RFC 6749 §5.2: 400 except invalid_client (401); throttling/outages are 429/5xx.
            let expected = match row.error {
                "invalid_client" => 401,
                "temporarily_unavailable" if row.status == 429 => 429,
                "temporarily_unavailable" => 503,
                "server_error" => 500,
                _ => 400,
            };
            assert_eq!(row.status, expected, "{row:?}");
        }
    }
}
