//! The side effects of an upgrade, one small trait each, with the implementations the node
//! runs: GRUB's environment block ([`Grub`]), the A/B root partitions ([`Slots`]), bundle
//! downloads over HTTPS with Range ([`Https`]), operator health probes ([`Probes`]) and the
//! system clock ([`SystemClock`]). The decisions around them are in [`super::machine`].

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn_api::UpgradeOrder;
use cairn_formats::bundle::Header;
use cairn_formats::diskwrite::{ImageWriter, open_direct};
use cairn_formats::keys::TrustStore;
use cairn_formats::{gpt, grubenv};
use time::OffsetDateTime;

use super::{MAX_LOG_LINES, Slot, StepError};
use crate::config::{HealthProbe, SlotSource};

/// How long one operator health check (or hook) may run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// The boot loader's A/B variables.
pub trait BootLoader: Send + Sync {
    /// Fails when the environment cannot be read, so cannot be edited later either.
    fn check(&self) -> Result<(), String>;
    /// The slot the boot loader gave up on (`cairn_rolled_back`), if any.
    fn rolled_back(&self) -> Option<Slot>;
    /// Try `slot` once with `tries` boot attempts; clears an old rollback flag.
    fn arm(&self, slot: Slot, tries: u8) -> Result<(), String>;
    /// Make `slot` the default and stop trying.
    fn commit(&self, slot: Slot) -> Result<(), String>;
    /// Stop trying the new slot: the default (old) one boots next.
    fn disarm(&self) -> Result<(), String>;
    /// Clear the rollback flag and any try, once the rollback is recorded.
    fn clear_rollback_flag(&self) -> Result<(), String>;
}

/// GRUB's environment: `grubenv` and, on disks built since it has two checked copies,
/// `grubenv.2` next to it (the format and how GRUB reads them: `cairn_formats::grubenv`).
/// Every write rewrites both copies whole from the selection GRUB would boot, copy 1 first
/// and synced before copy 2 is touched, so a power cut leaves at most one copy torn and the
/// other checked; the next write repairs the torn one. A disk with only `grubenv` (an older
/// build) gets no second copy: its `grub.cfg` never reads one, and its GRUB's counter does
/// not keep copy 1's check, so there copy 1 is trusted as it parses.
pub struct Grub<F = Disk> {
    /// Copy 1 (on the ESP); copy 2 is the same path with `.2` appended.
    pub path: PathBuf,
    files: F,
}

/// In-place writes of the environment's files: the real ones, or the tests' recording double.
pub trait EnvFiles: Send + Sync {
    /// The file's bytes (`ErrorKind::NotFound` when it does not exist).
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>>;
    /// Overwrites the file from its start (creating it if missing), without syncing.
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()>;
    /// Waits until the file's data is on the disk.
    fn sync(&self, path: &Path) -> std::io::Result<()>;
}

/// The filesystem.
pub struct Disk;

impl EnvFiles for Disk {
    fn read(&self, path: &Path) -> std::io::Result<Vec<u8>> {
        std::fs::read(path)
    }

    /// In place rather than replaced by a rename: GRUB's `save_env` writes into the blocks
    /// the file already has, and a rename on FAT is no more atomic than this.
    fn write(&self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?
            .write_all_at(bytes, 0)
    }

    fn sync(&self, path: &Path) -> std::io::Result<()> {
        OpenOptions::new().write(true).open(path)?.sync_all()
    }
}

impl Grub {
    /// The environment at `path` (copy 1) on the filesystem.
    pub fn new(path: PathBuf) -> Self {
        Self { path, files: Disk }
    }
}

/// The size of a block GRUB's tools make; a copy found shorter (truncated) is rewritten at it.
const GRUBENV_SIZE: usize = 1024;

impl<F: EnvFiles> Grub<F> {
    fn copy2(&self) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(".2");
        PathBuf::from(name)
    }

    /// Both copies as read (copy 1 empty when missing; copy 2 `None` on a one-copy disk).
    fn read_copies(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), String> {
        let read = |path: &Path| match self.files.read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("{}: {e}", path.display())),
        };
        let one = read(&self.path)?;
        let two = read(&self.copy2())?;
        if one.is_none() && two.is_none() {
            return Err(format!(
                "{}: no GRUB environment (is the ESP mounted?)",
                self.path.display()
            ));
        }
        Ok((one.unwrap_or_default(), two))
    }

    fn selection(&self) -> Result<grubenv::Selection, String> {
        let (one, two) = self.read_copies()?;
        grubenv::select(&one, two.as_deref()).map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Rewrites every copy from the selection GRUB boots with `set` applied: copy 1, fsync,
    /// then copy 2, fsync.
    fn set(&self, set: &[(&str, &str)]) -> Result<(), String> {
        let (one, two) = self.read_copies()?;
        let selection = grubenv::select(&one, two.as_deref())
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if let grubenv::Source::Committed(copy) = selection.source {
            tracing::warn!(
                copy,
                slot = %selection.vars[grubenv::SLOT],
                "no GRUB environment copy passes its check; rewriting both from the committed slot"
            );
        }
        let copies: Vec<&[u8]> = [Some(one.as_slice()), two.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        let copy2 = self.copy2();
        let targets = [(&self.path, Some(&one)), (&copy2, two.as_ref())];
        for (path, old) in targets {
            let Some(old) = old else { continue };
            let size = old.len().max(GRUBENV_SIZE);
            let block = grubenv::next_block(&selection, set, &copies, size)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            self.files
                .write(path, &block)
                .and_then(|()| self.files.sync(path))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        Ok(())
    }
}

impl<F: EnvFiles> BootLoader for Grub<F> {
    fn check(&self) -> Result<(), String> {
        self.selection().map(drop)
    }

    fn rolled_back(&self) -> Option<Slot> {
        Slot::parse(self.selection().ok()?.vars.get("cairn_rolled_back")?)
    }

    fn arm(&self, slot: Slot, tries: u8) -> Result<(), String> {
        self.set(&[
            (grubenv::TRY, slot.letter()),
            (grubenv::TRIES, &tries.to_string()),
            ("cairn_rolled_back", ""),
        ])
    }

    fn commit(&self, slot: Slot) -> Result<(), String> {
        self.set(&[
            (grubenv::SLOT, slot.letter()),
            (grubenv::TRY, ""),
            ("cairn_rolled_back", ""),
        ])
    }

    fn disarm(&self) -> Result<(), String> {
        self.set(&[(grubenv::TRY, "")])
    }

    fn clear_rollback_flag(&self) -> Result<(), String> {
        self.set(&[("cairn_rolled_back", ""), (grubenv::TRY, "")])
    }
}

/// Where a slot may be written: a device or disk image and a byte range in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotRange {
    /// The device or disk image.
    pub path: PathBuf,
    /// First byte of the slot.
    pub offset: u64,
    /// The slot's size.
    pub limit: u64,
}

/// The A/B root slots.
pub trait SlotDevice: Send + Sync {
    /// Finds `slot` and its size.
    fn open(&self, slot: Slot) -> Result<SlotRange, String>;
    /// Streams the bundle's root image into `range` (blocking); returns the image size.
    fn write(&self, bundle: &Path, trust: &TrustStore, range: &SlotRange) -> Result<u64, String>;
}

/// The slots as configured: partition devices in a directory, or partitions of a disk.
pub struct Slots(pub SlotSource);

impl SlotDevice for Slots {
    fn open(&self, slot: Slot) -> Result<SlotRange, String> {
        let name = format!("root-{}", slot.letter());
        match &self.0 {
            SlotSource::Dir(dir) => {
                let path = dir.join(&name);
                let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                // A block device reports its size only by seeking to its end.
                let size = f
                    .seek(SeekFrom::End(0))
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok(SlotRange {
                    path,
                    offset: 0,
                    limit: size,
                })
            }
            SlotSource::Disk(disk) => {
                let located = |e: &dyn std::error::Error| {
                    format!("{}: {}", disk.display(), cairn_api::error_chain(e))
                };
                let mut f = File::open(disk).map_err(|e| located(&e))?;
                let table = gpt::read(&mut f).map_err(|e| located(&e))?;
                let part = table
                    .get(&name)
                    .ok_or_else(|| format!("{}: no partition named {name}", disk.display()))?;
                Ok(SlotRange {
                    path: disk.clone(),
                    offset: part.offset(),
                    limit: part.size(),
                })
            }
        }
    }

    fn write(&self, bundle: &Path, trust: &TrustStore, range: &SlotRange) -> Result<u64, String> {
        write_slot(bundle, trust, &range.path, range.offset, range.limit)
    }
}

/// Streams the root image of `bundle` (signature checked against `trust` first) into
/// `slot_path` at `offset`, at most `limit` bytes, and syncs it. Each frame is checked
/// against the signed manifest's frame digest before it is written (format 2 bundles; a
/// format 1 bundle's image is checked by its one SHA-256 after the write). Returns the image size. Blocking; also what `examples/slot_write.rs` measures.
pub fn write_slot(
    bundle: &Path,
    trust: &TrustStore,
    slot_path: &Path,
    offset: u64,
    limit: u64,
) -> Result<u64, String> {
    let mut reader =
        BufReader::with_capacity(1 << 20, File::open(bundle).map_err(|e| e.to_string())?);
    let header = Header::read(&mut reader).map_err(|e| e.to_string())?;
    let verified = header.verify(trust).map_err(|e| e.to_string())?;
    let file = OpenOptions::new()
        .write(true)
        .open(slot_path)
        .map_err(|e| format!("{}: {e}", slot_path.display()))?;
    let direct = open_direct(slot_path);
    // Direct I/O of whole frames (no copy through the page cache), as the install agent
    // writes root-a; the one sync below makes the slot durable before the upgrade record
    // moves on.
    let mut dest = ImageWriter::new(&file, direct.as_ref(), offset);
    let digest = verified
        .write_root_image(&mut reader, &mut dest, limit, |_| {})
        .map_err(|e| cairn_api::error_chain(&e))?;
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(digest.size)
}

/// Fetches bundles into the data directory.
#[async_trait]
pub trait Fetcher: Send + Sync {
    /// The order's complete bundle, when it is already here.
    fn present(&self, order: &UpgradeOrder) -> Option<PathBuf>;
    /// Downloads the order's bundle, resuming a partial file, reporting (done, total) bytes.
    async fn fetch(
        &self,
        order: &UpgradeOrder,
        tls: Option<rustls::ClientConfig>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<PathBuf, StepError>;
    /// Deletes the order's complete and partial bundles.
    fn discard(&self, order: &UpgradeOrder);
}

/// Room a download leaves free on its filesystem: the upgrade data directory usually shares
/// it with the state store (`node.redb`: identity, report queue), which must stay writable
/// while a bundle lands.
pub const FREE_SPACE_MARGIN: u64 = 32 << 20;

/// Free space a download of `size` bytes into `dir` needs when `have` of them are already
/// there (a partial download): the rest plus [`FREE_SPACE_MARGIN`]. `Err` says what is
/// needed and what is `free`.
pub fn check_room(dir: &Path, size: u64, have: u64, free: u64) -> Result<(), String> {
    let missing = size.saturating_sub(have);
    let needed = missing.saturating_add(FREE_SPACE_MARGIN);
    if free >= needed {
        return Ok(());
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1048576.0);
    Err(format!(
        "not enough free space in {} to download the bundle: {} needed ({} of the bundle \
         still to download + {} kept free for the state store), {} free; free space on that \
         filesystem and order the upgrade again",
        dir.display(),
        mib(needed),
        mib(missing),
        mib(FREE_SPACE_MARGIN),
        mib(free)
    ))
}

/// Bytes available to the node on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let fs = rustix::fs::statvfs(dir)?;
    Ok(fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// How much of a download a power cut may lose: the partial file is synced each time it
/// grows by this much (one frame of a bundle), so the next start resumes there with Range.
/// A progress report never runs ahead of the last checkpoint by more than this.
const CHECKPOINT_BYTES: u64 = 4 << 20;

/// Downloads over HTTPS with Range into `<dir>/<sha256>.partial`, kept as `<sha256>.bundle`
/// once its size and SHA-256 match the order. Nothing is fetched without room for it
/// ([`check_room`]); the partial file is synced every [`CHECKPOINT_BYTES`].
pub struct Https {
    /// The data directory.
    pub dir: PathBuf,
}

impl Https {
    fn path(&self, order: &UpgradeOrder, ext: &str) -> PathBuf {
        let sha = order.sha256.to_ascii_lowercase();
        self.dir.join(format!("{sha}.{ext}"))
    }
}

fn valid_sha256(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

#[async_trait]
impl Fetcher for Https {
    fn present(&self, order: &UpgradeOrder) -> Option<PathBuf> {
        let done = self.path(order, "bundle");
        (valid_sha256(&order.sha256)
            && std::fs::metadata(&done).is_ok_and(|m| m.len() == order.size_bytes))
        .then_some(done)
    }

    fn discard(&self, order: &UpgradeOrder) {
        for ext in ["partial", "bundle"] {
            let _ = std::fs::remove_file(self.dir.join(format!("{}.{ext}", order.sha256)));
        }
    }

    async fn fetch(
        &self,
        order: &UpgradeOrder,
        tls: Option<rustls::ClientConfig>,
        progress: &mut (dyn FnMut(u64, u64) + Send),
    ) -> Result<PathBuf, StepError> {
        let sha = order.sha256.to_ascii_lowercase();
        if !valid_sha256(&sha) {
            return Err(StepError::Refused(format!(
                "the order's sha256 {:?} is not 64 hex digits",
                order.sha256
            )));
        }
        if let Some(done) = self.present(order) {
            return Ok(done);
        }
        if !order.bundle_url.starts_with("https://") {
            return Err(StepError::Refused(format!(
                "bundle URL {:?} is not https://",
                order.bundle_url
            )));
        }
        let Some(tls) = tls else {
            return Err(StepError::Retry(
                "no TLS identity to download with yet (not registered)".into(),
            ));
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StepError::Failed(e.to_string()))?;
        let dir = &self.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| StepError::Failed(format!("{}: {e}", dir.display())))?;
        let partial = self.path(order, "partial");
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > order.size_bytes {
            have = 0;
        }
        let resumed = have > 0;
        if have < order.size_bytes {
            let free = free_bytes(dir)
                .map_err(|e| StepError::Failed(format!("free space of {}: {e}", dir.display())))?;
            check_room(dir, order.size_bytes, have, free).map_err(StepError::Failed)?;
        }
        let mut request = client.get(&order.bundle_url);
        if resumed && have < order.size_bytes {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let retry = |e: &dyn std::error::Error| {
            StepError::Retry(format!(
                "downloading {}: {}",
                order.bundle_url,
                cairn_api::error_chain(e)
            ))
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?;
        if have < order.size_bytes {
            let mut response = request.send().await.map_err(|e| retry(&e))?;
            match response.status().as_u16() {
                206 => tracing::info!(from = have, "download resumed"),
                200 => {
                    file.set_len(0)
                        .map_err(|e| StepError::Failed(e.to_string()))?;
                    have = 0;
                }
                code => {
                    return Err(StepError::Retry(format!(
                        "downloading {}: HTTP {code}",
                        order.bundle_url
                    )));
                }
            }
            let mut out = BufWriter::with_capacity(64 << 10, &mut file);
            let started = Instant::now();
            let first = have;
            let mut synced = have;
            while let Some(chunk) = response.chunk().await.map_err(|e| retry(&e))? {
                have += chunk.len() as u64;
                if have > order.size_bytes {
                    drop(out);
                    let _ = std::fs::remove_file(&partial);
                    return Err(StepError::Refused(format!(
                        "the bundle is larger than the order's {} bytes",
                        order.size_bytes
                    )));
                }
                out.write_all(&chunk)
                    .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?;
                if have - synced >= CHECKPOINT_BYTES {
                    out.flush()
                        .and_then(|()| out.get_ref().sync_data())
                        .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?;
                    synced = have;
                }
                progress(have, order.size_bytes);
                if let Some(rate) = order.max_bytes_per_second.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64((have - first) as f64 / rate as f64);
                    let elapsed = started.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
            }
            out.flush()
                .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?;
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                bytes = have - first,
                seconds = format!("{seconds:.1}"),
                mib_per_s = format!(
                    "{:.1}",
                    (have - first) as f64 / seconds.max(1e-3) / 1048576.0
                ),
                "bundle downloaded"
            );
        }
        file.sync_all()
            .map_err(|e| StepError::Failed(e.to_string()))?;
        drop(file);
        if have != order.size_bytes {
            return Err(StepError::Retry(format!(
                "the download ended after {have} of {} bytes",
                order.size_bytes
            )));
        }
        let digest = {
            let p = partial.clone();
            tokio::task::spawn_blocking(move || cairn_formats::stream::Digest::of_file(&p))
                .await
                .map_err(|e| StepError::Failed(e.to_string()))?
                .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?
        };
        if digest.sha256 != sha {
            let _ = std::fs::remove_file(&partial);
            let message = format!(
                "the downloaded bundle has SHA-256 {}, the order says {sha}",
                digest.sha256
            );
            // A resumed file may carry a damaged tail from a power cut: fetch it whole once more.
            return Err(if resumed {
                StepError::Retry(message)
            } else {
                StepError::Refused(message)
            });
        }
        let done = self.path(order, "bundle");
        std::fs::rename(&partial, &done).map_err(|e| StepError::Failed(e.to_string()))?;
        Ok(done)
    }
}

/// Runs an operator health probe.
#[async_trait]
pub trait HealthProbes: Send + Sync {
    /// Whether `probe` passes, with the last lines of its output.
    async fn probe(&self, probe: &HealthProbe) -> (bool, Vec<String>);
}

/// Probes as configured: a command (exit 0 passes) or a local plain-HTTP GET (2xx passes).
pub struct Probes;

#[async_trait]
impl HealthProbes for Probes {
    async fn probe(&self, probe: &HealthProbe) -> (bool, Vec<String>) {
        match probe {
            HealthProbe::Command(argv) => run_command(argv, &[]).await,
            HealthProbe::Http(url) => http_probe(url).await,
        }
    }
}

/// The time, for report stamps and the health deadline.
pub trait Clock: Send + Sync {
    /// Now, in UTC.
    fn now_utc(&self) -> OffsetDateTime;
}

/// The system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_utc(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

pub(super) fn last_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(MAX_LOG_LINES)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// Runs argv with a timeout; returns success and the last lines of its output.
pub(crate) async fn run_command(argv: &[String], env: &[(&str, &str)]) -> (bool, Vec<String>) {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(CHECK_TIMEOUT, cmd.output()).await {
        Err(_) => (
            false,
            vec![format!("{} timed out after {CHECK_TIMEOUT:?}", argv[0])],
        ),
        Ok(Err(e)) => (false, vec![format!("{}: {e}", argv[0])]),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let mut lines = last_lines(&text);
            if !out.status.success() {
                lines.push(format!("{} exited with {}", argv[0], out.status));
            }
            (out.status.success(), lines)
        }
    }
}

/// GETs a plain-HTTP local probe; 2xx passes.
async fn http_probe(url: &str) -> (bool, Vec<String>) {
    let client = match reqwest::Client::builder().timeout(CHECK_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return (false, vec![e.to_string()]),
    };
    match client.get(url).send().await {
        Err(e) => (
            false,
            vec![format!("GET {url}: {}", cairn_api::error_chain(&e))],
        ),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let mut lines = last_lines(&body);
            lines.push(format!("GET {url}: HTTP {status}"));
            (status.is_success(), lines)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_needs_the_missing_bytes_and_the_margin() {
        const MIB: u64 = 1 << 20;
        let dir = Path::new("/var/lib/cairn/upgrade");
        let margin = FREE_SPACE_MARGIN;
        // (size, have, free, fits)
        let cases = [
            (10 * MIB, 0, 10 * MIB + margin, true),
            (10 * MIB, 0, 10 * MIB + margin - 1, false),
            // What a partial download already holds is not needed again.
            (10 * MIB, 4 * MIB, 6 * MIB + margin, true),
            (10 * MIB, 4 * MIB, 6 * MIB + margin - 1, false),
            (10 * MIB, 10 * MIB, margin, true),
            (u64::MAX, 0, u64::MAX - 1, false),
        ];
        for (size, have, free, fits) in cases {
            assert_eq!(
                check_room(dir, size, have, free).is_ok(),
                fits,
                "{size} {have} {free}"
            );
        }
        let e = check_room(dir, 100 * MIB, 20 * MIB, 50 * MIB).unwrap_err();
        assert!(
            e.contains("in /var/lib/cairn/upgrade")
                && e.contains(
                    "112.0 MiB needed (80.0 MiB of the bundle still to download + 32.0 MiB"
                )
                && e.contains("50.0 MiB free"),
            "{e}"
        );
    }
}

#[cfg(test)]
mod grub_tests;
