//! The rack scenarios of issue 8, end to end with real peers only: `cairn-lab up` (QEMU under
//! TCG, one `ipmi_sim` BMC per server, a network namespace), the lab's own `cairn-hub` and
//! `cairn boot-server` serving the minimal image, and `cairn rack provision` driving it all
//! over IPMI. A server is provisioned when the installed appliance's `cairn-node` has
//! registered with the hub.
//!
//! Scenario b provisions a Redfish server instead: sushy-tools over the lab's own libvirtd,
//! the server's seeded ISO as virtual media.
//!
//! Every scenario runs in `make test`. Needs root, QEMU, openipmi, ipmitool, sushy-tools
//! (scripts/setup) and the workspace's binaries (`cargo build --workspace`).

mod common;

use cairn_test_support::{ChildGuard, Poll};
use common::{LAB, TestLab, cairn};
use std::process::{Command, Output};
use std::time::Duration;

impl TestLab {
    fn provision(&self, extra: &[&str]) -> Output {
        self.provision_cmd(extra).output().unwrap()
    }

    /// Provisioning in the background, its output in a file; stopped if the test fails first.
    fn provision_background(&self, extra: &[&str], log: &str) -> ChildGuard {
        let out = std::fs::File::create(self.tmp.path().join(log)).unwrap();
        ChildGuard::spawn(
            self.provision_cmd(extra)
                .stdout(out.try_clone().unwrap())
                .stderr(out),
        )
        .unwrap()
    }

    /// Caps what reaches `name` over the lab segment (a token bucket on its tap, egress
    /// towards the guest), or lifts the cap with `None`: the install's payload then takes
    /// seconds to stream, however fast the image is decoded and written.
    fn cap_downlink(&self, name: &str, rate: Option<&str>) {
        let status = self.status();
        let netns = status["netns"].as_str().unwrap().to_owned();
        let tap = status["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["spec"]["name"] == name)
            .unwrap()["spec"]["tap"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut tc = Command::new("tc");
        tc.args(["-n", &netns, "qdisc"]);
        match rate {
            Some(rate) => tc
                .args(["replace", "dev", &tap, "root", "tbf", "rate", rate])
                .args(["burst", "64kbit", "latency", "2s"]),
            None => tc.args(["del", "dev", &tap, "root"]),
        };
        let out = tc.output().expect("tc (iproute2)");
        assert!(out.status.success(), "{out:?}");
    }

    /// The persisted record of `name` (rack.state.json beside the inventory).
    fn record(&self, name: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(self.dir.join("rack.state.json")).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|v| v["servers"][name].clone())
            .unwrap_or(serde_json::Value::Null)
    }

    /// Polls until `what` holds for `name`'s record (or the limit passes).
    fn wait_record(
        &self,
        name: &str,
        limit: Duration,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) {
        let what = format!("{name}: {what}");
        let context = || {
            format!(
                "record: {}\nconsole:\n{}",
                self.record(name),
                self.console(name)
            )
        };
        Poll::new(&what, limit)
            .every(Duration::from_millis(500))
            .context(&context)
            .until(|| pred(&self.record(name)).then_some(()));
    }

    /// The last lines of a server's console (all boots).
    fn console(&self, name: &str) -> String {
        let dir = self.dir.join("servers").join(name);
        let mut text = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
        text.push_str(&std::fs::read_to_string(dir.join("serial.log")).unwrap_or_default());
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The hub's view of `name` as `cairn-lab status` shows it.
    fn hub_view(&self, name: &str) -> serde_json::Value {
        self.status()["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["spec"]["name"] == name)
            .unwrap()["hub"]
            .clone()
    }
}

fn summary(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|e| e["event"] == "summary")
        .unwrap_or_else(|| {
            panic!(
                "no summary line; stdout:\n{text}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
}

fn record_of<'a>(summary: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    &summary["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["server"] == name)
        .unwrap()["record"]
}

/// `name` is provisioned, the hub knows it under the same appliance ID and it is online, and
/// its BMC now boots the disk.
fn assert_provisioned(lab: &TestLab, summary: &serde_json::Value, name: &str) {
    assert_registered(lab, summary, name);
    let server = lab.server(name);
    assert_eq!(server["next_boot"], "default", "{name}: {server}");
}

/// `name` is provisioned, the hub knows it under the same appliance ID with the serial its
/// SMBIOS reports (the one rack.yaml declares and its token was bound to), and its console
/// shows the installed disk booting.
fn assert_registered(lab: &TestLab, summary: &serde_json::Value, name: &str) {
    let rec = record_of(summary, name);
    assert_eq!(
        rec["state"]["state"],
        "provisioned",
        "{name}: {rec}\nconsole:\n{}",
        lab.console(name)
    );
    let hub = lab.hub_view(name);
    assert_eq!(hub["id"], rec["state"]["appliance_id"], "{name}: {hub}");
    assert_eq!(hub["hostname"], name);
    let status = lab.status();
    let spec = &status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spec"]["name"] == name)
        .unwrap()["spec"];
    assert_eq!(hub["inventory"]["serial"], spec["serial"], "{name}: {hub}");
    let console = lab.console(name);
    assert!(
        console.contains("cairn-beacon version=0.1.0 slot=a hub=https://10.77.0.1:8443"),
        "{name} booted its installed disk:\n{console}"
    );
}

/// c: one BMC refuses the password; its server fails at once with a clear message, and the
/// other is provisioned and registered anyway.
#[test]
fn c_wrong_bmc_password_fails_only_its_server_while_the_other_registers() {
    let lab = TestLab::up_with_services(2);
    std::fs::write(
        lab.dir.join("creds/srv2.yaml"),
        "username: admin\npassword: \"not-the-password\"\n",
    )
    .unwrap();
    let out = lab.provision(&["--parallel", "2"]);
    assert_eq!(out.status.code(), Some(1), "one server failed");
    let s = summary(&out);
    let srv2 = record_of(&s, "srv2");
    assert_eq!(srv2["state"]["state"], "failed", "{srv2}");
    assert_eq!(srv2["state"]["phase"], "inspecting");
    let reason = srv2["state"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("authentication") || reason.contains("password"),
        "{reason}"
    );
    assert_eq!(lab.server("srv2")["power_ons"], 0, "srv2 was never touched");
    assert_provisioned(&lab, &s, "srv1");
}

/// a: three servers over IPMI and PXE, in parallel, all provisioned and registered.
#[test]
fn a_three_servers_over_ipmi_and_pxe_are_provisioned_and_registered() {
    let lab = TestLab::up_with_services(3);
    let out = lab.provision(&["--parallel", "3"]);
    let s = summary(&out);
    for name in ["srv1", "srv2", "srv3"] {
        assert_provisioned(&lab, &s, name);
    }
    assert_eq!(out.status.code(), Some(0));
    // A re-run finds everything done and touches nothing.
    let again = lab.provision(&[]);
    assert_eq!(again.status.code(), Some(0));
    for name in ["srv1", "srv2", "srv3"] {
        assert_eq!(
            lab.server(name)["power_ons"],
            1,
            "{name} was not power-cycled again"
        );
    }
}

/// d: the hub is down while the appliance boots for the first time; cairn-node keeps trying
/// and registers once the hub is back, and the provisioning completes.
#[test]
fn d_hub_down_during_first_boot_then_the_node_registers_when_it_is_back() {
    let lab = TestLab::up_with_services(1);
    let mut run = lab.provision_background(&[], "provision.log");
    // Stop the hub as soon as the install is done, before the installed system boots.
    lab.wait_record("srv1", Duration::from_secs(600), "first-boot", |r| {
        r["state"]["state"] == "first-boot"
    });
    assert!(lab.lab(&["hub", "stop"]).status.success());
    // The node tries, fails, and says it will retry.
    Poll::new("the node to try the hub", Duration::from_secs(400))
        .every(Duration::from_secs(1))
        .context(&|| lab.console("srv1"))
        .until(|| {
            lab.console("srv1")
                .contains("registration failed")
                .then_some(())
        });
    assert!(
        lab.status()["hub_error"].is_string(),
        "status reports the hub down"
    );
    assert!(lab.lab(&["hub", "start"]).status.success());
    let status = run.child_mut().wait().unwrap();
    let log = std::fs::read_to_string(lab.tmp.path().join("provision.log")).unwrap();
    assert!(status.success(), "{log}\n{}", lab.console("srv1"));
    let rec = lab.record("srv1");
    assert_eq!(rec["state"]["state"], "provisioned", "{rec}");
    assert_eq!(lab.hub_view("srv1")["id"], rec["state"]["appliance_id"]);
}

/// e: the server is powered off through its BMC in the middle of writing the image. The
/// disk then holds no boot code (the agent writes it last), a re-run resumes from the
/// install and completes, and the server registers.
#[test]
fn e_power_cut_mid_install_then_a_rerun_resumes_and_completes() {
    let lab = TestLab::up_with_services(1);
    // The minimal image writes in about a second: at 24 Mbit/s its 34 MB payload streams for
    // over ten, so the cut lands while the disk is half-written, not after.
    lab.cap_downlink("srv1", Some("24mbit"));
    let mut run = lab.provision_background(
        // Long enough for the PXE boot under load; after the cut, the stall ends the run.
        &["--max-attempts", "1", "--install-timeout", "150"],
        "first.log",
    );
    lab.wait_record("srv1", Duration::from_secs(600), "writing", |r| {
        r["state"]["state"] == "installing" && r["state"]["step"] == "writing"
    });
    let off = lab.ipmitool("srv1", &["power", "off"]);
    assert!(off.status.success(), "{off:?}");
    lab.cap_downlink("srv1", None);
    let status = run.child_mut().wait().unwrap();
    assert!(!status.success(), "the cut install cannot succeed");
    let rec = lab.record("srv1");
    assert_eq!(rec["state"]["state"], "failed", "{rec}");
    assert_eq!(rec["state"]["phase"], "installing", "{rec}");
    assert!(
        rec["state"]["reason"]
            .as_str()
            .unwrap()
            .contains("stopped reporting"),
        "{rec}"
    );

    // The half-written disk cannot boot: no boot code, at most the protective MBR's code
    // that hands back to the firmware.
    let mut mbr = [0u8; 512];
    std::io::Read::read_exact(
        &mut std::fs::File::open(lab.dir.join("servers/srv1/disk.raw")).unwrap(),
        &mut mbr,
    )
    .unwrap();
    let stub = cairn_formats::gpt::NO_BOOT_CODE.len();
    assert!(
        (mbr[..stub].iter().all(|&b| b == 0) || mbr[..stub] == cairn_formats::gpt::NO_BOOT_CODE)
            && mbr[stub..440].iter().all(|&b| b == 0),
        "boot code was written before the image was complete"
    );

    let out = lab.provision(&[]);
    let s = summary(&out);
    assert_provisioned(&lab, &s, "srv1");
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let states: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "state")
        .filter_map(|e| e["detail"]["state"].as_str())
        .collect();
    assert_eq!(
        states.first(),
        Some(&"installing"),
        "the re-run resumed at the install, not from inspection: {states:?}"
    );
}

/// b: one server over Redfish virtual media. sushy-tools (over the lab's libvirtd) inserts the
/// lab's seeded ISO, the server boots it once, installs, reboots into its disk and registers;
/// afterwards Redfish itself reports the boot device back on the disk and the media ejected.
#[test]
fn b_redfish_server_is_provisioned_over_virtual_media_and_the_media_ejected() {
    common::require_redfish();
    let image = common::lab_image();
    let lab = TestLab::up_with(
        1,
        &["--artifacts", image.to_str().unwrap(), "--bmc", "redfish"],
    );
    // srv1 carries a BIOS baseline (a profile of BIOS attributes only: the shipped emulator
    // profile's firmware image is not served in the lab), applied in configuring-firmware.
    let profiles = lab.dir.join("profiles");
    std::fs::create_dir_all(&profiles).unwrap();
    std::fs::write(
        profiles.join("lab-bios.yaml"),
        "name: lab-bios\nmatch: {manufacturer: Sushy Emulator}\nbios:\n  attributes: {ProcTurboMode: Disabled}\n",
    )
    .unwrap();
    let rack = lab.dir.join("rack.yaml");
    let text = std::fs::read_to_string(&rack).unwrap();
    std::fs::write(&rack, format!("{text}    firmware_profile: lab-bios\n")).unwrap();
    let out = lab.provision(&["--profiles", profiles.to_str().unwrap()]);
    let summary = summary(&out);
    assert!(
        out.status.success(),
        "{summary}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_registered(&lab, &summary, "srv1");
    let rec = record_of(&summary, "srv1");
    assert!(
        rec["seconds"]["installing"].as_f64().unwrap_or(0.0) > 0.0,
        "{rec}"
    );
    assert!(
        rec["notes"].as_array().unwrap().iter().any(|n| n
            .as_str()
            .unwrap()
            .starts_with("firmware profile lab-bios: staged 1 attribute(s)")
            && n.as_str().unwrap().ends_with("verified")),
        "{rec}"
    );

    // What the BMC says, asked with curl as an operator would.
    let redfish = |path: &str| -> serde_json::Value {
        let out = Command::new(LAB)
            .args(["exec", "--dir"])
            .arg(&lab.dir)
            .args(["--", "curl", "-sf", "-u"])
            .arg(format!("admin:{}", lab.bmc_password("srv1")))
            .arg(format!("http://10.77.0.101:8000{path}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "GET {path}: {out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let systems = redfish("/redfish/v1/Systems");
    let system = systems["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    let boot = redfish(&system)["Boot"].clone();
    assert_eq!(boot["BootSourceOverrideTarget"], "Hdd", "{boot}");
    let bios = redfish(&format!("{system}/BIOS"));
    assert_eq!(bios["Attributes"]["ProcTurboMode"], "Disabled", "{bios}");
    let cd = redfish(&format!("{system}/VirtualMedia/Cd"));
    assert_eq!(cd["Inserted"], false, "{cd}");
    assert!(
        cd["Image"].is_null() || cd["Image"] == "",
        "media still named after the eject: {cd}"
    );

    // The ISO carried a token of its own, minted by `cairn rack provision`: single-use,
    // bound to srv1's boot MAC and to the serial rack.yaml declares (sushy reports none),
    // and spent by srv1's registration, which the hub admits only from hardware reporting
    // that serial. The hub holds no other.
    let services = lab.services();
    let tokens = Command::new(LAB)
        .args(["exec", "--dir"])
        .arg(&lab.dir)
        .arg("--")
        .arg(cairn())
        .args(["hub", "--config", services["hub_login"].as_str().unwrap()])
        .args(["--output", "json", "token", "list"])
        .output()
        .unwrap();
    assert!(tokens.status.success(), "cairn hub token list: {tokens:?}");
    let tokens: serde_json::Value = serde_json::from_slice(&tokens.stdout).unwrap();
    let status = lab.status();
    let srv1 = status["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["spec"]["name"] == "srv1")
        .unwrap();
    let mac = srv1["spec"]["mac"].as_str().unwrap().to_lowercase();
    let serial = srv1["spec"]["serial"].as_str().unwrap();
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens.len(), 1, "one token, the ISO's: {tokens:?}");
    let t = &tokens[0];
    assert_eq!(
        (
            &t["mac"],
            &t["serial"],
            &t["max_uses"],
            &t["uses"],
            &t["revoked"],
            &t["site"]
        ),
        (
            &serde_json::json!(mac),
            &serde_json::json!(serial),
            &serde_json::json!(1),
            &serde_json::json!(1),
            &serde_json::json!(false),
            &serde_json::json!("lab")
        ),
        "{t}"
    );
    // The seeded ISO is gone from the boot server's directory; nothing secret in the state.
    let media = std::path::Path::new(services["artifacts"].as_str().unwrap()).join("media");
    let left: Vec<_> = std::fs::read_dir(&media)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "seeded ISOs left behind: {left:?}");
    let state = std::fs::read_to_string(lab.dir.join("rack.state.json")).unwrap();
    assert!(
        !state.contains("cairn-et.") && !state.contains("/media/"),
        "{state}"
    );
}
