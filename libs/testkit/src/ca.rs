//! A throw-away certificate authority for the local stack.
//!
//! Every TLS server of the test kit (Dovecot, the Entra stand-in, later the fault proxy)
//! presents a leaf certificate issued by one `TestCa` made at start-up, and every client
//! trusts that CA explicitly. Nothing turns certificate verification off.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A CA certificate and key, able to issue server certificates for loopback names.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A server certificate issued by a [`TestCa`], in PEM.
#[derive(Clone)]
pub struct ServerCert {
    /// The leaf certificate followed by nothing else (the CA is trusted directly).
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for ServerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerCert").finish_non_exhaustive()
    }
}

impl TestCa {
    /// Makes a new CA with a fresh P-256 key.
    pub fn new() -> anyhow::Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, "threatmail test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().context("failed to generate the test CA key")?;
        let issuer = CertifiedIssuer::self_signed(params, key)?;
        Ok(Self { issuer })
    }

    /// The CA certificate in PEM, for clients to trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA certificate in DER.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// Writes the CA certificate to `path` (for tools that take a file, such as the CLI).
    pub fn write_cert(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, self.cert_pem())
            .with_context(|| format!("failed to write {}", path.display()))
    }

    /// Issues a server certificate for `localhost`, `127.0.0.1` and `::1`.
    ///
    /// It is an end-entity certificate (`CA:FALSE`, serverAuth): rustls refuses a CA
    /// certificate used as a server certificate (`CaUsedAsEndEntity`).
    pub fn issue_server_cert(&self) -> anyhow::Result<ServerCert> {
        let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().context("failed to generate a server key")?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(ServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A root store holding only this CA.
    pub fn root_store(&self) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.cert_der())?;
        Ok(roots)
    }

    /// A rustls client configuration that trusts only this CA.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// A rustls server configuration presenting a fresh leaf certificate of this CA.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let leaf = self.issue_server_cert()?;
        server_config_from_pem(&leaf)
    }
}

/// Builds a rustls server configuration from a PEM certificate and key.
pub fn server_config_from_pem(leaf: &ServerCert) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("failed to read the server certificate PEM")?;
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
        .context("failed to read the server key PEM")?;
    let mut config = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The one rustls crypto provider of the workspace (ring), chosen explicitly so no
/// process-wide default is needed.
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_is_not_a_ca_and_names_loopback() -> anyhow::Result<()> {
        let ca = TestCa::new()?;
        let leaf = ca.issue_server_cert()?;
        assert!(leaf.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key_pem.contains("PRIVATE KEY"));
        // Both configurations build from the same material.
        ca.client_config()?;
        server_config_from_pem(&leaf)?;
        Ok(())
    }
}
