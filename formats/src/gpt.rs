//! The appliance disk layout and a GPT writer (UEFI 2.10, section 5).
//!
//! Hand-written because the install environment has no GPT partitioner (busybox has none)
//! and because the image build must be bit-for-bit reproducible: partition GUIDs here are
//! derived from a seed instead of drawn at random. `sgdisk --verify` checks the output in
//! the tests. Both the image build (`disk.raw`) and the install agent (a real disk) use it.

use ring::digest::{SHA256, digest};

/// Bytes per logical sector; the images and the virtual disks here use 512.
pub const SECTOR: u64 = 512;
/// Partitions start on 1 MiB boundaries.
pub const ALIGN: u64 = 1 << 20;
/// Sector where the BIOS boot code (GRUB's core.img) lives, in the gap between the GPT
/// entries (sectors 2-33) and the first partition (sector 2048).
pub const BIOS_CORE_LBA: u64 = 64;
/// Largest core.img that fits before the first partition.
pub const BIOS_CORE_MAX: u64 = (ALIGN / SECTOR - BIOS_CORE_LBA) * SECTOR;

const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// EFI system partition.
pub const TYPE_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Root partition (x86-64), from the Discoverable Partitions Specification.
pub const TYPE_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";
/// Linux filesystem data.
pub const TYPE_LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// One partition of a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// GPT partition name (PARTLABEL): `esp`, `root-a`, `root-b`, `data`.
    pub name: &'static str,
    /// Partition type GUID.
    pub type_guid: &'static str,
    /// First byte.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// The appliance layout: ESP, two root slots, data filling the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Whole disk size in bytes.
    pub disk_size: u64,
    /// The partitions in table order (1-based numbers follow this order).
    pub partitions: Vec<Partition>,
}

/// Why a layout does not fit.
#[derive(Debug, thiserror::Error)]
#[error("a disk of {disk_size} bytes is too small: the layout needs at least {needed} bytes")]
pub struct TooSmall {
    /// The disk's size.
    pub disk_size: u64,
    /// The minimum size.
    pub needed: u64,
}

/// Smallest data partition a layout accepts.
pub const MIN_DATA: u64 = 64 << 20;

impl Layout {
    /// Lays out a disk of `disk_size` bytes with an ESP of `esp` bytes and two root slots
    /// of `slot` bytes each (both rounded up to MiB); `data` takes what is left.
    pub fn new(disk_size: u64, esp: u64, slot: u64) -> Result<Self, TooSmall> {
        let (esp, slot) = (esp.next_multiple_of(ALIGN), slot.next_multiple_of(ALIGN));
        // The backup GPT needs the last 33 sectors: keep the final MiB free.
        let needed = ALIGN + esp + 2 * slot + MIN_DATA + ALIGN;
        if disk_size < needed {
            return Err(TooSmall { disk_size, needed });
        }
        let data_end = (disk_size - (ENTRY_SECTORS + 1) * SECTOR) / ALIGN * ALIGN;
        let mut offset = ALIGN;
        let mut part = |name, type_guid, size| {
            let p = Partition {
                name,
                type_guid,
                offset,
                size,
            };
            offset += size;
            p
        };
        let mut partitions = vec![
            part("esp", TYPE_ESP, esp),
            part("root-a", TYPE_ROOT_X86_64, slot),
            part("root-b", TYPE_ROOT_X86_64, slot),
        ];
        let data_start = partitions[2].offset + slot;
        partitions.push(part("data", TYPE_LINUX_DATA, data_end - data_start));
        Ok(Self {
            disk_size,
            partitions,
        })
    }

    /// The partition with this name.
    pub fn get(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// The 1-based partition number of `name` (as the kernel and GRUB count).
    pub fn number(&self, name: &str) -> Option<usize> {
        self.partitions
            .iter()
            .position(|p| p.name == name)
            .map(|i| i + 1)
    }
}

/// The bytes of a GPT: the protective MBR plus primary header and entries (written at
/// offset 0, `primary.len()` bytes), and the backup entries plus header (written at
/// `backup_offset`).
#[derive(Debug, Clone)]
pub struct GptBytes {
    /// Sectors 0..34.
    pub primary: Vec<u8>,
    /// The last 33 sectors of the disk.
    pub backup: Vec<u8>,
    /// Where `backup` goes.
    pub backup_offset: u64,
}

/// A GUID derived from a seed (version 4 and variant bits set), so a build is reproducible.
pub fn guid_from_seed(seed: &[u8]) -> [u8; 16] {
    let hash = digest(&SHA256, seed);
    let mut g = [0u8; 16];
    g.copy_from_slice(&hash.as_ref()[..16]);
    g[6] = (g[6] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// A GUID in its textual form, `xxxxxxxx-xxxx-...`, from the RFC 4122 byte order.
pub fn guid_text(g: &[u8; 16]) -> String {
    let h = hex::encode_upper(g);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The on-disk (mixed-endian) bytes of a GUID given in text form.
fn guid_disk_bytes_from_text(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut g = [0u8; 16];
    hex::decode_to_slice(hex, &mut g).expect("constant GUID");
    guid_disk_bytes(&g)
}

/// GPT stores the first three GUID fields little-endian.
fn guid_disk_bytes(g: &[u8; 16]) -> [u8; 16] {
    let mut d = *g;
    d[0..4].reverse();
    d[4..6].reverse();
    d[6..8].reverse();
    d
}

/// Builds the GPT of `layout`. Partition GUIDs derive from `disk_guid`.
pub fn build(layout: &Layout, disk_guid: &[u8; 16]) -> GptBytes {
    let last_lba = layout.disk_size / SECTOR - 1;
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    for (i, p) in layout.partitions.iter().enumerate() {
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&guid_disk_bytes_from_text(p.type_guid));
        let mut seed = disk_guid.to_vec();
        seed.extend_from_slice(p.name.as_bytes());
        e[16..32].copy_from_slice(&guid_disk_bytes(&guid_from_seed(&seed)));
        e[32..40].copy_from_slice(&(p.offset / SECTOR).to_le_bytes());
        e[40..48].copy_from_slice(&((p.offset + p.size) / SECTOR - 1).to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |my_lba: u64, alt_lba: u64, entries_lba: u64| {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alt_lba.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&(last_lba - ENTRY_SECTORS - 1).to_le_bytes());
        h[56..72].copy_from_slice(&guid_disk_bytes(disk_guid));
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let mut primary = protective_mbr(last_lba).to_vec();
    primary.extend(header(1, last_lba, 2));
    primary.extend_from_slice(&entries);
    let backup_entries_lba = last_lba - ENTRY_SECTORS;
    let mut backup = entries;
    backup.extend(header(last_lba, 1, backup_entries_lba));
    GptBytes {
        primary,
        backup,
        backup_offset: backup_entries_lba * SECTOR,
    }
}

/// An MBR with one partition of type 0xEE covering the disk, so MBR-only tools see the
/// disk as in use. The first 440 bytes (boot code) stay zero: the disk is not BIOS-bootable
/// until boot code is installed.
fn protective_mbr(last_lba: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    let p = &mut mbr[446..462];
    p[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    p[4] = 0xee;
    p[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    p[8..12].copy_from_slice(&1u32.to_le_bytes());
    p[12..16].copy_from_slice(&(u32::try_from(last_lba).unwrap_or(u32::MAX)).to_le_bytes());
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    mbr
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    #[test]
    fn the_layout_fills_the_disk_and_refuses_a_small_one() {
        let l = Layout::new(2 << 30, 32 << 20, 256 << 20).unwrap();
        let names: Vec<_> = l.partitions.iter().map(|p| p.name).collect();
        assert_eq!(names, ["esp", "root-a", "root-b", "data"]);
        assert_eq!(l.get("esp").unwrap().offset, 1 << 20);
        let data = l.get("data").unwrap();
        assert_eq!(data.offset, (1 + 32 + 512) << 20);
        assert!(data.offset + data.size <= (2 << 30) - 33 * 512);
        assert_eq!(l.number("root-b"), Some(3));
        assert!(Layout::new(300 << 20, 32 << 20, 128 << 20).is_err());
    }

    /// sgdisk is the reference: it must find the table valid and read back our partitions.
    #[test]
    fn sgdisk_verifies_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        let layout = Layout::new(1 << 30, 32 << 20, 128 << 20).unwrap();
        let gpt = build(&layout, &guid_from_seed(b"test"));
        let mut f = std::fs::File::create(&path).unwrap();
        f.set_len(layout.disk_size).unwrap();
        f.write_all(&gpt.primary).unwrap();
        f.seek(SeekFrom::Start(gpt.backup_offset)).unwrap();
        f.write_all(&gpt.backup).unwrap();
        drop(f);
        let run = |args: &[&str]| {
            let out = std::process::Command::new("sgdisk")
                .args(args)
                .arg(&path)
                .output()
                .expect("sgdisk is needed for this test: apt-get install gdisk");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(out.status.success(), "sgdisk {args:?}: {text}");
            text
        };
        let verify = run(&["--verify"]);
        assert!(verify.contains("No problems found"), "{verify}");
        let print = run(&["--print"]);
        for name in ["esp", "root-a", "root-b", "data"] {
            assert!(print.contains(name), "{print}");
        }
        let info = run(&["--info=2"]);
        assert!(info.contains(TYPE_ROOT_X86_64), "{info}");
        assert!(info.contains("First sector: 67584 "), "{info}");
    }
}
