//! "Save and Continue" over every setup step done wrong (DESIGN §1, issue 4): each case
//! changes one field of the form or one step of the tenant fixture, and Test must name the
//! exact cause where Entra or the token says it, and otherwise give the ordered checklist,
//! never a guess stated as fact. Real Redis, Dovecot, stand-in, broker and fetcher.

use threatmail_proto::v1 as pb;
use threatmail_testkit::exchange_proxy::{Fault, Script, When};
use threatmail_testkit::tenant::{
    AppRegistration, ClientSecret, PHISH_MAILBOX, TenantFixture, generate_secret_value, new_guid,
};

use crate::harness::Harness;

/// What the case knows when it builds its form.
struct Ctx {
    /// The app as the fixture had it before the case changed anything.
    app: AppRegistration,
    plain_port: u16,
    closed_port: u16,
    proxy_port: u16,
    password: String,
}

struct Case {
    name: &'static str,
    /// The fixture change, if any.
    tenant: Option<fn(&mut TenantFixture)>,
    form: fn(&Ctx, &mut pb::SourceSpec),
    ok: bool,
    problems: &'static [&'static str],
    /// The field of the first problem.
    field: &'static str,
    checklist: Option<&'static [&'static str]>,
    warnings: &'static [&'static str],
    stages: [&'static str; 3],
    /// Texts the problems and the checklist must contain.
    says: fn(&Ctx) -> Vec<String>,
    /// Done to the running stack just before the test (e.g. an Entra fault).
    before: Option<fn(&Harness)>,
}

fn as_is(_: &Ctx, _: &mut pb::SourceSpec) {}
fn nothing(_: &Ctx) -> Vec<String> {
    Vec::new()
}

fn app_mut(f: &mut TenantFixture) -> &mut AppRegistration {
    f.primary_app_mut().expect("the fixture has an app")
}

fn exchange_mut(f: &mut TenantFixture) -> &mut threatmail_testkit::tenant::ExchangeOnline {
    &mut f
        .primary_tenant_mut()
        .expect("the fixture has a tenant")
        .exchange
}

/// `New-ServicePrincipal` and `Add-MailboxPermission` both done with the app
/// registration's object id (the common mistake).
fn registered_with_app_registration_object_id(f: &mut TenantFixture) {
    let app = app_mut(f).clone();
    let exchange = exchange_mut(f);
    exchange.service_principals.clear();
    exchange.new_service_principal(&app.client_id, &app.object_id);
    exchange.mailbox_permissions.clear();
    exchange.add_full_access(PHISH_MAILBOX, &app.object_id);
}

const OK: [&str; 3] = ["ok", "ok", "ok"];
const TOKEN_FAILED: [&str; 3] = ["ok", "failed", "skipped"];
const LOGIN_FAILED: [&str; 3] = ["ok", "ok", "failed"];
const CHECKLIST: &[&str] = &[
    "exchange.service_principal",
    "exchange.full_access",
    "source.mailbox_address",
    "exchange.imap_enabled",
];

fn cases() -> Vec<Case> {
    let checklist = |name, tenant: Option<fn(&mut TenantFixture)>, form, says| Case {
        name,
        tenant,
        form,
        ok: false,
        problems: &["imap.authenticate_failed"],
        checklist: Some(CHECKLIST),
        stages: LOGIN_FAILED,
        says,
        ..base_copy()
    };
    let entra = |name, tenant: Option<fn(&mut TenantFixture)>, form, reason, field, says| Case {
        name,
        tenant,
        form,
        ok: false,
        problems: std::slice::from_ref(Box::leak(Box::new(reason))),
        field,
        stages: TOKEN_FAILED,
        says,
        ..base_copy()
    };
    vec![
        Case {
            name: "everything right",
            ..base_copy()
        },
        Case {
            name: "everything right, with the enterprise application's Object ID entered",
            form: |ctx, spec| spec.object_id = ctx.app.service_principal_object_id.clone(),
            ..base_copy()
        },
        Case {
            name: "tenant given as its verified domain",
            form: |_, spec| spec.tenant_id = "corp.example".to_owned(),
            ..base_copy()
        },
        entra(
            "tenant id of no tenant",
            None,
            |_, spec| spec.tenant_id = new_guid(),
            "entra.tenant_not_found",
            "tenant_id",
            nothing,
        ),
        entra(
            "app id of no app",
            None,
            |_, spec| spec.app_id = new_guid(),
            "entra.app_not_found",
            "app_id",
            nothing,
        ),
        entra(
            "the secret's ID pasted instead of its value",
            None,
            |ctx, spec| spec.secret_key = ctx.app.secrets[0].id.clone(),
            "entra.secret_wrong",
            "secret_key",
            |_| vec!["AADSTS7000215".to_owned(), "Secret ID".to_owned()],
        ),
        entra(
            "a wrong secret value",
            None,
            |_, spec| spec.secret_key = generate_secret_value().expose().to_owned(),
            "entra.secret_wrong",
            "secret_key",
            |_| vec!["AADSTS7000215".to_owned()],
        ),
        entra(
            "the secret has expired",
            Some(|f| app_mut(f).secrets = vec![ClientSecret::expired()]),
            as_is,
            "entra.secret_expired",
            "secret_key",
            |_| vec!["AADSTS7000222".to_owned()],
        ),
        entra(
            "no enterprise application in the tenant",
            Some(|f| app_mut(f).service_principal_exists = false),
            as_is,
            "entra.no_service_principal",
            "app_id",
            nothing,
        ),
        entra(
            "the enterprise application is disabled",
            Some(|f| app_mut(f).enabled = false),
            as_is,
            "entra.app_disabled",
            "app_id",
            nothing,
        ),
        Case {
            name: "admin consent not granted: the token has no role",
            tenant: Some(|f| app_mut(f).admin_consent = false),
            ok: false,
            problems: &["token.imap_consent_missing"],
            field: "app_id",
            stages: LOGIN_FAILED,
            says: |_| {
                vec![
                    "admin consent".to_owned(),
                    "NO AUTHENTICATE failed.".to_owned(),
                ]
            },
            ..base_copy()
        },
        Case {
            name: "IMAP.AccessAsApp never added",
            tenant: Some(|f| app_mut(f).imap_permission = false),
            ok: false,
            problems: &["token.imap_consent_missing"],
            field: "app_id",
            stages: LOGIN_FAILED,
            ..base_copy()
        },
        checklist(
            "New-ServicePrincipal never run",
            Some(|f| exchange_mut(f).service_principals.clear()),
            as_is,
            |ctx| vec![format!("-ObjectId {}", ctx.app.service_principal_object_id)],
        ),
        Case {
            name: "service principal made with the app registration's object id, entered as such",
            tenant: Some(registered_with_app_registration_object_id),
            form: |ctx, spec| spec.object_id = ctx.app.object_id.clone(),
            ok: false,
            problems: &["token.object_id_mismatch"],
            field: "object_id",
            checklist: Some(&[
                "exchange.full_access",
                "source.mailbox_address",
                "exchange.imap_enabled",
            ]),
            stages: LOGIN_FAILED,
            says: |ctx| {
                vec![
                    ctx.app.object_id.clone(),
                    format!("-ObjectId {}", ctx.app.service_principal_object_id),
                    "app registration's".to_owned(),
                ]
            },
            ..base_copy()
        },
        checklist(
            "service principal made with the app registration's object id, Object ID not entered",
            Some(registered_with_app_registration_object_id),
            as_is,
            |ctx| vec![format!("-ObjectId {}", ctx.app.service_principal_object_id)],
        ),
        checklist(
            "no FullAccess on any mailbox",
            Some(|f| exchange_mut(f).mailbox_permissions.clear()),
            as_is,
            |_| vec![format!("Add-MailboxPermission -Identity {PHISH_MAILBOX}")],
        ),
        checklist(
            "FullAccess removed from this mailbox only",
            Some(|f| {
                let oid = app_mut(f).service_principal_object_id.clone();
                exchange_mut(f).remove_mailbox_permission(PHISH_MAILBOX, &oid);
            }),
            as_is,
            nothing,
        ),
        checklist(
            "IMAP disabled for the mailbox",
            Some(|f| {
                exchange_mut(f)
                    .mailbox_mut(PHISH_MAILBOX)
                    .expect("mailbox")
                    .imap_enabled = false;
            }),
            as_is,
            |_| {
                vec![format!(
                    "Set-CASMailbox -Identity {PHISH_MAILBOX} -ImapEnabled $true"
                )]
            },
        ),
        checklist(
            "the wrong mailbox address",
            None,
            |_, spec| spec.email = "nobody@corp.example".to_owned(),
            |_| vec!["nobody@corp.example".to_owned()],
        ),
        Case {
            name: "Object ID entered wrong but Exchange set up right: a warning",
            form: |ctx, spec| spec.object_id = ctx.app.object_id.clone(),
            warnings: &["token.object_id_mismatch"],
            ..base_copy()
        },
        Case {
            name: "login accepted, mailbox not opened (Exchange's not connected)",
            form: |ctx, spec| {
                spec.host = "127.0.0.1".to_owned();
                spec.port = u32::from(ctx.proxy_port);
            },
            ok: false,
            problems: &["imap.not_connected"],
            checklist: Some(&[
                "exchange.service_principal",
                "exchange.full_access",
                "source.mailbox_address",
                "exchange.imap_enabled",
                "exchange.connection_limit",
            ]),
            stages: LOGIN_FAILED,
            ..base_copy()
        },
        Case {
            name: "TLS on against a plain port",
            form: |ctx, spec| spec.port = u32::from(ctx.plain_port),
            ok: false,
            problems: &["imap.tls_failed"],
            field: "tls",
            stages: LOGIN_FAILED,
            ..base_copy()
        },
        Case {
            name: "nothing listens on the port",
            form: |ctx, spec| spec.port = u32::from(ctx.closed_port),
            ok: false,
            problems: &["imap.unreachable"],
            field: "host",
            stages: LOGIN_FAILED,
            ..base_copy()
        },
        Case {
            name: "fields wrong: nothing is asked of Entra",
            form: |_, spec| {
                spec.app_id = "my app".to_owned();
                spec.tenant_id = "common".to_owned();
                spec.secret_key = String::new();
            },
            ok: false,
            problems: &[
                "validation.required",
                "validation.invalid",
                "validation.tenant_not_specific",
            ],
            field: "secret_key",
            stages: ["failed", "skipped", "skipped"],
            ..base_copy()
        },
        Case {
            name: "a next secret Entra refuses: a warning, the current one works",
            form: |_, spec| {
                spec.next_secret_key = generate_secret_value().expose().to_owned();
            },
            warnings: &["entra.secret_wrong"],
            ..base_copy()
        },
        Case {
            name: "Entra answers 503: about Entra, not the form",
            before: Some(|harness| harness.stack.entra.controls().fail_next(1, 503, None)),
            ok: false,
            problems: &["entra.unavailable"],
            stages: TOKEN_FAILED,
            ..base_copy()
        },
        Case {
            name: "password login",
            form: |ctx, spec| password_form(ctx, spec, &ctx.password),
            stages: ["ok", "skipped", "ok"],
            ..base_copy()
        },
        Case {
            name: "password login with the wrong password",
            form: |ctx, spec| password_form(ctx, spec, "not-the-password"),
            ok: false,
            problems: &["imap.authenticate_failed"],
            field: "secret_key",
            stages: ["ok", "skipped", "failed"],
            ..base_copy()
        },
    ]
}

fn password_form(_: &Ctx, spec: &mut pb::SourceSpec, password: &str) {
    spec.auth_type = pb::AuthType::Password as i32;
    spec.secret_key = password.to_owned();
    spec.app_id.clear();
    spec.tenant_id.clear();
}

fn base_copy() -> Case {
    Case {
        name: "",
        tenant: None,
        form: as_is,
        ok: true,
        problems: &[],
        field: "",
        checklist: None,
        warnings: &[],
        stages: OK,
        says: nothing,
        before: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_setup_step_done_wrong_gets_its_diagnosis() -> anyhow::Result<()> {
    let harness = Harness::start(TenantFixture::everything_right()).await?;
    let mut client = harness.client(&harness.admin).await?;
    let proxy = harness
        .stack
        .exchange_proxy(
            Script::exchange().rule(When::mailbox_command().then(Fault::not_connected())),
        )
        .await?;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.local_addr()?.port()
    };
    let password = "Correct-Horse-7".to_owned();
    {
        let dovecot = &harness.stack.dovecot;
        tokio::task::block_in_place(|| dovecot.set_password(PHISH_MAILBOX, &password))?;
    }
    let ctx = Ctx {
        app: harness.app(),
        plain_port: harness.stack.dovecot.imap_addr().port(),
        closed_port,
        proxy_port: proxy.addr().port(),
        password,
    };

    let mut failures = Vec::new();
    let mut dirty = false;
    for case in cases() {
        if dirty {
            harness.reset_tenant()?;
        }
        if let Some(change) = case.tenant {
            harness.change_tenant(change)?;
        }
        dirty = case.tenant.is_some();
        let mut spec = harness.spec();
        (case.form)(&ctx, &mut spec);
        if let Some(before) = case.before {
            before(&harness);
        }
        let reply = client
            .test_source(pb::TestSourceRequest {
                spec: Some(spec.clone()),
                source_id: String::new(),
            })
            .await?
            .into_inner();

        let reasons: Vec<&str> = reply.problems.iter().map(|p| p.reason.as_str()).collect();
        let warnings: Vec<&str> = reply.warnings.iter().map(|p| p.reason.as_str()).collect();
        let stages: Vec<&str> = reply.stages.iter().map(|s| s.outcome.as_str()).collect();
        let steps: Option<Vec<&str>> = reply
            .checklist
            .as_ref()
            .map(|c| c.steps.iter().map(|s| s.id.as_str()).collect());
        let text = format!(
            "{} {}",
            reply
                .problems
                .iter()
                .map(|p| format!("{} {}", p.message, p.upstream_code))
                .collect::<Vec<_>>()
                .join(" "),
            reply
                .checklist
                .iter()
                .flat_map(|c| c
                    .steps
                    .iter()
                    .map(|s| format!("{} {}", s.message, s.command)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut wrong = Vec::new();
        if reply.ok != case.ok {
            wrong.push(format!("ok is {}", reply.ok));
        }
        if reasons != case.problems {
            wrong.push(format!("problems {reasons:?}"));
        }
        if !case.field.is_empty()
            && reply.problems.first().map(|p| p.field.as_str()) != Some(case.field)
        {
            wrong.push(format!("first problem's field is not {}", case.field));
        }
        if steps.as_deref() != case.checklist {
            wrong.push(format!("checklist {steps:?}"));
        }
        if warnings != case.warnings {
            wrong.push(format!("warnings {warnings:?}"));
        }
        if stages != case.stages {
            wrong.push(format!("stages {stages:?}"));
        }
        for needle in (case.says)(&ctx) {
            if !text.contains(&needle) {
                wrong.push(format!("does not say {needle:?}"));
            }
        }
        if case.ok && !reply.folders.iter().any(|f| f.display_name == "INBOX") {
            wrong.push("INBOX not listed".to_owned());
        }
        // The reply never carries the secret (nor the token).
        let printed = format!("{reply:?}");
        if !spec.secret_key.is_empty() && printed.contains(&spec.secret_key) {
            wrong.push("the reply holds the secret".to_owned());
        }
        if printed.contains("eyJ") {
            wrong.push("the reply holds a token".to_owned());
        }
        // TM_SHOW=1 prints every diagnosis, to read them as a user would.
        if std::env::var_os("TM_SHOW").is_some() {
            eprintln!(
                "== {}\n{text}\nwarnings: {:?}\n",
                case.name,
                reply
                    .warnings
                    .iter()
                    .map(|w| &w.message)
                    .collect::<Vec<_>>()
            );
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n    reply: {text}",
                case.name,
                wrong.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    drop(proxy);
    harness.stop().await
}
