//! Every error of the test kit's Entra stand-in (its `ERROR_TABLE`, ENTRA.md's rows) maps
//! to its typed error, gRPC status code, reason and diagnosis. Rows a source can cause go
//! through `GetToken`; rows only a malformed request can cause go through the broker's Entra
//! client or a raw request, then through the same error mapping.

#![allow(clippy::unwrap_used)]

#[path = "support/stack.rs"]
mod stack;

use std::time::Duration;

use prost::Message as _;
use secrecy::SecretString;
use stack::{Stack, get_token};
use threatmail_proto::v1::Problem;
use threatmail_source::Cloud;
use threatmail_testkit::entra::ERROR_TABLE;
use threatmail_testkit::tenant::{AppRegistration, ClientSecret};
use threatmail_token_broker::entra::{
    ClientSettings, EntraClient, EntraError, RequestContext, TokenRequest,
};
use threatmail_token_broker::error::BrokerError;
use tonic::Code;
use url::Url;

/// What each AADSTS code must become: reason, gRPC code, words of the diagnosis.
fn expected(code: u32) -> (&'static str, Code, &'static str) {
    match code {
        90002 => (
            "entra.tenant_not_found",
            Code::FailedPrecondition,
            "setup step 1",
        ),
        900023 => (
            "entra.tenant_malformed",
            Code::FailedPrecondition,
            "neither a GUID nor a domain",
        ),
        9001023 => (
            "entra.tenant_not_specific",
            Code::FailedPrecondition,
            "setup step 1",
        ),
        900144 => ("entra.malformed_request", Code::Internal, "threatmail bug"),
        70003 => ("entra.malformed_request", Code::Internal, "threatmail bug"),
        70011 => ("entra.scope_invalid", Code::FailedPrecondition, "scope"),
        1002012 => (
            "entra.scope_not_default",
            Code::FailedPrecondition,
            "IMAP.AccessAsApp",
        ),
        700016 => (
            "entra.app_not_found",
            Code::FailedPrecondition,
            "Application (client) ID",
        ),
        7000229 => (
            "entra.no_service_principal",
            Code::FailedPrecondition,
            "setup steps 2 and 4",
        ),
        7000218 => (
            "entra.secret_missing",
            Code::FailedPrecondition,
            "setup step 3",
        ),
        7000215 => (
            "entra.secret_wrong",
            Code::FailedPrecondition,
            "not its Secret ID",
        ),
        7000222 => (
            "entra.secret_expired",
            Code::FailedPrecondition,
            "has expired",
        ),
        7000112 => (
            "entra.app_disabled",
            Code::FailedPrecondition,
            "setup step 4",
        ),
        500011 => (
            "entra.resource_not_in_tenant",
            Code::FailedPrecondition,
            "cloud",
        ),
        900561 => ("entra.malformed_request", Code::Internal, "threatmail bug"),
        50196 => ("entra.throttled", Code::Unavailable, "throttling"),
        90006 => ("entra.unavailable", Code::Unavailable, "unavailable"),
        50000 => ("entra.unavailable", Code::Unavailable, "unavailable"),
        other => panic!("AADSTS{other} is in the stand-in's table but not in this test"),
    }
}

fn check(code: u32, status: &tonic::Status) {
    let (reason, grpc, words) = expected(code);
    assert_eq!(status.code(), grpc, "AADSTS{code}: {status:?}");
    assert_eq!(stack::reason(status), reason, "AADSTS{code}");
    let problem = Problem::decode(status.details()).unwrap();
    assert_eq!(problem.reason, reason, "AADSTS{code}");
    assert_eq!(problem.upstream_code, format!("AADSTS{code}"));
    assert_eq!(problem.message, status.message());
    assert!(
        problem.message.contains(words),
        "AADSTS{code}: {:?} lacks {words:?}",
        problem.message
    );
    assert!(!problem.message.contains('\n'));
    if grpc == Code::Unavailable {
        assert!(
            status.metadata().get("retry-after").is_some(),
            "AADSTS{code}"
        );
    }
}

fn as_status(error: EntraError) -> tonic::Status {
    BrokerError::Entra {
        error: Box::new(error),
        retry_at: None,
        now: 0,
    }
    .to_status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stand_in_error_maps_to_its_typed_error_status_and_diagnosis() {
    let stack = Stack::start().await;
    // Apps for the rows that need a broken setup, each with its own secret.
    let no_sp = AppRegistration::new("no-sp")
        .with_secret(ClientSecret::new(Duration::from_secs(3600)))
        .with_imap_access_consented();
    let disabled = AppRegistration::new("disabled")
        .with_secret(ClientSecret::new(Duration::from_secs(3600)))
        .with_imap_access_consented();
    let expired = ClientSecret::expired();
    let expired_value = SecretString::from(expired.value.expose());
    stack.tenant.update(|f| {
        let tenant = f.primary_tenant_mut().unwrap();
        let mut no_sp = no_sp.clone();
        no_sp.service_principal_exists = false;
        let mut disabled = disabled.clone();
        disabled.enabled = false;
        tenant.apps.push(no_sp);
        tenant.apps.push(disabled);
        tenant.apps[0].secrets.push(expired);
    });
    let broker = stack.broker(stack.config()).await;
    let mut grpc = stack.client(&broker).await;
    let entra = EntraClient::new(&ClientSettings {
        extra_ca: Some(("test CA".into(), stack.ca.cert_pem().into_bytes())),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(2),
    })
    .unwrap();
    let authority = Url::parse(&stack.entra.authority()).unwrap();
    let raw = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(
            reqwest::Certificate::from_pem(stack.ca.cert_pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();
    let good_scope = Cloud::Global.scope();

    for row in ERROR_TABLE {
        let code = row.code;
        let before = stack.entra.total_requests();
        // A source with (tenant, client id, secret, cloud) through GetToken.
        let via_source = |tenant: String, client: String, secret: SecretString, cloud: Cloud| {
            let stack = &stack;
            async move {
                stack
                    .add_source_with(&secret, |record, _| {
                        record.tenant_id = tenant;
                        record.app_id = client;
                        record.cloud = cloud;
                    })
                    .await
            }
        };
        let ids = (stack.tenant_id.clone(), stack.client_id.clone());
        let status = match code {
            90002 | 900023 | 9001023 | 700016 | 7000218 | 7000215 | 7000222 | 500011 | 7000229
            | 7000112 | 50196 | 90006 | 50000 => {
                let (tenant, client, secret, cloud) = match code {
                    90002 => (
                        uuid::Uuid::new_v4().to_string(),
                        ids.1,
                        stack.secret.clone(),
                        Cloud::Global,
                    ),
                    900023 => (
                        "{tenant-id}".to_owned(),
                        ids.1,
                        stack.secret.clone(),
                        Cloud::Global,
                    ),
                    9001023 => (
                        "common".to_owned(),
                        ids.1,
                        stack.secret.clone(),
                        Cloud::Global,
                    ),
                    700016 => (
                        ids.0,
                        uuid::Uuid::new_v4().to_string(),
                        stack.secret.clone(),
                        Cloud::Global,
                    ),
                    7000218 => (ids.0, ids.1, SecretString::from(""), Cloud::Global),
                    7000215 => (
                        ids.0,
                        ids.1,
                        SecretString::from("the-secret-id-not-its-value"),
                        Cloud::Global,
                    ),
                    7000222 => (ids.0, ids.1, expired_value.clone(), Cloud::Global),
                    500011 => (ids.0, ids.1, stack.new_app_secret(), Cloud::UsGovernment),
                    7000229 => (
                        ids.0,
                        no_sp.client_id.clone(),
                        SecretString::from(no_sp.secrets[0].value.expose()),
                        Cloud::Global,
                    ),
                    7000112 => (
                        ids.0,
                        disabled.client_id.clone(),
                        SecretString::from(disabled.secrets[0].value.expose()),
                        Cloud::Global,
                    ),
                    _ => {
                        match code {
                            50196 => stack.entra.controls().throttle_next(1, 7),
                            90006 => stack.entra.controls().fail_next(1, 503, None),
                            _ => stack.entra.controls().fail_next(1, 500, None),
                        }
                        (ids.0, ids.1, stack.new_app_secret(), Cloud::Global)
                    }
                };
                let source = via_source(tenant, client, secret, cloud).await;
                let status = get_token(&mut grpc, &source).await.unwrap_err();
                // Asked again at once: remembered, not asked again.
                let again = get_token(&mut grpc, &source).await.unwrap_err();
                assert_eq!(again.code(), status.code(), "AADSTS{code}");
                assert_eq!(
                    stack.entra.total_requests(),
                    before + 1,
                    "AADSTS{code}: one request"
                );
                status
            }
            900144 | 70011 | 1002012 => {
                let (client_id, scope) = match code {
                    900144 => ("", good_scope),
                    70011 => (
                        stack.client_id.as_str(),
                        "https://outlook.office365.com/.default openid",
                    ),
                    _ => (
                        stack.client_id.as_str(),
                        "https://outlook.office365.com/IMAP.AccessAsApp",
                    ),
                };
                let error = entra
                    .request_token(&TokenRequest {
                        authority: &authority,
                        tenant: &stack.tenant_id,
                        client_id,
                        secret: &stack.secret,
                        scope,
                    })
                    .await
                    .unwrap_err();
                if code == 1002012 {
                    // BR-09: named, and not to be retried in a loop.
                    assert!(error.diagnosis().contains(scope));
                    assert_eq!(
                        threatmail_token_broker::cache::policy::FetchFailure::retry(&error),
                        threatmail_token_broker::cache::policy::Retry::Permanent
                    );
                }
                as_status(error)
            }
            70003 | 900561 => {
                let url = threatmail_token_broker::entra::token_url(&authority, &stack.tenant_id);
                let response = if code == 70003 {
                    raw.post(url)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!(
                            "grant_type=password&client_id={}&scope=x%2F.default",
                            stack.client_id
                        ))
                        .send()
                        .await
                        .unwrap()
                } else {
                    raw.get(url).send().await.unwrap()
                };
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap();
                let context = RequestContext {
                    tenant: &stack.tenant_id,
                    client_id: &stack.client_id,
                    scope: good_scope,
                };
                as_status(EntraError::classify(context, status, None, &body))
            }
            other => {
                let _ = expected(other);
                unreachable!()
            }
        };
        check(code, &status);
        assert_eq!(
            status.code() == Code::Unavailable,
            row.status >= 429,
            "AADSTS{code}"
        );
    }
}
