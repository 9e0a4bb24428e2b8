//! The `threatmail.v1.Registry` gRPC service and its permission policy.

use threatmail_auth::{Policy, RedisApiKeys, Requirement, Role, caller};
use threatmail_proto::v1 as pb;
use threatmail_proto::v1::registry_server::Registry as RegistryApi;
use tonic::{Request, Response, Status};

use crate::api_keys;
use crate::registry::Registry;

/// The proto name of the service.
pub const SERVICE: &str = "threatmail.v1.Registry";

/// Every RPC with what it requires (DESIGN §1: creating a source needs Create Threat
/// Mailbox, changing one Update, reading View; API keys are admin's). Services may read.
pub const RULES: [(&str, Requirement); 12] = [
    ("CreateSource", Requirement::Role(Role::Create)),
    ("UpdateSource", Requirement::Role(Role::Update)),
    ("GetSource", Requirement::ServiceOrRole(Role::View)),
    ("ListSources", Requirement::ServiceOrRole(Role::View)),
    ("DeleteSource", Requirement::Role(Role::Update)),
    // Save and Continue: of a new source needs Create, of changes to a stored one Update
    // (checked in `Registry::test`, which knows which it is).
    (
        "TestSource",
        Requirement::EitherRole(Role::Create, Role::Update),
    ),
    ("ListFolders", Requirement::ServiceOrRole(Role::View)),
    ("SetFolders", Requirement::Role(Role::Update)),
    ("GetStatus", Requirement::ServiceOrRole(Role::View)),
    ("CreateApiKey", Requirement::Role(Role::Admin)),
    ("ListApiKeys", Requirement::Role(Role::Admin)),
    ("RevokeApiKey", Requirement::Role(Role::Admin)),
];

/// The policy for the auth layer.
pub fn policy() -> Policy {
    RULES
        .iter()
        .fold(Policy::new(), |policy, (method, requirement)| {
            policy.rpc(SERVICE, method, *requirement)
        })
}

/// The gRPC face of a [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryService {
    registry: Registry,
    api_keys: RedisApiKeys,
}

impl RegistryService {
    /// Serves `registry`, and API keys from `api_keys`.
    pub fn new(registry: Registry, api_keys: RedisApiKeys) -> Self {
        RegistryService { registry, api_keys }
    }
}

fn reply<T>(result: crate::error::Result<T>) -> Result<Response<T>, Status> {
    match result {
        Ok(value) => Ok(Response::new(value)),
        Err(error) => {
            let (code, reason) = error.code_and_reason();
            tracing::info!(code = ?code, reason = %reason, error = %threatmail_core::error::chain(&error), "request refused");
            Err(error.to_status())
        }
    }
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    async fn create_source(
        &self,
        request: Request<pb::CreateSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let spec = request.into_inner().spec.unwrap_or_default();
        reply(self.registry.create(&spec).await)
    }

    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().id))]
    async fn update_source(
        &self,
        request: Request<pb::UpdateSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let request = request.into_inner();
        let spec = request.spec.unwrap_or_default();
        reply(
            self.registry
                .update(
                    &request.id,
                    request.expected_version,
                    &spec,
                    request.clear_next_secret,
                )
                .await,
        )
    }

    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().id))]
    async fn get_source(
        &self,
        request: Request<pb::GetSourceRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        reply(self.registry.get(&request.get_ref().id).await)
    }

    async fn list_sources(
        &self,
        _request: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        reply(
            self.registry
                .list()
                .await
                .map(|sources| pb::ListSourcesResponse { sources }),
        )
    }

    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().id))]
    async fn delete_source(
        &self,
        request: Request<pb::DeleteSourceRequest>,
    ) -> Result<Response<pb::DeleteSourceResponse>, Status> {
        reply(
            self.registry
                .delete(&request.get_ref().id)
                .await
                .map(|deleted| pb::DeleteSourceResponse { deleted }),
        )
    }

    async fn test_source(
        &self,
        request: Request<pb::TestSourceRequest>,
    ) -> Result<Response<pb::TestSourceResponse>, Status> {
        let caller = caller(&request).cloned();
        reply(
            self.registry
                .test(request.into_inner(), caller.as_ref())
                .await,
        )
    }

    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().id))]
    async fn list_folders(
        &self,
        request: Request<pb::ListSourceFoldersRequest>,
    ) -> Result<Response<pb::ListFoldersResponse>, Status> {
        reply(self.registry.list_folders(&request.get_ref().id).await)
    }

    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().id))]
    async fn set_folders(
        &self,
        request: Request<pb::SetFoldersRequest>,
    ) -> Result<Response<pb::Source>, Status> {
        let request = request.into_inner();
        reply(
            self.registry
                .set_folders(&request.id, request.expected_version, &request.folders)
                .await,
        )
    }

    #[tracing::instrument(skip_all, fields(source_id = %request.get_ref().id))]
    async fn get_status(
        &self,
        request: Request<pb::GetStatusRequest>,
    ) -> Result<Response<pb::SourceStatus>, Status> {
        reply(self.registry.status(&request.get_ref().id).await)
    }

    async fn create_api_key(
        &self,
        request: Request<pb::CreateApiKeyRequest>,
    ) -> Result<Response<pb::CreateApiKeyResponse>, Status> {
        reply(api_keys::create(&self.api_keys, request.get_ref()).await)
    }

    async fn list_api_keys(
        &self,
        _request: Request<pb::ListApiKeysRequest>,
    ) -> Result<Response<pb::ListApiKeysResponse>, Status> {
        reply(api_keys::list(&self.api_keys).await)
    }

    async fn revoke_api_key(
        &self,
        request: Request<pb::RevokeApiKeyRequest>,
    ) -> Result<Response<pb::RevokeApiKeyResponse>, Status> {
        reply(api_keys::revoke(&self.api_keys, &request.get_ref().id).await)
    }
}
