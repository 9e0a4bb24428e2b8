//! The `threatmail source …` and `threatmail apikey …` commands, run as the real binary
//! against a registry, token broker and fetcher in-process on the local stack (real Redis,
//! Dovecot judging tokens like Exchange, the Entra stand-in). One test binary, so it links
//! once.

mod harness;

use serde_json::Value;
use threatmail_source::status::{ConnectionState, FolderError, FolderStatus};
use threatmail_source::{SourceId, SourceStore};

use threatmail_testkit::tenant::PHISH_MAILBOX;

use crate::harness::{Harness, PHISH_REPORTS, Run};

fn names(folders: &Value) -> Vec<(String, bool)> {
    folders
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["display_name"].as_str().unwrap_or_default().to_owned(),
                f["fetch"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

fn tree_names(tree: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for folder in tree.as_array().into_iter().flatten() {
        out.push(
            folder["display_name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        out.extend(tree_names(&folder["children"]));
    }
    out
}

fn assert_no_secret(run: &Run, secret: &str) {
    assert!(!secret.is_empty());
    assert!(
        !run.all().contains(secret),
        "the secret is in the output:\n{}",
        run.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_prints_the_tree_then_folders_list_show_update_rm() -> anyhow::Result<()> {
    let h = Harness::start(true).await?;
    let secret = h.secret();
    let secret_file = h.write_file("secret", &format!("{secret}\n"))?;

    // The form's fields and the secret from a file: Save and Continue passes, the source is
    // saved and its folder tree printed.
    let form = h.form("Phishing reports");
    let mut args: Vec<&str> = vec!["source", "add"];
    args.extend(form.iter().map(String::as_str));
    args.extend([
        "--secret-key-file",
        secret_file.to_str().unwrap_or_default(),
    ]);
    let added = h.run(&args, None).await?.expect(0);
    assert!(
        added.stdout.contains("Save and Continue: passed"),
        "{}",
        added.stdout
    );
    for folder in ["INBOX", PHISH_REPORTS] {
        assert!(
            added.stdout.contains(&format!("[ ] {folder}")),
            "{folder} missing from the tree:\n{}",
            added.stdout
        );
    }
    assert!(added.stdout.contains("Saved source"), "{}", added.stdout);
    assert_no_secret(&added, &secret);

    // A second source with the secret on stdin, as JSON, selecting a folder at once.
    let form = h.form("Second");
    let mut args: Vec<&str> = vec!["source", "add", "--json", "--select", "INBOX"];
    args.extend(form.iter().map(String::as_str));
    let second = h.run(&args, Some(&format!("{secret}\n"))).await?.expect(0);
    assert_no_secret(&second, &secret);
    let doc = second.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["saved"], true);
    let tree = tree_names(&doc["test"]["folders"]);
    assert!(
        tree.contains(&"INBOX".to_owned()) && tree.contains(&PHISH_REPORTS.to_owned()),
        "{tree:?}"
    );
    assert_eq!(
        names(&doc["source"]["folders"]),
        [("INBOX".to_owned(), true)]
    );
    assert_eq!(doc["source"]["secret_set"], true);
    let second_id = doc["source"]["id"].as_str().unwrap_or_default().to_owned();

    // The same name again is refused by the registry, with what to do.
    let mut args: Vec<&str> = vec!["source", "add"];
    let form = h.form("phishing REPORTS");
    args.extend(form.iter().map(String::as_str));
    let taken = h.run(&args, Some(&secret)).await?.expect(1);
    assert!(
        taken.stderr.contains("registry.name_taken"),
        "{}",
        taken.stderr
    );

    // list: both, as a table and as JSON.
    let list = h.run(&["source", "list"], None).await?.expect(0);
    assert!(
        list.stdout.contains("Phishing reports") && list.stdout.contains("Second"),
        "{}",
        list.stdout
    );
    let list = h
        .run(&["source", "list", "--json"], None)
        .await?
        .expect(0)
        .json();
    assert_eq!(list["sources"].as_array().map(Vec::len), Some(2));

    // folders: select both by display name (by the source's name), then deselect one.
    let selected = h
        .run(
            &[
                "source",
                "folders",
                "Phishing reports",
                "--select",
                "INBOX",
                "--select",
                PHISH_REPORTS,
            ],
            None,
        )
        .await?
        .expect(0);
    for folder in ["INBOX", PHISH_REPORTS] {
        assert!(
            selected.stdout.contains(&format!("[x] {folder}")),
            "{}",
            selected.stdout
        );
    }
    let deselected = h
        .run(
            &[
                "source",
                "folders",
                "phishing reports",
                "--deselect",
                "inbox",
                "--json",
            ],
            None,
        )
        .await?
        .expect(0)
        .json();
    assert_eq!(
        names(&deselected["source"]["folders"]),
        [
            ("INBOX".to_owned(), false),
            (PHISH_REPORTS.to_owned(), true)
        ]
    );
    let raw: Vec<&str> = deselected["source"]["folders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["raw_name"].as_str())
        .collect();
    assert_eq!(
        raw,
        ["INBOX", PHISH_REPORTS],
        "the registry keeps the server's raw names"
    );

    let missing = h
        .run(
            &[
                "source",
                "folders",
                "Phishing reports",
                "--select",
                "No Such Folder",
            ],
            None,
        )
        .await?
        .expect(1);
    assert!(
        missing.stderr.contains("validation.folder_not_found"),
        "{}",
        missing.stderr
    );
    assert!(
        missing.stderr.contains(PHISH_REPORTS),
        "names what exists: {}",
        missing.stderr
    );
    let not_selected = h
        .run(
            &[
                "source",
                "folders",
                "Phishing reports",
                "--deselect",
                "INBOX",
            ],
            None,
        )
        .await?;
    // INBOX is in the selection (not fetched): deselecting it again is fine.
    not_selected.expect(0);

    // A folder that does not exist, chosen while adding: saved, and told so.
    let form = h.form("Third");
    let mut args: Vec<&str> = vec!["source", "add", "--select", "Nope"];
    args.extend(form.iter().map(String::as_str));
    let third = h.run(&args, Some(&secret)).await?.expect(1);
    assert!(
        third
            .stderr
            .contains("was saved, but its folders were not selected"),
        "{}",
        third.stderr
    );
    assert!(
        third.stderr.contains("validation.folder_not_found"),
        "{}",
        third.stderr
    );
    h.run(&["source", "rm", "Third"], None).await?.expect(0);

    let unknown = h
        .run(
            &[
                "source",
                "folders",
                "Phishing reports",
                "--deselect",
                "Spam",
            ],
            None,
        )
        .await?
        .expect(1);
    assert!(
        unknown.stderr.contains("not selected"),
        "{}",
        unknown.stderr
    );

    // show: the fields and the selection, never the secret.
    let show = h
        .run(&["source", "show", "Phishing reports"], None)
        .await?
        .expect(0);
    assert!(
        show.stdout.contains("soc-phish@corp.example"),
        "{}",
        show.stdout
    );
    assert!(
        show.stdout.contains(&format!("[x] {PHISH_REPORTS}")),
        "{}",
        show.stdout
    );
    assert!(show.stdout.contains("[ ] INBOX"), "{}", show.stdout);
    assert_no_secret(&show, &secret);

    // update: only the fields given change.
    let updated = h
        .run(
            &[
                "source",
                "update",
                "Phishing reports",
                "--tags",
                "phish,reported",
                "--json",
            ],
            None,
        )
        .await?
        .expect(0)
        .json();
    assert_eq!(
        updated["source"]["tags"],
        serde_json::json!(["phish", "reported"])
    );
    assert_eq!(updated["source"]["email"], "soc-phish@corp.example");
    assert_eq!(updated["source"]["secret_set"], true);

    // secret --next: tested, then staged from a named variable, with its expiry.
    let next_value = h.add_secret()?;
    let next = h
        .run_with(
            &[
                "source",
                "secret",
                "Phishing reports",
                "--next",
                "--secret-key-env",
                "NEXT_SECRET",
                "--expires",
                "2099-01-31",
                "--json",
            ],
            None,
            &[
                (
                    "TM_API_KEY_FILE",
                    h.admin_key_file.to_str().unwrap_or_default(),
                ),
                ("NEXT_SECRET", next_value.as_str()),
            ],
        )
        .await?
        .expect(0);
    assert!(!next.all().contains(&next_value));
    let next = next.json();
    assert_eq!(next["source"]["next_secret_set"], true);
    assert_eq!(
        next["source"]["next_secret_expires"],
        "2099-01-31T00:00:00Z"
    );
    assert_eq!(
        next["source"]["tags"],
        serde_json::json!(["phish", "reported"])
    );

    // secret --clear-next: the staged secret goes, and its expiry date with it.
    let cleared = h
        .run(
            &[
                "source",
                "secret",
                "Phishing reports",
                "--clear-next",
                "--json",
            ],
            None,
        )
        .await?
        .expect(0)
        .json();
    assert_eq!(cleared["source"]["next_secret_set"], false);
    assert_eq!(cleared["source"]["next_secret_expires"], "");

    // secret: the current one replaced (here by the same value, from a file).
    let replaced = h
        .run(
            &[
                "source",
                "secret",
                &second_id,
                "--secret-key-file",
                secret_file.to_str().unwrap_or_default(),
                "--expires",
                "2099-06-30",
                "--json",
            ],
            None,
        )
        .await?
        .expect(0);
    assert_no_secret(&replaced, &secret);
    assert_eq!(
        replaced.json()["source"]["secret_expires"],
        "2099-06-30T00:00:00Z"
    );

    // test: Save and Continue again with the stored secrets.
    let tested = h
        .run(&["source", "test", &second_id], None)
        .await?
        .expect(0);
    assert!(tested.stdout.contains("[x] INBOX"), "{}", tested.stdout);

    // status: the selected folders, never polled yet.
    let status = h
        .run(&["source", "status", "Phishing reports", "--json"], None)
        .await?
        .expect(0)
        .json();
    assert_eq!(
        names(&status["status"]["folders"]),
        [
            ("INBOX".to_owned(), false),
            (PHISH_REPORTS.to_owned(), true)
        ]
    );
    assert_eq!(status["status"]["caught_up"], false);

    // rm: gone from the list, and named as unknown afterwards.
    h.run(&["source", "rm", &second_id], None).await?.expect(0);
    let list = h
        .run(&["source", "list", "--json"], None)
        .await?
        .expect(0)
        .json();
    assert_eq!(list["sources"].as_array().map(Vec::len), Some(1));
    let gone = h
        .run(&["source", "show", &second_id], None)
        .await?
        .expect(1);
    assert!(
        gone.stderr.contains("Phishing reports"),
        "names the sources there are: {}",
        gone.stderr
    );
    h.stop().await
}

/// `source add --json` of the fixture's source "Phishing reports" with `secret`: its id and
/// the JSON answer.
async fn add_phishing_reports(h: &Harness, secret: &str) -> anyhow::Result<(String, Value)> {
    let form = h.form("Phishing reports");
    let mut args: Vec<&str> = vec!["source", "add"];
    args.extend(form.iter().map(String::as_str));
    args.push("--json");
    let added = h.run(&args, Some(secret)).await?.expect(0).json();
    let id = added["source"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Ok((id, added))
}

/// `source secret` asks Entra ID for a token with the new value before saving it: a wrong
/// value (current or next) is refused with Entra's cause and nothing changes, so syncing
/// goes on with the secret that works; `--no-test` saves without asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_entra_refuses_is_not_saved() -> anyhow::Result<()> {
    let h = Harness::start(true).await?;
    let secret = h.secret();
    let (id, added) = add_phishing_reports(&h, &secret).await?;
    let version = added["source"]["version"].clone();

    let wrong = "Wr0ng~next-secret-value-entra-refuses";
    let stage_next = [
        "source",
        "secret",
        &id,
        "--next",
        "--expires",
        "2099-01-31",
        "--json",
    ];
    for next in [true, false] {
        let mut args = vec!["source", "secret", &id, "--expires", "2099-01-31"];
        if next {
            args.push("--next");
        }
        let refused = h.run(&args, Some(wrong)).await?.expect(1);
        assert!(
            refused.stderr.contains("the secret was not saved")
                && refused.stderr.contains("entra.secret_wrong"),
            "next: {next}: {}",
            refused.stderr
        );
        assert!(!refused.all().contains(wrong), "the value is never printed");
    }
    let shown = h
        .run(&["source", "show", &id, "--json"], None)
        .await?
        .expect(0)
        .json();
    assert_eq!(shown["source"]["version"], version, "nothing was saved");
    assert_eq!(shown["source"]["next_secret_set"], false);
    h.run(&["source", "test", &id], None).await?.expect(0);

    // In JSON: the test's answer, and saved: false.
    let refused = h.run(&stage_next, Some(wrong)).await?.expect(1).json();
    assert_eq!(refused["saved"], false);
    assert_eq!(refused["test"]["stages"][1]["outcome"], "failed");

    // --no-test stages it anyway (the rollover would then report it).
    let staged = h
        .run(&[&stage_next[..], &["--no-test"]].concat(), Some(wrong))
        .await?
        .expect(0)
        .json();
    assert_eq!(staged["source"]["next_secret_set"], true);

    // A key that may update sources but not create them tests and saves a right one.
    let updater = h
        .api_key(&[threatmail_auth::Role::View, threatmail_auth::Role::Update])
        .await?;
    let updater_file = h.write_file("updater-key", &updater)?;
    let next_value = h.add_secret()?;
    let staged = h
        .run_with(
            &stage_next,
            Some(&next_value),
            &[("TM_API_KEY_FILE", updater_file.to_str().unwrap_or_default())],
        )
        .await?
        .expect(0)
        .json();
    assert_eq!(staged["source"]["next_secret_set"], true);
    h.stop().await
}

/// `source update` runs Save and Continue when it changes how the source logs in (a secret
/// here) and saves nothing it refuses; other changes are saved as they are. `source secret`
/// passes on the test's warnings, and a bad expiry date is refused before anything is saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_how_a_source_logs_in_are_tested_before_saving() -> anyhow::Result<()> {
    let h = Harness::start(true).await?;
    let secret = h.secret();
    let (id, added) = add_phishing_reports(&h, &secret).await?;
    let version = |shown: &serde_json::Value| shown["source"]["version"].clone();
    let show_args = ["source", "show", id.as_str(), "--json"];
    let show = || h.run(&show_args, None);

    let wrong = "Wr0ng~secret-value-entra-refuses";
    let refused = h
        .run(&["source", "update", &id, "--new-secret"], Some(wrong))
        .await?
        .expect(1);
    assert!(
        refused.stderr.contains("not saved") && refused.all().contains("entra.secret_wrong"),
        "{}",
        refused.all()
    );
    assert!(!refused.all().contains(wrong), "the value is never printed");
    let refused = h
        .run(
            &["source", "update", &id, "--new-secret", "--json"],
            Some(wrong),
        )
        .await?
        .expect(1)
        .json();
    assert_eq!(
        (&refused["ok"], &refused["saved"]),
        (&Value::Bool(false), &Value::Bool(false))
    );
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("token")),
        "{refused}"
    );
    assert_eq!(
        version(&show().await?.expect(0).json()),
        version(&added),
        "nothing saved"
    );

    // Not about the login: saved without a test.
    let updated = h
        .run(
            &["source", "update", &id, "--poll-interval", "10m", "--json"],
            None,
        )
        .await?
        .expect(0)
        .json();
    assert_eq!(updated["source"]["poll_interval_seconds"], 600, "{updated}");

    // The right secret with an expiry date already past: saved, and the test says so.
    let replace_expiring = |date: &'static str| {
        let args = ["source", "secret", id.as_str(), "--expires", date];
        let secret = secret.clone();
        let h = &h;
        async move { h.run(&args, Some(&secret)).await }
    };
    let replaced = replace_expiring("2020-01-01").await?.expect(0);
    assert!(
        replaced.stderr.contains("warning:") && replaced.stderr.contains("2020-01-01"),
        "{}",
        replaced.stderr
    );
    // A date that is none: refused by the test's validation, nothing saved.
    let before = version(&show().await?.expect(0).json());
    let bad_date = replace_expiring("notadate").await?.expect(1);
    assert!(
        bad_date.stderr.contains("not saved") && bad_date.stderr.contains("secret_expires"),
        "{}",
        bad_date.stderr
    );
    assert_eq!(version(&show().await?.expect(0).json()), before);
    // A key that may update but not view: told why it cannot find the source.
    let update_only = h.api_key(&[threatmail_auth::Role::Update]).await?;
    let update_only = h.write_file("update-only-key", &update_only)?;
    let blind = h
        .run_with(
            &["source", "test", &id],
            None,
            &[("TM_API_KEY_FILE", update_only.to_str().unwrap_or_default())],
        )
        .await?
        .expect(1);
    assert!(
        blind.stderr.contains("looked up first") && blind.stderr.contains("view,update"),
        "{}",
        blind.stderr
    );
    // Port 0 is no port (leaving it out means 993).
    let zero = h
        .run(&["source", "update", &id, "--port", "0"], None)
        .await?
        .expect(2);
    assert!(zero.stderr.contains("--port"), "{}", zero.stderr);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_save_and_continue_prints_its_diagnosis_exits_1_and_saves_nothing()
-> anyhow::Result<()> {
    let h = Harness::start(true).await?;
    let secret = h.secret();

    // A wrong secret value (on stdin): Entra's exact cause.
    let wrong_secret = "Wr0ng~secret-value-that-entra-refuses";
    let form = h.form("Phishing reports");
    let mut args: Vec<&str> = vec!["source", "add"];
    args.extend(form.iter().map(String::as_str));
    let run = h.run(&args, Some(wrong_secret)).await?.expect(1);
    assert!(run.stdout.contains("entra.secret_wrong"), "{}", run.stdout);
    assert!(
        run.stdout.contains("secret_key:"),
        "names the field: {}",
        run.stdout
    );
    assert!(run.stdout.contains("Nothing was saved"), "{}", run.stdout);
    assert!(run.stderr.contains("token stage"), "{}", run.stderr);
    assert_no_secret(&run, wrong_secret);

    // A tenant id of no tenant, as JSON.
    let mut form = h.form("Phishing reports");
    let tenant = form
        .iter()
        .position(|a| a == "--tenant-id")
        .map(|i| i + 1)
        .unwrap_or_default();
    form[tenant] = threatmail_testkit::tenant::new_guid();
    let mut args: Vec<&str> = vec!["source", "add", "--json"];
    args.extend(form.iter().map(String::as_str));
    let run = h.run(&args, Some(&secret)).await?.expect(1);
    assert_no_secret(&run, &secret);
    let doc = run.json();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["saved"], false);
    assert_eq!(
        doc["test"]["problems"][0]["reason"],
        "entra.tenant_not_found"
    );
    assert_eq!(doc["test"]["problems"][0]["field"], "tenant_id");

    // Admin consent never granted: the token has no role and the login is refused.
    h.change_tenant(|f| {
        if let Some(app) = f.primary_app_mut() {
            app.admin_consent = false;
        }
    })?;
    let form = h.form("Phishing reports");
    let mut args: Vec<&str> = vec!["source", "add"];
    args.extend(form.iter().map(String::as_str));
    let run = h.run(&args, Some(&secret)).await?.expect(1);
    assert!(
        run.stdout.contains("token.imap_consent_missing"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("admin consent"), "{}", run.stdout);
    assert!(run.stderr.contains("login stage"), "{}", run.stderr);
    assert_no_secret(&run, &secret);

    // New-ServicePrincipal never run: Exchange's one answer, so the ordered checklist with
    // its PowerShell, as JSON too.
    h.change_tenant(|f| {
        if let Some(app) = f.primary_app_mut() {
            app.admin_consent = true;
        }
        if let Some(tenant) = f.primary_tenant_mut() {
            tenant.exchange.service_principals.clear();
        }
    })?;
    let run = h.run(&args, Some(&secret)).await?.expect(1);
    assert!(
        run.stdout.contains("Check, in this order:"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("PS> Get-ServicePrincipal"),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains("imap.authenticate_failed"),
        "{}",
        run.stderr
    );
    let mut json_args = args.clone();
    json_args.push("--json");
    let doc = h.run(&json_args, Some(&secret)).await?.expect(1).json();
    let steps: Vec<&str> = doc["test"]["checklist"]["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["id"].as_str())
        .collect();
    assert_eq!(
        steps,
        [
            "exchange.service_principal",
            "exchange.full_access",
            "source.mailbox_address",
            "exchange.imap_enabled"
        ]
    );

    // Missing fields are all listed at once, without asking Entra.
    let run = h
        .run(&["source", "add", "--name", "x", "--json"], Some(&secret))
        .await?
        .expect(1);
    let doc = run.json();
    let fields: Vec<&str> = doc["test"]["problems"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["field"].as_str())
        .collect();
    for field in ["email", "app_id", "tenant_id"] {
        assert!(fields.contains(&field), "{field} not in {fields:?}");
    }

    let list = h
        .run(&["source", "list", "--json"], None)
        .await?
        .expect(0)
        .json();
    assert_eq!(
        list["sources"].as_array().map(Vec::len),
        Some(0),
        "nothing was saved"
    );

    // A password source (any other IMAP server): a wrong password names the field, the
    // right one lists the folders.
    let password = "Correct-Horse-7";
    {
        let dovecot = &h.stack.dovecot;
        tokio::task::block_in_place(|| dovecot.set_password(PHISH_MAILBOX, password))?;
    }
    let imaps = h.stack.dovecot.imaps_addr();
    let (host, port) = (imaps.ip().to_string(), imaps.port().to_string());
    let args = [
        "source",
        "add",
        "--name",
        "Lab mailbox",
        "--auth-type",
        "password",
        "--email",
        PHISH_MAILBOX,
        "--host",
        &host,
        "--port",
        &port,
    ];
    let run = h.run(&args, Some("not-the-password")).await?.expect(1);
    assert!(
        run.stdout.contains("imap.authenticate_failed"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("secret_key:"), "{}", run.stdout);
    let run = h.run(&args, Some(password)).await?.expect(0);
    assert!(
        run.stdout.contains(&format!("[ ] {PHISH_REPORTS}")),
        "{}",
        run.stdout
    );
    assert_no_secret(&run, password);
    h.stop().await
}

#[tokio::test]
async fn the_secret_is_never_a_command_line_argument() -> anyhow::Result<()> {
    let value = "S3cret~on-the-command-line";
    for flag in ["--secret-key", "--secret", "--password", "--client-secret"] {
        let run = harness::run(
            harness::binary(),
            &["source", "add", "--name", "x", flag, value],
            None,
        )
        .await?
        .expect(2);
        // Refused by clap, or (the likeliest guesses) caught to say where it goes and
        // that it is exposed now.
        let told = match flag {
            "--secret" | "--secret-key" => {
                run.stderr.contains("--secret-key-file") && run.stderr.contains("exposed")
            }
            _ => run.stderr.contains("unexpected argument"),
        };
        assert!(told, "{flag}: {}", run.stderr);
        assert!(!run.all().contains(value), "{flag}: {}", run.all());
    }
    let help = harness::run(harness::binary(), &["source", "add", "--help"], None)
        .await?
        .expect(0);
    for line in help
        .stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("--secret"))
    {
        let flag = line.split_whitespace().next().unwrap_or_default();
        assert!(
            ["--secret-key-file", "--secret-key-env", "--secret-expires"].contains(&flag),
            "a flag that could carry the secret: {line}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_unreachable_registry_says_which_url_and_how_to_start_it() -> anyhow::Result<()> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}", listener.local_addr()?);
    drop(listener);
    let mut command = harness::binary();
    command
        .env("TM_REGISTRY_URL", &url)
        .env("TM_API_KEY", "tmk1.x.y");
    let run = harness::run(command, &["source", "list"], None)
        .await?
        .expect(1);
    let line = run.stderr.trim();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(line.contains(&url), "{line}");
    assert!(line.contains("threatmail serve"), "{line}");
    // Without a key: what to give.
    let mut command = harness::binary();
    command.env("TM_REGISTRY_URL", &url);
    let run = harness::run(command, &["source", "list", "--json"], None)
        .await?
        .expect(1);
    assert_eq!(run.json()["ok"], false);
    assert!(run.stderr.contains("TM_API_KEY_FILE"), "{}", run.stderr);
    Ok(())
}

/// Bootstraps run at once make one admin key: the others are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bootstraps_make_one_admin_key() -> anyhow::Result<()> {
    let h = Harness::start(false).await?;
    let redis = h.stack.redis.url();
    let bootstrap = |name: &'static str| {
        let redis = redis.clone();
        let h = &h;
        async move {
            h.run_with(
                &[
                    "apikey",
                    "create",
                    "--bootstrap",
                    "--redis-url",
                    &redis,
                    "--name",
                    name,
                    "--role",
                    "admin",
                ],
                None,
                &[],
            )
            .await
        }
    };
    let (a, b, c, d) = tokio::join!(
        bootstrap("race 0"),
        bootstrap("race 1"),
        bootstrap("race 2"),
        bootstrap("race 3")
    );
    let codes: Vec<i32> = [a?, b?, c?, d?].iter().map(|run| run.code).collect();
    assert_eq!(codes.iter().filter(|c| **c == 0).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|c| **c == 1).count(), 3, "{codes:?}");
    let keys =
        threatmail_auth::api_key::RedisApiKeys::new(h.stack.redis.connection_manager().await?);
    let admins = keys
        .list()
        .await?
        .into_iter()
        .filter(|k| !k.revoked && k.roles.grants(threatmail_auth::Role::Admin))
        .count();
    assert_eq!(admins, 1);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apikeys_bootstrap_create_list_revoke() -> anyhow::Result<()> {
    let h = Harness::start(false).await?;
    let redis = h.stack.redis.url();

    // The first admin key, straight into the registry's Redis; only the key on stdout.
    let boot = h
        .run_with(
            &[
                "apikey",
                "create",
                "--bootstrap",
                "--redis-url",
                &redis,
                "--name",
                "first admin",
                "--role",
                "admin",
            ],
            None,
            &[],
        )
        .await?
        .expect(0);
    let admin = boot.stdout.trim().to_owned();
    assert!(
        admin.starts_with("tmk1.") && !admin.contains('\n'),
        "{}",
        boot.stdout
    );
    let admin_file = h.write_file("boot.key", &admin)?;
    let admin_env = [("TM_API_KEY_FILE", admin_file.to_str().unwrap_or_default())];

    // A second bootstrap is refused while that admin key exists.
    let again = h
        .run_with(
            &[
                "apikey",
                "create",
                "--bootstrap",
                "--redis-url",
                &redis,
                "--name",
                "x",
                "--role",
                "admin",
            ],
            None,
            &[],
        )
        .await?
        .expect(1);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);

    // Through the registry with the bootstrapped key.
    let made = h
        .run_with(
            &[
                "apikey", "create", "--name", "analyst", "--role", "view", "--json",
            ],
            None,
            &admin_env,
        )
        .await?
        .expect(0)
        .json();
    let viewer = made["key"].as_str().unwrap_or_default().to_owned();
    let viewer_id = made["id"].as_str().unwrap_or_default().to_owned();
    assert!(viewer.starts_with("tmk1."), "{made}");
    assert_eq!(made["roles"], serde_json::json!(["view"]));

    let list = h
        .run_with(&["apikey", "list", "--json"], None, &admin_env)
        .await?
        .expect(0);
    assert!(
        !list.all().contains(&viewer) && !list.all().contains(&admin),
        "no key in a list"
    );
    let keys = list.json();
    let listed: Vec<(String, bool)> = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|k| {
            (
                k["name"].as_str().unwrap_or_default().to_owned(),
                k["revoked"].as_bool().unwrap_or(true),
            )
        })
        .collect();
    assert_eq!(listed.len(), 2);
    assert!(
        listed.contains(&("analyst".to_owned(), false)),
        "{listed:?}"
    );
    let table = h
        .run_with(&["apikey", "list"], None, &admin_env)
        .await?
        .expect(0);
    assert!(
        table.stdout.contains("first admin") && table.stdout.contains(&viewer_id),
        "{}",
        table.stdout
    );

    // The view key reads sources but may not manage keys.
    let viewer_env = [("TM_API_KEY", viewer.as_str())];
    h.run_with(&["source", "list"], None, &viewer_env)
        .await?
        .expect(0);
    let denied = h
        .run_with(&["apikey", "list"], None, &viewer_env)
        .await?
        .expect(1);
    assert!(
        denied.stderr.contains("PermissionDenied"),
        "{}",
        denied.stderr
    );

    // Revoked, it is refused.
    h.run_with(&["apikey", "revoke", &viewer_id], None, &admin_env)
        .await?
        .expect(0);
    let refused = h
        .run_with(&["source", "list"], None, &viewer_env)
        .await?
        .expect(1);
    assert!(
        refused.stderr.contains("Unauthenticated"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("API key"),
        "says what to fix: {}",
        refused.stderr
    );
    let keys = h
        .run_with(&["apikey", "list", "--json"], None, &admin_env)
        .await?
        .expect(0)
        .json();
    let revoked = keys["keys"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|k| k["id"] == viewer_id.as_str())
        .map(|k| k["revoked"].clone());
    assert_eq!(revoked, Some(Value::Bool(true)));
    let unknown = h
        .run_with(&["apikey", "revoke", "0000"], None, &admin_env)
        .await?
        .expect(1);
    assert!(
        unknown.stderr.contains("registry.api_key_not_found"),
        "{}",
        unknown.stderr
    );

    // Bootstrap refuses to make a key that is not admin.
    let not_admin = h
        .run_with(
            &[
                "apikey",
                "create",
                "--bootstrap",
                "--redis-url",
                &redis,
                "--name",
                "x",
                "--role",
                "view",
            ],
            None,
            &[],
        )
        .await?
        .expect(1);
    assert!(
        not_admin.stderr.contains("--role admin"),
        "{}",
        not_admin.stderr
    );
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_follows_a_first_sync_until_every_selected_folder_caught_up()
-> anyhow::Result<()> {
    let h = Harness::start(true).await?;
    let secret = h.secret();
    let form = h.form("Phishing reports");
    let mut args: Vec<&str> = vec![
        "source",
        "add",
        "--json",
        "--select",
        "INBOX",
        "--select",
        PHISH_REPORTS,
    ];
    args.extend(form.iter().map(String::as_str));
    let doc = h.run(&args, Some(&secret)).await?.expect(0).json();
    let id = SourceId::parse(doc["source"]["id"].as_str().unwrap_or_default())?;

    // Stands in for the fetchers: writes each folder's status as a sync moves on.
    let store = SourceStore::new(h.stack.redis.connection_manager().await?);
    let write = |raw: &str, state: ConnectionState, synced: u64, polled: bool| {
        let mut status = FolderStatus::new(raw);
        status.connection_state = state;
        status.messages_synced = synced;
        status.last_poll = polled.then_some(1_764_800_000);
        status
    };
    store
        .write_folder_status(&id, &write("INBOX", ConnectionState::Syncing, 3, false))
        .await?;
    let sync = {
        let store = store.clone();
        let id = id.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            store
                .write_folder_status(&id, &write("INBOX", ConnectionState::Idle, 10, true))
                .await?;
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
            store
                .write_folder_status(&id, &write(PHISH_REPORTS, ConnectionState::Idle, 4, true))
                .await?;
            anyhow::Ok(())
        })
    };
    let watched = h
        .run(
            &[
                "source",
                "status",
                "Phishing reports",
                "--watch",
                "--interval",
                "200ms",
                "--timeout",
                "60s",
                "--json",
            ],
            None,
        )
        .await?
        .expect(0);
    sync.await??;
    let doc = watched.json();
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["status"]["caught_up"], true);
    let synced: Vec<u64> = doc["status"]["folders"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["messages_synced"].as_u64())
        .collect();
    assert_eq!(synced, [10, 4]);
    // The progress went to stderr as it changed: syncing first, caught up at the end.
    assert!(watched.stderr.contains("syncing"), "{}", watched.stderr);
    assert!(
        watched.stderr.contains("0/2 folders caught up"),
        "{}",
        watched.stderr
    );
    assert!(
        watched
            .stderr
            .contains("2/2 folders caught up, 14 messages synced"),
        "{}",
        watched.stderr
    );

    // A failure from before the source's last change (the user's fix) does not end the
    // watch: the fetchers try the source again first.
    let failed_at = |at: i64| {
        let mut failed = write(PHISH_REPORTS, ConnectionState::Failed, 4, true);
        failed.last_error = Some(FolderError {
            reason: "imap.authenticate_failed".to_owned(),
            message: "Exchange refused the login".to_owned(),
            upstream_code: "NO AUTHENTICATE failed.".to_owned(),
            checklist: vec![
                "New-ServicePrincipal with the Enterprise application's Object ID".to_owned(),
            ],
            at,
        });
        failed
    };
    store
        .write_folder_status(&id, &failed_at(1_764_800_100))
        .await?;
    let harness = &h;
    let watch_for = |timeout: &'static str| async move {
        harness
            .run(
                &[
                    "source",
                    "status",
                    "Phishing reports",
                    "--watch",
                    "--interval",
                    "200ms",
                    "--timeout",
                    timeout,
                ],
                None,
            )
            .await
    };
    let stale = watch_for("2s").await?.expect(1);
    assert!(
        stale.stderr.contains("not caught up after"),
        "{}",
        stale.stderr
    );
    assert!(!stale.stderr.contains("needs you"), "{}", stale.stderr);

    // A folder whose sync needs the user, failing since the source's last change, ends the
    // watch with its error and exit 1.
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    )?;
    store.write_folder_status(&id, &failed_at(now)).await?;
    let run = watch_for("60s").await?.expect(1);
    assert!(
        run.stdout.contains("imap.authenticate_failed"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("1. New-ServicePrincipal"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains(PHISH_REPORTS), "{}", run.stderr);
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_ends_when_a_real_first_sync_has_caught_up() -> anyhow::Result<()> {
    // A fetcher that syncs: the watch follows the statuses its scheduler writes.
    let h = Harness::start_with(true, true).await?;
    let secret = h.secret();
    let form = h.form("Phishing reports");
    let mut args: Vec<&str> = vec![
        "source",
        "add",
        "--select",
        "INBOX",
        "--select",
        PHISH_REPORTS,
    ];
    args.extend(form.iter().map(String::as_str));
    let added = h.run(&args, Some(&secret)).await?.expect(0);
    assert!(
        added.stdout.contains("--watch"),
        "points at the watch: {}",
        added.stdout
    );
    let watched = h
        .run(
            &[
                "source",
                "status",
                "Phishing reports",
                "--watch",
                "--interval",
                "200ms",
                "--timeout",
                "90s",
                "--json",
            ],
            None,
        )
        .await?
        .expect(0);
    let doc = watched.json();
    assert_eq!(doc["status"]["caught_up"], true, "{doc}");
    let folders: Vec<(String, String, u64)> = doc["status"]["folders"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| {
            (
                f["display_name"].as_str().unwrap_or_default().to_owned(),
                f["connection_state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                f["messages_synced"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    // The fixture holds one message in each folder.
    assert_eq!(
        folders,
        [
            ("INBOX".to_owned(), "idle".to_owned(), 1),
            (PHISH_REPORTS.to_owned(), "idle".to_owned(), 1)
        ]
    );
    assert!(
        watched
            .stderr
            .contains("2/2 folders caught up, 2 messages synced"),
        "{}",
        watched.stderr
    );
    h.stop().await
}
