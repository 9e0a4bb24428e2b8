//! The auth layer in front of a real tonic service (gRPC health), with API keys in a real
//! Redis: every combination of credential and requirement gives the right status.

use std::sync::Arc;

use threatmail_auth::{
    AuthLayer, Authenticator, CredentialInterceptor, Policy, RedisApiKeys, Requirement, Role,
    RoleSet, ServiceCredential, ServiceCredentials,
};
use threatmail_testkit::redis::RedisServer;
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower::Layer as _;

const HEALTH: &str = "grpc.health.v1.Health";

async fn serve(policy: Policy, authenticator: Authenticator) -> anyhow::Result<Channel> {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = AuthLayer::new(authenticator, policy).layer(health);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await?,
    )
}

async fn check(channel: &Channel, bearer: Option<&str>) -> Result<(), tonic::Status> {
    let request = HealthCheckRequest {
        service: String::new(),
    };
    match bearer {
        Some(bearer) => {
            let interceptor = CredentialInterceptor::bearer(bearer).expect("ascii credential");
            HealthClient::with_interceptor(channel.clone(), interceptor)
                .check(request)
                .await
                .map(|_| ())
        }
        None => HealthClient::new(channel.clone())
            .check(request)
            .await
            .map(|_| ()),
    }
}

fn code_and_reason(result: Result<(), tonic::Status>) -> (Code, String) {
    match result {
        Ok(()) => (Code::Ok, String::new()),
        Err(status) => (
            status.code(),
            status
                .metadata()
                .get("threatmail-reason")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
        ),
    }
}

/// (what, server, bearer credential, expected code and reason).
type Case<'a> = (&'a str, &'a Channel, Option<&'a str>, (Code, String));

#[tokio::test]
async fn credentials_against_requirements() -> anyhow::Result<()> {
    use secrecy::ExposeSecret as _;

    let redis = RedisServer::start()?;
    let keys = RedisApiKeys::new(redis.connection_manager().await?);
    let viewer = keys
        .create("analyst", RoleSet::of(&[Role::View]), 0)
        .await?;
    let admin = keys.create("ops", RoleSet::of(&[Role::Admin]), 0).await?;
    let revoked = keys.create("old", RoleSet::of(&[Role::Admin]), 0).await?;
    assert!(keys.revoke(&revoked.id).await?);
    assert_eq!(keys.list().await?.len(), 3);

    let fetcher = ServiceCredential::generate("fetcher")?;
    let stranger = ServiceCredential::generate("fetcher")?;
    let mut services = ServiceCredentials::new();
    services.allow("fetcher", &fetcher.hash())?;
    let authenticator = Authenticator::new(services, Some(Arc::new(keys.clone())));

    let services_only = serve(
        Policy::new().rpc(HEALTH, "Check", Requirement::Service),
        authenticator.clone(),
    )
    .await?;
    let viewers_too = serve(
        Policy::new().rpc(HEALTH, "Check", Requirement::ServiceOrRole(Role::View)),
        authenticator.clone(),
    )
    .await?;
    let no_rule = serve(Policy::new(), authenticator.clone()).await?;

    let unauthenticated = (Code::Unauthenticated, "auth.unauthenticated".to_owned());
    let denied = (Code::PermissionDenied, "auth.permission_denied".to_owned());
    let ok = (Code::Ok, String::new());
    let cases: Vec<Case<'_>> = vec![
        (
            "no credential",
            &services_only,
            None,
            unauthenticated.clone(),
        ),
        (
            "garbage",
            &services_only,
            Some("hunter2"),
            unauthenticated.clone(),
        ),
        (
            "unknown service secret",
            &services_only,
            Some(stranger.expose()),
            unauthenticated.clone(),
        ),
        (
            "service",
            &services_only,
            Some(fetcher.expose()),
            ok.clone(),
        ),
        (
            "API key where only services may call",
            &services_only,
            Some(admin.key.expose_secret()),
            denied.clone(),
        ),
        (
            "viewer key",
            &viewers_too,
            Some(viewer.key.expose_secret()),
            ok.clone(),
        ),
        (
            "service where viewers may call too",
            &viewers_too,
            Some(fetcher.expose()),
            ok.clone(),
        ),
        (
            "revoked key",
            &viewers_too,
            Some(revoked.key.expose_secret()),
            unauthenticated.clone(),
        ),
        (
            "RPC without a rule",
            &no_rule,
            Some(fetcher.expose()),
            denied.clone(),
        ),
    ];
    for (what, channel, bearer, expected) in cases {
        assert_eq!(
            code_and_reason(check(channel, bearer).await),
            expected,
            "{what}"
        );
    }
    // A forged key with a real id does not pass.
    let forged = format!("tmk1.{}.AAAA", viewer.id);
    assert_eq!(
        code_and_reason(check(&viewers_too, Some(&forged)).await),
        unauthenticated
    );
    Ok(())
}

/// When Redis drops the key store's connection (as when it restarts), the next key check
/// still answers: the first read on the dead connection fails and is read again.
#[tokio::test]
async fn a_key_check_survives_a_dropped_redis_connection() -> anyhow::Result<()> {
    use threatmail_auth::ApiKeyStore as _;

    let redis = RedisServer::start()?;
    let keys = RedisApiKeys::new(redis.connection_manager().await?);
    let viewer = keys
        .create("analyst", RoleSet::of(&[Role::View]), 0)
        .await?;
    assert!(keys.lookup(&viewer.id).await?.is_some());
    let mut admin = redis.client().get_multiplexed_async_connection().await?;
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut admin)
        .await?;
    assert!(killed >= 1, "the key store's connection was killed");
    // The kill reaches the client's reader asynchronously.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let found = keys.lookup(&viewer.id).await?;
    assert_eq!(found.map(|k| k.roles), Some(RoleSet::of(&[Role::View])));
    Ok(())
}
