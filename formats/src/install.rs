//! The install manifest: what the install agent needs besides the root image, written by
//! `cairn image build` as `pxe/install.json` and `cairn/install.json` on the ISO.
//!
//! Format 2 (what this build writes) lists the SHA-256 of every 4 MiB frame of the root and
//! ESP images ([`FrameDigests`]), so the agent checks each frame before it writes it; format
//! 1 (earlier builds, no `format` field) has one digest per image, checked after the write.

use serde::{Deserialize, Serialize};

use crate::keys::{PublicKey, SigningKey, TrustStore};
use crate::stream::{Digest, FrameDigests, ImageCheck};

/// Manifests with one digest per image (earlier builds; no `format` field).
pub const FORMAT_WHOLE: u32 = 1;
/// Manifests that also list the digest of every frame of the root and ESP images.
pub const FORMAT_FRAMES: u32 = 2;

fn format_whole() -> u32 {
    FORMAT_WHOLE
}

/// What the install agent needs besides the image itself; `pxe/install.json` and
/// `cairn/install.json` on the ISO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallManifest {
    /// [`FORMAT_FRAMES`], or [`FORMAT_WHOLE`] when absent.
    #[serde(default = "format_whole")]
    pub format: u32,
    /// OS version.
    pub version: String,
    /// ESP size in bytes.
    pub esp_size: u64,
    /// Root slot size in bytes.
    pub slot_size: u64,
    /// `root.img` (uncompressed squashfs).
    pub root_image: Digest,
    /// `root.img.zst`.
    pub root_payload: Digest,
    /// The digest of each frame of `root.img` (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_frames: Option<FrameDigests>,
    /// The ESP filesystem image (uncompressed), cut after its last non-zero block: shorter
    /// than `esp_size`, whose rest FAT does not read.
    pub esp_image: Digest,
    /// `esp.img.zst`.
    pub esp_payload: Digest,
    /// The digest of each frame of the ESP image (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub esp_frames: Option<FrameDigests>,
    /// `mbr.bin`: BIOS boot code for the first 440 bytes of the disk.
    pub mbr: Digest,
    /// `core.img`: GRUB's BIOS core, at sector [`crate::gpt::BIOS_CORE_LBA`].
    pub core: Digest,
}

impl InstallManifest {
    /// How the root image is checked: frame by frame in format 2.
    pub fn root_check(&self) -> ImageCheck<'_> {
        check(&self.root_image, self.root_frames.as_ref())
    }

    /// How the ESP image is checked: frame by frame in format 2.
    pub fn esp_check(&self) -> ImageCheck<'_> {
        check(&self.esp_image, self.esp_frames.as_ref())
    }
}

fn check<'a>(image: &'a Digest, frames: Option<&'a FrameDigests>) -> ImageCheck<'a> {
    match frames {
        Some(frames) => ImageCheck::Frames { image, frames },
        None => ImageCheck::Whole(image),
    }
}

/// The detached signature of `install.json`, beside it: 64 raw Ed25519 bytes.
pub const SIGNATURE_FILE: &str = "install.json.sig";

/// Where the install environment keeps the release keys it trusts (the same place as the
/// image's own, so one build step writes both).
pub const RELEASE_KEYS_DIR: &str = "usr/lib/cairn/release-keys";

/// What a signature covers besides the manifest's bytes: a signature made for another
/// purpose (a bundle header, any other message of the release key) is never taken for one
/// of an install manifest.
const SIGNING_CONTEXT: &[u8] = b"cairn install manifest v1\n";

/// Signs the bytes of `install.json` exactly as written.
pub fn sign(manifest_json: &[u8], key: &SigningKey) -> [u8; 64] {
    key.sign(&signed_message(manifest_json))
}

/// Why a manifest was not trusted.
#[derive(Debug, thiserror::Error)]
pub enum ManifestTrustError {
    /// Keys are trusted but the manifest has no signature.
    #[error(
        "install.json is not signed, and this install environment trusts release keys {trusted}: \
         rebuild the image with `cairn image build --signing-key` (a key among its release_keys)"
    )]
    Unsigned {
        /// Fingerprints of the trusted keys.
        trusted: String,
    },
    /// The signature file is not 64 bytes.
    #[error("install.json.sig is {0} bytes, not an Ed25519 signature (64)")]
    Malformed(usize),
    /// No trusted key made the signature.
    #[error(
        "install.json's signature was not made by a trusted release key ({trusted}), or the \
         manifest was changed after signing: refusing to install from this source"
    )]
    Untrusted {
        /// Fingerprints of the trusted keys.
        trusted: String,
    },
    /// The bytes are not a manifest.
    #[error("install.json is invalid: {0}")]
    Parse(#[source] serde_json::Error),
    /// The format number and the fields disagree, or the format is newer than this agent.
    #[error(
        "install.json is of format {format} {why}: this install environment reads formats \
         {FORMAT_WHOLE} and {FORMAT_FRAMES}; boot the install environment of the same build"
    )]
    Format {
        /// The manifest's format.
        format: u32,
        /// What is wrong.
        why: &'static str,
    },
}

/// How a manifest came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Signed by this trusted release key.
    SignedBy(PublicKey),
    /// The install environment trusts no key (a development build): not checked.
    Unchecked,
}

/// Parses `install.json` after checking its signature (`None`: no `install.json.sig`)
/// against `trust`. With no trusted key at all the manifest is taken as it is and
/// [`Trust::Unchecked`] says so; with any, only a valid signature by one of them passes.
pub fn verify(
    manifest_json: &[u8],
    signature: Option<&[u8]>,
    trust: &TrustStore,
) -> Result<(InstallManifest, Trust), ManifestTrustError> {
    let trusted = trust
        .keys()
        .iter()
        .map(PublicKey::fingerprint)
        .collect::<Vec<_>>()
        .join(", ");
    let how = if trust.keys().is_empty() {
        Trust::Unchecked
    } else {
        let signature = signature.ok_or_else(|| ManifestTrustError::Unsigned {
            trusted: trusted.clone(),
        })?;
        let signature: &[u8; 64] = signature
            .try_into()
            .map_err(|_| ManifestTrustError::Malformed(signature.len()))?;
        let signer = trust
            .signer_of(&signed_message(manifest_json), signature)
            .ok_or(ManifestTrustError::Untrusted { trusted })?;
        Trust::SignedBy(signer)
    };
    let manifest: InstallManifest =
        serde_json::from_slice(manifest_json).map_err(ManifestTrustError::Parse)?;
    let frames = [&manifest.root_frames, &manifest.esp_frames].map(Option::is_some);
    let why = match manifest.format {
        FORMAT_WHOLE if frames == [false, false] => None,
        FORMAT_WHOLE => Some("but lists frame digests"),
        FORMAT_FRAMES if frames == [true, true] => None,
        FORMAT_FRAMES => Some("but lacks frame digests"),
        _ => Some("(unknown)"),
    };
    if let Some(why) = why {
        return Err(ManifestTrustError::Format {
            format: manifest.format,
            why,
        });
    }
    Ok((manifest, how))
}

fn signed_message(manifest_json: &[u8]) -> Vec<u8> {
    [SIGNING_CONTEXT, manifest_json].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Vec<u8> {
        let d = Digest {
            size: 1,
            sha256: "00".repeat(32),
        };
        let frames = FrameDigests::from_frames(4 << 20, &[[0u8; 32]]);
        serde_json::to_vec_pretty(&InstallManifest {
            format: FORMAT_FRAMES,
            version: "1.0".into(),
            esp_size: 1 << 20,
            slot_size: 1 << 20,
            root_image: d.clone(),
            root_payload: d.clone(),
            root_frames: Some(frames.clone()),
            esp_image: d.clone(),
            esp_payload: d.clone(),
            esp_frames: Some(frames),
            mbr: d.clone(),
            core: d,
        })
        .unwrap()
    }

    /// What an earlier build wrote: no format, one digest per image.
    fn format_1() -> Vec<u8> {
        let mut json: serde_json::Value = serde_json::from_slice(&manifest()).unwrap();
        let fields = json.as_object_mut().unwrap();
        for field in ["format", "root_frames", "esp_frames"] {
            fields.remove(field);
        }
        serde_json::to_vec_pretty(&json).unwrap()
    }

    #[test]
    fn a_format_1_manifest_still_verifies_and_checks_whole_images() {
        let key = SigningKey::generate().unwrap();
        let trust = TrustStore::new(vec![key.public_key()]);
        let json = format_1();
        let (m, _) = verify(&json, Some(&sign(&json, &key)), &trust).unwrap();
        assert_eq!(m.format, FORMAT_WHOLE);
        assert!(matches!(m.root_check(), ImageCheck::Whole(_)));
        assert!(matches!(m.esp_check(), ImageCheck::Whole(_)));
        let (m, _) = verify(&manifest(), None, &TrustStore::default()).unwrap();
        assert!(matches!(m.root_check(), ImageCheck::Frames { .. }));
        assert!(matches!(m.esp_check(), ImageCheck::Frames { .. }));

        // The format and the fields must agree; a newer format is refused with what to do.
        let mut json: serde_json::Value = serde_json::from_slice(&format_1()).unwrap();
        json["format"] = 2.into();
        let lacking = serde_json::to_vec(&json).unwrap();
        json["format"] = 3.into();
        let newer = serde_json::to_vec(&json).unwrap();
        let with_frames =
            String::from_utf8(manifest())
                .unwrap()
                .replacen("\"format\": 2", "\"format\": 1", 1);
        for (bytes, says) in [
            (lacking, "format 2 but lacks frame digests"),
            (newer, "format 3 (unknown)"),
            (with_frames.into_bytes(), "format 1 but lists frame digests"),
        ] {
            let err = verify(&bytes, None, &TrustStore::default()).unwrap_err();
            assert!(err.to_string().contains(says), "{err}");
        }
    }

    #[test]
    fn only_a_trusted_signature_over_the_exact_bytes_passes() {
        let key = SigningKey::generate().unwrap();
        let other = SigningKey::generate().unwrap();
        let trust = TrustStore::new(vec![key.public_key()]);
        let json = manifest();
        let sig = sign(&json, &key);

        let (m, how) = verify(&json, Some(&sig), &trust).unwrap();
        assert_eq!(m.version, "1.0");
        assert_eq!(how, Trust::SignedBy(key.public_key()));

        // Unsigned, signed by another key, changed after signing, truncated signature.
        assert!(matches!(
            verify(&json, None, &trust),
            Err(ManifestTrustError::Unsigned { .. })
        ));
        assert!(matches!(
            verify(&json, Some(&sign(&json, &other)), &trust),
            Err(ManifestTrustError::Untrusted { .. })
        ));
        let changed = String::from_utf8(json.clone())
            .unwrap()
            .replacen("\"1.0\"", "\"6.6\"", 1);
        assert!(matches!(
            verify(changed.as_bytes(), Some(&sig), &trust),
            Err(ManifestTrustError::Untrusted { .. })
        ));
        assert!(matches!(
            verify(&json, Some(&sig[..63]), &trust),
            Err(ManifestTrustError::Malformed(63))
        ));
        // The release key's signature of the bare bytes (made for anything else) is refused.
        assert!(matches!(
            verify(&json, Some(&key.sign(&json)), &trust),
            Err(ManifestTrustError::Untrusted { .. })
        ));
    }

    #[test]
    fn with_no_trusted_key_the_manifest_is_taken_unchecked() {
        let (_, how) = verify(&manifest(), None, &TrustStore::default()).unwrap();
        assert_eq!(how, Trust::Unchecked);
    }
}
