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
    broker_url: String,
    fetcher_url: String,
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
            broker_url: broker_url.to_owned(),
            fetcher_url: fetcher_url.to_owned(),
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
            .map_err(|status| naming_url(status, &self.broker_url))
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
            .map_err(|status| naming_url(status, &self.broker_url))
    }

    /// `Invalidate`: the broker forgets the opened credentials (and cached tokens) of
    /// `source_id`, so its next token request reads the source again.
    pub async fn invalidate(&self, source_id: &str) -> Result<bool, tonic::Status> {
        self.check_credential("token broker")
            .map_err(|e| e.to_status())?;
        let mut broker = self.broker.clone();
        broker
            .invalidate(pb::InvalidateRequest {
                source_id: source_id.to_owned(),
            })
            .await
            .map(|reply| reply.into_inner().removed)
            .map_err(|status| naming_url(status, &self.broker_url))
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
            .map_err(|status| naming_url(status, &self.fetcher_url))
    }
}

/// A call that never reached the service (no answer of its own: no reason metadata) names
/// the address it was made to, so a wrong `broker_url` or `fetcher_url` shows.
fn naming_url(status: tonic::Status, url: &str) -> tonic::Status {
    if status.code() == tonic::Code::Unavailable
        && status.metadata().get("threatmail-reason").is_none()
    {
        tonic::Status::unavailable(format!("{} (calling {url})", status.message()))
    } else {
        status
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A broker that cannot be reached is named by its address; a broker's own answer is
    /// passed on as it is.
    #[tokio::test]
    async fn a_call_that_reaches_nobody_names_the_address() {
        // Nothing listens on a port just freed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let url = format!("http://127.0.0.1:{port}");
        let credential = ServiceCredential::generate("registry").expect("credential");
        let upstreams =
            Upstreams::new(&url, &url, Some(&credential), Duration::from_secs(5)).expect("clients");
        let status = upstreams
            .get_token(pb::GetTokenRequest::default())
            .await
            .expect_err("nobody listens");
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert!(status.message().contains(&url), "{}", status.message());

        let mut answered = tonic::Status::unavailable("Entra ID is unreachable");
        answered.metadata_mut().insert(
            "threatmail-reason",
            "entra.unreachable".parse().expect("ascii"),
        );
        let passed = naming_url(answered, &url);
        assert_eq!(passed.message(), "Entra ID is unreachable");
    }
}
