//! A disk's partition table, read by the install agent and `cairn-node` before writing.
#![no_main]

use libfuzzer_sys::fuzz_target;

const SECTOR: usize = 512;

/// Rewrites the entry-array and header CRCs of the header at `lba`, when it has the GPT
/// signature, so mutations get past the checksums to the fields behind them.
fn fix_crcs(disk: &mut [u8], lba: usize) {
    let at = lba * SECTOR;
    let Some(h) = disk.get(at..at + SECTOR) else {
        return;
    };
    if &h[..8] != b"EFI PART" {
        return;
    }
    let u32_at = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(h[o..o + 8].try_into().unwrap());
    let header_size = (u32_at(12) as usize).clamp(92, SECTOR);
    let entries = usize::try_from(u64_at(72))
        .unwrap_or(usize::MAX)
        .saturating_mul(SECTOR);
    let len = (u32_at(80) as usize).saturating_mul(u32_at(84) as usize);
    if let Some(array) = disk.get(entries..entries.saturating_add(len)) {
        let crc = crc32fast::hash(array);
        disk[at + 88..at + 92].copy_from_slice(&crc.to_le_bytes());
    }
    disk[at + 16..at + 20].fill(0);
    let crc = crc32fast::hash(&disk[at..at + header_size]);
    disk[at + 16..at + 20].copy_from_slice(&crc.to_le_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut disk = data.to_vec();
    // The first byte says whether to fix the checksums, so broken ones stay reachable too.
    if disk.first().is_some_and(|b| b & 1 == 1) {
        fix_crcs(&mut disk, 1);
        let last = (disk.len() / SECTOR).saturating_sub(1);
        fix_crcs(&mut disk, last);
    }
    let _ = cairn_formats::gpt::read(&mut std::io::Cursor::new(disk));
});
