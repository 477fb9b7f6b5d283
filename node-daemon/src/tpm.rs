//! The appliance's identity key inside a TPM 2.0: created there, used there, never outside it.
//!
//! Crate: `tss-esapi` 7.x over Debian's `libtss2-dev` (tpm2-tss 3.2). It is the Parsec
//! project's maintained binding of the TCG's Enhanced System API, the one the TPM vendors and
//! distributions ship and test; its TCTI loader reaches a kernel resource manager
//! (`device:/dev/tpmrm0`) and `swtpm` (`swtpm:host=…,port=…`) through the same string, so the
//! tests drive the code path a real appliance takes. 8.0 is still alpha; pure-Rust TPM stacks
//! lack the resource-manager and session handling that ESAPI gives for free.
//!
//! The key: ECDSA P-256 with SHA-256, a child of an ECC P-256 storage primary under the owner
//! hierarchy. The primary is derived again from the TPM's owner seed on every start (same
//! template, same key), so nothing about it is stored. What the node keeps in its state store
//! is the child's public area and its private area *wrapped by that primary*: only this TPM
//! can load it, so the private key never exists outside the TPM. Each signature loads the key,
//! signs a digest computed here, and flushes it again, so renewals (a fresh key each time)
//! never fill the TPM's few transient slots.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use rustls::SignatureScheme as TlsScheme;
use rustls::pki_types::SubjectPublicKeyInfoDer;
use rustls::sign::{Signer, SigningKey};
use tss_esapi::Context;
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, HashcheckTicket, Private, Public, PublicBuilder,
    PublicEccParametersBuilder, Signature, SignatureScheme, SymmetricDefinitionObject,
};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

/// Prefix of a TPM key's stored form: `tpm2:<public hex>:<wrapped private hex>`.
pub const STORED_PREFIX: &str = "tpm2:";

/// DER of a P-256 SubjectPublicKeyInfo up to the uncompressed point (RFC 5480).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// TPM failures.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The TCTI string does not parse.
    #[error(
        "TPM TCTI {tcti:?} is not valid (e.g. device:/dev/tpmrm0, swtpm:host=127.0.0.1,port=2321)"
    )]
    Tcti {
        /// The string.
        tcti: String,
        /// Why.
        #[source]
        source: tss_esapi::Error,
    },
    /// A TPM command failed.
    #[error("TPM {step} failed")]
    Command {
        /// What the node was doing.
        step: &'static str,
        /// The TPM's or the TSS's answer.
        #[source]
        source: tss_esapi::Error,
    },
    /// The stored key is not in the form [`TpmKeys::generate`] writes.
    #[error("the stored TPM key is damaged ({0}); `cairn-node state reset` and re-register")]
    Stored(&'static str),
}

fn cmd(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> TpmError {
    move |source| TpmError::Command { step, source }
}

/// A connection to the TPM and the storage primary the identity keys live under.
#[derive(Clone)]
pub struct TpmKeys {
    inner: Arc<Mutex<Inner>>,
    tcti: String,
}

struct Inner {
    context: Context,
    primary: KeyHandle,
}

impl fmt::Debug for TpmKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmKeys").field("tcti", &self.tcti).finish()
    }
}

impl TpmKeys {
    /// Opens the TPM at `tcti` and derives the storage primary: fails when there is no TPM.
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).map_err(|source| TpmError::Tcti {
            tcti: tcti.into(),
            source,
        })?;
        let mut context = Context::new(conf).map_err(cmd("connecting"))?;
        let primary = context
            .execute_with_nullauth_session(|ctx| {
                ctx.create_primary(Hierarchy::Owner, storage_primary()?, None, None, None, None)
            })
            .map_err(cmd("creating the storage primary"))?
            .key_handle;
        Ok(Self {
            inner: Arc::new(Mutex::new(Inner { context, primary })),
            tcti: tcti.into(),
        })
    }

    /// The TCTI the TPM was opened with.
    pub fn tcti(&self) -> &str {
        &self.tcti
    }

    /// Creates a new identity key in the TPM; returns its stored form (public area and the
    /// private area wrapped by the storage primary).
    pub fn generate(&self) -> Result<String, TpmError> {
        let mut inner = self.lock();
        let Inner { context, primary } = &mut *inner;
        let primary = *primary;
        let created = context
            .execute_with_nullauth_session(|ctx| {
                ctx.create(primary, signing_key()?, None, None, None, None)
            })
            .map_err(cmd("creating the identity key"))?;
        let public = created
            .out_public
            .marshall()
            .map_err(cmd("encoding the key's public area"))?;
        Ok(format!(
            "{STORED_PREFIX}{}:{}",
            hex::encode(public),
            hex::encode(created.out_private.value())
        ))
    }

    /// The rustls signing key for a stored TPM key.
    pub fn signing_key(&self, stored: &str) -> Result<TpmSigningKey, TpmError> {
        let rest = stored
            .strip_prefix(STORED_PREFIX)
            .ok_or(TpmError::Stored("no tpm2: prefix"))?;
        let (public, private) = rest
            .split_once(':')
            .ok_or(TpmError::Stored("no private part"))?;
        let public = hex::decode(public).map_err(|_| TpmError::Stored("public part not hex"))?;
        let private = hex::decode(private).map_err(|_| TpmError::Stored("private part not hex"))?;
        let public = Public::unmarshall(&public).map_err(cmd("decoding the key's public area"))?;
        let Public::Ecc { unique, .. } = &public else {
            return Err(TpmError::Stored("not an ECC key"));
        };
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.push(0x04);
        spki.extend(left_pad32(unique.x().value()));
        spki.extend(left_pad32(unique.y().value()));
        let private = Private::try_from(private).map_err(cmd("decoding the wrapped key"))?;
        Ok(TpmSigningKey {
            tpm: self.clone(),
            public,
            private,
            spki,
        })
    }

    /// Signs a SHA-256 `digest` with the stored key: loads it, signs, flushes it.
    fn sign_digest(
        &self,
        public: &Public,
        private: &Private,
        digest: &[u8],
    ) -> Result<Vec<u8>, TpmError> {
        let digest = Digest::try_from(digest.to_vec()).map_err(cmd("taking the digest"))?;
        let validation = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(cmd("making the null hash ticket"))?;
        let mut inner = self.lock();
        let Inner { context, primary } = &mut *inner;
        let primary = *primary;
        let signature = context
            .execute_with_nullauth_session(|ctx| {
                let key = ctx.load(primary, private.clone(), public.clone())?;
                let signed = ctx.sign(key, digest, SignatureScheme::Null, validation);
                ctx.flush_context(key.into())?;
                signed
            })
            .map_err(cmd("signing"))?;
        let Signature::EcDsa(sig) = signature else {
            return Err(TpmError::Stored(
                "the key signed with another scheme than ECDSA",
            ));
        };
        Ok(ecdsa_der(
            sig.signature_r().value(),
            sig.signature_s().value(),
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the context usable: each command is whole.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The template of the storage primary (the TCG's "SRK" shape, ECC P-256 for speed).
fn storage_primary() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_restricted(true)
        .with_decrypt(true)
        .with_no_da(true)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::default())
        .build()
}

/// The template of an identity key: P-256, ECDSA with SHA-256 only, bound to this TPM.
fn signing_key() -> tss_esapi::Result<Public> {
    tss_esapi::utils::create_unrestricted_signing_ecc_public(
        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
        EccCurve::NistP256,
    )
}

fn left_pad32(v: &[u8]) -> Vec<u8> {
    let mut out = vec![0; 32usize.saturating_sub(v.len())];
    out.extend_from_slice(v);
    out
}

/// `Ecdsa-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` (RFC 3279), the form both X.509
/// and TLS carry.
fn ecdsa_der(r: &[u8], s: &[u8]) -> Vec<u8> {
    let integer = |v: &[u8]| {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[0u8][..],
        };
        let pad = v[0] & 0x80 != 0;
        let mut out = vec![0x02, (v.len() + usize::from(pad)) as u8];
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
        out
    };
    let body = [integer(r), integer(s)].concat();
    let mut out = vec![0x30, body.len() as u8];
    out.extend(body);
    out
}

/// An identity key held in the TPM, as rustls signs with it.
#[derive(Clone)]
pub struct TpmSigningKey {
    tpm: TpmKeys,
    public: Public,
    private: Private,
    spki: Vec<u8>,
}

impl fmt::Debug for TpmSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TpmSigningKey")
            .field("tcti", &self.tpm.tcti)
            .finish_non_exhaustive()
    }
}

impl SigningKey for TpmSigningKey {
    fn choose_scheme(&self, offered: &[TlsScheme]) -> Option<Box<dyn Signer>> {
        offered
            .contains(&TlsScheme::ECDSA_NISTP256_SHA256)
            .then(|| Box::new(self.clone()) as Box<dyn Signer>)
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.spki.as_slice()))
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ECDSA
    }
}

impl Signer for TpmSigningKey {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        self.tpm
            .sign_digest(&self.public, &self.private, digest.as_ref())
            .map_err(|e| {
                tracing::error!(error = %cairn_api::error_chain(&e), "the TPM did not sign");
                rustls::Error::General(format!("TPM signing: {e}"))
            })
    }

    fn scheme(&self) -> TlsScheme {
        TlsScheme::ECDSA_NISTP256_SHA256
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_signatures_are_der_integers_kept_positive() {
        // r with its high bit set gets a zero byte; s with leading zeros loses them.
        let der = ecdsa_der(&[0x80, 1], &[0, 0, 5]);
        assert_eq!(
            der,
            vec![0x30, 0x08, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x01, 0x05]
        );
    }

    #[test]
    fn coordinates_are_padded_to_32_bytes() {
        // The TPM drops leading zero bytes of X and Y; the SPKI point needs all 32.
        let pad = left_pad32(&[1, 2]);
        assert_eq!(pad.len(), 32);
        assert_eq!(&pad[30..], &[1, 2]);
    }
}
