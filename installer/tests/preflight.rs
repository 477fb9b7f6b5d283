//! `cairn boot-server --preflight` against a real second DHCP server: dnsmasq in its own
//! network namespace, joined to the boot server's segment by a veth pair.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_test_support::{ChildGuard, poll};

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");

fn ip(args: &str) {
    let ok = Command::new("ip")
        .args(args.split_whitespace())
        .status()
        .expect("iproute2 is needed: apt-get install iproute2")
        .success();
    assert!(ok, "ip {args}");
}

/// Two namespaces: `lab` (bridge br0, 192.168.78.1, where the boot server runs) and `other`
/// (veth1, 192.168.78.2, where dnsmasq runs); deleted on drop.
struct Segment {
    lab: String,
    other: String,
}

impl Segment {
    fn new() -> Self {
        let pid = std::process::id();
        let seg = Self {
            lab: format!("cairn-pf-lab-{pid}"),
            other: format!("cairn-pf-dhcp-{pid}"),
        };
        ip(&format!("netns add {}", seg.lab));
        ip(&format!("netns add {}", seg.other));
        let (lab, other) = (&seg.lab, &seg.other);
        ip(&format!("-n {lab} link set lo up"));
        ip(&format!("-n {lab} link add br0 type bridge"));
        ip(&format!("-n {lab} addr add 192.168.78.1/24 dev br0"));
        ip(&format!("-n {lab} link set br0 up"));
        ip(&format!(
            "-n {lab} link add veth0 type veth peer name veth1 netns {other}"
        ));
        ip(&format!("-n {lab} link set veth0 master br0"));
        ip(&format!("-n {lab} link set veth0 up"));
        ip(&format!("-n {other} addr add 192.168.78.2/24 dev veth1"));
        ip(&format!("-n {other} link set veth1 up"));
        seg
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        for ns in [&self.lab, &self.other] {
            let _ = Command::new("ip").args(["netns", "delete", ns]).status();
        }
    }
}

/// dnsmasq in the `other` namespace, serving leases (and PXE when `boot_file` is given).
struct Dnsmasq {
    _child: ChildGuard,
}

impl Dnsmasq {
    fn start(seg: &Segment, dir: &Path, boot_file: Option<&str>) -> Self {
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &seg.other,
            "dnsmasq",
            "--keep-in-foreground",
        ])
        .args(["--conf-file=/dev/null", "--port=0", "--pid-file"])
        .args(["--interface=veth1", "--bind-interfaces"])
        .arg("--dhcp-range=192.168.78.50,192.168.78.60,1h")
        .arg(format!("--dhcp-leasefile={}", dir.join("leases").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if let Some(file) = boot_file {
            cmd.arg(format!("--dhcp-boot={file}"));
        }
        let mut child = cmd
            .spawn()
            .expect("dnsmasq is needed: apt-get install dnsmasq-base");
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            child.try_wait().unwrap().is_none(),
            "dnsmasq exited at start"
        );
        Self {
            _child: ChildGuard::new(child),
        }
    }
}

/// Runs `cairn boot-server --preflight` in the lab namespace until it exits or logs that it
/// is up (then stops it); returns (exit code if it exited, stderr).
fn boot_server(seg: &Segment, dir: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let artifacts = dir.join("artifacts");
    std::fs::create_dir_all(artifacts.join("pxe")).unwrap();
    std::fs::write(artifacts.join("pxe/ipxe.tera"), "#!ipxe\n").unwrap();
    std::fs::write(dir.join("creds.yaml"), "username: a\npassword: b\n").unwrap();
    std::fs::write(
        dir.join("rack.yaml"),
        "servers:\n  - name: s1\n    bmc: redfish+http://127.0.0.1:1\n    credentials: creds.yaml\n    boot_mac: 52:54:00:00:78:01\n",
    )
    .unwrap();
    let log = dir.join("boot-server.log");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &seg.lab,
            CAIRN,
            "boot-server",
            "--preflight",
        ])
        .arg("--artifacts")
        .arg(&artifacts)
        .args(["--interface", "br0", "--http-port", "0", "--tftp-port", "0"])
        .arg("--inventory")
        .arg(dir.join("rack.yaml"))
        .args(["--log-format", "json"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut child = ChildGuard::new(child);
    let code = poll(
        "the boot server to start or exit",
        Duration::from_secs(30),
        || {
            if let Some(status) = child.try_wait() {
                return Some(status.code());
            }
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("boot server up")
                .then(|| {
                    child.kill();
                    None
                })
        },
    );
    (code, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn preflight_detects_a_second_dhcp_server_and_refuses_a_second_pxe_server() {
    let seg = Segment::new();
    let dir = tempfile::tempdir().unwrap();

    // A plain DHCP server: proxy mode starts beside it with a warning naming it...
    let dhcp = Dnsmasq::start(&seg, dir.path(), None);
    let (code, log) = boot_server(&seg, dir.path(), &[]);
    assert_eq!(code, None, "boot server did not start:\n{log}");
    assert!(
        log.contains("another DHCP server answers") && log.contains("192.168.78.2"),
        "{log}"
    );
    // ...but leasing beside it is refused.
    let (code, log) = boot_server(
        &seg,
        dir.path(),
        &["--dhcp-range", "192.168.78.100-192.168.78.110"],
    );
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("another DHCP server (192.168.78.2)"), "{log}");
    drop(dhcp);

    // A server that offers PXE boot files: refused whatever the mode.
    let _pxe = Dnsmasq::start(&seg, dir.path(), Some("pxelinux.0"));
    let (code, log) = boot_server(&seg, dir.path(), &[]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("another PXE server (192.168.78.2)"), "{log}");
}
