//! TLS for the hub: server identity, and client certificates checked in two steps.
//!
//! Operators connect without a client certificate; appliances with one. A plain
//! `WebPkiClientVerifier` would end the handshake with a bare TLS alert for a certificate
//! from another CA or an expired one, and a technician at a site would see only "handshake
//! failure". So the verifier installed in rustls ([`DeferredVerifier`]) still checks the
//! handshake signature (the peer holds the key) but lets the chain check's verdict through
//! to the HTTP layer ([`verify_chain`]), which answers `401` naming the reason. Nothing is
//! trusted before that verdict: a connection whose chain failed carries no identity.

use std::path::Path;
use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime, pem::PemObject};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::pki;

/// rustls's WebPKI verifier with the chain verdict deferred to the HTTP layer.
#[derive(Debug)]
pub struct DeferredVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl ClientCertVerifier for DeferredVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }
    fn client_auth_mandatory(&self) -> bool {
        false
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred: see the module docs and `verify_chain`.
        Ok(ClientCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Server TLS settings plus the verifier the HTTP layer uses for the deferred chain check.
pub struct Tls {
    /// For the acceptor.
    pub config: Arc<ServerConfig>,
    /// The real WebPKI verifier against the hub CA.
    pub chain: Arc<dyn ClientCertVerifier>,
}

/// Errors building the TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("reading {path}: {message}")]
    Pem {
        /// File.
        path: String,
        /// Why.
        message: String,
    },
    /// rustls refused the configuration.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// The client verifier could not be built.
    #[error(transparent)]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Loads the server certificate and key and the CA from the data directory.
pub fn load(dir: &Path) -> Result<Tls, TlsError> {
    let pem_err = |path: &Path| {
        let path = path.display().to_string();
        move |e: rustls::pki_types::pem::Error| TlsError::Pem {
            path: path.clone(),
            message: e.to_string(),
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca_path = dir.join(pki::CA_CERT);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca_path).map_err(pem_err(&ca_path))? {
        roots.add(cert.map_err(pem_err(&ca_path))?)?;
    }
    let chain =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let cert_path = dir.join(pki::SERVER_CERT);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .map_err(pem_err(&cert_path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err(&cert_path))?;
    let key_path = dir.join(pki::SERVER_KEY);
    let key_pem = pki::read_secret(&key_path).map_err(|e| TlsError::Pem {
        path: key_path.display().to_string(),
        message: e.to_string(),
    })?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem_err(&key_path))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(Arc::new(DeferredVerifier {
            inner: chain.clone(),
        }))
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Tls {
        config: Arc::new(config),
        chain,
    })
}

/// The deferred chain check: `Ok` when the certificate chains to the hub CA and is valid now.
pub fn verify_chain(
    chain: &dyn ClientCertVerifier,
    certs: &[CertificateDer<'_>],
) -> Result<(), String> {
    let (end, intermediates) = certs.split_first().ok_or("no certificate")?;
    chain
        .verify_client_cert(end, intermediates, UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}
