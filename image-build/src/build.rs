//! `cairn image build`: from one config to every way of landing cairn on a server.
//!
//! Outputs in `--out`:
//! - `root.img.zst`: the root filesystem of a slot (squashfs), zstd-compressed for transport
//!   in independent frames ([`cairn_formats::stream::compress_frames`]);
//! - `disk.raw`, `disk.qcow2`: GPT (esp, root-a, root-b, data), GRUB for UEFI and BIOS,
//!   slot `a` filled, `b` empty, `data` blank (formatted on first boot);
//! - `pxe/`: `vmlinuz`, `initrd.img` (install environment with `cairn-agent`), `ipxe.tera`,
//!   and what the agent writes besides the root image (`install.json`, `esp.img.zst`,
//!   `mbr.bin`, `core.img`); `install.json.sig` when signed, and the install environment
//!   then trusts the image's `release_keys` and installs only what they signed;
//! - `installer.iso`: hybrid BIOS/UEFI ISO with the same install environment and payload;
//! - `update-<version>.bundle`: signed when `--signing-key` is given;
//! - `manifest.json`: size and SHA-256 of each of the above.
//!
//! Why squashfs for the root: a slot is replaced whole and never modified in place, so a
//! read-only filesystem fits; `mksquashfs -reproducible` with `SOURCE_DATE_EPOCH` is
//! bit-for-bit reproducible (`mkfs.ext4 -d` 1.47.0 stamps inode change times with the
//! current time); it is compressed, so a slot write moves fewer bytes; and GRUB reads it
//! (`squash4`) to load the slot's own kernel. The codec is gzip because GRUB 2.06's
//! `squash4` cannot read zstd squashfs. Writable state lives on `data`.

use std::collections::BTreeMap;
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::args;
use crate::config::{ImageConfig, Profile};
use crate::cpio::CpioWriter;
use cairn_api::node_config::{NodeConfig, UpgradeSection};
use cairn_formats::gpt::{self, Layout};
use cairn_formats::install::InstallManifest;
use cairn_formats::keys::{PublicKey, SigningKey};
use cairn_formats::stream::{Digest, FrameDigests};

use crate::grub;
use crate::rootfs::{self, TreeError};
use crate::tools::{ToolError, run};

const INITRD_INIT: &str = include_str!("../dist/initrd-init.sh");
const UDHCPC_SCRIPT: &str = include_str!("../dist/udhcpc.script");
const MINIMAL_INIT: &str = include_str!("../dist/minimal-init.sh");
/// The iPXE script template the boot server renders per server.
pub const IPXE_TEMPLATE: &str = include_str!("../dist/ipxe.tera");
/// cairn-node's one unit, shared with the cairn-node .deb, and what this image adds to it.
const NODE_UNIT: &str = include_str!("../../packaging/systemd/cairn-node.service");
const NODE_UNIT_IMAGE: &str = include_str!("../dist/cairn-node-image.conf");

/// Modules the initramfs loads: virtio and SATA/CD disks, virtio NIC, the root and data
/// filesystems, and CRC32C for ext4 metadata checksums.
const INITRD_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "e1000",
    "ahci",
    "ata_piix",
    "sr_mod",
    "isofs",
    "squashfs",
    "crc32c_generic",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_ascii",
];

/// cairn binaries put into images, when present in the binaries directory.
/// (cairn-agent is not among them: it installs, from the install environment's initramfs.)
/// Every byte here is also in each update bundle an appliance downloads.
const CAIRN_BINARIES: &[&str] = &["cairn", "cairn-node"];

/// `manifest.json` of a build.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildManifest {
    /// OS version.
    pub version: String,
    /// Profile built.
    pub profile: String,
    /// The `SOURCE_DATE_EPOCH` the build used.
    pub source_date_epoch: u64,
    /// Every output, by path relative to the output directory.
    pub files: BTreeMap<String, Digest>,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Assembling a tree failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A tool failed.
    #[error(transparent)]
    Tool(#[from] ToolError),
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Something the config points at is missing or does not fit.
    #[error("{0}")]
    Input(String),
    /// Writing the bundle failed.
    #[error("writing the update bundle")]
    Bundle(#[from] cairn_formats::bundle::BundleError),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Io { what, path, source }
}

/// Inputs of one build.
#[derive(Debug)]
pub struct BuildRequest {
    /// The config.
    pub config: ImageConfig,
    /// Output directory (created; existing outputs are replaced).
    pub out: PathBuf,
    /// Signs the bundle when given.
    pub signing_key: Option<SigningKey>,
    /// Timestamp for every file and filesystem.
    pub source_date_epoch: u64,
    /// Where cairn's binaries are.
    pub binaries: PathBuf,
    /// `.deb` files kept between `debian` builds (one directory per suite is made in it);
    /// `None` downloads every package each time.
    pub package_cache: Option<PathBuf>,
}

/// A kernel and the root of its modules.
struct Kernel {
    image: PathBuf,
    version: String,
    modules_root: PathBuf,
}

/// A scratch directory in the system's temporary directory, removed when dropped.
fn work_dir(prefix: &str) -> Result<tempfile::TempDir, BuildError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .map_err(io(
            "creating a temporary directory in",
            &std::env::temp_dir(),
        ))
}

/// Runs a build; `step` is called with a short description before each stage.
pub fn build(req: &BuildRequest, mut step: impl FnMut(&str)) -> Result<BuildManifest, BuildError> {
    let epoch = req.source_date_epoch;
    let cfg = &req.config;
    let out = &req.out;
    let release_keys = release_keys(cfg, req.signing_key.as_ref())?;
    std::fs::create_dir_all(out.join("pxe")).map_err(io("creating", out))?;
    let work = work_dir("cairn-image-")?;
    let work = work.path();

    // The root tree.
    let root = work.join("root");
    let kernel = match cfg.profile {
        Profile::Minimal => {
            step("assembling the minimal root");
            let kernel = host_kernel(cfg.kernel.as_deref())?;
            minimal_root(&root, req, &kernel, &release_keys)?;
            kernel
        }
        Profile::Debian => {
            step("bootstrapping Debian with mmdebstrap (minutes)");
            let cache = match &req.package_cache {
                Some(dir) => {
                    let dir = dir.join(&cfg.debian.suite);
                    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
                    Some(dir)
                }
                None => None,
            };
            crate::debian::bootstrap(&root, cfg, cache.as_deref(), epoch)?;
            debian_root(&root, req)?
        }
    };
    write_version(&root, &cfg.version)?;

    step("building the initramfs");
    let boot_initrd = work.join("initrd-boot.img");
    let install_initrd = out.join("pxe/initrd.img");
    initramfs(
        &work.join("initrd-boot"),
        &boot_initrd,
        &kernel,
        None,
        epoch,
    )?;
    let install_tree = work.join("initrd-install");
    // The install environment trusts the image's release keys: the agent checks the
    // signature of install.json (and so every payload digest) before it writes a byte.
    write_release_keys(&install_tree, &release_keys)?;
    initramfs(
        &install_tree,
        &install_initrd,
        &kernel,
        Some(&req.binaries),
        epoch,
    )?;
    if cfg.profile == Profile::Minimal {
        // Each slot boots its own kernel and initramfs.
        copy(&kernel.image, &root.join("boot/vmlinuz"))?;
        copy(&boot_initrd, &root.join("boot/initrd.img"))?;
    }
    copy(&kernel.image, &out.join("pxe/vmlinuz"))?;
    std::fs::write(out.join("pxe/ipxe.tera"), IPXE_TEMPLATE).map_err(io("writing", out))?;

    step("building the root image (squashfs)");
    let root_img = work.join("root.img");
    squash(&root, &root_img, epoch)?;
    let root_size = meta_len(&root_img)?;
    let slot_size = cfg.disk.slot_mib << 20;
    if root_size > slot_size {
        return Err(BuildError::Input(format!(
            "the root image is {} MiB, larger than disk.slot_mib ({})",
            root_size.div_ceil(1 << 20),
            cfg.disk.slot_mib
        )));
    }
    let root_zst = out.join("root.img.zst");
    compress(&root_img, &root_zst)?;

    step("building the ESP and GRUB");
    let esp_size = cfg.disk.esp_mib << 20;
    let esp_img = work.join("esp.img");
    let (mbr, core) = grub_images(work, &esp_img, esp_size, &cfg.kernel_args, epoch)?;
    std::fs::write(out.join("pxe/mbr.bin"), &mbr).map_err(io("writing", out))?;
    std::fs::write(out.join("pxe/core.img"), &core).map_err(io("writing", out))?;
    compress(&esp_img, &out.join("pxe/esp.img.zst"))?;
    let (root_image, root_frames) =
        FrameDigests::of_file(&root_img).map_err(io("hashing", &root_img))?;
    let (esp_image, esp_frames) =
        FrameDigests::of_file(&esp_img).map_err(io("hashing", &esp_img))?;
    let install = InstallManifest {
        format: cairn_formats::install::FORMAT_FRAMES,
        version: cfg.version.clone(),
        esp_size,
        slot_size,
        root_image,
        root_payload: Digest::of_file(&root_zst).map_err(io("hashing", &root_zst))?,
        root_frames: Some(root_frames),
        esp_image,
        esp_payload: digest(&out.join("pxe/esp.img.zst"))?,
        esp_frames: Some(esp_frames),
        mbr: Digest::of_reader(&mbr[..]).map_err(io("hashing", out))?,
        core: Digest::of_reader(&core[..]).map_err(io("hashing", out))?,
    };
    let install_json = serde_json::to_vec_pretty(&install).expect("serializable");
    std::fs::write(out.join("pxe/install.json"), &install_json).map_err(io("writing", out))?;
    let install_sig = req
        .signing_key
        .as_ref()
        .map(|key| cairn_formats::install::sign(&install_json, key));
    let sig_path = out.join("pxe").join(cairn_formats::install::SIGNATURE_FILE);
    match &install_sig {
        Some(sig) => std::fs::write(&sig_path, sig).map_err(io("writing", &sig_path))?,
        None => match std::fs::remove_file(&sig_path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io("removing", &sig_path)(e));
            }
            _ => {}
        },
    }
    copy(&root_zst, &out.join("pxe/root.img.zst"))?;

    step("assembling disk.raw and disk.qcow2");
    let layout = Layout::new(cfg.disk.size_mib << 20, esp_size, slot_size)
        .map_err(|e| BuildError::Input(e.to_string()))?;
    let disk = out.join("disk.raw");
    let seed = format!("cairn-disk {} {epoch}", cfg.version);
    write_disk(
        &disk,
        &layout,
        &gpt::guid_from_seed(seed.as_bytes()),
        &mbr,
        &core,
        &esp_img,
        &root_img,
    )?;
    let qcow = out.join("disk.qcow2");
    let _ = std::fs::remove_file(&qcow);
    run(
        "qemu-img",
        args!["convert", "-f", "raw", "-O", "qcow2", disk, qcow],
        epoch,
    )?;

    step("building installer.iso");
    iso(work, out, cfg, &kernel, &install_json, epoch)?;

    step("writing the update bundle");
    let bundle = out.join(format!("update-{}.bundle", cfg.version));
    cairn_formats::bundle::create(
        &bundle,
        &cfg.version,
        std::env::consts::ARCH,
        cfg.compatible_from.clone(),
        &rfc3339(epoch),
        &root_img,
        &root_zst,
    )?;
    if let Some(key) = &req.signing_key {
        cairn_formats::bundle::sign(&bundle, key)?;
    }

    step("writing manifest.json");
    let mut files = BTreeMap::new();
    let signed = install_sig
        .is_some()
        .then(|| format!("pxe/{}", cairn_formats::install::SIGNATURE_FILE));
    for rel in [
        "disk.raw".to_string(),
        "disk.qcow2".into(),
        "root.img.zst".into(),
        "installer.iso".into(),
        format!("update-{}.bundle", cfg.version),
        "pxe/vmlinuz".into(),
        "pxe/initrd.img".into(),
        "pxe/ipxe.tera".into(),
        "pxe/install.json".into(),
        "pxe/root.img.zst".into(),
        "pxe/esp.img.zst".into(),
        "pxe/mbr.bin".into(),
        "pxe/core.img".into(),
    ]
    .into_iter()
    .chain(signed)
    {
        let d = digest(&out.join(&rel))?;
        files.insert(rel, d);
    }
    let manifest = BuildManifest {
        version: cfg.version.clone(),
        profile: format!("{:?}", cfg.profile).to_lowercase(),
        source_date_epoch: epoch,
        files,
    };
    let path = out.join("manifest.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&manifest).expect("serializable"),
    )
    .map_err(io("writing", &path))?;
    Ok(manifest)
}

/// The root tree as a slot image: squashfs, reproducible (see the module comment).
fn squash(root: &Path, out: &Path, epoch: u64) -> Result<(), BuildError> {
    rootfs::clamp_times(root, epoch)?;
    run(
        "mksquashfs",
        args![
            root,
            out,
            "-reproducible",
            "-all-root",
            // GRUB reads the kernel from the slot, and its squash4 reads gzip, lzo and xz.
            // gzip level 1: on the debian root (700 MB) 2.4x faster than level 6 for 9 % more
            // bytes; level 9 (mksquashfs's default) took 7x level 6's time for about 1 %.
            "-comp",
            "gzip",
            "-Xcompression-level",
            "1",
            "-noappend",
            "-quiet",
            "-no-progress"
        ],
        epoch,
    )?;
    Ok(())
}

/// Inputs of `cairn image derive`: another release made from a build's root image.
#[derive(Debug)]
pub struct DeriveRequest {
    /// An output directory of `cairn image build` (its `root.img.zst` is the base).
    pub from: PathBuf,
    /// The new version (`/etc/cairn-release`, `CAIRN_VERSION`, the bundle's manifest).
    pub version: String,
    /// Versions the bundle installs over; empty: any.
    pub compatible_from: Vec<String>,
    /// Files put into the root: (file on this machine, absolute path in the image).
    pub add: Vec<(PathBuf, String)>,
    /// The bundle to write.
    pub out: PathBuf,
    /// Signs the bundle when given.
    pub signing_key: Option<SigningKey>,
    /// Timestamp of every file in the image.
    pub source_date_epoch: u64,
}

/// Makes an update bundle from a build's root image with a new version and extra files (a
/// patched binary, a config drop-in), without rebuilding the rest of the image: unpacks the
/// squashfs, changes the tree, packs it with the same options. Reproducible like `build`.
pub fn derive(req: &DeriveRequest) -> Result<cairn_formats::bundle::Manifest, BuildError> {
    let epoch = req.source_date_epoch;
    let work = work_dir("cairn-derive-")?;
    let work = work.path();
    let base = req.from.join("root.img.zst");
    let base_img = work.join("base.img");
    {
        let input = std::fs::File::open(&base)
            .map_err(io("reading (not an output of `cairn image build`?)", &base))?;
        let mut output = std::fs::File::create(&base_img).map_err(io("writing", &base_img))?;
        zstd::stream::copy_decode(std::io::BufReader::new(input), &mut output)
            .map_err(io("decompressing", &base))?;
    }
    let root = work.join("root");
    run(
        "unsquashfs",
        args!["-no-progress", "-quiet", "-d", root, base_img],
        epoch,
    )?;
    std::fs::remove_file(&base_img).map_err(io("removing", &base_img))?;
    for (from, to) in &req.add {
        let rel = to.trim_start_matches('/');
        if rel.is_empty() || rel.split('/').any(|c| c == "..") {
            return Err(BuildError::Input(format!(
                "--add {}:{to}: the destination must be a path inside the image",
                from.display()
            )));
        }
        let dst = root.join(rel);
        if dst.is_dir() {
            return Err(BuildError::Input(format!(
                "--add {}:{to}: {to} is a directory in the image",
                from.display()
            )));
        }
        copy(from, &dst)?;
    }
    write_version(&root, &req.version)?;
    let root_img = work.join("root.img");
    squash(&root, &root_img, epoch)?;
    let root_zst = work.join("root.img.zst");
    compress(&root_img, &root_zst)?;
    let manifest = cairn_formats::bundle::create(
        &req.out,
        &req.version,
        std::env::consts::ARCH,
        req.compatible_from.clone(),
        &rfc3339(epoch),
        &root_img,
        &root_zst,
    )?;
    if let Some(key) = &req.signing_key {
        cairn_formats::bundle::sign(&req.out, key)?;
    }
    Ok(manifest)
}

fn digest(path: &Path) -> Result<Digest, BuildError> {
    Digest::of_file(path).map_err(io("hashing", path))
}

fn meta_len(path: &Path) -> Result<u64, BuildError> {
    Ok(std::fs::metadata(path).map_err(io("reading", path))?.len())
}

fn copy(from: &Path, to: &Path) -> Result<(), BuildError> {
    if let Some(p) = to.parent() {
        std::fs::create_dir_all(p).map_err(io("creating", p))?;
    }
    std::fs::copy(from, to).map_err(io("copying", from))?;
    Ok(())
}

/// Compresses a slot or ESP image as cairn ships it (see [`cairn_formats::stream::compress_frames`]).
fn compress(from: &Path, to: &Path) -> Result<(), BuildError> {
    let input = std::fs::File::open(from).map_err(io("reading", from))?;
    let mut output = std::io::BufWriter::new(std::fs::File::create(to).map_err(io("writing", to))?);
    cairn_formats::stream::compress_frames(std::io::BufReader::new(input), &mut output)
        .map_err(io("compressing", from))?;
    output.flush().map_err(io("writing", to))
}

fn rfc3339(epoch: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| epoch.to_string())
}

/// The build machine's kernel: the configured one, or the newest `/boot/vmlinuz-*`.
fn host_kernel(configured: Option<&Path>) -> Result<Kernel, BuildError> {
    let image = match configured {
        Some(p) => p.to_owned(),
        None => {
            let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
                .map_err(io("listing", Path::new("/boot")))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
                .collect();
            found.sort();
            found.pop().ok_or_else(|| {
                BuildError::Input(
                    "no /boot/vmlinuz-* here: install linux-image-amd64 or set `kernel:`".into(),
                )
            })?
        }
    };
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = name
        .strip_prefix("vmlinuz-")
        .ok_or_else(|| {
            BuildError::Input(format!(
                "kernel: {} is not named vmlinuz-<version>",
                image.display()
            ))
        })?
        .to_owned();
    if !Path::new("/lib/modules").join(&version).is_dir() {
        return Err(BuildError::Input(format!(
            "kernel: no /lib/modules/{version} for {}",
            image.display()
        )));
    }
    Ok(Kernel {
        image,
        version,
        modules_root: PathBuf::from("/"),
    })
}

fn minimal_root(
    root: &Path,
    req: &BuildRequest,
    kernel: &Kernel,
    release_keys: &[PublicKey],
) -> Result<(), BuildError> {
    let epoch = req.source_date_epoch;
    rootfs::dirs(
        root,
        &[
            "proc",
            "sys",
            "dev",
            "run",
            "tmp",
            "boot",
            "etc/cairn",
            "var/lib/cairn",
            "mnt",
            // The ESP is mounted here: cairn-node edits GRUB's environment for upgrades.
            "boot/efi",
        ],
    )?;
    rootfs::busybox(root, epoch)?;
    rootfs::write(root, "sbin/init", MINIMAL_INIT.as_bytes(), 0o755)?;
    rootfs::write(root, "etc/udhcpc.script", UDHCPC_SCRIPT.as_bytes(), 0o755)?;
    let mut found = 0;
    for name in CAIRN_BINARIES {
        let host = req.binaries.join(name);
        if host.is_file() {
            rootfs::binary(root, &host, &format!("usr/bin/{name}"), epoch)?;
            found += 1;
        }
    }
    if found == 0 {
        return Err(BuildError::Input(format!(
            "no cairn binaries ({}) in {}: build them or set `binaries:`",
            CAIRN_BINARIES.join(", "),
            req.binaries.display()
        )));
    }
    let _ = kernel;
    image_node_config(root, &req.config, release_keys)
}

/// Where the `minimal` image keeps its own cairn-node drop-ins; its `/sbin/init` copies them
/// into `/etc/cairn/node.d` (a tmpfs there) at boot, after the seed's configuration.
const IMAGE_NODE_D: &str = "usr/lib/cairn/node.d";
/// The release keys the image's cairn-node and its install environment trust.
const IMAGE_RELEASE_KEYS: &str = cairn_formats::install::RELEASE_KEYS_DIR;

/// The release keys of `cfg`, checked against the key that signs this build: an image that
/// trusts keys refuses unsigned bundles and its install environment refuses an unsigned
/// install manifest, so such a build must be signed by one of them.
fn release_keys(
    cfg: &ImageConfig,
    signing_key: Option<&SigningKey>,
) -> Result<Vec<PublicKey>, BuildError> {
    let keys = cfg
        .release_keys
        .iter()
        .map(|path| {
            PublicKey::read(path).map_err(|e| BuildError::Input(format!("release_keys: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if keys.is_empty() {
        return Ok(keys);
    }
    let listed = || {
        keys.iter()
            .map(PublicKey::fingerprint)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match signing_key {
        None => Err(BuildError::Input(format!(
            "release_keys ({}) are set, so the install environment and the appliance refuse \
             what is unsigned: pass --signing-key with one of them",
            listed()
        ))),
        Some(key) if !keys.contains(&key.public_key()) => Err(BuildError::Input(format!(
            "--signing-key {} is not among release_keys ({}): the image would refuse its own \
             install manifest and bundle",
            key.public_key().fingerprint(),
            listed()
        ))),
        Some(_) => Ok(keys),
    }
}

/// Writes `keys` into `tree` at [`IMAGE_RELEASE_KEYS`], one `<fingerprint>.pem` each, and
/// returns their paths as the running system sees them.
fn write_release_keys(tree: &Path, keys: &[PublicKey]) -> Result<Vec<PathBuf>, BuildError> {
    let dir = tree.join(IMAGE_RELEASE_KEYS);
    let mut paths = Vec::new();
    for key in keys {
        std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
        let rel = format!("{IMAGE_RELEASE_KEYS}/{}.pem", key.fingerprint());
        key.write(&tree.join(&rel))
            .map_err(|e| BuildError::Input(format!("release_keys: {e}")))?;
        paths.push(PathBuf::from(format!("/{rel}")));
    }
    Ok(paths)
}

/// The image's upgrade settings (slots by partition label, GRUB's environment on the ESP,
/// busybox's `reboot -f`: the init is a shell, not a service manager), its trusted release
/// keys, and the operator's drop-in from `node_config`.
fn image_node_config(
    root: &Path,
    cfg: &ImageConfig,
    release_keys: &[PublicKey],
) -> Result<(), BuildError> {
    let keys = write_release_keys(root, release_keys)?;
    let upgrade = NodeConfig {
        upgrade: Some(UpgradeSection {
            slot_dir: Some("/dev/disk/by-partlabel".into()),
            grubenv: Some("/boot/efi/grub/grubenv".into()),
            reboot_command: Some(vec!["reboot".into(), "-f".into()]),
            trusted_keys: Some(keys),
            ..Default::default()
        }),
        ..Default::default()
    };
    let yaml = format!(
        "# Made by `cairn image build` (minimal profile): A/B upgrades of this appliance.\n{}",
        serde_yaml_ng::to_string(&upgrade).expect("plain strings serialise")
    );
    rootfs::write(
        root,
        &format!("{IMAGE_NODE_D}/10-image-upgrade.yaml"),
        yaml.as_bytes(),
        0o644,
    )?;
    if let Some(extra) = &cfg.node_config {
        let text = std::fs::read(extra).map_err(io("reading node_config", extra))?;
        rootfs::write(
            root,
            &format!("{IMAGE_NODE_D}/50-image-config.yaml"),
            &text,
            0o644,
        )?;
    }
    Ok(())
}

/// `/etc/cairn-release` and, in the `minimal` root, `/etc/os-release` with `CAIRN_VERSION`
/// (what cairn-node reports as the running version). A Debian root keeps Debian's os-release.
fn write_version(root: &Path, version: &str) -> Result<(), BuildError> {
    rootfs::write(
        root,
        "etc/cairn-release",
        format!("{version}\n").as_bytes(),
        0o644,
    )?;
    let os_release = root.join("etc/os-release");
    let debian = std::fs::symlink_metadata(&os_release).is_ok_and(|m| m.is_symlink())
        || root.join("usr/lib/os-release").exists();
    if !debian {
        rootfs::write(
            root,
            "etc/os-release",
            format!(
                "NAME=cairn\nID=cairn\nVERSION_ID={version}\n\
                 PRETTY_NAME=\"cairn {version}\"\nCAIRN_VERSION={version}\n"
            )
            .as_bytes(),
            0o644,
        )?;
    }
    Ok(())
}

/// Finishes a bootstrapped Debian root: cairn-node and its unit, fstab for a read-only root.
fn debian_root(root: &Path, req: &BuildRequest) -> Result<Kernel, BuildError> {
    let epoch = req.source_date_epoch;
    let node = req.binaries.join("cairn-node");
    if node.is_file() {
        rootfs::binary(root, &node, "usr/bin/cairn-node", epoch)?;
    } else {
        return Err(BuildError::Input(format!(
            "the debian profile needs cairn-node in {} (cargo build -p cairn-node-daemon)",
            req.binaries.display()
        )));
    }
    // Where the package puts it, so that the package can later replace this step.
    rootfs::write(
        root,
        "usr/lib/systemd/system/cairn-node.service",
        NODE_UNIT.as_bytes(),
        0o644,
    )?;
    rootfs::write(
        root,
        "etc/systemd/system/cairn-node.service.d/10-image.conf",
        NODE_UNIT_IMAGE.as_bytes(),
        0o644,
    )?;
    rootfs::dirs(
        root,
        &[
            "etc/systemd/system/multi-user.target.wants",
            "var/lib/cairn",
        ],
    )?;
    // The root slot is read-only: the node's configuration (the seed's or the wizard's)
    // lives on the data partition. A link rather than a bind mount made at start: it holds
    // for every process (the unit's sandbox, an operator's shell) without mount ordering.
    let etc_cairn = root.join("etc/cairn");
    let _ = std::fs::remove_dir(&etc_cairn);
    std::os::unix::fs::symlink("/var/lib/cairn/etc", &etc_cairn)
        .map_err(io("linking", &etc_cairn))?;
    let wants = root.join("etc/systemd/system/multi-user.target.wants/cairn-node.service");
    let _ = std::fs::remove_file(&wants);
    std::os::unix::fs::symlink("/usr/lib/systemd/system/cairn-node.service", &wants)
        .map_err(io("linking", &wants))?;
    rootfs::write(
        root,
        "etc/fstab",
        b"# The root slot is a read-only squashfs; state lives on the data partition,\n\
          # formatted on first boot if blank.\n\
          PARTLABEL=data /var/lib/cairn ext4 defaults,nofail,x-systemd.makefs 0 2\n\
          tmpfs /tmp tmpfs defaults 0 0\n\
          tmpfs /var/tmp tmpfs defaults 0 0\n\
          tmpfs /var/log tmpfs defaults 0 0\n\
          # systemd's own state (logind, timesyncd, the random seed) is kept per boot.\n\
          tmpfs /var/lib/systemd tmpfs defaults,mode=0755 0 0\n",
        0o644,
    )?;
    // Empty machine-id: systemd makes a transient one on the read-only root.
    rootfs::write(root, "etc/machine-id", b"", 0o444)?;
    rootfs::write(root, "etc/hostname", b"cairn\n", 0o644)?;
    let boot = root.join("boot");
    let find = |prefix: &str| -> Result<PathBuf, BuildError> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(&boot)
            .map_err(io("listing", &boot))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .collect();
        v.sort();
        v.pop()
            .ok_or_else(|| BuildError::Input(format!("the Debian root has no /boot/{prefix}*")))
    };
    let image = find("vmlinuz-")?;
    let initrd = find("initrd.img-")?;
    let version = image.file_name().expect("file").to_string_lossy()["vmlinuz-".len()..].to_owned();
    // GRUB loads /boot/vmlinuz and /boot/initrd.img from the slot.
    copy(&image, &boot.join("vmlinuz"))?;
    copy(&initrd, &boot.join("initrd.img"))?;
    Ok(Kernel {
        image,
        version,
        modules_root: root.to_owned(),
    })
}

/// Builds an initramfs: busybox, modules, `/init`; with `agent_from`, also cairn-agent and
/// mkfs.ext4 (the install environment).
fn initramfs(
    tree: &Path,
    out: &Path,
    kernel: &Kernel,
    agent_from: Option<&Path>,
    epoch: u64,
) -> Result<(), BuildError> {
    rootfs::dirs(
        tree,
        &[
            "proc",
            "sys",
            "run",
            "tmp",
            "etc",
            "newroot",
            "media/cdrom",
            "usr/bin",
            "sbin",
        ],
    )?;
    rootfs::busybox(tree, epoch)?;
    rootfs::write(tree, "init", INITRD_INIT.as_bytes(), 0o755)?;
    rootfs::write(tree, "etc/udhcpc.script", UDHCPC_SCRIPT.as_bytes(), 0o755)?;
    rootfs::modules(
        tree,
        &kernel.modules_root,
        &kernel.version,
        INITRD_MODULES,
        epoch,
    )?;
    if let Some(bin) = agent_from {
        let agent = bin.join("cairn-agent");
        if !agent.is_file() {
            return Err(BuildError::Input(format!(
                "no cairn-agent in {} (cargo build -p cairn-installer)",
                bin.display()
            )));
        }
        rootfs::binary(tree, &agent, "usr/bin/cairn-agent", epoch)?;
        rootfs::binary(tree, Path::new("/sbin/mke2fs"), "sbin/mkfs.ext4", epoch)?;
    }
    rootfs::clamp_times(tree, epoch)?;
    let file = std::fs::File::create(out).map_err(io("writing", out))?;
    let enc = zstd::stream::write::Encoder::new(std::io::BufWriter::new(file), 3)
        .map_err(io("compressing", out))?;
    let mut cpio = CpioWriter::new(enc, u32::try_from(epoch).unwrap_or(u32::MAX));
    let write = |r: std::io::Result<()>| r.map_err(io("writing", out));
    write(cpio.dir("dev", 0o755))?;
    write(cpio.char_device("dev/console", 0o600, 5, 1))?;
    write(cpio.tree(tree, ""))?;
    let enc = cpio.finish().map_err(io("writing", out))?;
    enc.finish()
        .and_then(|mut w| w.flush())
        .map_err(io("writing", out))
}

/// Makes the ESP filesystem image (UEFI GRUB, grub.cfg, grubenv) and the BIOS boot code.
fn grub_images(
    work: &Path,
    esp_img: &Path,
    esp_size: u64,
    kernel_args: &str,
    epoch: u64,
) -> Result<(Vec<u8>, Vec<u8>), BuildError> {
    let esp = work.join("esp");
    let early = work.join("grub-early.cfg");
    std::fs::write(&early, grub::embedded_config()).map_err(io("writing", &early))?;
    rootfs::dirs(&esp, &["EFI/BOOT", "grub"])?;
    let efi = esp.join("EFI/BOOT/BOOTX64.EFI");
    let mut a: Vec<std::ffi::OsString> = ["-O", "x86_64-efi", "-p", "/grub", "-c"]
        .map(Into::into)
        .to_vec();
    a.extend([
        early.clone().into_os_string(),
        "-o".into(),
        efi.clone().into_os_string(),
    ]);
    a.extend(grub::MODULES.iter().map(Into::into));
    run(
        "grub-mkimage",
        &a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>(),
        epoch,
    )?;
    let core = work.join("core.img");
    let mut a: Vec<std::ffi::OsString> = ["-O", "i386-pc", "-p", "/grub", "-c"]
        .map(Into::into)
        .to_vec();
    a.extend([
        early.into_os_string(),
        "-o".into(),
        core.clone().into_os_string(),
    ]);
    a.extend(
        grub::MODULES
            .iter()
            .chain(grub::BIOS_MODULES)
            .map(Into::into),
    );
    run(
        "grub-mkimage",
        &a.iter().map(|s| s.as_os_str()).collect::<Vec<_>>(),
        epoch,
    )?;
    rootfs::write(
        &esp,
        "grub/grub.cfg",
        grub::grub_cfg(kernel_args).as_bytes(),
        0o644,
    )?;
    let env = cairn_formats::grubenv::new_block(&BTreeMap::from([("cairn_slot", "a")]))
        .expect("one variable fits");
    for copy in grub::GRUBENV_COPIES {
        rootfs::write(&esp, &format!("grub/{copy}"), &env, 0o644)?;
    }
    rootfs::clamp_times(&esp, epoch)?;
    let _ = std::fs::remove_file(esp_img);
    run(
        "mkfs.fat",
        args![
            "-C",
            "-i",
            "ca1b0001",
            "-n",
            grub::ESP_LABEL,
            "--invariant",
            esp_img,
            (esp_size >> 10).to_string()
        ],
        epoch,
    )?;
    run(
        "mcopy",
        args![
            "-s",
            "-m",
            "-i",
            esp_img,
            esp.join("EFI"),
            esp.join("grub"),
            "::/"
        ],
        epoch,
    )?;
    trim_trailing_zeros(esp_img)?;

    let boot_img = Path::new("/usr/lib/grub/i386-pc/boot.img");
    let boot = std::fs::read(boot_img).map_err(io("reading (install grub-pc-bin)", boot_img))?;
    let core_bytes = std::fs::read(&core).map_err(io("reading", &core))?;
    if core_bytes.len() as u64 > gpt::BIOS_CORE_MAX {
        return Err(BuildError::Input(format!(
            "GRUB core.img is {} bytes, more than the {} before the first partition",
            core_bytes.len(),
            gpt::BIOS_CORE_MAX
        )));
    }
    grub::bios_boot_code(&boot, &core_bytes, gpt::BIOS_CORE_LBA).map_err(BuildError::Input)
}

/// Cuts an image after its last non-zero 4 KiB block. For the ESP: FAT ignores what its
/// free clusters hold, so the mostly empty rest of the partition need not be shipped,
/// decoded, hashed or written (64 MiB become about 1 MiB).
fn trim_trailing_zeros(path: &Path) -> Result<(), BuildError> {
    use std::io::Read as _;
    const BLOCK: u64 = 4096;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("reading", path))?;
    let mut end = file.metadata().map_err(io("reading", path))?.len();
    let mut block = vec![0u8; BLOCK as usize];
    while end > 0 {
        let start = (end - 1) / BLOCK * BLOCK;
        let len = (end - start) as usize;
        file.seek(SeekFrom::Start(start))
            .and_then(|_| file.read_exact(&mut block[..len]))
            .map_err(io("reading", path))?;
        if block[..len].iter().any(|&b| b != 0) {
            break;
        }
        end = start;
    }
    file.set_len(end.next_multiple_of(BLOCK))
        .map_err(io("writing", path))
}

/// Writes a sparse disk image: GPT, BIOS boot code, ESP, root-a.
#[allow(clippy::too_many_arguments)]
fn write_disk(
    path: &Path,
    layout: &Layout,
    disk_guid: &[u8; 16],
    mbr: &[u8],
    core: &[u8],
    esp_img: &Path,
    root_img: &Path,
) -> Result<(), BuildError> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::File::create(path).map_err(io("creating", path))?;
    let w = |r: std::io::Result<()>| r.map_err(io("writing", path));
    w(f.set_len(layout.disk_size))?;
    let table = gpt::build(layout, disk_guid);
    let mut first = table.primary.clone();
    first[..mbr.len()].copy_from_slice(mbr);
    w(f.write_all(&first))?;
    w(f.seek(SeekFrom::Start(gpt::BIOS_CORE_LBA * gpt::SECTOR))
        .map(|_| ()))?;
    w(f.write_all(core))?;
    w(f.seek(SeekFrom::Start(table.backup_offset)).map(|_| ()))?;
    w(f.write_all(&table.backup))?;
    for (name, img) in [("esp", esp_img), ("root-a", root_img)] {
        let part = layout.get(name).expect("layout has it");
        w(f.seek(SeekFrom::Start(part.offset)).map(|_| ()))?;
        let mut src = std::fs::File::open(img).map_err(io("reading", img))?;
        w(std::io::copy(&mut src, &mut f).map(|_| ()))?;
    }
    w(f.sync_all())
}

/// The install ISO: GRUB for BIOS and UEFI (grub-mkrescue), the install environment, the
/// payload the agent writes, and an optional seed.
fn iso(
    work: &Path,
    out: &Path,
    cfg: &ImageConfig,
    kernel: &Kernel,
    install_json: &[u8],
    epoch: u64,
) -> Result<(), BuildError> {
    let tree = work.join("iso");
    rootfs::dirs(&tree, &["boot/grub", "cairn"])?;
    rootfs::write(
        &tree,
        "boot/grub/grub.cfg",
        grub::iso_cfg(&cfg.version, &cfg.kernel_args).as_bytes(),
        0o644,
    )?;
    copy(&kernel.image, &tree.join("boot/vmlinuz"))?;
    copy(&out.join("pxe/initrd.img"), &tree.join("boot/initrd.img"))?;
    rootfs::write(&tree, "cairn/install.json", install_json, 0o644)?;
    for f in ["root.img.zst", "esp.img.zst", "mbr.bin", "core.img"] {
        copy(&out.join("pxe").join(f), &tree.join("cairn").join(f))?;
    }
    let sig = out.join("pxe").join(cairn_formats::install::SIGNATURE_FILE);
    if sig.is_file() {
        copy(
            &sig,
            &tree
                .join("cairn")
                .join(cairn_formats::install::SIGNATURE_FILE),
        )?;
    }
    if let Some(seed) = &cfg.iso_seed {
        if !seed.is_dir() {
            return Err(BuildError::Input(format!(
                "iso_seed: {} is not a directory",
                seed.display()
            )));
        }
        run("cp", args!["-r", seed, tree.join("cairn/seed")], epoch)?;
    }
    rootfs::clamp_times(&tree, epoch)?;
    let iso = out.join("installer.iso");
    let _ = std::fs::remove_file(&iso);
    // After `--`, xorriso commands: fixed volume dates, so SOURCE_DATE_EPOCH is all that counts.
    let date = time::OffsetDateTime::from_unix_timestamp(epoch as i64)
        .ok()
        .and_then(|t| {
            t.format(time::macros::format_description!(
                "[year][month][day][hour][minute][second]00"
            ))
            .ok()
        })
        .unwrap_or_else(|| "1970010100000000".into());
    run(
        "grub-mkrescue",
        args![
            "-o",
            iso,
            tree,
            "--",
            "-volid",
            "CAIRN-INSTALL",
            "-volume_date",
            "uuid",
            date,
            "-volume_date",
            "all_file_dates",
            format!("={epoch}")
        ],
        epoch,
    )?;
    fix_efi_serial(&iso, epoch)
}

/// grub-mkrescue formats its EFI boot image with `mformat`, which draws a random FAT volume
/// serial and offers no flag to set it. Overwrite it in place (nothing checksums it) with a
/// value derived from the epoch, so the ISO is reproducible.
fn fix_efi_serial(iso: &Path, epoch: u64) -> Result<(), BuildError> {
    use std::io::Read as _;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(iso)
        .map_err(io("opening", iso))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(io("reading", iso))?;
    let found = (2048..bytes.len().saturating_sub(512))
        .step_by(2048)
        .find(|&o| {
            let s = &bytes[o..o + 512];
            s[510..512] == [0x55, 0xaa] && s[0x36..0x3a] == *b"FAT1"
        });
    let Some(offset) = found else {
        return Err(BuildError::Input(
            "installer.iso: grub-mkrescue made no FAT EFI image".into(),
        ));
    };
    f.seek(SeekFrom::Start(offset as u64 + 0x27))
        .map_err(io("writing", iso))?;
    f.write_all(&(epoch as u32).to_le_bytes())
        .map_err(io("writing", iso))?;
    f.sync_all().map_err(io("writing", iso))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_formats::keys::TrustStore;

    fn unpack_payload(bundle: &Path, trust: &TrustStore, into: &Path) {
        let mut reader = std::io::BufReader::new(std::fs::File::open(bundle).unwrap());
        let header = cairn_formats::bundle::Header::read(&mut reader).unwrap();
        let verified = header.verify(trust).unwrap();
        let img = into.with_extension("img");
        let mut out = std::fs::File::create(&img).unwrap();
        let limit = verified.manifest.root_image.size;
        verified
            .write_root_image(&mut reader, &mut out, limit, |_| {})
            .unwrap();
        run(
            "unsquashfs",
            args!["-quiet", "-no-progress", "-d", into, img],
            0,
        )
        .unwrap();
    }

    /// The baked upgrade drop-in is in cairn-node's schema and names the keys it installed.
    #[test]
    fn the_image_node_config_is_in_the_node_schema() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap().public_key();
        key.write(&dir.path().join("release.pub")).unwrap();
        let config = dir.path().join("image.yaml");
        std::fs::write(
            &config,
            "profile: minimal\nversion: '1.0'\nrelease_keys: [release.pub]\n",
        )
        .unwrap();
        let root = dir.path().join("root");
        image_node_config(
            &root,
            &ImageConfig::load(&config).unwrap(),
            std::slice::from_ref(&key),
        )
        .unwrap();
        let text =
            std::fs::read_to_string(root.join(IMAGE_NODE_D).join("10-image-upgrade.yaml")).unwrap();
        let parsed: NodeConfig = serde_yaml_ng::from_str(&text).unwrap();
        let upgrade = parsed.upgrade.expect("an upgrade section");
        let installed = format!("/{IMAGE_RELEASE_KEYS}/{}.pem", key.fingerprint());
        assert_eq!(upgrade.trusted_keys, Some(vec![PathBuf::from(&installed)]));
        assert_eq!(
            upgrade.reboot_command,
            Some(vec!["reboot".into(), "-f".into()])
        );
        assert!(root.join(&installed[1..]).is_file());
        assert!(parsed.hub.is_none() && parsed.hostname.is_none(), "{text}");
    }

    /// An image that trusts release keys must be signed by one of them: unsigned, its own
    /// install environment and nodes would refuse it.
    #[test]
    fn release_keys_need_a_signing_key_among_them() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        key.public_key()
            .write(&dir.path().join("release.pub"))
            .unwrap();
        let config = dir.path().join("image.yaml");
        std::fs::write(
            &config,
            "profile: minimal\nversion: '1.0'\nrelease_keys: [release.pub]\n",
        )
        .unwrap();
        let cfg = ImageConfig::load(&config).unwrap();
        let err = release_keys(&cfg, None).unwrap_err().to_string();
        assert!(err.contains("pass --signing-key"), "{err}");
        let other = SigningKey::generate().unwrap();
        let err = release_keys(&cfg, Some(&other)).unwrap_err().to_string();
        assert!(err.contains("is not among release_keys"), "{err}");
        assert_eq!(release_keys(&cfg, Some(&key)).unwrap(), [key.public_key()]);
        // No release keys: a development build, signed or not.
        std::fs::write(&config, "profile: minimal\nversion: '1.0'\n").unwrap();
        let cfg = ImageConfig::load(&config).unwrap();
        assert!(release_keys(&cfg, None).unwrap().is_empty());
    }

    /// A derived release carries the new version and the added file, is signed, and is
    /// bit-identical when made twice from the same inputs.
    #[test]
    fn a_derived_bundle_has_the_new_version_and_files_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let tree = d.join("tree");
        rootfs::write(&tree, "etc/cairn-release", b"1.0\n", 0o644).unwrap();
        rootfs::write(&tree, "boot/vmlinuz", b"kernel 1.0", 0o644).unwrap();
        let from = d.join("build");
        std::fs::create_dir_all(&from).unwrap();
        squash(&tree, &d.join("root.img"), 1_700_000_000).unwrap();
        compress(&d.join("root.img"), &from.join("root.img.zst")).unwrap();
        std::fs::write(d.join("check.yaml"), "upgrade: {}\n").unwrap();
        let key = SigningKey::generate().unwrap();
        key.write(&d.join("release.key")).unwrap();
        let trust = TrustStore::new(vec![key.public_key()]);
        let derive_to = |out: &Path| {
            derive(&DeriveRequest {
                from: from.clone(),
                version: "1.1".into(),
                compatible_from: vec!["1.0".into()],
                add: vec![(d.join("check.yaml"), "/usr/lib/cairn/node.d/60.yaml".into())],
                out: out.to_owned(),
                signing_key: Some(SigningKey::read(&d.join("release.key")).unwrap()),
                source_date_epoch: 1_700_000_100,
            })
            .unwrap()
        };
        let m = derive_to(&d.join("one.bundle"));
        assert_eq!(m.version, "1.1");
        assert_eq!(m.compatible_from, ["1.0"]);
        derive_to(&d.join("two.bundle"));
        assert_eq!(
            std::fs::read(d.join("one.bundle")).unwrap(),
            std::fs::read(d.join("two.bundle")).unwrap(),
            "not reproducible"
        );
        let root = d.join("unpacked");
        unpack_payload(&d.join("one.bundle"), &trust, &root);
        let read = |rel: &str| std::fs::read_to_string(root.join(rel)).unwrap();
        assert_eq!(read("etc/cairn-release"), "1.1\n");
        assert!(read("etc/os-release").contains("CAIRN_VERSION=1.1\n"));
        assert_eq!(read("usr/lib/cairn/node.d/60.yaml"), "upgrade: {}\n");
        assert_eq!(read("boot/vmlinuz"), "kernel 1.0", "the rest is kept");

        let err = derive(&DeriveRequest {
            from: from.clone(),
            version: "1.2".into(),
            compatible_from: vec![],
            add: vec![(d.join("check.yaml"), "/../etc/x".into())],
            out: d.join("bad.bundle"),
            signing_key: None,
            source_date_epoch: 0,
        })
        .unwrap_err();
        assert!(err.to_string().contains("inside the image"), "{err}");
    }
}
