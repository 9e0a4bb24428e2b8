//! Every RPC of the registry behind the one auth layer: without a credential
//! Unauthenticated, with a key lacking the RPC's permission PermissionDenied, with the
//! permission let through; services only where the policy says; API keys made, listed and
//! revoked by admins.

use std::collections::BTreeSet;

use threatmail_auth::{Requirement, Role};
use threatmail_proto::v1 as pb;
use threatmail_registry::grpc::RULES;
use threatmail_testkit::tenant::TenantFixture;
use tonic::Code;

use crate::harness::{Harness, reason};

/// Calls `method` on `client` with a minimal request; `Ok` or the status.
macro_rules! call {
    ($client:expr, $method:expr) => {{
        let id = "0b1c2d3e-0000-4000-8000-000000000000".to_owned();
        match $method {
            "CreateSource" => $client
                .create_source(pb::CreateSourceRequest::default())
                .await
                .map(|_| ()),
            "UpdateSource" => $client
                .update_source(pb::UpdateSourceRequest {
                    id,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "GetSource" => $client
                .get_source(pb::GetSourceRequest { id })
                .await
                .map(|_| ()),
            "ListSources" => $client
                .list_sources(pb::ListSourcesRequest {})
                .await
                .map(|_| ()),
            "DeleteSource" => $client
                .delete_source(pb::DeleteSourceRequest { id })
                .await
                .map(|_| ()),
            "TestSource" => $client
                .test_source(pb::TestSourceRequest::default())
                .await
                .map(|_| ()),
            "ListFolders" => $client
                .list_folders(pb::ListSourceFoldersRequest { id })
                .await
                .map(|_| ()),
            "SetFolders" => $client
                .set_folders(pb::SetFoldersRequest {
                    id,
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            "GetStatus" => $client
                .get_status(pb::GetStatusRequest { id })
                .await
                .map(|_| ()),
            "CreateApiKey" => $client
                .create_api_key(pb::CreateApiKeyRequest::default())
                .await
                .map(|_| ()),
            "ListApiKeys" => $client
                .list_api_keys(pb::ListApiKeysRequest {})
                .await
                .map(|_| ()),
            "RevokeApiKey" => $client
                .revoke_api_key(pb::RevokeApiKeyRequest { id })
                .await
                .map(|_| ()),
            other => panic!("the test does not know RPC {other}"),
        }
    }};
}

/// The roles of a key that lacks `requirement` but holds every other non-admin role.
fn lacking(requirement: Requirement) -> Vec<Role> {
    let missing = match requirement {
        Requirement::Role(role) | Requirement::ServiceOrRole(role) => vec![role],
        Requirement::EitherRole(a, b) => vec![a, b],
        Requirement::Public | Requirement::Service => vec![Role::Admin],
    };
    [Role::View, Role::Create, Role::Update]
        .into_iter()
        .filter(|role| !missing.contains(role))
        .collect()
}

fn code_of(result: Result<(), tonic::Status>) -> (Code, String) {
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (status.code(), reason(&status)),
    }
}

fn let_through(code: Code) -> bool {
    !matches!(code, Code::Unauthenticated | Code::PermissionDenied)
}

#[test]
fn the_policy_names_every_rpc_of_the_proto() {
    let proto = include_str!("../../../../proto/threatmail/v1/registry.proto");
    let service = proto
        .split("service Registry {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("the Registry service");
    let rpcs: BTreeSet<&str> = service
        .lines()
        .filter_map(|line| line.trim().strip_prefix("rpc "))
        .filter_map(|rest| rest.split('(').next())
        .collect();
    let ruled: BTreeSet<&str> = RULES.iter().map(|(method, _)| *method).collect();
    assert_eq!(rpcs, ruled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_refuses_callers_without_its_permission() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut anonymous = harness.anonymous().await?;
    let mut stranger = harness.client("tmk1.0123456789abcdef.not-a-key").await?;
    let mut service = harness.client(harness.fetcher_credential.expose()).await?;
    let mut admin = harness.client(&harness.admin).await?;
    let mut failures = Vec::new();
    for (method, requirement) in RULES {
        let mut check = |what: &str, got: (Code, String), ok: bool| {
            if !ok {
                failures.push(format!("{method} {what}: got {got:?}"));
            }
        };
        let got = code_of(call!(anonymous, method));
        check(
            "without a credential",
            got.clone(),
            got == (Code::Unauthenticated, "auth.unauthenticated".to_owned()),
        );
        let got = code_of(call!(stranger, method));
        check(
            "with an unknown key",
            got.clone(),
            got.0 == Code::Unauthenticated,
        );
        let mut lacking_client = harness
            .client(&harness.api_key(&lacking(requirement)).await?)
            .await?;
        let got = code_of(call!(lacking_client, method));
        check(
            "with a key lacking its permission",
            got.clone(),
            got == (Code::PermissionDenied, "auth.permission_denied".to_owned()),
        );
        let role = match requirement {
            Requirement::Role(role)
            | Requirement::ServiceOrRole(role)
            | Requirement::EitherRole(role, _) => role,
            Requirement::Public | Requirement::Service => Role::Admin,
        };
        let mut holder = harness.client(&harness.api_key(&[role]).await?).await?;
        let got = code_of(call!(holder, method));
        check("with its permission", got.clone(), let_through(got.0));
        let got = code_of(call!(admin, method));
        check("as admin", got.clone(), let_through(got.0));
        let got = code_of(call!(service, method));
        let service_may = matches!(requirement, Requirement::ServiceOrRole(_));
        check(
            "as a service",
            got.clone(),
            let_through(got.0) == service_may,
        );
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn testing_a_new_source_needs_create_and_a_stored_one_update() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut admin = harness.client(&harness.admin).await?;
    let created = admin
        .create_source(pb::CreateSourceRequest {
            spec: Some(harness.spec()),
        })
        .await?
        .into_inner();
    let without_secret = pb::TestSourceRequest {
        spec: Some(pb::SourceSpec {
            secret_key: String::new(),
            ..harness.spec()
        }),
        source_id: created.id.clone(),
    };
    let mut creator = harness
        .client(&harness.api_key(&[Role::Create]).await?)
        .await?;
    let refused = creator
        .test_source(without_secret.clone())
        .await
        .expect_err("needs update");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let mut editor = harness
        .client(&harness.api_key(&[Role::Create, Role::Update]).await?)
        .await?;
    let reply = editor
        .test_source(without_secret.clone())
        .await?
        .into_inner();
    assert!(reply.ok, "{:?}", reply.problems);
    // Update alone: changes to a stored source may be tested (a new secret before it is
    // saved, say), a new source may not.
    let mut updater = harness
        .client(&harness.api_key(&[Role::Update]).await?)
        .await?;
    let reply = updater.test_source(without_secret).await?.into_inner();
    assert!(reply.ok, "{:?}", reply.problems);
    let refused = updater
        .test_source(pb::TestSourceRequest {
            spec: Some(harness.spec()),
            source_id: String::new(),
        })
        .await
        .expect_err("a new source needs create");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("Create Threat Mailbox"),
        "{}",
        refused.message()
    );
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_make_list_and_revoke_api_keys() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut admin = harness.client(&harness.admin).await?;
    let made = admin
        .create_api_key(pb::CreateApiKeyRequest {
            label: "analyst laptop".to_owned(),
            roles: vec![pb::Role::View as i32],
        })
        .await?
        .into_inner();
    assert!(made.key.starts_with(&format!("tmk1.{}.", made.id)));
    let listed = admin
        .list_api_keys(pb::ListApiKeysRequest {})
        .await?
        .into_inner();
    let entry = listed
        .keys
        .iter()
        .find(|k| k.id == made.id)
        .expect("listed");
    assert_eq!(entry.label, "analyst laptop");
    assert_eq!(entry.roles, vec![pb::Role::View as i32]);
    assert!(!format!("{listed:?}").contains(&made.key));

    let mut viewer = harness.client(&made.key).await?;
    viewer.list_sources(pb::ListSourcesRequest {}).await?;
    let denied = viewer
        .create_source(pb::CreateSourceRequest {
            spec: Some(harness.spec()),
        })
        .await
        .expect_err("view only");
    assert_eq!(denied.code(), Code::PermissionDenied);

    assert!(
        admin
            .revoke_api_key(pb::RevokeApiKeyRequest {
                id: made.id.clone()
            })
            .await?
            .into_inner()
            .revoked
    );
    let revoked = viewer
        .list_sources(pb::ListSourcesRequest {})
        .await
        .expect_err("revoked");
    assert_eq!(revoked.code(), Code::Unauthenticated);
    let unknown = admin
        .revoke_api_key(pb::RevokeApiKeyRequest {
            id: "ffffffffffffffff".to_owned(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(unknown.code(), Code::NotFound);

    // The last admin key cannot be revoked; once there is another, it can.
    let own_id = harness
        .admin
        .split('.')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let last = admin
        .revoke_api_key(pb::RevokeApiKeyRequest { id: own_id.clone() })
        .await
        .expect_err("the last admin key");
    assert_eq!(last.code(), Code::FailedPrecondition);
    assert!(
        last.message().contains("last admin key"),
        "{}",
        last.message()
    );
    let second = admin
        .create_api_key(pb::CreateApiKeyRequest {
            label: "second admin".to_owned(),
            roles: vec![pb::Role::Admin as i32],
        })
        .await?
        .into_inner();
    let mut second = harness.client(&second.key).await?;
    assert!(
        second
            .revoke_api_key(pb::RevokeApiKeyRequest { id: own_id })
            .await?
            .into_inner()
            .revoked
    );
    let no_roles = second
        .create_api_key(pb::CreateApiKeyRequest {
            label: "nothing".to_owned(),
            roles: Vec::new(),
        })
        .await
        .expect_err("no roles");
    assert_eq!(no_roles.code(), Code::InvalidArgument);
    harness.stop().await
}
