//! Logging in: a refused XOAUTH2 login gets one forced token refresh and one retry; a
//! second refusal is shown in the folder's status with the DESIGN §1 checklist, and the
//! folder recovers by itself once the setup is fixed. A refusal costs one login (and its
//! retry) per round, however many folders the source has.

use threatmail_source::{ConnectionState, FolderStatus};
use threatmail_testkit::exchange_proxy::{Fault, Script, When};
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

use crate::harness::{Harness, report};

const FOLDER: &str = "Phish Reports";

fn fixture() -> TenantFixture {
    let mut fixture = TenantFixture::everything_right();
    *fixture
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .expect("mailbox") =
        Mailbox::new(PHISH_MAILBOX).with_messages(FOLDER, (1..=3).map(report).collect());
    fixture
}

/// Every field of the registry's view equals what the fetcher wrote.
fn assert_shown(written: &FolderStatus, shown: &threatmail_proto::v1::FolderStatus) {
    assert_eq!(shown.last_poll, written.last_poll.unwrap_or_default());
    assert_eq!(shown.uidvalidity, written.uidvalidity.unwrap_or_default());
    assert_eq!(shown.last_uid, written.last_uid.unwrap_or_default());
    assert_eq!(shown.messages_synced, written.messages_synced);
    assert_eq!(shown.retry_count, written.retry_count);
    assert_eq!(shown.connection_state, written.connection_state.as_str());
    match (&written.last_error, &shown.last_error) {
        (None, None) => assert!(shown.last_error_checklist.is_empty()),
        (Some(error), Some(problem)) => {
            assert_eq!(problem.reason, error.reason);
            assert_eq!(problem.message, error.message);
            assert_eq!(problem.upstream_code, error.upstream_code);
            assert_eq!(shown.last_error_checklist, error.checklist);
            assert_eq!(shown.last_error_at, error.at);
        }
        other => panic!("last error differs: {other:?}"),
    }
}

fn token_requests(harness: &Harness) -> u64 {
    let (tenant, app) = harness.stack.tenant().read(|f| {
        (
            f.primary_tenant().map(|t| t.id.clone()).unwrap_or_default(),
            f.primary_app()
                .map(|a| a.client_id.clone())
                .unwrap_or_default(),
        )
    });
    harness.stack.entra.request_count(&tenant, &app)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_retried_once_with_a_forced_refresh() -> anyhow::Result<()> {
    let mut harness = Harness::start(fixture()).await?;
    // Exchange's answer to a token it does not take, once.
    let proxy = harness
        .stack
        .exchange_proxy(
            Script::passthrough().rule(
                When::command("AUTHENTICATE")
                    .then(Fault::Respond {
                        lines: vec!["{tag} NO AUTHENTICATE failed.".to_owned()],
                        close: false,
                    })
                    .once(),
            ),
        )
        .await?;
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, proxy.addr(), &[FOLDER])
        .await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;

    let synced = harness
        .wait_status("the sync after the retry", &id, FOLDER, |s| {
            s.last_uid == Some(3) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert_eq!(proxy.control().script().rules()[0].fired(), 1);
    assert_eq!(
        (synced.retry_count, &synced.last_error),
        (0, &None),
        "{synced:?}"
    );
    assert_eq!(harness.store.count(&id).await?, 3);
    // One token for the first login, one forced refresh for the retry; then the cache.
    assert_eq!(token_requests(&harness), 2);
    harness.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_refused_twice_shows_the_checklist_until_the_setup_is_fixed() -> anyhow::Result<()>
{
    let mut no_grant = fixture();
    let oid = no_grant
        .primary_app()
        .map(|a| a.service_principal_object_id.clone())
        .unwrap_or_default();
    no_grant
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .remove_mailbox_permission(PHISH_MAILBOX, &oid);
    let mut harness = Harness::start(no_grant).await?;
    let dovecot = harness.stack.dovecot.imaps_addr();
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, dovecot, &[FOLDER])
        .await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;

    let failed = harness
        .wait_status("the refusal in the status", &id, FOLDER, |s| {
            s.connection_state == ConnectionState::Failed
        })
        .await?;
    let error = failed.last_error.clone().expect("last error");
    assert_eq!(error.reason, "imap.authenticate_failed", "{error:?}");
    assert_eq!(error.upstream_code, "NO AUTHENTICATE failed.");
    assert!(error.message.contains(PHISH_MAILBOX), "{}", error.message);
    assert_eq!(error.checklist.len(), 4, "{:?}", error.checklist);
    assert!(error.checklist[0].contains("service principal"));
    assert!(error.checklist[1].contains("FullAccess"));
    assert!(error.at > 0);
    assert!(failed.retry_count >= 1);
    assert_eq!(
        (failed.last_poll, failed.last_uid, failed.messages_synced),
        (None, None, 0)
    );
    assert!(
        token_requests(&harness) >= 2,
        "the retry used a forced refresh"
    );
    // The registry's GetStatus shows exactly what the fetcher wrote.
    let registry = harness.registry().await?;
    let (written, shown) = harness
        .shown_status(&registry, &id, FOLDER, |s| {
            s.connection_state == ConnectionState::Failed
        })
        .await?;
    assert_shown(&written, &shown);
    assert_eq!(shown.connection_state, "failed");
    assert_eq!(shown.last_error_checklist.len(), 4);
    assert_eq!(harness.store.count(&id).await?, 0);

    // The administrator grants FullAccess: the folder recovers at a following retry.
    harness.stack.tenant().update(|f| {
        f.primary_tenant_mut()
            .expect("tenant")
            .exchange
            .add_full_access(PHISH_MAILBOX, &oid)
    });
    tokio::task::block_in_place(|| harness.stack.apply_tenant())?;
    let recovered = harness
        .wait_status("the sync once granted", &id, FOLDER, |s| {
            s.last_uid == Some(3) && s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert_eq!((recovered.retry_count, &recovered.last_error), (0, &None));
    assert_eq!(recovered.messages_synced, 3);
    let (written, shown) = harness
        .shown_status(&registry, &id, FOLDER, |s| {
            s.connection_state == ConnectionState::Idle
        })
        .await?;
    assert_shown(&written, &shown);
    assert_eq!(
        (shown.last_uid, shown.messages_synced, shown.retry_count),
        (3, 3, 0)
    );
    assert!(shown.last_error.is_none() && shown.last_poll > 0);
    harness.stop().await
}

/// A refused login is the source's, not a folder's: the round's other folders get the same
/// failure without logging in again, so Exchange sees one refused login and its retry per
/// round however many folders are selected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_tried_once_per_round_not_once_per_folder() -> anyhow::Result<()> {
    const FOLDERS: [&str; 3] = ["Phish Reports", "Vendor Advisories", "Feeds"];
    let mut three = TenantFixture::everything_right();
    let mailbox = FOLDERS
        .iter()
        .fold(Mailbox::new(PHISH_MAILBOX), |m, folder| {
            m.with_messages(folder, (1..=2).map(report).collect())
        });
    *three
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .expect("mailbox") = mailbox;
    let mut harness = Harness::start(three).await?;
    let proxy = harness
        .stack
        .exchange_proxy(
            Script::passthrough().rule(When::command("AUTHENTICATE").then(Fault::Respond {
                lines: vec!["{tag} NO AUTHENTICATE failed.".to_owned()],
                close: false,
            })),
        )
        .await?;
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, proxy.addr(), &FOLDERS)
        .await?;
    let mut config = harness.fetcher_config("fetcher-a");
    // One round in this test's time: the back-off after it is longer than the test.
    config.sync.retry_min = std::time::Duration::from_secs(120);
    config.sync.retry_max = std::time::Duration::from_secs(120);
    harness.spawn_fetcher(config).await?;

    for folder in FOLDERS {
        let failed = harness
            .wait_status("the refusal in every folder", &id, folder, |s| {
                s.connection_state == ConnectionState::Failed
            })
            .await?;
        let error = failed.last_error.expect("last error");
        assert_eq!(
            error.reason, "imap.authenticate_failed",
            "{folder}: {error:?}"
        );
        assert_eq!(error.checklist.len(), 4, "{folder}");
        assert_eq!(failed.retry_count, 1, "{folder}");
    }
    assert_eq!(
        proxy.control().script().rules()[0].fired(),
        2,
        "one login and its retry with a forced refresh, for three folders"
    );
    harness.stop().await
}

/// A `password` source logs in with LOGIN, its password opened with the master key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_source_logs_in_with_login() -> anyhow::Result<()> {
    let mailbox = "analyst@other.example";
    let mut harness = Harness::start(TenantFixture::everything_right()).await?;
    harness
        .stack
        .dovecot
        .set_password(mailbox, "correct horse")?;
    harness
        .stack
        .dovecot
        .append(mailbox, "INBOX", &[report(1), report(2)])
        .await?;
    let id = threatmail_source::SourceId::new_random();
    let mut record =
        threatmail_source::SourceRecord::new_oauth(id.clone(), "Other server", mailbox, "", "", 0);
    record.auth_type = threatmail_source::record::AuthType::Password;
    record.set_secret(
        &harness.keyring,
        threatmail_source::SecretSlot::Current,
        &secrecy::SecretString::from("correct horse".to_owned()),
        None,
    )?;
    let dovecot = harness.stack.dovecot.imaps_addr();
    record.host = Some(dovecot.ip().to_string());
    record.port = dovecot.port();
    record.poll_interval_secs = 0;
    let stored = harness.sources.create(&record).await?;
    harness.select(&id, stored.version, &["INBOX"], &[]).await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;
    harness
        .wait_status("the password source to sync", &id, "INBOX", |s| {
            s.last_uid == Some(2)
        })
        .await?;
    assert_eq!(harness.store.count(&id).await?, 2);

    // The password changed on the server: LOGIN refused, no token refresh to try.
    harness
        .stack
        .dovecot
        .set_password(mailbox, "battery staple")?;
    harness
        .stack
        .dovecot
        .append(mailbox, "INBOX", &[report(3)])
        .await?;
    let failed = harness
        .wait_status("the refusal", &id, "INBOX", |s| {
            s.connection_state == ConnectionState::Failed
        })
        .await?;
    let error = failed.last_error.expect("last error");
    assert_eq!(error.reason, "imap.authenticate_failed");
    assert_eq!(error.upstream_code, "LOGIN");
    assert!(error.checklist.is_empty(), "{error:?}");
    assert!(error.message.contains(mailbox), "{}", error.message);
    assert_eq!(harness.store.count(&id).await?, 2);
    harness.stop().await
}

/// A secret Entra ID refuses: the folder's status names the fault and carries Entra's own
/// code (AADSTS7000215), as Save and Continue does, and no session is opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_shows_entras_code_in_the_status() -> anyhow::Result<()> {
    let mut harness = Harness::start(fixture()).await?;
    let dovecot = harness.stack.dovecot.imaps_addr();
    let id = harness
        .add_source("Phishing reports", PHISH_MAILBOX, dovecot, &[FOLDER])
        .await?;
    let mut record = harness.sources.get(&id).await?.expect("source");
    record.set_secret(
        &harness.keyring,
        threatmail_source::SecretSlot::Current,
        &secrecy::SecretString::from("not-the-secret".to_owned()),
        None,
    )?;
    let version = record.version;
    harness.sources.update(&record, version).await?;
    let config = harness.fetcher_config("fetcher-a");
    harness.spawn_fetcher(config).await?;
    // What the fetcher wrote, and the registry's GetStatus showing exactly that.
    let registry = harness.registry().await?;
    let (failed, shown) = harness
        .shown_status(&registry, &id, FOLDER, |s| {
            s.connection_state == ConnectionState::Failed
        })
        .await?;
    let error = failed.last_error.clone().expect("last error");
    assert_eq!(
        (error.reason.as_str(), error.upstream_code.as_str()),
        ("entra.secret_wrong", "AADSTS7000215"),
        "{error:?}"
    );
    assert_shown(&failed, &shown);
    assert_eq!(harness.store.count(&id).await?, 0);
    harness.stop().await
}
