//! Ed25519 keys for update bundles, stored as standard PEM so that `openssl pkey` reads them:
//! the signing key as PKCS#8 (`PRIVATE KEY`), the public key as SubjectPublicKeyInfo
//! (`PUBLIC KEY`). ring does the cryptography (the workspace's one crypto provider).

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

/// The DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410): the 32 key bytes follow it.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing the key file failed.
    #[error("{path}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not the PEM block expected.
    #[error("{path}: not a PEM `{label}` block")]
    NotPem {
        /// The key file.
        path: PathBuf,
        /// The PEM label that was expected.
        label: &'static str,
    },
    /// The PEM block holds something other than an Ed25519 key.
    #[error("{path}: not an Ed25519 key ({reason})")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The system random generator failed.
    #[error("generating a key: the system random generator failed")]
    Random,
    /// Refused to overwrite an existing key.
    #[error("{0} already exists; refusing to overwrite a key")]
    Exists(PathBuf),
}

/// An Ed25519 signing key (the release key of a fleet).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material, even in debug output.
        f.debug_struct("SigningKey")
            .field("public", &self.public_key())
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Creates a fresh key from the system random generator.
    pub fn generate() -> Result<Self, KeyError> {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Random)?;
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|_| KeyError::Random)?;
        Ok(Self {
            pair,
            pkcs8: pkcs8.as_ref().to_vec(),
        })
    }

    /// Reads a PKCS#8 PEM signing key.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let der = read_pem(path, "PRIVATE KEY")?;
        // ring accepts both PKCS#8 v1 (what openssl writes) and v2 (what ring writes).
        let pair =
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| KeyError::BadKey {
                path: path.to_owned(),
                reason: e.to_string(),
            })?;
        Ok(Self { pair, pkcs8: der })
    }

    /// Writes the key as PEM with mode 0600, refusing to overwrite an existing file.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        write_new(path, &pem("PRIVATE KEY", &self.pkcs8), 0o600)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(bytes)
    }

    /// Signs a message.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        let mut sig = [0u8; 64];
        sig.copy_from_slice(self.pair.sign(message).as_ref());
        sig
    }
}

/// An Ed25519 public key that verifies bundles.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Reads a SubjectPublicKeyInfo PEM public key.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        let der = read_pem(path, "PUBLIC KEY")?;
        Self::from_spki(&der).ok_or_else(|| KeyError::BadKey {
            path: path.to_owned(),
            reason: "expected a 44-byte Ed25519 SubjectPublicKeyInfo".into(),
        })
    }

    /// Parses the DER SubjectPublicKeyInfo of an Ed25519 key.
    pub fn from_spki(der: &[u8]) -> Option<Self> {
        let key = der.strip_prefix(&SPKI_PREFIX[..])?;
        Some(Self(key.try_into().ok()?))
    }

    /// Writes the key as PEM (mode 0644), refusing to overwrite an existing file.
    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        write_new(path, &pem("PUBLIC KEY", &der), 0o644)
    }

    /// Short hex identifier: the first 8 bytes of the key's SHA-256.
    pub fn fingerprint(&self) -> String {
        let digest = ring::digest::digest(&ring::digest::SHA256, &self.0);
        hex::encode(&digest.as_ref()[..8])
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verifies(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0)
            .verify(message, signature)
            .is_ok()
    }
}

/// The keys a node (or `cairn image verify`) accepts bundles from.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    keys: Vec<PublicKey>,
}

impl TrustStore {
    /// A store trusting exactly these keys.
    pub fn new(keys: Vec<PublicKey>) -> Self {
        Self { keys }
    }

    /// Every `*.pem` public key in `dir`; a missing directory trusts nothing.
    pub fn read_dir(dir: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: dir.to_owned(),
            source,
        };
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(io(e)),
        };
        let mut paths = Vec::new();
        for entry in entries {
            let path = entry.map_err(io)?.path();
            if path.extension().is_some_and(|e| e == "pem") {
                paths.push(path);
            }
        }
        paths.sort();
        let keys = paths
            .iter()
            .map(|p| PublicKey::read(p))
            .collect::<Result<_, _>>()?;
        Ok(Self { keys })
    }

    /// The trusted keys.
    pub fn keys(&self) -> &[PublicKey] {
        &self.keys
    }

    /// The trusted key that made `signature` over `message`, if any.
    pub fn signer_of(&self, message: &[u8], signature: &[u8; 64]) -> Option<PublicKey> {
        self.keys
            .iter()
            .copied()
            .find(|k| k.verifies(message, signature))
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = B64.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn read_pem(path: &Path, label: &'static str) -> Result<Vec<u8>, KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let not_pem = || KeyError::NotPem {
        path: path.to_owned(),
        label,
    };
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin).ok_or_else(not_pem)? + begin.len();
    let stop = text[start..].find(&end).ok_or_else(not_pem)? + start;
    let body: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    B64.decode(body).map_err(|_| not_pem())
}

fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), KeyError> {
    crate::fsio::atomic_create(path, contents.as_bytes(), mode).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            KeyError::Exists(path.to_owned())
        } else {
            KeyError::Io {
                path: path.to_owned(),
                source,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_pem_and_sign() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        key.write(&dir.path().join("k")).unwrap();
        key.public_key().write(&dir.path().join("k.pub")).unwrap();
        let key2 = SigningKey::read(&dir.path().join("k")).unwrap();
        let public = PublicKey::read(&dir.path().join("k.pub")).unwrap();
        assert_eq!(key2.public_key(), public);
        let sig = key2.sign(b"hello");
        assert!(public.verifies(b"hello", &sig));
        assert!(!public.verifies(b"hellO", &sig));
        // Overwriting a key by accident is refused.
        assert!(matches!(
            key.write(&dir.path().join("k")),
            Err(KeyError::Exists(_))
        ));
        // A public key file is not a private key.
        assert!(matches!(
            SigningKey::read(&dir.path().join("k.pub")),
            Err(KeyError::NotPem { .. })
        ));
    }
}

/// openssl is the reference reader of PEM keys: what it accepts, every tool accepts.
#[cfg(test)]
mod openssl_tests {
    use super::*;

    #[test]
    fn openssl_reads_our_keys_and_verifies_our_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let (k, p) = (dir.path().join("k"), dir.path().join("k.pub"));
        key.write(&k).unwrap();
        key.public_key().write(&p).unwrap();
        std::fs::write(dir.path().join("msg"), b"bundle header").unwrap();
        std::fs::write(dir.path().join("sig"), key.sign(b"bundle header")).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["pkeyutl", "-verify", "-rawin", "-pubin", "-inkey"])
            .arg(&p)
            .arg("-in")
            .arg(dir.path().join("msg"))
            .arg("-sigfile")
            .arg(dir.path().join("sig"))
            .output()
            .expect("openssl is needed for this test: apt-get install openssl");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // And a key that openssl generates (PKCS#8 v1) signs bundles here.
        let ossl = dir.path().join("ossl.pem");
        let status = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(&ossl)
            .status()
            .unwrap();
        assert!(status.success());
        let key = SigningKey::read(&ossl).unwrap();
        assert!(key.public_key().verifies(b"x", &key.sign(b"x")));
    }
}
