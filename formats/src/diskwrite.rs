//! Writing a decoded image onto a disk, a partition or a file as fast as the disk takes it:
//! shared by the install agent (root-a and the ESP) and the node's slot writer (the inactive
//! root slot), which both feed it frames from [`crate::stream::write_verified`].

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use crate::stream::IMAGE_ALIGN;

/// `path` opened a second time for direct I/O (`O_DIRECT`), for [`ImageWriter`]; `None`
/// where the kernel refuses it (tmpfs), and the image then goes through the page cache.
pub fn open_direct(path: &Path) -> Option<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .ok()
}

/// Block size for finding zeros: the page size and the common logical block size, so the
/// writes that remain stay aligned.
const ZERO_BLOCK: usize = 4096;
/// The shortest run of zero blocks worth zeroing without writing: shorter ones cost less to
/// write than a discard command does.
const MIN_HOLE: usize = 64 << 10;

/// Writes an image at its offset, as one sequential writer, with positional writes.
///
/// Runs of at least [`MIN_HOLE`] zero bytes are not written but zeroed with
/// `fallocate(PUNCH_HOLE | KEEP_SIZE)`: on a block device a write-zeroes/discard the kernel
/// guarantees to read back as zeros, on a loop device or a file a hole. A freshly built ESP
/// is mostly zeros; a squashfs root has none, and pays only for the scan. Where the disk
/// cannot (EOPNOTSUPP, EINVAL), the zeros are written like any data from then on.
///
/// Whole pages from page-aligned memory go to the disk with direct I/O (the decoded image
/// need not pass through the page cache: one copy less), the rest through the page cache.
///
/// After each buffer it asks the kernel to start writing that range back
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait): the disk works while the
/// next frames are decoded and hashed, instead of the whole image sitting dirty in memory
/// until the final fsync.
pub struct ImageWriter<'a> {
    file: &'a File,
    direct: Option<&'a File>,
    pos: u64,
    can_punch: bool,
}

impl<'a> ImageWriter<'a> {
    /// Writes from `offset` of `file` on; whole aligned pages through `direct` (the same
    /// file from [`open_direct`]) when given. Nothing is synced: the caller syncs `file`
    /// once the image is whole.
    pub fn new(file: &'a File, direct: Option<&'a File>, offset: u64) -> Self {
        Self {
            file,
            direct,
            pos: offset,
            can_punch: true,
        }
    }
}

impl ImageWriter<'_> {
    /// Writes `bytes` at `offset`: the whole pages straight to the disk where memory and
    /// offset are page-aligned (O_DIRECT: no copy into the page cache, which the decoded
    /// image fills with nothing anyone reads back), the rest through the page cache.
    fn write_run(&mut self, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let whole = bytes.len() / IMAGE_ALIGN * IMAGE_ALIGN;
        if let Some(direct) = self.direct
            && whole > 0
            && bytes.as_ptr().align_offset(IMAGE_ALIGN) == 0
            && offset.is_multiple_of(IMAGE_ALIGN as u64)
        {
            match direct.write_all_at(&bytes[..whole], offset) {
                Ok(()) => {
                    return self
                        .file
                        .write_all_at(&bytes[whole..], offset + whole as u64);
                }
                // This file or device takes no direct I/O after all: the page cache, from
                // now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.direct = None,
                Err(e) => return Err(e),
            }
        }
        self.file.write_all_at(bytes, offset)
    }

    /// Zeroes `len` bytes at `offset` without writing them; `false` if the disk cannot.
    fn punch(&mut self, offset: u64, len: usize) -> std::io::Result<bool> {
        use rustix::fs::{FallocateFlags, fallocate};
        if !self.can_punch {
            return Ok(false);
        }
        match fallocate(
            self.file,
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            offset,
            len as u64,
        ) {
            Ok(()) => Ok(true),
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::NOSYS | rustix::io::Errno::INVAL,
            ) => {
                self.can_punch = false;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl Write for ImageWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // Most data blocks have a non-zero byte early: look there first, then scan whole
        // (`fold`, not `all`: no early exit, so the compiler vectorises it).
        let zero = |b: &[u8]| {
            b[..b.len().min(64)].iter().all(|&x| x == 0)
                && b.iter().fold(0u8, |acc, x| acc | x) == 0
        };
        // Bytes from `data` up to `at` are still to be written.
        let mut data = 0;
        let mut at = 0;
        while at < buf.len() {
            let block = &buf[at..buf.len().min(at + ZERO_BLOCK)];
            if !zero(block) {
                at += block.len();
                continue;
            }
            let mut end = at + block.len();
            while end < buf.len() && zero(&buf[end..buf.len().min(end + ZERO_BLOCK)]) {
                end = buf.len().min(end + ZERO_BLOCK);
            }
            if end - at >= MIN_HOLE && self.punch(self.pos + at as u64, end - at)? {
                self.write_run(&buf[data..at], self.pos + data as u64)?;
                data = end;
            }
            at = end;
        }
        self.write_run(&buf[data..], self.pos + data as u64)?;
        start_writeback(self.file, self.pos, buf.len() as u64);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts writing back `len` bytes at `offset` without waiting. Best effort: where the
/// kernel cannot (not a file or block device), the final fsync writes everything anyway.
/// The one call to libc here: neither rustix nor nix wraps `sync_file_range`.
#[allow(unsafe_code)]
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: a plain syscall on a descriptor `file` keeps open; no memory is passed.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Long zero runs are zeroed without being written, short ones are written, and the
    /// result is exactly the image, whatever was there before and however the writes are
    /// cut: in odd pieces from anywhere in memory (page cache), or whole from a page-aligned
    /// buffer as `write_verified` hands them (direct I/O where the filesystem allows it).
    #[test]
    fn an_image_write_reads_back_as_the_image_with_long_zero_runs_punched() {
        use std::os::unix::fs::MetadataExt;
        let mut image = vec![0u8; 800_000];
        image[5000..9000].fill(1); // straddles two blocks
        image[50_000] = 2; // a short zero run either side: written
        image[799_999] = 3; // in the last, partial block
        let mut aligned = vec![0u8; image.len() + IMAGE_ALIGN];
        let start = aligned.as_ptr().align_offset(IMAGE_ALIGN);
        aligned[start..start + image.len()].copy_from_slice(&image);
        let aligned = &aligned[start..start + image.len()];
        for (how, pieces) in [
            ("odd pieces", image.chunks(300_001).collect::<Vec<_>>()),
            ("one aligned buffer", vec![aligned]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("disk");
            std::fs::write(&path, vec![0xa5u8; 1 << 20]).unwrap();
            let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks();
            let before = allocated(&path);
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let direct = open_direct(&path);
            let offset = 8192;
            let mut w = ImageWriter::new(&file, direct.as_ref(), offset);
            for piece in pieces {
                w.write_all(piece).unwrap();
            }
            file.sync_all().unwrap();
            let disk = std::fs::read(&path).unwrap();
            let end = offset as usize + image.len();
            assert!(
                disk[offset as usize..end] == image[..],
                "{how}: the image reads back"
            );
            // Untouched around it.
            assert!(disk[..offset as usize].iter().all(|&b| b == 0xa5), "{how}");
            assert!(disk[end..].iter().all(|&b| b == 0xa5), "{how}");
            // About 700 KiB of zeros became holes.
            assert!(
                allocated(&path) * 512 < before * 512 - (512 << 10),
                "{how}: zero runs were punched: {} -> {} blocks",
                before,
                allocated(&path)
            );
        }
    }
}
