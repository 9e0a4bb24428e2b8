//! ListFolders against the real Dovecot of the local stack, with a real stand-in token.

use std::time::Duration;

use threatmail_auth::{CredentialInterceptor, ServiceCredential};
use threatmail_fetcher::config::{Config, ImapConfig};
use threatmail_proto::v1::fetcher_client::FetcherClient;
use threatmail_proto::v1::imap_connection::Auth;
use threatmail_proto::v1::{Folder, ImapConnection, ListFoldersRequest};
use threatmail_testkit::stack::LocalStack;
use threatmail_testkit::tenant::{Mailbox, PHISH_MAILBOX, TenantFixture, sample_message};
use tokio_util::sync::CancellationToken;

type Client = FetcherClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        CredentialInterceptor,
    >,
>;

struct Fetcher {
    /// Presents the registry's service credential, which the fetcher allows.
    client: Client,
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start_fetcher(ca_file: Option<std::path::PathBuf>) -> anyhow::Result<Fetcher> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let registry = ServiceCredential::generate("registry")?;
    let mut config = Config {
        imap: ImapConfig {
            ca_file,
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(10),
        },
        ..Config::default()
    };
    config
        .auth
        .services
        .insert("registry".to_owned(), registry.hash());
    let shutdown = CancellationToken::new();
    tokio::spawn(threatmail_fetcher::run(config, listener, shutdown.clone()));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(Fetcher {
        client: FetcherClient::with_interceptor(channel, CredentialInterceptor::new(&registry)?),
        addr,
        shutdown,
    })
}

fn request(port: u16, user: &str, auth: Auth) -> ListFoldersRequest {
    ListFoldersRequest {
        connection: Some(ImapConnection {
            host: "localhost".to_owned(),
            port: u32::from(port),
            tls: true,
            username: user.to_owned(),
            auth: Some(auth),
        }),
    }
}

fn names(folders: &[Folder], out: &mut Vec<(String, Vec<u8>, bool)>) {
    for folder in folders {
        out.push((
            folder.display_name.clone(),
            folder.raw_name.clone(),
            folder.selectable,
        ));
        names(&folder.children, out);
    }
}

fn reason(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get("threatmail-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn lists_the_folder_tree_with_decoded_and_raw_names() -> anyhow::Result<()> {
    let mut fixture = TenantFixture::everything_right();
    let exchange = &mut fixture.primary_tenant_mut().expect("tenant").exchange;
    *exchange.mailbox_mut(PHISH_MAILBOX).expect("mailbox") = Mailbox::new(PHISH_MAILBOX)
        .with_messages("INBOX", vec![sample_message(1)])
        .with_messages("Phish Reports", vec![sample_message(2)])
        .with_messages("Reports.2026", vec![sample_message(3)])
        .with_messages("Входящие/Фишинг", vec![sample_message(4)])
        .with_messages("R&D", vec![sample_message(5)]);
    let stack = LocalStack::start(fixture).await?;
    let token = stack.primary_token().await?.access_token;
    let mut fetcher = start_fetcher(Some(stack.ca_cert_path())).await?;

    let reply = fetcher
        .client
        .list_folders(request(
            stack.dovecot.imaps_addr().port(),
            PHISH_MAILBOX,
            Auth::AccessToken(token),
        ))
        .await?
        .into_inner();
    let mut listed = Vec::new();
    names(&reply.folders, &mut listed);
    let display: Vec<&str> = listed.iter().map(|(d, _, _)| d.as_str()).collect();
    for expected in [
        "INBOX",
        "Phish Reports",
        "Reports.2026",
        "Входящие",
        "Входящие/Фишинг",
        "R&D",
    ] {
        assert!(
            display.contains(&expected),
            "{expected} missing from {display:?}"
        );
    }
    assert_eq!(reply.folders[0].display_name, "INBOX", "INBOX comes first");
    let phishing = listed
        .iter()
        .find(|(d, _, _)| d == "Входящие/Фишинг")
        .expect("nested folder");
    assert_eq!(
        phishing.1,
        threatmail_core::mutf7::encode("Входящие/Фишинг").into_bytes(),
        "the raw name is the server's modified UTF-7"
    );
    let rnd = listed.iter().find(|(d, _, _)| d == "R&D").expect("R&D");
    assert_eq!(rnd.1, b"R&-D".to_vec());
    assert!(
        reply.capabilities.iter().any(|c| c.contains("IMAP4rev1")),
        "{:?}",
        reply.capabilities
    );
    Ok(())
}

#[tokio::test]
async fn failures_come_back_typed() -> anyhow::Result<()> {
    let stack = LocalStack::start(TenantFixture::everything_right()).await?;
    let token = stack.primary_token().await?.access_token;
    let port = stack.dovecot.imaps_addr().port();
    let mut fetcher = start_fetcher(Some(stack.ca_cert_path())).await?;

    // A mailbox the app has no FullAccess on: Exchange's `NO AUTHENTICATE failed.`.
    let refused = fetcher
        .client
        .list_folders(request(
            port,
            "ceo@corp.example",
            Auth::AccessToken(token.clone()),
        ))
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    assert_eq!(reason(&refused), "imap.authenticate_failed");
    assert!(
        refused.message().contains("ceo@corp.example"),
        "{}",
        refused.message()
    );
    assert!(
        !refused.message().contains(&token),
        "the token never appears in an error"
    );

    // Nothing listens there.
    let free = threatmail_testkit::net::free_port()?;
    let unreachable = fetcher
        .client
        .list_folders(request(
            free,
            PHISH_MAILBOX,
            Auth::AccessToken(token.clone()),
        ))
        .await
        .expect_err("unreachable");
    assert_eq!(unreachable.code(), tonic::Code::Unavailable);
    assert_eq!(reason(&unreachable), "imap.unreachable");

    // A fetcher that does not trust the test CA refuses the server: checks stay on.
    let mut untrusting = start_fetcher(None).await?;
    let untrusted = untrusting
        .client
        .list_folders(request(port, PHISH_MAILBOX, Auth::AccessToken(token)))
        .await
        .expect_err("untrusted certificate");
    assert_eq!(reason(&untrusted), "imap.tls_failed", "{untrusted:?}");

    // Bad requests are told what is missing.
    let missing = fetcher
        .client
        .list_folders(ListFoldersRequest { connection: None })
        .await
        .expect_err("no connection");
    assert_eq!(missing.code(), tonic::Code::InvalidArgument);
    Ok(())
}

#[tokio::test]
async fn password_sources_log_in_with_login() -> anyhow::Result<()> {
    let stack = LocalStack::start(TenantFixture::everything_right()).await?;
    stack
        .dovecot
        .set_password("analyst@other.example", "correct horse")?;
    let port = stack.dovecot.imaps_addr().port();
    let mut fetcher = start_fetcher(Some(stack.ca_cert_path())).await?;
    let reply = fetcher
        .client
        .list_folders(request(
            port,
            "analyst@other.example",
            Auth::Password("correct horse".into()),
        ))
        .await?
        .into_inner();
    assert!(reply.folders.iter().any(|f| f.display_name == "INBOX"));
    let wrong = fetcher
        .client
        .list_folders(request(
            port,
            "analyst@other.example",
            Auth::Password("wrong".into()),
        ))
        .await
        .expect_err("wrong password");
    assert_eq!(reason(&wrong), "imap.authenticate_failed");
    Ok(())
}

/// ListFolders logs in with whatever it is given, so only services may call it.
#[tokio::test]
async fn only_services_may_list_folders() -> anyhow::Result<()> {
    let fetcher = start_fetcher(None).await?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", fetcher.addr))?
        .connect()
        .await?;
    let listing = || request(1, PHISH_MAILBOX, Auth::Password("x".into()));

    let anonymous = FetcherClient::new(channel.clone())
        .list_folders(listing())
        .await
        .expect_err("no credential");
    assert_eq!(
        anonymous.code(),
        tonic::Code::Unauthenticated,
        "{anonymous:?}"
    );
    assert_eq!(reason(&anonymous), "auth.unauthenticated");

    // A well-formed credential the fetcher was not told about.
    let stranger = ServiceCredential::generate("registry")?;
    let refused =
        FetcherClient::with_interceptor(channel.clone(), CredentialInterceptor::new(&stranger)?)
            .list_folders(listing())
            .await
            .expect_err("unknown credential");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    // An API key is not a service credential, whatever its roles.
    let api_key = FetcherClient::with_interceptor(
        channel,
        CredentialInterceptor::bearer("tmk1.someone.0123456789abcdef")?,
    )
    .list_folders(listing())
    .await
    .expect_err("api key");
    assert_eq!(api_key.code(), tonic::Code::Unauthenticated, "{api_key:?}");

    // The allowed service gets through the check to the IMAP attempt (nothing listens on
    // port 1).
    let allowed = fetcher
        .client
        .clone()
        .list_folders(listing())
        .await
        .expect_err("nothing listens there");
    assert_eq!(reason(&allowed), "imap.unreachable", "{allowed:?}");
    Ok(())
}

/// Case BR-01: a server whose `* CAPABILITY` line has two spaces between atoms (a line the
/// parser behind async-imap rejects, which would poison the connection). The line is
/// mended before it is parsed: the folder list comes back with the whole capability set.
#[tokio::test]
async fn br01_a_garbled_capability_line_does_not_stop_the_folder_list() -> anyhow::Result<()> {
    use threatmail_testkit::exchange_proxy::{Dialect, Script};

    let mut fixture = TenantFixture::everything_right();
    let exchange = &mut fixture.primary_tenant_mut().expect("tenant").exchange;
    *exchange.mailbox_mut(PHISH_MAILBOX).expect("mailbox") = Mailbox::new(PHISH_MAILBOX)
        .with_messages("INBOX", vec![sample_message(1)])
        .with_messages("Phish Reports", vec![sample_message(2)]);
    let stack = LocalStack::start(fixture).await?;
    let proxy = stack
        .exchange_proxy(
            Script::passthrough().dialect(Dialect::exchange().double_space_after("IMAP4rev1")),
        )
        .await?;
    let token = stack.primary_token().await?.access_token;
    let mut fetcher = start_fetcher(Some(stack.ca_cert_path())).await?;
    let listed = fetcher
        .client
        .list_folders(request(
            proxy.addr().port(),
            PHISH_MAILBOX,
            Auth::AccessToken(token),
        ))
        .await?
        .into_inner();
    let mut found = Vec::new();
    names(&listed.folders, &mut found);
    let found: Vec<&str> = found.iter().map(|(name, _, _)| name.as_str()).collect();
    assert!(
        found.contains(&"INBOX") && found.contains(&"Phish Reports"),
        "{found:?}"
    );
    assert!(
        proxy.commands().iter().any(|c| c.name == "CAPABILITY"),
        "the garbled line was really served"
    );
    for atom in ["IMAP4rev1", "MOVE", "UIDPLUS", "IDLE"] {
        assert!(
            listed.capabilities.iter().any(|c| c == atom),
            "{atom} in {:?}",
            listed.capabilities
        );
    }
    Ok(())
}
