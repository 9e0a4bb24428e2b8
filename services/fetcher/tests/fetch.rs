//! EXAMINE and the two-step fetch against the real Dovecot, with a stand-in token.

use std::time::Duration;

use secrecy::SecretString;
use threatmail_fetcher::imap::Session;
use threatmail_fetcher::imap::connect::{Endpoint, connect, tls_config};
use threatmail_fetcher::imap::fetch::{Body, announced_since, bodies};
use threatmail_fetcher::imap::login::{Credentials, login};
use threatmail_fetcher::imap::select_folder::{Access, open};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture};

const LIMIT: Duration = Duration::from_secs(10);

fn message(n: usize, body_len: usize) -> Vec<u8> {
    let mut raw = format!(
        "From: reporter{n}@corp.example\r\nTo: soc-phish@corp.example\r\nSubject: report {n}\r\nMessage-ID: <r-{n}@corp.example>\r\n\r\n"
    )
    .into_bytes();
    raw.extend(std::iter::repeat_n(b'x', body_len));
    raw.extend_from_slice(b"\r\n");
    raw
}

async fn session(stack: &LocalStack) -> anyhow::Result<Session> {
    let token = stack.primary_token().await?.access_token;
    let endpoint = Endpoint {
        host: "localhost".to_owned(),
        port: stack.dovecot.imaps_addr().port(),
        tls: true,
    };
    let ca = std::fs::read(stack.ca_cert_path())?;
    let client = connect(
        &endpoint,
        tls_config(Some(&ca)).map_err(anyhow::Error::msg)?,
        LIMIT,
    )
    .await?;
    let credentials = Credentials::XOAuth2 {
        user: PHISH_MAILBOX.to_owned(),
        token: SecretString::from(token),
    };
    Ok(login(client, &credentials, "dovecot", LIMIT).await?)
}

#[tokio::test]
async fn examine_then_sizes_then_capped_bodies() -> anyhow::Result<()> {
    let messages: Vec<Vec<u8>> = (1..=5)
        .map(|n| message(n, if n == 4 { 5000 } else { 100 }))
        .collect();
    let mut fixture = TenantFixture::everything_right();
    *fixture
        .primary_tenant_mut()
        .expect("tenant")
        .exchange
        .mailbox_mut(PHISH_MAILBOX)
        .expect("mailbox") =
        Mailbox::new(PHISH_MAILBOX).with_messages("Phish Reports", messages.clone());
    let stack = LocalStack::start(fixture).await?;
    let mut session = session(&stack).await?;

    let state = open(
        &mut session,
        "dovecot",
        PHISH_MAILBOX,
        "Phish Reports",
        Access::ReadOnly,
        LIMIT,
    )
    .await?;
    assert_eq!(state.exists, 5);
    assert_eq!(state.uidnext, Some(6));
    assert!(state.uidvalidity > 0);

    let all = announced_since(&mut session, "dovecot", PHISH_MAILBOX, 1, LIMIT).await?;
    assert_eq!(
        all.iter().map(|m| m.uid).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert_eq!(all[3].size, messages[3].len() as u64);
    let later = announced_since(&mut session, "dovecot", PHISH_MAILBOX, 4, LIMIT).await?;
    assert_eq!(later.iter().map(|m| m.uid).collect::<Vec<_>>(), [4, 5]);
    // Past the last UID, `n:*` would match the last message: nothing new is reported.
    let none = announced_since(&mut session, "dovecot", PHISH_MAILBOX, 6, LIMIT).await?;
    assert!(none.is_empty(), "{none:?}");

    let fetched = bodies(
        &mut session,
        "dovecot",
        PHISH_MAILBOX,
        &[1, 3, 4],
        1000,
        LIMIT,
    )
    .await?;
    assert_eq!(fetched.len(), 3);
    assert_eq!(
        fetched[0],
        (1, Body::Complete(messages[0].clone())),
        "bytes are exact"
    );
    assert_eq!(fetched[1], (3, Body::Complete(messages[2].clone())));
    assert_eq!(
        fetched[2],
        (4, Body::OverCap),
        "a body over the cap is not read whole"
    );

    // BODY.PEEK[] and EXAMINE leave every flag as it was.
    let flags = announce_flags(&mut session).await?;
    assert!(flags.iter().all(|f| f.is_empty()), "{flags:?}");

    // A folder that does not exist is a typed failure, not an empty folder.
    let missing = open(
        &mut session,
        "dovecot",
        PHISH_MAILBOX,
        "No Such Folder",
        Access::ReadOnly,
        LIMIT,
    )
    .await
    .expect_err("missing folder");
    assert_eq!(missing.reason(), "imap.command_failed");
    Ok(())
}

async fn announce_flags(session: &mut Session) -> anyhow::Result<Vec<Vec<String>>> {
    use futures::TryStreamExt as _;
    let fetches: Vec<_> = session
        .uid_fetch("1:*", "(UID FLAGS)")
        .await?
        .try_collect()
        .await?;
    Ok(fetches
        .iter()
        .map(|f| {
            f.flags()
                .map(|flag| format!("{flag:?}"))
                .filter(|f| !f.contains("Recent"))
                .collect()
        })
        .collect())
}
