//! Finding the target disk: discovery from sysfs, the target hint, and the "does this disk
//! hold data?" check. Discovery reads files only; selection and signature detection are pure.
//!
//! The install environment has no udev, so `/dev/disk/by-path` names are matched against
//! the disk's sysfs device path (`pci-0000:00:04.0` matches a disk under that PCI function).

use std::path::{Path, PathBuf};

/// A whole disk as the kernel sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskInfo {
    /// Kernel name, e.g. `vda`.
    pub name: String,
    /// Device node, e.g. `/dev/vda`.
    pub dev: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Serial number, when the device reports one.
    pub serial: Option<String>,
    /// Model, when reported.
    pub model: Option<String>,
    /// The resolved sysfs device path (for by-path matching).
    pub device_path: String,
    /// Partitions the kernel found on it.
    pub partitions: Vec<String>,
    /// Removable media (USB sticks, CD-ROMs) are never targets.
    pub removable: bool,
    /// Read-only devices are never targets.
    pub read_only: bool,
}

/// Lists whole disks under `sys/block`, skipping loop, RAM, CD-ROM and device-mapper devices.
pub fn discover(sys: &Path, dev: &Path) -> std::io::Result<Vec<DiskInfo>> {
    let mut disks = Vec::new();
    let block = sys.join("block");
    let mut names: Vec<String> = std::fs::read_dir(&block)?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    names.sort();
    for name in names {
        if ["loop", "ram", "sr", "dm-", "zram", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let dir = block.join(&name);
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        };
        let size = read("size")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
            * 512;
        if size == 0 {
            continue;
        }
        let mut partitions: Vec<String> = std::fs::read_dir(&dir)?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("partition").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        partitions.sort();
        let device_path = std::fs::canonicalize(dir.join("device"))
            .or_else(|_| std::fs::canonicalize(&dir))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        disks.push(DiskInfo {
            dev: dev.join(&name),
            size,
            serial: read("serial").or_else(|| read("device/serial")),
            model: read("device/model"),
            device_path,
            partitions,
            removable: read("removable").as_deref() == Some("1"),
            read_only: read("ro").as_deref() == Some("1"),
            name,
        });
    }
    Ok(disks)
}

/// How to choose the target: criteria joined by commas, all of which must hold, e.g.
/// `size>=100G,smallest`, `serial=S123`, `/dev/disk/by-path/pci-0000:00:04.0`, `/dev/vdb`,
/// `model=PM9A3`, `largest`. No hint means: the only eligible disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hint {
    dev: Option<String>,
    by_path: Option<String>,
    serial: Option<String>,
    model: Option<String>,
    min_size: Option<u64>,
    max_size: Option<u64>,
    pick: Option<Pick>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pick {
    Largest,
    Smallest,
}

/// Why no target was chosen.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectError {
    /// The hint could not be parsed.
    #[error("disk hint {hint:?}: {reason}")]
    BadHint {
        /// The hint text.
        hint: String,
        /// What is wrong.
        reason: String,
    },
    /// No disk matched.
    #[error("no disk matches the hint {hint:?} (disks: {seen})")]
    NoMatch {
        /// The hint text.
        hint: String,
        /// The disks considered.
        seen: String,
    },
    /// Several disks matched and the hint does not say which.
    #[error(
        "{count} disks match the hint {hint:?} ({seen}): add `largest`, `smallest`, a serial or a by-path name"
    )]
    Ambiguous {
        /// The hint text.
        hint: String,
        /// How many matched.
        count: usize,
        /// Which.
        seen: String,
    },
}

/// Parses `100G`, `512M`, `2T`, `1.5T` or plain bytes (binary multiples).
fn parse_size(text: &str) -> Option<u64> {
    let t = text.trim();
    let (num, mult) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 1u64 << 10),
        (i, 'M' | 'm') => (&t[..i], 1 << 20),
        (i, 'G' | 'g') => (&t[..i], 1 << 30),
        (i, 'T' | 't') => (&t[..i], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().ok()?;
    (v >= 0.0).then_some((v * mult as f64) as u64)
}

impl Hint {
    /// Parses a hint (see [`Hint`]).
    pub fn parse(text: &str) -> Result<Self, SelectError> {
        let bad = |reason: &str| SelectError::BadHint {
            hint: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut hint = Hint::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if let Some(p) = part
                .strip_prefix("/dev/disk/by-path/")
                .or_else(|| part.strip_prefix("by-path="))
            {
                hint.by_path = Some(p.to_owned());
            } else if let Some(d) = part.strip_prefix("/dev/") {
                hint.dev = Some(d.to_owned());
            } else if let Some(s) = part.strip_prefix("serial=") {
                hint.serial = Some(s.to_owned());
            } else if let Some(m) = part.strip_prefix("model=") {
                hint.model = Some(m.to_owned());
            } else if let Some(s) = part.strip_prefix("size>=") {
                hint.min_size = Some(parse_size(s).ok_or_else(|| bad("bad size"))?);
            } else if let Some(s) = part.strip_prefix("size<=") {
                hint.max_size = Some(parse_size(s).ok_or_else(|| bad("bad size"))?);
            } else if let Some(range) = part.strip_prefix("size=") {
                let (lo, hi) = range.split_once('-').ok_or_else(|| bad("size=MIN-MAX"))?;
                hint.min_size = Some(parse_size(lo).ok_or_else(|| bad("bad size"))?);
                hint.max_size = Some(parse_size(hi).ok_or_else(|| bad("bad size"))?);
            } else if part == "largest" {
                hint.pick = Some(Pick::Largest);
            } else if part == "smallest" {
                hint.pick = Some(Pick::Smallest);
            } else {
                return Err(bad(&format!(
                    "unknown criterion {part:?} (use /dev/NAME, /dev/disk/by-path/..., serial=, model=, size>=, size<=, size=MIN-MAX, largest, smallest)"
                )));
            }
        }
        Ok(hint)
    }

    fn matches(&self, d: &DiskInfo) -> bool {
        let by_path_ok = self.by_path.as_deref().is_none_or(|p| {
            // udev's path_id names start with the PCI function: `pci-0000:00:04.0[-...]`.
            let pci = p.strip_prefix("pci-").unwrap_or(p);
            let pci = pci.split('-').next().unwrap_or(pci);
            d.device_path.split('/').any(|c| c == pci)
        });
        by_path_ok
            && self.dev.as_deref().is_none_or(|n| d.name == n)
            && self
                .serial
                .as_deref()
                .is_none_or(|s| d.serial.as_deref() == Some(s))
            && self
                .model
                .as_deref()
                .is_none_or(|m| d.model.as_deref().is_some_and(|dm| dm.contains(m)))
            && self.min_size.is_none_or(|min| d.size >= min)
            && self.max_size.is_none_or(|max| d.size <= max)
    }
}

fn describe(disks: &[&DiskInfo]) -> String {
    if disks.is_empty() {
        return "none".into();
    }
    disks
        .iter()
        .map(|d| {
            format!(
                "{} {} GiB{}",
                d.name,
                d.size >> 30,
                d.serial
                    .as_deref()
                    .map(|s| format!(" serial {s}"))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Picks the target among `disks` by `hint` (removable and read-only disks never qualify).
pub fn select<'a>(
    disks: &'a [DiskInfo],
    hint: &Hint,
    hint_text: &str,
) -> Result<&'a DiskInfo, SelectError> {
    let eligible: Vec<&DiskInfo> = disks
        .iter()
        .filter(|d| !d.removable && !d.read_only)
        .collect();
    let mut matching: Vec<&DiskInfo> = eligible
        .iter()
        .copied()
        .filter(|d| hint.matches(d))
        .collect();
    match hint.pick {
        Some(Pick::Largest) => matching.sort_by_key(|d| std::cmp::Reverse(d.size)),
        Some(Pick::Smallest) => matching.sort_by_key(|d| d.size),
        None if matching.len() > 1 => {
            return Err(SelectError::Ambiguous {
                hint: hint_text.to_owned(),
                count: matching.len(),
                seen: describe(&matching),
            });
        }
        None => {}
    }
    matching
        .first()
        .copied()
        .ok_or_else(|| SelectError::NoMatch {
            hint: hint_text.to_owned(),
            seen: describe(&eligible),
        })
}

/// Names of the partition tables and filesystems whose signatures appear in `head` (the
/// first 68 KiB of a device). Empty means the disk looks blank.
pub fn signatures(head: &[u8]) -> Vec<&'static str> {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    let mut found = Vec::new();
    if at(512, b"EFI PART") {
        found.push("GPT partition table");
    } else if at(510, &[0x55, 0xaa])
        && (0..4).any(|i| head.get(446 + i * 16 + 4).is_some_and(|t| *t != 0))
    {
        found.push("MBR partition table");
    }
    if at(1080, &[0x53, 0xef]) {
        found.push("ext2/3/4 filesystem");
    }
    if at(0, b"hsqs") {
        found.push("squashfs filesystem");
    }
    if at(0, b"XFSB") {
        found.push("XFS filesystem");
    }
    if at(65600, b"_BHRfS_M") {
        found.push("btrfs filesystem");
    }
    if at(0x36, b"FAT") || at(0x52, b"FAT32") {
        found.push("FAT filesystem");
    }
    if at(32769, b"CD001") {
        found.push("ISO 9660 filesystem");
    }
    if at(512, b"LABELONE") {
        found.push("LVM physical volume");
    }
    if at(4086, b"SWAPSPACE2") {
        found.push("swap space");
    }
    found
}

/// Bytes to read for [`signatures`].
pub const SIGNATURE_BYTES: usize = 68 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64, serial: &str, pci: &str) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            dev: PathBuf::from("/dev").join(name),
            size: gib << 30,
            serial: Some(serial.into()),
            model: Some("QEMU HARDDISK".into()),
            device_path: format!("/sys/devices/pci0000:00/{pci}/virtio2"),
            partitions: vec![],
            removable: false,
            read_only: false,
        }
    }

    fn pick(disks: &[DiskInfo], hint: &str) -> Result<String, SelectError> {
        select(disks, &Hint::parse(hint)?, hint).map(|d| d.name.clone())
    }

    #[test]
    fn hints_choose_the_disk_a_technician_means() {
        let mut usb = disk("sdz", 16, "USB1", "0000:00:1d.0");
        usb.removable = true;
        let disks = vec![
            disk("vda", 10, "SMALL", "0000:00:04.0"),
            disk("vdb", 100, "BIG", "0000:00:05.0"),
            disk("vdc", 50, "MID", "0000:00:06.0"),
            usb,
        ];
        assert_eq!(pick(&disks, "largest").unwrap(), "vdb");
        assert_eq!(pick(&disks, "smallest").unwrap(), "vda");
        assert_eq!(pick(&disks, "serial=MID").unwrap(), "vdc");
        assert_eq!(
            pick(&disks, "/dev/disk/by-path/pci-0000:00:05.0").unwrap(),
            "vdb"
        );
        assert_eq!(pick(&disks, "size=20G-60G").unwrap(), "vdc");
        assert_eq!(pick(&disks, "size>=20G,smallest").unwrap(), "vdc");
        assert_eq!(pick(&disks, "/dev/vda").unwrap(), "vda");
        assert_eq!(pick(&disks, "model=HARDDISK,largest").unwrap(), "vdb");
        // A removable disk is never chosen, even when named.
        assert!(matches!(
            pick(&disks, "serial=USB1"),
            Err(SelectError::NoMatch { .. })
        ));
        assert!(matches!(
            pick(&disks, ""),
            Err(SelectError::Ambiguous { count: 3, .. })
        ));
        assert!(matches!(
            pick(&disks, "size>=1T"),
            Err(SelectError::NoMatch { .. })
        ));
        let err = pick(&disks, "biggest").unwrap_err();
        assert!(err.to_string().contains("biggest"), "{err}");
        // One eligible disk needs no hint.
        assert_eq!(pick(&disks[..1], "").unwrap(), "vda");
    }

    #[test]
    fn signatures_find_tables_and_filesystems() {
        let blank = vec![0u8; SIGNATURE_BYTES];
        assert!(signatures(&blank).is_empty());
        let mut gpt = blank.clone();
        gpt[512..520].copy_from_slice(b"EFI PART");
        assert_eq!(signatures(&gpt), ["GPT partition table"]);
        let mut ext = blank.clone();
        ext[1080..1082].copy_from_slice(&[0x53, 0xef]);
        assert_eq!(signatures(&ext), ["ext2/3/4 filesystem"]);
        // A boot signature alone (no partition entries) is not a partition table.
        let mut mbr = blank;
        mbr[510..512].copy_from_slice(&[0x55, 0xaa]);
        assert!(signatures(&mbr).is_empty());
    }

    #[test]
    fn discovery_reads_sysfs() {
        // A sysfs tree in the shape the kernel exposes (paths and files as on a QEMU guest
        // with a virtio disk holding one partition).
        let dir = tempfile::tempdir().unwrap();
        let dev = dir
            .path()
            .join("sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
        std::fs::create_dir_all(dev.join("vda1")).unwrap();
        std::fs::write(dev.join("vda1/partition"), "1\n").unwrap();
        std::fs::write(dev.join("size"), "20971520\n").unwrap();
        std::fs::write(dev.join("serial"), "disk-1\n").unwrap();
        std::fs::write(dev.join("removable"), "0\n").unwrap();
        std::fs::write(dev.join("ro"), "0\n").unwrap();
        std::os::unix::fs::symlink(dev.parent().unwrap().parent().unwrap(), dev.join("device"))
            .unwrap();
        std::fs::create_dir_all(dir.path().join("sys/block")).unwrap();
        std::os::unix::fs::symlink(&dev, dir.path().join("sys/block/vda")).unwrap();
        let loop0 = dir.path().join("sys/block/loop0");
        std::fs::create_dir_all(&loop0).unwrap();
        std::fs::write(loop0.join("size"), "100\n").unwrap();
        let disks = discover(&dir.path().join("sys"), Path::new("/dev")).unwrap();
        assert_eq!(disks.len(), 1, "{disks:?}");
        let d = &disks[0];
        assert_eq!(d.size, 10 << 30);
        assert_eq!(d.serial.as_deref(), Some("disk-1"));
        assert_eq!(d.partitions, ["vda1"]);
        assert_eq!(d.dev, Path::new("/dev/vda"));
        assert_eq!(
            pick(&disks, "/dev/disk/by-path/pci-0000:00:04.0").unwrap(),
            "vda"
        );
    }
}
