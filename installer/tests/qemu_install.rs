//! The install path in QEMU (TCG): the minimal disk image boots to its beacon; a PXE
//! install from `cairn boot-server` in a network namespace; an ISO install under UEFI; a
//! corrupted image refused over PXE. Each installed disk is then booted on its own and must
//! send its beacon, carrying the hub URL from the seed the agent wrote.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_test_support::hub::Hub;
use cairn_test_support::{ChildGuard, Poll, workspace_bin};
use cairn_vm_harness::qemu::{Beacon, Nic, VmBuilder};
use common::*;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const LIMIT: Duration = Duration::from_secs(400);

/// The shared build plus an ISO-seeded variant (same config, with a seed on the ISO).
fn seeded_image() -> PathBuf {
    let image = minimal_image();
    let seeded = image.with_file_name(format!(
        "{}-seeded",
        image.file_name().unwrap().to_string_lossy()
    ));
    let lock = std::fs::File::create(image.with_file_name("lock-seeded")).unwrap();
    lock.lock().unwrap();
    if !seeded.join("manifest.json").exists() {
        let seed = seeded.with_extension("seed");
        std::fs::create_dir_all(&seed).unwrap();
        // A cairn-node seed (node-daemon's schema), as an operator writes it for ISO installs.
        std::fs::write(
            seed.join("node.yaml"),
            "hostname: edge-iso\nhub:\n  url: https://hub.iso.test:8443\n  ca_file: /etc/cairn/hub-ca.pem\n  token_file: /etc/cairn/enrollment-token\n",
        )
        .unwrap();
        std::fs::write(seed.join("hub-ca.pem"), "not a real CA\n").unwrap();
        std::fs::write(seed.join("enrollment-token"), "iso-token\n").unwrap();
        let config = seeded.with_extension("yaml");
        let mut text = std::fs::read_to_string(example("minimal")).unwrap();
        text.push_str(&format!("iso_seed: {}\n", seed.display()));
        std::fs::write(&config, text).unwrap();
        let (code, _, err) = run(
            CAIRN,
            &[
                "image",
                "build",
                "--config",
                config.to_str().unwrap(),
                "--out",
                seeded.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", EPOCH)],
        );
        assert_eq!(code, 0, "{err}");
    }
    seeded
}

fn ovmf_vars(dir: &Path) -> PathBuf {
    let vars = dir.join("OVMF_VARS_4M.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)
        .expect("OVMF is needed: apt-get install ovmf");
    vars
}

fn uefi(vm: VmBuilder, vars: &Path) -> VmBuilder {
    vm.arg("-machine")
        .arg("q35")
        .arg("-drive")
        .arg("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd")
        .arg("-drive")
        .arg(format!("if=pflash,format=raw,file={}", vars.display()))
}

/// Boots `disk` alone and returns the beacon line (BIOS unless `vars` is given).
fn boot_disk(disk: &Path, vars: Option<&Path>) -> String {
    let beacon = Beacon::bind().unwrap();
    let mut vm = VmBuilder::new()
        .nic(
            Nic::User {
                options: beacon.guestfwd(9),
            },
            "virtio-net-pci",
        )
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()));
    if let Some(vars) = vars {
        vm = uefi(vm, vars);
    }
    let mut vm = vm.spawn().unwrap();
    let started = Instant::now();
    let line = beacon
        .wait_line(&mut vm, LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("disk boot to beacon: {:?}", started.elapsed());
    line
}

#[test]
fn the_minimal_disk_image_boots_to_its_beacon() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::copy(image.join("disk.raw"), &disk).unwrap();
    let line = boot_disk(&disk, None);
    assert!(
        line.starts_with("cairn-beacon version=0.1.0 slot=a"),
        "{line}"
    );
}

#[test]
fn iso_install_under_uefi_then_the_disk_boots() {
    let image = seeded_image();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("target.raw");
    blank_disk(&disk, 1024);
    let vars = ovmf_vars(dir.path());
    let started = Instant::now();
    let mut vm = uefi(VmBuilder::new(), &vars)
        .memory_mb(768)
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-drive")
        .arg(format!(
            "file={},media=cdrom,readonly=on",
            image.join("installer.iso").display()
        ))
        .spawn()
        .unwrap();
    vm.wait_for_serial("install progress", LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    let status = vm.wait_exit(LIMIT).unwrap_or_else(|e| panic!("{e}"));
    let serial = vm.serial();
    assert!(
        serial.contains("installed: cairn 0.1.0"),
        "agent did not finish ({status}):\n{}",
        vm.tail(40)
    );
    eprintln!("ISO install (UEFI): {:?}", started.elapsed());
    drop(vm);
    let vars = ovmf_vars(dir.path());
    let line = boot_disk(&disk, Some(&vars));
    assert!(
        line.contains("slot=a") && line.contains("hub=https://hub.iso.test:8443"),
        "{line}"
    );
}

/// A network namespace with a bridge and one tap, deleted on drop.
struct Lab {
    ns: String,
}

impl Lab {
    fn new(tag: &str) -> Self {
        let ns = format!("cairn-{tag}-{}", std::process::id());
        let ip = |args: &str| {
            let ok = Command::new("ip")
                .args(args.split_whitespace())
                .status()
                .expect("iproute2")
                .success();
            assert!(ok, "ip {args}");
        };
        ip(&format!("netns add {ns}"));
        let lab = Self { ns: ns.clone() };
        ip(&format!("-n {ns} link set lo up"));
        ip(&format!("-n {ns} link add br0 type bridge"));
        ip(&format!("-n {ns} addr add 192.168.77.1/24 dev br0"));
        ip(&format!("-n {ns} link set br0 up"));
        ip(&format!("-n {ns} tuntap add dev tap0 mode tap"));
        ip(&format!("-n {ns} link set tap0 master br0"));
        ip(&format!("-n {ns} link set tap0 up"));
        lab
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
    }
}

/// `cairn boot-server` inside the lab namespace, with the real hub it mints each install's
/// enrollment token at; both killed and reaped on drop.
struct BootServer {
    _child: ChildGuard,
    hub: Hub,
    log: PathBuf,
}

impl BootServer {
    fn start(lab: &Lab, artifacts: &Path, dir: &Path, mac: &str) -> Self {
        std::fs::write(
            dir.join("creds.yaml"),
            "username: admin\npassword: unused\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("rack.yaml"),
            format!("servers:\n  - name: edge-1\n    bmc: redfish+http://127.0.0.1:1\n    credentials: creds.yaml\n    boot_mac: {mac}\n    disk_hint: /dev/vda\n"),
        )
        .unwrap();
        let hub = Hub::builder(workspace_bin("cairn-hub", "cairn-hub"))
            .prefix(&["ip", "netns", "exec", &lab.ns])
            .listen("192.168.77.1:0")
            .names(&["192.168.77.1"])
            .start();
        std::fs::write(dir.join("hub-ca.pem"), &hub.ca_pem).unwrap();
        std::fs::write(dir.join("operator.token"), &hub.admin_token).unwrap();
        let log = dir.join("boot-server.log");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &lab.ns,
                CAIRN,
                "boot-server",
                "--artifacts",
            ])
            .arg(artifacts)
            .args(["--interface", "br0", "--inventory"])
            .arg(dir.join("rack.yaml"))
            .args([
                "--dhcp-range",
                "192.168.77.100-192.168.77.110",
                "--hub-url",
                &hub.url,
                "--hub-ca",
            ])
            .arg(dir.join("hub-ca.pem"))
            .arg("--hub-token-file")
            .arg(dir.join("operator.token"))
            .args(["--site", "pxe", "--install-timeout", "600"])
            .args(["--on-fail", "poweroff"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let server = Self {
            _child: ChildGuard::new(child),
            hub,
            log,
        };
        Poll::new("the boot server to start", Duration::from_secs(30))
            .context(&|| server.log())
            .until(|| server.log().contains("boot server up").then_some(()));
        server
    }

    /// The log (plain text: cairn logs without colour codes when stderr is not a terminal).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

fn pxe_install(lab: &Lab, disk: &Path, mac: &str) -> (String, Duration) {
    let started = Instant::now();
    let mut vm = VmBuilder::new()
        .memory_mb(768)
        .netns(&lab.ns)
        .nic(
            Nic::Tap {
                ifname: "tap0".into(),
            },
            &format!("virtio-net-pci,mac={mac}"),
        )
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-boot")
        .arg("order=n")
        .spawn()
        .unwrap();
    vm.wait_exit(LIMIT).unwrap_or_else(|e| panic!("{e}"));
    (vm.serial(), started.elapsed())
}

#[test]
fn pxe_install_from_the_boot_server_then_the_disk_boots() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new("pxe");
    let mac = "52:54:00:ca:1b:01";
    let server = BootServer::start(&lab, &image, dir.path(), mac);
    let disk = dir.path().join("target.raw");
    blank_disk(&disk, 1024);
    let (serial, took) = pxe_install(&lab, &disk, mac);
    assert!(
        serial.contains("installed: cairn 0.1.0"),
        "serial:\n{serial}\nboot server:\n{}",
        server.log()
    );
    eprintln!("PXE install: {took:?}");
    // The console shows the kernel command line: a nonce, no enrollment token.
    assert!(
        serial.contains("cairn.nonce=") && !serial.contains("cairn-et."),
        "{serial}"
    );
    let hub_url = server.hub.url.clone();
    let log = server.log();
    for step in [
        "Started",
        "DiskSelected",
        "Partitioned",
        "Verified",
        "SeedWritten",
        "BootloaderInstalled",
        "Completed",
    ] {
        assert!(
            log.contains(&format!("step={step}")),
            "boot server saw no {step}:\n{log}"
        );
    }
    drop(server);
    drop(lab);
    let line = boot_disk(&disk, None);
    assert!(line.contains(&format!("hub={hub_url}")), "{line}");
}

#[test]
fn a_corrupted_image_is_refused_over_pxe_and_the_disk_stays_unbootable() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let artifacts = dir.path().join("artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let pxe = source_copy(&image, &artifacts);
    std::fs::rename(&pxe, artifacts.join("pxe")).unwrap();
    let payload = artifacts.join("pxe/root.img.zst");
    let mut bytes = std::fs::read(&payload).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0x10;
    std::fs::write(&payload, bytes).unwrap();
    let lab = Lab::new("bad");
    let mac = "52:54:00:ca:1b:02";
    let server = BootServer::start(&lab, &artifacts, dir.path(), mac);
    let disk = dir.path().join("target.raw");
    blank_disk(&disk, 1024);
    let (serial, _) = pxe_install(&lab, &disk, mac);
    assert!(serial.contains("install failed"), "{serial}");
    let log = server.log();
    assert!(
        log.contains("step=Failed") && log.contains("root image"),
        "{log}"
    );
    assert!(
        read_at(&disk, 0, 1 << 20).iter().all(|b| *b == 0),
        "partition table or boot code left behind"
    );
}

/// A UEFI machine whose NIC has no iPXE ROM (`romfile=`) PXE-boots like real hardware:
/// OVMF's PXE client gets `ipxe.efi` from the boot server over TFTP, iPXE then fetches its
/// script over HTTP. The agent finds an ext4 filesystem on the disk and, without the wipe
/// flag, refuses it and leaves every byte as it was.
#[test]
fn uefi_pxe_chains_through_tftp_and_a_disk_holding_a_filesystem_is_refused() {
    let image = minimal_image();
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::new("fs");
    let mac = "52:54:00:ca:1b:03";
    let server = BootServer::start(&lab, &image, dir.path(), mac);
    let disk = dir.path().join("target.raw");
    blank_disk(&disk, 1024);
    let mkfs = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "precious"])
        .arg(&disk)
        .status()
        .expect("mkfs.ext4 is needed: apt-get install e2fsprogs");
    assert!(mkfs.success());
    let before = read_at(&disk, 0, 4 << 20);
    let vars = ovmf_vars(dir.path());
    let started = Instant::now();
    let mut vm = uefi(VmBuilder::new(), &vars)
        .memory_mb(768)
        .netns(&lab.ns)
        .nic(
            Nic::Tap {
                ifname: "tap0".into(),
            },
            &format!("virtio-net-pci,mac={mac},romfile="),
        )
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .arg("-boot")
        .arg("order=n")
        .spawn()
        .unwrap();
    vm.wait_exit(LIMIT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("UEFI PXE via TFTP to refusal: {:?}", started.elapsed());
    let serial = vm.serial();
    assert!(
        serial.contains("NBP filename is ipxe.efi") && serial.contains("iPXE initialising devices"),
        "OVMF did not load iPXE over TFTP:\n{}",
        vm.tail(40)
    );
    assert!(
        serial.contains("holds ext2/3/4 filesystem; refusing to overwrite it"),
        "{}",
        vm.tail(40)
    );
    let log = server.log();
    assert!(
        log.contains("step=Failed") && log.contains("refusing to overwrite"),
        "{log}"
    );
    assert!(
        read_at(&disk, 0, 4 << 20) == before,
        "the refused disk was modified"
    );
}
