//! End to end: a token from the Entra stand-in (over HTTPS) opens the test Dovecot's
//! mailboxes over TLS with SASL XOAUTH2 exactly when the tenant fixture's setup is right,
//! with the grants the fixture derives (`oauth_settings`).

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use async_imap::Authenticator;
use rustls_pki_types::ServerName;
use serde_json::Value;
use threatmail_testkit::ca::TestCa;
use threatmail_testkit::dovecot::{Dovecot, DovecotOptions};
use threatmail_testkit::entra::EntraStandIn;
use threatmail_testkit::jwt::SigningKey;
use threatmail_testkit::tenant::{INTEL_MAILBOX, PHISH_MAILBOX, TenantFixture, TenantHandle};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Tls = TlsStream<TcpStream>;

const EXCHANGE_SCOPE: &str = "https://outlook.office365.com/.default";
/// Bound for every network step.
const STEP: Duration = Duration::from_secs(60);

/// `user=<mailbox>^Aauth=Bearer <token>^A^A`, then an empty answer to the error challenge.
struct XOAuth2 {
    user: String,
    token: String,
    calls: usize,
}

impl Authenticator for XOAuth2 {
    type Response = Vec<u8>;

    fn process(&mut self, _challenge: &[u8]) -> Self::Response {
        self.calls += 1;
        if self.calls == 1 {
            format!("user={}\x01auth=Bearer {}\x01\x01", self.user, self.token).into_bytes()
        } else {
            Vec::new()
        }
    }
}

struct Stack {
    ca: TestCa,
    tenant: TenantHandle,
    entra: EntraStandIn,
    dovecot: Dovecot,
    http: reqwest::Client,
}

impl Stack {
    async fn start() -> anyhow::Result<Stack> {
        let ca = TestCa::new()?;
        let tenant = TenantHandle::new(TenantFixture::everything_right());
        let entra = EntraStandIn::start(&ca, tenant.clone()).await?;
        let dovecot = Dovecot::start(DovecotOptions::new(&ca)?.oauth(entra.oauth_settings()))?;
        // Seed every mailbox of the fixture with its folders.
        for mailbox in tenant.read(|f| f.primary_tenant().unwrap().exchange.mailboxes.clone()) {
            for (folder, messages) in &mailbox.folders {
                dovecot.append(&mailbox.address, folder, messages).await?;
            }
        }
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*ca.client_config()?).clone())
            .timeout(STEP)
            .build()?;
        Ok(Stack {
            ca,
            tenant,
            entra,
            dovecot,
            http,
        })
    }

    /// Gets a token the way the broker does: POST to the stand-in's token endpoint.
    async fn token(&self, scope: &str) -> anyhow::Result<String> {
        let (tenant_id, client_id, secret) = self.tenant.read(|f| {
            let app = f.primary_app().unwrap();
            (
                f.primary_tenant().unwrap().id.clone(),
                app.client_id.clone(),
                app.secrets[0].value.expose().to_owned(),
            )
        });
        let resp = self
            .http
            .post(self.entra.token_url(&tenant_id))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", &client_id),
                ("client_secret", &secret),
                ("scope", scope),
            ])
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await?;
        if status != 200 {
            bail!("token request refused: {status} {body}");
        }
        Ok(body["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned())
    }

    /// Re-derives Dovecot's grants from the fixture after a change.
    fn apply_fixture(&self) -> anyhow::Result<()> {
        self.dovecot.set_oauth(&self.entra.oauth_settings())
    }

    /// XOAUTH2 over TLS as `mailbox`; on success EXAMINE INBOX and return its message
    /// count, on refusal the server's text.
    async fn login(&self, mailbox: &str, token: &str) -> anyhow::Result<Result<u32, String>> {
        tokio::time::timeout(STEP, self.login_inner(mailbox, token))
            .await
            .context("XOAUTH2 login timed out")?
    }

    async fn login_inner(&self, mailbox: &str, token: &str) -> anyhow::Result<Result<u32, String>> {
        let stream = tls_stream(self.dovecot.imaps_addr(), self.ca.client_config()?).await?;
        let mut client = async_imap::Client::new(stream);
        client.read_response().await?.context("no greeting")?;
        let auth = XOAuth2 {
            user: mailbox.to_owned(),
            token: token.to_owned(),
            calls: 0,
        };
        match client.authenticate("XOAUTH2", auth).await {
            Ok(mut session) => {
                let inbox = session.examine("INBOX").await?;
                session.logout().await?;
                Ok(Ok(inbox.exists))
            }
            Err((error, _)) => Ok(Err(error.to_string())),
        }
    }

    async fn assert_ok(&self, case: &str, mailbox: &str, token: &str) -> anyhow::Result<u32> {
        match self.login(mailbox, token).await? {
            Ok(exists) => Ok(exists),
            Err(refusal) => bail!(
                "{case}: XOAUTH2 as {mailbox} refused: {refusal}\n{}",
                self.dovecot.logged_refusals().await
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

async fn tls_stream(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> anyhow::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    Ok(tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
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
    let (tenant_id, client_id) = stack.tenant.read(|f| {
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
        .tenant
        .update(|f| f.primary_app_mut().unwrap().admin_consent = false);
    let no_roles = stack.token(EXCHANGE_SCOPE).await?;
    stack
        .assert_refused("no consent", PHISH_MAILBOX, &no_roles)
        .await?;
    stack
        .tenant
        .update(|f| f.primary_app_mut().unwrap().admin_consent = true);
    let token = stack.token(EXCHANGE_SCOPE).await?;
    stack
        .assert_ok("consent back", PHISH_MAILBOX, &token)
        .await?;

    let app = stack.tenant.read(|f| f.primary_app().unwrap().clone());
    let right = stack.tenant.snapshot();
    let restore = || -> anyhow::Result<()> {
        let right = right.clone();
        stack.tenant.update(|f| *f = right);
        stack.apply_fixture()
    };

    // Step 5 with the app registration's object id (the common mistake).
    stack.tenant.update(|f| {
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
    stack.tenant.update(|f| {
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
    stack.tenant.update(|f| {
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
    stack.tenant.update(|f| {
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
