//! How every cairn client trusts the hub, and the one place rustls client settings are made.
//!
//! Trust is never "accept anything". Before registration (or `cairn hub login`) a client
//! knows only the hub CA's SHA-256 fingerprint: [`Trust::Fingerprint`] accepts a server
//! chain only if it contains a certificate with that fingerprint and the server certificate
//! verifies against it. Afterwards the CA bundle itself is the only root
//! ([`Trust::CaBundle`]), and an appliance presents its client certificate ([`Identity`]).

use std::sync::{Arc, Mutex};

use cairn_api::CertFingerprint;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// How a client trusts the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Only the CA's fingerprint is known (before registration or login).
    Fingerprint(CertFingerprint),
    /// The CA bundle, PEM: the only roots.
    CaBundle(String),
    /// No root at all: every HTTPS server is refused. For plain-HTTP peers (the boot
    /// server) reached with the same client code.
    Nothing,
}

/// The client identity presented over mTLS.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Certificate chain, PEM.
    pub certificate_pem: String,
    /// The private key.
    pub key: ClientKey,
}

/// Where the client's private key is.
#[derive(Debug, Clone)]
pub enum ClientKey {
    /// In memory, PEM.
    Pem(String),
    /// Behind a signer: the key never leaves its home (an appliance's TPM).
    Signer(Arc<dyn rustls::sign::SigningKey>),
}

/// Errors building TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM input could not be read.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the settings.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// What a server presented when its chain did not hold the pinned CA: rustls carries only a
/// generic error up through the HTTP client, so the verifier leaves the details here.
#[derive(Debug, Clone, Default)]
pub struct PinMismatch(Arc<Mutex<Option<String>>>);

impl PinMismatch {
    /// Takes what the last refused server presented (`sha256:…` of each certificate).
    pub fn take(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn record(&self, presented: String) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(presented);
    }
}

/// The workspace's one crypto provider.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> CertFingerprint {
    CertFingerprint::parse(&hex::encode(Sha256::digest(der)))
        .expect("a SHA-256 digest is a fingerprint")
}

/// The certificates of a PEM bundle, DER. An empty bundle is no error: as roots it trusts
/// nothing, so every connection is refused (closed, not open).
pub fn pem_certificates(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            message: e.to_string(),
        })
}

/// A rustls client configuration: `trust` as the only roots, `identity` presented for mTLS.
/// The returned [`PinMismatch`] receives what a server presented when it failed a
/// fingerprint pin.
pub fn client_config(
    trust: &Trust,
    identity: Option<&Identity>,
) -> Result<(rustls::ClientConfig, PinMismatch), TlsError> {
    let provider = provider();
    let mismatch = PinMismatch::default();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match trust {
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                fingerprint: fp.clone(),
                mismatch: mismatch.clone(),
                provider,
            })),
        Trust::CaBundle(pem) => {
            let mut roots = RootCertStore::empty();
            for der in pem_certificates(pem, "hub CA bundle")? {
                roots.add(der)?;
            }
            builder.with_root_certificates(roots)
        }
        Trust::Nothing => builder.with_root_certificates(RootCertStore::empty()),
    };
    let config = match identity {
        Some(id) => {
            let chain = pem_certificates(&id.certificate_pem, "client certificate")?;
            match &id.key {
                ClientKey::Pem(pem) => {
                    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| {
                        TlsError::Pem {
                            what: "client key",
                            message: e.to_string(),
                        }
                    })?;
                    builder.with_client_auth_cert(chain, key)?
                }
                ClientKey::Signer(key) => {
                    let certified = rustls::sign::CertifiedKey::new(chain, key.clone());
                    // Refuses a certificate that is not for this key, as the PEM path does.
                    certified.keys_match()?;
                    builder
                        .with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(certified))))
                }
            }
        }
        None => builder.with_no_client_auth(),
    };
    Ok((config, mismatch))
}

/// Presents one certificate and key whatever the server asks (the appliance has one).
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        // Only when the key can sign one of the offered schemes: else no certificate, and
        // the server's refusal says why.
        self.0
            .key
            .choose_scheme(sigschemes)
            .is_some()
            .then(|| self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Accepts a server chain only when one of its certificates has the pinned SHA-256
/// fingerprint, then verifies the chain with that certificate as the only root.
#[derive(Debug)]
struct PinnedCaVerifier {
    fingerprint: CertFingerprint,
    mismatch: PinMismatch,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = || std::iter::once(end_entity).chain(intermediates);
        let Some(anchor) = chain().find(|c| fingerprint(c) == self.fingerprint) else {
            let presented = chain()
                .map(|c| fingerprint(c).to_string())
                .collect::<Vec<_>>()
                .join(", ");
            self.mismatch.record(presented);
            return Err(rustls::Error::General("CA fingerprint mismatch".into()));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
