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
//! The upgrade rows: one cuts inside a running appliance (`cairn-node` in the guest registered
//! with a real `cairn-hub`, upgrading through a campaign) during the download, halfway
//! through the slot write, right after the boot selection is armed and between the commit's
//! two copies of the boot selection, and checks what boots and what the hub shows after each
//! (a cut at a chosen write: `blkdebug` fails it and `werror=stop` freezes the guest there); two cut at boot: the disk as `cairn-node` leaves it before its
//! reboot, the power cut during the tried slot's first boot (QEMU killed, `cache=none`) or
//! during the commit's write, and the real GRUB deciding at the next power-on. The matrix is
//! in docs/images.md.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_api::UpgradePhase;
use cairn_api::hub::{
    ApplianceQuery, ApplianceView, CampaignAction, CampaignState, CampaignView, CreateCampaign,
    CreateEnrollmentToken, EnrollmentTokenView, MemberState, NewToken, Selector,
};
use cairn_formats::grubenv;
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::Trust;
use cairn_installer::agent::plan::{InstallPlan, node_yaml};
use cairn_test_support::hub::Hub;
use cairn_test_support::{Poll, workspace_bin};
use cairn_vm_harness::qemu::{BEACON_GUEST_ADDR, Nic, Vm, VmBuilder};
use common::*;

/// A guest install or boot under TCG on a shared 2-core machine: tens of seconds.
const LIMIT: Duration = Duration::from_secs(300);

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
/// allows wiping the older install (which has no seed) and names `site`'s hub and token.
fn medium(dir: &Path, site: &SiteHub) -> PathBuf {
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
    let plan = InstallPlan {
        name: "edge-new".into(),
        wipe: true,
        node_yaml: Some(node_yaml("edge-new", &SiteHub::url())),
        hub_ca: Some(site.hub.ca_pem.clone()),
        enrollment_token: Some(site.token.token.clone()),
        ..Default::default()
    };
    std::fs::write(
        cairn.join("seed/install.yaml"),
        serde_yaml_ng::to_string(&plan).unwrap(),
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
fn install_until(dir: &Path, disk: &Path, cut: Cut, site: &SiteHub) -> String {
    let image = minimal_image();
    let iso = medium(dir, site);
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

/// The machine with `disk` and `firmware`, no network (SeaBIOS logs to `firmware.log`).
fn machine(dir: &Path, disk: &Path, firmware: Firmware) -> VmBuilder {
    let debugcon = dir.join("firmware.log");
    let _ = std::fs::remove_file(&debugcon);
    let vm = VmBuilder::new().arg("-drive").arg(format!(
        "file={},format=raw,if=virtio,cache=none",
        disk.display()
    ));
    match firmware {
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
    }
}

/// Powers the machine on from `disk` and reports what came up.
fn power_on(dir: &Path, disk: &Path, firmware: Firmware, until: Until) -> Boots {
    let vm = machine(dir, disk, firmware);
    let debugcon = dir.join("firmware.log");
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

/// Powers the machine on from `disk` with its network until its hub lists it; returns the
/// hub's view of it and the console.
fn power_on_until_registered(
    dir: &Path,
    disk: &Path,
    firmware: Firmware,
    site: &SiteHub,
) -> (ApplianceView, String) {
    let vm = site.nic(machine(dir, disk, firmware)).spawn().unwrap();
    let appliance = Poll::new("the new system registered with its hub", LIMIT)
        .every(Duration::from_millis(500))
        .context(&|| plain(&vm.tail(40)))
        .until(|| site.appliances().into_iter().next());
    (appliance, plain(&vm.serial()))
}

/// One row: an older install on the disk, the new install (its seed naming a real hub) cut,
/// the machine powered on. `last_step` is the last step the agent reported before the
/// power went, which places the cut between it and the next step.
fn install_row(cut: Cut, last_step: &str) -> (tempfile::TempDir, PathBuf, SiteHub) {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::copy(minimal_image().join("disk.raw"), &disk).unwrap();
    let site = SiteHub::new(
        Hub::builder(workspace_bin("cairn-hub", "cairn-hub"))
            .names(&["127.0.0.1", BEACON_GUEST_ADDR])
            .start(),
    );
    let console = install_until(dir.path(), &disk, cut, &site);
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
    (dir, disk, site)
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
    let (dir, disk, site) = install_row(Cut::DropAfterFlush(0), "DiskSelected");
    assert!(
        same_bytes(&disk, &minimal_image().join("disk.raw")),
        "a write reached the disk"
    );
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Kernel),
        Boots::Kernel { slot: "a".into() }
    );
    site.assert_untouched();
}

#[test]
fn install_cut_at_the_gpt_boots_nothing() {
    // Flush 1 made the wipe of the old boot code, tables and partition starts durable; the
    // new GPT is lost.
    let (dir, disk, site) = install_row(Cut::DropAfterFlush(1), "DiskSelected");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
    site.assert_untouched();
}

#[test]
fn install_killed_while_streaming_the_root_boots_nothing() {
    let (dir, disk, site) = install_row(Cut::KillAt("Writing"), "Writing");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
    site.assert_untouched();
}

#[test]
fn install_cut_at_the_seed_boots_nothing() {
    // Flush 3 made root-a durable (verified); the seed's filesystem is lost.
    let (dir, disk, site) = install_row(Cut::DropAfterFlush(3), "Verified");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
    site.assert_untouched();
}

#[test]
fn install_killed_while_writing_the_esp_boots_nothing_under_bios() {
    let (dir, disk, site) = install_row(Cut::KillAt("SeedWritten"), "SeedWritten");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
    site.assert_untouched();
}

#[test]
fn install_cut_at_the_boot_code_boots_nothing_under_bios_and_the_new_system_under_uefi() {
    // Flush 5 made the seed durable, flush 6 the ESP and GRUB's BIOS core; the MBR boot
    // code, the last write, is lost. UEFI needs no MBR: the new ESP's GRUB starts the new
    // slot, with the seed already on the disk (the old ESP was wiped at flush 1).
    let (dir, disk, site) = install_row(Cut::DropAfterFlush(6), "SeedWritten");
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Beacon),
        Boots::Nothing
    );
    site.assert_untouched();
    let seed = seed_node_yaml(dir.path(), &disk);
    assert!(seed.contains(&SiteHub::url()), "{seed}");
    let (appliance, console) = power_on_until_registered(dir.path(), &disk, Firmware::Uefi, &site);
    assert!(
        console.contains(&format!(
            "cairn-beacon version=0.1.0 slot=a hub={}",
            SiteHub::url()
        )),
        "{console}"
    );
    assert_eq!(appliance.hostname, "edge-new", "{appliance:?}");
    assert_eq!(site.token_uses(), 1);
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
/// try is left: GRUB records the rollback and starts the old system's kernel (watched no
/// further: the slot a kernel boots to its appliance in the install rows).
#[test]
fn upgrade_cut_during_the_first_boot_boots_the_old_system_again() {
    let dir = tempfile::tempdir().unwrap();
    let disk = armed_for_one_try(dir.path());
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Kernel),
        Boots::Kernel { slot: "b".into() }
    );
    assert_eq!(
        power_on(dir.path(), &disk, Firmware::Bios, Until::Kernel),
        Boots::Kernel { slot: "a".into() }
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

/// The in-appliance upgrade row: the `minimal` image 0.1.0 built to trust a release key (its
/// `release_keys`, so its cairn-node installs only what that key signed), and an update
/// bundle 0.2.0 derived from it and signed by that key. Built once per set of binaries.
struct Release {
    /// `cairn image build` output of 0.1.0.
    base: PathBuf,
    /// The release key's public half (the hub trusts it too).
    key_pub: PathBuf,
    /// The signed bundle of 0.2.0.
    bundle: PathBuf,
}

fn release() -> Release {
    let cairn = Path::new(env!("CARGO_BIN_EXE_cairn"));
    // The image's root carries cairn-node only; its install environment the agent.
    let stamp: Vec<String> = ["cairn", "cairn-node", "cairn-agent"]
        .iter()
        .map(|name| {
            let m = std::fs::metadata(cairn.with_file_name(name)).unwrap_or_else(|e| {
                panic!(
                    "{name} is missing ({e}): cargo build -p cairn-node-daemon (same target dir)"
                )
            });
            let mtime = m.modified().unwrap();
            let secs = mtime
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            format!("{}-{secs}", m.len())
        })
        .collect();
    let base_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cairn-images");
    std::fs::create_dir_all(&base_dir).unwrap();
    let lock = std::fs::File::create(base_dir.join("lock-upgrade")).unwrap();
    lock.lock().unwrap();
    let dir = base_dir.join(format!("upgrade-{}", stamp.join("-")));
    let r = Release {
        base: dir.join("base"),
        key_pub: dir.join("release.key.pub"),
        bundle: dir.join("update-0.2.0.bundle"),
    };
    if dir.join("done").exists() {
        return r;
    }
    // A build for older binaries is of no more use (the disk is shared and small).
    for e in std::fs::read_dir(&base_dir).unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with("upgrade-") {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    for name in ["cairn-node", "cairn-agent"] {
        let from = cairn.with_file_name(name);
        if std::fs::hard_link(&from, bin.join(name)).is_err() {
            std::fs::copy(&from, bin.join(name)).unwrap();
        }
    }
    let key = dir.join("release.key");
    let cairn = cairn.to_str().unwrap();
    let (code, _, err) = run(
        cairn,
        &["image", "keygen", "--out", key.to_str().unwrap()],
        &[],
    );
    assert_eq!(code, 0, "{err}");
    let config = dir.join("image.yaml");
    std::fs::write(
        &config,
        "profile: minimal\nversion: 0.1.0\ncompatible_from: []\nbinaries: bin\n\
         disk:\n  size_mib: 384\n  esp_mib: 32\n  slot_mib: 96\n\
         kernel_args: console=ttyS0,115200\nrelease_keys: [release.key.pub]\n",
    )
    .unwrap();
    let (code, _, err) = run(
        cairn,
        &[
            "image",
            "build",
            "--config",
            config.to_str().unwrap(),
            "--out",
            r.base.to_str().unwrap(),
            "--signing-key",
            key.to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", EPOCH)],
    );
    assert_eq!(code, 0, "cairn image build failed:\n{err}");
    let (code, _, err) = run(
        cairn,
        &[
            "image",
            "derive",
            "--from",
            r.base.to_str().unwrap(),
            "--version",
            "0.2.0",
            "--out",
            r.bundle.to_str().unwrap(),
            "--signing-key",
            key.to_str().unwrap(),
        ],
        &[("SOURCE_DATE_EPOCH", EPOCH)],
    );
    assert_eq!(code, 0, "cairn image derive failed:\n{err}");
    std::fs::write(dir.join("done"), "").unwrap();
    r
}

/// A real hub as a site's machine reaches it (QEMU's user network relays each connection to
/// the hub's address in the seed to it), the operator's view of it, and one single-use
/// enrollment token bound to the machine's MAC, which the seed carries.
struct SiteHub {
    rt: tokio::runtime::Runtime,
    operator: HubClient,
    hub: Hub,
    token: NewToken<EnrollmentTokenView>,
}

/// The hub's address as the seed names it.
const APPLIANCE_HUB_PORT: u16 = 8443;
const APPLIANCE_MAC: &str = "52:54:00:c0:de:22";

impl SiteHub {
    fn new(hub: Hub) -> Self {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let operator = HubClient::new(&hub.url, &Trust::CaBundle(hub.ca_pem.clone()), None)
            .unwrap()
            .with_bearer(&hub.admin_token);
        let token = rt
            .block_on(operator.create_token(&CreateEnrollmentToken {
                site: "cut-site".into(),
                ttl_seconds: 3600,
                max_uses: 1,
                labels: Default::default(),
                tenant: None,
                mac: Some(APPLIANCE_MAC.into()),
                serial: None,
            }))
            .expect("minting a MAC-bound token");
        Self {
            rt,
            operator,
            hub,
            token,
        }
    }

    /// The hub's URL in the seed.
    fn url() -> String {
        format!("https://{BEACON_GUEST_ADDR}:{APPLIANCE_HUB_PORT}")
    }

    /// The machine's NIC: its MAC, and the relay to the hub.
    fn nic(&self, machine: VmBuilder) -> VmBuilder {
        let hub_port = self.hub.addr().rsplit_once(':').unwrap().1.to_owned();
        machine.nic(
            Nic::User {
                options: format!(
                    "guestfwd=tcp:{BEACON_GUEST_ADDR}:{APPLIANCE_HUB_PORT}-cmd:socat - TCP:127.0.0.1:{hub_port}"
                ),
            },
            &format!("virtio-net-pci,mac={APPLIANCE_MAC}"),
        )
    }

    /// The appliances the hub knows.
    fn appliances(&self) -> Vec<ApplianceView> {
        self.rt
            .block_on(self.operator.list_appliances(&ApplianceQuery::default()))
            .expect("listing appliances")
            .into_iter()
            .collect()
    }

    /// How many times the seed's token was used.
    fn token_uses(&self) -> u32 {
        let tokens = self
            .rt
            .block_on(self.operator.list_tokens())
            .expect("listing tokens");
        tokens
            .iter()
            .find(|t| t.id == self.token.view.id)
            .unwrap_or_else(|| panic!("the seed's token is gone: {tokens:?}"))
            .uses
    }

    /// The hub after a cut that left nothing of the new install running: no appliance, and
    /// the seed's token unused, so the install the machine falls back to can still use it.
    fn assert_untouched(&self) {
        assert_eq!(
            self.appliances(),
            vec![],
            "the hub met a half-installed machine"
        );
        assert_eq!(self.token_uses(), 0, "the seed's token was used");
    }
}

/// The appliance of the in-appliance upgrade row: its disk, how it is powered on, and its
/// hub.
struct Appliance {
    site: SiteHub,
    machine: VmBuilder,
    disk: PathBuf,
}

impl Appliance {
    /// Installs `release`'s 0.1.0 with the host's `cairn-agent` onto a blank disk, with a
    /// seed naming `site`'s hub and carrying its token.
    fn install(dir: &Path, release: &Release, site: SiteHub) -> Self {
        let source = source_copy(&release.base, dir);
        let seed = source.join("seed");
        std::fs::create_dir_all(&seed).unwrap();
        std::fs::write(
            seed.join("node.yaml"),
            node_yaml("edge-cut", &SiteHub::url()),
        )
        .unwrap();
        std::fs::write(seed.join("hub-ca.pem"), &site.hub.ca_pem).unwrap();
        std::fs::write(
            seed.join("enrollment-token"),
            format!("{}\n", site.token.token),
        )
        .unwrap();
        let disk = dir.join("disk.raw");
        blank_disk(&disk, 512);
        let (code, out, err) = run(
            env!("CARGO_BIN_EXE_cairn-agent"),
            &[
                "--source",
                source.to_str().unwrap(),
                "--target",
                disk.to_str().unwrap(),
                "--output",
                "json",
            ],
            &[],
        );
        assert_eq!(code, 0, "{out}\n{err}");
        std::fs::remove_dir_all(&source).unwrap();
        let machine = site.nic(VmBuilder::new()).qmp(true);
        Self {
            site,
            machine,
            disk,
        }
    }

    /// Powers on from the disk, `cache=none`: a kill loses exactly what the guest had not
    /// written yet.
    fn power_on(&self) -> Vm {
        self.machine
            .clone()
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio,cache=none",
                self.disk.display()
            ))
            .spawn()
            .unwrap()
    }

    /// Powers on with the power set to go as the first write reaching disk sector `sector`
    /// arrives (`blkdebug` fails it, `werror=stop` freezes the guest before it sees the
    /// error, and [`Self::cut_at_the_stop`] kills QEMU): that write is lost with everything
    /// after it. With `after_a_flush`, writes to `sector` before the guest's first flush pass:
    /// GRUB's (firmware writes carry no flush) come before the kernel's first.
    fn power_on_until_written(&self, dir: &Path, sector: u64, after_a_flush: bool) -> Vm {
        let mut conf = String::new();
        let state = if after_a_flush {
            conf.push_str(
                "[set-state]\nstate = \"1\"\nevent = \"flush_to_disk\"\nnew_state = \"2\"\n\n",
            );
            2
        } else {
            1
        };
        conf.push_str(&format!(
            "[inject-error]\nstate = \"{state}\"\nevent = \"write_aio\"\niotype = \"write\"\n\
             sector = \"{sector}\"\nerrno = \"5\"\nonce = \"off\"\n"
        ));
        let path = dir.join("cut.blkdebug");
        std::fs::write(&path, conf).unwrap();
        self.machine
            .clone()
            .arg("-drive")
            .arg(format!(
                "file=blkdebug:{}:{},format=raw,if=virtio,cache=none,werror=stop",
                path.display(),
                self.disk.display()
            ))
            .spawn()
            .unwrap()
    }

    /// Waits for the guest [`Self::power_on_until_written`] started to stop on the write it
    /// was set to fail (`what`), then cuts the power.
    fn cut_at_the_stop(vm: &mut Vm, what: &str) {
        Poll::new(what, LIMIT)
            .every(Duration::from_millis(250))
            .context(&|| plain(&vm.tail(40)))
            .until(|| {
                // QEMU makes its QMP socket a moment after it starts.
                vm.qmp(r#"{"execute":"query-status"}"#)
                    .ok()?
                    .contains("io-error")
                    .then_some(())
            });
        vm.kill();
    }

    /// The disk sector halfway through `bundle`'s root image written into slot b.
    fn middle_of_slot_b(&self, bundle: &Path) -> u64 {
        let table =
            cairn_formats::gpt::read(&mut std::fs::File::open(&self.disk).unwrap()).unwrap();
        let header =
            cairn_formats::bundle::Header::read(&mut std::fs::File::open(bundle).unwrap()).unwrap();
        let size = header.unverified_manifest().root_image.size;
        (table.get("root-b").unwrap().offset() + size / 2) / 512
    }

    /// The disk sector where the data of `name` in the ESP's `grub/` starts (a FAT
    /// filesystem: mtools names the file's first cluster, the boot sector places clusters).
    fn esp_file_sector(&self, name: &str) -> u64 {
        let table =
            cairn_formats::gpt::read(&mut std::fs::File::open(&self.disk).unwrap()).unwrap();
        let esp = table.get("esp").unwrap().offset();
        let out = Command::new("mshowfat")
            .args(["-i", &common::esp(&self.disk), &format!("::grub/{name}")])
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()
            .expect("mshowfat (mtools)");
        let text = String::from_utf8_lossy(&out.stdout);
        let cluster: u64 = text
            .split_once('<')
            .and_then(|(_, rest)| rest.split(['>', '-']).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("mshowfat: {text} {out:?}"));
        let boot = read_at(&self.disk, esp, 512);
        let u16_at = |i: usize| u64::from(u16::from_le_bytes([boot[i], boot[i + 1]]));
        let sector_size = u16_at(11);
        assert_eq!(sector_size, 512, "the ESP's sectors are 512 bytes");
        let per_cluster = u64::from(boot[13]);
        let fat_sectors = match u16_at(22) {
            0 => u64::from(u32::from_le_bytes(boot[36..40].try_into().unwrap())),
            n => n,
        };
        let root_dir_sectors = (u16_at(17) * 32).div_ceil(512);
        let data = u16_at(14) + u64::from(boot[16]) * fat_sectors + root_dir_sectors;
        esp / 512 + data + (cluster - 2) * per_cluster
    }

    /// The one appliance the hub knows, if it registered.
    fn view(&self) -> Option<ApplianceView> {
        let list = self.site.appliances();
        assert!(list.len() <= 1, "more than one appliance: {list:#?}");
        list.into_iter().next()
    }

    /// When the hub received the latest heartbeat.
    fn last_seen(&self) -> time::OffsetDateTime {
        self.view()
            .and_then(|a| a.status)
            .expect("the appliance heartbeated")
            .last_seen
    }

    /// Waits until a heartbeat received after `after` shows what `ok` accepts; `ok` may
    /// panic on a view that rules the wanted one out.
    fn wait(
        &self,
        vm: &Vm,
        what: &str,
        after: Option<time::OffsetDateTime>,
        ok: impl Fn(&ApplianceView, &cairn_api::NodeStatus) -> bool,
    ) -> ApplianceView {
        let context = || format!("hub: {:#?}\nconsole:\n{}", self.view(), plain(&vm.tail(40)));
        Poll::new(what, LIMIT)
            .every(Duration::from_millis(250))
            .context(&context)
            .until(|| {
                let a = self.view()?;
                let status = a.status.as_ref()?;
                (after.is_none_or(|t| status.last_seen > t) && ok(&a, &status.status))
                    .then_some(a.clone())
            })
    }

    fn start_campaign(&self, name: &str) {
        self.site
            .rt
            .block_on(self.site.operator.create_campaign(&CreateCampaign {
                name: name.into(),
                release: "0.2.0".into(),
                selector: Selector::default(),
                canaries: 0,
                batch_size: None,
                max_concurrency: None,
                max_failures: 0,
                window: None,
                prestage: false,
                allow_downgrade: false,
                deadline_seconds: None,
            }))
            .expect("creating a campaign");
        self.site
            .rt
            .block_on(
                self.site
                    .operator
                    .campaign_action(name, CampaignAction::Start),
            )
            .expect("starting a campaign");
    }

    fn campaign(&self, name: &str) -> CampaignView {
        self.site
            .rt
            .block_on(self.site.operator.campaign(name))
            .expect("reading a campaign")
    }

    /// Both copies of GRUB's environment on the disk's ESP, as GRUB would read them.
    fn grubenv(&self) -> [std::collections::BTreeMap<String, String>; 2] {
        ["grubenv", "grubenv.2"].map(|copy| grubenv::parse(&get(&self.disk, copy)).unwrap())
    }
}

/// How often `cairn-node` syncs a download in progress (its `CHECKPOINT_BYTES`).
const CHECKPOINT: u64 = 4 << 20;

/// The upgrade phase a heartbeat reports for 0.2.0, if any.
fn phase(status: &cairn_api::NodeStatus) -> Option<UpgradePhase> {
    status
        .upgrade
        .as_ref()
        .filter(|u| u.version == "0.2.0")
        .map(|u| u.phase)
}

/// The version and slot a heartbeat says the appliance runs.
fn runs(status: &cairn_api::NodeStatus, version: &str, slot: &str) -> bool {
    status.os_version == version && status.booted_slot.as_deref() == Some(slot)
}

/// The upgrade cut inside a running appliance, four times on one disk: `cairn-node` in a
/// QEMU guest registered with a real `cairn-hub`, a campaign ordering 0.2.0, and the power
/// cut (QEMU killed, `cache=none`) during the download, halfway through the slot write, right
/// after the boot selection was armed, and in the middle of the commit (between the two
/// copies of the boot selection), each followed by a power-on of the same disk. The hub's
/// view (heartbeats, campaign, quarantine) is checked after each.
#[test]
fn upgrade_cut_in_a_running_appliance_at_download_slot_write_arm_and_commit() {
    let started = Instant::now();
    let release = release();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::builder(workspace_bin("cairn-hub", "cairn-hub"))
        .names(&["127.0.0.1", BEACON_GUEST_ADDR])
        .init_args(&["--trusted-release-key", release.key_pub.to_str().unwrap()])
        // Heartbeats often enough to show a download under way; campaign passes soon after.
        .serve_args(&[
            "--heartbeat-interval",
            "1",
            "--campaign-check-every-ms",
            "250",
        ])
        .start();
    let app = Appliance::install(dir.path(), &release, SiteHub::new(hub));
    let sha256 = cairn_formats::stream::Digest::of_file(&release.bundle)
        .unwrap()
        .sha256;
    app.site
        .rt
        .block_on(app.site.operator.upload_release(&release.bundle, &sha256))
        .expect("adding release 0.2.0");
    let lap = |what: &str| eprintln!("{what}: {:.0?}", started.elapsed());
    lap("release built, hub up, appliance installed");

    // 1. The power goes while the bundle downloads.
    let mut vm = app.power_on();
    let first = app.wait(&vm, "0.1.0 registered and heartbeating", None, |_, s| {
        runs(s, "0.1.0", "a") && s.upgrade.is_none()
    });
    let id = first.id.to_string();
    app.start_campaign("first");
    // A report of 4 MiB or more comes after the node synced its first 4 MiB checkpoint.
    app.wait(
        &vm,
        "the first 4 MiB of the bundle downloaded",
        None,
        |_, s| {
            let downloading = s.upgrade.as_ref().is_some_and(|u| {
                u.phase == UpgradePhase::Downloading && u.bytes_done >= CHECKPOINT
            });
            assert!(
                matches!(
                    phase(s),
                    None | Some(UpgradePhase::Waiting | UpgradePhase::Downloading)
                ),
                "the download ended before a heartbeat showed it under way: {s:?}"
            );
            downloading
        },
    );
    vm.kill();
    lap("cut 1, during the download");
    let before = app.last_seen();
    let middle = app.middle_of_slot_b(&release.bundle);
    let mut vm = app.power_on_until_written(dir.path(), middle, false);
    // The old system, and the same order going on: the download is not a step that can
    // leave anything half-done on the slots.
    let after = app.wait(
        &vm,
        "0.1.0 back, the order going on",
        Some(before),
        |_, s| {
            runs(s, "0.1.0", "a")
                && matches!(
                    phase(s),
                    Some(UpgradePhase::Downloading | UpgradePhase::Writing)
                )
        },
    );
    assert_eq!(after.id, first.id);
    // The download resumed from its last checkpoint rather than from byte 0.
    let console = plain(&vm.serial());
    let from: u64 = console
        .split("download resumed from=")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the download started again from byte 0:\n{console}"));
    assert!(from >= CHECKPOINT, "resumed from byte {from}");
    lap(&format!("the download resumed from byte {from}"));
    let member = app.campaign("first").members[0].clone();
    assert_eq!(member.state, MemberState::Ordered, "{member:?}");

    // 2. The power goes halfway through the slot write: the first half of the new image is
    // on slot b, the rest is gone.
    Appliance::cut_at_the_stop(&mut vm, "the write halfway through slot b");
    lap("cut 2, halfway through the slot write");
    let console = plain(&vm.serial());
    assert!(
        console.contains("phase=Writing") && !console.contains("slot written and verified"),
        "the cut came outside the slot write:\n{console}"
    );
    let before = app.last_seen();
    let mut vm = app.power_on();
    let after = app.wait(
        &vm,
        "0.1.0 back, reporting the upgrade interrupted",
        Some(before),
        |_, s| runs(s, "0.1.0", "a") && phase(s) == Some(UpgradePhase::Interrupted),
    );
    let report = after.status.unwrap().status.upgrade.unwrap();
    assert!(
        report.reason.contains("while writing the new slot"),
        "{report:?}"
    );
    // GRUB was never told to try the half-written slot.
    for vars in app.grubenv() {
        assert_eq!(vars[grubenv::SLOT], "a", "{vars:?}");
        assert_eq!(
            vars.get(grubenv::TRY).map_or("", String::as_str),
            "",
            "{vars:?}"
        );
    }
    // The campaign stops on it, and 0.2.0 is quarantined for this appliance.
    let campaign = Poll::new("campaign first paused", LIMIT)
        .until(|| Some(app.campaign("first")).filter(|c| c.state == CampaignState::Paused));
    assert_eq!(
        campaign.members[0].state,
        MemberState::Failed,
        "{campaign:?}"
    );
    let a = app.view().unwrap();
    assert!(a.quarantined.contains_key("0.2.0"), "{a:?}");
    assert!(
        a.desired.upgrade.is_none(),
        "the failed order is withdrawn: {a:?}"
    );
    lap("interrupted on the hub");

    // A retried order goes on: an operator clears the quarantine and starts a new campaign.
    app.site
        .rt
        .block_on(app.site.operator.clear_quarantine(&id, "0.2.0"))
        .expect("clearing the quarantine");
    app.start_campaign("retry");

    // 3. The power goes right after the boot selection is armed (the node's reboot, with
    // QEMU's -no-reboot, would end the guest the same way a moment later).
    Poll::new("both copies of the boot selection armed", LIMIT)
        .every(Duration::from_millis(250))
        .context(&|| plain(&vm.tail(40)))
        .until(|| {
            app.grubenv()
                .iter()
                .all(|v| v.get(grubenv::TRY).map(String::as_str) == Some("b"))
                .then_some(())
        });
    vm.kill();
    lap("cut 3, after the arm");
    // 4. The power goes in the middle of the commit: on the tried slot, after the health
    // checks, the node has rewritten copy 1 of the boot selection (slot b, no try) and
    // synced it; its write of copy 2 is lost. (GRUB's own rewrite of both copies at this
    // power-on, before the kernel's first flush, goes through.)
    let copy2 = app.esp_file_sector("grubenv.2");
    let mut vm = app.power_on_until_written(dir.path(), copy2, true);
    Appliance::cut_at_the_stop(&mut vm, "the commit's write of boot selection copy 2");
    lap("cut 4, during the commit");
    // The hub never heard of a commit: the campaign still waits for it.
    let member = app.campaign("retry").members[0].clone();
    assert_eq!(member.state, MemberState::Ordered, "{member:?}");
    let console = plain(&vm.serial());
    assert!(
        console.contains("cairn-beacon version=0.2.0 slot=b"),
        "the cut came before the new slot ran:\n{console}"
    );
    let [one, two] = app.grubenv();
    assert_eq!(
        (
            one[grubenv::SLOT].as_str(),
            one.get(grubenv::TRY).map_or("", String::as_str)
        ),
        ("b", ""),
        "copy 1 holds the commit: {one:?}"
    );
    assert_eq!(
        two.get(grubenv::TRY).map(String::as_str),
        Some("b"),
        "copy 2 still holds the armed try: {two:?}"
    );
    let before = app.last_seen();
    let vm = app.power_on();
    // GRUB takes copy 1: slot b, committed; the node, still verifying by its record, checks
    // its health again and finishes the commit (both copies).
    app.wait(&vm, "0.2.0 committed in slot b", Some(before), |_, s| {
        runs(s, "0.2.0", "b") && phase(s) == Some(UpgradePhase::Committed)
    });
    let console = plain(&vm.serial());
    assert!(
        console.contains("cairn-beacon version=0.2.0 slot=b"),
        "{console}"
    );
    for vars in app.grubenv() {
        assert_eq!(vars[grubenv::SLOT], "b", "{vars:?}");
        assert_eq!(
            vars.get(grubenv::TRY).map_or("", String::as_str),
            "",
            "{vars:?}"
        );
    }
    let campaign = Poll::new("campaign retry completed", LIMIT)
        .until(|| Some(app.campaign("retry")).filter(|c| c.state == CampaignState::Completed));
    assert_eq!(
        campaign.members[0].state,
        MemberState::Committed,
        "{campaign:?}"
    );
    lap("committed on the hub");
    drop(vm);
}
