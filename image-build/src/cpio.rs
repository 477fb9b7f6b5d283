//! A writer for the cpio "newc" format (the Linux initramfs format, documented in the
//! kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`).
//!
//! Hand-written instead of running `cpio` because an initrd must be reproducible (sorted
//! entries, fixed inode numbers and times, root ownership) and must hold `/dev/console`,
//! a device node the build, running unprivileged tools, cannot create on disk.

use std::io::Write;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

/// Writes newc entries with sequential inode numbers and one fixed mtime.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    mtime: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive; every entry gets `mtime`.
    pub fn new(out: W, mtime: u32) -> Self {
        Self {
            out,
            ino: 1,
            mtime,
            written: 0,
        }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
    ) -> std::io::Result<()> {
        let name_len = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            if mode & 0o170000 == 0o040000 { 2 } else { 1 },
            self.mtime,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            name_len,
            0
        );
        self.ino += 1;
        self.raw(header.as_bytes())?;
        self.raw(name.as_bytes())?;
        self.raw(&[0])?;
        self.pad()?;
        self.raw(data)?;
        self.pad()
    }

    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> std::io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.raw(&[0u8; 3][..pad])
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32) -> std::io::Result<()> {
        self.entry(name, 0o040000 | perm, &[], (0, 0))
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, 0o100000 | perm, data, (0, 0))
    }

    /// Adds a symbolic link.
    pub fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, 0o120777, target.as_bytes(), (0, 0))
    }

    /// Adds a character device node.
    pub fn char_device(
        &mut self,
        name: &str,
        perm: u32,
        major: u32,
        minor: u32,
    ) -> std::io::Result<()> {
        self.entry(name, 0o020000 | perm, &[], (major, minor))
    }

    /// Adds a directory tree from disk under `prefix` (`""` for the archive root), in sorted
    /// order, with root ownership and the writer's mtime.
    pub fn tree(&mut self, dir: &Path, prefix: &str) -> std::io::Result<()> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let name = e.file_name().to_string_lossy().into_owned();
            let name = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let meta = std::fs::symlink_metadata(e.path())?;
            let perm = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(e.path())?;
                self.symlink(&name, &target.to_string_lossy())?;
            } else if meta.is_dir() {
                self.dir(&name, perm)?;
                self.tree(&e.path(), &name)?;
            } else if meta.is_file() {
                self.file(&name, perm, &std::fs::read(e.path())?)?;
            } else {
                return Err(std::io::Error::other(format!(
                    "{}: unsupported file type (mode {:o})",
                    e.path().display(),
                    meta.mode()
                )));
            }
        }
        Ok(())
    }

    /// Writes the trailer and returns the output.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, &[], (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU cpio is the reference reader.
    #[test]
    fn gnu_cpio_lists_what_we_wrote() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("bin")).unwrap();
        std::fs::write(dir.path().join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        std::os::unix::fs::symlink("hello", dir.path().join("bin/hi")).unwrap();
        let mut w = CpioWriter::new(Vec::new(), 1_700_000_000);
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.tree(dir.path(), "").unwrap();
        let archive = w.finish().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-itv", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("GNU cpio is needed for this test: apt-get install cpio");
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        let out = child.wait_with_output().unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{listing}");
        assert!(listing.contains("crw-------"), "{listing}");
        assert!(listing.contains("bin/hi -> hello"), "{listing}");
        assert!(listing.contains("bin/hello"), "{listing}");
    }
}
