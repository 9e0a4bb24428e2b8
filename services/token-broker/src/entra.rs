//! The client of Entra ID's v2.0 token endpoint, client-credentials grant [MS-CCG].
//!
//! One `POST {authority}/{tenant}/oauth2/v2.0/token` with the form
//! `grant_type=client_credentials&client_id=…&client_secret=…&scope=…` and nothing else: no
//! retries here (the cache decides when to ask again), a connect and a total timeout, and
//! TLS through rustls with the ring provider, trusting the built-in web roots plus an
//! optional CA file (the test kit's CA in tests; verification is never turned off). Each
//! request carries a fresh `client-request-id`, which Entra echoes as the correlation id.
//! Answers are typed by [`EntraError`]; the secret and the token never reach a log line or an
//! error.

pub mod error;

use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use secrecy::zeroize::Zeroizing;
use secrecy::{ExposeSecret as _, SecretString};
use serde::Deserialize;
use url::Url;

pub use error::{EntraError, EntraErrorKind, RequestContext};

use crate::cache::{AccessToken, Fetched};

/// The largest answer read; Entra's are a few kilobytes.
const MAX_ANSWER: usize = 256 * 1024;

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The CA file is not PEM certificates.
    #[error("failed to read CA certificates from {path}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// reqwest refused the settings.
    #[error("failed to build the HTTP client for Entra ID")]
    Client(#[source] reqwest::Error),
}

/// The client's settings.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    /// Extra CA certificates (PEM) to trust, and where they came from.
    pub extra_ca: Option<(String, Vec<u8>)>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of a whole request.
    pub request_timeout: Duration,
}

/// One token request.
#[derive(Debug, Clone, Copy)]
pub struct TokenRequest<'a> {
    /// `https://host[:port]`.
    pub authority: &'a Url,
    /// Directory (tenant) ID or domain.
    pub tenant: &'a str,
    /// Application (client) ID.
    pub client_id: &'a str,
    /// The client secret (`Debug` redacts it).
    pub secret: &'a SecretString,
    /// `<resource>/.default`.
    pub scope: &'a str,
}

impl TokenRequest<'_> {
    fn context(&self) -> RequestContext<'_> {
        RequestContext {
            tenant: self.tenant,
            client_id: self.client_id,
            scope: self.scope,
        }
    }
}

/// The token endpoint client.
#[derive(Debug, Clone)]
pub struct EntraClient {
    http: reqwest::Client,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Seconds {
    Number(u64),
    Text(String),
}

#[derive(Deserialize)]
struct TokenBody {
    token_type: Option<String>,
    expires_in: Option<Seconds>,
    access_token: Option<String>,
}

/// `{authority}/{tenant}/oauth2/v2.0/token`, the tenant percent-encoded as one segment.
pub fn token_url(authority: &Url, tenant: &str) -> Url {
    let mut url = authority.clone();
    url.set_query(None);
    url.set_fragment(None);
    if let Ok(mut segments) = url.path_segments_mut() {
        segments
            .pop_if_empty()
            .extend([tenant, "oauth2", "v2.0", "token"]);
    }
    url
}

/// The form body, in the order of [MS-CCG]'s example.
pub fn form_body(client_id: &str, secret: &SecretString, scope: &str) -> Zeroizing<String> {
    Zeroizing::new(
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", client_id)
            .append_pair("client_secret", secret.expose_secret())
            .append_pair("scope", scope)
            .finish(),
    )
}

/// `host:port` of an authority, for cache keys.
pub fn authority_host(authority: &Url) -> String {
    match authority.port_or_known_default() {
        Some(port) => format!("{}:{port}", authority.host_str().unwrap_or_default()),
        None => authority.host_str().unwrap_or_default().to_owned(),
    }
}

impl EntraClient {
    /// A client with `settings`.
    pub fn new(settings: &ClientSettings) -> Result<Self, SetupError> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(true)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!(
                "threatmail-token-broker/",
                env!("CARGO_PKG_VERSION")
            ));
        if let Some((path, pem)) = &settings.extra_ca {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|source| {
                SetupError::CaFile {
                    path: path.clone(),
                    source,
                }
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        Ok(EntraClient {
            http: builder.build().map_err(SetupError::Client)?,
        })
    }

    /// Asks for a token.
    pub async fn request_token(&self, request: &TokenRequest<'_>) -> Result<Fetched, EntraError> {
        let context = request.context();
        let url = token_url(request.authority, request.tenant);
        let correlation = uuid::Uuid::new_v4().to_string();
        let body = form_body(request.client_id, request.secret, request.scope);
        let sent = self
            .http
            .post(url)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header("client-request-id", &correlation)
            .body(body.as_str().to_owned())
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(error) => {
                let detail = transport_detail(&error);
                tracing::warn!(
                    tenant = request.tenant,
                    client_id = request.client_id,
                    %correlation,
                    detail,
                    "no answer from the entra token endpoint"
                );
                return Err(EntraError::unreachable(context, detail));
            }
        };
        let status = response.status().as_u16();
        let retry_after = retry_after_secs(response.headers());
        let bytes = read_limited(response)
            .await
            .map_err(|detail| EntraError::unreachable(context, detail))?;
        if status == 200 {
            return parse_token(context, &bytes);
        }
        let error = EntraError::classify(context, status, retry_after, &bytes);
        tracing::info!(
            tenant = request.tenant,
            client_id = request.client_id,
            status,
            code = ?error.code,
            error = ?error.error,
            trace_id = ?error.trace_id,
            %correlation,
            "entra refused a token request"
        );
        Err(error)
    }
}

fn transport_detail(error: &reqwest::Error) -> &'static str {
    if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else {
        "request failed"
    }
}

/// `Retry-After` as delay-seconds (RFC 9110 §10.2.3); an HTTP date is not used.
fn retry_after_secs(headers: &HeaderMap) -> Option<u64> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, &'static str> {
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if bytes.len() + chunk.len() > MAX_ANSWER {
                    return Err("answer too large");
                }
                bytes.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(bytes),
            Err(error) => return Err(transport_detail(&error)),
        }
    }
}

// The error is the broker's one failure type, rare next to successes; boxing it buys nothing.
#[allow(clippy::result_large_err)]
fn parse_token(context: RequestContext<'_>, bytes: &[u8]) -> Result<Fetched, EntraError> {
    let bytes = Zeroizing::new(bytes.to_vec());
    let body: TokenBody = serde_json::from_slice(&bytes)
        .map_err(|_| EntraError::unexpected(context, 200, "a success answer that is not JSON"))?;
    let bearer = body
        .token_type
        .as_deref()
        .is_some_and(|t| t.eq_ignore_ascii_case("bearer"));
    let expires_in = match body.expires_in {
        Some(Seconds::Number(n)) => Some(n),
        Some(Seconds::Text(text)) => text.trim().parse().ok(),
        None => None,
    };
    match (bearer, expires_in, body.access_token) {
        (true, Some(expires_in), Some(token)) if !token.is_empty() => Ok(Fetched {
            token: AccessToken::new(token),
            expires_in: Duration::from_secs(expires_in),
        }),
        _ => Err(EntraError::unexpected(
            context,
            200,
            "a success answer without a bearer token and expires_in",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_form_is_exactly_the_documented_one_br_09() {
        let body = form_body(
            "11111111-2222-3333-4444-555555555555",
            &SecretString::from("abc8Q~x.y_z-w"),
            "https://outlook.office365.com/.default",
        );
        assert_eq!(
            body.as_str(),
            "grant_type=client_credentials&client_id=11111111-2222-3333-4444-555555555555\
             &client_secret=abc8Q%7Ex.y_z-w&scope=https%3A%2F%2Foutlook.office365.com%2F.default"
        );
    }

    #[test]
    fn token_urls_encode_the_tenant_as_one_segment() {
        let authority = Url::parse("https://login.microsoftonline.com").unwrap();
        assert_eq!(
            token_url(&authority, "corp.example").as_str(),
            "https://login.microsoftonline.com/corp.example/oauth2/v2.0/token"
        );
        assert_eq!(
            token_url(&authority, "{tenant-id}/x").as_str(),
            "https://login.microsoftonline.com/%7Btenant-id%7D%2Fx/oauth2/v2.0/token"
        );
        let local = Url::parse("https://localhost:8443/").unwrap();
        assert_eq!(authority_host(&local), "localhost:8443");
        assert_eq!(authority_host(&authority), "login.microsoftonline.com:443");
    }

    #[test]
    fn success_answers_are_read_with_numeric_or_string_lifetimes() {
        let context = RequestContext {
            tenant: "t",
            client_id: "c",
            scope: "s",
        };
        let ok = parse_token(
            context,
            br#"{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ"}"#,
        )
        .unwrap();
        assert_eq!(ok.expires_in, Duration::from_secs(3599));
        assert_eq!(ok.token.expose(), "eyJ");
        let v1 = parse_token(
            context,
            br#"{"token_type":"Bearer","expires_in":"3600","access_token":"x"}"#,
        )
        .unwrap();
        assert_eq!(v1.expires_in, Duration::from_secs(3600));
        for bad in [
            &b"not json"[..],
            br#"{"token_type":"mac","expires_in":1,"access_token":"x"}"#,
            br#"{"token_type":"Bearer","access_token":"x"}"#,
            br#"{"token_type":"Bearer","expires_in":1,"access_token":""}"#,
        ] {
            let error = parse_token(context, bad).unwrap_err();
            assert_eq!(error.kind, EntraErrorKind::Unexpected);
        }
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "30".parse().unwrap());
        assert_eq!(retry_after_secs(&headers), Some(30));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after_secs(&headers), None);
    }
}
