//! The `debian` profile end to end (slow: `make e2e`): `cairn image build` of
//! `image-build/examples/debian.yaml` (mmdebstrap from the configured mirror, 15–45 min
//! here), `cairn-agent` installs it with a seed onto a blank disk, and the disk boots in QEMU
//! (TCG) to systemd starting cairn-node, which takes its configuration from the seed (bound
//! onto `/etc/cairn` from the data partition), applies the seed's netplan and opens a TLS
//! connection to the hub the seed names: a host listener behind QEMU's user network.
//! The build is cached per `cairn` binary under the target directory, like the minimal one.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_vm_harness::qemu::{BEACON_GUEST_ADDR, Nic, VmBuilder};
use common::*;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const AGENT: &str = env!("CARGO_BIN_EXE_cairn-agent");
/// Boot to cairn-node under TCG took ~170 s by hand; generous for a loaded machine.
const BOOT_LIMIT: Duration = Duration::from_secs(900);
const MAC: &str = "52:54:00:c0:de:01";
const HUB_PORT: u16 = 8443;

/// Builds the debian image once per `cairn` binary; returns its output directory.
fn debian_image() -> PathBuf {
    let node = Path::new(CAIRN).with_file_name("cairn-node");
    assert!(
        node.is_file(),
        "the debian image carries cairn-node: cargo build -p cairn-node-daemon (same target dir)"
    );
    let m = std::fs::metadata(CAIRN).unwrap();
    let stamp = m
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cairn-images");
    std::fs::create_dir_all(&base).unwrap();
    let out = base.join(format!("debian-{}-{stamp}", m.len()));
    let lock = std::fs::File::create(base.join("lock-debian")).unwrap();
    lock.lock().unwrap();
    if !out.join("manifest.json").exists() {
        let started = Instant::now();
        let (code, _, err) = run(
            CAIRN,
            &[
                "image",
                "build",
                "--config",
                example("debian").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", EPOCH)],
        );
        assert_eq!(
            code, 0,
            "debian build failed (needs mmdebstrap and a reachable mirror):\n{err}"
        );
        eprintln!("debian image build: {:?}", started.elapsed());
    }
    out
}

/// A self-signed CA certificate (PEM), so cairn-node can build its TLS client.
fn hub_ca(dir: &Path) -> String {
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=test hub"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl (apt-get install openssl)");
    assert!(status.success());
    std::fs::read_to_string(dir.join("ca.pem")).unwrap()
}

#[test]
#[ignore = "not in CI yet: the debian image build takes 15-45 min in a debug build until issue 21 makes it fast (make e2e)"]
fn the_debian_image_installed_with_a_seed_boots_to_cairn_node_calling_its_hub() {
    let image = debian_image();
    let dir = tempfile::tempdir().unwrap();
    let source = source_copy(&image, dir.path());
    // The seed as `cairn boot-server` renders it (agent::plan::node_yaml), plus the netplan
    // an inventory carries: the debian image has no network of its own, cairn-node owns it.
    let seed = source.join("seed");
    std::fs::create_dir_all(seed.join("netplan")).unwrap();
    std::fs::write(
        seed.join("node.yaml"),
        cairn_installer::agent::plan::node_yaml(
            "edge-deb",
            &format!("https://{BEACON_GUEST_ADDR}:{HUB_PORT}"),
        ),
    )
    .unwrap();
    std::fs::write(seed.join("hub-ca.pem"), hub_ca(dir.path())).unwrap();
    std::fs::write(seed.join("enrollment-token"), "deb-token\n").unwrap();
    std::fs::write(
        seed.join("netplan/50-cairn.yaml"),
        format!(
            "network:\n  version: 2\n  ethernets:\n    lan:\n      match: {{macaddress: \"{MAC}\"}}\n      addresses: [10.0.2.15/24]\n"
        ),
    )
    .unwrap();
    let disk = dir.path().join("disk.raw");
    blank_disk(&disk, 4096);
    let (code, out, err) = run(
        AGENT,
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

    // The "hub": QEMU's guestfwd connects to this listener when it starts; what the guest
    // sends to 10.0.2.100:8443 arrives on that one connection.
    let hub = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = hub.local_addr().unwrap().port();
    let vm = VmBuilder::new()
        .memory_mb(1024)
        .nic(
            Nic::User {
                options: format!(
                    "guestfwd=tcp:{BEACON_GUEST_ADDR}:{HUB_PORT}-tcp:127.0.0.1:{port}"
                ),
            },
            &format!("virtio-net-pci,mac={MAC}"),
        )
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .spawn()
        .unwrap();
    let started = Instant::now();
    let (mut conn, _) = hub.accept().unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let mut first = [0u8; 1];
    loop {
        match conn.read(&mut first) {
            Ok(1) => break,
            Ok(_) => panic!("QEMU closed the forward; serial:\n{}", vm.tail(60)),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("reading the forward: {e}"),
        }
        assert!(
            started.elapsed() < BOOT_LIMIT,
            "cairn-node never called its hub; serial:\n{}",
            vm.tail(60)
        );
    }
    eprintln!(
        "debian disk boot to cairn-node's first hub call: {:?}",
        started.elapsed()
    );
    // Only the seed names this address: the wizard would have waited for an operator.
    assert_eq!(first[0], 0x16, "not TLS; serial:\n{}", vm.tail(60));
}
