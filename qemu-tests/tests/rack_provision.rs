//! `cairn rack provision` against the lab's real BMCs (`ipmi_sim` wired to QEMU), through
//! cairn-hardware's own IPMI client. Needs root, QEMU, openipmi (scripts/setup) and the
//! workspace's `cairn` binary (built by `cargo nextest run --workspace` / `make test`).
//!
//! Scope: no boot server runs here (the artifacts are empty placeholders and the hub address
//! is unreachable), so no install agent reports and no appliance registers; the full path
//! is `scenarios.rs`. This scenario covers the BMC side end to end: inspect over IPMI,
//! one-time PXE boot, power on (the QEMU process appears booting the network), per-server
//! failure isolation (scenario c's wrong password fails at once, clearly, while the other
//! servers proceed), bounded install waiting, and the persisted state a re-run resumes from.

mod common;

use common::{LAB, TestLab};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn cairn() -> PathBuf {
    let path = Path::new(LAB).with_file_name("cairn");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build -p cairn-installer)",
        path.display()
    );
    path
}

impl TestLab {
    /// `cairn rack provision` inside the lab namespace, where the BMCs are.
    fn provision(&self, extra: &[&str]) -> Output {
        let t = self.tmp.path();
        let artifacts = t.join("artifacts");
        std::fs::create_dir_all(artifacts.join("pxe")).unwrap();
        // Placeholders for the artifacts check only: nothing serves them until the boot
        // server exists, and the servers' PXE requests go unanswered.
        std::fs::write(artifacts.join("pxe/vmlinuz"), b"").unwrap();
        std::fs::write(artifacts.join("pxe/initrd.img"), b"").unwrap();
        std::fs::write(t.join("token"), "cairn-op.test.unused\n").unwrap();
        std::fs::write(t.join("hub-ca.pem"), "").unwrap();
        Command::new(LAB)
            .args(["exec", "--dir"])
            .arg(&self.dir)
            .arg("--")
            .arg(cairn())
            .args(["rack", "provision"])
            .arg(self.dir.join("rack.yaml"))
            .arg("--artifacts")
            .arg(&artifacts)
            .args([
                "--hub",
                "https://10.77.0.1:9/",
                "--boot-server",
                "http://10.77.0.1:9/",
            ])
            .arg("--token-file")
            .arg(t.join("token"))
            .arg("--hub-ca")
            .arg(t.join("hub-ca.pem"))
            .args([
                "--output",
                "json",
                "--max-attempts",
                "1",
                "--install-timeout",
                "15",
            ])
            .args(extra)
            .output()
            .unwrap()
    }
}

fn events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

fn final_record<'a>(events: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    let summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("summary line");
    &summary["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == name)
        .unwrap()["record"]
}

#[test]
fn provision_drives_real_bmcs_and_a_wrong_password_fails_only_its_server() {
    let lab = TestLab::up(3);
    // Scenario c: srv3's credentials file holds a wrong password.
    std::fs::write(
        lab.dir.join("creds/srv3.yaml"),
        "username: admin\npassword: \"not-the-password\"\n",
    )
    .unwrap();
    let started = Instant::now();
    let out = lab.provision(&["--parallel", "3"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "some servers failed: {stderr}");
    let ev = events(&out);

    // The wrong password fails at inspection, at once, naming the cause.
    let srv3 = final_record(&ev, "srv3");
    assert_eq!(srv3["state"]["state"], "failed", "{srv3}");
    assert_eq!(srv3["state"]["phase"], "inspecting");
    let reason = srv3["state"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("authentication") || reason.contains("password"),
        "{reason}"
    );
    assert!(
        !ev.iter()
            .any(|e| e["server"] == "srv3" && e["event"] == "note"),
        "a refused password is not retried"
    );
    assert_eq!(
        lab.server("srv3")["power_on"],
        false,
        "srv3 was never touched"
    );

    // The others went through their BMCs into the installer: one-time PXE, power on.
    for name in ["srv1", "srv2"] {
        let seen: Vec<&str> = ev
            .iter()
            .filter(|e| e["server"] == name && e["event"] == "state")
            .filter_map(|e| e["detail"]["state"].as_str())
            .collect();
        assert!(
            seen.starts_with(&[
                "inspecting",
                "configuring-firmware",
                "booting-installer",
                "installing"
            ]),
            "{name}: {seen:?}"
        );
        let state = lab.server(name);
        assert_eq!(
            state["power_on"], true,
            "{name} powered on through ipmi_sim: {state}"
        );
        assert_eq!(state["power_ons"], 1);
        let pid = state["pid"].as_u64().unwrap();
        let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap())
            .replace('\0', " ");
        assert!(
            cmd.contains("once=n"),
            "{name} booted the network once: {cmd}"
        );
        // Without a boot server the install step cannot follow the agent and says why.
        let rec = final_record(&ev, name);
        assert_eq!(rec["state"]["phase"], "installing", "{rec}");
        assert!(
            rec["state"]["reason"]
                .as_str()
                .unwrap()
                .contains("boot server"),
            "{rec}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "servers ran in parallel"
    );

    // The state file beside the inventory holds every server for the re-run.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lab.dir.join("rack.state.json")).unwrap())
            .unwrap();
    for name in ["srv1", "srv2", "srv3"] {
        assert_eq!(
            state["servers"][name]["state"]["state"], "failed",
            "{state}"
        );
    }

    // Fix srv3's password and re-run only it: it now passes inspection over IPMI.
    // The lab's generated password for srv3 is read back from its ipmi_sim config.
    let lan = std::fs::read_to_string(lab.dir.join("servers/srv3/lan.conf")).unwrap();
    let real = lan
        .lines()
        .find(|l| l.contains("\"admin\""))
        .and_then(|l| l.split('"').nth(3))
        .unwrap()
        .to_string();
    std::fs::write(
        lab.dir.join("creds/srv3.yaml"),
        format!("username: admin\npassword: \"{real}\"\n"),
    )
    .unwrap();
    let out = lab.provision(&["--only", "srv3"]);
    let ev = events(&out);
    let seen: Vec<&str> = ev
        .iter()
        .filter(|e| e["server"] == "srv3" && e["event"] == "state")
        .filter_map(|e| e["detail"]["state"].as_str())
        .collect();
    assert!(
        seen.starts_with(&["configuring-firmware", "booting-installer", "installing"]),
        "resumed after inspecting: {seen:?}"
    );
    assert_eq!(lab.server("srv3")["power_on"], true);
}
