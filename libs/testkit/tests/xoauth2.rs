//! End to end: a token from the Entra stand-in (over HTTPS) opens the test Dovecot's
//! mailboxes over TLS with SASL XOAUTH2 exactly when the tenant fixture's setup is right,
//! with the grants the fixture derives (`oauth_settings`).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use threatmail_testkit::imap::{LoginOutcome, login_xoauth2};
use threatmail_testkit::jwt::SigningKey;
use threatmail_testkit::stack::{EXCHANGE_SCOPE, LocalStack};
use threatmail_testkit::tenant::{INTEL_MAILBOX, PHISH_MAILBOX, TenantFixture};

/// Bound for every network step.
const STEP: Duration = Duration::from_secs(60);

/// The local stack, with the checks these tests make.
struct Stack {
    stack: LocalStack,
}

impl std::ops::Deref for Stack {
    type Target = LocalStack;

    fn deref(&self) -> &LocalStack {
        &self.stack
    }
}

impl Stack {
    async fn start() -> anyhow::Result<Stack> {
        Ok(Stack {
            stack: LocalStack::start(TenantFixture::everything_right()).await?,
        })
    }

    /// Gets a token the way the broker does: POST to the stand-in's token endpoint.
    async fn token(&self, scope: &str) -> anyhow::Result<String> {
        Ok(self
            .stack
            .primary_token_for_scope(scope)
            .await?
            .access_token)
    }

    /// Re-derives Dovecot's grants from the fixture after a change.
    fn apply_fixture(&self) -> anyhow::Result<()> {
        self.stack.apply_tenant()
    }

    /// XOAUTH2 over TLS as `mailbox`; on success EXAMINE INBOX and return its message
    /// count, on refusal the server's text.
    async fn login(&self, mailbox: &str, token: &str) -> anyhow::Result<Result<u32, String>> {
        tokio::time::timeout(STEP, async {
            let outcome = login_xoauth2(
                self.stack.dovecot.imaps_addr(),
                self.stack.tls()?,
                mailbox,
                token,
            )
            .await?;
            match outcome {
                LoginOutcome::LoggedIn(mut session) => {
                    let inbox = session.examine("INBOX").await?;
                    session.logout().await?;
                    Ok(Ok(inbox.exists))
                }
                LoginOutcome::Refused(text) => Ok(Err(text)),
            }
        })
        .await
        .context("XOAUTH2 login timed out")?
    }

    async fn assert_ok(&self, case: &str, mailbox: &str, token: &str) -> anyhow::Result<u32> {
        match self.login(mailbox, token).await? {
            Ok(exists) => Ok(exists),
            Err(refusal) => bail!(
                "{case}: XOAUTH2 as {mailbox} refused: {refusal}\n{}",
                self.stack.dovecot.logged_refusals().await
            ),
        }
    }

    async fn assert_refused(&self, case: &str, mailbox: &str, token: &str) -> anyhow::Result<()> {
        match self.login(mailbox, token).await? {
            Ok(_) => bail!("{case}: XOAUTH2 as {mailbox} was accepted"),
            Err(refusal) => {
                assert!(
                    refusal.contains("[AUTHENTICATIONFAILED]"),
                    "{case}: unexpected refusal {refusal}"
                );
                Ok(())
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stand_in_token_opens_exactly_the_granted_mailboxes() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let token = stack.token(EXCHANGE_SCOPE).await?;

    // Steps 1–6 right: one app token opens both mailboxes, each with its seeded message.
    assert_eq!(stack.assert_ok("right", PHISH_MAILBOX, &token).await?, 1);
    assert_eq!(stack.assert_ok("right", INTEL_MAILBOX, &token).await?, 1);
    assert_eq!(
        stack
            .assert_ok("case", &PHISH_MAILBOX.to_uppercase(), &token)
            .await?,
        1
    );
    // A mailbox without a grant.
    stack
        .assert_refused("no grant", "ceo@corp.example", &token)
        .await?;

    // A Graph token: wrong audience, and no IMAP role.
    let graph = stack.token("https://graph.microsoft.com/.default").await?;
    stack
        .assert_refused("graph aud", PHISH_MAILBOX, &graph)
        .await?;

    // Minted directly: already expired, and signed with a key Dovecot does not know.
    let (tenant_id, client_id) = stack.tenant().read(|f| {
        (
            f.primary_tenant().unwrap().id.clone(),
            f.primary_app().unwrap().client_id.clone(),
        )
    });
    let claims = stack
        .entra
        .token_claims(&tenant_id, &client_id, EXCHANGE_SCOPE)?;
    let expired = stack.entra.issue_token(
        &claims
            .clone()
            .issued_at(SystemTime::now() - Duration::from_secs(7200)),
    );
    stack
        .assert_refused("expired", PHISH_MAILBOX, &expired)
        .await?;
    let rogue = SigningKey::generate(stack.entra.signing_key().kid())?;
    let forged = rogue.sign(&claims.to_json());
    stack
        .assert_refused("other key", PHISH_MAILBOX, &forged)
        .await?;
    // The same claims signed by the stand-in pass.
    let minted = stack.entra.issue_token(&claims);
    stack.assert_ok("minted", PHISH_MAILBOX, &minted).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_setup_step_is_refused_like_exchange() -> anyhow::Result<()> {
    let stack = Stack::start().await?;

    // Step 2: no admin consent. Entra still issues a token, without roles; IMAP refuses it.
    stack
        .tenant()
        .update(|f| f.primary_app_mut().unwrap().admin_consent = false);
    let no_roles = stack.token(EXCHANGE_SCOPE).await?;
    stack
        .assert_refused("no consent", PHISH_MAILBOX, &no_roles)
        .await?;
    stack
        .tenant()
        .update(|f| f.primary_app_mut().unwrap().admin_consent = true);
    let token = stack.token(EXCHANGE_SCOPE).await?;
    stack
        .assert_ok("consent back", PHISH_MAILBOX, &token)
        .await?;

    let app = stack
        .stack
        .tenant()
        .read(|f| f.primary_app().unwrap().clone());
    let right = stack.tenant().snapshot();
    let restore = || -> anyhow::Result<()> {
        let right = right.clone();
        stack.tenant().update(|f| *f = right);
        stack.apply_fixture()
    };

    // Step 5 with the app registration's object id (the common mistake).
    stack.tenant().update(|f| {
        let exchange = &mut f.primary_tenant_mut().unwrap().exchange;
        exchange.service_principals.clear();
        exchange.new_service_principal(&app.client_id, &app.object_id);
        exchange.mailbox_permissions.clear();
        exchange.add_full_access(PHISH_MAILBOX, &app.object_id);
        exchange.add_full_access(INTEL_MAILBOX, &app.object_id);
    });
    stack.apply_fixture()?;
    stack
        .assert_refused("sp with app registration oid", PHISH_MAILBOX, &token)
        .await?;
    restore()?;
    stack.assert_ok("restored", PHISH_MAILBOX, &token).await?;

    // Step 5 skipped: no service principal in Exchange.
    stack.tenant().update(|f| {
        f.primary_tenant_mut()
            .unwrap()
            .exchange
            .service_principals
            .clear();
    });
    stack.apply_fixture()?;
    stack.assert_refused("no sp", PHISH_MAILBOX, &token).await?;
    restore()?;

    // Step 5: no FullAccess on one mailbox.
    stack.tenant().update(|f| {
        f.primary_tenant_mut()
            .unwrap()
            .exchange
            .remove_mailbox_permission(INTEL_MAILBOX, &app.service_principal_object_id);
    });
    stack.apply_fixture()?;
    stack
        .assert_refused("no full access", INTEL_MAILBOX, &token)
        .await?;
    stack
        .assert_ok("other mailbox", PHISH_MAILBOX, &token)
        .await?;
    restore()?;

    // Step 6: IMAP disabled for the mailbox.
    stack.tenant().update(|f| {
        f.primary_tenant_mut()
            .unwrap()
            .exchange
            .mailbox_mut(PHISH_MAILBOX)
            .unwrap()
            .imap_enabled = false;
    });
    stack.apply_fixture()?;
    stack
        .assert_refused("imap disabled", PHISH_MAILBOX, &token)
        .await?;
    stack.assert_ok("imap on", INTEL_MAILBOX, &token).await?;
    Ok(())
}
