//! The whole local stack in one handle: a test CA, Redis, the Entra stand-in and Dovecot,
//! with a tenant fixture applied to both the stand-in and Dovecot and its mailboxes seeded.
//!
//! Tests that need everything start a [`LocalStack`]; the demo (`tm-stack`) does the same.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;

use crate::ca::TestCa;
use crate::dovecot::{Dovecot, DovecotOptions};
use crate::entra::EntraStandIn;
use crate::redis::RedisServer;
use crate::tenant::{TenantFixture, TenantHandle};

/// The scope of an Exchange Online app-only token (Global cloud).
pub const EXCHANGE_SCOPE: &str = "https://outlook.office365.com/.default";

/// A running local stack; everything stops when it is dropped.
pub struct LocalStack {
    /// The CA every server's certificate comes from.
    pub ca: TestCa,
    /// Redis, no persistence.
    pub redis: RedisServer,
    /// The Entra ID token endpoint stand-in.
    pub entra: EntraStandIn,
    /// Dovecot, judging tokens like Exchange Online.
    pub dovecot: Dovecot,
    tenant: TenantHandle,
    files: tempfile::TempDir,
}

/// A successful token response of the stand-in.
#[derive(Deserialize)]
pub struct TokenResponse {
    /// `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The JWT.
    pub access_token: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

impl LocalStack {
    /// Starts every server, applies `fixture` and seeds its mailboxes.
    pub async fn start(fixture: TenantFixture) -> anyhow::Result<Self> {
        let ca = TestCa::new()?;
        let files = tempfile::Builder::new().prefix("tm-stack-").tempdir()?;
        ca.write_cert(&files.path().join("ca.pem"))?;
        let tenant = TenantHandle::new(fixture);
        let redis = tokio::task::spawn_blocking(RedisServer::start).await??;
        let entra = EntraStandIn::start(&ca, tenant.clone()).await?;
        let options = DovecotOptions::new(&ca)?.oauth(entra.oauth_settings());
        let dovecot = tokio::task::spawn_blocking(move || Dovecot::start(options)).await??;
        let stack = Self {
            ca,
            redis,
            entra,
            dovecot,
            tenant,
            files,
        };
        stack.seed().await?;
        Ok(stack)
    }

    /// The tenant fixture, shared with the stand-in: change it, then [`Self::apply_tenant`].
    pub fn tenant(&self) -> &TenantHandle {
        &self.tenant
    }

    /// Pushes the fixture's current Exchange side (service principals, grants) to Dovecot.
    /// The stand-in reads the fixture on every request and needs nothing.
    pub fn apply_tenant(&self) -> anyhow::Result<()> {
        self.dovecot.set_oauth(&self.entra.oauth_settings())
    }

    /// The test CA's certificate as a file, for clients configured by path.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.files.path().join("ca.pem")
    }

    /// A directory that lives as long as the stack, for the caller's own files.
    pub fn work_dir(&self) -> &Path {
        self.files.path()
    }

    /// A rustls client configuration trusting only the test CA.
    pub fn tls(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        self.ca.client_config()
    }

    /// Starts an Exchange fault proxy in front of this stack's Dovecot (TLS with a
    /// certificate of the stack's CA); point clients at its `addr()` instead of
    /// `dovecot.imaps_addr()`. It stops when dropped.
    pub async fn exchange_proxy(
        &self,
        script: crate::exchange_proxy::Script,
    ) -> anyhow::Result<crate::exchange_proxy::ExchangeProxy> {
        crate::exchange_proxy::ExchangeProxy::start(&self.ca, self.dovecot.imap_addr(), script)
            .await
    }

    /// Asks the stand-in for a token over HTTPS, exactly as a client would; an error
    /// answer comes back as an error naming its status and body.
    pub async fn request_token(
        &self,
        tenant: &str,
        client_id: &str,
        client_secret: &str,
    ) -> anyhow::Result<TokenResponse> {
        self.request_token_for_scope(tenant, client_id, client_secret, EXCHANGE_SCOPE)
            .await
    }

    /// [`Self::request_token`] with another scope (a Graph scope, a wrong one).
    pub async fn request_token_for_scope(
        &self,
        tenant: &str,
        client_id: &str,
        client_secret: &str,
        scope: &str,
    ) -> anyhow::Result<TokenResponse> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls((*self.tls()?).clone())
            .timeout(std::time::Duration::from_secs(15))
            .build()?;
        let response = client
            .post(self.entra.token_url(tenant))
            .form(&[
                ("client_id", client_id),
                ("client_secret", client_secret),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ])
            .send()
            .await
            .context("token request failed")?;
        let status = response.status();
        let body = response.text().await?;
        if !status.is_success() {
            anyhow::bail!("token endpoint answered {status}: {body}");
        }
        serde_json::from_str(&body).context("token response is not the documented JSON")
    }

    /// A token for the fixture's first app with its first secret.
    pub async fn primary_token(&self) -> anyhow::Result<TokenResponse> {
        self.primary_token_for_scope(EXCHANGE_SCOPE).await
    }

    /// [`Self::primary_token`] with another scope.
    pub async fn primary_token_for_scope(&self, scope: &str) -> anyhow::Result<TokenResponse> {
        let (tenant, client_id, secret) = self.tenant.read(|fixture| {
            let tenant = fixture.primary_tenant().context("fixture has no tenant")?;
            let app = tenant.apps.first().context("fixture has no app")?;
            let secret = app.secrets.first().context("app has no secret")?;
            anyhow::Ok((
                tenant.id.clone(),
                app.client_id.clone(),
                secret.value.expose().to_owned(),
            ))
        })?;
        self.request_token_for_scope(&tenant, &client_id, &secret, scope)
            .await
    }

    async fn seed(&self) -> anyhow::Result<()> {
        let mailboxes: Vec<_> = self.tenant.read(|fixture| {
            fixture
                .tenants
                .iter()
                .flat_map(|t| t.exchange.mailboxes.iter().cloned())
                .collect()
        });
        for mailbox in mailboxes {
            for (folder, messages) in &mailbox.folders {
                if messages.is_empty() {
                    if !folder.eq_ignore_ascii_case("INBOX") {
                        self.dovecot.create_folder(&mailbox.address, folder).await?;
                    }
                } else {
                    self.dovecot
                        .append(&mailbox.address, folder, messages)
                        .await
                        .with_context(|| format!("failed to seed {}/{folder}", mailbox.address))?;
                }
            }
        }
        Ok(())
    }
}
