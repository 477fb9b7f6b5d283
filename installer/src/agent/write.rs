//! Writing the appliance onto the target disk so that it is never bootable half-written:
//!
//! 0. (the agent, before this module) take `install.json` only if a trusted release key
//!    signed it, so every digest below is the release's;
//! 1. refuse a disk holding partitions or filesystems unless wiping is allowed;
//! 2. destroy what an older install left bootable: both partition tables, the boot code
//!    and the start of every partition of the new layout (an old ESP, slot or data
//!    filesystem at the same offset would otherwise be found again through the new GPT);
//! 3. write the GPT (ESP, root-a, root-b, data) with no boot code: not bootable yet;
//! 4. stream `root.img.zst` into root-a, no temporary file: each 4 MiB frame is decoded
//!    and hashed on a core and written only once its SHA-256 matched the signed manifest's
//!    (format 2; a format-1 manifest's single image digest is checked after the write);
//! 5. only if the whole image matched: write the seed (node.yaml, netplan, hub CA, token) as the
//!    data filesystem, so the disk never boots without its identity;
//! 6. write the ESP (UEFI GRUB), GRUB's BIOS core and, last, the MBR boot code: from here
//!    on the disk boots.
//!
//! On any failure after step 1 the agent zeroes what it wrote (partition tables, boot code,
//! the start of each partition) unless told to keep it, so the machine never boots a
//! partial install. Disk I/O goes through [`Target`], so the logic runs on plain files in
//! tests exactly as on a block device.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_api::{InstallProgress, InstallStep};
use cairn_formats::diskwrite::{ImageWriter, open_direct};
use cairn_formats::gpt::{self, Layout, MBR_CODE_LEN};
use cairn_formats::install::InstallManifest;
use cairn_formats::stream::{Digest, StreamError, write_verified};

use super::disks::{SIGNATURE_BYTES, signatures};
use super::plan::InstallPlan;
use super::source::{Source, SourceError};

/// A block device or an image file the agent writes.
pub trait Target: Send {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// The path tools (mkfs.ext4) can open.
    fn path(&self) -> &Path;
    /// Reads `len` bytes at `offset`.
    fn read_at(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
    /// A sequential writer starting at `offset`.
    fn writer_at(&mut self, offset: u64) -> std::io::Result<&mut dyn Write>;
    /// A sequential writer for a whole image starting at `offset`. It makes long runs of
    /// zeros read as zeros without writing them where the disk can (a discard, or a hole in
    /// a file), and starts writing back to the disk as it goes.
    fn image_writer_at(&mut self, offset: u64) -> Box<dyn Write + '_>;
    /// Flushes everything to stable storage.
    fn sync(&mut self) -> std::io::Result<()>;
}

/// A [`Target`] on a file or block device node.
pub struct FileTarget {
    file: File,
    /// The same file opened for direct I/O, where the kernel allows it (not on tmpfs).
    direct: Option<File>,
    path: PathBuf,
    size: u64,
}

impl FileTarget {
    /// Opens `path` for reading and writing; its size is where its end is (block devices
    /// report their size this way too).
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)?;
        let size = file.seek(SeekFrom::End(0))?;
        let direct = open_direct(path);
        Ok(Self {
            file,
            direct,
            path: path.to_owned(),
            size,
        })
    }
}

impl Target for FileTarget {
    fn size(&self) -> u64 {
        self.size
    }
    fn path(&self) -> &Path {
        &self.path
    }
    fn read_at(&mut self, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        self.file.seek(SeekFrom::Start(offset))?;
        let mut buf = Vec::with_capacity(len);
        (&mut self.file).take(len as u64).read_to_end(&mut buf)?;
        Ok(buf)
    }
    fn writer_at(&mut self, offset: u64) -> std::io::Result<&mut dyn Write> {
        self.file.seek(SeekFrom::Start(offset))?;
        Ok(&mut self.file)
    }
    fn image_writer_at(&mut self, offset: u64) -> Box<dyn Write + '_> {
        Box::new(ImageWriter::new(&self.file, self.direct.as_ref(), offset))
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.sync_all()
    }
}

/// Why an install stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The disk holds data and wiping was not allowed; nothing was written.
    #[error(
        "{disk} holds {found}; refusing to overwrite it (allow wiping in the install plan or pass --wipe)"
    )]
    NotBlank {
        /// The disk.
        disk: String,
        /// What was found on it.
        found: String,
    },
    /// The disk is too small for the layout.
    #[error(transparent)]
    TooSmall(#[from] gpt::TooSmall),
    /// The plan or a payload could not be fetched.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A payload did not verify (or did not fit).
    #[error("{what} refused")]
    Verify {
        /// Which payload.
        what: &'static str,
        /// Why.
        #[source]
        source: StreamError,
    },
    /// Writing the disk failed.
    #[error("{what} on {disk}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The disk.
        disk: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// mkfs.ext4 failed.
    #[error("writing the seed filesystem: {0}")]
    Seed(String),
}

/// Sends progress to the source (boot server or log), throttled while writing.
pub struct Progress<'a> {
    source: &'a dyn Source,
    mac: String,
    last: Option<Instant>,
}

impl<'a> Progress<'a> {
    /// Reports for the machine with boot MAC `mac`.
    pub fn new(source: &'a dyn Source, mac: &str) -> Self {
        Self {
            source,
            mac: mac.to_owned(),
            last: None,
        }
    }

    /// Reports a step.
    pub fn step(&mut self, step: InstallStep, bytes: u64, total: Option<u64>, message: String) {
        let p = InstallProgress {
            mac: self.mac.clone(),
            step,
            bytes_written: bytes,
            bytes_total: total,
            message,
        };
        self.source.report(&p);
        self.last = Some(Instant::now());
    }

    /// Reports bytes written, at most once a second.
    fn bytes(&mut self, bytes: u64, total: u64) {
        if self
            .last
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            let p = InstallProgress {
                mac: self.mac.clone(),
                step: InstallStep::Writing,
                bytes_written: bytes,
                bytes_total: Some(total),
                message: String::new(),
            };
            self.source.report(&p);
            self.last = Some(Instant::now());
        }
    }
}

/// Refuses a disk that holds a partition table or filesystem, unless `wipe`.
pub fn check_blank(
    target: &mut dyn Target,
    partitions: &[String],
    wipe: bool,
) -> Result<(), InstallError> {
    let disk = target.path().display().to_string();
    let head = target
        .read_at(0, SIGNATURE_BYTES)
        .map_err(|source| InstallError::Io {
            what: "reading the disk's first sectors",
            disk: disk.clone(),
            source,
        })?;
    let mut found: Vec<String> = signatures(&head).into_iter().map(String::from).collect();
    if !partitions.is_empty() {
        found.push(format!("partitions {}", partitions.join(", ")));
    }
    if found.is_empty() || wipe {
        if !found.is_empty() {
            tracing::warn!(%disk, found = %found.join(", "), "wiping as the plan allows");
        }
        Ok(())
    } else {
        Err(InstallError::NotBlank {
            disk,
            found: found.join(", "),
        })
    }
}

/// Writes the appliance to `target` (already checked with [`check_blank`]); on error, wipes
/// what was written unless `keep_on_error`.
pub fn install(
    target: &mut dyn Target,
    source: &dyn Source,
    manifest: &InstallManifest,
    plan: &InstallPlan,
    progress: &mut Progress<'_>,
    keep_on_error: bool,
) -> Result<(), InstallError> {
    let layout = Layout::new(target.size(), manifest.esp_size, manifest.slot_size)?;
    let result = write_all(target, source, manifest, plan, &layout, progress);
    if result.is_err() && !keep_on_error {
        match wipe(target, &layout) {
            Ok(()) => tracing::warn!("wiped the partial install: the disk is not bootable"),
            Err(error) => tracing::error!(%error, "wiping the partial install failed"),
        }
    }
    result
}

fn write_all(
    target: &mut dyn Target,
    source: &dyn Source,
    m: &InstallManifest,
    plan: &InstallPlan,
    layout: &Layout,
    progress: &mut Progress<'_>,
) -> Result<(), InstallError> {
    let disk = target.path().display().to_string();
    let io = |what: &'static str| {
        let disk = disk.clone();
        move |source| InstallError::Io { what, disk, source }
    };
    // Clear old tables, boot code and the starts of the partitions first, so nothing old
    // stays bootable meanwhile.
    wipe(target, layout).map_err(io("clearing the old install"))?;
    let mut guid = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut guid)
        .map_err(|_| io("drawing a disk GUID")(std::io::Error::other("no randomness")))?;
    let table = gpt::build(layout, &guid);
    write_at(target, 0, &table.primary).map_err(io("writing the GPT"))?;
    write_at(target, table.backup_offset, &table.backup).map_err(io("writing the backup GPT"))?;
    target.sync().map_err(io("syncing"))?;
    progress.step(
        InstallStep::Partitioned,
        0,
        Some(m.root_image.size),
        format!("GPT with esp, root-a, root-b, data on {disk}"),
    );

    let slot = layout.get("root-a").expect("layout has root-a");
    let total = m.root_image.size;
    {
        let payload = source.open("root.img.zst")?;
        // write_verified writes 4 MiB buffers: no buffering needed (nor wanted: a copy).
        let mut dest = target.image_writer_at(slot.offset);
        // Only the image is checked (frame by frame, before each frame is written): that
        // proves what root-a holds, and hashing the payload too would cost a core's worth of
        // time on the critical path for nothing more (zstd also checks each frame's own
        // checksum as it decodes).
        write_verified(payload, &mut dest, None, m.root_check(), slot.size, |n| {
            progress.bytes(n, total)
        })
        .map_err(|source| InstallError::Verify {
            what: "the root image",
            source,
        })?;
    }
    target.sync().map_err(io("syncing root-a"))?;
    progress.step(
        InstallStep::Verified,
        total,
        Some(total),
        format!("root-a: {} bytes, sha256 {}", total, m.root_image.sha256),
    );

    let data = layout.get("data").expect("layout has data");
    write_seed(target.path(), data, plan)?;
    target.sync().map_err(io("syncing"))?;
    progress.step(
        InstallStep::SeedWritten,
        total,
        Some(total),
        format!("seed: {} files", plan.seed_files().len()),
    );

    // Boot loader: ESP, BIOS core, then the MBR boot code as the very last write.
    let esp = layout.get("esp").expect("layout has esp");
    {
        let payload = source.open("esp.img.zst")?;
        let mut dest = target.image_writer_at(esp.offset);
        write_verified(payload, &mut dest, None, m.esp_check(), esp.size, |_| {}).map_err(
            |source| InstallError::Verify {
                what: "the ESP image",
                source,
            },
        )?;
    }
    let core = fetch_small(source, "core.img", &m.core, "GRUB core.img")?;
    let mbr = fetch_small(source, "mbr.bin", &m.mbr, "MBR boot code")?;
    if mbr.len() != MBR_CODE_LEN {
        return Err(InstallError::Verify {
            what: "MBR boot code",
            source: StreamError::TooLarge {
                limit: MBR_CODE_LEN as u64,
            },
        });
    }
    write_at(target, gpt::BIOS_CORE_LBA * gpt::SECTOR, &core)
        .map_err(io("writing GRUB core.img"))?;
    target.sync().map_err(io("syncing"))?;
    write_at(target, 0, &mbr).map_err(io("writing the MBR boot code"))?;
    target.sync().map_err(io("syncing"))?;
    progress.step(
        InstallStep::BootloaderInstalled,
        total,
        Some(total),
        "GRUB for UEFI (ESP) and BIOS (MBR); slot a".into(),
    );

    Ok(())
}

/// Reads a small payload whole and checks its digest.
fn fetch_small(
    source: &dyn Source,
    name: &str,
    want: &Digest,
    what: &'static str,
) -> Result<Vec<u8>, InstallError> {
    let mut bytes = Vec::new();
    source
        .open(name)?
        .take(gpt::BIOS_CORE_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| InstallError::Verify {
            what,
            source: StreamError::Io(e),
        })?;
    let got = Digest::of_reader(&bytes[..]).expect("reading memory");
    if &got != want {
        return Err(InstallError::Verify {
            what,
            source: StreamError::Mismatch {
                what: "payload",
                expected: want.sha256.clone(),
                actual: got.sha256,
                expected_size: want.size,
                actual_size: got.size,
            },
        });
    }
    Ok(bytes)
}

fn write_at(target: &mut dyn Target, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    let w = target.writer_at(offset)?;
    w.write_all(bytes)?;
    w.flush()
}

fn zero(target: &mut dyn Target, offset: u64, len: u64) -> std::io::Result<()> {
    write_at(target, offset, &vec![0u8; len as usize])
}

/// Makes the data partition an ext4 filesystem holding `seed/` (built from a directory by
/// mkfs.ext4 at the partition's offset: no partition device node or mount needed).
fn write_seed(disk: &Path, data: &gpt::Partition, plan: &InstallPlan) -> Result<(), InstallError> {
    let dir = tempfile::tempdir().map_err(|e| InstallError::Seed(e.to_string()))?;
    let seed = dir.path().join("seed");
    for (name, bytes, mode) in plan.seed_files() {
        // Netplan names come from the inventory: keep them inside seed/.
        if name.split('/').any(|c| c.is_empty() || c.starts_with('.')) {
            return Err(InstallError::Seed(format!(
                "refusing seed file name {name:?}"
            )));
        }
        let path = seed.join(&name);
        std::fs::create_dir_all(path.parent().expect("has parent"))
            .and_then(|()| std::fs::write(&path, &bytes))
            .and_then(|()| {
                std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(mode))
            })
            .map_err(|e| InstallError::Seed(format!("{}: {e}", path.display())))?;
    }
    std::fs::create_dir_all(&seed).map_err(|e| InstallError::Seed(e.to_string()))?;
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-F", "-q", "-L", "cairn-data", "-d"])
        .arg(dir.path())
        .arg("-E")
        .arg(format!("offset={}", data.offset))
        .arg(disk)
        .arg(format!("{}k", data.size >> 10))
        .output()
        .map_err(|e| InstallError::Seed(format!("running mkfs.ext4 (e2fsprogs): {e}")))?;
    if !out.status.success() {
        return Err(InstallError::Seed(format!(
            "mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Zeroes the partition tables, the boot code and the start of every partition.
pub fn wipe(target: &mut dyn Target, layout: &Layout) -> std::io::Result<()> {
    zero(target, 0, gpt::ALIGN)?;
    zero(target, layout.disk_size - gpt::ALIGN, gpt::ALIGN)?;
    for p in &layout.partitions {
        zero(target, p.offset, gpt::ALIGN.min(p.size))?;
    }
    target.sync()
}
