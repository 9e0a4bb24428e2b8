//! An HTTPS stand-in for Entra ID's v2.0 token endpoint (client-credentials grant).
//!
//! [`EntraStandIn`] serves `POST /{tenant}/oauth2/v2.0/token` on a loopback port with a
//! certificate of the test CA, following Microsoft's documented wire format: a form-encoded
//! request (client secret in the body or by HTTP Basic), a JSON token response, and JSON
//! error bodies with AADSTS codes (see [`errors::ERROR_TABLE`] and `libs/testkit/ENTRA.md`).
//! It decides from a shared [`TenantHandle`], so tests break one setup step at a time, and
//! signs RS256 tokens the test Dovecot checks. [`EntraControls`] injects throttling, outages,
//! delays and dropped connections and counts requests. It never logs secrets or tokens.

pub mod controls;
pub mod errors;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue, PRAGMA, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

pub use controls::{DEFAULT_TOKEN_LIFETIME, EntraControls, Fault, ThrottleBody};
pub use errors::{AadstsError, ERROR_TABLE, ErrorRow};

use crate::ca::TestCa;
use crate::jwt::{AccessTokenClaims, SigningKey};
use crate::tenant::{OAuthSettings, SigningKeyFile, TenantHandle};

/// Largest request body read; Entra's forms are far smaller.
const MAX_BODY: usize = 64 * 1024;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The running stand-in; stopped when dropped.
pub struct EntraStandIn {
    addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
    accept_task: JoinHandle<()>,
}

impl std::fmt::Debug for EntraStandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EntraStandIn")
            .field("addr", &self.addr)
            .field("kid", &self.shared.key.kid())
            .finish_non_exhaustive()
    }
}

/// What every connection task needs.
struct Shared {
    tenant: TenantHandle,
    controls: EntraControls,
    key: SigningKey,
}

/// The service returned this to make hyper close the connection without an answer.
#[derive(Debug, thiserror::Error)]
#[error("connection dropped by an injected fault")]
struct DroppedByFault;

impl EntraStandIn {
    /// Starts the stand-in on a free 127.0.0.1 port with a fresh RS256 signing key and a
    /// server certificate of `ca` (valid for `localhost`).
    pub async fn start(ca: &TestCa, tenant: TenantHandle) -> anyhow::Result<EntraStandIn> {
        let key = tokio::task::spawn_blocking(SigningKey::generate_random_kid)
            .await
            .context("the key generation task failed")??;
        let acceptor = TlsAcceptor::from(ca.server_config()?);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("failed to bind the Entra stand-in to 127.0.0.1")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            tenant,
            controls: EntraControls::default(),
            key,
        });
        let cancel = CancellationToken::new();
        let accept_task = tokio::spawn(accept_loop(
            listener,
            acceptor,
            Arc::clone(&shared),
            cancel.clone(),
        ));
        tracing::info!(%addr, kid = shared.key.kid(), "entra stand-in listening");
        Ok(EntraStandIn {
            addr,
            shared,
            cancel,
            accept_task,
        })
    }

    /// The socket address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The authority to configure in clients, `https://localhost:PORT` (the certificate
    /// names `localhost`).
    pub fn authority(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// The token endpoint of `tenant` (GUID or domain), `<authority>/<tenant>/oauth2/v2.0/token`.
    pub fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.authority())
    }

    /// The key tokens are signed with.
    pub fn signing_key(&self) -> &SigningKey {
        &self.shared.key
    }

    /// The public keys for the test Dovecot.
    pub fn signing_key_files(&self) -> Vec<SigningKeyFile> {
        vec![self.shared.key.key_file()]
    }

    /// The tenant fixture it answers from.
    pub fn tenant(&self) -> &TenantHandle {
        &self.shared.tenant
    }

    /// The fixture's [`OAuthSettings`] with this stand-in's public keys, for Dovecot.
    pub fn oauth_settings(&self) -> OAuthSettings {
        self.shared.tenant.oauth_settings(self.signing_key_files())
    }

    /// Lifetime, delay, fault and counter controls (cloneable, shared with the server).
    pub fn controls(&self) -> &EntraControls {
        &self.shared.controls
    }

    /// Token-endpoint requests seen for `tenant` (as in the URL) and `client_id`.
    pub fn request_count(&self, tenant: &str, client_id: &str) -> u64 {
        self.shared.controls.request_count(tenant, client_id)
    }

    /// All token-endpoint requests seen.
    pub fn total_requests(&self) -> u64 {
        self.shared.controls.total_requests()
    }

    /// The claims the stand-in would put in a token for this app and scope now (the secret
    /// is not checked), for tests that mint tokens directly: change them (already expired,
    /// other audience, no roles) and sign with [`EntraStandIn::issue_token`] or another key.
    pub fn token_claims(
        &self,
        tenant: &str,
        client_id: &str,
        scope: &str,
    ) -> anyhow::Result<AccessTokenClaims> {
        let lifetime = self.shared.controls.token_lifetime();
        self.shared.tenant.read(|fixture| {
            let tenant = token::resolve_tenant(fixture, tenant).map_err(describe)?;
            let app = tenant
                .app(client_id)
                .with_context(|| format!("no app {client_id} in tenant {}", tenant.id))?;
            let resource = token::scope_resource(scope).map_err(describe)?;
            Ok(token::claims_for(
                tenant,
                app,
                resource,
                SystemTime::now(),
                lifetime,
            ))
        })
    }

    /// Signs `claims` with the stand-in's key.
    pub fn issue_token(&self, claims: &AccessTokenClaims) -> String {
        self.shared.key.sign(&claims.to_json())
    }
}

fn describe(e: AadstsError) -> anyhow::Error {
    anyhow::anyhow!("AADSTS{}: {}", e.row.code, e.text)
}

impl Drop for EntraStandIn {
    fn drop(&mut self) {
        // Connection tasks watch the token; the accept loop is aborted outright.
        self.cancel.cancel();
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "entra stand-in accept failed");
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let shared = Arc::clone(&shared);
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = cancel.cancelled() => {}
                () = serve_connection(tcp, peer, acceptor, shared, cancel.clone()) => {}
            }
        });
    }
}

async fn serve_connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    cancel: CancellationToken,
) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, "entra stand-in tls handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "entra stand-in tls handshake timed out");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req| {
        let shared = Arc::clone(&shared);
        let cancel = cancel.clone();
        async move { handle(req, &shared, &cancel).await }
    });
    if let Err(error) = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!(%peer, %error, "entra stand-in connection ended");
    }
}

type Answer = Response<Full<Bytes>>;

/// Routes one request.
async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    cancel: &CancellationToken,
) -> Result<Answer, DroppedByFault> {
    let Some(tenant_segment) = token_path_tenant(req.uri().path()) else {
        // Entra answers unknown paths with an HTML 404 page.
        return Ok(html(
            StatusCode::NOT_FOUND,
            "<html><body>404 Not Found</body></html>",
        ));
    };
    let ids = RequestIds::new(&req);
    match *req.method() {
        Method::POST => {}
        Method::OPTIONS => return Ok(with_ids(empty(StatusCode::OK), &ids)),
        ref method => {
            let error = AadstsError::new(
                errors::METHOD_NOT_ALLOWED,
                format!(
                    "The endpoint only accepts POST, OPTIONS requests. Received a {method} request."
                ),
            );
            return Ok(error_answer(&error, &ids));
        }
    }
    let content_type = header_str(&req, CONTENT_TYPE.as_str());
    let authorization = header_str(&req, "authorization");
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => {
            tracing::debug!(%error, "entra stand-in could not read a request body");
            Bytes::new()
        }
    };
    let form = token::TokenForm::parse(&body, content_type.as_deref(), authorization.as_deref());
    let client_id = form.client_id.clone().unwrap_or_default();

    let (delay, fault) = shared.controls.on_request(&tenant_segment, &client_id);
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return Err(DroppedByFault),
        }
    }
    if let Some(fault) = fault {
        tracing::info!(tenant = %tenant_segment, %client_id, ?fault, "entra stand-in injecting a fault");
        return fault_answer(fault, &ids);
    }

    let now = SystemTime::now();
    let lifetime = shared.controls.token_lifetime();
    let decision = shared
        .tenant
        .read(|fixture| token::decide(fixture, &tenant_segment, &form, now, lifetime));
    match decision {
        Ok(claims) => {
            tracing::info!(
                tenant = %tenant_segment,
                %client_id,
                aud = %claims.audience,
                roles = claims.roles.is_some(),
                "entra stand-in issued a token"
            );
            let token = shared.key.sign(&claims.to_json());
            let secs = lifetime.as_secs();
            let body = json!({
                "token_type": "Bearer",
                "expires_in": secs,
                "ext_expires_in": secs,
                "access_token": token,
            });
            Ok(with_ids(json_answer(StatusCode::OK, &body), &ids))
        }
        Err(error) => {
            tracing::info!(
                tenant = %tenant_segment,
                %client_id,
                code = error.row.code,
                error = error.row.error,
                "entra stand-in refused a token request"
            );
            Ok(error_answer(&error, &ids))
        }
    }
}

/// The tenant of `/{tenant}/oauth2/v2.0/token`, percent-decoded.
fn token_path_tenant(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let (segment, tail) = rest.split_once('/')?;
    if tail != "oauth2/v2.0/token" || segment.is_empty() {
        return None;
    }
    // Form decoding also turns '+' into a space; either way such a tenant is malformed.
    form_urlencoded::parse(format!("t={segment}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
}

/// The trace id of this answer and the correlation id (the client's `client-request-id`
/// when it sent a GUID, as Entra does).
struct RequestIds {
    trace_id: String,
    correlation_id: String,
    client_request_id: Option<String>,
}

impl RequestIds {
    fn new(req: &Request<Incoming>) -> Self {
        let client_request_id =
            header_str(req, "client-request-id").filter(|id| token::is_guid(id));
        RequestIds {
            trace_id: crate::tenant::new_guid(),
            correlation_id: client_request_id
                .clone()
                .unwrap_or_else(crate::tenant::new_guid),
            client_request_id,
        }
    }
}

fn header_str(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn fault_answer(fault: Fault, ids: &RequestIds) -> Result<Answer, DroppedByFault> {
    match fault {
        Fault::DropConnection => Err(DroppedByFault),
        Fault::Throttle {
            retry_after_secs,
            body,
        } => {
            let mut answer = match body {
                ThrottleBody::Json => error_answer(
                    &AadstsError::new(
                        errors::THROTTLED,
                        "The request was throttled: the client sent too many of the same request \
                         in a short time. Cache tokens and handle errors without retrying in a loop.",
                    ),
                    ids,
                ),
                ThrottleBody::PlainText => {
                    let mut answer =
                        Response::new(Full::new(Bytes::from_static(b"Too Many Requests")));
                    *answer.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    answer.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    with_ids(answer, ids)
                }
            };
            answer
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            Ok(answer)
        }
        Fault::ServerError {
            status,
            retry_after_secs,
        } => {
            let (row, text) = if status == 503 {
                (
                    errors::UNAVAILABLE,
                    "The service is temporarily unavailable. Try again later.",
                )
            } else {
                (
                    errors::SERVER_ERROR,
                    "The service failed to issue a token. Try again later.",
                )
            };
            let mut answer = error_answer(&AadstsError::new(row, text), ids);
            *answer.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            if let Some(secs) = retry_after_secs {
                answer
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            Ok(answer)
        }
    }
}

fn error_answer(error: &AadstsError, ids: &RequestIds) -> Answer {
    let body = error.body(&ids.trace_id, &ids.correlation_id, SystemTime::now());
    let status = StatusCode::from_u16(error.row.status).unwrap_or(StatusCode::BAD_REQUEST);
    with_ids(json_answer(status, &body), ids)
}

/// A JSON answer with Entra's headers.
fn json_answer(status: StatusCode, body: &serde_json::Value) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from(body.to_string())));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache"),
    );
    headers.insert(PRAGMA, HeaderValue::from_static("no-cache"));
    answer
}

fn with_ids(mut answer: Answer, ids: &RequestIds) -> Answer {
    let headers = answer.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&ids.trace_id) {
        headers.insert("x-ms-request-id", value);
    }
    if let Some(value) = ids
        .client_request_id
        .as_deref()
        .and_then(|id| HeaderValue::from_str(id).ok())
    {
        headers.insert("client-request-id", value);
    }
    answer
}

fn html(status: StatusCode, text: &'static str) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *answer.status_mut() = status;
    answer.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    answer
}

fn empty(status: StatusCode) -> Answer {
    let mut answer = Response::new(Full::new(Bytes::new()));
    *answer.status_mut() = status;
    answer
}
