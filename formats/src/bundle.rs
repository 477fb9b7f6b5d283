//! Signed update bundles (DESIGN.md "Update bundle").
//!
//! One file, laid out so a node can check the signature before reading the payload and then
//! stream the payload straight into the inactive slot:
//!
//! ```text
//! offset 0   magic "CAIRNBDL"                      8 bytes
//!        8   format version (u32 LE): 1 or 2       4 bytes
//!       12   manifest length M (u32 LE)            4 bytes
//!       16   manifest (JSON, UTF-8)                M bytes
//!    16+M    Ed25519 signature over bytes 0..16+M  64 bytes (zero while unsigned)
//!    80+M    payload: the zstd-compressed root image, to the end of the file
//! ```
//!
//! The manifest carries the payload's size and SHA-256 as well as the uncompressed image's,
//! so the signature covers every byte of the file: a changed header or manifest breaks the
//! signature, a changed or extended payload breaks the payload digest.
//!
//! Format 2 (what this build writes) adds `root_frames` to the manifest: the SHA-256 of each
//! 4 MiB frame of the image and a root digest over the list ([`FrameDigests`]), so a node
//! checks each frame before it writes it to the slot. Format 1 (earlier builds) has none;
//! such bundles are still read, and their image checked by its one SHA-256 as before.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SigningKey, TrustStore};
use crate::stream::{Digest, FrameDigests, ImageCheck, StreamError, write_verified};

const MAGIC: &[u8; 8] = b"CAIRNBDL";
/// Bundles whose manifest has one digest of the image (earlier builds).
const FORMAT_WHOLE: u32 = 1;
/// Bundles whose manifest also lists the digest of every frame of the image.
const FORMAT_FRAMES: u32 = 2;
/// A manifest is a few hundred bytes; anything near this is not a bundle.
const MAX_MANIFEST: u32 = 1 << 20;

/// What a bundle says about itself; signed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The OS version this bundle installs.
    pub version: String,
    /// CPU architecture, e.g. `x86_64`.
    pub architecture: String,
    /// Versions that may upgrade to this one; empty means any.
    pub compatible_from: Vec<String>,
    /// The root filesystem image that fills a slot.
    pub root_image: Digest,
    /// The zstd-compressed root image stored in the bundle.
    pub payload: Digest,
    /// The digest of each frame of the root image (format 2; absent in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_frames: Option<FrameDigests>,
    /// Build time, RFC 3339 (from `SOURCE_DATE_EPOCH` for reproducible builds).
    pub build_time: String,
}

impl Manifest {
    /// Whether a node running `current` may install this bundle.
    pub fn accepts_upgrade_from(&self, current: &str) -> bool {
        self.compatible_from.is_empty() || self.compatible_from.iter().any(|v| v == current)
    }

    /// How the root image is checked: frame by frame when the manifest lists frames.
    pub fn root_check(&self) -> ImageCheck<'_> {
        match &self.root_frames {
            Some(frames) => ImageCheck::Frames {
                image: &self.root_image,
                frames,
            },
            None => ImageCheck::Whole(&self.root_image),
        }
    }
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Reading or writing the bundle failed.
    #[error("{path}")]
    Io {
        /// The bundle file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Not a bundle, or a format this build does not know.
    #[error("not a cairn update bundle: {0}")]
    Format(String),
    /// The manifest is not valid JSON of the expected shape.
    #[error("the bundle manifest is invalid")]
    Manifest(#[source] serde_json::Error),
    /// The bundle carries no signature.
    #[error("the bundle is not signed")]
    Unsigned,
    /// No trusted key made the signature (wrong key, or a changed header or manifest).
    #[error("the bundle's signature was not made by a trusted key (or its manifest was changed)")]
    BadSignature,
    /// The payload does not match the signed manifest.
    #[error("the bundle's payload does not match its signed manifest")]
    Payload(#[source] StreamError),
}

/// The parsed header of a bundle, not yet trusted.
#[derive(Debug, Clone)]
pub struct Header {
    signed_bytes: Vec<u8>,
    signature: [u8; 64],
    manifest: Manifest,
}

/// A header whose signature a trusted key made.
#[derive(Debug, Clone)]
pub struct VerifiedHeader {
    /// The signed manifest.
    pub manifest: Manifest,
    /// The key that signed it.
    pub signer: PublicKey,
}

impl Header {
    /// Reads the header from the start of a bundle, leaving `reader` at the payload.
    pub fn read(reader: &mut impl Read) -> Result<Self, BundleError> {
        let io = |e: std::io::Error| BundleError::Format(format!("reading the header: {e}"));
        let mut fixed = [0u8; 16];
        reader.read_exact(&mut fixed).map_err(io)?;
        if &fixed[..8] != MAGIC {
            return Err(BundleError::Format("bad magic".into()));
        }
        let format = u32::from_le_bytes(fixed[8..12].try_into().expect("4 bytes"));
        if format != FORMAT_WHOLE && format != FORMAT_FRAMES {
            return Err(BundleError::Format(format!(
                "format {format}, this build reads formats {FORMAT_WHOLE} and {FORMAT_FRAMES}: \
                 upgrade this node to a newer release first"
            )));
        }
        let len = u32::from_le_bytes(fixed[12..16].try_into().expect("4 bytes"));
        if len > MAX_MANIFEST {
            return Err(BundleError::Format(format!("manifest of {len} bytes")));
        }
        let mut signed_bytes = fixed.to_vec();
        signed_bytes.resize(16 + len as usize, 0);
        reader.read_exact(&mut signed_bytes[16..]).map_err(io)?;
        let mut signature = [0u8; 64];
        reader.read_exact(&mut signature).map_err(io)?;
        let manifest: Manifest =
            serde_json::from_slice(&signed_bytes[16..]).map_err(BundleError::Manifest)?;
        // The format number is signed with the manifest; it says which check the image gets.
        if manifest.root_frames.is_some() != (format == FORMAT_FRAMES) {
            return Err(BundleError::Format(format!(
                "a format {format} bundle {} frame digests",
                if format == FORMAT_FRAMES {
                    "without"
                } else {
                    "with"
                }
            )));
        }
        Ok(Self {
            signed_bytes,
            signature,
            manifest,
        })
    }

    /// The manifest as stored (untrusted until [`Header::verify`]).
    pub fn unverified_manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Checks the signature against the trust store.
    pub fn verify(&self, trust: &TrustStore) -> Result<VerifiedHeader, BundleError> {
        if self.signature == [0u8; 64] {
            return Err(BundleError::Unsigned);
        }
        let signer = trust
            .signer_of(&self.signed_bytes, &self.signature)
            .ok_or(BundleError::BadSignature)?;
        Ok(VerifiedHeader {
            manifest: self.manifest.clone(),
            signer,
        })
    }

    /// Bytes from the start of the file to the payload.
    fn len(&self) -> u64 {
        self.signed_bytes.len() as u64 + 64
    }
}

impl VerifiedHeader {
    /// Streams the payload (the rest of `reader`, positioned after the header) into `dest`,
    /// decompressing and checking the image against the signed manifest: each frame against
    /// its digest before it is written (format 2), or the whole image's digest at the end
    /// (format 1). That proves what `dest` holds, so the payload is not hashed a second time
    /// on the way ([`verify`] checks the payload's digest too). `dest` holds an untrusted
    /// image unless this returns `Ok`: the caller must not activate it otherwise.
    pub fn write_root_image(
        &self,
        payload: impl Read + Send,
        dest: &mut impl Write,
        limit: u64,
        progress: impl FnMut(u64),
    ) -> Result<Digest, BundleError> {
        write_verified(
            payload,
            dest,
            None,
            self.manifest.root_check(),
            limit,
            progress,
        )
        .map_err(BundleError::Payload)
    }
}

/// Writes an unsigned bundle (format 2, with frame digests) from a root image and its
/// zstd-compressed form.
pub fn create(
    out: &Path,
    version: &str,
    architecture: &str,
    compatible_from: Vec<String>,
    build_time: &str,
    root_image: &Path,
    payload: &Path,
) -> Result<Manifest, BundleError> {
    let io_at = |path: &Path| {
        let path = path.to_owned();
        move |source| BundleError::Io { path, source }
    };
    let (root_digest, root_frames) =
        FrameDigests::of_file(root_image).map_err(io_at(root_image))?;
    let manifest = Manifest {
        version: version.to_owned(),
        architecture: architecture.to_owned(),
        compatible_from,
        root_image: root_digest,
        payload: Digest::of_file(payload).map_err(io_at(payload))?,
        root_frames: Some(root_frames),
        build_time: build_time.to_owned(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(BundleError::Manifest)?;
    let mut file = File::create(out).map_err(io_at(out))?;
    let mut header = MAGIC.to_vec();
    header.extend_from_slice(&FORMAT_FRAMES.to_le_bytes());
    header.extend_from_slice(&(json.len() as u32).to_le_bytes());
    header.extend_from_slice(&json);
    header.extend_from_slice(&[0u8; 64]);
    file.write_all(&header).map_err(io_at(out))?;
    let mut src = File::open(payload).map_err(io_at(payload))?;
    std::io::copy(&mut src, &mut file).map_err(io_at(out))?;
    file.sync_all().map_err(io_at(out))?;
    Ok(manifest)
}

/// Signs a bundle in place (replacing any earlier signature). Checks the payload first, so
/// a key never vouches for a damaged bundle.
pub fn sign(path: &Path, key: &SigningKey) -> Result<Manifest, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io)?;
    let header = Header::read(&mut BufReader::new(&mut file))?;
    file.seek(SeekFrom::Start(header.len())).map_err(io)?;
    check_payload(
        &header.manifest,
        BufReader::with_capacity(1 << 20, &mut file),
    )?;
    let signature = key.sign(&header.signed_bytes);
    file.seek(SeekFrom::Start(header.len() - 64)).map_err(io)?;
    file.write_all(&signature).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(header.manifest)
}

/// Verifies a whole bundle file: signature by a trusted key, then every payload byte.
pub fn verify(path: &Path, trust: &TrustStore) -> Result<VerifiedHeader, BundleError> {
    let io = |source| BundleError::Io {
        path: path.to_owned(),
        source,
    };
    let mut reader = BufReader::with_capacity(1 << 20, File::open(path).map_err(io)?);
    let verified = Header::read(&mut reader)?.verify(trust)?;
    check_payload(&verified.manifest, reader)?;
    Ok(verified)
}

fn check_payload(manifest: &Manifest, payload: impl Read + Send) -> Result<(), BundleError> {
    write_verified(
        payload,
        &mut std::io::sink(),
        Some(&manifest.payload),
        manifest.root_check(),
        u64::MAX,
        |_| {},
    )
    .map(|_| ())
    .map_err(BundleError::Payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
        bundle: PathBuf,
        key: SigningKey,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 253) as u8).collect();
        std::fs::write(dir.path().join("root.img"), &image).unwrap();
        std::fs::write(
            dir.path().join("root.img.zst"),
            zstd::stream::encode_all(&image[..], 3).unwrap(),
        )
        .unwrap();
        let bundle = dir.path().join("update-1.1.0.bundle");
        create(
            &bundle,
            "1.1.0",
            "x86_64",
            vec!["1.0.0".into()],
            "2023-11-14T22:13:20Z",
            &dir.path().join("root.img"),
            &dir.path().join("root.img.zst"),
        )
        .unwrap();
        let key = SigningKey::generate().unwrap();
        Fixture { dir, bundle, key }
    }

    #[test]
    fn a_signed_bundle_verifies_and_streams_its_image() {
        let f = fixture();
        let trust = TrustStore::new(vec![f.key.public_key()]);
        assert!(matches!(
            verify(&f.bundle, &trust),
            Err(BundleError::Unsigned)
        ));
        sign(&f.bundle, &f.key).unwrap();
        let verified = verify(&f.bundle, &trust).unwrap();
        assert_eq!(verified.manifest.version, "1.1.0");
        assert!(verified.manifest.accepts_upgrade_from("1.0.0"));
        assert!(!verified.manifest.accepts_upgrade_from("0.9.0"));

        // The node's path: header, signature, then stream the payload into a slot.
        let mut reader = BufReader::new(File::open(&f.bundle).unwrap());
        let header = Header::read(&mut reader).unwrap().verify(&trust).unwrap();
        let mut slot = Vec::new();
        header
            .write_root_image(reader, &mut slot, u64::MAX, |_| {})
            .unwrap();
        assert_eq!(slot, std::fs::read(f.dir.path().join("root.img")).unwrap());
    }

    #[test]
    fn a_key_outside_the_trust_store_is_refused() {
        let f = fixture();
        sign(&f.bundle, &f.key).unwrap();
        let other = TrustStore::new(vec![SigningKey::generate().unwrap().public_key()]);
        assert!(matches!(
            verify(&f.bundle, &other),
            Err(BundleError::BadSignature)
        ));
    }

    #[test]
    fn flipping_any_single_byte_is_refused() {
        let f = fixture();
        sign(&f.bundle, &f.key).unwrap();
        let trust = TrustStore::new(vec![f.key.public_key()]);
        let original = std::fs::read(&f.bundle).unwrap();
        let tampered = f.dir.path().join("tampered.bundle");
        // Every byte of the header, manifest and signature, and a spread of payload bytes.
        let header_len =
            16 + u32::from_le_bytes(original[12..16].try_into().unwrap()) as usize + 64;
        let positions = (0..header_len).chain((header_len..original.len()).step_by(97));
        for pos in positions.chain([original.len() - 1]) {
            let mut bytes = original.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(&tampered, &bytes).unwrap();
            assert!(
                verify(&tampered, &trust).is_err(),
                "a flipped bit at offset {pos} of {} was accepted",
                original.len()
            );
        }
        // Appended or truncated bytes too.
        let mut longer = original.clone();
        longer.push(0);
        std::fs::write(&tampered, &longer).unwrap();
        assert!(verify(&tampered, &trust).is_err());
        std::fs::write(&tampered, &original[..original.len() - 1]).unwrap();
        assert!(verify(&tampered, &trust).is_err());
    }

    /// Rewrites a bundle as an earlier build wrote it: format 1, no frame digests, unsigned.
    fn as_format_1(bundle: &Path, out: &Path) {
        let bytes = std::fs::read(bundle).unwrap();
        let header = Header::read(&mut &bytes[..]).unwrap();
        let mut manifest = header.manifest.clone();
        manifest.root_frames = None;
        let json = serde_json::to_vec_pretty(&manifest).unwrap();
        let mut old = MAGIC.to_vec();
        old.extend_from_slice(&1u32.to_le_bytes());
        old.extend_from_slice(&(json.len() as u32).to_le_bytes());
        old.extend_from_slice(&json);
        old.extend_from_slice(&[0u8; 64]);
        old.extend_from_slice(&bytes[header.len() as usize..]);
        std::fs::write(out, old).unwrap();
    }

    #[test]
    fn a_format_1_bundle_with_one_image_digest_still_verifies_and_streams() {
        let f = fixture();
        let trust = TrustStore::new(vec![f.key.public_key()]);
        let header = Header::read(&mut File::open(&f.bundle).unwrap()).unwrap();
        let frames = header.manifest.root_frames.as_ref().expect("format 2");
        assert_eq!(frames.frames.len(), 1, "200,000 bytes: one frame");
        let old = f.dir.path().join("old.bundle");
        as_format_1(&f.bundle, &old);
        sign(&old, &f.key).unwrap();
        let verified = verify(&old, &trust).unwrap();
        assert!(verified.manifest.root_frames.is_none());
        assert!(matches!(
            verified.manifest.root_check(),
            ImageCheck::Whole(_)
        ));
        let mut reader = BufReader::new(File::open(&old).unwrap());
        let header = Header::read(&mut reader).unwrap().verify(&trust).unwrap();
        let mut slot = Vec::new();
        header
            .write_root_image(reader, &mut slot, u64::MAX, |_| {})
            .unwrap();
        assert_eq!(slot, std::fs::read(f.dir.path().join("root.img")).unwrap());

        // The (signed) format number and the manifest must agree: frame digests in a
        // format 1 bundle, or none in a format 2 one, are refused.
        for (from, to) in [(&f.bundle, 1u32), (&old, 2u32)] {
            let mut bytes = std::fs::read(from).unwrap();
            bytes[8..12].copy_from_slice(&to.to_le_bytes());
            let err = Header::read(&mut &bytes[..]).unwrap_err();
            assert!(matches!(err, BundleError::Format(_)), "{err}");
        }
    }
}
