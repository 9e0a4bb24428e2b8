//! Connecting: TCP, TLS, and the greeting, all under one hard timeout.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::ImapError;

/// Where a mailbox's IMAP server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name (also the TLS server name) or IP literal.
    pub host: String,
    /// 993 for implicit TLS.
    pub port: u16,
    /// Implicit TLS (IMAPS). Plain connections exist for test servers and are never used
    /// for Microsoft 365.
    pub tls: bool,
}

impl Endpoint {
    /// `host:port`, for messages.
    pub fn display(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// A TLS or a plain TCP stream.
#[derive(Debug)]
pub enum MaybeTls {
    /// Implicit TLS.
    Tls(Box<TlsStream<TcpStream>>),
    /// Plain TCP.
    Plain(TcpStream),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            MaybeTls::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            MaybeTls::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            MaybeTls::Plain(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            MaybeTls::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

/// The trust store for IMAP servers: the public web PKI (Exchange Online's certificates
/// chain to it) plus any extra CA certificates in PEM (a private server, the test kit).
pub fn tls_config(extra_ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(pem) = extra_ca_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|error| format!("unreadable CA certificate PEM: {error}"))?;
            roots
                .add(cert)
                .map_err(|error| format!("unusable CA certificate: {error}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("the CA file holds no certificate".to_owned());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Connects to `endpoint` and reads the greeting, all within `limit`.
///
/// Nothing is sent before the greeting has been read: a `* BYE` greeting or a connection
/// closed early is an error, and a server that never greets is a timeout, never a hang.
pub async fn connect(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
    limit: Duration,
) -> Result<async_imap::Client<super::ImapStream>, ImapError> {
    let server = endpoint.display();
    match tokio::time::timeout(limit, connect_and_greet(endpoint, tls)).await {
        Ok(result) => result,
        Err(_) => Err(ImapError::Timeout {
            server,
            step: "connect and greeting",
            after: limit,
        }),
    }
}

async fn connect_and_greet(
    endpoint: &Endpoint,
    tls: Arc<rustls::ClientConfig>,
) -> Result<async_imap::Client<super::ImapStream>, ImapError> {
    let server = endpoint.display();
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|source| ImapError::Connect {
            server: server.clone(),
            source,
        })?;
    // IMAP commands are small and latency-bound.
    let _ = tcp.set_nodelay(true);
    let stream = if endpoint.tls {
        let name = ServerName::try_from(endpoint.host.clone()).map_err(|error| ImapError::Tls {
            server: server.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, error),
        })?;
        let stream = TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|source| ImapError::Tls {
                server: server.clone(),
                source,
            })?;
        MaybeTls::Tls(Box::new(stream))
    } else {
        MaybeTls::Plain(tcp)
    };
    let mut client = async_imap::Client::new(super::tolerant::Tolerant::new(stream));
    let greeting = client
        .read_response()
        .await
        .map_err(|source| ImapError::Protocol {
            server: server.clone(),
            step: "the greeting",
            source: async_imap::error::Error::Io(source),
        })?
        .ok_or_else(|| ImapError::ClosedBeforeGreeting {
            server: server.clone(),
        })?;
    match greeting.parsed() {
        imap_proto::Response::Data {
            status: imap_proto::Status::Bye,
            outcome,
        } => Err(ImapError::GreetingBye {
            server,
            text: outcome
                .information
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
        }),
        imap_proto::Response::Data {
            status: imap_proto::Status::Ok | imap_proto::Status::PreAuth,
            ..
        } => Ok(client),
        _ => Err(ImapError::Protocol {
            server,
            step: "the greeting",
            source: async_imap::error::Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the first response is not a greeting",
            )),
        }),
    }
}
