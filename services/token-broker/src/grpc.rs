//! The `threatmail.v1.TokenBroker` gRPC service and its permission policy.

use std::sync::Arc;
use std::time::Duration;

use threatmail_auth::{Policy, Requirement, Role};
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::token_broker_server::TokenBroker;
use tonic::{Request, Response, Status};

use crate::broker::Broker;
use crate::cache::Want;

/// The proto name of the service.
pub const SERVICE: &str = "threatmail.v1.TokenBroker";

/// Who may call what: tokens open mailboxes, so only services get them (DESIGN §2).
pub fn policy() -> Policy {
    Policy::new()
        .rpc(SERVICE, "GetToken", Requirement::Service)
        .rpc(SERVICE, "TestCredentials", Requirement::Service)
        .rpc(
            SERVICE,
            "Invalidate",
            Requirement::ServiceOrRole(Role::Update),
        )
}

/// The gRPC face of a [`Broker`].
#[derive(Debug, Clone)]
pub struct TokenBrokerService {
    broker: Arc<Broker>,
}

impl TokenBrokerService {
    /// Serves `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        TokenBrokerService { broker }
    }
}

#[tonic::async_trait]
impl TokenBroker for TokenBrokerService {
    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().source_id))]
    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        let request = request.into_inner();
        let want = Want {
            min_validity: Duration::from_secs(u64::from(request.min_validity_seconds)),
            force_refresh: request.force_refresh,
        };
        match self.broker.get_token(&request.source_id, want).await {
            Ok(reply) => {
                tracing::debug!(
                    from_cache = reply.from_cache,
                    expires_at = reply.expires_at,
                    "token handed out"
                );
                Ok(Response::new(reply))
            }
            Err(error) => {
                tracing::info!(reason = %error.problem().reason, error = %threatmail_core::error::chain(&error), "no token");
                Err(error.to_status())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(tenant = %request.get_ref().tenant_id, client_id = %request.get_ref().client_id))]
    async fn test_credentials(
        &self,
        request: Request<pb::TestCredentialsRequest>,
    ) -> Result<Response<pb::TestCredentialsResponse>, Status> {
        match self.broker.test_credentials(request.into_inner()).await {
            Ok(reply) => {
                tracing::info!(
                    ok = reply.ok,
                    problems = reply.problems.len(),
                    "credentials tested"
                );
                Ok(Response::new(reply))
            }
            Err(error) => {
                tracing::info!(reason = %error.problem().reason, error = %threatmail_core::error::chain(&error), "credential test failed");
                Err(error.to_status())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().source_id))]
    async fn invalidate(
        &self,
        request: Request<pb::InvalidateRequest>,
    ) -> Result<Response<pb::InvalidateResponse>, Status> {
        self.broker
            .invalidate(&request.into_inner().source_id)
            .await
            .map(|removed| Response::new(pb::InvalidateResponse { removed }))
            .map_err(|error| error.to_status())
    }
}
