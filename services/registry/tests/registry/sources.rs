//! Sources over gRPC: create, read, list, update with optimistic concurrency, unique names,
//! delete, all problems of a form at once; health and shutdown.

use prost::Message as _;
use threatmail_proto::v1 as pb;
use threatmail_testkit::tenant::TenantFixture;
use tonic::Code;

use crate::harness::{Harness, reason};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_list_update_delete() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut client = harness.client(&harness.admin).await?;
    let spec = pb::SourceSpec {
        secret_expires: "2026-12-31".to_owned(),
        tags: vec!["phishing".to_owned()],
        ..harness.spec()
    };
    let created = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(spec.clone()),
        })
        .await?
        .into_inner();
    assert_eq!(created.version, 1);
    assert!(created.secret_set && !created.next_secret_set);
    let stored = created.spec.clone().expect("spec");
    assert_eq!(stored.secret_key, "");
    assert_eq!(stored.secret_expires, "2026-12-31T00:00:00Z");
    assert_eq!(stored.tls, Some(true));
    assert_eq!(stored.poll_interval_seconds, 300);

    let got = client
        .get_source(pb::GetSourceRequest {
            id: created.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(got, created);

    // The same name in another case is taken.
    let clash = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                name: "PHISHING REPORTS".to_owned(),
                ..spec.clone()
            }),
        })
        .await
        .expect_err("name taken");
    assert_eq!(clash.code(), Code::AlreadyExists);
    assert_eq!(reason(&clash), "registry.name_taken");

    let second = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                name: "Advisories".to_owned(),
                ..spec.clone()
            }),
        })
        .await?
        .into_inner();
    let listed = client
        .list_sources(pb::ListSourcesRequest {})
        .await?
        .into_inner();
    let names: Vec<String> = listed
        .sources
        .iter()
        .map(|s| s.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default())
        .collect();
    assert_eq!(names, ["Advisories", "Phishing reports"]);

    // Update: read, change, write back; the empty secret keeps the stored one.
    let mut change = stored.clone();
    change.poll_interval_seconds = 60;
    change.enabled = Some(false);
    let updated = client
        .update_source(pb::UpdateSourceRequest {
            id: created.id.clone(),
            expected_version: 1,
            spec: Some(change.clone()),
            clear_next_secret: false,
        })
        .await?
        .into_inner();
    assert_eq!(updated.version, 2);
    assert!(updated.secret_set);
    let spec2 = updated.spec.expect("spec");
    assert_eq!(
        (spec2.poll_interval_seconds, spec2.enabled),
        (60, Some(false))
    );

    // A stale version is refused and tells the caller to read again.
    let stale = client
        .update_source(pb::UpdateSourceRequest {
            id: created.id.clone(),
            expected_version: 1,
            spec: Some(change),
            clear_next_secret: false,
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);
    assert!(
        stale.message().contains("changed since you read it"),
        "{}",
        stale.message()
    );
    assert!(stale.message().contains("retry"));

    assert!(
        client
            .delete_source(pb::DeleteSourceRequest {
                id: second.id.clone()
            })
            .await?
            .into_inner()
            .deleted
    );
    let gone = client
        .get_source(pb::GetSourceRequest { id: second.id })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    assert_eq!(
        client
            .list_sources(pb::ListSourcesRequest {})
            .await?
            .into_inner()
            .sources
            .len(),
        1
    );
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_form_gets_every_problem_in_the_status_details() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut client = harness.client(&harness.admin).await?;
    let status = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                name: String::new(),
                app_id: "not-a-guid".to_owned(),
                tenant_id: "organizations".to_owned(),
                email: "soc-phish".to_owned(),
                secret_key: String::new(),
                poll_interval_seconds: 1,
                ..harness.spec()
            }),
        })
        .await
        .expect_err("invalid");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(reason(&status), "registry.invalid_source");
    let details = pb::ValidationProblems::decode(status.details())?;
    let fields: Vec<&str> = details.problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "name",
            "email",
            "secret_key",
            "app_id",
            "tenant_id",
            "poll_interval_seconds"
        ]
    );
    assert!(
        client
            .list_sources(pb::ListSourcesRequest {})
            .await?
            .into_inner()
            .sources
            .is_empty()
    );
    harness.stop().await
}

/// A name that is another source's id is refused, at creation and at an update: commands
/// take a source by id or by name, so `source rm` could otherwise remove the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_sources_id_is_not_a_name() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut client = harness.client(&harness.admin).await?;
    let first = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(harness.spec()),
        })
        .await?
        .into_inner();
    let named = |name: &str| pb::SourceSpec {
        name: name.to_owned(),
        ..harness.spec()
    };
    let refused = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(named(&first.id)),
        })
        .await
        .expect_err("another source's id");
    assert_eq!(refused.code(), Code::InvalidArgument);
    let details = pb::ValidationProblems::decode(refused.details())?;
    assert_eq!(details.problems[0].field, "name", "{details:?}");
    assert!(
        details.problems[0].message.contains(&first.id),
        "{details:?}"
    );

    let second = client
        .create_source(pb::CreateSourceRequest {
            spec: Some(named("Second")),
        })
        .await?
        .into_inner();
    let refused = client
        .update_source(pb::UpdateSourceRequest {
            id: second.id.clone(),
            expected_version: second.version,
            spec: Some(named(&first.id)),
            ..Default::default()
        })
        .await
        .expect_err("another source's id");
    assert_eq!(refused.code(), Code::InvalidArgument);
    // A source may keep its own id as its name.
    client
        .update_source(pb::UpdateSourceRequest {
            id: second.id.clone(),
            expected_version: second.version,
            spec: Some(named(&second.id)),
            ..Default::default()
        })
        .await?;
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_updates_one_wins_the_other_retries_and_nothing_is_lost()
-> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let client = harness.client(&harness.admin).await?;
    let created = client
        .clone()
        .create_source(pb::CreateSourceRequest {
            spec: Some(harness.spec()),
        })
        .await?
        .into_inner();
    let read = created.spec.clone().expect("spec");
    let update = |spec: pb::SourceSpec, version: u64| {
        let mut client = client.clone();
        let id = created.id.clone();
        async move {
            client
                .update_source(pb::UpdateSourceRequest {
                    id,
                    expected_version: version,
                    spec: Some(spec),
                    clear_next_secret: false,
                })
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let with_tags = pb::SourceSpec {
        tags: vec!["vendor".to_owned()],
        ..read.clone()
    };
    let with_poll = pb::SourceSpec {
        poll_interval_seconds: 120,
        ..read.clone()
    };
    let (a, b) = tokio::join!(update(with_tags, 1), update(with_poll, 1));
    let (winner, loser, loser_was_tags) = match (a, b) {
        (Ok(w), Err(l)) => (w, l, false),
        (Err(l), Ok(w)) => (w, l, true),
        other => panic!("exactly one update must win: {other:?}"),
    };
    assert_eq!(winner.version, 2);
    assert_eq!(loser.code(), Code::Aborted);
    assert_eq!(reason(&loser), "registry.version_conflict");
    assert!(loser.message().contains("read it again and retry"));

    // The loser does what it is told: read again, reapply, write.
    let mut client = client.clone();
    let again = client
        .get_source(pb::GetSourceRequest {
            id: created.id.clone(),
        })
        .await?
        .into_inner();
    let mut spec = again.spec.expect("spec");
    if loser_was_tags {
        spec.tags = vec!["vendor".to_owned()];
    } else {
        spec.poll_interval_seconds = 120;
    }
    let last = update(spec, again.version).await?;
    let last_spec = last.spec.expect("spec");
    assert_eq!(last.version, 3);
    assert_eq!(last_spec.tags, ["vendor"]);
    assert_eq!(last_spec.poll_interval_seconds, 120);
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_health_and_stops_on_shutdown() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let config = harness.registry_config();
    threatmail_testkit::grpc::assert_serves_health_and_stops(|listener, shutdown| {
        threatmail_registry::run(config, listener, shutdown)
    })
    .await?;
    harness.stop().await
}
