//! The appliance disk layout, a GPT writer and a GPT reader (UEFI 2.10, section 5).
//!
//! Hand-written because the install environment has no GPT partitioner (busybox has none)
//! and because the image build must be bit-for-bit reproducible: partition GUIDs here are
//! derived from a seed instead of drawn at random. `sgdisk --verify` checks the output in
//! the tests. Both the image build (`disk.raw`) and the install agent (a real disk) write
//! it; the node reads it ([`read`]) to find its slots.
//!
//! The reader trusts nothing on the disk: every header field is bounded by the disk's size
//! before it is used, both CRCs are checked, and a damaged primary header or entry array
//! falls back to the backup at the disk's last sector, as firmware does.

use std::io::{Read, Seek, SeekFrom};

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
/// Bytes of boot code at the start of the protective MBR: it ends where the MBR's disk
/// signature starts, and the partition table follows.
pub const MBR_CODE_LEN: usize = 0x1b8;
/// The protective MBR's boot code until the real one is installed: `int 0x18`, the BIOS
/// call for "this disk does not boot, try the next boot device", then `hlt` in a loop for a
/// firmware that returns from it. A BIOS runs the code of any MBR ending in 0x55AA, which
/// a protective MBR must; with zeros there it would run whatever follows in memory and hang,
/// instead of falling through to PXE and the install environment.
pub const NO_BOOT_CODE: [u8; 5] = [0xcd, 0x18, 0xf4, 0xeb, 0xfd];

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

/// A GPT header field that must stay within the disk, for [`HeaderError::OutOfRange`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `HeaderSize`.
    HeaderSize,
    /// `MyLBA`: not where the header was read.
    MyLba,
    /// `AlternateLBA`.
    AlternateLba,
    /// `FirstUsableLBA`..`LastUsableLBA`.
    UsableRange,
    /// `SizeOfPartitionEntry`.
    EntrySize,
    /// `NumberOfPartitionEntries` (times the entry size).
    EntryCount,
    /// `PartitionEntryLBA` (with the array's length).
    EntriesLba,
}

/// Why one GPT header (primary or backup) and its entry array were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// No `EFI PART` signature.
    #[error("no GPT signature")]
    Signature,
    /// The header's CRC32 does not match its bytes.
    #[error("header CRC32 is {stored:#010x}, its bytes give {computed:#010x}")]
    HeaderCrc {
        /// Stored in the header.
        stored: u32,
        /// Computed over the header.
        computed: u32,
    },
    /// A field points outside the disk, overflows, or is not a size the format allows.
    #[error("{field:?} {value} is out of range for this disk")]
    OutOfRange {
        /// Which field.
        field: Field,
        /// Its value.
        value: u64,
    },
    /// The entry array's CRC32 does not match its bytes.
    #[error("partition entry array CRC32 is {stored:#010x}, its bytes give {computed:#010x}")]
    EntriesCrc {
        /// Stored in the header.
        stored: u32,
        /// Computed over the array.
        computed: u32,
    },
    /// A partition lies outside the header's usable range, or ends before it starts.
    #[error("partition {index} spans LBA {first}..={last}, outside the usable LBA range")]
    Partition {
        /// 1-based entry number.
        index: usize,
        /// Its first LBA.
        first: u64,
        /// Its last LBA.
        last: u64,
    },
}

/// Why a disk's partition table could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// Reading the disk failed.
    #[error("reading the partition table")]
    Io(#[source] std::io::Error),
    /// The disk is too small to hold a GPT at all.
    #[error("a disk of {0} bytes cannot hold a GPT")]
    Truncated(u64),
    /// Neither header (with its entry array) is valid.
    #[error("no valid GPT: primary: {primary}; backup: {backup}")]
    Invalid {
        /// What is wrong with the primary header at LBA 1.
        primary: HeaderError,
        /// What is wrong with the backup header at the last LBA.
        backup: HeaderError,
    },
}

/// Which copy of the table was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderCopy {
    /// The primary header at LBA 1.
    Primary,
    /// The backup header at the last LBA (the primary was damaged).
    Backup,
}

/// One used partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Partition name (PARTLABEL).
    pub name: String,
    /// Partition type GUID, in text form.
    pub type_guid: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
}

impl Entry {
    /// First byte on the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    /// Length in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
}

/// A partition table as read from a disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// The copy the entries come from.
    pub copy: HeaderCopy,
    /// The used entries, in table order (unused entries skipped).
    pub partitions: Vec<Entry>,
}

impl Table {
    /// The partition named `name`.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.partitions.iter().find(|p| p.name == name)
    }
}

/// The most bytes of partition entries read: 32 times the usual 16 KiB array, far beyond
/// any table cairn or a partitioner writes, so a corrupt count cannot allocate gigabytes.
const MAX_ENTRIES_BYTES: u64 = 512 << 10;

/// Reads the GPT of `disk` (512-byte sectors), the backup when the primary is damaged.
pub fn read(disk: &mut (impl Read + Seek)) -> Result<Table, GptError> {
    let size = disk.seek(SeekFrom::End(0)).map_err(GptError::Io)?;
    // The smallest table: MBR, header and entries at the start, entries and header at the end.
    if size < (2 * (ENTRY_SECTORS + 1) + 1) * SECTOR {
        return Err(GptError::Truncated(size));
    }
    let last_lba = size / SECTOR - 1;
    let primary = match read_copy(disk, 1, last_lba)? {
        Ok(partitions) => {
            return Ok(Table {
                copy: HeaderCopy::Primary,
                partitions,
            });
        }
        Err(e) => e,
    };
    match read_copy(disk, last_lba, last_lba)? {
        Ok(partitions) => Ok(Table {
            copy: HeaderCopy::Backup,
            partitions,
        }),
        Err(backup) => Err(GptError::Invalid { primary, backup }),
    }
}

fn read_at(disk: &mut (impl Read + Seek), offset: u64, buf: &mut [u8]) -> Result<(), GptError> {
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.read_exact(buf))
        .map_err(GptError::Io)
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// The header at `lba` and its entries: an I/O error stops the read, a damaged copy is
/// reported inside so the caller can try the other one.
fn read_copy(
    disk: &mut (impl Read + Seek),
    lba: u64,
    last_lba: u64,
) -> Result<Result<Vec<Entry>, HeaderError>, GptError> {
    let mut header = [0u8; SECTOR as usize];
    read_at(disk, lba * SECTOR, &mut header)?;
    let (entries_lba, count, entry_size, usable) = match check_header(&header, lba, last_lba) {
        Ok(h) => h,
        Err(e) => return Ok(Err(e)),
    };
    // Bounded by check_header to MAX_ENTRIES_BYTES.
    let mut entries = vec![0u8; (count * entry_size) as usize];
    read_at(disk, entries_lba * SECTOR, &mut entries)?;
    let stored = u32_at(&header, 88);
    let computed = crc32fast::hash(&entries);
    if stored != computed {
        return Ok(Err(HeaderError::EntriesCrc { stored, computed }));
    }
    Ok(parse_entries(&entries, entry_size as usize, usable))
}

/// Checks a header read at `lba`; returns the entry array's LBA, entry count and size, and
/// the usable LBA range.
fn check_header(
    h: &[u8; SECTOR as usize],
    lba: u64,
    last_lba: u64,
) -> Result<(u64, u64, u64, (u64, u64)), HeaderError> {
    let out = |field, value| HeaderError::OutOfRange { field, value };
    if &h[0..8] != b"EFI PART" {
        return Err(HeaderError::Signature);
    }
    let header_size = u64::from(u32_at(h, 12));
    if !(92..=SECTOR).contains(&header_size) {
        return Err(out(Field::HeaderSize, header_size));
    }
    let mut zeroed = h[..header_size as usize].to_vec();
    zeroed[16..20].fill(0);
    let (stored, computed) = (u32_at(h, 16), crc32fast::hash(&zeroed));
    if stored != computed {
        return Err(HeaderError::HeaderCrc { stored, computed });
    }
    let my_lba = u64_at(h, 24);
    if my_lba != lba {
        return Err(out(Field::MyLba, my_lba));
    }
    let alternate = u64_at(h, 32);
    if alternate == 0 || alternate > last_lba || alternate == lba {
        return Err(out(Field::AlternateLba, alternate));
    }
    let (first_usable, last_usable) = (u64_at(h, 40), u64_at(h, 48));
    if first_usable < 2 || first_usable > last_usable || last_usable >= last_lba {
        return Err(out(Field::UsableRange, last_usable));
    }
    let entry_size = u64::from(u32_at(h, 84));
    // 128 times a power of two (UEFI 2.10, 5.3.2), and no larger than a sector here.
    if entry_size < 128 || !entry_size.is_power_of_two() || entry_size > SECTOR {
        return Err(out(Field::EntrySize, entry_size));
    }
    let count = u64::from(u32_at(h, 80));
    let bytes = count * entry_size;
    if bytes > MAX_ENTRIES_BYTES {
        return Err(out(Field::EntryCount, count));
    }
    let entries_lba = u64_at(h, 72);
    let sectors = bytes.div_ceil(SECTOR);
    // The array sits between the header and the usable range (primary) or between the usable
    // range and the header (backup); never over the MBR or past the disk.
    let fits = entries_lba >= 2
        && entries_lba
            .checked_add(sectors)
            .is_some_and(|end| end <= last_lba + 1);
    let outside_usable = entries_lba
        .checked_add(sectors)
        .is_some_and(|end| end <= first_usable)
        || entries_lba > last_usable;
    if !fits || !outside_usable {
        return Err(out(Field::EntriesLba, entries_lba));
    }
    Ok((entries_lba, count, entry_size, (first_usable, last_usable)))
}

fn parse_entries(
    entries: &[u8],
    entry_size: usize,
    (first_usable, last_usable): (u64, u64),
) -> Result<Vec<Entry>, HeaderError> {
    let mut partitions = Vec::new();
    for (i, e) in entries.chunks_exact(entry_size).enumerate() {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let (first, last) = (u64_at(e, 32), u64_at(e, 40));
        if first < first_usable || first > last || last > last_usable {
            return Err(HeaderError::Partition {
                index: i + 1,
                first,
                last,
            });
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|u| *u != 0)
            .collect();
        let mut type_guid: [u8; 16] = e[0..16].try_into().expect("16 bytes");
        // The disk order is mixed-endian; the swap is its own inverse.
        type_guid = guid_disk_bytes(&type_guid);
        partitions.push(Entry {
            name: String::from_utf16_lossy(&units),
            type_guid: guid_text(&type_guid),
            first_lba: first,
            last_lba: last,
        });
    }
    Ok(partitions)
}

/// An MBR with one partition of type 0xEE covering the disk, so MBR-only tools see the
/// disk as in use. Its boot code is [`NO_BOOT_CODE`]: the disk is not BIOS-bootable until
/// real boot code is installed.
fn protective_mbr(last_lba: u64) -> [u8; 512] {
    let mut mbr = [0u8; 512];
    mbr[..NO_BOOT_CODE.len()].copy_from_slice(&NO_BOOT_CODE);
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

    /// A 4 MiB disk with two partitions, small enough to copy per test.
    fn small_disk() -> (Layout, Vec<u8>) {
        let part = |name, offset| Partition {
            name,
            type_guid: TYPE_ROOT_X86_64,
            offset,
            size: ALIGN,
        };
        let layout = Layout {
            disk_size: 4 * ALIGN,
            partitions: vec![part("root-a", ALIGN), part("root-b", 2 * ALIGN)],
        };
        let gpt = build(&layout, &guid_from_seed(b"read"));
        let mut disk = vec![0u8; layout.disk_size as usize];
        disk[..gpt.primary.len()].copy_from_slice(&gpt.primary);
        disk[gpt.backup_offset as usize..].copy_from_slice(&gpt.backup);
        (layout, disk)
    }

    fn read_bytes(disk: &[u8]) -> Result<Table, GptError> {
        read(&mut std::io::Cursor::new(disk))
    }

    const PRIMARY: usize = SECTOR as usize;

    fn backup_header(disk: &[u8]) -> usize {
        disk.len() - SECTOR as usize
    }

    /// Changes the primary header with `edit`, then makes its CRC right again, so only the
    /// edited field can be what the reader refuses.
    fn patch_primary(disk: &mut [u8], edit: impl Fn(&mut [u8])) {
        let h = &mut disk[PRIMARY..PRIMARY + 92];
        edit(h);
        h[16..20].fill(0);
        let crc = crc32fast::hash(h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
    }

    fn primary_error(disk: &[u8]) -> HeaderError {
        match read_bytes(disk) {
            Err(GptError::Invalid { primary, .. }) => primary,
            other => panic!("expected both copies refused, got {other:?}"),
        }
    }

    #[test]
    fn a_written_table_reads_back() {
        let (layout, disk) = small_disk();
        let table = read_bytes(&disk).unwrap();
        assert_eq!(table.copy, HeaderCopy::Primary);
        let read: Vec<_> = table
            .partitions
            .iter()
            .map(|p| (p.name.as_str(), p.offset(), p.size(), p.type_guid.as_str()))
            .collect();
        let written: Vec<_> = layout
            .partitions
            .iter()
            .map(|p| (p.name, p.offset, p.size, p.type_guid))
            .collect();
        assert_eq!(read, written);
        assert_eq!(table.get("root-b").unwrap().first_lba, 2 * ALIGN / SECTOR);
        assert!(table.get("data").is_none());
    }

    #[test]
    fn a_corrupt_primary_header_falls_back_to_the_backup() {
        let (_, mut disk) = small_disk();
        let good = read_bytes(&disk).unwrap().partitions;
        disk[PRIMARY + 60] ^= 1;
        let table = read_bytes(&disk).unwrap();
        assert_eq!(table.copy, HeaderCopy::Backup);
        assert_eq!(table.partitions, good);
    }

    #[test]
    fn a_corrupt_primary_entry_array_falls_back_to_the_backup() {
        let (_, mut disk) = small_disk();
        disk[2 * PRIMARY + 40] ^= 1;
        assert_eq!(read_bytes(&disk).unwrap().copy, HeaderCopy::Backup);
        // With the backup's array damaged too, both CRC failures are reported.
        let backup_entries = backup_header(&disk) - (ENTRY_SECTORS * SECTOR) as usize;
        disk[backup_entries + 40] ^= 1;
        let Err(GptError::Invalid { primary, backup }) = read_bytes(&disk) else {
            panic!("damaged arrays accepted");
        };
        assert!(
            matches!(primary, HeaderError::EntriesCrc { .. }),
            "{primary}"
        );
        assert!(matches!(backup, HeaderError::EntriesCrc { .. }), "{backup}");
    }

    #[test]
    fn both_headers_corrupt_are_refused_with_both_reasons() {
        let (_, mut disk) = small_disk();
        disk[PRIMARY + 60] ^= 1;
        let backup = backup_header(&disk);
        disk[backup + 60] ^= 1;
        let err = read_bytes(&disk).unwrap_err();
        let GptError::Invalid { primary, backup } = &err else {
            panic!("{err}");
        };
        assert!(matches!(primary, HeaderError::HeaderCrc { .. }), "{err}");
        assert!(matches!(backup, HeaderError::HeaderCrc { .. }), "{err}");
        assert!(err.to_string().contains("primary: header CRC32"), "{err}");
    }

    #[test]
    fn header_fields_that_overflow_or_leave_the_disk_are_refused() {
        let (_, disk) = small_disk();
        let (u32_max, u64_max) = (u64::from(u32::MAX), u64::MAX);
        // (header offset, field width, value written, the field refused)
        let cases = [
            (12, 4, u32_max, Field::HeaderSize),
            (80, 4, u32_max, Field::EntryCount),
            (84, 4, 0x8000_0000, Field::EntrySize),
            (72, 8, u64_max - 1, Field::EntriesLba),
            // Entries overlapping the usable range.
            (72, 8, 40, Field::EntriesLba),
            (48, 8, u64_max, Field::UsableRange),
            (32, 8, u64_max, Field::AlternateLba),
            (24, 8, 7, Field::MyLba),
        ];
        for (offset, width, value, field) in cases {
            let mut bad = disk.clone();
            patch_primary(&mut bad, |h| {
                h[offset..offset + width].copy_from_slice(&value.to_le_bytes()[..width]);
            });
            // The backup still holds: the reader falls back to it.
            assert_eq!(
                read_bytes(&bad).unwrap().copy,
                HeaderCopy::Backup,
                "{field:?}"
            );
            let backup = backup_header(&bad);
            bad[backup..].fill(0);
            let err = primary_error(&bad);
            assert!(
                matches!(err, HeaderError::OutOfRange { field: f, .. } if f == field),
                "{field:?}: {err}"
            );
        }
    }

    #[test]
    fn a_partition_past_the_usable_range_is_refused() {
        let (_, mut disk) = small_disk();
        let entries = 2 * PRIMARY;
        disk[entries + 40..entries + 48].copy_from_slice(&u64::MAX.to_le_bytes());
        let crc = crc32fast::hash(&disk[entries..entries + (ENTRIES * ENTRY_SIZE) as usize]);
        patch_primary(&mut disk, |h| h[88..92].copy_from_slice(&crc.to_le_bytes()));
        let backup = backup_header(&disk);
        disk[backup..].fill(0);
        assert!(matches!(
            primary_error(&disk),
            HeaderError::Partition { index: 1, .. }
        ));
    }

    #[test]
    fn a_truncated_disk_is_refused() {
        let (_, disk) = small_disk();
        assert!(matches!(
            read_bytes(&disk[..10 * PRIMARY]),
            Err(GptError::Truncated(5120))
        ));
        // Cut in half: the primary points past the end, and the backup is gone.
        let Err(GptError::Invalid { primary, backup }) = read_bytes(&disk[..disk.len() / 2]) else {
            panic!("a truncated disk was accepted");
        };
        assert!(
            matches!(primary, HeaderError::OutOfRange { .. }),
            "{primary}"
        );
        assert_eq!(backup, HeaderError::Signature);
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
