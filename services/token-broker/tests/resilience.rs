//! The broker against Entra trouble and setup faults, end to end over gRPC: outages while a
//! cached token is valid, `Retry-After`, remembered permanent errors and changed
//! credentials, the consent and Object ID diagnosis, secret rollover, callers' permissions,
//! BR-09's configuration check, and no secret or token in Redis.

#![allow(clippy::unwrap_used)]

#[path = "support/stack.rs"]
mod stack;

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use stack::{Stack, force_token, get_token, reason, text};
use threatmail_auth::{RedisApiKeys, Role, RoleSet};
use threatmail_proto::v1::{Cloud, InvalidateRequest, TestCredentialsRequest};
use threatmail_source::{SecretSlot, SourceStore, store};
use threatmail_testkit::tenant::ClientSecret;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entra_answering_503_or_down_while_a_cached_token_is_valid_still_hands_it_out() {
    let mut stack = Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let source = stack.add_source().await;
    let first = get_token(&mut client, &source).await.unwrap();

    // 503: a forced refresh fails, the valid cached token is handed out with a warning.
    stack.entra.controls().fail_next(3, 503, None);
    let served = force_token(&mut client, &source).await.unwrap();
    assert_eq!(served.access_token, first.access_token);
    assert!(served.from_cache);
    assert_eq!(served.warnings[0].reason, "broker.served_cached_token");
    assert_eq!(served.warnings[0].upstream_code, "AADSTS90006");
    assert_eq!(stack.requests(), 2);
    // Normal calls keep getting it.
    assert_eq!(
        get_token(&mut client, &source).await.unwrap().access_token,
        first.access_token
    );

    // Stand-in gone (connection refused).
    let port = stack.entra.addr().port();
    let replacement =
        threatmail_testkit::entra::EntraStandIn::start(&stack.ca, stack.tenant.clone())
            .await
            .unwrap();
    drop(std::mem::replace(&mut stack.entra, replacement));
    let mut closed = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the stand-in stopped listening");
    // Until the 503's back-off passes the remembered 503 is reported; then the refused
    // connection. Either way the cached token is handed out.
    let mut unreachable = false;
    for _ in 0..100 {
        let served = force_token(&mut client, &source).await.unwrap();
        assert_eq!(served.access_token, first.access_token);
        assert!(served.from_cache);
        assert_eq!(served.warnings[0].reason, "broker.served_cached_token");
        if served.warnings[0].message.contains("could not reach") {
            unreachable = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unreachable, "the refused connection was reported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_keeps_every_request_away_until_it_has_passed() {
    const RETRY_AFTER: u32 = 2;
    let stack = Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let source = stack.add_source().await;
    stack.entra.controls().throttle_next(1, RETRY_AFTER);

    let sent = tokio::time::Instant::now();
    let status = get_token(&mut client, &source).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(reason(&status), "entra.throttled");
    assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
    assert_eq!(stack.requests(), 1);
    // Callers keep asking; the stand-in sees nothing until Retry-After has passed since the
    // request was sent (the 429 came after that, so this bound is safe).
    let until = sent + Duration::from_secs(u64::from(RETRY_AFTER));
    let token = loop {
        let asked = tokio::time::Instant::now();
        match get_token(&mut client, &source).await {
            Ok(token) => break token,
            Err(status) => {
                assert_eq!(reason(&status), "entra.throttled");
                if tokio::time::Instant::now() < until {
                    assert_eq!(stack.requests(), 1, "a request reached the stand-in early");
                }
                assert!(asked.duration_since(sent) < Duration::from_secs(10));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(tokio::time::Instant::now() >= until);
    assert!(!token.from_cache);
    assert_eq!(stack.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_remembered_and_a_changed_secret_is_tried_at_once() {
    let stack = Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let wrong = SecretString::from("00000000-secret-id-pasted-instead");
    let source = stack.add_source_with(&wrong, |_, _| {}).await;
    for _ in 0..5 {
        let status = get_token(&mut client, &source).await.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(reason(&status), "entra.secret_wrong");
        assert!(status.message().contains("Secret ID"));
        let retry: u64 = status
            .metadata()
            .get("retry-after")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((20..=40).contains(&retry), "retried slowly: {retry} s");
    }
    assert_eq!(stack.requests(), 1, "never retried in a loop");

    // The user enters the right secret: a new fingerprint, asked at once.
    let sources = SourceStore::new(stack.redis.connection_manager().await.unwrap());
    let mut record = sources.get(&source).await.unwrap().unwrap();
    record
        .set_secret(&stack.keyring, SecretSlot::Current, &stack.secret, None)
        .unwrap();
    let mut conn = stack.redis.connection_manager().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(store::source_key(&source))
        .arg(store::VERSION_FIELD)
        .arg(record.version + 1)
        .arg(store::RECORD_FIELD)
        .arg(store::encode(&record))
        .query_async(&mut conn)
        .await
        .unwrap();
    let token = get_token(&mut client, &source).await.unwrap();
    assert!(!token.from_cache);
    assert_eq!(stack.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_without_the_imap_role_is_diagnosed_as_missing_consent_and_oid_is_compared() {
    let stack = Stack::start().await;
    stack
        .tenant
        .update(|f| f.primary_app_mut().unwrap().admin_consent = false);
    let (app_object_id, sp_object_id) = stack.tenant.read(|f| {
        let app = f.primary_app().unwrap();
        (
            app.object_id.clone(),
            app.service_principal_object_id.clone(),
        )
    });
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;

    // GetToken hands the token out with the diagnosis, before any IMAP login.
    let source = stack.add_source().await;
    let token = get_token(&mut client, &source).await.unwrap();
    let claims = token.claims.unwrap();
    assert!(claims.decoded && claims.roles.is_empty());
    assert_eq!(claims.object_id, sp_object_id);
    assert_eq!(token.warnings.len(), 1);
    assert_eq!(token.warnings[0].reason, "token.imap_consent_missing");
    assert!(
        token.warnings[0]
            .message
            .starts_with("admin consent for IMAP.AccessAsApp missing")
    );

    // "Save and Continue" with the app registration's object id entered: both problems.
    let reply = client
        .test_credentials(TestCredentialsRequest {
            tenant_id: stack.tenant_id.clone(),
            client_id: stack.client_id.clone(),
            client_secret: text(&stack.secret).to_owned(),
            cloud: Cloud::Global.into(),
            object_id: app_object_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.ok);
    let reasons: Vec<&str> = reply.problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["token.imap_consent_missing", "token.object_id_mismatch"]
    );
    assert!(reply.problems[1].message.contains(&sp_object_id));
    assert!(
        reply.problems[1]
            .message
            .contains("Enterprise application's Object ID")
    );
    assert_eq!(reply.claims.unwrap().object_id, sp_object_id);

    // Consent granted, the right object id: all good, and nothing was cached by the test.
    stack
        .tenant
        .update(|f| f.primary_app_mut().unwrap().admin_consent = true);
    let mut conn = stack.redis.connection_manager().await.unwrap();
    let before: Vec<String> = redis::cmd("KEYS")
        .arg("tm:token:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    let reply = client
        .test_credentials(TestCredentialsRequest {
            tenant_id: stack.tenant_id.clone(),
            client_id: stack.client_id.clone(),
            client_secret: text(&stack.secret).to_owned(),
            cloud: Cloud::Global.into(),
            object_id: sp_object_id,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.ok, "{:?}", reply.problems);
    assert!(!reply.access_token.is_empty());
    let after: Vec<String> = redis::cmd("KEYS")
        .arg("tm:token:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(before, after, "TestCredentials caches nothing");

    // A wrong secret in the draft is a problem in the reply, not an RPC failure.
    let reply = client
        .test_credentials(TestCredentialsRequest {
            tenant_id: stack.tenant_id.clone(),
            client_id: stack.client_id.clone(),
            client_secret: "wrong".into(),
            cloud: Cloud::Global.into(),
            object_id: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.ok);
    assert_eq!(reply.problems[0].reason, "entra.secret_wrong");
    assert_eq!(reply.problems[0].upstream_code, "AADSTS7000215");
    assert!(reply.access_token.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_current_secret_rolls_over_to_the_next_and_says_so() {
    let stack = Stack::start().await;
    let expired = ClientSecret::expired();
    let expired_value = SecretString::from(expired.value.expose());
    stack
        .tenant
        .update(|f| f.primary_app_mut().unwrap().secrets.push(expired));
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let in_ten_days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 10 * 86_400;
    let next = stack.secret.clone();
    let source = stack
        .add_source_with(&expired_value, |record, keyring| {
            record
                .set_secret(keyring, SecretSlot::Next, &next, Some(in_ten_days))
                .unwrap();
        })
        .await;
    for round in 0..3 {
        let token = get_token(&mut client, &source).await.unwrap();
        let reasons: Vec<&str> = token.warnings.iter().map(|w| w.reason.as_str()).collect();
        assert_eq!(
            reasons,
            ["source.secret_rolled_over", "source.secret_expiring"],
            "round {round}"
        );
        assert!(
            token.warnings[0]
                .message
                .contains("current client secret has expired")
        );
        assert!(
            token.warnings[1]
                .message
                .contains("next client secret expires")
        );
    }
    assert_eq!(
        stack.requests(),
        2,
        "one refusal of the expired secret, one token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_services_get_tokens() {
    use secrecy::ExposeSecret as _;

    let stack = Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let source = stack.add_source().await;
    let keys = RedisApiKeys::new(stack.redis.connection_manager().await.unwrap());
    let admin = keys
        .create("ops", RoleSet::of(&[Role::Admin]), 0)
        .await
        .unwrap();
    let viewer = keys
        .create("analyst", RoleSet::of(&[Role::View]), 0)
        .await
        .unwrap();

    let mut anonymous = threatmail_proto::v1::token_broker_client::TokenBrokerClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", broker.addr))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let status = anonymous
        .get_token(threatmail_proto::v1::GetTokenRequest {
            source_id: source.to_string(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut person = stack.client_with(&broker, admin.key.expose_secret()).await;
    let status = get_token(&mut person, &source).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(reason(&status), "auth.permission_denied");
    let status = person
        .test_credentials(TestCredentialsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // People with Update may invalidate; viewers may not.
    let removed = person
        .invalidate(InvalidateRequest {
            source_id: source.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!removed.removed);
    let mut viewer = stack.client_with(&broker, viewer.key.expose_secret()).await;
    let status = viewer
        .invalidate(InvalidateRequest {
            source_id: source.to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let mut fetcher = stack.client(&broker).await;
    let token = get_token(&mut fetcher, &source).await.unwrap();
    assert!(!token.access_token.is_empty());
    // Invalidate: the next call asks Entra.
    let removed = fetcher
        .invalidate(InvalidateRequest {
            source_id: source.to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(removed.removed);
    assert!(!get_token(&mut fetcher, &source).await.unwrap().from_cache);
    assert_eq!(stack.requests(), 2);
    // Unknown and malformed sources.
    let status = get_token(&mut fetcher, &threatmail_source::SourceId::new_random())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = fetcher
        .get_token(threatmail_proto::v1::GetTokenRequest {
            source_id: "a}b".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// BR-09: a configured scope that is not Exchange Online's `/.default` is refused at load,
/// naming it; the broker only ever sends the right one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br_09_wrong_scopes_are_refused_when_the_configuration_loads() {
    let stack = Stack::start().await;
    let base = |extra: &[(&str, &str)]| {
        let mut env: BTreeMap<String, String> = [
            ("THREATMAIL_REDIS_URL", stack.redis.url()),
            (
                "THREATMAIL_MASTER_KEY__KEY",
                text(&stack.master_key).to_owned(),
            ),
            ("THREATMAIL_AUTH__SERVICES__FETCHER", stack.fetcher.hash()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        threatmail_runtime::load_config::<threatmail_token_broker::Config>(None, &env)
    };
    base(&[]).unwrap();
    for scope in [
        "https://outlook.office365.com/IMAP.AccessAsApp",
        "https://graph.microsoft.com/.default",
    ] {
        let error = base(&[("THREATMAIL_ENTRA__GLOBAL__SCOPE", scope)]).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("entra.global.scope") && text.contains(scope),
            "{text}"
        );
        assert!(
            text.contains("https://outlook.office365.com/.default"),
            "{text}"
        );
    }
    let error = base(&[
        (
            "THREATMAIL_ENTRA__GLOBAL__AUTHORITY",
            "http://login.microsoftonline.com",
        ),
        (
            "THREATMAIL_ENTRA__CHINA__SCOPE",
            "https://outlook.office365.com/.default",
        ),
    ])
    .unwrap_err();
    assert_eq!(error.problems.len(), 2, "{error}");
    assert!(error.to_string().contains("must be https://"));

    // The scope sent is the Exchange one: the token's audience says so.
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let source = stack.add_source().await;
    let token = get_token(&mut client, &source).await.unwrap();
    assert_eq!(
        token.claims.unwrap().audience,
        "https://outlook.office365.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_or_token_is_stored_in_clear_in_redis() {
    let stack = Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let next = stack.new_app_secret();
    let source = stack
        .add_source_with(&stack.secret.clone(), |record, keyring| {
            record
                .set_secret(keyring, SecretSlot::Next, &next, None)
                .unwrap();
        })
        .await;
    let wrong = stack
        .add_source_with(&SecretString::from("wrong-secret-value-1234"), |_, _| {})
        .await;
    let token = get_token(&mut client, &source).await.unwrap();
    let forced = force_token(&mut client, &source).await.unwrap();
    let _ = get_token(&mut client, &wrong).await.unwrap_err();

    let mut conn = stack.redis.connection_manager().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.starts_with("tm:token:")), "{keys:?}");
    let mut everything = String::new();
    for key in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<String> = match kind.as_str() {
            "string" => vec![
                redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap(),
            ],
            "hash" => redis::cmd("HVALS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            "set" => redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            other => panic!("unexpected {other} at {key}"),
        };
        everything.push_str(key);
        for value in values {
            everything.push_str(&value);
        }
    }
    for (what, needle) in [
        ("current secret", text(&stack.secret)),
        ("next secret", text(&next)),
        ("wrong secret", "wrong-secret-value-1234"),
        ("token", token.access_token.as_str()),
        ("forced token", forced.access_token.as_str()),
        (
            "token payload",
            token.access_token.split('.').nth(1).unwrap(),
        ),
    ] {
        assert!(
            !everything.contains(needle),
            "the {what} is in redis in clear"
        );
    }
}

/// When Redis drops the broker's connection (as when it restarts), the next token request
/// still gets the cached token: the cache's first read on the dead connection is read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_request_survives_a_dropped_redis_connection() {
    let stack = Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let source = stack.add_source().await;
    let first = get_token(&mut client, &source).await.unwrap();
    let mut admin = stack
        .redis
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut admin)
        .await
        .unwrap();
    assert!(killed >= 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = get_token(&mut client, &source).await.unwrap();
    assert_eq!(again.access_token, first.access_token);
    assert!(again.from_cache);
    assert_eq!(stack.requests(), 1, "no new token was asked of Entra");
}
