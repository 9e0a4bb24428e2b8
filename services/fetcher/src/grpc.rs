//! The fetcher's gRPC API: `ListFolders`, which the registry uses to test a source, and
//! its permission policy.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use threatmail_auth::{Policy, Requirement};
use threatmail_proto::v1::fetcher_server::Fetcher;
use threatmail_proto::v1::{self as pb, imap_connection::Auth};
use tonic::{Request, Response, Status};

use crate::imap::ImapError;
use crate::imap::connect::{Endpoint, connect};
use crate::imap::folders::{FolderNode, list, tree};
use crate::imap::login::{Credentials, login};

/// The metadata key carrying a failure's machine-readable reason.
pub const REASON_KEY: &str = "threatmail-reason";

/// The proto name of the service.
pub const SERVICE: &str = "threatmail.v1.Fetcher";

/// Who may call what: `ListFolders` logs in to a mailbox with what it is given, so only
/// services (the registry testing a source) may call it, never an API key (DESIGN §2).
pub fn policy() -> Policy {
    Policy::new().rpc(SERVICE, "ListFolders", Requirement::Service)
}

/// Serves the Fetcher API.
pub struct FetcherService {
    tls: Arc<rustls::ClientConfig>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl FetcherService {
    /// A service trusting `tls` for IMAP servers, with the given hard timeouts.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Self {
        Self {
            tls,
            connect_timeout,
            command_timeout,
        }
    }
}

#[tonic::async_trait]
impl Fetcher for FetcherService {
    async fn list_folders(
        &self,
        request: Request<pb::ListFoldersRequest>,
    ) -> Result<Response<pb::ListFoldersResponse>, Status> {
        let connection = request
            .into_inner()
            .connection
            .ok_or_else(|| Status::invalid_argument("connection is required"))?;
        let port = u16::try_from(connection.port)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| Status::invalid_argument("port must be between 1 and 65535"))?;
        if connection.host.is_empty() {
            return Err(Status::invalid_argument("host is required"));
        }
        if connection.username.is_empty() {
            return Err(Status::invalid_argument(
                "username (the mailbox address) is required",
            ));
        }
        let credentials = match connection.auth {
            Some(Auth::AccessToken(token)) => Credentials::XOAuth2 {
                user: connection.username.clone(),
                token: SecretString::from(token),
            },
            Some(Auth::Password(password)) => Credentials::Password {
                user: connection.username.clone(),
                password: SecretString::from(password),
            },
            Some(Auth::SourceId(_)) => {
                return Err(Status::unimplemented(
                    "listing by source id needs the registry and token broker; pass an access token",
                ));
            }
            None => {
                return Err(Status::invalid_argument(
                    "an access token or a password is required",
                ));
            }
        };
        let endpoint = Endpoint {
            host: connection.host,
            port,
            tls: connection.tls,
        };
        let folders = self
            .folders(&endpoint, &credentials)
            .await
            .map_err(status_of)?;
        Ok(Response::new(folders))
    }
}

impl FetcherService {
    #[tracing::instrument(skip_all, fields(server = %endpoint.display(), user = %credentials.user()))]
    async fn folders(
        &self,
        endpoint: &Endpoint,
        credentials: &Credentials,
    ) -> Result<pb::ListFoldersResponse, ImapError> {
        let server = endpoint.display();
        let client = connect(endpoint, self.tls.clone(), self.connect_timeout).await?;
        let mut session = login(client, credentials, &server, self.connect_timeout).await?;
        let listed = list(
            &mut session,
            &server,
            credentials.user(),
            self.command_timeout,
        )
        .await?;
        // Asked last: the capabilities are informational here, and a line the parser still
        // rejects (BR-01's extra spaces are mended before it, `imap::tolerant`) would leave
        // its bytes in the read buffer, so nothing sent after it would be answered.
        let capabilities = match tokio::time::timeout(self.command_timeout, session.capabilities())
            .await
        {
            Ok(Ok(capabilities)) => {
                let mut names: Vec<String> = capabilities.iter().map(capability_name).collect();
                names.sort();
                names
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, "CAPABILITY answered with a line that does not parse; listing without it");
                Vec::new()
            }
            Err(_) => Vec::new(),
        };
        let _ = tokio::time::timeout(self.command_timeout, session.logout()).await;
        tracing::info!(folders = listed.len(), "listed folders");
        Ok(pb::ListFoldersResponse {
            folders: tree(&listed).into_iter().map(to_proto).collect(),
            capabilities,
        })
    }
}

fn capability_name(capability: &async_imap::types::Capability) -> String {
    use async_imap::types::Capability;
    match capability {
        Capability::Imap4rev1 => "IMAP4rev1".to_owned(),
        Capability::Auth(mechanism) => format!("AUTH={mechanism}"),
        Capability::Atom(atom) => atom.clone(),
    }
}

fn to_proto(node: FolderNode) -> pb::Folder {
    pb::Folder {
        raw_name: node.folder.raw_name.into_bytes(),
        display_name: node.folder.display_name,
        delimiter: node.folder.delimiter.unwrap_or_default(),
        attributes: node.folder.attributes,
        selectable: node.folder.selectable,
        children: node.children.into_iter().map(to_proto).collect(),
    }
}

/// One mapping from IMAP failures to gRPC codes; the reason travels in metadata.
pub fn status_of(error: ImapError) -> Status {
    let code = match &error {
        ImapError::Connect { .. } | ImapError::Timeout { .. } | ImapError::Tls { .. } => {
            tonic::Code::Unavailable
        }
        ImapError::GreetingBye { .. } | ImapError::ClosedBeforeGreeting { .. } => {
            tonic::Code::Unavailable
        }
        ImapError::LoginRefused { .. } => tonic::Code::Unauthenticated,
        ImapError::NotConnected { .. } => tonic::Code::PermissionDenied,
        ImapError::Throttled { .. } => tonic::Code::ResourceExhausted,
        ImapError::TokenExpired { .. } | ImapError::Closed { .. } => tonic::Code::Unavailable,
        ImapError::CommandFailed { .. } => tonic::Code::FailedPrecondition,
        ImapError::Protocol { .. } => tonic::Code::Unavailable,
    };
    let reason = error.reason();
    let mut status = Status::new(code, threatmail_core::error::chain(&error));
    if let Ok(value) = reason.parse() {
        status.metadata_mut().insert(REASON_KEY, value);
    }
    status
}
