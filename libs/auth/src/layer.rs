//! The one tower layer every service puts in front of its gRPC services: it authenticates
//! the caller from the `authorization` metadata, checks the RPC's [`Requirement`] from a
//! [`Policy`] table, and hands the [`Caller`] to the handler in the request's extensions.
//!
//! It fails closed: an RPC the policy does not name is refused, so a new RPC cannot be
//! left open by forgetting it. No credential, or one that does not verify, is
//! `Unauthenticated`; a verified caller without the requirement is `PermissionDenied`. Both
//! carry the `threatmail-reason` metadata. Health checks are served outside the layer.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use http::HeaderMap;
use tonic::body::Body;
use tonic::server::NamedService;

use crate::api_key::ApiKeyStore;
use crate::caller::{Caller, Requirement};
use crate::credential::{self, Presented, ServiceCredentials};

/// The metadata key carrying the reason of a refusal.
pub const REASON_METADATA: &str = "threatmail-reason";

/// What each RPC requires, by full path (`/threatmail.v1.TokenBroker/GetToken`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: HashMap<String, Requirement>,
}

impl Policy {
    /// An empty policy: everything refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// `service`'s `method` requires `requirement` (`service` as in the proto, e.g.
    /// `threatmail.v1.TokenBroker`).
    pub fn rpc(mut self, service: &str, method: &str, requirement: Requirement) -> Self {
        self.rules
            .insert(format!("/{service}/{method}"), requirement);
        self
    }

    /// The requirement of the RPC at `path`, `None` if the policy does not name it.
    pub fn requirement(&self, path: &str) -> Option<Requirement> {
        self.rules.get(path).copied()
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata.
    #[error("no credential: send `authorization: Bearer <service credential or API key>` metadata")]
    Missing,
    /// A credential that is not one of ours, does not verify, or was revoked.
    #[error("the credential was not accepted (unknown, wrong or revoked)")]
    Rejected,
    /// API keys cannot be checked (the key store failed).
    #[error("failed to check the API key: the key store is unavailable")]
    Unavailable,
    /// Verified, but not allowed to call this RPC.
    #[error("{caller} may not call {path}: it requires {requirement}")]
    Denied {
        /// Who called.
        caller: String,
        /// What.
        path: String,
        /// What it needs.
        requirement: String,
    },
    /// The policy does not name this RPC.
    #[error("{path} has no permission rule, so nobody may call it")]
    NoRule {
        /// What.
        path: String,
    },
}

impl AuthError {
    /// The gRPC status for it, with the reason in `threatmail-reason`.
    pub fn to_status(&self) -> tonic::Status {
        let (code, reason) = match self {
            AuthError::Missing | AuthError::Rejected => {
                (tonic::Code::Unauthenticated, "auth.unauthenticated")
            }
            AuthError::Unavailable => (tonic::Code::Unavailable, "auth.unavailable"),
            AuthError::Denied { .. } | AuthError::NoRule { .. } => {
                (tonic::Code::PermissionDenied, "auth.permission_denied")
            }
        };
        let mut status = tonic::Status::new(code, self.to_string());
        status.metadata_mut().insert(
            REASON_METADATA,
            tonic::metadata::MetadataValue::from_static(reason),
        );
        status
    }
}

/// Verifies presented credentials.
#[derive(Clone)]
pub struct Authenticator {
    services: ServiceCredentials,
    api_keys: Option<Arc<dyn ApiKeyStore>>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("services", &self.services)
            .field("api_keys", &self.api_keys.is_some())
            .finish()
    }
}

impl Authenticator {
    /// Accepts `services` and, when given, API keys from `api_keys`.
    pub fn new(services: ServiceCredentials, api_keys: Option<Arc<dyn ApiKeyStore>>) -> Self {
        Authenticator { services, api_keys }
    }

    /// The caller behind `headers`.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or(AuthError::Missing)?;
        let text = value.to_str().map_err(|_| AuthError::Rejected)?;
        let token = text
            .strip_prefix("Bearer ")
            .or_else(|| text.strip_prefix("bearer "))
            .ok_or(AuthError::Rejected)?
            .trim();
        match credential::split(token).ok_or(AuthError::Rejected)? {
            Presented::Service { name, whole } => {
                if self.services.verify(name, whole) {
                    Ok(Caller::Service {
                        name: name.to_owned(),
                    })
                } else {
                    Err(AuthError::Rejected)
                }
            }
            Presented::ApiKey { id, whole } => {
                let store = self.api_keys.as_ref().ok_or(AuthError::Rejected)?;
                let stored = store.lookup(id).await.map_err(|error| {
                    tracing::warn!(error = %threatmail_core::error::chain(&error), "API key lookup failed");
                    AuthError::Unavailable
                })?;
                match stored {
                    Some(key) if credential::matches(whole, &key.hash) && !key.revoked => {
                        Ok(Caller::ApiKey {
                            id: key.id,
                            label: key.label,
                            roles: key.roles,
                        })
                    }
                    _ => Err(AuthError::Rejected),
                }
            }
        }
    }

    /// Authenticates and checks `path` against `policy`.
    pub async fn authorize(
        &self,
        policy: &Policy,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Caller>, AuthError> {
        let requirement = policy.requirement(path).ok_or_else(|| AuthError::NoRule {
            path: path.to_owned(),
        })?;
        if requirement == Requirement::Public {
            return Ok(None);
        }
        let caller = self.authenticate(headers).await?;
        if caller.meets(requirement) {
            Ok(Some(caller))
        } else {
            Err(AuthError::Denied {
                caller: caller.to_string(),
                path: path.to_owned(),
                requirement: requirement.to_string(),
            })
        }
    }
}

/// The layer: wraps a gRPC service so every RPC is checked.
#[derive(Debug, Clone)]
pub struct AuthLayer {
    authenticator: Arc<Authenticator>,
    policy: Arc<Policy>,
}

impl AuthLayer {
    /// Checks callers with `authenticator` against `policy`.
    pub fn new(authenticator: Authenticator, policy: Policy) -> Self {
        AuthLayer {
            authenticator: Arc::new(authenticator),
            policy: Arc::new(policy),
        }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authenticated {
            inner,
            authenticator: Arc::clone(&self.authenticator),
            policy: Arc::clone(&self.policy),
        }
    }
}

/// A gRPC service behind the auth layer; add it to a tonic router like the service itself.
#[derive(Debug, Clone)]
pub struct Authenticated<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
    policy: Arc<Policy>,
}

impl<S: NamedService> NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> tower::Service<http::Request<Body>> for Authenticated<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // The ready clone serves this call; a fresh clone waits for the next poll_ready
        // (tower's documented pattern for services called from a future).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let authenticator = Arc::clone(&self.authenticator);
        let policy = Arc::clone(&self.policy);
        Box::pin(async move {
            let path = request.uri().path().to_owned();
            match authenticator
                .authorize(&policy, &path, request.headers())
                .await
            {
                Ok(caller) => {
                    if let Some(caller) = caller {
                        tracing::trace!(caller = %caller, rpc = %path, "caller authorized");
                        request.extensions_mut().insert(caller);
                    }
                    inner.call(request).await
                }
                Err(error) => {
                    tracing::info!(rpc = %path, error = %threatmail_core::error::chain(&error), "call refused");
                    Ok(error.to_status().into_http())
                }
            }
        })
    }
}

/// The caller of a request that passed the layer.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}
