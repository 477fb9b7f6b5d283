//! The lab fixture shared by the `cairn-lab` test binaries: `cairn-lab up` run as our child,
//! with the environment checked first and the lab torn down on drop.

#![allow(unreachable_pub)]
// a helper module of test binaries: `pub` is how they share it

// Each test binary compiles this module and uses a subset of it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use cairn_test_support::Poll;

pub const LAB: &str = env!("CARGO_BIN_EXE_cairn-lab");

/// The `cairn` binary built beside `cairn-lab`.
pub fn cairn() -> PathBuf {
    std::path::Path::new(LAB).with_file_name("cairn")
}

/// The minimal image, built once per set of binaries with the lab's own build step and
/// shared by every lab of the test run (a file lock keeps parallel tests to one build).
pub fn lab_image() -> PathBuf {
    let cairn = std::path::Path::new(LAB).with_file_name("cairn");
    // The image carries all three: a new build of any of them makes a new image.
    let stamp = ["cairn", "cairn-agent", "cairn-node"]
        .iter()
        .map(|name| {
            let bin = cairn.with_file_name(name);
            let meta = std::fs::metadata(&bin).unwrap_or_else(|e| {
                panic!(
                    "{} is missing ({e}): build the workspace first (cargo build --workspace)",
                    bin.display()
                )
            });
            let modified = meta.modified().unwrap();
            let secs = modified.duration_since(std::time::UNIX_EPOCH).unwrap();
            format!("{}-{}", meta.len(), secs.as_secs())
        })
        .collect::<Vec<_>>()
        .join("-");
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-images");
    std::fs::create_dir_all(&base).unwrap();
    let lock = std::fs::File::create(base.join("lock")).unwrap();
    lock.lock().unwrap();
    let out = base.join(format!("minimal-{stamp}"));
    if !out.join("manifest.json").exists() {
        // Builds of older binaries go once they are a day old (a lab started a moment ago
        // may still be serving one).
        let day = Duration::from_secs(86_400);
        for e in std::fs::read_dir(&base).unwrap().flatten() {
            let old = e
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() > day);
            if old && e.file_name().to_string_lossy().starts_with("minimal-") {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
        cairn_qemu_tests::lab::services::build_image(&cairn, &out, &base.join("build.log"))
            .unwrap_or_else(|e| panic!("building the lab image: {e:#}"));
    }
    out
}

pub fn require_environment() {
    require_tools(&[
        "qemu-system-x86_64",
        "ipmi_sim",
        "ipmitool",
        "ip",
        "dnsmasq",
    ]);
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_string())
        .unwrap();
    assert_eq!(
        uid, "0",
        "the lab tests need root (network namespaces, taps)"
    );
}

/// Redfish servers also need libvirt, tini and sushy-tools (scripts/setup).
pub fn require_redfish() {
    require_tools(&[
        "libvirtd",
        "virsh",
        "tini",
        "/opt/cairn/venv/bin/sushy-emulator",
    ]);
}

fn require_tools(tools: &[&str]) {
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(found, "{tool} is missing: run scripts/setup (as root)");
    }
}

/// A lab run by the test: `cairn-lab up` as our child, torn down on drop.
pub struct TestLab {
    pub dir: PathBuf,
    pub up: Child,
    pub tmp: tempfile::TempDir,
}

impl TestLab {
    /// A lab of BMCs and servers only (no hub, boot server or image).
    pub fn up(servers: usize) -> TestLab {
        Self::up_with(servers, &["--no-services"])
    }

    /// A lab with its hub and boot server, serving the image shared by the test run.
    pub fn up_with_services(servers: usize) -> TestLab {
        let image = lab_image();
        Self::up_with(servers, &["--artifacts", image.to_str().unwrap()])
    }

    pub fn up_with(servers: usize, extra: &[&str]) -> TestLab {
        require_environment();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("lab");
        let up = Command::new(LAB)
            .args([
                "up",
                "--servers",
                &servers.to_string(),
                "--memory-mb",
                "384",
                "--dir",
            ])
            .arg(&dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(tmp.path().join("up.log")).unwrap())
            .spawn()
            .unwrap();
        let mut lab = TestLab { dir, up, tmp };
        let log = lab.tmp.path().join("up.log");
        let log = || std::fs::read_to_string(&log).unwrap_or_default();
        let mut polling = Poll::new("the lab to be up", Duration::from_secs(120))
            .context(&log)
            .start();
        while !lab.dir.join("lab.json").exists() {
            if let Some(status) = lab.up.try_wait().unwrap() {
                panic!("cairn-lab up exited with {status}: {}", lab.log());
            }
            polling.wait();
        }
        lab
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("up.log")).unwrap_or_default()
    }

    pub fn lab(&self, args: &[&str]) -> Output {
        Command::new(LAB)
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .output()
            .unwrap()
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.lab(&["status", "--output", "json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The password the lab generated for `name`'s BMC.
    pub fn bmc_password(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.join(format!("creds/{name}.yaml"))).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix("password: "))
            .unwrap()
            .trim_matches('"')
            .to_string()
    }

    /// `ipmitool` against `name`'s BMC, as an operator would.
    pub fn ipmitool(&self, name: &str, args: &[&str]) -> Output {
        let pw = self.tmp.path().join(format!("{name}.pw"));
        std::fs::write(&pw, self.bmc_password(name)).unwrap();
        let n: u8 = name.trim_start_matches("srv").parse().unwrap();
        Command::new(LAB)
            .args(["exec", "--dir"])
            .arg(&self.dir)
            .args(["--", "ipmitool", "-I", "lanplus", "-C", "3", "-U", "admin"])
            .args(["-H", &format!("10.77.0.{}", 100 + n), "-f"])
            .arg(&pw)
            .args(args)
            .output()
            .unwrap()
    }

    /// The lab's services as `cairn-lab status` reports them (hub, boot server, media).
    pub fn services(&self) -> serde_json::Value {
        let s = self.status()["services"].clone();
        assert!(s.is_object(), "the lab runs no services: {s}");
        s
    }

    /// `cairn rack provision` for this lab, inside its namespace, JSON lines out; `extra`
    /// adds flags (a scenario's own `--install-timeout` replaces the generous default).
    pub fn provision_cmd(&self, extra: &[&str]) -> Command {
        let s = self.services();
        let mut cmd = Command::new(LAB);
        cmd.args(["exec", "--dir"])
            .arg(&self.dir)
            .arg("--")
            .arg(cairn())
            .args(["rack", "provision"])
            .arg(self.dir.join("rack.yaml"));
        for (flag, key) in [
            ("--artifacts", "artifacts"),
            ("--hub", "hub_url"),
            ("--boot-server", "boot_server_url"),
            ("--token-file", "admin_token"),
            ("--hub-ca", "hub_ca"),
        ] {
            cmd.arg(flag).arg(s[key].as_str().unwrap());
        }
        cmd.args(["--output", "json", "--register-timeout", "400"]);
        // Redfish servers boot their own seeded ISOs, with tokens minted for the lab's site;
        // the lab's disks are the lab's, so a re-run may overwrite a half-written one. The
        // lab's Redfish BMCs (sushy-tools) speak plain HTTP.
        cmd.args(["--site", "lab", "--allow-wipe", "--allow-insecure-redfish"]);
        // Generous for TCG under load, unless the scenario sets its own.
        if !extra.contains(&"--install-timeout") {
            cmd.args(["--install-timeout", "240"]);
        }
        cmd.args(extra);
        cmd
    }

    /// Server `name`'s lab state as `cairn-lab status` reports it.
    pub fn server(&self, name: &str) -> serde_json::Value {
        let status = self.status();
        status["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["spec"]["name"] == name)
            .unwrap()["state"]
            .clone()
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        if self.up.try_wait().ok().flatten().is_none() {
            let _ = self.lab(&["down"]);
            let _ = self.up.kill();
        }
        let _ = self.up.wait();
    }
}
