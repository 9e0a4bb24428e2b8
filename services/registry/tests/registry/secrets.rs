//! Secrets at rest and in flight: sealed under a master key with a key id (rotation keeps
//! old records readable and reseals them on update), never in Redis in clear (every key
//! scanned), never in a reply, never in a log line.

use secrecy::ExposeSecret as _;
use threatmail_proto::v1 as pb;
use threatmail_source::MasterKey;
use threatmail_testkit::tenant::{PHISH_MAILBOX, TenantFixture, generate_secret_value};

use crate::harness::{Harness, logs};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_redis_in_replies_or_in_logs() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut admin = harness.client(&harness.admin).await?;
    let oauth_spec = harness.spec();
    let secret = oauth_spec.secret_key.clone();
    let next = generate_secret_value().expose().to_owned();
    let password = "Pass-phrase-9a7".to_owned();
    {
        let dovecot = &harness.stack.dovecot;
        tokio::task::block_in_place(|| dovecot.set_password(PHISH_MAILBOX, &password))?;
    }
    let mut replies: Vec<String> = Vec::new();

    let oauth = admin
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                next_secret_key: next.clone(),
                ..oauth_spec.clone()
            }),
        })
        .await?
        .into_inner();
    replies.push(format!("{oauth:?}"));
    let password_source = admin
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                name: "Vendor feed".to_owned(),
                auth_type: pb::AuthType::Password as i32,
                secret_key: password.clone(),
                app_id: String::new(),
                tenant_id: String::new(),
                ..oauth_spec.clone()
            }),
        })
        .await?
        .into_inner();
    replies.push(format!("{password_source:?}"));
    for id in [&oauth.id, &password_source.id] {
        let got = admin
            .get_source(pb::GetSourceRequest { id: id.clone() })
            .await?
            .into_inner();
        assert!(got.secret_set);
        replies.push(format!("{got:?}"));
        let folders = admin
            .list_folders(pb::ListSourceFoldersRequest { id: id.clone() })
            .await?
            .into_inner();
        assert!(folders.folders.iter().any(|f| f.display_name == "INBOX"));
        replies.push(format!("{folders:?}"));
        let status = admin
            .get_status(pb::GetStatusRequest { id: id.clone() })
            .await?
            .into_inner();
        replies.push(format!("{status:?}"));
        let tested = admin
            .test_source(pb::TestSourceRequest {
                spec: Some(pb::SourceSpec {
                    secret_key: String::new(),
                    next_secret_key: String::new(),
                    ..got.spec.clone().expect("spec")
                }),
                source_id: id.clone(),
            })
            .await?
            .into_inner();
        assert!(tested.ok, "{:?}", tested.problems);
        replies.push(format!("{tested:?}"));
    }
    replies.push(format!(
        "{:?}",
        admin
            .list_sources(pb::ListSourcesRequest {})
            .await?
            .into_inner()
    ));
    // A failing test and a failing list too (their diagnoses name the setup, not secrets).
    let refused = admin
        .test_source(pb::TestSourceRequest {
            spec: Some(pb::SourceSpec {
                email: "nobody@corp.example".to_owned(),
                ..oauth_spec.clone()
            }),
            source_id: String::new(),
        })
        .await?
        .into_inner();
    assert!(!refused.ok);
    replies.push(format!("{refused:?}"));
    let made = admin
        .create_api_key(pb::CreateApiKeyRequest {
            label: "ci".to_owned(),
            roles: vec![pb::Role::View as i32],
        })
        .await?
        .into_inner();

    let secrets = [
        ("client secret", secret.as_str()),
        ("next secret", next.as_str()),
        ("password", password.as_str()),
        ("API key", made.key.as_str()),
        ("admin API key", harness.admin.as_str()),
        ("registry credential", harness.registry_credential.expose()),
        ("master key", harness.master_key.expose_secret()),
    ];
    for reply in &replies {
        for (what, value) in &secrets[..3] {
            assert!(!reply.contains(value), "a reply holds the {what}: {reply}");
        }
        assert!(!reply.contains("eyJ"), "a reply holds a token: {reply}");
    }

    let dump = harness.redis_dump().await?;
    assert!(
        dump.keys()
            .any(|k| k == &format!("tm:{{{}}}:source", oauth.id)),
        "{:?}",
        dump.keys()
    );
    for (key, value) in &dump {
        for (what, secret) in secrets {
            // The master key's base64 part alone, too.
            let needle = secret.split_once(':').map_or(secret, |(_, b64)| b64);
            assert!(
                !value.contains(needle) && !key.contains(needle),
                "redis key {key} holds the {what} in clear"
            );
        }
        assert!(
            !value.contains("eyJ"),
            "redis key {key} holds a token in clear"
        );
    }

    let text = logs().text();
    assert!(text.contains("source tested"), "the logs were not captured");
    for (what, secret) in secrets {
        let needle = secret.split_once(':').map_or(secret, |(_, b64)| b64);
        assert!(!text.contains(needle), "the logs hold the {what}");
    }
    assert!(!text.contains("eyJ"), "the logs hold a token");
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_sealed_under_an_old_key_opens_and_is_resealed_on_update() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut old_registry = harness.client(&harness.admin).await?;
    let created = old_registry
        .create_source(pb::CreateSourceRequest {
            spec: Some(harness.spec()),
        })
        .await?
        .into_inner();
    let key_id = |dump: &std::collections::BTreeMap<String, String>| {
        let record = dump
            .get(&format!("tm:{{{}}}:source", created.id))
            .cloned()
            .unwrap_or_default();
        record
            .split("tmenc1.")
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .map(str::to_owned)
    };
    assert_eq!(key_id(&harness.redis_dump().await?).as_deref(), Some("k1"));

    // The key rotates: a new primary, the old one kept for opening.
    let mut config = harness.registry_config();
    config.master_key.key = Some(MasterKey::generate("k2")?.to_line());
    config.master_key.previous_keys = vec![harness.master_key.clone()];
    let rotated_addr = harness.spawn_registry(config).await?;
    let mut rotated = harness.client_of(rotated_addr, &harness.admin).await?;

    let read = rotated
        .get_source(pb::GetSourceRequest {
            id: created.id.clone(),
        })
        .await?
        .into_inner();
    let spec = read.spec.clone().expect("spec");
    let reuse = pb::TestSourceRequest {
        spec: Some(spec.clone()),
        source_id: created.id.clone(),
    };
    let tested = rotated.test_source(reuse.clone()).await?.into_inner();
    assert!(
        tested.ok,
        "the old key's secret opens: {:?}",
        tested.problems
    );

    let updated = rotated
        .update_source(pb::UpdateSourceRequest {
            id: created.id.clone(),
            expected_version: read.version,
            spec: Some(pb::SourceSpec {
                poll_interval_seconds: 600,
                ..spec
            }),
            clear_next_secret: false,
        })
        .await?
        .into_inner();
    assert!(updated.secret_set);
    assert_eq!(
        key_id(&harness.redis_dump().await?).as_deref(),
        Some("k2"),
        "resealed under the new primary"
    );
    let tested = rotated.test_source(reuse.clone()).await?.into_inner();
    assert!(tested.ok, "{:?}", tested.problems);
    // A registry without the new key cannot open it, and says which key is missing.
    let status = old_registry
        .test_source(reuse)
        .await
        .expect_err("k2 unknown to the old registry");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("k2"), "{}", status.message());
    harness.stop().await
}
