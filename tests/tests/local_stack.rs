//! The local stack as the demo and every later scenario use it: the tenant fixture applied
//! to the Entra stand-in and Dovecot, real mail seeded, a token fetched over HTTPS and used
//! for `AUTHENTICATE XOAUTH2` over TLS. (Each setup step done wrong is covered one level
//! down, in `libs/testkit/tests/xoauth2.rs`.)

use std::path::PathBuf;

use threatmail_testkit::imap::{LoginOutcome, folder_counts, login_xoauth2};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{INTEL_MAILBOX, Mailbox, PHISH_MAILBOX, TenantFixture};

/// The real phishing corpus beside the checkout; under CI it must be there.
fn corpus() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpus/phishing");
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but the corpus is missing at {}",
        dir.display()
    );
    eprintln!(
        "note: {} is missing; this test runs without real mail",
        dir.display()
    );
    None
}

#[tokio::test]
async fn real_mail_over_two_folders_is_all_visible_through_xoauth2() -> anyhow::Result<()> {
    let mut fixture = TenantFixture::everything_right();
    let expected = match corpus() {
        Some(dir) => {
            let loaded = Mailbox::load_dir(PHISH_MAILBOX, &dir)?;
            let messages: Vec<Vec<u8>> = loaded.folders.into_iter().flat_map(|(_, m)| m).collect();
            let (inbox, reports) = messages.split_at(messages.len() / 2);
            let mailbox = Mailbox::new(PHISH_MAILBOX)
                .with_messages("INBOX", inbox.to_vec())
                .with_messages("Phish Reports", reports.to_vec());
            let expected = vec![("INBOX", inbox.len()), ("Phish Reports", reports.len())];
            let exchange = &mut fixture.primary_tenant_mut().expect("tenant").exchange;
            *exchange.mailbox_mut(PHISH_MAILBOX).expect("mailbox") = mailbox;
            expected
        }
        None => vec![("INBOX", 1)],
    };
    let stack = LocalStack::start(fixture).await?;
    let token = stack.primary_token().await?;

    let LoginOutcome::LoggedIn(mut session) = login_xoauth2(
        stack.dovecot.imaps_addr(),
        stack.tls()?,
        PHISH_MAILBOX,
        &token.access_token,
    )
    .await?
    else {
        anyhow::bail!("a good token was refused");
    };
    let counts = folder_counts(&mut session).await?;
    for (folder, messages) in expected {
        let listed = counts
            .iter()
            .find(|f| f.display_name == folder)
            .unwrap_or_else(|| panic!("{folder} not listed: {counts:?}"));
        assert_eq!(listed.messages as usize, messages, "{folder}");
    }
    let _ = session.logout().await;
    Ok(())
}

#[tokio::test]
async fn grants_changed_while_running_take_effect_on_the_next_login() -> anyhow::Result<()> {
    let stack = LocalStack::start(TenantFixture::everything_right()).await?;
    let token = stack.primary_token().await?.access_token;
    let object_id = stack.tenant().read(|f| {
        f.primary_app()
            .expect("app")
            .service_principal_object_id
            .clone()
    });
    let login = |user: &'static str| {
        let token = token.clone();
        let addr = stack.dovecot.imaps_addr();
        let tls = stack.tls();
        async move { login_xoauth2(addr, tls?, user, &token).await }
    };
    assert!(matches!(
        login(INTEL_MAILBOX).await?,
        LoginOutcome::LoggedIn(_)
    ));

    // Remove-MailboxPermission while sessions come and go.
    stack.tenant().update(|f| {
        let exchange = &mut f.primary_tenant_mut().expect("tenant").exchange;
        exchange.remove_mailbox_permission(INTEL_MAILBOX, &object_id);
    });
    stack.apply_tenant()?;
    assert!(matches!(
        login(INTEL_MAILBOX).await?,
        LoginOutcome::Refused(_)
    ));
    assert!(
        matches!(login(PHISH_MAILBOX).await?, LoginOutcome::LoggedIn(_)),
        "the other mailbox's grant is untouched"
    );

    stack.tenant().update(|f| {
        let exchange = &mut f.primary_tenant_mut().expect("tenant").exchange;
        exchange.add_full_access(INTEL_MAILBOX, &object_id);
    });
    stack.apply_tenant()?;
    assert!(matches!(
        login(INTEL_MAILBOX).await?,
        LoginOutcome::LoggedIn(_)
    ));
    Ok(())
}

#[tokio::test]
async fn two_stacks_run_side_by_side_and_stay_apart() -> anyhow::Result<()> {
    let (first, second) = tokio::try_join!(
        LocalStack::start(TenantFixture::everything_right()),
        LocalStack::start(TenantFixture::everything_right()),
    )?;
    assert_ne!(first.dovecot.imaps_addr(), second.dovecot.imaps_addr());
    assert_ne!(first.redis.url(), second.redis.url());

    // Each Dovecot trusts only its own stand-in's signing key and tenant.
    let token = first.primary_token().await?.access_token;
    let in_first = login_xoauth2(
        first.dovecot.imaps_addr(),
        first.tls()?,
        PHISH_MAILBOX,
        &token,
    )
    .await?;
    assert!(matches!(in_first, LoginOutcome::LoggedIn(_)));
    let in_second = login_xoauth2(
        second.dovecot.imaps_addr(),
        second.tls()?,
        PHISH_MAILBOX,
        &token,
    )
    .await?;
    assert!(
        matches!(in_second, LoginOutcome::Refused(_)),
        "another stack's token must not open this one"
    );

    // Each Redis keeps its own keys.
    let mut a = first.redis.connection_manager().await?;
    let mut b = second.redis.connection_manager().await?;
    redis::cmd("SET")
        .arg("tm:probe")
        .arg("first")
        .query_async::<()>(&mut a)
        .await?;
    let seen: Option<String> = redis::cmd("GET")
        .arg("tm:probe")
        .query_async(&mut b)
        .await?;
    assert_eq!(seen, None);
    Ok(())
}
