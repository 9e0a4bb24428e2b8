//! The test kit's Dovecot against real clients: TLS verified against the test CA, plain
//! LOGIN with per-mailbox passwords, seeding and folder names (modified UTF-7 both ways), and
//! XOAUTH2/OAUTHBEARER judged the way Exchange Online does.
//!
//! Tokens are minted here with an `openssl`-generated RSA key and ring, shaped like Entra v1
//! app-only tokens.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use async_imap::Authenticator;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use futures::TryStreamExt as _;
use ring::rand::SystemRandom;
use ring::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{PrivatePkcs8KeyDer, ServerName};
use serde_json::{Value, json};
use threatmail_core::mutf7;
use threatmail_testkit::ca::TestCa;
use threatmail_testkit::dovecot::{
    Dovecot, DovecotOptions, MailboxGrant, OAuthSettings, SigningKeyFile,
};
use threatmail_testkit::net::wait_for;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

type Tls = TlsStream<TcpStream>;
type Session = async_imap::Session<Tls>;

const TENANT: &str = "5f0c1e2d-3b4a-4c5d-8e9f-0a1b2c3d4e5f";
const OTHER_TENANT: &str = "99999999-8888-7777-6666-555555555555";
/// The app (client) id.
const APP_ID: &str = "11111111-2222-3333-4444-555555555555";
/// The enterprise application's (service principal's) object id: what tokens carry in `oid`.
const ENTERPRISE_OID: &str = "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee";
/// The app registration's object id: the classic mistake for New-ServicePrincipal.
const REGISTRATION_OID: &str = "12121212-3434-5656-7878-909090909090";
const OTHER_APP_ID: &str = "22222222-3333-4444-5555-666666666666";
const OTHER_APP_OID: &str = "bbbbbbbb-cccc-dddd-eeee-ffffffffffff";
const ALICE: &str = "alice@corp.test";
const SHARED: &str = "shared-inbox@corp.test";
const BOB: &str = "bob@corp.test";
const CAROL: &str = "carol@corp.test";
const DAVE: &str = "dave@corp.test";
const AUDIENCE: &str = "https://outlook.office365.com";

/// Bound for every network step of these tests.
const STEP: Duration = Duration::from_secs(60);

async fn within<T>(
    what: &str,
    future: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(STEP, future)
        .await
        .with_context(|| format!("timed out: {what}"))?
}

// ---------------------------------------------------------------------------------------
// Tokens

struct TestKey {
    pair: RsaKeyPair,
    public_key_pem: String,
}

fn openssl(args: &[&str], stdin: Option<&[u8]>) -> anyhow::Result<Vec<u8>> {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to run openssl")?;
    let mut input = child.stdin.take().context("no stdin")?;
    input.write_all(stdin.unwrap_or_default())?;
    drop(input);
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

fn generate_key() -> anyhow::Result<TestKey> {
    let private = openssl(
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
        ],
        None,
    )?;
    let public = openssl(&["pkey", "-pubout"], Some(&private))?;
    let der = PrivatePkcs8KeyDer::from_pem_slice(&private)?;
    let pair = RsaKeyPair::from_pkcs8(der.secret_pkcs8_der())
        .map_err(|e| anyhow::anyhow!("ring refused the key: {e}"))?;
    Ok(TestKey {
        pair,
        public_key_pem: String::from_utf8(public)?,
    })
}

/// Two keys shared by every test of this binary (RSA generation is slow).
fn keys() -> &'static (TestKey, TestKey) {
    static KEYS: OnceLock<(TestKey, TestKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let first = generate_key().unwrap_or_else(|e| panic!("key generation: {e:#}"));
        let second = generate_key().unwrap_or_else(|e| panic!("key generation: {e:#}"));
        (first, second)
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn issuer(tenant: &str) -> String {
    format!("https://sts.windows.net/{tenant}/")
}

/// The claims of an Entra v1 app-only token for Exchange: no mailbox in it.
fn claims(app_id: &str, oid: &str) -> Value {
    let now = now();
    json!({
        "aud": AUDIENCE,
        "iss": issuer(TENANT),
        "iat": now - 300,
        "nbf": now - 300,
        "exp": now + 3600,
        "appid": app_id,
        "appidacr": "1",
        "idp": issuer(TENANT),
        "oid": oid,
        "sub": oid,
        "tid": TENANT,
        "ver": "1.0",
        "roles": ["IMAP.AccessAsApp"],
    })
}

fn sign(key: &TestKey, kid: &str, claims: &Value) -> String {
    let header = json!({"typ": "JWT", "alg": "RS256", "kid": kid});
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut signature = vec![0; key.pair.public().modulus_len()];
    key.pair
        .sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            signing_input.as_bytes(),
            &mut signature,
        )
        .unwrap_or_else(|e| panic!("signing failed: {e}"));
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

fn good_token() -> String {
    sign(&keys().0, "k1", &claims(APP_ID, ENTERPRISE_OID))
}

fn grant(app_id: &str, object_id: &str, mailbox: &str) -> MailboxGrant {
    MailboxGrant {
        app_id: app_id.to_owned(),
        object_id: object_id.to_owned(),
        mailbox: mailbox.to_owned(),
    }
}

/// Exchange-like setup: the app may open alice and the shared inbox; bob's grant was made
/// with the app registration's object id; dave is granted to another app.
fn exchange_settings() -> OAuthSettings {
    OAuthSettings {
        issuers: vec![issuer(TENANT)],
        signing_keys: vec![SigningKeyFile {
            kid: "k1".to_owned(),
            public_key_pem: keys().0.public_key_pem.clone(),
        }],
        grants: vec![
            grant(APP_ID, ENTERPRISE_OID, ALICE),
            grant(APP_ID, ENTERPRISE_OID, SHARED),
            grant(APP_ID, REGISTRATION_OID, BOB),
            grant(OTHER_APP_ID, OTHER_APP_OID, DAVE),
        ],
    }
}

// ---------------------------------------------------------------------------------------
// Clients

async fn tls_stream(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> anyhow::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(config);
    Ok(connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

/// An IMAPS client that has read the greeting.
async fn imaps_client(dovecot: &Dovecot, ca: &TestCa) -> anyhow::Result<async_imap::Client<Tls>> {
    let stream = tls_stream(dovecot.imaps_addr(), ca.client_config()?).await?;
    let mut client = async_imap::Client::new(stream);
    client
        .read_response()
        .await?
        .context("no greeting from the server")?;
    Ok(client)
}

async fn password_login(
    dovecot: &Dovecot,
    ca: &TestCa,
    user: &str,
    password: &str,
) -> anyhow::Result<Result<Session, String>> {
    let client = imaps_client(dovecot, ca).await?;
    Ok(client
        .login(user, password)
        .await
        .map_err(|(e, _)| e.to_string()))
}

/// SASL XOAUTH2: `user=<mailbox>^Aauth=Bearer <token>^A^A`, then an empty response to the
/// JSON error challenge if the server refuses.
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

/// Logs in with XOAUTH2 over TLS; `Err` carries the server's refusal text.
async fn xoauth2(
    dovecot: &Dovecot,
    ca: &TestCa,
    user: &str,
    token: &str,
) -> anyhow::Result<Result<Session, String>> {
    let client = imaps_client(dovecot, ca).await?;
    let auth = XOAuth2 {
        user: user.to_owned(),
        token: token.to_owned(),
        calls: 0,
    };
    Ok(client
        .authenticate("XOAUTH2", auth)
        .await
        .map_err(|(e, _)| e.to_string()))
}

async fn assert_xoauth2_ok(
    dovecot: &Dovecot,
    ca: &TestCa,
    user: &str,
    token: &str,
) -> anyhow::Result<()> {
    match within("xoauth2", xoauth2(dovecot, ca, user, token)).await? {
        Ok(mut session) => {
            // The session really is the mailbox's: INBOX can be opened.
            session.examine("INBOX").await?;
            session.logout().await?;
            Ok(())
        }
        Err(refusal) => bail!(
            "XOAUTH2 as {user} refused: {refusal}\n{}",
            dovecot.logged_refusals().await
        ),
    }
}

async fn assert_xoauth2_refused(
    dovecot: &Dovecot,
    ca: &TestCa,
    case: &str,
    user: &str,
    token: &str,
) -> anyhow::Result<()> {
    match within("xoauth2", xoauth2(dovecot, ca, user, token)).await? {
        Ok(_) => bail!("{case}: XOAUTH2 as {user} was accepted"),
        Err(refusal) => {
            assert!(
                refusal.contains("[AUTHENTICATIONFAILED]"),
                "{case}: unexpected refusal {refusal}"
            );
            Ok(())
        }
    }
}

/// A continuation request or the tagged reply of `tag`, whichever comes first.
enum Reply {
    Continue(String),
    Tagged(String),
}

async fn next_reply(reader: &mut BufReader<Tls>, tag: &str) -> anyhow::Result<Reply> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        if let Some(challenge) = line.strip_prefix("+ ") {
            return Ok(Reply::Continue(challenge.trim_end().to_owned()));
        }
        if line.starts_with(&format!("{tag} ")) {
            return Ok(Reply::Tagged(line));
        }
    }
}

/// A raw OAUTHBEARER exchange over TLS (RFC 7628); returns the tagged reply line.
async fn oauthbearer(
    dovecot: &Dovecot,
    ca: &TestCa,
    user: &str,
    token: &str,
) -> anyhow::Result<String> {
    let stream = tls_stream(dovecot.imaps_addr(), ca.client_config()?).await?;
    let mut reader = BufReader::new(stream);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).await?;
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let response = STANDARD.encode(format!(
        "n,a={user},\x01host=localhost\x01port=993\x01auth=Bearer {token}\x01\x01"
    ));
    reader
        .get_mut()
        .write_all(format!("b1 AUTHENTICATE OAUTHBEARER {response}\r\n").as_bytes())
        .await?;
    let challenge = match next_reply(&mut reader, "b1").await? {
        Reply::Tagged(line) => return Ok(line),
        Reply::Continue(challenge) => challenge,
    };
    // An error challenge, {"status":"invalid_token",...}: answer it, then the NO follows.
    let json: Value = serde_json::from_slice(&STANDARD.decode(&challenge)?)?;
    assert_eq!(json["status"], "invalid_token");
    reader.get_mut().write_all(b"\r\n").await?;
    match next_reply(&mut reader, "b1").await? {
        Reply::Tagged(line) => Ok(line),
        Reply::Continue(again) => bail!("a second challenge: {again}"),
    }
}

/// LIST names come back from async-imap (imap-proto) with quoted-string escapes still in.
fn unescape_quoted(name: &str) -> String {
    let mut out = String::new();
    let mut chars = name.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn message(subject: &str, body: &str) -> Vec<u8> {
    format!(
        "From: Reporter <reporter@corp.test>\r\nTo: soc@corp.test\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@corp.test>\r\nDate: Tue, 1 Dec 2026 10:00:00 +0000\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    )
    .into_bytes()
}

// ---------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn password_login_over_verified_tls() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let dovecot = Dovecot::start(DovecotOptions::new(&ca)?.password(ALICE, "correct horse"))?;

    let mut session = within(
        "login",
        password_login(&dovecot, &ca, ALICE, "correct horse"),
    )
    .await?
    .map_err(anyhow::Error::msg)?;
    session.examine("INBOX").await?;
    session.logout().await?;

    // Case-insensitive user, like Exchange and Dovecot's %Lu.
    within(
        "login",
        password_login(&dovecot, &ca, "Alice@Corp.Test", "correct horse"),
    )
    .await?
    .map_err(anyhow::Error::msg)?;

    let refused = [
        (ALICE, "wrong"),
        (ALICE, "correct horse "),
        (BOB, "correct horse"),
        // The seeder's master-user form with a guessed secret.
        ("alice@corp.test*threatmail-seed", "correct horse"),
    ];
    for (user, password) in refused {
        let started = Instant::now();
        let refusal = match within("login", password_login(&dovecot, &ca, user, password)).await? {
            Ok(_) => bail!("LOGIN {user} / {password:?} was accepted"),
            Err(refusal) => refusal,
        };
        eprintln!("refused LOGIN {user} in {:?}", started.elapsed());
        assert!(refusal.contains("[AUTHENTICATIONFAILED]"), "{refusal}");
    }

    // Passwords change while the server runs, effective on return.
    dovecot.set_password(BOB, "bob's secret")?;
    within("login", password_login(&dovecot, &ca, BOB, "bob's secret"))
        .await?
        .map_err(anyhow::Error::msg)?;
    dovecot.set_password(BOB, "new one")?;
    assert!(
        within("login", password_login(&dovecot, &ca, BOB, "bob's secret"))
            .await?
            .is_err()
    );
    dovecot.remove_password(BOB)?;
    assert!(
        within("login", password_login(&dovecot, &ca, BOB, "new one"))
            .await?
            .is_err()
    );

    let refusals = dovecot.logged_refusals().await;
    assert!(refusals.contains("Password mismatch"), "{refusals}");
    assert!(!refusals.contains("threatmail-reload-probe"), "{refusals}");
    Ok(())
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_fails_the_handshake() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let dovecot = Dovecot::start(DovecotOptions::new(&ca)?)?;
    let stranger = TestCa::new()?;
    let result = within("tls", async {
        Ok(tls_stream(dovecot.imaps_addr(), stranger.client_config()?).await)
    })
    .await?;
    let error = match result {
        Ok(_) => bail!("the handshake succeeded with an untrusted CA"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("UnknownIssuer") || error.contains("certificate"),
        "{error}"
    );
    // The same server with the right CA works (so the failure above is about trust).
    within("tls", async {
        tls_stream(dovecot.imaps_addr(), ca.client_config()?).await
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_side_by_side() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let started = Instant::now();
    let first = Dovecot::start(DovecotOptions::new(&ca)?.password(ALICE, "one"))?;
    eprintln!("dovecot start: {:?}", started.elapsed());
    let started = Instant::now();
    let second = Dovecot::start(DovecotOptions::new(&ca)?.password(ALICE, "two"))?;
    eprintln!("dovecot start: {:?}", started.elapsed());
    assert_ne!(first.instance_name(), second.instance_name());
    assert_ne!(first.imap_addr(), second.imap_addr());
    assert_ne!(first.imaps_addr(), second.imaps_addr());
    assert_ne!(first.mail_dir(), second.mail_dir());

    first
        .append(ALICE, "INBOX", &[message("only-first", "x")])
        .await?;
    let mut on_first = within("login", password_login(&first, &ca, ALICE, "one"))
        .await?
        .map_err(anyhow::Error::msg)?;
    let mut on_second = within("login", password_login(&second, &ca, ALICE, "two"))
        .await?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(on_first.examine("INBOX").await?.exists, 1);
    assert_eq!(on_second.examine("INBOX").await?.exists, 0);
    // Each instance has its own passwords.
    assert!(
        within("login", password_login(&second, &ca, ALICE, "one"))
            .await?
            .is_err()
    );
    on_first.logout().await?;
    on_second.logout().await?;

    let first_imap = first.imap_addr();
    let instance = first.instance_name().to_owned();
    // The master and runuser are known by the config path inside the instance's dir.
    let dir = first
        .mail_dir()
        .parent()
        .context("mail dir has a parent")?
        .display()
        .to_string();
    let title = format!("dovecot-{instance}/");
    assert!(
        process_titles().iter().any(|t| t.starts_with(&title)),
        "no process titled {title}…: the orphan check below would prove nothing"
    );
    let stopping = Instant::now();
    drop(first);
    eprintln!("dovecot stop (drop): {:?}", stopping.elapsed());
    assert!(
        TcpStream::connect(first_imap).await.is_err(),
        "still listening"
    );
    assert!(
        !process_titles()
            .iter()
            .any(|t| t.contains(&instance) || t.contains(&dir)),
        "processes of {instance} survived the drop"
    );
    assert!(!Path::new(&dir).exists(), "{dir} was not removed");
    Ok(())
}

/// Command lines of all processes (for the no-orphans check).
fn process_titles() -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

#[tokio::test]
async fn folders_list_decode_and_examine_by_raw_name() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let dovecot = Dovecot::start(DovecotOptions::new(&ca)?.password(ALICE, "pw"))?;
    // display name → number of messages
    let folders: BTreeMap<&str, usize> = [
        ("Phish Reports", 3),
        ("Reports.2026", 1),
        ("Входящие/Фишинг", 2),
        ("a/b/c", 1),
        ("R&D", 2),
        ("Фишинг&Спам", 1),
        ("Quarantäne 😀", 1),
        (r#"Say "hi""#, 1),
        (r"back\slash", 1),
    ]
    .into_iter()
    .collect();
    for (folder, count) in &folders {
        let messages: Vec<Vec<u8>> = (0..*count)
            .map(|i| message(&format!("m{i}"), folder))
            .collect();
        within("append", dovecot.append(ALICE, folder, &messages)).await?;
    }
    dovecot.create_folder(ALICE, "Empty/Child").await?;

    let mut session = within("login", password_login(&dovecot, &ca, ALICE, "pw"))
        .await?
        .map_err(anyhow::Error::msg)?;
    let names: Vec<async_imap::types::Name> = session
        .list(Some(""), Some("*"))
        .await?
        .try_collect()
        .await?;
    let mut listed = BTreeMap::new();
    for name in &names {
        let raw = unescape_quoted(name.name());
        let display = mutf7::decode_lenient(raw.as_bytes())
            .with_context(|| format!("undecodable LIST name {raw:?}"))?;
        // Dovecot sends canonical names: the strict decoder agrees.
        assert_eq!(mutf7::decode(raw.as_bytes()).as_ref(), Ok(&display));
        assert_eq!(name.delimiter(), Some("/"));
        listed.insert(display, raw);
    }
    let expected_parents = ["INBOX", "Входящие", "a", "a/b", "Empty", "Empty/Child"];
    for display in folders.keys().copied().chain(expected_parents) {
        assert!(
            listed.contains_key(display),
            "{display:?} not in {listed:?}"
        );
    }
    assert_eq!(listed["R&D"], "R&-D");
    assert_eq!(
        listed["Входящие/Фишинг"],
        "&BBIERQQ+BDQETwRJBDgENQ-/&BCQEOARIBDgEPQQz-"
    );

    for (display, count) in &folders {
        let raw = &listed[*display];
        let examined = session.examine(raw).await?;
        assert_eq!(examined.exists as usize, *count, "{display}");
        let uid_validity = examined.uid_validity.context("no UIDVALIDITY")?;
        // async-imap matches the STATUS reply's name, which imap-proto leaves with its
        // quoted-string escapes, against the requested name: skip names with `"` or `\`.
        if !raw.contains(['"', '\\']) {
            let status = session.status(raw, "(MESSAGES UIDVALIDITY)").await?;
            assert_eq!(status.exists as usize, *count, "{display}");
            assert_eq!(status.uid_validity, Some(uid_validity), "{display}");
        }
    }
    // Parents are real folders, as in Exchange.
    assert_eq!(session.examine(&listed["a/b"]).await?.exists, 0);
    session.logout().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeding_is_exact_and_counts_add_up() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let dovecot = Dovecot::start(DovecotOptions::new(&ca)?.password(ALICE, "pw"))?;

    let bulk: Vec<Vec<u8>> = (0..1000)
        .map(|i| message(&format!("bulk-{i}"), &"x".repeat(500)))
        .collect();
    let started = Instant::now();
    within("append", dovecot.append(ALICE, "Bulk", &bulk)).await?;
    let elapsed = started.elapsed();
    eprintln!(
        "seeded {} messages in {elapsed:?} ({:.0} msg/s)",
        bulk.len(),
        bulk.len() as f64 / elapsed.as_secs_f64()
    );
    // Seeding adds: a second call appends after the first.
    within("append", dovecot.append(ALICE, "Bulk", &bulk[..10])).await?;

    let crlf = b"From: a@corp.test\r\nSubject: exact\r\n\r\nline one\r\n\r\n.\r\nlast line without newline".to_vec();
    let bare_lf = b"From: a@corp.test\nSubject: bare lf\n\nbody\n".to_vec();
    within(
        "append",
        dovecot.append(ALICE, "Exact", &[crlf.clone(), bare_lf.clone()]),
    )
    .await?;

    let eml_dir = tempfile::tempdir()?;
    for (name, subject) in [
        ("02.eml", "second"),
        ("01.eml", "first"),
        ("10.EML", "third"),
    ] {
        std::fs::write(eml_dir.path().join(name), message(subject, subject))?;
    }
    std::fs::write(eml_dir.path().join("notes.txt"), "not a message")?;
    let loaded = within(
        "load_dir",
        dovecot.load_dir(ALICE, "Loaded", eml_dir.path()),
    )
    .await?;
    assert_eq!(loaded, 3);

    let mut session = within("login", password_login(&dovecot, &ca, ALICE, "pw"))
        .await?
        .map_err(anyhow::Error::msg)?;
    assert_eq!(session.status("Bulk", "(MESSAGES)").await?.exists, 1010);
    assert_eq!(session.examine("Bulk").await?.exists, 1010);

    session.examine("Exact").await?;
    let fetched: Vec<_> = session
        .fetch("1:2", "BODY.PEEK[]")
        .await?
        .try_collect()
        .await?;
    assert_eq!(fetched.len(), 2);
    assert_eq!(
        fetched[0].body(),
        Some(crlf.as_slice()),
        "CRLF message changed"
    );
    // Dovecot keeps a bare-LF message as sent and, like every IMAP server, serves it with
    // CRLF line ends.
    let served_lf = String::from_utf8_lossy(&bare_lf).replace('\n', "\r\n");
    assert_eq!(fetched[1].body(), Some(served_lf.as_bytes()));

    session.examine("Loaded").await?;
    let loaded: Vec<_> = session
        .fetch("1:3", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]")
        .await?
        .try_collect()
        .await?;
    let subjects: Vec<String> = loaded
        .iter()
        .map(|f| {
            String::from_utf8_lossy(f.header().unwrap_or_default())
                .trim()
                .to_owned()
        })
        .collect();
    // Sorted by file name: 01.eml, 02.eml, 10.EML.
    assert_eq!(
        subjects,
        ["Subject: first", "Subject: second", "Subject: third"]
    );
    session.logout().await?;

    // Seeding did not mark anything read or leave the seeder's login usable by others.
    let refusals = dovecot.logged_refusals().await;
    assert!(!refusals.contains("threatmail-seed"), "{refusals}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xoauth2_is_judged_like_exchange_online() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    // auth_debug shows the grant key each refusal looked up, so every case below can prove
    // which check refused it.
    let dovecot = Dovecot::start(
        DovecotOptions::new(&ca)?
            .oauth(exchange_settings())
            .auth_debug(true),
    )?;
    let (key, other_key) = keys();
    let token = good_token();

    // One app token opens every mailbox the app has FullAccess on.
    let started = Instant::now();
    assert_xoauth2_ok(&dovecot, &ca, ALICE, &token).await?;
    eprintln!(
        "XOAUTH2 success (TLS, login, EXAMINE, LOGOUT): {:?}",
        started.elapsed()
    );
    assert_xoauth2_ok(&dovecot, &ca, SHARED, &token).await?;
    assert_xoauth2_ok(&dovecot, &ca, "Alice@Corp.Test", &token).await?;
    // The other app reaches its own mailbox.
    let other_app = sign(key, "k1", &claims(OTHER_APP_ID, OTHER_APP_OID));
    assert_xoauth2_ok(&dovecot, &ca, DAVE, &other_app).await?;

    let with = |change: &dyn Fn(&mut Value)| {
        let mut claims = claims(APP_ID, ENTERPRISE_OID);
        change(&mut claims);
        sign(key, "k1", &claims)
    };
    let remove = |claim: &'static str| {
        move |c: &mut Value| {
            if let Some(claims) = c.as_object_mut() {
                claims.remove(claim);
            }
        }
    };
    let now = now();
    let key_of = |prefix: &str, mailbox: &str| {
        format!("lookup: user={prefix}{APP_ID}/{ENTERPRISE_OID}/{mailbox} ")
    };
    // (case, SASL user, token, what the log must show for this refusal)
    let cases: Vec<(&str, &str, String, String)> = vec![
        (
            "expired",
            ALICE,
            with(&|c| {
                c["iat"] = json!(now - 7200);
                c["nbf"] = json!(now - 7200);
                c["exp"] = json!(now - 60);
            }),
            "Token has expired".to_owned(),
        ),
        (
            "not yet valid",
            ALICE,
            with(&|c| c["nbf"] = json!(now + 600)),
            "Token is not valid yet".to_owned(),
        ),
        (
            "signed with another key",
            ALICE,
            sign(other_key, "k1", &claims(APP_ID, ENTERPRISE_OID)),
            "Bad signature".to_owned(),
        ),
        (
            "unknown kid",
            ALICE,
            sign(key, "k2", &claims(APP_ID, ENTERPRISE_OID)),
            "RS256 key 'k2' not found".to_owned(),
        ),
        (
            "unknown issuer",
            ALICE,
            with(&|c| c["iss"] = json!(issuer(OTHER_TENANT))),
            format!("Issuer '{}' is not allowed", issuer(OTHER_TENANT)),
        ),
        (
            "not a JWT",
            ALICE,
            "not-a-token".to_owned(),
            "Not a JWT token".to_owned(),
        ),
        (
            "no role",
            ALICE,
            with(&|c| c["roles"] = json!(["Mail.Read"])),
            key_of("norole/", ALICE),
        ),
        (
            "roles missing",
            ALICE,
            with(&remove("roles")),
            key_of("norole/", ALICE),
        ),
        (
            "role lookalike",
            ALICE,
            with(&|c| c["roles"] = json!(["IMAP.AccessAsApp2", "XIMAP.AccessAsApp"])),
            key_of("norole/", ALICE),
        ),
        (
            "wrong aud",
            ALICE,
            with(&|c| c["aud"] = json!("https://graph.microsoft.com")),
            key_of("noaud/", ALICE),
        ),
        (
            "aud with a slash",
            ALICE,
            with(&|c| c["aud"] = json!("https://outlook.office365.com/")),
            key_of("noaud/", ALICE),
        ),
        (
            "aud lookalike",
            ALICE,
            with(&|c| c["aud"] = json!("httpsX//outlook.office365.com")),
            key_of("noaud/", ALICE),
        ),
        (
            "aud missing",
            ALICE,
            with(&remove("aud")),
            key_of("noaud/noaud/", ALICE),
        ),
        (
            "grant keyed on the app registration's object id",
            BOB,
            token.clone(),
            key_of("", BOB),
        ),
        (
            "no grant for the mailbox",
            CAROL,
            token.clone(),
            key_of("", CAROL),
        ),
        (
            "user= of another app's mailbox",
            DAVE,
            token.clone(),
            key_of("", DAVE),
        ),
        (
            "another app for alice",
            ALICE,
            other_app.clone(),
            format!("lookup: user={OTHER_APP_ID}/{OTHER_APP_OID}/{ALICE} "),
        ),
    ];
    let mut seen = 0;
    for (case, user, token, evidence) in &cases {
        let started = Instant::now();
        assert_xoauth2_refused(&dovecot, &ca, case, user, token).await?;
        eprintln!("XOAUTH2 refusal ({case}): {:?}", started.elapsed());
        // The log process may write a moment after the client has its answer.
        seen = wait_for(
            &format!("{case}: {evidence:?} in the log"),
            Duration::from_secs(10),
            || {
                let log = dovecot.log_text();
                let found = log[seen.min(log.len())..]
                    .find(evidence.as_str())
                    .map(|at| seen + at + evidence.len());
                async move { found }
            },
        )
        .await?;
    }

    // The seeder's master-user form does not work with a token (Dovecot answers
    // [UNAVAILABLE] for a master login without a master passdb for the mechanism).
    let master_form = format!("{ALICE}*threatmail-seed");
    let result = within("xoauth2", xoauth2(&dovecot, &ca, &master_form, &token)).await?;
    assert!(result.is_err(), "the master-user form was accepted");

    let refusals = dovecot.logged_refusals().await;
    assert!(refusals.contains("unknown user"), "{refusals}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_changes_take_effect_on_return() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    // Nothing configured: every token is refused, even a well-formed one.
    let dovecot = Dovecot::start(DovecotOptions::new(&ca)?)?;
    let token = good_token();
    assert_xoauth2_refused(&dovecot, &ca, "nothing configured", ALICE, &token).await?;

    let mut settings = exchange_settings();
    let started = Instant::now();
    dovecot.set_oauth(&settings)?;
    eprintln!("set_oauth (write, HUP, confirmed): {:?}", started.elapsed());
    assert_xoauth2_ok(&dovecot, &ca, ALICE, &token).await?;
    assert_xoauth2_refused(&dovecot, &ca, "no grant yet", CAROL, &token).await?;

    // Add-MailboxPermission for carol; the next login sees it.
    settings.grants.push(grant(APP_ID, ENTERPRISE_OID, CAROL));
    dovecot.set_oauth(&settings)?;
    assert_xoauth2_ok(&dovecot, &ca, CAROL, &token).await?;

    // Remove-MailboxPermission for alice; an open session survives, new logins are refused.
    let mut open = within("xoauth2", xoauth2(&dovecot, &ca, ALICE, &token))
        .await?
        .map_err(anyhow::Error::msg)?;
    settings.grants.retain(|g| g.mailbox != ALICE);
    dovecot.set_oauth(&settings)?;
    assert_xoauth2_refused(&dovecot, &ca, "revoked", ALICE, &token).await?;
    assert_xoauth2_ok(&dovecot, &ca, CAROL, &token).await?;
    open.noop().await?;
    open.logout().await?;

    // Key rotation: a token of the removed key stops working, the new key works.
    let (_, second_key) = keys();
    settings.signing_keys = vec![SigningKeyFile {
        kid: "k2".to_owned(),
        public_key_pem: second_key.public_key_pem.clone(),
    }];
    dovecot.set_oauth(&settings)?;
    assert_xoauth2_refused(&dovecot, &ca, "retired key", CAROL, &token).await?;
    let rotated = sign(second_key, "k2", &claims(APP_ID, ENTERPRISE_OID));
    assert_xoauth2_ok(&dovecot, &ca, CAROL, &rotated).await?;
    // Same kid, new key material (the auth process caches keys; the reload clears that).
    settings.signing_keys[0].public_key_pem = keys().0.public_key_pem.clone();
    dovecot.set_oauth(&settings)?;
    assert_xoauth2_refused(&dovecot, &ca, "replaced key", CAROL, &rotated).await?;
    assert_xoauth2_ok(
        &dovecot,
        &ca,
        CAROL,
        &sign(&keys().0, "k2", &claims(APP_ID, ENTERPRISE_OID)),
    )
    .await?;

    // No issuers again: everything is refused.
    settings.issuers.clear();
    dovecot.set_oauth(&settings)?;
    let current = sign(&keys().0, "k2", &claims(APP_ID, ENTERPRISE_OID));
    assert_xoauth2_refused(&dovecot, &ca, "issuers cleared", CAROL, &current).await?;
    Ok(())
}

#[tokio::test]
async fn oauthbearer_uses_the_same_checks() -> anyhow::Result<()> {
    let ca = TestCa::new()?;
    let dovecot = Dovecot::start(DovecotOptions::new(&ca)?.oauth(exchange_settings()))?;
    let token = good_token();
    let ok = within("oauthbearer", oauthbearer(&dovecot, &ca, ALICE, &token)).await?;
    assert!(ok.starts_with("b1 OK"), "{ok}");
    for user in [CAROL, BOB] {
        let refused = within("oauthbearer", oauthbearer(&dovecot, &ca, user, &token)).await?;
        assert!(
            refused.starts_with("b1 NO [AUTHENTICATIONFAILED]"),
            "{user}: {refused}"
        );
    }
    let expired = {
        let mut c = claims(APP_ID, ENTERPRISE_OID);
        c["exp"] = json!(now() - 1);
        sign(&keys().0, "k1", &c)
    };
    let refused = within("oauthbearer", oauthbearer(&dovecot, &ca, ALICE, &expired)).await?;
    assert!(
        refused.starts_with("b1 NO [AUTHENTICATIONFAILED]"),
        "{refused}"
    );
    // Plain LOGIN never opens an OAuth-only mailbox.
    assert!(
        within("login", password_login(&dovecot, &ca, ALICE, &token))
            .await?
            .is_err()
    );
    Ok(())
}
