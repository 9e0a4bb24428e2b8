//! The Entra stand-in over real HTTPS: reqwest trusting only the test CA sends token
//! requests and checks every answer against Entra's documented wire format.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::Value;
use threatmail_testkit::ca::TestCa;
use threatmail_testkit::entra::{ERROR_TABLE, EntraStandIn, ErrorRow, Fault, ThrottleBody};
use threatmail_testkit::jwt::{self, SigningKey};
use threatmail_testkit::tenant::{
    ClientSecret, INTEL_MAILBOX, MailboxGrant, PHISH_MAILBOX, TenantFixture, TenantHandle, new_guid,
};

const EXCHANGE_SCOPE: &str = "https://outlook.office365.com/.default";

struct Env {
    _ca: TestCa,
    entra: EntraStandIn,
    http: reqwest::Client,
    base: TenantFixture,
    tenant_id: String,
    client_id: String,
    secret: String,
}

async fn env() -> anyhow::Result<Env> {
    let ca = TestCa::new()?;
    let base = TenantFixture::everything_right();
    let entra = EntraStandIn::start(&ca, TenantHandle::new(base.clone())).await?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls((*ca.client_config()?).clone())
        .timeout(Duration::from_secs(20))
        .build()?;
    let app = base.primary_app().context("no app")?;
    Ok(Env {
        tenant_id: base.primary_tenant().context("no tenant")?.id.clone(),
        client_id: app.client_id.clone(),
        secret: app.secrets[0].value.expose().to_owned(),
        _ca: ca,
        entra,
        http,
        base,
    })
}

impl Env {
    fn good_form(&self) -> Vec<(&'static str, String)> {
        vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", self.client_id.clone()),
            ("client_secret", self.secret.clone()),
            ("scope", EXCHANGE_SCOPE.to_owned()),
        ]
    }

    async fn post(
        &self,
        tenant: &str,
        form: &[(&'static str, String)],
    ) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(self.entra.token_url(tenant))
            .form(form)
            .send()
            .await?)
    }

    fn reset_fixture(&self) {
        let base = self.base.clone();
        self.entra.tenant().update(|f| *f = base);
    }
}

fn without(form: &[(&'static str, String)], key: &str) -> Vec<(&'static str, String)> {
    form.iter().filter(|(k, _)| *k != key).cloned().collect()
}

fn with(
    form: &[(&'static str, String)],
    key: &'static str,
    value: &str,
) -> Vec<(&'static str, String)> {
    let mut form = without(form, key);
    form.push((key, value.to_owned()));
    form
}

fn keys(body: &Value) -> BTreeSet<&str> {
    body.as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::test]
async fn success_answers_entra_fields_and_a_verifiable_exchange_token() -> anyhow::Result<()> {
    let env = env().await?;
    let before = now_unix();
    let resp = env.post(&env.tenant_id, &env.good_form()).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        header(&resp, "content-type"),
        Some("application/json; charset=utf-8")
    );
    assert!(header(&resp, "cache-control").unwrap().contains("no-store"));
    assert_eq!(header(&resp, "pragma"), Some("no-cache"));
    let body: Value = resp.json().await?;
    assert_eq!(
        keys(&body),
        BTreeSet::from(["access_token", "expires_in", "ext_expires_in", "token_type"])
    );
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);

    let token = body["access_token"].as_str().unwrap();
    let claims = jwt::verify(env.entra.signing_key().public_key_pem(), token)?;
    let (header, _) = jwt::decode_unverified(token)?;
    assert_eq!(header["typ"], "JWT");
    assert_eq!(header["alg"], "RS256");
    assert_eq!(header["kid"], env.entra.signing_key().kid());

    let app = env.base.primary_app().unwrap();
    assert_eq!(claims["aud"], "https://outlook.office365.com");
    assert_eq!(claims["roles"], serde_json::json!(["IMAP.AccessAsApp"]));
    assert_eq!(claims["oid"], app.service_principal_object_id.as_str());
    assert_ne!(claims["oid"], app.object_id.as_str());
    assert_eq!(claims["sub"], claims["oid"]);
    assert_eq!(claims["tid"], env.tenant_id.as_str());
    assert_eq!(claims["appid"], env.client_id.as_str());
    assert_eq!(
        claims["iss"],
        format!("https://sts.windows.net/{}/", env.tenant_id)
    );
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["idtyp"], "app");
    let (iat, nbf, exp) = (
        claims["iat"].as_u64().unwrap(),
        claims["nbf"].as_u64().unwrap(),
        claims["exp"].as_u64().unwrap(),
    );
    // Backdated five minutes like Entra; lifetime counted from the issue time.
    assert_eq!(iat, nbf);
    assert_eq!(exp - iat, 3599 + 300);
    assert!(iat + 300 >= before && iat + 300 <= now_unix());
    assert_eq!(env.entra.request_count(&env.tenant_id, &env.client_id), 1);
    Ok(())
}

#[tokio::test]
async fn http_basic_client_authentication_and_domain_tenant_work() -> anyhow::Result<()> {
    let env = env().await?;
    let encode = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        encode(&env.client_id),
        encode(&env.secret)
    ));
    let form = without(&without(&env.good_form(), "client_id"), "client_secret");
    let resp = env
        .http
        .post(env.entra.token_url("corp.example"))
        .header("authorization", format!("Basic {basic}"))
        .form(&form)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    let claims = env
        .entra
        .signing_key()
        .verify(body["access_token"].as_str().unwrap())?;
    assert_eq!(claims["appid"], env.client_id.as_str());
    assert_eq!(claims["tid"], env.tenant_id.as_str());
    assert_eq!(env.entra.request_count("CORP.example", &env.client_id), 1);
    Ok(())
}

#[tokio::test]
async fn without_admin_consent_the_token_has_no_roles_claim() -> anyhow::Result<()> {
    let env = env().await?;
    env.entra
        .tenant()
        .update(|f| f.primary_app_mut().unwrap().admin_consent = false);
    let resp = env.post(&env.tenant_id, &env.good_form()).await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    let claims = env
        .entra
        .signing_key()
        .verify(body["access_token"].as_str().unwrap())?;
    assert!(claims.get("roles").is_none(), "{claims}");
    assert_eq!(claims["aud"], "https://outlook.office365.com");
    Ok(())
}

/// How to provoke one row of the error table.
async fn provoke(env: &Env, row: &ErrorRow) -> anyhow::Result<reqwest::Response> {
    let good = env.good_form();
    let tenant = env.tenant_id.clone();
    let (tenant, form) = match row.code {
        90002 => (new_guid(), good),
        900023 => ("authorize".to_owned(), good),
        9001023 => ("common".to_owned(), good),
        900144 => (tenant, without(&good, "grant_type")),
        70003 => (tenant, with(&good, "grant_type", "password")),
        70011 => (tenant, with(&good, "scope", ".default")),
        // BR-09: an app permission name instead of /.default.
        1002012 => (
            tenant,
            with(
                &good,
                "scope",
                "https://outlook.office365.com/IMAP.AccessAsApp",
            ),
        ),
        700016 => (tenant, with(&good, "client_id", &new_guid())),
        7000229 => {
            env.entra.tenant().update(|f| {
                f.primary_app_mut().unwrap().service_principal_exists = false;
            });
            (tenant, good)
        }
        7000218 => (tenant, without(&good, "client_secret")),
        7000215 => {
            // The secret's ID pasted instead of its value.
            let id = env.base.primary_app().unwrap().secrets[0].id.clone();
            (tenant, with(&good, "client_secret", &id))
        }
        7000222 => {
            let expired = ClientSecret::expired();
            let value = expired.value.expose().to_owned();
            env.entra
                .tenant()
                .update(|f| f.primary_app_mut().unwrap().secrets = vec![expired]);
            (tenant, with(&good, "client_secret", &value))
        }
        7000112 => {
            env.entra
                .tenant()
                .update(|f| f.primary_app_mut().unwrap().enabled = false);
            (tenant, good)
        }
        500011 => (
            tenant,
            with(&good, "scope", "https://unknown.example/.default"),
        ),
        900561 => {
            return Ok(env.http.get(env.entra.token_url(&tenant)).send().await?);
        }
        50196 => {
            env.entra.controls().throttle_next(1, 5);
            (tenant, good)
        }
        90006 => {
            env.entra.controls().fail_next(1, 503, Some(3));
            (tenant, good)
        }
        50000 => {
            env.entra.controls().fail_next(1, 500, None);
            (tenant, good)
        }
        other => anyhow::bail!("no recipe for AADSTS{other}; add one"),
    };
    env.post(&tenant, &form).await
}

#[tokio::test]
async fn every_error_row_answers_its_status_error_and_code() -> anyhow::Result<()> {
    let env = env().await?;
    for row in ERROR_TABLE {
        env.reset_fixture();
        let resp = provoke(&env, row).await?;
        assert_eq!(resp.status().as_u16(), row.status, "{row:?}");
        assert_eq!(
            header(&resp, "content-type"),
            Some("application/json; charset=utf-8"),
            "{row:?}"
        );
        let trace_header = header(&resp, "x-ms-request-id").map(str::to_owned);
        let body: Value = resp.json().await?;
        assert_eq!(
            keys(&body),
            BTreeSet::from([
                "correlation_id",
                "error",
                "error_codes",
                "error_description",
                "error_uri",
                "timestamp",
                "trace_id"
            ]),
            "{row:?}"
        );
        assert_eq!(body["error"], row.error, "{row:?}");
        assert_eq!(body["error_codes"][0], row.code, "{row:?}");
        assert_eq!(body["error_codes"].as_array().unwrap().len(), 1);
        let description = body["error_description"].as_str().unwrap();
        assert!(
            description.starts_with(&format!("AADSTS{}: ", row.code)),
            "{description}"
        );
        let trace = body["trace_id"].as_str().unwrap();
        let correlation = body["correlation_id"].as_str().unwrap();
        let timestamp = body["timestamp"].as_str().unwrap();
        assert!(description.ends_with(&format!(
            "\r\nTrace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {timestamp}"
        )));
        assert_eq!(trace_header.as_deref(), Some(trace));
        assert!(uuid::Uuid::parse_str(trace).is_ok() && uuid::Uuid::parse_str(correlation).is_ok());
        // "YYYY-MM-DD HH:MM:SSZ"
        assert_eq!(timestamp.len(), 20, "{timestamp}");
        assert_eq!((&timestamp[10..11], &timestamp[19..]), (" ", "Z"));
        assert_eq!(
            body["error_uri"],
            format!("https://login.microsoftonline.com/error?code={}", row.code)
        );
    }
    assert_eq!(env.entra.controls().pending_faults(), 0);
    Ok(())
}

#[tokio::test]
async fn throttling_sends_retry_after_then_recovers() -> anyhow::Result<()> {
    let env = env().await?;
    env.entra.controls().throttle_next(2, 7);
    env.entra.controls().push_fault(Fault::Throttle {
        retry_after_secs: 9,
        body: ThrottleBody::PlainText,
    });
    for _ in 0..2 {
        let resp = env.post(&env.tenant_id, &env.good_form()).await?;
        assert_eq!(resp.status(), 429);
        assert_eq!(header(&resp, "retry-after"), Some("7"));
        let body: Value = resp.json().await?;
        assert_eq!(body["error"], "temporarily_unavailable");
        assert_eq!(body["error_codes"][0], 50196);
    }
    let resp = env.post(&env.tenant_id, &env.good_form()).await?;
    assert_eq!(resp.status(), 429);
    assert_eq!(header(&resp, "retry-after"), Some("9"));
    assert_eq!(resp.text().await?, "Too Many Requests");
    let resp = env.post(&env.tenant_id, &env.good_form()).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(env.entra.request_count(&env.tenant_id, &env.client_id), 4);
    Ok(())
}

#[tokio::test]
async fn server_errors_with_and_without_retry_after() -> anyhow::Result<()> {
    let env = env().await?;
    env.entra.controls().fail_next(1, 503, Some(30));
    env.entra.controls().fail_next(1, 502, None);
    let resp = env.post(&env.tenant_id, &env.good_form()).await?;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after"), Some("30"));
    assert_eq!(
        resp.json::<Value>().await?["error"],
        "temporarily_unavailable"
    );
    let resp = env.post(&env.tenant_id, &env.good_form()).await?;
    assert_eq!(resp.status(), 502);
    assert!(header(&resp, "retry-after").is_none());
    assert_eq!(resp.json::<Value>().await?["error"], "server_error");
    assert_eq!(
        env.post(&env.tenant_id, &env.good_form()).await?.status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn the_answer_waits_for_the_configured_delay() -> anyhow::Result<()> {
    let env = env().await?;
    let delay = Duration::from_millis(400);
    env.entra.controls().set_response_delay(delay);
    let started = Instant::now();
    let resp = env.post(&env.tenant_id, &env.good_form()).await?;
    let waited = started.elapsed();
    assert_eq!(resp.status(), 200);
    assert!(waited >= delay, "answered after {waited:?}");
    Ok(())
}

#[tokio::test]
async fn a_dropped_connection_is_a_client_side_error_then_service_resumes() -> anyhow::Result<()> {
    let env = env().await?;
    env.entra.controls().drop_next(1);
    let err = env
        .post(&env.tenant_id, &env.good_form())
        .await
        .expect_err("the connection should be dropped");
    let err = err.downcast::<reqwest::Error>()?;
    assert!(err.status().is_none() && !err.is_timeout(), "{err:?}");
    assert_eq!(env.entra.controls().pending_faults(), 0);
    assert_eq!(env.entra.request_count(&env.tenant_id, &env.client_id), 1);
    assert_eq!(
        env.post(&env.tenant_id, &env.good_form()).await?.status(),
        200
    );
    Ok(())
}

#[tokio::test]
async fn counters_are_kept_per_tenant_and_client_id() -> anyhow::Result<()> {
    let env = env().await?;
    let other_client = new_guid();
    env.post(&env.tenant_id, &env.good_form()).await?;
    env.post(&env.tenant_id, &env.good_form()).await?;
    env.post("corp.example", &env.good_form()).await?;
    env.post(
        &env.tenant_id,
        &with(&env.good_form(), "client_id", &other_client),
    )
    .await?;
    assert_eq!(env.entra.request_count(&env.tenant_id, &env.client_id), 2);
    assert_eq!(
        env.entra
            .request_count(&env.tenant_id.to_uppercase(), &env.client_id.to_uppercase()),
        2
    );
    assert_eq!(env.entra.request_count("corp.example", &env.client_id), 1);
    assert_eq!(env.entra.request_count(&env.tenant_id, &other_client), 1);
    assert_eq!(env.entra.request_count(&new_guid(), &env.client_id), 0);
    assert_eq!(env.entra.total_requests(), 4);
    Ok(())
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_test_ca_is_refused() -> anyhow::Result<()> {
    let env = env().await?;
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()?;
    let err = untrusting
        .post(env.entra.token_url(&env.tenant_id))
        .form(&env.good_form())
        .send()
        .await
        .expect_err("certificate verification must fail");
    assert!(err.is_connect(), "{err:?}");
    assert!(
        format!("{err:?}").to_lowercase().contains("certificate"),
        "{err:?}"
    );
    assert_eq!(env.entra.total_requests(), 0);
    Ok(())
}

#[tokio::test]
async fn other_methods_and_paths() -> anyhow::Result<()> {
    let env = env().await?;
    let url = |path: &str| format!("{}{path}", env.entra.authority());
    let resp = env.http.get(url("/")).send().await?;
    assert_eq!(resp.status(), 404);
    let v1 = format!("/{}/oauth2/token", env.tenant_id);
    assert_eq!(env.http.post(url(&v1)).send().await?.status(), 404);
    let trailing = format!("/{}/oauth2/v2.0/token/", env.tenant_id);
    assert_eq!(env.http.post(url(&trailing)).send().await?.status(), 404);
    let options = env
        .http
        .request(
            reqwest::Method::OPTIONS,
            env.entra.token_url(&env.tenant_id),
        )
        .send()
        .await?;
    assert_eq!(options.status(), 200);
    let resp = env
        .http
        .put(env.entra.token_url(&env.tenant_id))
        .form(&env.good_form())
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.json::<Value>().await?["error_codes"][0], 900561);
    // A JSON body is not a form: grant_type counts as missing.
    let resp = env
        .http
        .post(env.entra.token_url(&env.tenant_id))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await?;
    assert_eq!(resp.json::<Value>().await?["error_codes"][0], 900144);
    Ok(())
}

#[tokio::test]
async fn client_request_id_becomes_the_correlation_id() -> anyhow::Result<()> {
    let env = env().await?;
    let id = new_guid();
    let resp = env
        .http
        .post(env.entra.token_url("common"))
        .header("client-request-id", &id)
        .form(&env.good_form())
        .send()
        .await?;
    assert_eq!(header(&resp, "client-request-id"), Some(id.as_str()));
    let body: Value = resp.json().await?;
    assert_eq!(body["correlation_id"], id.as_str());
    Ok(())
}

#[tokio::test]
async fn the_fixture_can_change_while_the_stand_in_runs() -> anyhow::Result<()> {
    let env = env().await?;
    // Rotate: a new secret replaces the old one.
    let new_secret = ClientSecret::new(Duration::from_secs(3600));
    let new_value = new_secret.value.expose().to_owned();
    env.entra
        .tenant()
        .update(|f| f.primary_app_mut().unwrap().secrets = vec![new_secret]);
    let old = env.post(&env.tenant_id, &env.good_form()).await?;
    assert_eq!(old.status(), 401);
    assert_eq!(old.json::<Value>().await?["error_codes"][0], 7000215);
    let new = env
        .post(
            &env.tenant_id,
            &with(&env.good_form(), "client_secret", &new_value),
        )
        .await?;
    assert_eq!(new.status(), 200);
    Ok(())
}

#[tokio::test]
async fn lifetime_is_settable_and_tokens_can_be_minted_directly() -> anyhow::Result<()> {
    let env = env().await?;
    env.entra
        .controls()
        .set_token_lifetime(Duration::from_secs(5));
    let body: Value = env
        .post(&env.tenant_id, &env.good_form())
        .await?
        .json()
        .await?;
    assert_eq!(body["expires_in"], 5);
    let claims = env
        .entra
        .signing_key()
        .verify(body["access_token"].as_str().unwrap())?;
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        5 + 300
    );

    // Already expired, signed by the stand-in.
    let expired = env
        .entra
        .token_claims(&env.tenant_id, &env.client_id, EXCHANGE_SCOPE)?
        .issued_at(SystemTime::now() - Duration::from_secs(7200))
        .lifetime(Duration::from_secs(3599));
    let token = env.entra.issue_token(&expired);
    let claims = env.entra.signing_key().verify(&token)?;
    assert!(claims["exp"].as_u64().unwrap() < now_unix());
    assert_eq!(env.entra.total_requests(), 1);

    // Signed with another key: the stand-in's public key refuses it.
    let rogue = SigningKey::generate("rogue")?;
    let forged = rogue.sign(&expired.to_json());
    assert!(env.entra.signing_key().verify(&forged).is_err());
    assert!(rogue.verify(&forged).is_ok());
    Ok(())
}

fn grants(env: &Env, change: impl FnOnce(&mut TenantFixture)) -> Vec<MailboxGrant> {
    env.reset_fixture();
    env.entra.tenant().update(change);
    let settings = env.entra.oauth_settings();
    assert_eq!(settings.signing_keys, env.entra.signing_key_files());
    assert_eq!(
        settings.issuers,
        vec![format!("https://sts.windows.net/{}/", env.tenant_id)]
    );
    settings.grants
}

#[tokio::test]
async fn oauth_settings_follow_the_exchange_setup() -> anyhow::Result<()> {
    let env = env().await?;
    let app = env.base.primary_app().unwrap().clone();
    let grant = |object_id: &str, mailbox: &str| MailboxGrant {
        app_id: app.client_id.clone(),
        object_id: object_id.to_owned(),
        mailbox: mailbox.to_owned(),
    };
    let sp = app.service_principal_object_id.clone();

    assert_eq!(
        grants(&env, |_| {}),
        vec![grant(&sp, INTEL_MAILBOX), grant(&sp, PHISH_MAILBOX)]
    );

    // Step 5 with the app registration's object id: grants exist but match no token's oid.
    let wrong = grants(&env, |f| {
        let exchange = &mut f.primary_tenant_mut().unwrap().exchange;
        exchange.service_principals.clear();
        exchange.new_service_principal(&app.client_id, &app.object_id);
        exchange.mailbox_permissions.clear();
        exchange.add_full_access(PHISH_MAILBOX, &app.object_id);
    });
    assert_eq!(wrong, vec![grant(&app.object_id, PHISH_MAILBOX)]);
    let body: Value = env
        .post(&env.tenant_id, &env.good_form())
        .await?
        .json()
        .await?;
    let claims = env
        .entra
        .signing_key()
        .verify(body["access_token"].as_str().unwrap())?;
    assert!(wrong.iter().all(|g| claims["oid"] != g.object_id.as_str()));

    let no_sp = grants(&env, |f| {
        f.primary_tenant_mut()
            .unwrap()
            .exchange
            .service_principals
            .clear();
    });
    assert!(no_sp.is_empty());

    let no_full_access = grants(&env, |f| {
        f.primary_tenant_mut()
            .unwrap()
            .exchange
            .mailbox_permissions
            .clear();
    });
    assert!(no_full_access.is_empty());

    let imap_off = grants(&env, |f| {
        let exchange = &mut f.primary_tenant_mut().unwrap().exchange;
        exchange.mailbox_mut(INTEL_MAILBOX).unwrap().imap_enabled = false;
    });
    assert_eq!(imap_off, vec![grant(&sp, PHISH_MAILBOX)]);
    Ok(())
}

#[tokio::test]
async fn stopping_on_drop_closes_the_port() -> anyhow::Result<()> {
    let env = env().await?;
    let addr = env.entra.addr();
    assert!(tokio::net::TcpStream::connect(addr).await.is_ok());
    drop(env);
    threatmail_testkit::net::wait_for(
        "the stand-in port to close",
        Duration::from_secs(5),
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await
}
