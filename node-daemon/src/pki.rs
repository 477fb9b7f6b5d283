//! The node's certificates: fingerprints, validity, and when to renew. The keys and CSRs are
//! `crate::identity_key`'s.

use std::time::{Duration, SystemTime};

/// PKI failures.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Text that should hold a PEM certificate does not.
    #[error("{what} is not a PEM certificate: {detail}")]
    NotACertificate {
        /// Which certificate.
        what: String,
        /// Why.
        detail: String,
    },
}

/// DER of every certificate in a PEM bundle, in order.
pub fn pem_certificates(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, PkiError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| PkiError::NotACertificate {
            what: what.into(),
            detail: e.to_string(),
        })?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(PkiError::NotACertificate {
            what: what.into(),
            detail: "no CERTIFICATE block".into(),
        });
    }
    Ok(out)
}

/// SHA-256 of a DER certificate, lowercase hex (the form hub fingerprints are compared in).
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der))
}

/// Validity window of the first certificate in a PEM text.
pub fn validity(pem: &str, what: &str) -> Result<(SystemTime, SystemTime), PkiError> {
    let der = pem_certificates(pem, what)?.remove(0);
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).map_err(|e| PkiError::NotACertificate {
            what: what.into(),
            detail: e.to_string(),
        })?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        SystemTime::UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0).unsigned_abs())
    };
    Ok((
        to_system(cert.validity().not_before),
        to_system(cert.validity().not_after),
    ))
}

/// When to renew a certificate valid from `not_before` to `not_after`: once less than a third
/// of its validity is left (the hub's rule, hub/API.md).
pub fn renew_at(not_before: SystemTime, not_after: SystemTime) -> SystemTime {
    let total = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    not_after - total / 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_with_a_third_of_validity_left() {
        let start = SystemTime::UNIX_EPOCH;
        let end = start + Duration::from_secs(24 * 3600);
        assert_eq!(renew_at(start, end), start + Duration::from_secs(16 * 3600));
    }

    #[test]
    fn fingerprint_and_validity_of_a_self_signed_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.test".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let ders = pem_certificates(&cert.pem(), "test").unwrap();
        assert_eq!(ders[0], cert.der().to_vec());
        assert_eq!(fingerprint(&ders[0]).len(), 64);
        let (from, to) = validity(&cert.pem(), "test").unwrap();
        assert!(to > from);
        let err = pem_certificates("garbage", "hub CA").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hub CA is not a PEM certificate"),
            "{err}"
        );
    }
}
