//! Folders of stored sources, live: the token from the broker with the registry's service
//! credential, the login and LIST through the fetcher; choosing folders by display name
//! (BR-04: the server's non-canonical raw name kept byte for byte); per-folder status and
//! expiring secrets.

use prost::Message as _;
use threatmail_proto::v1 as pb;
use threatmail_source::{ConnectionState, FolderError, FolderStatus, SourceId, SourceStore};
use threatmail_testkit::exchange_proxy::{Fault, Script, When};
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture, sample_message};
use tonic::Code;

use crate::harness::{Client, Harness, reason};

fn with_phish_reports() -> TenantFixture {
    let mut fixture = TenantFixture::everything_right();
    let exchange = &mut fixture.primary_tenant_mut().expect("tenant").exchange;
    *exchange.mailbox_mut(PHISH_MAILBOX).expect("mailbox") = Mailbox::new(PHISH_MAILBOX)
        .with_messages("INBOX", vec![sample_message(1)])
        .with_messages("Phish Reports", vec![sample_message(2)])
        .with_messages("Phish Reports/2026", vec![sample_message(3)]);
    fixture
}

/// The stack with the fixture's folders, an admin client and the fixture's source, created.
async fn with_a_source() -> anyhow::Result<(Harness, Client, pb::Source)> {
    let harness = Harness::start(with_phish_reports()).await?;
    let mut admin = harness.client(&harness.admin).await?;
    let source = admin
        .create_source(pb::CreateSourceRequest {
            spec: Some(harness.spec()),
        })
        .await?
        .into_inner();
    Ok((harness, admin, source))
}

fn names(folders: &[pb::Folder]) -> Vec<String> {
    let mut out = Vec::new();
    for folder in folders {
        out.push(folder.display_name.clone());
        out.extend(names(&folder.children));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn folders_are_listed_live_and_chosen_by_name() -> anyhow::Result<()> {
    let (harness, mut admin, source) = with_a_source().await?;
    let listed = admin
        .list_folders(pb::ListSourceFoldersRequest {
            id: source.id.clone(),
        })
        .await?
        .into_inner();
    let all = names(&listed.folders);
    for wanted in ["INBOX", "Phish Reports", "Phish Reports/2026"] {
        assert!(all.iter().any(|n| n == wanted), "{wanted} not in {all:?}");
    }

    let chosen = admin
        .set_folders(pb::SetFoldersRequest {
            id: source.id.clone(),
            expected_version: source.version,
            folders: vec![
                pb::FolderSelection {
                    raw_name: Vec::new(),
                    display_name: "Phish Reports".to_owned(),
                    fetch: true,
                },
                pb::FolderSelection {
                    raw_name: Vec::new(),
                    display_name: "inbox".to_owned(),
                    fetch: false,
                },
            ],
        })
        .await?
        .into_inner();
    assert_eq!(chosen.version, source.version + 1);
    let selected: Vec<(Vec<u8>, bool)> = chosen
        .folders
        .iter()
        .map(|f| (f.raw_name.clone(), f.fetch))
        .collect();
    assert_eq!(
        selected,
        [
            (b"Phish Reports".to_vec(), true),
            (b"INBOX".to_vec(), false)
        ]
    );

    // A stale version, and a folder the server does not have, are refused.
    let stale = admin
        .set_folders(pb::SetFoldersRequest {
            id: source.id.clone(),
            expected_version: source.version,
            folders: Vec::new(),
        })
        .await
        .expect_err("stale");
    assert_eq!(stale.code(), Code::Aborted);
    let unknown = admin
        .set_folders(pb::SetFoldersRequest {
            id: source.id.clone(),
            expected_version: chosen.version,
            folders: vec![pb::FolderSelection {
                raw_name: Vec::new(),
                display_name: "Spam".to_owned(),
                fetch: true,
            }],
        })
        .await
        .expect_err("no such folder");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    let details = pb::ValidationProblems::decode(unknown.details())?;
    assert_eq!(details.problems[0].reason, "validation.folder_not_found");
    assert!(details.problems[0].message.contains("Phish Reports/2026"));

    // A refused login is diagnosed (not the caller's Unauthenticated).
    let oid = harness.app().service_principal_object_id;
    harness.change_tenant(|f| {
        f.primary_tenant_mut()
            .expect("tenant")
            .exchange
            .remove_mailbox_permission(PHISH_MAILBOX, &oid)
    })?;
    let refused = admin
        .list_folders(pb::ListSourceFoldersRequest {
            id: source.id.clone(),
        })
        .await
        .expect_err("no FullAccess");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "imap.authenticate_failed");
    assert!(
        refused.message().contains("(2) Setup step 5"),
        "{}",
        refused.message()
    );
    assert!(refused.message().contains("Add-MailboxPermission"));
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_sources_list_their_folders_with_the_stored_password() -> anyhow::Result<()> {
    let harness = Harness::start(with_phish_reports()).await?;
    let password = "Another-pass-42";
    {
        let dovecot = &harness.stack.dovecot;
        tokio::task::block_in_place(|| dovecot.set_password(PHISH_MAILBOX, password))?;
    }
    let mut admin = harness.client(&harness.admin).await?;
    let source = admin
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                auth_type: pb::AuthType::Password as i32,
                secret_key: password.to_owned(),
                app_id: String::new(),
                tenant_id: String::new(),
                ..harness.spec()
            }),
        })
        .await?
        .into_inner();
    let listed = admin
        .list_folders(pb::ListSourceFoldersRequest { id: source.id })
        .await?
        .into_inner();
    assert!(names(&listed.folders).contains(&"Phish Reports/2026".to_owned()));
    harness.stop().await
}

/// BR-04 at the registry: the server lists a folder in a non-canonical modified UTF-7
/// (`&` inside the base64 run); a folder configured as "Фишинг&Спам" matches it and the
/// server's raw bytes are what is stored for commands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br04_a_configured_folder_matches_the_servers_non_canonical_name() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let listing = vec![
        r#"* LIST (\HasNoChildren) "|" "&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-""#.to_owned(),
        r#"* LIST (\HasChildren) "/" "&BBIERQQ+BDQETwRJBDgENQ-""#.to_owned(),
        r#"* LIST (\HasNoChildren) "/" "&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-""#.to_owned(),
        r#"* LIST (\HasNoChildren) "/" "R&-D""#.to_owned(),
        "{tag} OK LIST completed.".to_owned(),
    ];
    let proxy = harness
        .stack
        .exchange_proxy(
            Script::exchange().rule(When::command("LIST").then(Fault::Respond {
                lines: listing,
                close: false,
            })),
        )
        .await?;
    let mut admin = harness.client(&harness.admin).await?;
    let source = admin
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                host: "127.0.0.1".to_owned(),
                port: u32::from(proxy.addr().port()),
                ..harness.spec()
            }),
        })
        .await?
        .into_inner();
    let listed = admin
        .list_folders(pb::ListSourceFoldersRequest {
            id: source.id.clone(),
        })
        .await?
        .into_inner();
    let mut shown = names(&listed.folders);
    shown.sort();
    assert_eq!(shown, ["R&D", "Входящие", "Входящие/Фишинг", "Фишинг&Спам"]);
    let phishing = listed
        .folders
        .iter()
        .find(|f| f.display_name == "Фишинг&Спам")
        .expect("listed");
    assert_eq!(phishing.raw_name, b"&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-");

    let chosen = admin
        .set_folders(pb::SetFoldersRequest {
            id: source.id.clone(),
            expected_version: source.version,
            folders: vec![
                pb::FolderSelection {
                    raw_name: Vec::new(),
                    display_name: "Фишинг&Спам".to_owned(),
                    fetch: true,
                },
                pb::FolderSelection {
                    raw_name: Vec::new(),
                    display_name: "Входящие/Фишинг".to_owned(),
                    fetch: true,
                },
            ],
        })
        .await?
        .into_inner();
    let stored = admin
        .get_source(pb::GetSourceRequest {
            id: source.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(stored.folders, chosen.folders);
    assert_eq!(
        stored.folders[0].raw_name, b"&BCQEOARIBDgEPQQzACYEIQQ,BDAEPA-",
        "the server's bytes, not the canonical &BCQEOARIBDgEPQQz-&-&BCEEPwQwBDw-"
    );
    assert_eq!(stored.folders[0].display_name, "Фишинг&Спам");
    assert_eq!(
        stored.folders[1].raw_name,
        b"&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-"
    );
    drop(proxy);
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_serves_each_folders_fields_and_expiring_secrets() -> anyhow::Result<()> {
    let harness = Harness::start(with_phish_reports()).await?;
    let mut admin = harness.client(&harness.admin).await?;
    let soon =
        threatmail_registry::spec::format_time(threatmail_registry::spec::now_secs() + 10 * 86_400);
    let source = admin
        .create_source(pb::CreateSourceRequest {
            spec: Some(pb::SourceSpec {
                secret_expires: soon,
                ..harness.spec()
            }),
        })
        .await?
        .into_inner();
    let source = admin
        .set_folders(pb::SetFoldersRequest {
            id: source.id.clone(),
            expected_version: source.version,
            folders: vec![
                pb::FolderSelection {
                    raw_name: b"INBOX".to_vec(),
                    display_name: String::new(),
                    fetch: true,
                },
                pb::FolderSelection {
                    raw_name: b"Phish Reports".to_vec(),
                    display_name: String::new(),
                    fetch: true,
                },
            ],
        })
        .await?
        .into_inner();
    let fresh = admin
        .get_status(pb::GetStatusRequest {
            id: source.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(fresh.folders.len(), 2);
    assert!(
        fresh
            .folders
            .iter()
            .all(|f| f.connection_state == "unknown" && f.last_poll == 0)
    );
    assert_eq!(fresh.warnings[0].reason, "source.secret_expiring");
    assert_eq!(fresh.expiring_secrets[0].slot, "current");
    assert!(!fresh.expiring_secrets[0].expired);

    // What a fetcher writes (the fetcher issue fills these).
    let store = SourceStore::new(harness.stack.redis.connection_manager().await?);
    let id = SourceId::parse(&source.id)?;
    store
        .write_folder_status(
            &id,
            &FolderStatus {
                raw_name: "Phish Reports".to_owned(),
                last_poll: Some(1_767_225_600),
                uidvalidity: Some(12),
                last_uid: Some(40),
                messages_synced: 38,
                messages_skipped: 2,
                last_error: Some(FolderError {
                    reason: "imap.authenticate_failed".to_owned(),
                    message: "Exchange refused the login".to_owned(),
                    upstream_code: "NO AUTHENTICATE failed.".to_owned(),
                    checklist: vec!["service principal".to_owned(), "FullAccess".to_owned()],
                    at: 1_767_225_601,
                }),
                retry_count: 2,
                connection_state: ConnectionState::Retrying,
                updated_at: Some(1_767_225_601),
            },
        )
        .await?;
    let status = admin
        .get_status(pb::GetStatusRequest { id: source.id })
        .await?
        .into_inner();
    let reports = &status.folders[1];
    assert_eq!(reports.display_name, "Phish Reports");
    assert_eq!(
        (reports.last_poll, reports.uidvalidity, reports.last_uid),
        (1_767_225_600, 12, 40)
    );
    assert_eq!((reports.messages_synced, reports.retry_count), (38, 2));
    assert_eq!(reports.messages_skipped, 2);
    assert_eq!(reports.connection_state, "retrying");
    let error = reports.last_error.as_ref().expect("last error");
    assert_eq!(error.reason, "imap.authenticate_failed");
    assert_eq!(reports.last_error_checklist.len(), 2);
    assert_eq!(reports.last_error_at, 1_767_225_601);
    assert_eq!(status.folders[0].connection_state, "unknown");
    harness.stop().await
}

/// A secret fixed by an update is used at once: the broker keeps an opened source for a few
/// seconds, and the registry tells it the source changed, so the fixed secret is not
/// reported wrong for those seconds more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_secret_is_used_at_once() -> anyhow::Result<()> {
    let (harness, mut admin, source) = with_a_source().await?;
    let good = harness.spec();
    let list = |id: String| pb::ListSourceFoldersRequest { id };
    admin.list_folders(list(source.id.clone())).await?;

    // A wrong secret saved untested: the folders cannot be listed, and the broker has
    // opened the source with it.
    let wrong = admin
        .update_source(pb::UpdateSourceRequest {
            id: source.id.clone(),
            expected_version: source.version,
            spec: Some(pb::SourceSpec {
                secret_key: "not-the-secret".to_owned(),
                ..good.clone()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let refused = admin
        .list_folders(list(source.id.clone()))
        .await
        .expect_err("a wrong secret");
    assert_eq!(reason(&refused), "entra.secret_wrong");

    // The right one again: the very next listing works.
    admin
        .update_source(pb::UpdateSourceRequest {
            id: source.id.clone(),
            expected_version: wrong.version,
            spec: Some(good),
            ..Default::default()
        })
        .await?;
    let listed = admin
        .list_folders(list(source.id.clone()))
        .await?
        .into_inner();
    assert!(names(&listed.folders).iter().any(|n| n == "INBOX"));
    harness.stop().await
}

/// With no fetcher reporting as running, the status of an enabled source with selected
/// folders says that nothing syncs, and names the last fetcher that stopped; a running one
/// clears it, and a disabled source has nothing to sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_when_no_fetcher_is_running() -> anyhow::Result<()> {
    // This harness's fetcher serves ListFolders only (no Redis), so it reports nothing.
    let (harness, mut admin, source) = with_a_source().await?;
    let status = |admin: &mut Client| {
        let request = pb::GetStatusRequest {
            id: source.id.clone(),
        };
        let mut admin = admin.clone();
        async move { anyhow::Ok(admin.get_status(request).await?.into_inner()) }
    };
    let no_fetcher = |status: &pb::SourceStatus| {
        status
            .warnings
            .iter()
            .find(|w| w.reason == "fetcher.none_running")
            .map(|w| w.message.clone())
    };
    // Nothing selected: nothing to sync, nothing to warn about.
    assert_eq!(no_fetcher(&status(&mut admin).await?), None);

    let source = admin
        .set_folders(pb::SetFoldersRequest {
            id: source.id.clone(),
            expected_version: source.version,
            folders: vec![pb::FolderSelection {
                raw_name: b"INBOX".to_vec(),
                display_name: String::new(),
                fetch: true,
            }],
        })
        .await?
        .into_inner();
    let message = no_fetcher(&status(&mut admin).await?).expect("the warning");
    assert!(message.contains("none has reported"), "{message}");
    assert!(
        message.contains("threatmail serve --target fetcher"),
        "{message}"
    );

    let fleet = SourceStore::new(harness.stack.redis.connection_manager().await?);
    fleet
        .report_fetcher("fetcher-7", std::time::Duration::from_secs(60))
        .await?;
    assert_eq!(no_fetcher(&status(&mut admin).await?), None);

    fleet.report_fetcher_stopped("fetcher-7").await?;
    let message = no_fetcher(&status(&mut admin).await?).expect("the warning");
    assert!(
        message.contains("\"fetcher-7\", stopped reporting at"),
        "{message}"
    );

    admin
        .update_source(pb::UpdateSourceRequest {
            id: source.id.clone(),
            expected_version: source.version,
            spec: Some(pb::SourceSpec {
                enabled: Some(false),
                ..harness.spec()
            }),
            ..Default::default()
        })
        .await?;
    assert_eq!(no_fetcher(&status(&mut admin).await?), None);
    harness.stop().await
}

/// Save and Continue of a second source on a mailbox another source already reads warns
/// that its mail would be stored twice; the stored source tested again does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_source_on_the_same_mailbox_is_warned_about() -> anyhow::Result<()> {
    let (harness, mut admin, first) = with_a_source().await?;
    let warned = |reply: &pb::TestSourceResponse| {
        reply
            .warnings
            .iter()
            .find(|w| w.reason == "source.mailbox_already_a_source")
            .map(|w| w.message.clone())
    };
    let again = admin
        .test_source(pb::TestSourceRequest {
            spec: Some(pb::SourceSpec {
                name: "Phishing reports, again".to_owned(),
                email: harness.spec().email.to_uppercase(),
                ..harness.spec()
            }),
            ..Default::default()
        })
        .await?
        .into_inner();
    let message = warned(&again).expect("the warning");
    assert!(message.contains(&first.id), "{message}");
    assert!(again.problems.is_empty(), "a warning only: {again:?}");

    let itself = admin
        .test_source(pb::TestSourceRequest {
            source_id: first.id.clone(),
            spec: Some(harness.spec()),
        })
        .await?
        .into_inner();
    assert_eq!(warned(&itself), None, "{itself:?}");
    harness.stop().await
}
