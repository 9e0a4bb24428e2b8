//! Server behaviours Dovecot cannot produce, as scripted IMAP transcripts over loopback:
//! the server side reads exactly what the client must send and answers as the real server
//! did in the bug report each test is named after (../shared/cases/CASES.md).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use threatmail_fetcher::imap::ImapError;
use threatmail_fetcher::imap::connect::{Endpoint, connect, tls_config};
use threatmail_fetcher::imap::folders::list;
use threatmail_fetcher::imap::login::{Credentials, login};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};

const EXCHANGE_GREETING: &str = "* OK The Microsoft Exchange IMAP4 service is ready. [TQBCAFgAMAAxAC4ARQBYAEEATQBQAEwARQAuAEMATwBNAA==]\r\n";
const LIMIT: Duration = Duration::from_secs(5);

/// A one-connection scripted server; `script` gets the accepted stream.
async fn scripted<F, Fut>(
    script: F,
) -> anyhow::Result<(Endpoint, tokio::task::JoinHandle<anyhow::Result<()>>)>
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        script(stream).await
    });
    let endpoint = Endpoint {
        host: "127.0.0.1".to_owned(),
        port,
        tls: false,
    };
    Ok((endpoint, task))
}

fn tls() -> Arc<rustls::ClientConfig> {
    tls_config(None).expect("web PKI roots load")
}

async fn read_line(reader: &mut BufReader<TcpStream>) -> anyhow::Result<String> {
    let mut line = String::new();
    tokio::time::timeout(LIMIT, reader.read_line(&mut line)).await??;
    Ok(line)
}

fn xoauth2(user: &str, token: &str) -> Credentials {
    Credentials::XOAuth2 {
        user: user.to_owned(),
        token: SecretString::from(token.to_owned()),
    }
}

/// BR-02: nothing may be sent before the greeting is read; then the `+` is answered with
/// the XOAUTH2 string and the tagged OK completes the login.
#[tokio::test]
async fn br02_greeting_is_read_before_authenticate() -> anyhow::Result<()> {
    let (endpoint, server) = scripted(|stream| async move {
        // Before greeting, the client must stay silent: give it time to misbehave.
        let mut early = [0u8; 64];
        let silent = tokio::time::timeout(Duration::from_millis(300), stream.peek(&mut early))
            .await
            .is_err();
        anyhow::ensure!(silent, "the client sent a command before the greeting");
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(EXCHANGE_GREETING.as_bytes())
            .await?;
        let command = read_line(&mut reader).await?;
        let tag = command.split(' ').next().unwrap_or_default().to_owned();
        anyhow::ensure!(
            command.trim_end().ends_with("AUTHENTICATE XOAUTH2"),
            "got {command:?}"
        );
        reader.get_mut().write_all(b"+ \r\n").await?;
        let response = read_line(&mut reader).await?;
        let decoded = base64::engine::general_purpose::STANDARD.decode(response.trim_end())?;
        anyhow::ensure!(
            decoded == b"user=reports@example.com\x01auth=Bearer PLACEHOLDER.TOKEN\x01\x01",
            "SASL response {:?}",
            String::from_utf8_lossy(&decoded)
        );
        reader
            .get_mut()
            .write_all(format!("{tag} OK AUTHENTICATE completed.\r\n").as_bytes())
            .await?;
        Ok(())
    })
    .await?;
    let client = connect(&endpoint, tls(), LIMIT).await?;
    let session = login(
        client,
        &xoauth2("reports@example.com", "PLACEHOLDER.TOKEN"),
        "scripted",
        LIMIT,
    )
    .await;
    server.await??;
    assert!(session.is_ok(), "login completed");
    Ok(())
}

/// BR-02's other half: a server that never greets is a timeout, never a hang.
#[tokio::test]
async fn br02_a_silent_server_times_out() -> anyhow::Result<()> {
    let (endpoint, server) = scripted(|stream| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        drop(stream);
        Ok(())
    })
    .await?;
    let error = connect(&endpoint, tls(), Duration::from_millis(300))
        .await
        .expect_err("no greeting");
    assert!(matches!(error, ImapError::Timeout { .. }), "{error:?}");
    server.abort();
    Ok(())
}

#[tokio::test]
async fn a_bye_greeting_fails_cleanly() -> anyhow::Result<()> {
    let (endpoint, server) = scripted(|mut stream| async move {
        stream.write_all(b"* BYE Too many connections\r\n").await?;
        Ok(())
    })
    .await?;
    let error = connect(&endpoint, tls(), LIMIT)
        .await
        .expect_err("BYE greeting");
    match error {
        ImapError::GreetingBye { text, .. } => assert_eq!(text, "Too many connections"),
        other => panic!("expected GreetingBye, got {other:?}"),
    }
    server.await??;
    Ok(())
}

/// BR-07: Exchange accepts the token, then answers the first mailbox command with
/// `BAD User is authenticated but not connected.` and closes. That is "no mailbox access",
/// never an empty folder list.
#[tokio::test]
async fn br07_authenticated_but_not_connected_is_its_own_error() -> anyhow::Result<()> {
    let (endpoint, server) = scripted(|stream| async move {
        let mut reader = accept_login(stream).await?;
        let list = read_line(&mut reader).await?;
        anyhow::ensure!(list.contains("LIST"), "expected LIST, got {list:?}");
        let tag = list.split(' ').next().unwrap_or_default().to_owned();
        reader
            .get_mut()
            .write_all(format!("{tag} BAD User is authenticated but not connected.\r\n* BYE Connection closed. 14\r\n").as_bytes())
            .await?;
        Ok(())
    })
    .await?;
    let client = connect(&endpoint, tls(), LIMIT).await?;
    let mut session = login(
        client,
        &xoauth2("reports@example.com", "T"),
        "scripted",
        LIMIT,
    )
    .await?;
    let error = list(&mut session, "scripted", "reports@example.com", LIMIT)
        .await
        .expect_err("not connected");
    match &error {
        ImapError::NotConnected { user, .. } => assert_eq!(user, "reports@example.com"),
        other => panic!("expected NotConnected, got {other:?}"),
    }
    assert_eq!(error.reason(), "imap.not_connected");
    server.await??;
    Ok(())
}

/// Exchange's one answer for every IMAP-side setup fault.
#[tokio::test]
async fn no_authenticate_failed_is_a_refused_login() -> anyhow::Result<()> {
    let (endpoint, server) = scripted(|stream| async move {
        let mut reader = BufReader::new(stream);
        reader
            .get_mut()
            .write_all(EXCHANGE_GREETING.as_bytes())
            .await?;
        let command = read_line(&mut reader).await?;
        let tag = command.split(' ').next().unwrap_or_default().to_owned();
        reader.get_mut().write_all(b"+ \r\n").await?;
        let _sasl = read_line(&mut reader).await?;
        reader
            .get_mut()
            .write_all(format!("{tag} NO AUTHENTICATE failed.\r\n").as_bytes())
            .await?;
        Ok(())
    })
    .await?;
    let client = connect(&endpoint, tls(), LIMIT).await?;
    let error = login(
        client,
        &xoauth2("reports@example.com", "T"),
        "scripted",
        LIMIT,
    )
    .await
    .expect_err("refused");
    match error {
        ImapError::LoginRefused {
            text, mechanism, ..
        } => {
            assert_eq!(text, "AUTHENTICATE failed.");
            assert_eq!(mechanism, "XOAUTH2");
        }
        other => panic!("expected LoginRefused, got {other:?}"),
    }
    server.await??;
    Ok(())
}

/// Greets as Exchange, accepts any XOAUTH2 login, and returns the reader.
async fn accept_login(stream: TcpStream) -> anyhow::Result<BufReader<TcpStream>> {
    let mut reader = BufReader::new(stream);
    reader
        .get_mut()
        .write_all(EXCHANGE_GREETING.as_bytes())
        .await?;
    let command = read_line(&mut reader).await?;
    let tag = command.split(' ').next().unwrap_or_default().to_owned();
    reader.get_mut().write_all(b"+ \r\n").await?;
    let _sasl = read_line(&mut reader).await?;
    reader
        .get_mut()
        .write_all(format!("{tag} OK AUTHENTICATE completed.\r\n").as_bytes())
        .await?;
    Ok(reader)
}

async fn logged_in(endpoint: &Endpoint) -> anyhow::Result<threatmail_fetcher::imap::Session> {
    let client = connect(endpoint, tls(), LIMIT).await?;
    Ok(login(
        client,
        &xoauth2("reports@example.com", "T"),
        "scripted",
        LIMIT,
    )
    .await?)
}

/// Exchange's throttling reply to a FETCH, then its BYE: the backoff is read from the text,
/// and nothing reads as "no new messages".
#[tokio::test]
async fn a_throttled_fetch_carries_the_suggested_backoff() -> anyhow::Result<()> {
    let (endpoint, server) = scripted(|stream| async move {
        let mut reader = accept_login(stream).await?;
        let fetch = read_line(&mut reader).await?;
        anyhow::ensure!(fetch.contains("UID FETCH 1:* (UID RFC822.SIZE)"), "got {fetch:?}");
        let tag = fetch.split(' ').next().unwrap_or_default().to_owned();
        reader
            .get_mut()
            .write_all(
                format!("{tag} NO Request is throttled. Suggested Backoff Time: 89000 milliseconds\r\n* BYE Connection closed. 14\r\n")
                    .as_bytes(),
            )
            .await?;
        Ok(())
    })
    .await?;
    let mut session = logged_in(&endpoint).await?;
    let error = threatmail_fetcher::imap::fetch::announced_since(
        &mut session,
        "scripted",
        "reports@example.com",
        1,
        LIMIT,
    )
    .await
    .expect_err("throttled");
    match error {
        ImapError::Throttled { backoff, .. } => assert_eq!(backoff, Duration::from_millis(89_000)),
        other => panic!("expected Throttled, got {other:?}"),
    }
    server.await??;
    Ok(())
}

/// `* BYE Session invalidated - AccessTokenExpired` in the middle of a command, and
/// `BAD Command received in Invalid state.` after it, both mean "log in again".
#[tokio::test]
async fn token_expiry_mid_session_is_its_own_error() -> anyhow::Result<()> {
    let (endpoint, server) = scripted(|stream| async move {
        let mut reader = accept_login(stream).await?;
        let _first = read_line(&mut reader).await?;
        // The command in flight is never completed.
        reader
            .get_mut()
            .write_all(b"* BYE Session invalidated - AccessTokenExpired\r\n")
            .await?;
        let second = read_line(&mut reader).await?;
        let second_tag = second.split(' ').next().unwrap_or_default().to_owned();
        reader
            .get_mut()
            .write_all(
                format!("{second_tag} BAD Command received in Invalid state.\r\n").as_bytes(),
            )
            .await?;
        Ok(())
    })
    .await?;
    let mut session = logged_in(&endpoint).await?;
    let first = threatmail_fetcher::imap::select_folder::open(
        &mut session,
        "scripted",
        "reports@example.com",
        "INBOX",
        threatmail_fetcher::imap::select_folder::Access::ReadOnly,
        LIMIT,
    )
    .await
    .expect_err("expired");
    assert_eq!(first.reason(), "imap.token_expired", "{first:?}");
    let second = threatmail_fetcher::imap::fetch::announced_since(
        &mut session,
        "scripted",
        "reports@example.com",
        1,
        LIMIT,
    )
    .await
    .expect_err("invalid state");
    assert_eq!(second.reason(), "imap.token_expired", "{second:?}");
    server.await??;
    Ok(())
}
