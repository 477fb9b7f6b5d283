//! The hub's certificate authority: creating it, issuing the server certificate, checking
//! appliances' CSRs and signing their short-lived client certificates.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer, pem::PemObject};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;

/// File names inside the data directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA's private key (mode 0600).
pub const CA_KEY: &str = "ca.key";
/// The server certificate (chain: server, CA).
pub const SERVER_CERT: &str = "server.pem";
/// The server's private key (mode 0600).
pub const SERVER_KEY: &str = "server.key";

/// Why a CSR was refused; the API answers `400` with [`CsrError::code`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsrError {
    /// Not PEM, not PKCS#10, or the signature does not verify.
    #[error("the CSR is not a valid PKCS#10 request: {0}")]
    Invalid(String),
    /// An algorithm or size the hub does not accept.
    #[error("the CSR's key is too weak or of an unsupported kind: {0}")]
    WeakKey(String),
    /// The subject CN is not what the request must carry.
    #[error("the CSR's subject CN is {found:?}, expected {expected:?}")]
    SubjectMismatch {
        /// CN in the CSR.
        found: String,
        /// CN required.
        expected: String,
    },
}

impl CsrError {
    /// The API error code.
    pub fn code(&self) -> cairn_api::hub::ErrorCode {
        use cairn_api::hub::ErrorCode;
        match self {
            CsrError::Invalid(_) => ErrorCode::CsrInvalid,
            CsrError::WeakKey(_) => ErrorCode::CsrWeakKey,
            CsrError::SubjectMismatch { .. } => ErrorCode::CsrSubjectMismatch,
        }
    }
}

/// Failures creating or loading the CA.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificate generation or parsing failed.
    #[error("{what}")]
    Cert {
        /// What was being done.
        what: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
}

/// `sha256:` + lowercase hex of the certificate's DER: the fingerprint sites pin.
pub fn fingerprint(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// The CA as loaded by the server.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub cert_pem: String,
    /// The CA certificate, DER.
    pub cert_der: Vec<u8>,
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), PkiError> {
    let mode = if secret { 0o600 } else { 0o644 };
    cairn_formats::fsio::atomic_create(path, contents.as_bytes(), mode).map_err(|source| {
        PkiError::Io {
            path: path.to_owned(),
            source,
        }
    })
}

/// Opens `path` and makes it 0600 on the open file, whatever mode it had (an older hub,
/// a restore from backup or an operator's copy may have left it wider), so a secret is
/// never served from a file others can read.
pub(crate) fn open_secret(path: &Path, create: bool) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(create)
        .create(create)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

/// Reads a secret file after making it 0600 (see [`open_secret`]).
pub(crate) fn read_secret(path: &Path) -> Result<String, PkiError> {
    use std::io::Read;
    let mut out = String::new();
    open_secret(path, false)
        .and_then(|mut f| f.read_to_string(&mut out))
        .map_err(|source| PkiError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(out)
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_owned(),
        source,
    })
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |source| PkiError::Cert {
        what: what.to_owned(),
        source,
    }
}

/// Creates the CA (unless `given` names an existing certificate and key) and a server
/// certificate for `names` (DNS names or IP addresses) in `dir`. Refuses to overwrite.
pub fn init(dir: &Path, names: &[String], given: Option<(&Path, &Path)>) -> Result<Ca, PkiError> {
    let (ca_pem, ca_key_pem) = match given {
        Some((cert, key)) => (read_file(cert)?, read_file(key)?),
        None => {
            let mut params = CertificateParams::default();
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, "cairn hub CA");
            params.distinguished_name = dn;
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let now = OffsetDateTime::now_utc();
            params.not_before = now - Duration::hours(1);
            params.not_after = now + Duration::days(3650);
            let key = KeyPair::generate().map_err(cert_err("generating the CA key"))?;
            let cert = params
                .self_signed(&key)
                .map_err(cert_err("self-signing the CA"))?;
            (cert.pem(), key.serialize_pem())
        }
    };
    write_file(&dir.join(CA_CERT), &ca_pem, false)?;
    write_file(&dir.join(CA_KEY), &ca_key_pem, true)?;
    let ca = Ca::from_pem(&ca_pem, &ca_key_pem)?;

    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(cert_err("server certificate"))?;
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => n
                .clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(cert_err("server name")),
        })
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(825);
    let key = KeyPair::generate().map_err(cert_err("generating the server key"))?;
    let cert = params
        .signed_by(&key, &ca.issuer)
        .map_err(cert_err("signing the server certificate"))?;
    write_file(
        &dir.join(SERVER_CERT),
        &format!("{}{}", cert.pem(), ca.cert_pem),
        false,
    )?;
    write_file(&dir.join(SERVER_KEY), &key.serialize_pem(), true)?;
    Ok(ca)
}

/// An issued client certificate.
#[derive(Debug, Clone)]
pub struct Issued {
    /// PEM.
    pub pem: String,
    /// SHA-256 of the DER, hex: how the hub recognises the appliance's current certificate.
    pub sha256: String,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl Ca {
    /// Loads the CA from the data directory.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        Self::from_pem(
            &read_file(&dir.join(CA_CERT))?,
            &read_secret(&dir.join(CA_KEY))?,
        )
    }

    fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem).map_err(cert_err("reading the CA key"))?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(cert_err("reading the CA certificate"))?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| PkiError::Cert {
                what: "reading the CA certificate".into(),
                source: rcgen::Error::PemError(e.to_string()),
            })?
            .to_vec();
        Ok(Self {
            issuer,
            cert_pem: cert_pem.to_owned(),
            cert_der,
        })
    }

    /// The fingerprint sites pin.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert_der)
    }

    /// Checks a CSR and signs a client certificate for `id` valid for `ttl`. The CSR's own
    /// subject and extensions are ignored beyond the CN check: the hub decides what it signs.
    pub fn sign_client(
        &self,
        csr_pem: &str,
        expected_cn: &str,
        id: &cairn_api::ApplianceId,
        ttl: Duration,
    ) -> Result<Issued, CsrError> {
        let csr = check_csr(csr_pem, expected_cn)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, id.as_str());
        params.distinguished_name = dn;
        params.subject_alt_names =
            vec![SanType::URI(id.uri_san().try_into().map_err(
                |e: rcgen::Error| CsrError::Invalid(e.to_string()),
            )?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        // Backdated a little so an appliance whose clock runs slightly behind accepts it.
        params.not_before = now - Duration::minutes(5);
        params.not_after = now + ttl;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
        Ok(Issued {
            sha256: hex::encode(Sha256::digest(cert.der())),
            pem: cert.pem(),
            not_after: params.not_after,
        })
    }
}

/// SHA-256 (hex) of the public key a CSR carries, its DER SubjectPublicKeyInfo: what a
/// repeated registration is recognised by. `None` for text that is not a CSR (signing it
/// refuses it with the reason).
pub fn csr_key_sha256(csr_pem: &str) -> Option<String> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).ok()?;
    let (_, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .ok()?;
    Some(hex::encode(Sha256::digest(
        parsed.certification_request_info.subject_pki.raw,
    )))
}

/// Parses a CSR, verifies its signature, refuses weak keys and a CN other than `expected_cn`.
pub fn check_csr(
    csr_pem: &str,
    expected_cn: &str,
) -> Result<CertificateSigningRequestParams, CsrError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| CsrError::Invalid(format!("not a PEM CERTIFICATE REQUEST: {e}")))?;
    let (_, parsed) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| CsrError::Invalid(e.to_string()))?;
    let info = &parsed.certification_request_info;
    // The key first: ring cannot verify signatures of keys it deems too weak, and "weak key"
    // is the useful answer for those.
    check_key(&info.subject_pki)?;
    parsed
        .verify_signature()
        .map_err(|_| CsrError::Invalid("the signature does not verify".into()))?;
    let cn = info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_owned();
    if cn != expected_cn {
        return Err(CsrError::SubjectMismatch {
            found: cn,
            expected: expected_cn.to_owned(),
        });
    }
    CertificateSigningRequestParams::from_der(&der).map_err(|e| CsrError::Invalid(e.to_string()))
}

fn check_key(spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    use x509_parser::public_key::PublicKey;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) if rsa.key_size() >= 2048 => Ok(()),
        Ok(PublicKey::RSA(rsa)) => Err(CsrError::WeakKey(format!(
            "RSA {} bits (at least 2048 required)",
            rsa.key_size()
        ))),
        Ok(PublicKey::EC(point)) if point.key_size() >= 256 => Ok(()),
        Ok(PublicKey::EC(point)) => Err(CsrError::WeakKey(format!(
            "EC {} bits (P-256 or larger required)",
            point.key_size()
        ))),
        // Ed25519 parses as Unknown in x509-parser; accept it by its algorithm OID.
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => Ok(()),
        Ok(_) | Err(_) => Err(CsrError::WeakKey(format!(
            "unsupported key algorithm {}",
            spki.algorithm.algorithm
        ))),
    }
}

/// What the hub learns from a client certificate that passed the TLS handshake.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// The CN, when it is a valid appliance ID.
    pub appliance: Option<cairn_api::ApplianceId>,
    /// SHA-256 of the DER, hex.
    pub sha256: String,
}

impl PeerCert {
    /// Reads a certificate the TLS layer already verified against the hub CA.
    pub fn from_der(der: &[u8]) -> Self {
        let appliance = x509_parser::certificate::X509Certificate::from_der(der)
            .ok()
            .and_then(|(_, cert)| {
                let cn = cert
                    .subject()
                    .iter_common_name()
                    .next()?
                    .as_str()
                    .ok()?
                    .to_owned();
                cairn_api::ApplianceId::new(cn).ok()
            });
        Self {
            appliance,
            sha256: hex::encode(Sha256::digest(der)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr(cn: &str, key: &KeyPair) -> String {
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.serialize_request(key).unwrap().pem().unwrap()
    }

    fn ca() -> (tempfile::TempDir, Ca) {
        let dir = tempfile::tempdir().unwrap();
        let ca = init(dir.path(), &["localhost".into(), "127.0.0.1".into()], None).unwrap();
        (dir, ca)
    }

    #[test]
    fn signs_a_client_certificate_with_the_appliance_identity() {
        let (_dir, ca) = ca();
        let key = KeyPair::generate().unwrap();
        let id = cairn_api::ApplianceId::new("ap-1").unwrap();
        let issued = ca
            .sign_client(&csr("edge-1", &key), "edge-1", &id, Duration::hours(24))
            .unwrap();
        let der = CertificateDer::from_pem_slice(issued.pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::certificate::X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.subject()
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "ap-1"
        );
        let san = cert.subject_alternative_name().unwrap().unwrap();
        assert!(format!("{:?}", san.value).contains("cairn://appliance/ap-1"));
        assert_eq!(
            &*cert.public_key().subject_public_key.data,
            key.public_key_raw()
        );
        assert!(
            cert.verify_signature(Some(
                x509_parser::certificate::X509Certificate::from_der(&ca.cert_der)
                    .unwrap()
                    .1
                    .public_key()
            ))
            .is_ok()
        );
        assert_eq!(PeerCert::from_der(&der).appliance, Some(id));
    }

    #[test]
    fn refuses_a_mismatched_subject() {
        let key = KeyPair::generate().unwrap();
        let err = check_csr(&csr("someone-else", &key), "edge-1").unwrap_err();
        assert_eq!(err.code().as_str(), "csr_subject_mismatch");
    }

    #[test]
    fn refuses_a_bad_signature() {
        let key = KeyPair::generate().unwrap();
        let pem = csr("edge-1", &key);
        let mut der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec();
        // Flip a bit in the signature (the last bytes of the DER).
        let last = der.len() - 3;
        der[last] ^= 0x01;
        let pem = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        assert_eq!(
            check_csr(&pem, "edge-1").unwrap_err().code().as_str(),
            "csr_invalid"
        );
    }

    #[test]
    fn refuses_a_weak_rsa_key() {
        // A 1024-bit RSA CSR made with `openssl req -new -newkey rsa:1024 -nodes -subj /CN=edge-1`.
        let pem = include_str!("../tests/fixtures/csr-rsa1024.pem");
        assert_eq!(
            check_csr(pem, "edge-1").unwrap_err().code().as_str(),
            "csr_weak_key"
        );
    }

    #[test]
    fn refuses_garbage() {
        assert_eq!(
            check_csr("hello", "x").unwrap_err().code().as_str(),
            "csr_invalid"
        );
    }
}
