//! The power-cut matrix (issue 22): a machine whose disk writes are cut at each phase of an
//! install, then powered on again under TCG. Whatever the cut, it boots the old system, the
//! new system with its seed, or nothing from its disk (on a rack the firmware then falls
//! through to PXE and the install environment), never a half-written one.
//!
//! The writer is the real install environment in a QEMU guest: the minimal image's kernel
//! and initramfs (direct boot, to skip the firmware), installing from a CD as an ISO
//! install does onto a virtio disk that holds an older install. The power goes two ways:
//! - **kill**: the disk is `cache=none` (QEMU keeps no written data of its own) and QEMU is
//!   killed (SIGKILL) as soon as the console shows the install step;
//! - **drop after a flush**: QEMU's `blkdebug` driver counts the guest's flushes and fails
//!   every write, write-zeroes and discard after the chosen one, so the disk holds exactly
//!   what that flush made durable (a disk whose cache is lost in the cut).
//!
//! After the cut the disk boots under SeaBIOS until the kernel's command line or the
//! appliance's console beacon (or SeaBIOS finds no boot code), and under OVMF where the ESP
//! decides. The cost is one guest install (20-50 s, most of it the guest kernel's start)
//! and one boot per row.
//!
//! The upgrade rows cut at boot: the disk as `cairn-node` leaves it before its reboot, the
//! power cut during the tried slot's first boot (QEMU killed, `cache=none`) or during the
//! commit's write, and the real GRUB deciding at the next power-on. The matrix with what
//! covers the other upgrade phases is in docs/images.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_formats::grubenv;
use cairn_test_support::Poll;
use cairn_vm_harness::qemu::VmBuilder;
use common::*;

/// A guest install or boot under TCG on a shared 2-core machine: tens of seconds.
const LIMIT: Duration = Duration::from_secs(300);
/// The hub the new install's seed names; the older install on the disk has no seed.
const NEW_HUB: &str = "https://hub.new.test:8443";

/// How the power goes during the install.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// SIGKILL to QEMU once the console shows the agent reporting this step.
    KillAt(&'static str),
    /// Every write after the guest's `n`th flush is dropped (0: none reaches the disk).
    DropAfterFlush(u32),
}

/// What the machine does at the next power-on.
#[derive(Debug, PartialEq, Eq)]
enum Boots {
    /// The firmware finds nothing to boot on the disk.
    Nothing,
    /// GRUB started the kernel of this slot (the power-on watched no further).
    Kernel { slot: String },
    /// An appliance came up (its console beacon): the slot GRUB chose and the hub its seed
    /// names (`none` without a seed).
    System { slot: String, hub: String },
}

/// How far a power-on is watched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// The kernel's command line: which slot GRUB chose (seconds sooner).
    Kernel,
    /// The appliance's console beacon: the root mounted, the seed read.
    Beacon,
}

#[derive(Clone, Copy)]
enum Firmware {
    Bios,
    Uefi,
}

/// The console without the agent's colour codes (`ESC [ ... letter`).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The install medium: the release's payload and signed manifest, with a seed whose plan
/// allows wiping the older install and names [`NEW_HUB`].
fn medium(dir: &Path) -> PathBuf {
    let image = minimal_image();
    let root = dir.join("medium");
    let cairn = root.join("cairn");
    std::fs::create_dir_all(cairn.join("seed")).unwrap();
    for name in [
        "install.json",
        "install.json.sig",
        "root.img.zst",
        "esp.img.zst",
        "core.img",
        "mbr.bin",
    ] {
        std::fs::copy(image.join("pxe").join(name), cairn.join(name)).unwrap();
    }
    std::fs::write(
        cairn.join("seed/install.yaml"),
        format!("wipe: true\nnode_yaml: |\n  hostname: edge-new\n  hub:\n    url: {NEW_HUB}\n"),
    )
    .unwrap();
    let iso = dir.join("medium.iso");
    let out = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-V", "CAIRN-INSTALL", "-o"])
        .arg(&iso)
        .arg(&root)
        .output()
        .expect("xorriso is needed (scripts/setup)");
    assert!(out.status.success(), "{out:?}");
    iso
}

/// A blkdebug configuration whose error rules switch on at the `n`th flush: one state per
/// flush counted, then write, write-zeroes and discard fail with EIO for good (flushes and
/// reads still pass, so the guest sees a disk that lost its writes, not a dead bus).
fn blkdebug_config(n: u32) -> String {
    let mut conf = String::new();
    for state in 1..n {
        conf.push_str(&format!(
            "[set-state]\nstate = \"{state}\"\nevent = \"flush_to_disk\"\nnew_state = \"{}\"\n\n",
            state + 1
        ));
    }
    // With n = 0 the first write itself switches the rules on.
    let (state, event) = if n == 0 {
        (1, "write_aio")
    } else {
        (n, "flush_to_disk")
    };
    for iotype in ["write", "write-zeroes", "discard"] {
        conf.push_str(&format!(
            "[inject-error]\nstate = \"{state}\"\nevent = \"{event}\"\niotype = \"{iotype}\"\nerrno = \"5\"\n\n"
        ));
    }
    conf
}

/// Runs the install environment onto `disk` until `cut`; returns its console, plain.
fn install_until(dir: &Path, disk: &Path, cut: Cut) -> String {
    let image = minimal_image();
    let iso = medium(dir);
    let drive = match cut {
        Cut::KillAt(_) => format!("file={},format=raw,if=virtio,cache=none", disk.display()),
        Cut::DropAfterFlush(n) => {
            let conf = dir.join("blkdebug.conf");
            std::fs::write(&conf, blkdebug_config(n)).unwrap();
            format!(
                "file=blkdebug:{}:{},format=raw,if=virtio,cache=none",
                conf.display(),
                disk.display()
            )
        }
    };
    let started = std::time::Instant::now();
    let mut vm = VmBuilder::new()
        .kernel(image.join("pxe/vmlinuz"))
        .initrd(image.join("pxe/initrd.img"))
        // no_timer_check: TCG on a loaded host can fail the kernel's IO-APIC timer check.
        .append("cairn.install=cdrom cairn.on_fail=poweroff no_timer_check")
        .arg("-drive")
        .arg(drive)
        .arg("-drive")
        .arg(format!("file={},media=cdrom,readonly=on", iso.display()))
        .spawn()
        .unwrap();
    match cut {
        Cut::KillAt(step) => {
            cairn_test_support::poll(&format!("install step {step}"), LIMIT, || {
                plain(&vm.serial())
                    .contains(&format!("install progress step={step} "))
                    .then_some(())
            });
            vm.kill();
        }
        // The agent meets the failed writes, tries to wipe (also failing) and exits; the
        // install environment powers off.
        Cut::DropAfterFlush(_) => {
            vm.wait_exit(LIMIT).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    let console = plain(&vm.serial());
    eprintln!("install cut {cut:?}: {:?}", started.elapsed());
    console
}

/// The install steps the agent reported, in order.
fn steps(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter_map(|l| l.split("install progress step=").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

/// Powers the machine on from `disk` and reports what came up.
fn power_on(dir: &Path, disk: &Path, firmware: Firmware, until: Until) -> Boots {
    let debugcon = dir.join("firmware.log");
    let _ = std::fs::remove_file(&debugcon);
    let mut vm = VmBuilder::new().arg("-drive").arg(format!(
        "file={},format=raw,if=virtio,cache=none",
        disk.display()
    ));
    vm = match firmware {
        // SeaBIOS logs to the debug port; with no boot code it gives up at once instead of
        // retrying (and QEMU, told not to reboot, exits).
        Firmware::Bios => vm
            .arg("-boot")
            .arg("strict=on,reboot-timeout=0")
            .arg("-chardev")
            .arg(format!("file,id=dbg,path={}", debugcon.display()))
            .arg("-device")
            .arg("isa-debugcon,iobase=0x402,chardev=dbg"),
        Firmware::Uefi => {
            let vars = dir.join("OVMF_VARS_4M.fd");
            std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
                .expect("OVMF is needed: apt-get install ovmf");
            vm.arg("-machine")
                .arg("q35")
                .arg("-drive")
                .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
                .arg("-drive")
                .arg(format!("if=pflash,format=raw,file={}", vars.display()))
        }
    };
    let started = std::time::Instant::now();
    let mut tries = 0;
    let outcome = loop {
        let vm = vm.spawn().unwrap();
        let tail = || {
            format!(
                "console:\n{}\nfirmware:\n{}",
                vm.tail(30),
                std::fs::read_to_string(&debugcon).unwrap_or_default()
            )
        };
        let outcome = Poll::new("the machine to boot or give up", LIMIT)
            .context(&tail)
            .until(|| watch(&plain(&vm.serial()), &debugcon, until));
        match outcome {
            // TCG on a loaded host can miss the kernel's timer check; a real machine reboots
            // from the panic (panic=10), QEMU here is told not to: power on again.
            None if tries < 2 => tries += 1,
            None => panic!("the kernel failed its timer check 3 times:\n{}", tail()),
            Some(outcome) => break outcome,
        }
    };
    eprintln!("power on: {outcome:?} after {:?}", started.elapsed());
    outcome
}

/// The outcome the console and the firmware log show so far: `Some(None)` for the emulator
/// failing the kernel's timer check (nothing to do with the disk).
fn watch(console: &str, debugcon: &Path, until: Until) -> Option<Option<Boots>> {
    if console.contains("IO-APIC + timer doesn't work") {
        return Some(None);
    }
    let kernel_line = console
        .split("Command line:")
        .nth(1)
        .and_then(|rest| rest.split_once('\n'))
        .map(|(line, _)| line);
    let beacon = console.lines().find(|l| l.starts_with("cairn-beacon "));
    let field = |line: &str, name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or_default()
            .to_owned()
    };
    match (until, kernel_line, beacon) {
        (Until::Kernel, Some(line), _) => {
            return Some(Some(Boots::Kernel {
                slot: field(line, "cairn.slot="),
            }));
        }
        (Until::Beacon, _, Some(line)) => {
            return Some(Some(Boots::System {
                slot: field(line, "slot="),
                hub: field(line, "hub="),
            }));
        }
        _ => {}
    }
    // A half-written system: the kernel or the initramfs finds a torn root.
    for broken in [
        "VFS: Unable to mount root",
        "Attempted to kill init",
        "cairn-initrd: ",
        "SQUASHFS error",
        "cairn: slot",
    ] {
        assert!(
            !console.contains(broken),
            "a half-written system booted ({broken}):\n{console}"
        );
    }
    let firmware = std::fs::read_to_string(debugcon).unwrap_or_default();
    (firmware.contains("No bootable device") || console.contains("BdsDxe: No bootable option"))
        .then_some(Some(Boots::Nothing))
}

/// One row: an older install on the disk, the new install cut, the machine powered on.
/// `last_step` is the last step the agent reported before the power went, which places the
/// cut between it and the next step.
fn install_row(cut: Cut, last_step: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::copy(minimal_image().join("disk.raw"), &disk).unwrap();
    let console = install_until(dir.path(), &disk, cut);
    let seen = steps(&console);
    assert_eq!(
        seen.last(),
        Some(&last_step),
        "the cut came after steps {seen:?}:\n{console}"
    );
    if let Cut::DropAfterFlush(_) = cut {
        assert!(
            console.contains("install failed"),
            "the agent never met the dropped writes:\n{console}"
        );
    }
    (dir, disk)
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> bool {
    use std::io::Read as _;
    let (mut a, mut b) = (
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(a).unwrap()),
        std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(b).unwrap()),
    );
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = a.read(&mut x).unwrap();
        let m = b.read(&mut y[..n]).unwrap();
        if n != m || x[..n] != y[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

/// `seed/node.yaml` on the disk's data filesystem (debugfs reads it without mounting).
fn seed_node_yaml(dir: &Path, disk: &Path) -> String {
    let table = cairn_formats::gpt::read(&mut std::fs::File::open(disk).unwrap()).unwrap();
    let data = table.get("data").expect("the new GPT has a data partition");
    let image = dir.join("data.img");
    // Whole: a small filesystem's block bitmaps are spread over it.
    let size = usize::try_from(data.size()).unwrap();
    std::fs::write(&image, read_at(disk, data.offset(), size)).unwrap();
    let out = Command::new("debugfs")
        .args(["-R", "cat /seed/node.yaml"])
        .arg(&image)
        .output()
        .expect("debugfs (e2fsprogs)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn install_cut_before_anything_is_durable_boots_the_old_system() {
    let (dir, disk) = install_row(Cut::DropAfterFlush(0), "DiskSelected");
    assert!(
        same_bytes(&disk, &minimal_image().join("disk.raw")),
        "a write reached the disk"
    );
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Kernel),
        Boots::Kernel { slot: "a".into() }
    );
}

#[test]
fn install_cut_at_the_gpt_boots_nothing() {
    // Flush 1 made the wipe of the old boot code, tables and partition starts durable; the
    // new GPT is lost.
    let (dir, disk) = install_row(Cut::DropAfterFlush(1), "DiskSelected");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
}

#[test]
fn install_killed_while_streaming_the_root_boots_nothing() {
    let (dir, disk) = install_row(Cut::KillAt("Writing"), "Writing");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
}

#[test]
fn install_cut_at_the_seed_boots_nothing() {
    // Flush 3 made root-a durable (verified); the seed's filesystem is lost.
    let (dir, disk) = install_row(Cut::DropAfterFlush(3), "Verified");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
}

#[test]
fn install_killed_while_writing_the_esp_boots_nothing_under_bios() {
    let (dir, disk) = install_row(Cut::KillAt("SeedWritten"), "SeedWritten");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
}

#[test]
fn install_cut_at_the_boot_code_boots_nothing_under_bios_and_the_new_system_under_uefi() {
    // Flush 5 made the seed durable, flush 6 the ESP and GRUB's BIOS core; the MBR boot
    // code, the last write, is lost. UEFI needs no MBR: the new ESP's GRUB starts the new
    // slot, with the seed already on the disk (the old ESP was wiped at flush 1).
    let (dir, disk) = install_row(Cut::DropAfterFlush(6), "SeedWritten");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Uefi, Until::Kernel),
        Boots::Kernel { slot: "a".into() }
    );
    let seed = seed_node_yaml(dir.path(), &disk);
    assert!(seed.contains(NEW_HUB), "{seed}");
}

/// A disk as `cairn-node` leaves it before the upgrade's reboot: slot b written (here the
/// same root as slot a, so either boots) and one try of it armed in both copies of the
/// boot selection (the node's own writes are tested in `node-daemon/tests/upgrade.rs`).
fn armed_for_one_try(dir: &Path) -> PathBuf {
    let disk = dir.join("disk.raw");
    std::fs::copy(minimal_image().join("disk.raw"), &disk).unwrap();
    copy_slot_a_to_b(&disk);
    let committed = get(&disk, "grubenv");
    let armed = grubenv::next_block(
        &grubenv::select(&committed, None).unwrap(),
        &[(grubenv::TRY, "b"), (grubenv::TRIES, "1")],
        &[&committed],
        committed.len(),
    )
    .unwrap();
    put(&disk, "grubenv", &armed);
    put(&disk, "grubenv.2", &armed);
    disk
}

/// The upgrade's first boot: GRUB counts the one try down and starts slot b; the power goes
/// before the node on b could pass its health checks and commit. At the next power-on no
/// try is left: GRUB records the rollback, and the old system comes up and reports the slot
/// it booted.
#[test]
fn upgrade_cut_during_the_first_boot_boots_the_old_system_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = armed_for_one_try(dir.path());
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Kernel),
        Boots::Kernel { slot: "b".into() }
    );
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::System {
            slot: "a".into(),
            hub: "none".into()
        }
    );
    // What the node reads to report "rolled back: new slot did not boot".
    for copy in ["grubenv", "grubenv.2"] {
        let vars = grubenv::parse(&get(&disk, copy)).unwrap();
        assert_eq!(vars["cairn_rolled_back"], "b", "{copy}: {vars:?}");
        assert_eq!(vars[grubenv::SLOT], "a", "{copy}: {vars:?}");
    }
}

/// The commit on the tried slot's last try: the node on b passed its checks and rewrites
/// copy 1 committing b; the power goes mid-write, its second sector never written (copy 2
/// still as GRUB's countdown left it: try b, no tries left). GRUB cannot tell a torn
/// commit from a torn disarm, so it rolls back: the old system, never a half-committed one.
#[test]
fn upgrade_commit_torn_on_the_last_try_boots_the_old_system() {
    let dir = tempfile::tempdir().unwrap();
    let disk = armed_for_one_try(dir.path());
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Kernel),
        Boots::Kernel { slot: "b".into() }
    );
    let (one, two) = (get(&disk, "grubenv"), get(&disk, "grubenv.2"));
    let mut commit = grubenv::next_block(
        &grubenv::select(&one, Some(&two)).unwrap(),
        &[
            (grubenv::SLOT, "b"),
            (grubenv::TRY, ""),
            (grubenv::TRIES, ""),
        ],
        &[&one, &two],
        one.len(),
    )
    .unwrap();
    // The old second sector (its check) under the new first one.
    commit[512..].copy_from_slice(&one[512..]);
    put(&disk, "grubenv", &commit);
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Kernel),
        Boots::Kernel { slot: "a".into() }
    );
}
