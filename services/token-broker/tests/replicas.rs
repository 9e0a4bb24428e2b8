//! Two brokers sharing one Redis: one Entra request per key for 200 concurrent callers, one
//! more after the refresh point, and a dead lock holder does not block the other.

#![allow(clippy::unwrap_used)]

#[path = "support/stack.rs"]
mod stack;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use stack::{Stack, eventually, get_token};

const LIFETIME: Duration = Duration::from_secs(6);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_brokers_200_callers_one_request_then_one_more_after_the_refresh_point() {
    let stack = Stack::start().await;
    stack.entra.controls().set_token_lifetime(LIFETIME);
    let a = stack.broker(stack.config()).await;
    let b = stack.broker(stack.config()).await;
    let source = stack.add_source().await;
    let clients = [stack.client(&a).await, stack.client(&b).await];

    let burst = |round: &'static str| {
        let mut calls = Vec::new();
        for i in 0..200 {
            let mut client = clients[i % 2].clone();
            let source = source.clone();
            calls.push(tokio::spawn(async move {
                get_token(&mut client, &source)
                    .await
                    .unwrap_or_else(|status| panic!("{round}: {status:?}"))
            }));
        }
        calls
    };

    let mut tokens = Vec::new();
    for call in burst("first") {
        tokens.push(call.await.unwrap());
    }
    assert_eq!(stack.requests(), 1, "200 callers, 2 brokers: one request");
    assert!(
        tokens
            .iter()
            .all(|t| t.access_token == tokens[0].access_token)
    );
    assert_eq!(tokens.iter().filter(|t| !t.from_cache).count(), 1);
    let first = tokens[0].clone();
    assert!(first.claims.as_ref().unwrap().decoded);
    assert!(first.warnings.is_empty(), "{:?}", first.warnings);

    // Wait for the refresh point the stand-in's lifetime sets (half of it), then a margin.
    let expires_at = UNIX_EPOCH + Duration::from_secs(u64::try_from(first.expires_at).unwrap() + 1);
    let refresh_at = expires_at - LIFETIME / 2 + Duration::from_millis(300);
    if let Ok(wait) = refresh_at.duration_since(SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    for call in burst("after the refresh point") {
        let token = call.await.unwrap();
        assert!(token.from_cache, "callers never wait for the refresh");
    }
    assert!(
        eventually(Duration::from_secs(3), || stack.requests() >= 2).await,
        "one refresh after the refresh point"
    );
    // Both brokers converge on the new token without asking again.
    for client in &clients {
        let mut client = client.clone();
        let mut newest = None;
        for _ in 0..100 {
            let token = get_token(&mut client, &source).await.unwrap();
            if token.access_token != first.access_token {
                newest = Some(token);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(newest.unwrap().expires_at > first.expires_at);
    }
    assert_eq!(stack.requests(), 2, "exactly one more request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_while_holding_the_refresh_lock_does_not_block_the_other() {
    let stack = Stack::start().await;
    let a = stack.broker(stack.config()).await;
    let b = stack.broker(stack.config()).await;
    let source = stack.add_source().await;
    let mut client_a = stack.client(&a).await;
    let mut client_b = stack.client(&b).await;

    // A's request hangs at the stand-in while A holds the lock.
    stack
        .entra
        .controls()
        .set_response_delay(Duration::from_secs(60));
    let held = {
        let source = source.clone();
        tokio::spawn(async move { get_token(&mut client_a, &source).await })
    };
    assert!(eventually(Duration::from_secs(5), || stack.requests() == 1).await);
    let mut redis = stack.redis.connection_manager().await.unwrap();
    let locks: Vec<String> = redis::cmd("KEYS")
        .arg("tm:token:*:lock")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(locks.len(), 1, "A holds the refresh lock");

    // Kill A: its server task is aborted mid-request, so the lock stays behind.
    a.task.abort();
    assert!(held.await.unwrap().is_err(), "A's caller got no token");
    let still: Vec<String> = redis::cmd("KEYS")
        .arg("tm:token:*:lock")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(still, locks, "the dead broker's lock is still there");

    stack.entra.controls().set_response_delay(Duration::ZERO);
    let started = tokio::time::Instant::now();
    let token = get_token(&mut client_b, &source).await.unwrap();
    assert!(!token.from_cache);
    assert_eq!(stack.requests(), 2, "B asked once the lock had expired");
    assert!(
        started.elapsed() < stack.config().cache.lock_ttl + Duration::from_secs(2),
        "B waited no longer than the lock's expiry allows"
    );
    b.shutdown.cancel();
    b.task.await.unwrap().unwrap();
}
