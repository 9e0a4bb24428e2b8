//! The logs of a whole run, captured at TRACE for every crate, contain neither a secret nor
//! a token nor a credential.

#![allow(clippy::unwrap_used)]

#[path = "support/stack.rs"]
mod stack;

use std::io::Write;
use std::sync::{Arc, Mutex};

use secrecy::{ExposeSecret as _, SecretString};
use stack::{Stack, force_token, get_token, text};
use threatmail_auth::{RedisApiKeys, Role, RoleSet};
use threatmail_proto::v1::{Cloud, TestCredentialsRequest};

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_logs_no_secret_token_or_credential() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::FULL)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let stack = Stack::start().await;
    let broker = stack.broker(stack.config()).await;
    let mut client = stack.client(&broker).await;
    let next = stack.new_app_secret();
    let source = stack
        .add_source_with(&stack.secret.clone(), |record, keyring| {
            record
                .set_secret(keyring, threatmail_source::SecretSlot::Next, &next, None)
                .unwrap();
        })
        .await;
    let wrong_secret = SecretString::from("wrong-secret-value-5678");
    let wrong = stack.add_source_with(&wrong_secret, |_, _| {}).await;
    let mut tokens = Vec::new();
    tokens.push(get_token(&mut client, &source).await.unwrap().access_token);
    tokens.push(
        force_token(&mut client, &source)
            .await
            .unwrap()
            .access_token,
    );
    let _ = get_token(&mut client, &wrong).await.unwrap_err();
    stack.entra.controls().throttle_next(1, 1);
    let throttled = stack
        .add_source_with(&stack.new_app_secret(), |_, _| {})
        .await;
    let _ = get_token(&mut client, &throttled).await.unwrap_err();
    for secret in [text(&stack.secret), "draft-wrong-secret-9012"] {
        let reply = client
            .test_credentials(TestCredentialsRequest {
                tenant_id: stack.tenant_id.clone(),
                client_id: stack.client_id.clone(),
                client_secret: secret.to_owned(),
                cloud: Cloud::Global.into(),
                object_id: String::new(),
            })
            .await
            .unwrap()
            .into_inner();
        if reply.ok {
            tokens.push(reply.access_token);
        }
    }
    let keys = RedisApiKeys::new(stack.redis.connection_manager().await.unwrap());
    let api_key = keys
        .create("ops", RoleSet::of(&[Role::Admin]), 0)
        .await
        .unwrap();
    let mut person = stack
        .client_with(&broker, api_key.key.expose_secret())
        .await;
    let _ = get_token(&mut person, &source).await.unwrap_err();
    broker.shutdown.cancel();
    broker.task.await.unwrap().unwrap();

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("got a new token from entra"),
        "the capture works"
    );
    assert!(logs.contains("entra refused a token request"));
    assert_eq!(tokens.len(), 3);
    let mut needles: Vec<(&str, String)> = vec![
        ("current secret", text(&stack.secret).to_owned()),
        ("next secret", text(&next).to_owned()),
        ("wrong secret", text(&wrong_secret).to_owned()),
        ("draft secret", "draft-wrong-secret-9012".to_owned()),
        ("service credential", stack.fetcher.expose().to_owned()),
        ("API key", api_key.key.expose_secret().to_owned()),
        (
            "master key",
            text(&stack.master_key)
                .split_once(':')
                .unwrap()
                .1
                .to_owned(),
        ),
    ];
    for token in &tokens {
        needles.push(("token", token.clone()));
        needles.push(("token payload", token.split('.').nth(1).unwrap().to_owned()));
        needles.push((
            "token signature",
            token.split('.').nth(2).unwrap().to_owned(),
        ));
    }
    for (what, needle) in needles {
        assert!(!logs.contains(&needle), "the {what} is in the logs");
    }
}
