//! Folder sync from the real Dovecot into a real store (Redis + a blob directory), with a
//! stand-in token over TLS and XOAUTH2.

use std::time::Duration;

use secrecy::SecretString;
use threatmail_fetcher::imap::Session;
use threatmail_fetcher::imap::connect::{Endpoint, connect, tls_config};
use threatmail_fetcher::imap::login::{Credentials, login};
use threatmail_fetcher::imap::select_folder::Access;
use threatmail_fetcher::sync::{SyncContext, SyncError, SyncLimits, sync_folder};
use threatmail_source::SourceId;
use threatmail_store::{BlobStore, Store};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

const FOLDER: &str = "Phish Reports";
const LIMIT: Duration = Duration::from_secs(10);

fn report(n: usize) -> Vec<u8> {
    format!(
        "From: user{n}@corp.example\r\nTo: soc-phish@corp.example\r\nSubject: suspicious mail {n}\r\nDate: Mon, 1 Dec 2026 10:{:02}:00 +0000\r\nMessage-ID: <report-{n}@corp.example>\r\n\r\nPlease look at https://login-{n}.example.com/reset and 203.0.113.{}\r\n",
        n % 60,
        n % 250
    )
    .into_bytes()
}

struct Harness {
    stack: LocalStack,
    store: Store,
    source_id: SourceId,
    limits: SyncLimits,
    _blobs: tempfile::TempDir,
}

impl Harness {
    async fn start(messages: Vec<Vec<u8>>) -> anyhow::Result<Harness> {
        let mut fixture = TenantFixture::everything_right();
        *fixture
            .primary_tenant_mut()
            .expect("tenant")
            .exchange
            .mailbox_mut(PHISH_MAILBOX)
            .expect("mailbox") = Mailbox::new(PHISH_MAILBOX).with_messages(FOLDER, messages);
        let stack = LocalStack::start(fixture).await?;
        let blobs = tempfile::tempdir()?;
        let store = Store::new(
            stack.redis.connection_manager().await?,
            BlobStore::directory(blobs.path()),
        );
        Ok(Harness {
            stack,
            store,
            source_id: SourceId::new_random(),
            limits: SyncLimits {
                batch_messages: 4,
                lease_ttl: Duration::from_secs(5),
                ..SyncLimits::default()
            },
            _blobs: blobs,
        })
    }

    async fn session(&self) -> anyhow::Result<Session> {
        let token = self.stack.primary_token().await?.access_token;
        let endpoint = Endpoint {
            host: "localhost".to_owned(),
            port: self.stack.dovecot.imaps_addr().port(),
            tls: true,
        };
        let ca = std::fs::read(self.stack.ca_cert_path())?;
        let client = connect(
            &endpoint,
            tls_config(Some(&ca)).map_err(anyhow::Error::msg)?,
            LIMIT,
        )
        .await?;
        let credentials = Credentials::XOAuth2 {
            user: PHISH_MAILBOX.to_owned(),
            token: SecretString::from(token),
        };
        Ok(login(client, &credentials, "dovecot", LIMIT).await?)
    }

    fn context(&self) -> SyncContext<'_> {
        SyncContext {
            server: "dovecot",
            user: PHISH_MAILBOX,
            store: &self.store,
            source_id: &self.source_id,
            access: Access::ReadOnly,
            limits: &self.limits,
            holds: None,
        }
    }

    async fn sync(
        &self,
        session: &mut Session,
        owner: &str,
    ) -> anyhow::Result<threatmail_fetcher::sync::SyncReport> {
        let lease = self
            .store
            .acquire_lease(&self.source_id, FOLDER, owner, self.limits.lease_ttl)
            .await?
            .expect("the lease is free");
        let report = sync_folder(session, self.context(), FOLDER, &lease).await?;
        self.store.release_lease(&lease).await?;
        Ok(report)
    }
}

#[tokio::test]
async fn first_sync_then_nothing_then_exactly_the_new_mail() -> anyhow::Result<()> {
    let harness = Harness::start((1..=10).map(report).collect()).await?;
    let mut session = harness.session().await?;

    let first = harness.sync(&mut session, "fetcher-a").await?;
    assert_eq!((first.stored, first.last_uid), (10, 10), "{first:?}");
    assert_eq!(harness.store.count(&harness.source_id).await?, 10);

    let again = harness.sync(&mut session, "fetcher-a").await?;
    assert_eq!(
        again.stored + again.locations_added + again.already_stored,
        0,
        "a poll with nothing new stores nothing: {again:?}"
    );

    harness
        .stack
        .dovecot
        .append(
            PHISH_MAILBOX,
            FOLDER,
            &(11..=20).map(report).collect::<Vec<_>>(),
        )
        .await?;
    let more = harness.sync(&mut session, "fetcher-a").await?;
    assert_eq!((more.stored, more.last_uid), (10, 20), "{more:?}");
    assert_eq!(harness.store.count(&harness.source_id).await?, 20);
    Ok(())
}

/// Case BR-06: the folder is rebuilt (new UIDVALIDITY) with the same messages plus one.
#[tokio::test]
async fn a_uidvalidity_change_adds_exactly_the_one_new_message() -> anyhow::Result<()> {
    let harness = Harness::start((1..=6).map(report).collect()).await?;
    let mut session = harness.session().await?;
    let first = harness.sync(&mut session, "fetcher-a").await?;
    assert_eq!(first.stored, 6);

    // Dovecot ends a session whose selected folder is deleted; rebuild from another one.
    let mut admin = harness.session().await?;
    admin.delete(FOLDER).await?;
    let mut session = harness.session().await?;
    harness
        .stack
        .dovecot
        .append(
            PHISH_MAILBOX,
            FOLDER,
            &(1..=7).map(report).collect::<Vec<_>>(),
        )
        .await?;
    let rebuilt = harness.sync(&mut session, "fetcher-a").await?;
    assert!(
        rebuilt.uidvalidity_changed,
        "Dovecot gave the recreated folder a new UIDVALIDITY: {rebuilt:?}"
    );
    assert_eq!(
        rebuilt.stored, 1,
        "only the new message is new: {rebuilt:?}"
    );
    assert_eq!(rebuilt.last_uid, 7);
    assert_eq!(harness.store.count(&harness.source_id).await?, 7);
    Ok(())
}

/// A fetcher that lost its lease (it stalled; another took over) commits nothing.
#[tokio::test]
async fn a_lost_lease_commits_nothing() -> anyhow::Result<()> {
    let harness = Harness::start((1..=3).map(report).collect()).await?;
    let mut session = harness.session().await?;
    let short = Duration::from_millis(200);
    let stale = harness
        .store
        .acquire_lease(&harness.source_id, FOLDER, "fetcher-a", short)
        .await?
        .expect("free");
    let taken =
        threatmail_testkit::net::wait_for("the lease to lapse", Duration::from_secs(5), || {
            let store = harness.store.clone();
            let source = harness.source_id.clone();
            async move {
                store
                    .acquire_lease(&source, FOLDER, "fetcher-b", Duration::from_secs(5))
                    .await
                    .ok()
                    .flatten()
            }
        })
        .await?;
    assert!(taken.token > stale.token);
    let error = sync_folder(&mut session, harness.context(), FOLDER, &stale)
        .await
        .expect_err("stale fence");
    assert!(matches!(error, SyncError::LeaseLost { .. }), "{error:?}");
    assert_eq!(
        harness.store.count(&harness.source_id).await?,
        0,
        "nothing was committed"
    );
    let by_holder = sync_folder(&mut session, harness.context(), FOLDER, &taken).await?;
    assert_eq!(by_holder.stored, 3);
    Ok(())
}

/// A checkpoint belongs to the mailbox it was made on: when the source logs in to another
/// mailbox or server (its address was corrected), the folder syncs from its first UID
/// instead of skipping the new mailbox's messages up to the old checkpoint, even where the
/// two folders share a UIDVALIDITY (here: the same folder reached under another server
/// name, so its UIDVALIDITY is the same by construction). Nothing is stored twice.
#[tokio::test]
async fn a_checkpoint_of_another_mailbox_is_not_used() -> anyhow::Result<()> {
    let harness = Harness::start((1..=6).map(report).collect()).await?;
    let mut session = harness.session().await?;
    let first = harness.sync(&mut session, "fetcher-a").await?;
    assert_eq!((first.stored, first.last_uid), (6, 6), "{first:?}");

    let sync_as = |server: &'static str| {
        let harness = &harness;
        async move {
            let lease = harness
                .store
                .acquire_lease(
                    &harness.source_id,
                    FOLDER,
                    "fetcher-a",
                    harness.limits.lease_ttl,
                )
                .await?
                .expect("the lease is free");
            let context = SyncContext {
                server,
                ..harness.context()
            };
            let mut session = harness.session().await?;
            let report = sync_folder(&mut session, context, FOLDER, &lease).await?;
            harness.store.release_lease(&lease).await?;
            anyhow::Ok(report)
        }
    };
    let moved = sync_as("other-server").await?;
    assert!(!moved.uidvalidity_changed, "{moved:?}");
    assert_eq!(
        (
            moved.stored,
            moved.already_stored + moved.locations_added,
            moved.last_uid
        ),
        (0, 6, 6),
        "every message read again from UID 1, none stored twice: {moved:?}"
    );
    let again = sync_as("other-server").await?;
    assert_eq!(
        again.stored + again.locations_added + again.already_stored,
        0,
        "the new mailbox's checkpoint holds: {again:?}"
    );
    assert_eq!(harness.store.count(&harness.source_id).await?, 6);
    Ok(())
}
