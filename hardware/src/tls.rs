//! How cairn trusts a BMC's HTTPS certificate.
//!
//! BMCs ship self-signed certificates, so "verify against the web PKI" alone is useless and
//! "accept anything" is what other tools fall back to. cairn offers, in order of preference:
//! a CA bundle (certificates issued by the site's CA), a pinned SHA-256 fingerprint, trust on
//! first use into a known-hosts file (later connections must present the same certificate),
//! and `--insecure` only when asked for.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Where trust comes from. Exactly one mode applies; the CLI refuses contradictory flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Trust {
    /// The system CA bundle (`/etc/ssl/certs/ca-certificates.crt`).
    #[default]
    System,
    /// A PEM CA bundle.
    CaBundle(PathBuf),
    /// The SHA-256 fingerprint of the BMC's certificate (hex, colons allowed).
    Fingerprint(String),
    /// Trust on first use, recorded in a known-hosts file (`host:port sha256-hex` lines).
    KnownHosts(PathBuf),
    /// Accept any certificate. Only when the operator asked for it.
    Insecure,
}

/// TLS set-up failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A CA bundle could not be read or holds no certificates.
    #[error("CA bundle {path}: {reason}")]
    Bundle {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A fingerprint is not 64 hex digits.
    #[error("TLS fingerprint {0:?} is not a SHA-256 fingerprint (64 hex digits, colons allowed)")]
    Fingerprint(String),
    /// rustls refused the configuration.
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
}

/// Normalises `AB:CD:...` / `sha256:abcd...` to 64 lower-case hex digits.
pub fn normalize_fingerprint(text: &str) -> Result<String, TlsError> {
    cairn_api::CertFingerprint::parse(text)
        .map(|fp| fp.hex().to_owned())
        .map_err(|_| TlsError::Fingerprint(text.to_owned()))
}

/// SHA-256 of a DER certificate, lower-case hex.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, cert))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the rustls client configuration for one BMC (`authority` is `host:port`, the
/// known-hosts key).
pub fn client_config(trust: &Trust, authority: &str) -> Result<ClientConfig, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let config = match trust {
        Trust::System => builder
            .with_root_certificates(roots(Path::new("/etc/ssl/certs/ca-certificates.crt"))?)
            .with_no_client_auth(),
        Trust::CaBundle(path) => builder
            .with_root_certificates(roots(path)?)
            .with_no_client_auth(),
        Trust::Fingerprint(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                mode: PinMode::Fixed(normalize_fingerprint(fp)?),
            }))
            .with_no_client_auth(),
        Trust::KnownHosts(path) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                mode: PinMode::Tofu {
                    file: path.clone(),
                    authority: authority.to_owned(),
                    lock: Mutex::new(()),
                },
            }))
            .with_no_client_auth(),
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier { mode: PinMode::Any }))
            .with_no_client_auth(),
    };
    Ok(config)
}

/// A configuration that trusts nothing, for plain-HTTP clients (reqwest needs a TLS
/// configuration even when it will never use one, and cairn installs no process-wide
/// crypto provider).
pub fn trust_nothing() -> Result<ClientConfig, TlsError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth())
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let bundle = |reason: String| TlsError::Bundle {
        path: path.to_owned(),
        reason,
    };
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bundle(e.to_string()))? {
        let cert = cert.map_err(|e| bundle(e.to_string()))?;
        // Odd certificates in a system bundle are skipped, as every TLS client does.
        let _ = store.add(cert);
    }
    if store.is_empty() {
        return Err(bundle("no usable certificates".into()));
    }
    Ok(store)
}

/// Looks up `authority` in a known-hosts file.
pub fn known_host(file: &Path, authority: &str) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()?
        .lines()
        .find_map(|line| {
            let (host, fp) = line.trim().split_once(' ')?;
            (host == authority).then(|| fp.trim().to_owned())
        })
}

#[derive(Debug)]
enum PinMode {
    Fixed(String),
    Tofu {
        file: PathBuf,
        authority: String,
        lock: Mutex<()>,
    },
    Any,
}

/// Verifies the certificate by its fingerprint instead of a chain: BMC certificates are
/// self-signed and often name no usable host, so the pin is the identity.
#[derive(Debug)]
struct PinVerifier {
    mode: PinMode,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let seen = fingerprint(end_entity);
        let mismatch = |want: &str| {
            rustls::Error::General(format!(
                "certificate fingerprint {seen} does not match the pinned {want}"
            ))
        };
        match &self.mode {
            PinMode::Any => Ok(ServerCertVerified::assertion()),
            PinMode::Fixed(want) if *want == seen => Ok(ServerCertVerified::assertion()),
            PinMode::Fixed(want) => Err(mismatch(want)),
            PinMode::Tofu {
                file,
                authority,
                lock,
            } => {
                let _guard = lock.lock().unwrap_or_else(|e| e.into_inner());
                match known_host(file, authority) {
                    Some(want) if want == seen => Ok(ServerCertVerified::assertion()),
                    Some(want) => Err(mismatch(&format!("{want} in {}", file.display()))),
                    None => {
                        let mut f = std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(file)
                            .and_then(|mut f| {
                                writeln!(f, "{authority} {seen}")?;
                                f.flush()
                            });
                        if let Err(e) = f.as_mut() {
                            return Err(rustls::Error::General(format!(
                                "recording {authority} in {}: {e}",
                                file.display()
                            )));
                        }
                        tracing::warn!(%authority, fingerprint = %seen, file = %file.display(),
                            "trusting BMC certificate on first use");
                        Ok(ServerCertVerified::assertion())
                    }
                }
            }
        }
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
            &provider().signature_verification_algorithms,
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
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_normalise() {
        let fp = "AB:".repeat(31) + "AB";
        assert_eq!(normalize_fingerprint(&fp).unwrap(), "ab".repeat(32));
        assert!(normalize_fingerprint("sha256:1234").is_err());
    }

    #[test]
    fn missing_bundle_is_named() {
        let e = client_config(&Trust::CaBundle("/nonexistent/ca.pem".into()), "h:443").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
