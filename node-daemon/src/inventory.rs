//! Hardware inventory read from sysfs and procfs: DMI identity, CPUs, memory, disks, NICs.
//!
//! Both roots are parameters so tests read fixtures captured from a real machine
//! (`tests/fixtures/`). Missing files are not errors: a VM without DMI or a NIC without a
//! speed yields empty or `None` fields, never a failed registration.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use cairn_api::{Cpu, Disk, HardwareInventory, Nic};

/// Where to read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// sysfs, normally `/sys`.
    pub sys: PathBuf,
    /// procfs, normally `/proc`.
    pub proc: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Self {
            sys: "/sys".into(),
            proc: "/proc".into(),
        }
    }
}

fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Reads the whole inventory.
pub fn collect(roots: &Roots) -> HardwareInventory {
    let dmi = roots.sys.join("class/dmi/id");
    HardwareInventory {
        manufacturer: read_trimmed(&dmi.join("sys_vendor")).unwrap_or_default(),
        model: read_trimmed(&dmi.join("product_name")).unwrap_or_default(),
        serial: read_trimmed(&dmi.join("product_serial")).unwrap_or_default(),
        bios_version: read_trimmed(&dmi.join("bios_version")),
        cpus: std::fs::read_to_string(roots.proc.join("cpuinfo"))
            .map(|t| parse_cpuinfo(&t))
            .unwrap_or_default(),
        memory_bytes: std::fs::read_to_string(roots.proc.join("meminfo"))
            .ok()
            .and_then(|t| parse_mem_total(&t))
            .unwrap_or(0),
        nics: nics(&roots.sys),
        disks: disks(&roots.sys),
    }
}

/// Groups `/proc/cpuinfo` processors by socket (`physical id`).
pub fn parse_cpuinfo(text: &str) -> Vec<Cpu> {
    #[derive(Default)]
    struct Socket {
        model: String,
        cores: u32,
        threads: u32,
    }
    let mut sockets: std::collections::BTreeMap<u32, Socket> = Default::default();
    for block in text.split("\n\n").filter(|b| b.contains("processor")) {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_owned())
            })
        };
        let id = field("physical id")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let socket = sockets.entry(id).or_default();
        socket.threads += 1;
        if socket.model.is_empty() {
            socket.model = field("model name").unwrap_or_default();
        }
        if let Some(cores) = field("cpu cores").and_then(|v| v.parse().ok()) {
            socket.cores = cores;
        }
    }
    sockets
        .into_values()
        .map(|s| Cpu {
            model: s.model,
            cores: if s.cores == 0 { s.threads } else { s.cores },
            threads: s.threads,
        })
        .collect()
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Physical NICs: those with a `device` link (virtual ones such as `lo`, bridges or `ifb`
/// have none).
fn nics(sys: &Path) -> Vec<Nic> {
    entries(&sys.join("class/net"))
        .into_iter()
        .filter(|(_, path)| path.join("device").exists())
        .filter_map(|(name, path)| {
            let mac = read_trimmed(&path.join("address"))?;
            Some(Nic {
                name,
                mac,
                // The kernel reports -1 (or refuses to read) when the speed is unknown.
                speed_mbps: read_trimmed(&path.join("speed"))
                    .and_then(|s| s.parse::<i64>().ok())
                    .and_then(|s| u32::try_from(s).ok())
                    .filter(|s| *s > 0),
                link_up: read_trimmed(&path.join("operstate")).map(|s| s == "up"),
            })
        })
        .collect()
}

/// Disks from `/sys/block`, without loop, RAM, zram and device-mapper devices, which are
/// not hardware.
fn disks(sys: &Path) -> Vec<Disk> {
    const VIRTUAL: [&str; 5] = ["loop", "ram", "zram", "dm-", "md"];
    entries(&sys.join("block"))
        .into_iter()
        .filter(|(name, _)| !VIRTUAL.iter().any(|p| name.starts_with(p)))
        .map(|(name, path)| Disk {
            size_bytes: read_trimmed(&path.join("size"))
                .and_then(|s| s.parse::<u64>().ok())
                .unwrap_or(0)
                * 512,
            model: read_trimmed(&path.join("device/model")),
            serial: read_trimmed(&path.join("device/serial"))
                .or_else(|| read_trimmed(&path.join("serial"))),
            rotational: read_trimmed(&path.join("queue/rotational")).map(|r| r == "1"),
            name,
        })
        .collect()
}

/// Interfaces the wizard offers: every physical NIC, with MAC and link state.
pub fn physical_nic_names(sys: &Path) -> BTreeSet<String> {
    nics(sys).into_iter().map(|n| n.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Roots {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-vm");
        Roots {
            sys: base.join("sys"),
            proc: base.join("proc"),
        }
    }

    #[test]
    fn inventory_of_the_captured_dev_vm() {
        let inv = collect(&fixture());
        assert_eq!(inv.manufacturer, "QEMU");
        assert_eq!(inv.serial, "cairn-fixture-0001");
        assert_eq!(inv.cpus.len(), 1);
        assert_eq!(inv.cpus[0].model, "Intel(R) Xeon(R) Processor");
        assert_eq!(inv.cpus[0].threads, 2);
        assert_eq!(inv.memory_bytes, 24_684_084 * 1024);
        // lo and the ifb devices are virtual; eth0 (virtio) is the one NIC, speed unknown.
        assert_eq!(
            inv.nics,
            [Nic {
                name: "eth0".into(),
                mac: "02:fc:00:00:00:01".into(),
                speed_mbps: None,
                link_up: Some(true),
            }]
        );
        // loop and zram devices are skipped; vda carries its virtio serial.
        let names: Vec<_> = inv.disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["vda"]);
        assert_eq!(inv.disks[0].serial.as_deref(), Some("overlayblk"));
        assert!(inv.disks[0].size_bytes > 1 << 30);
    }

    #[test]
    fn cpuinfo_with_two_sockets_is_grouped() {
        let text = "processor\t: 0\nphysical id\t: 0\nmodel name\t: A\ncpu cores\t: 1\n\n\
                    processor\t: 1\nphysical id\t: 1\nmodel name\t: A\ncpu cores\t: 1\n\n";
        let cpus = parse_cpuinfo(text);
        assert_eq!(cpus.len(), 2);
        assert_eq!((cpus[1].cores, cpus[1].threads), (1, 1));
    }

    #[test]
    fn a_machine_without_sysfs_gives_an_empty_inventory_not_an_error() {
        let inv = collect(&Roots {
            sys: "/nonexistent".into(),
            proc: "/nonexistent".into(),
        });
        assert_eq!(inv, HardwareInventory::default());
    }
}
