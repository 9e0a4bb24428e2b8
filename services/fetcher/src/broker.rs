//! Tokens come only from the token broker (DESIGN §3): a gRPC client presenting this
//! fetcher's service credential and carrying the W3C trace context, so one trace follows a
//! sync into the broker.

use std::time::Duration;

use secrecy::SecretString;
use threatmail_auth::CredentialInterceptor;
use threatmail_proto::v1::GetTokenRequest;
use threatmail_proto::v1::token_broker_client::TokenBrokerClient;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// Errors of getting a token.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's address does not parse.
    #[error("the token broker address {address:?} is not a URL")]
    Address {
        address: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// The broker answered with an error (its message names the setup step to recheck).
    #[error("the token broker refused a token for source {source_id}: {message}")]
    Refused {
        source_id: String,
        code: tonic::Code,
        /// The broker's machine-readable reason, e.g. `entra.secret_expired`.
        reason: String,
        message: String,
        /// What Entra ID answered, e.g. `AADSTS7000222`, when the broker says.
        upstream_code: String,
    },
}

impl BrokerError {
    /// Whether trying again later may help (the broker or Entra is unreachable or busy),
    /// as opposed to a setup fault.
    pub fn is_transient(&self) -> bool {
        match self {
            BrokerError::Address { .. } => false,
            BrokerError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
            ),
        }
    }
}

/// A token and when it stops working.
pub struct Token {
    /// The access token.
    pub secret: SecretString,
    /// Unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// The service credential and the trace context on every call.
#[derive(Clone)]
pub struct BrokerInterceptor {
    credential: CredentialInterceptor,
}

impl Interceptor for BrokerInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let request = self.credential.call(request)?;
        threatmail_telemetry::TraceContextInterceptor.call(request)
    }
}

/// A client of the token broker.
#[derive(Clone)]
pub struct Broker {
    client: TokenBrokerClient<
        tonic::service::interceptor::InterceptedService<Channel, BrokerInterceptor>,
    >,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Broker {
    /// A client of the broker at `address` (`http://host:port`), connecting lazily.
    pub fn new(
        address: &str,
        credential: CredentialInterceptor,
        timeout: Duration,
    ) -> Result<Self, BrokerError> {
        let channel = tonic::transport::Endpoint::from_shared(address.to_owned())
            .map_err(|source| BrokerError::Address {
                address: address.to_owned(),
                source,
            })?
            .timeout(timeout)
            .connect_timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: TokenBrokerClient::with_interceptor(channel, BrokerInterceptor { credential }),
        })
    }

    /// A token for `source_id` valid for at least `min_validity`; `force_refresh` after the
    /// IMAP server refused the last one.
    pub async fn token(
        &self,
        source_id: &str,
        min_validity: Duration,
        force_refresh: bool,
    ) -> Result<Token, BrokerError> {
        let request = GetTokenRequest {
            source_id: source_id.to_owned(),
            min_validity_seconds: u32::try_from(min_validity.as_secs()).unwrap_or(u32::MAX),
            force_refresh,
        };
        match self.client.clone().get_token(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                Ok(Token {
                    secret: SecretString::from(reply.access_token),
                    expires_at: reply.expires_at,
                })
            }
            Err(status) => Err(BrokerError::Refused {
                source_id: source_id.to_owned(),
                code: status.code(),
                reason: status
                    .metadata()
                    .get("threatmail-reason")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned(),
                message: status.message().to_owned(),
                upstream_code: threatmail_proto::problem_of(&status)
                    .map(|p| p.upstream_code)
                    .unwrap_or_default(),
            }),
        }
    }
}
