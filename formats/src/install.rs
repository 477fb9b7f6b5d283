//! The install manifest: what the install agent needs besides the root image, written by
//! `cairn image build` as `pxe/install.json` and `cairn/install.json` on the ISO.

use serde::{Deserialize, Serialize};

use crate::stream::Digest;

/// What the install agent needs besides the image itself; `pxe/install.json` and
/// `cairn/install.json` on the ISO.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallManifest {
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
    /// The ESP filesystem image (uncompressed), cut after its last non-zero block: shorter
    /// than `esp_size`, whose rest FAT does not read.
    pub esp_image: Digest,
    /// `esp.img.zst`.
    pub esp_payload: Digest,
    /// `mbr.bin`: BIOS boot code for the first 440 bytes of the disk.
    pub mbr: Digest,
    /// `core.img`: GRUB's BIOS core, at sector [`crate::gpt::BIOS_CORE_LBA`].
    pub core: Digest,
}
