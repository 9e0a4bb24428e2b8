//! The registry's clients of the token broker and a fetcher, presenting the registry's
//! service credential and the caller's trace context on every call.

use std::time::Duration;

use threatmail_auth::{CredentialInterceptor, ServiceCredential};
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::fetcher_client::FetcherClient;
use threatmail_proto::v1::token_broker_client::TokenBrokerClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::error::{RegistryError, reason_of};

/// Adds the registry's credential and the W3C trace context.
#[derive(Clone, Debug)]
pub struct ServiceInterceptor {
    credential: Option<CredentialInterceptor>,
}

impl Interceptor for ServiceInterceptor {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut request = match &mut self.credential {
            Some(credential) => credential.call(request)?,
            None => request,
        };
        threatmail_telemetry::inject_context(request.metadata_mut());
        Ok(request)
    }
}

type Intercepted = InterceptedService<Channel, ServiceInterceptor>;

/// The broker and the fetcher.
#[derive(Clone, Debug)]
pub struct Upstreams {
    broker: TokenBrokerClient<Intercepted>,
    fetcher: FetcherClient<Intercepted>,
    has_credential: bool,
}

/// How long connecting to the broker or the fetcher may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn channel(url: &str, timeout: Duration) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(timeout)
        .connect_lazy())
}

impl Upstreams {
    /// Clients of `broker_url` and `fetcher_url` (connected on first use), presenting
    /// `credential`.
    pub fn new(
        broker_url: &str,
        fetcher_url: &str,
        credential: Option<&ServiceCredential>,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let interceptor = ServiceInterceptor {
            credential: credential.map(CredentialInterceptor::new).transpose()?,
        };
        Ok(Upstreams {
            broker: TokenBrokerClient::with_interceptor(
                channel(broker_url, timeout)?,
                interceptor.clone(),
            ),
            fetcher: FetcherClient::with_interceptor(channel(fetcher_url, timeout)?, interceptor),
            has_credential: credential.is_some(),
        })
    }

    fn check_credential(&self, service: &'static str) -> Result<(), RegistryError> {
        if self.has_credential {
            Ok(())
        } else {
            Err(RegistryError::NoServiceCredential { service })
        }
    }

    /// `TestCredentials`.
    pub async fn test_credentials(
        &self,
        request: pb::TestCredentialsRequest,
    ) -> Result<pb::TestCredentialsResponse, tonic::Status> {
        self.check_credential("token broker")
            .map_err(|e| e.to_status())?;
        let mut broker = self.broker.clone();
        broker
            .test_credentials(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// `GetToken`.
    pub async fn get_token(
        &self,
        request: pb::GetTokenRequest,
    ) -> Result<pb::GetTokenResponse, tonic::Status> {
        self.check_credential("token broker")
            .map_err(|e| e.to_status())?;
        let mut broker = self.broker.clone();
        broker
            .get_token(request)
            .await
            .map(tonic::Response::into_inner)
    }

    /// The fetcher's `ListFolders`.
    pub async fn list_folders(
        &self,
        connection: pb::ImapConnection,
    ) -> Result<pb::ListFoldersResponse, tonic::Status> {
        let mut fetcher = self.fetcher.clone();
        fetcher
            .list_folders(pb::ListFoldersRequest {
                connection: Some(connection),
            })
            .await
            .map(tonic::Response::into_inner)
    }
}

/// A failed call to `service` that is not about the source itself.
pub fn upstream_error(service: &'static str, status: &tonic::Status) -> RegistryError {
    RegistryError::Upstream {
        service,
        code: match status.code() {
            // The registry's own credential was refused: a deployment problem.
            tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                tonic::Code::FailedPrecondition
            }
            tonic::Code::Unknown | tonic::Code::Cancelled => tonic::Code::Unavailable,
            code => code,
        },
        reason: reason_of(status),
        message: status.message().to_owned(),
    }
}
