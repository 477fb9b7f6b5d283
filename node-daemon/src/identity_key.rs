//! Where the appliance's identity key lives: one seam, two homes.
//!
//! [`IdentityKeys`] makes a key and hands back a rustls [`SigningKey`] for it; the CSR
//! ([`csr`]) and mTLS to the hub both sign through that, so neither knows where the key is.
//! [`FileKeys`] keeps a PEM key in the state store; [`TpmKeys`] keeps it in the TPM
//! (`crate::tpm`). Which one is site policy: `tpm.policy: required | preferred | off` in the
//! node configuration ([`open`]).

use std::path::Path;
use std::sync::Arc;

use cairn_api::node_config::TpmPolicy;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PublicKeyData};
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::PemObject;
use rustls::sign::{Signer, SigningKey};

use crate::tpm::{self, TpmError, TpmKeys};

/// Where a TPM is looked for when `tpm.tcti` is not set.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";

/// Failures making or using an identity key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The file key does not parse.
    #[error("the identity key in the state store is not a usable PEM key: {0}")]
    BadPem(String),
    /// The stored key lives in a TPM this node no longer uses.
    #[error(
        "this appliance's identity key is in a TPM, but tpm.policy is off or no TPM was \
         found; set tpm.policy to preferred or required (and tpm.tcti if it is not {DEFAULT_DEVICE})"
    )]
    InTpm,
    /// `tpm.policy: required` and no TPM answered.
    #[error(
        "tpm.policy is required but no TPM answered at {tcti}: {reason}; attach a TPM 2.0 \
         (or set tpm.tcti to the one there is), or set tpm.policy to preferred to fall back \
         to a key file"
    )]
    Required {
        /// Where it looked.
        tcti: String,
        /// Why it failed.
        reason: String,
    },
    /// rcgen could not make the CSR.
    #[error("making the CSR")]
    Csr(#[from] rcgen::Error),
}

/// A home for identity keys.
pub trait IdentityKeys: Send + Sync + std::fmt::Debug {
    /// Makes a new key; returns what the state store keeps of it.
    fn generate(&self) -> Result<String, KeyError>;
    /// The key as rustls signs with it, from what the state store kept.
    fn signing_key(&self, stored: &str) -> Result<Arc<dyn SigningKey>, KeyError>;
    /// `file` or `tpm`, for logs and status.
    fn kind(&self) -> &'static str;
}

/// Keys in PEM files (in the state store): for machines without a TPM.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileKeys;

impl IdentityKeys for FileKeys {
    fn generate(&self) -> Result<String, KeyError> {
        Ok(KeyPair::generate()?.serialize_pem())
    }

    fn signing_key(&self, stored: &str) -> Result<Arc<dyn SigningKey>, KeyError> {
        if stored.starts_with(tpm::STORED_PREFIX) {
            return Err(KeyError::InTpm);
        }
        let der = PrivateKeyDer::from_pem_slice(stored.as_bytes())
            .map_err(|e| KeyError::BadPem(e.to_string()))?;
        rustls::crypto::ring::sign::any_ecdsa_type(&der)
            .map_err(|e| KeyError::BadPem(e.to_string()))
    }

    fn kind(&self) -> &'static str {
        "file"
    }
}

impl IdentityKeys for TpmKeys {
    fn generate(&self) -> Result<String, KeyError> {
        Ok(TpmKeys::generate(self)?)
    }

    fn signing_key(&self, stored: &str) -> Result<Arc<dyn SigningKey>, KeyError> {
        if !stored.starts_with(tpm::STORED_PREFIX) {
            // A key made before the TPM was used: it serves until the next renewal, which
            // makes the new key in the TPM.
            return FileKeys.signing_key(stored);
        }
        Ok(Arc::new(TpmKeys::signing_key(self, stored)?))
    }

    fn kind(&self) -> &'static str {
        "tpm"
    }
}

/// The key home site policy asks for. `tcti` is `tpm.tcti`; unset, the kernel's resource
/// manager when `/dev/tpmrm0` exists.
pub fn open(policy: TpmPolicy, tcti: Option<&str>) -> Result<Arc<dyn IdentityKeys>, KeyError> {
    if policy == TpmPolicy::Off {
        return Ok(Arc::new(FileKeys));
    }
    let tcti = match tcti {
        Some(t) => t.to_owned(),
        None if Path::new(DEFAULT_DEVICE).exists() => format!("device:{DEFAULT_DEVICE}"),
        None if policy == TpmPolicy::Required => {
            return Err(KeyError::Required {
                tcti: format!("device:{DEFAULT_DEVICE}"),
                reason: "the device does not exist".into(),
            });
        }
        None => {
            tracing::info!(
                device = DEFAULT_DEVICE,
                "no TPM; the identity key is kept in a file (tpm.policy: preferred)"
            );
            return Ok(Arc::new(FileKeys));
        }
    };
    match TpmKeys::open(&tcti) {
        Ok(keys) => {
            tracing::info!(%tcti, "identity key in the TPM");
            Ok(Arc::new(keys))
        }
        Err(e) if policy == TpmPolicy::Required => Err(KeyError::Required {
            tcti,
            reason: cairn_api::error_chain(&e),
        }),
        Err(e) => {
            tracing::warn!(%tcti, error = %cairn_api::error_chain(&e), "TPM not usable; the identity key is kept in a file (tpm.policy: preferred)");
            Ok(Arc::new(FileKeys))
        }
    }
}

/// A PKCS#10 request for `common_name`, signed by `key` wherever it lives.
pub fn csr(key: &dyn SigningKey, common_name: &str) -> Result<String, KeyError> {
    let remote = RemoteKey::new(key)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    Ok(params.serialize_request(&remote)?.pem()?)
}

/// A rustls key as rcgen signs with it (ECDSA P-256: both homes make only those).
struct RemoteKey {
    signer: Box<dyn Signer>,
    point: Vec<u8>,
}

impl RemoteKey {
    fn new(key: &dyn SigningKey) -> Result<Self, KeyError> {
        let not_p256 = || KeyError::BadPem("the identity key is not ECDSA P-256".into());
        let signer = key
            .choose_scheme(&[rustls::SignatureScheme::ECDSA_NISTP256_SHA256])
            .ok_or_else(not_p256)?;
        let spki = key.public_key().ok_or_else(not_p256)?;
        // A P-256 SPKI ends with the 65-byte uncompressed point, the BIT STRING's content.
        let point = spki
            .as_ref()
            .get(spki.as_ref().len().saturating_sub(65)..)
            .filter(|p| p.len() == 65 && p[0] == 0x04)
            .ok_or_else(not_p256)?
            .to_vec();
        Ok(Self { signer, point })
    }
}

impl PublicKeyData for RemoteKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for RemoteKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.signer
            .sign(msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_key_signs_a_csr_that_names_its_own_public_key() {
        let stored = FileKeys.generate().unwrap();
        let key = FileKeys.signing_key(&stored).unwrap();
        let pem = csr(key.as_ref(), "edge-1").unwrap();
        let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, req) =
            <x509_parser::certification_request::X509CertificationRequest as x509_parser::prelude::FromDer<_>>::from_der(&block.contents)
                .unwrap();
        let info = &req.certification_request_info;
        let cn = info.subject.iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "edge-1");
        let from_file = KeyPair::from_pem(&stored).unwrap();
        assert_eq!(
            info.subject_pki.subject_public_key.data.as_ref(),
            from_file.public_key_raw()
        );
        assert!(!pem.contains("PRIVATE KEY"));
    }

    #[test]
    fn site_policy_picks_the_key_home_when_no_tpm_answers() {
        // A loopback port nothing listens on: the TPM is absent.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let absent = format!("swtpm:host=127.0.0.1,port={port}");
        for (policy, expected) in [
            (TpmPolicy::Off, Ok("file")),
            (TpmPolicy::Preferred, Ok("file")),
            (TpmPolicy::Required, Err("tpm.policy is required")),
        ] {
            let got = open(policy, Some(&absent)).map(|k| k.kind());
            match (got, expected) {
                (Ok(kind), Ok(want)) => assert_eq!(kind, want, "{policy:?}"),
                (Err(e), Err(want)) => {
                    let text = e.to_string();
                    assert!(text.contains(want) && text.contains(&absent), "{text}");
                }
                (got, _) => panic!("{policy:?}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_tpm_key_without_a_tpm_tells_what_to_set() {
        let e = FileKeys.signing_key("tpm2:00:00").unwrap_err();
        assert!(e.to_string().contains("tpm.policy"), "{e}");
    }
}
