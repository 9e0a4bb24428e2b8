//! The Exchange fault proxy against the real test Dovecot and stand-in tokens: the exact
//! bytes a client sees for each behaviour (greeting, capabilities, login replies, the
//! expiry BYE, throttling, "not connected", drops inside a literal, stalls, injected
//! lines, the connection cap), literals passing byte-exact both ways, and the command log.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls_pki_types::ServerName;
use threatmail_testkit::exchange_proxy::{
    ConnectionCap, Connections, DEFAULT_SERVER_NAME, Dialect, ExchangeProxy, Fault, FaultKind,
    Script, When, exchange_greeting,
};
use threatmail_testkit::imap::{LoginOutcome, folder_counts, login_xoauth2};
use threatmail_testkit::jwt::decode_unverified;
use threatmail_testkit::net::wait_for;
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{INTEL_MAILBOX, PHISH_MAILBOX, TenantFixture};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Bound for every network step.
const STEP: Duration = Duration::from_secs(30);

const CAPS_BEFORE: &str = "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS \
                           ID UNSELECT CHILDREN IDLE NAMESPACE LITERAL+\r\n";
const CAPS_AFTER: &str = "* CAPABILITY IMAP4 IMAP4rev1 AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS \
                          MOVE ID UNSELECT CLIENTACCESSRULES CLIENTNETWORKPRESENCELOCATION \
                          BACKENDAUTHENTICATE CHILDREN IDLE NAMESPACE LITERAL+\r\n";

/// A raw TLS IMAP connection: lines and bytes exactly as the proxy sent them.
struct Wire {
    stream: BufReader<TlsStream<TcpStream>>,
}

/// How the server ended the connection.
#[derive(Debug, PartialEq, Eq)]
enum Eof {
    /// TLS close_notify, then EOF.
    Clean,
    /// The socket closed without close_notify.
    Abrupt,
}

impl Wire {
    async fn connect(addr: SocketAddr, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Wire> {
        let tcp = TcpStream::connect(addr).await?;
        let stream = tokio::time::timeout(
            STEP,
            tokio_rustls::TlsConnector::from(tls).connect(ServerName::try_from("localhost")?, tcp),
        )
        .await
        .context("TLS handshake timed out")??;
        Ok(Wire {
            stream: BufReader::new(stream),
        })
    }

    /// Connects and checks Exchange's greeting.
    async fn exchange(stack: &LocalStack, proxy: &ExchangeProxy) -> anyhow::Result<Wire> {
        let mut wire = Wire::connect(proxy.addr(), stack.tls()?).await?;
        assert_eq!(
            wire.line().await?,
            format!("{}\r\n", exchange_greeting(DEFAULT_SERVER_NAME))
        );
        Ok(wire)
    }

    async fn send(&mut self, text: &str) -> anyhow::Result<()> {
        self.send_raw(format!("{text}\r\n").as_bytes()).await
    }

    async fn send_raw(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await?;
        Ok(())
    }

    /// The next line with its CRLF; an error at EOF.
    async fn line(&mut self) -> anyhow::Result<String> {
        let mut line = Vec::new();
        let n = tokio::time::timeout(STEP, self.stream.read_until(b'\n', &mut line))
            .await
            .context("timed out reading a line")??;
        if n == 0 {
            bail!("connection closed while a line was expected");
        }
        Ok(String::from_utf8(line)?)
    }

    /// Lines up to and including the tagged reply for `tag`.
    async fn until_tagged(&mut self, tag: &str) -> anyhow::Result<Vec<String>> {
        let mut lines = Vec::new();
        loop {
            let line = self.line().await?;
            let done = line.starts_with(&format!("{tag} "));
            lines.push(line);
            if done {
                return Ok(lines);
            }
        }
    }

    /// Sends a command and returns every line up to its tagged reply.
    async fn command(&mut self, tag: &str, text: &str) -> anyhow::Result<Vec<String>> {
        self.send(&format!("{tag} {text}")).await?;
        self.until_tagged(tag).await
    }

    async fn login(&mut self, tag: &str, mailbox: &str, token: &str) -> anyhow::Result<()> {
        let reply = self
            .command(
                tag,
                &format!("AUTHENTICATE XOAUTH2 {}", xoauth2(mailbox, token)),
            )
            .await?;
        assert_eq!(reply, [format!("{tag} OK AUTHENTICATE completed.\r\n")]);
        Ok(())
    }

    async fn exact(&mut self, n: usize) -> anyhow::Result<Vec<u8>> {
        let mut buf = vec![0; n];
        tokio::time::timeout(STEP, self.stream.read_exact(&mut buf))
            .await
            .context("timed out reading bytes")??;
        Ok(buf)
    }

    /// Everything until the server closes, and how it closed.
    async fn rest(&mut self) -> anyhow::Result<(Vec<u8>, Eof)> {
        let mut bytes = Vec::new();
        let read = tokio::time::timeout(STEP, self.stream.read_to_end(&mut bytes))
            .await
            .context("timed out waiting for the server to close")?;
        match read {
            Ok(_) => Ok((bytes, Eof::Clean)),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok((bytes, Eof::Abrupt)),
            Err(e) => Err(e.into()),
        }
    }
}

fn xoauth2(mailbox: &str, token: &str) -> String {
    STANDARD.encode(format!("user={mailbox}\x01auth=Bearer {token}\x01\x01"))
}

async fn start(script: Script) -> anyhow::Result<(LocalStack, ExchangeProxy, String)> {
    let stack = LocalStack::start(TenantFixture::everything_right()).await?;
    let proxy = stack.exchange_proxy(script).await?;
    let token = stack.primary_token().await?.access_token;
    Ok((stack, proxy, token))
}

/// A message whose body looks like IMAP: tagged lines, literal markers, 8-bit bytes.
fn tricky_message(size: usize) -> Vec<u8> {
    let mut message = b"From: a@corp.example\r\nTo: b@corp.example\r\nSubject: framing\r\n\
        Message-ID: <framing@corp.example>\r\n\r\n"
        .to_vec();
    let mut i = 0u32;
    while message.len() < size {
        let line = match i % 5 {
            0 => format!("a{i} OK AUTHENTICATE completed.\r\n"),
            1 => "* BYE Session invalidated - AccessTokenExpired\r\n".to_owned(),
            2 => format!("* {i} FETCH (BODY[] {{{i}}}\r\n"),
            3 => "+ \r\n".to_owned(),
            _ => "caf\u{e9} \u{442}\u{435}\u{441}\u{442} ~{5+}\r\n".to_owned(),
        };
        message.extend_from_slice(line.as_bytes());
        i += 1;
    }
    message.truncate(size - 2);
    message.extend_from_slice(b"\r\n");
    message
}

/// Reads `* n FETCH (UID u BODY[] {len}` and returns `len`.
async fn fetch_header(wire: &mut Wire) -> anyhow::Result<usize> {
    let header = wire.line().await?;
    assert!(
        header.starts_with("* ") && header.contains(" FETCH (UID "),
        "{header:?}"
    );
    let len = header
        .trim_end()
        .strip_suffix('}')
        .and_then(|h| h.rsplit_once('{'))
        .context("no literal in the FETCH line")?
        .1
        .parse()?;
    Ok(len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speaks_exchange_greeting_capabilities_and_login_replies() -> anyhow::Result<()> {
    let (stack, proxy, token) = start(Script::exchange()).await?;
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    assert_eq!(
        wire.command("a1", "CAPABILITY").await?,
        [CAPS_BEFORE, "a1 OK CAPABILITY completed.\r\n"]
    );
    wire.login("a2", PHISH_MAILBOX, &token).await?;
    assert_eq!(
        wire.command("a3", "CAPABILITY").await?,
        [CAPS_AFTER, "a3 OK CAPABILITY completed.\r\n"]
    );
    let examine = wire.command("a4", "EXAMINE INBOX").await?;
    assert!(
        examine.contains(&"* 1 EXISTS\r\n".to_owned()),
        "{examine:?}"
    );
    // IDLE's `+` and DONE pass; DONE is no command.
    wire.send("a5 IDLE").await?;
    assert!(wire.line().await?.starts_with("+ "));
    wire.send("DONE").await?;
    assert!(wire.until_tagged("a5").await?[0].starts_with("a5 OK"));
    let logout = wire.command("a6", "LOGOUT").await?;
    assert!(logout[0].starts_with("* BYE"), "{logout:?}");
    assert_eq!(wire.rest().await?, (Vec::new(), Eof::Clean));

    let commands = proxy.commands();
    let names: Vec<&str> = commands.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "CAPABILITY",
            "AUTHENTICATE",
            "CAPABILITY",
            "EXAMINE",
            "IDLE",
            "LOGOUT"
        ]
    );
    for (record, tag) in commands.iter().zip(["a1", "a2", "a3", "a4", "a5", "a6"]) {
        assert_eq!(record.tag, tag);
        assert_eq!(record.connection, 1);
        // The CAPABILITY before the login is filled in once the login names the mailbox.
        assert_eq!(record.mailbox.as_deref(), Some(PHISH_MAILBOX));
        assert!(record.forwarded && record.fault.is_none() && record.replied_at.is_none());
    }
    assert!(commands.windows(2).all(|w| w[0].at <= w[1].at));

    // A real client library accepts the dialect and reads the mailbox through it.
    let LoginOutcome::LoggedIn(mut session) =
        login_xoauth2(proxy.addr(), stack.tls()?, INTEL_MAILBOX, &token).await?
    else {
        bail!("XOAUTH2 through the proxy was refused");
    };
    let counts = folder_counts(&mut session).await?;
    assert_eq!(counts.len(), 1);
    assert_eq!(
        (counts[0].raw_name.as_str(), counts[0].messages),
        ("INBOX", 1)
    );
    let capabilities = session.capabilities().await?;
    assert!(capabilities.has_str("BACKENDAUTHENTICATE") && !capabilities.has_str("ENABLE"));
    session.logout().await?;
    assert_eq!(proxy.control().peak_sessions(INTEL_MAILBOX), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_token_gets_exchanges_no_without_a_challenge() -> anyhow::Result<()> {
    let (stack, proxy, token) = start(Script::exchange()).await?;
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    // No FullAccess grant on this mailbox: Dovecot refuses with an error challenge, which
    // the proxy answers itself, as Exchange sends the tagged NO at once.
    let refused = wire
        .command(
            "a1",
            &format!(
                "AUTHENTICATE XOAUTH2 {}",
                xoauth2("ceo@corp.example", &token)
            ),
        )
        .await?;
    assert_eq!(refused, ["a1 NO AUTHENTICATE failed.\r\n"]);
    // Without SASL-IR: the response comes on the continuation line.
    wire.send("a2 AUTHENTICATE XOAUTH2").await?;
    assert_eq!(wire.line().await?, "+ \r\n");
    wire.send(&xoauth2(PHISH_MAILBOX, &token)).await?;
    assert_eq!(
        wire.until_tagged("a2").await?,
        ["a2 OK AUTHENTICATE completed.\r\n"]
    );
    let commands = proxy.commands();
    assert_eq!(commands[0].mailbox.as_deref(), Some("ceo@corp.example"));
    assert_eq!(commands[1].mailbox.as_deref(), Some(PHISH_MAILBOX));
    assert_eq!(proxy.control().open_sessions(PHISH_MAILBOX), 1);
    assert_eq!(proxy.control().open_sessions("ceo@corp.example"), 0);

    // Passed through untouched, Dovecot's own words show.
    proxy.control().set_script(Script::passthrough());
    let mut wire = Wire::connect(proxy.addr(), stack.tls()?).await?;
    let greeting = wire.line().await?;
    assert!(
        greeting.starts_with("* OK [CAPABILITY IMAP4rev1"),
        "{greeting}"
    );
    wire.send(&format!(
        "b1 AUTHENTICATE XOAUTH2 {}",
        xoauth2("ceo@corp.example", &token)
    ))
    .await?;
    assert!(wire.line().await?.starts_with("+ eyJ"));
    wire.send("").await?;
    let refused = wire.until_tagged("b1").await?;
    assert!(
        refused[0].starts_with("b1 NO [AUTHENTICATIONFAILED]"),
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br01_double_space_in_capabilities_breaks_the_client_parser() -> anyhow::Result<()> {
    let br01 = Dialect::exchange().double_space_after("IMAP4rev1");
    let script = Script::exchange().dialect_on(Connections::range(1..=2), br01);
    let (stack, proxy, token) = start(script).await?;

    let mut wire = Wire::exchange(&stack, &proxy).await?;
    let caps = wire.command("a1", "CAPABILITY").await?;
    assert_eq!(
        caps[0],
        "* CAPABILITY IMAP4 IMAP4rev1  AUTH=PLAIN AUTH=XOAUTH2 SASL-IR UIDPLUS ID UNSELECT \
         CHILDREN IDLE NAMESPACE LITERAL+\r\n"
    );
    drop(wire);

    // async-imap's parser rejects the line (chatmail/async-imap #131).
    let LoginOutcome::LoggedIn(mut session) =
        login_xoauth2(proxy.addr(), stack.tls()?, PHISH_MAILBOX, &token).await?
    else {
        bail!("login refused");
    };
    assert!(session.capabilities().await.is_err());

    // Connection 3 speaks plain Exchange again.
    let LoginOutcome::LoggedIn(mut session) =
        login_xoauth2(proxy.addr(), stack.tls()?, PHISH_MAILBOX, &token).await?
    else {
        bail!("login refused");
    };
    assert!(session.capabilities().await?.has_str("MOVE"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_ends_at_the_tokens_exp() -> anyhow::Result<()> {
    let stack = LocalStack::start(TenantFixture::everything_right()).await?;
    let proxy = stack.exchange_proxy(Script::exchange()).await?;
    stack
        .entra
        .controls()
        .set_token_lifetime(Duration::from_secs(3));
    let token = stack.primary_token().await?.access_token;
    let (_, claims) = decode_unverified(&token)?;
    let exp = UNIX_EPOCH + Duration::from_secs(claims["exp"].as_u64().context("no exp")?);

    // Connection 1 with SASL-IR, connection 2 with the response after `+`.
    let mut first = Wire::exchange(&stack, &proxy).await?;
    first.login("a1", PHISH_MAILBOX, &token).await?;
    let mut second = Wire::exchange(&stack, &proxy).await?;
    second.send("b1 AUTHENTICATE XOAUTH2").await?;
    assert_eq!(second.line().await?, "+ \r\n");
    second.send(&xoauth2(PHISH_MAILBOX, &token)).await?;
    assert_eq!(
        second.until_tagged("b1").await?,
        ["b1 OK AUTHENTICATE completed.\r\n"]
    );
    assert!(first.command("a2", "NOOP").await?[0].starts_with("a2 OK"));

    for (wire, tag) in [(&mut first, "a"), (&mut second, "b")] {
        assert_eq!(
            wire.line().await?,
            "* BYE Session invalidated - AccessTokenExpired\r\n"
        );
        let now = SystemTime::now();
        assert!(now >= exp, "BYE {:?} before exp", exp.duration_since(now));
        assert!(now.duration_since(exp)? < Duration::from_secs(3));
        for (n, command) in ["NOOP", "SELECT INBOX"].iter().enumerate() {
            let tag = format!("{tag}{}", n + 3);
            assert_eq!(
                wire.command(&tag, command).await?,
                [format!("{tag} BAD Command received in Invalid state.\r\n")]
            );
        }
    }
    let after: Vec<_> = proxy
        .commands()
        .into_iter()
        .filter(|c| c.fault == Some(FaultKind::InvalidState))
        .collect();
    assert_eq!(after.len(), 4);
    assert!(after.iter().all(|c| !c.forwarded && c.replied_at.is_some()));
    assert_eq!(proxy.control().open_sessions(PHISH_MAILBOX), 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttle_replies_then_bye_and_the_log_times_the_next_command() -> anyhow::Result<()> {
    let script = Script::exchange()
        .rule(
            When::command("UID FETCH")
                .connection(1)
                .nth(2)
                .then(Fault::throttle(Duration::from_millis(5000))),
        )
        .rule(
            When::command("select")
                .connection(2)
                .then(Fault::throttle_bad(Duration::from_millis(89_000))),
        );
    let (stack, proxy, token) = start(script).await?;

    let mut wire = Wire::exchange(&stack, &proxy).await?;
    wire.login("a1", PHISH_MAILBOX, &token).await?;
    wire.command("a2", "EXAMINE INBOX").await?;
    let fetched = wire.command("a3", "UID FETCH 1:* (FLAGS)").await?;
    assert!(fetched.last().unwrap().starts_with("a3 OK"), "{fetched:?}");
    wire.send("a4 UID FETCH 1:* (FLAGS)").await?;
    let (rest, eof) = wire.rest().await?;
    assert_eq!(
        String::from_utf8(rest)?,
        "a4 NO Request is throttled. Suggested Backoff Time: 5000 milliseconds\r\n\
         * BYE Connection closed. 14\r\n"
    );
    assert_eq!(eof, Eof::Clean);

    // A client that does not wait: reconnects and sends at once.
    let mut hammer = Wire::exchange(&stack, &proxy).await?;
    hammer.command("b1", "CAPABILITY").await?;
    hammer.login("b2", PHISH_MAILBOX, &token).await?;
    hammer.send("b3 SELECT INBOX").await?;
    assert_eq!(
        String::from_utf8(hammer.rest().await?.0)?,
        "b3 BAD Request is throttled. Suggested Backoff Time: 89000 milliseconds\r\n\
         * BYE Connection closed. 14\r\n"
    );

    let commands = proxy.commands();
    let throttled = commands
        .iter()
        .find(|c| c.tag == "a4")
        .context("a4 not recorded")?;
    assert_eq!(
        (throttled.connection, throttled.name.as_str()),
        (1, "UID FETCH")
    );
    assert_eq!(throttled.fault, Some(FaultKind::Throttled));
    assert!(!throttled.forwarded);
    let replied = throttled.replied_at.context("no reply time")?;
    assert!(replied >= throttled.at);
    // The log shows the hammering: the next command for the mailbox (the new
    // connection's CAPABILITY, named once it logged in) came well within the back-off.
    let next = proxy
        .control()
        .first_command_after(PHISH_MAILBOX, replied)
        .context("no later command")?;
    assert_eq!((next.connection, next.tag.as_str()), (2, "b1"));
    assert!(next.at - replied < Duration::from_millis(5000));
    let b3 = commands.iter().find(|c| c.tag == "b3").unwrap();
    assert_eq!(
        (b3.fault, b3.forwarded),
        (Some(FaultKind::Throttled), false)
    );
    let rules = proxy.control().script();
    assert_eq!(
        rules.rules().iter().map(|r| r.fired()).collect::<Vec<_>>(),
        [1, 1]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn br07_authenticated_but_not_connected() -> anyhow::Result<()> {
    let script = Script::exchange().rule(
        When::mailbox_command()
            .then(Fault::NotConnected { replies: 2 })
            .once(),
    );
    let (stack, proxy, token) = start(script).await?;

    let mut wire = Wire::exchange(&stack, &proxy).await?;
    // Before the login a mailbox command is Dovecot's business, not the fault's.
    let early = wire.command("A0000", "LIST \"\" \"*\"").await?;
    assert!(!early[0].contains("not connected"), "{early:?}");
    wire.login("A0001", PHISH_MAILBOX, &token).await?;
    assert_eq!(wire.command("A0002", "CAPABILITY").await?[0], CAPS_AFTER);
    assert_eq!(
        wire.command("A0003", "LIST \"\" \"*\"").await?,
        ["A0003 BAD User is authenticated but not connected.\r\n"]
    );
    // The second reply, then the BYE (simonrob/email-oauth2-proxy #74).
    wire.send("A0004 EXPUNGE").await?;
    let (rest, eof) = wire.rest().await?;
    assert_eq!(
        String::from_utf8(rest)?,
        "A0004 BAD User is authenticated but not connected.\r\n* BYE Connection closed. 14\r\n"
    );
    assert_eq!(eof, Eof::Clean);
    let faults: Vec<_> = proxy
        .commands()
        .iter()
        .map(|c| (c.tag.clone(), c.fault, c.forwarded))
        .collect();
    assert_eq!(
        faults[3..],
        [
            ("A0003".to_owned(), Some(FaultKind::NotConnected), false),
            ("A0004".to_owned(), Some(FaultKind::NotConnected), false),
        ]
    );

    // Once only: the next connection lists its folders.
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    wire.login("b1", PHISH_MAILBOX, &token).await?;
    let listed = wire.command("b2", "LIST \"\" \"*\"").await?;
    assert!(listed[0].starts_with("* LIST ") && listed.last().unwrap().starts_with("b2 OK"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_and_stalls_inside_a_literal_at_exact_offsets() -> anyhow::Result<()> {
    let message = tricky_message(300_000);
    let size = message.len();
    let offsets = [0, 1, 65_536 + 7, size as u64 - 1, size as u64 + 100];
    let mut script = Script::exchange();
    for (n, offset) in offsets.iter().enumerate() {
        script = script.rule(
            When::command("UID FETCH")
                .connection(n as u64 + 1)
                .then(Fault::drop_in_literal(*offset)),
        );
    }
    let stall = Duration::from_millis(700);
    script = script.rule(
        When::command("UID FETCH")
            .connection(offsets.len() as u64 + 1)
            .then(Fault::StallInLiteral {
                literal: 1,
                after_bytes: 1000,
                duration: stall,
            }),
    );
    let (stack, proxy, token) = start(script).await?;
    stack
        .dovecot
        .append(PHISH_MAILBOX, "Big", std::slice::from_ref(&message))
        .await?;

    for offset in offsets {
        let mut wire = Wire::exchange(&stack, &proxy).await?;
        wire.login("a1", PHISH_MAILBOX, &token).await?;
        wire.command("a2", "EXAMINE Big").await?;
        wire.send("a3 UID FETCH 1 (BODY.PEEK[])").await?;
        assert_eq!(fetch_header(&mut wire).await?, size);
        let (got, eof) = wire.rest().await?;
        let expected = &message[..(offset as usize).min(size)];
        assert_eq!(got.len(), expected.len(), "offset {offset}");
        assert!(got == expected, "bytes differ before offset {offset}");
        assert_eq!(eof, Eof::Abrupt, "offset {offset}");
    }
    let dropped = proxy
        .commands()
        .iter()
        .filter(|c| c.fault == Some(FaultKind::DroppedInLiteral))
        .count();
    assert_eq!(dropped, offsets.len());

    // A stall after 1000 bytes: the rest comes, late and intact.
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    wire.login("s1", PHISH_MAILBOX, &token).await?;
    wire.command("s2", "EXAMINE Big").await?;
    let sent = Instant::now();
    wire.send("s3 UID FETCH 1 (BODY.PEEK[])").await?;
    assert_eq!(fetch_header(&mut wire).await?, size);
    let head = wire.exact(1000).await?;
    let tail = wire.exact(size - 1000).await?;
    assert!(sent.elapsed() >= stall);
    assert!([head, tail].concat() == message);
    assert_eq!(wire.line().await?, ")\r\n");
    assert!(wire.until_tagged("s3").await?[0].starts_with("s3 OK"));
    let stalled = proxy
        .commands()
        .into_iter()
        .find(|c| c.tag == "s3")
        .unwrap();
    assert_eq!(stalled.fault, Some(FaultKind::StalledInLiteral));

    // Untouched, the proxy passes the whole literal byte for byte.
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    wire.login("c1", PHISH_MAILBOX, &token).await?;
    wire.command("c2", "EXAMINE Big").await?;
    wire.send("c3 UID FETCH 1 (BODY.PEEK[])").await?;
    assert_eq!(fetch_header(&mut wire).await?, size);
    assert!(wire.exact(size).await? == message);
    assert_eq!(wire.line().await?, ")\r\n");
    assert!(wire.until_tagged("c3").await?[0].starts_with("c3 OK"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_literals_pass_byte_exact_and_login_names_the_mailbox() -> anyhow::Result<()> {
    // The third APPEND is refused by the script instead of getting `+`.
    let script = Script::exchange().rule(When::command("APPEND").nth(3).then(Fault::Respond {
        lines: vec!["{tag} NO [TOOBIG] refused by the script".to_owned()],
        close: false,
    }));
    let (stack, proxy, _) = start(script).await?;
    stack.dovecot.set_password(PHISH_MAILBOX, "pw-123")?;
    let first = tricky_message(20_000);
    let second = tricky_message(70_001);

    let mut wire = Wire::exchange(&stack, &proxy).await?;
    // LOGIN with the user name as a synchronizing literal.
    wire.send(&format!("l1 LOGIN {{{}}}", PHISH_MAILBOX.len()))
        .await?;
    assert!(wire.line().await?.starts_with("+ "));
    wire.send(&format!("{PHISH_MAILBOX} \"pw-123\"")).await?;
    assert_eq!(
        wire.until_tagged("l1").await?,
        ["l1 OK LOGIN completed.\r\n"]
    );

    // A synchronizing literal: the bytes go after `+`.
    wire.send(&format!("p1 APPEND INBOX {{{}}}", first.len()))
        .await?;
    assert!(wire.line().await?.starts_with("+ "));
    wire.send_raw(&first).await?;
    wire.send("").await?;
    assert!(wire.until_tagged("p1").await?[0].starts_with("p1 OK [APPENDUID"));
    // A non-synchronizing one (LITERAL+): line and bytes in one go.
    let mut append = format!("p2 APPEND INBOX {{{}+}}\r\n", second.len()).into_bytes();
    append.extend_from_slice(&second);
    append.extend_from_slice(b"\r\n");
    wire.send_raw(&append).await?;
    assert!(wire.until_tagged("p2").await?[0].starts_with("p2 OK [APPENDUID"));
    // Refused before its literal: no `+`, and the stream stays in step.
    wire.send("p3 APPEND INBOX {5}").await?;
    assert_eq!(
        wire.line().await?,
        "p3 NO [TOOBIG] refused by the script\r\n"
    );
    assert!(wire.command("p4", "NOOP").await?[0].starts_with("p4 OK"));

    wire.command("f1", "EXAMINE INBOX").await?;
    for (uid, expected) in [(2, &first), (3, &second)] {
        wire.send(&format!("f{uid} UID FETCH {uid} (BODY.PEEK[])"))
            .await?;
        let len = fetch_header(&mut wire).await?;
        assert_eq!(len, expected.len());
        assert!(wire.exact(len).await? == *expected, "UID {uid} differs");
        assert_eq!(wire.line().await?, ")\r\n");
        wire.until_tagged(&format!("f{uid}")).await?;
    }
    let commands = proxy.commands();
    assert!(
        commands
            .iter()
            .all(|c| c.mailbox.as_deref() == Some(PHISH_MAILBOX))
    );
    let p3 = commands.iter().find(|c| c.tag == "p3").unwrap();
    assert_eq!(
        (p3.fault, p3.forwarded),
        (Some(FaultKind::Responded), false)
    );
    assert_eq!(proxy.control().open_sessions(PHISH_MAILBOX), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalls_injected_lines_and_disconnects() -> anyhow::Result<()> {
    let stall = Duration::from_millis(800);
    let script = Script::exchange()
        .rule(When::command("NOOP").nth(1).then(Fault::stall(stall)))
        .rule(
            When::command("NOOP")
                .nth(2)
                .then(Fault::inject_line("* 1 FETCH (UID 1 BODY[] {99")),
        )
        .rule(When::command("STATUS").then(Fault::Disconnect));
    let (stack, proxy, token) = start(script).await?;
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    wire.login("a1", PHISH_MAILBOX, &token).await?;

    let sent = Instant::now();
    let reply = wire.command("a2", "NOOP").await?;
    assert!(
        sent.elapsed() >= stall,
        "answered after {:?}",
        sent.elapsed()
    );
    assert!(reply[0].starts_with("a2 OK"));

    let reply = wire.command("a3", "NOOP").await?;
    assert_eq!(reply[0], "* 1 FETCH (UID 1 BODY[] {99\r\n");
    assert!(reply[1].starts_with("a3 OK"));

    wire.send("a4 STATUS INBOX (MESSAGES)").await?;
    assert_eq!(wire.rest().await?, (Vec::new(), Eof::Abrupt));
    let kinds: Vec<_> = proxy.commands().iter().map(|c| c.fault).collect();
    assert_eq!(
        kinds,
        [
            None,
            Some(FaultKind::Stalled),
            Some(FaultKind::Injected),
            Some(FaultKind::Disconnected)
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cap_per_mailbox() -> anyhow::Result<()> {
    let (stack, proxy, token) =
        start(Script::exchange().connection_cap(ConnectionCap::new(2))).await?;
    let mut open = Vec::new();
    for tag in ["a", "b", "c"] {
        let mut wire = Wire::exchange(&stack, &proxy).await?;
        wire.login(&format!("{tag}1"), PHISH_MAILBOX, &token)
            .await?;
        open.push(wire);
    }
    for (wire, tag) in open.iter_mut().zip(["a2", "b2"]) {
        assert!(
            wire.command(tag, "EXAMINE INBOX")
                .await?
                .last()
                .unwrap()
                .starts_with(&format!("{tag} OK"))
        );
    }
    let mut third = open.pop().unwrap();
    third.send("c2 EXAMINE INBOX").await?;
    assert_eq!(
        String::from_utf8(third.rest().await?.0)?,
        "c2 BAD User is authenticated but not connected.\r\n* BYE Connection closed. 14\r\n"
    );
    let c2 = proxy
        .commands()
        .into_iter()
        .find(|c| c.tag == "c2")
        .unwrap();
    assert_eq!(c2.fault, Some(FaultKind::OverCap));
    let control = proxy.control();
    assert_eq!(
        (
            control.open_sessions(PHISH_MAILBOX),
            control.peak_sessions(PHISH_MAILBOX)
        ),
        (2, 2)
    );

    // Another mailbox has its own count.
    let mut intel = Wire::exchange(&stack, &proxy).await?;
    intel.login("i1", INTEL_MAILBOX, &token).await?;
    assert!(
        intel
            .command("i2", "EXAMINE INBOX")
            .await?
            .last()
            .unwrap()
            .starts_with("i2 OK")
    );

    // A closed connection frees its place at once…
    let mut first = open.remove(0);
    first.command("a3", "LOGOUT").await?;
    first.rest().await?;
    wait_for("a released session", STEP, || async {
        (control.open_sessions(PHISH_MAILBOX) == 1).then_some(())
    })
    .await?;
    let mut fourth = Wire::exchange(&stack, &proxy).await?;
    fourth.login("d1", PHISH_MAILBOX, &token).await?;
    assert!(
        fourth
            .command("d2", "EXAMINE INBOX")
            .await?
            .last()
            .unwrap()
            .starts_with("d2 OK")
    );

    // …or, when Exchange is slow to release sessions, only later.
    proxy.update_script(|s| {
        s.set_connection_cap(Some(
            ConnectionCap::new(2).release_delay(Duration::from_secs(600)),
        ));
    });
    let mut second = open.remove(0);
    second.command("b3", "LOGOUT").await?;
    second.rest().await?;
    wait_for("a closed session", STEP, || async {
        (control.open_sessions(PHISH_MAILBOX) == 1).then_some(())
    })
    .await?;
    let mut fifth = Wire::exchange(&stack, &proxy).await?;
    fifth.login("e1", PHISH_MAILBOX, &token).await?;
    assert_eq!(
        fifth.command("e2", "SELECT INBOX").await?,
        ["e2 BAD User is authenticated but not connected.\r\n"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_on_shutdown_and_on_drop() -> anyhow::Result<()> {
    let (stack, proxy, token) = start(Script::exchange()).await?;
    let addr = proxy.addr();
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    wire.login("a1", PHISH_MAILBOX, &token).await?;
    // Every task (the accept loop and the connection) ends within the bound.
    proxy.shutdown().await?;
    assert_eq!(wire.rest().await?.0, Vec::<u8>::new());
    assert!(TcpStream::connect(addr).await.is_err());

    let proxy = stack.exchange_proxy(Script::exchange()).await?;
    let addr = proxy.addr();
    let mut wire = Wire::exchange(&stack, &proxy).await?;
    drop(proxy);
    assert_eq!(wire.rest().await?.0, Vec::<u8>::new());
    wait_for("the listener to close", STEP, || async {
        TcpStream::connect(addr).await.is_err().then_some(())
    })
    .await?;
    Ok(())
}
