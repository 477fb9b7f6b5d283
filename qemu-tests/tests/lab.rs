//! `cairn-lab up/status/exec/down` against the real peers: QEMU (TCG), OpenIPMI `ipmi_sim`,
//! sushy-tools over the lab's own libvirtd (Redfish servers),
//! `ipmitool` and a network namespace. Needs root, qemu-system-x86, openipmi, ipmitool and
//! iproute2 (scripts/setup); fails with that message when they are missing.

mod common;

use cairn_test_support::poll;
use common::{LAB, TestLab};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

impl TestLab {
    fn netns(&self) -> String {
        self.status()["netns"].as_str().unwrap().to_string()
    }

    /// ipmitool against server `name`'s BMC, inside the lab namespace; the password goes
    /// through a file (`-f`), as it would for an operator.
    fn ipmitool_as(&self, name: &str, password_override: Option<&str>, args: &[&str]) -> Output {
        let password = self.bmc_password(name);
        let pwfile = self.tmp.path().join(format!("{name}.pw"));
        std::fs::write(&pwfile, password_override.unwrap_or(&password)).unwrap();
        let index: u8 = name.trim_start_matches("srv").parse().unwrap();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns(),
                "ipmitool",
                "-I",
                "lanplus",
                "-C",
                "3",
            ])
            .args([
                "-H",
                &format!("10.77.0.{}", 100 + index),
                "-U",
                "admin",
                "-f",
            ])
            .arg(&pwfile)
            .args(args)
            .output()
            .unwrap()
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// How long a lab step may take.
const LIMIT: Duration = Duration::from_secs(30);

fn cmdline(pid: u64) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .unwrap_or_default()
}

#[test]
fn ipmi_powers_servers_and_down_leaves_nothing_behind() {
    let lab = TestLab::up(2);
    let dir = lab.dir.clone();
    let netns = lab.netns();
    assert!(Path::new("/run/netns").join(&netns).exists());
    let rack = std::fs::read_to_string(dir.join("rack.yaml")).unwrap();
    assert!(
        rack.contains("ipmi://admin@10.77.0.101:623") && rack.contains("srv2"),
        "{rack}"
    );

    // Both servers start off.
    let out = lab.ipmitool_as("srv1", None, &["power", "status"]);
    assert!(
        text(&out).contains("Chassis Power is off"),
        "{}",
        text(&out)
    );

    // A one-time boot device, then power on: QEMU appears, booting the network once.
    let out = lab.ipmitool_as("srv1", None, &["chassis", "bootdev", "pxe"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(lab.server("srv1")["next_boot"], "pxe");
    let out = lab.ipmitool_as("srv1", None, &["power", "on"]);
    assert!(out.status.success(), "{}", text(&out));
    let state = lab.server("srv1");
    assert_eq!(state["power_on"], true);
    assert_eq!(
        state["next_boot"], "default",
        "the override is consumed by the power-on"
    );
    let pid = state["pid"].as_u64().expect("QEMU pid");
    let cmd = cmdline(pid);
    assert!(
        cmd.contains("qemu-system-x86_64") && cmd.contains("tcg"),
        "{cmd}"
    );
    assert!(
        cmd.contains("once=n") && cmd.contains("52:54:00:c4:00:01"),
        "{cmd}"
    );
    assert!(
        cmd.contains(&dir.join("servers/srv1/disk.raw").display().to_string()),
        "{cmd}"
    );
    let out = lab.ipmitool_as("srv1", None, &["power", "status"]);
    assert!(text(&out).contains("Chassis Power is on"), "{}", text(&out));
    assert_eq!(
        lab.server("srv2")["power_on"],
        false,
        "only srv1 was powered"
    );

    // A wrong password is refused by the BMC and changes nothing.
    let out = lab.ipmitool_as("srv2", Some("wrong-password"), &["power", "on"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert_eq!(lab.server("srv2")["power_on"], false);

    // Power off through the BMC: QEMU is gone (killed and reaped, not a zombie).
    let out = lab.ipmitool_as("srv1", None, &["power", "off"]);
    assert!(out.status.success(), "{}", text(&out));
    poll("QEMU to go", LIMIT, || {
        cmdline(pid).is_empty().then_some(())
    });
    assert_eq!(lab.server("srv1")["power_on"], false);

    // Power on again and leave it running: `down` must stop it.
    assert!(
        lab.ipmitool_as("srv2", None, &["power", "on"])
            .status
            .success()
    );
    let pid2 = lab.server("srv2")["pid"].as_u64().unwrap();
    down_leaves_nothing(lab, Some(pid2), &netns, &dir);
}

#[test]
fn a_second_up_on_a_running_lab_is_refused_and_status_needs_a_lab() {
    let lab = TestLab::up(1);
    let out = Command::new(LAB)
        .args(["up", "--servers", "1", "--dir"])
        .arg(&lab.dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("already up"), "{}", text(&out));

    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(LAB)
        .args(["status", "--dir"])
        .arg(empty.path().join("nothing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("no lab at"), "{}", text(&out));
}

/// A Redfish request to server `name`'s sushy-tools BMC with curl (the reference client),
/// inside the lab namespace; the credentials go through a curl config file, not argv.
fn redfish(
    lab: &TestLab,
    name: &str,
    password: Option<&str>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> (u16, serde_json::Value) {
    let creds = std::fs::read_to_string(lab.dir.join(format!("creds/{name}.yaml"))).unwrap();
    let real = creds
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let config = lab.tmp.path().join(format!("{name}.curl"));
    std::fs::write(
        &config,
        format!("user = \"admin:{}\"\n", password.unwrap_or(&real)),
    )
    .unwrap();
    let index: u8 = name.trim_start_matches("srv").parse().unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.netns(), "curl", "-s", "-K"])
        .arg(&config)
        .args(["-X", method, "-w", "\n%{http_code}"])
        .arg(format!("http://10.77.0.{}:8000{path}", 100 + index));
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
    )
}

/// `--bmc mixed`: srv1 gets `ipmi_sim`, srv2 sushy-tools over the lab's own libvirtd. Redfish
/// powers srv2's domain on and off; `status` sees its QEMU; `down` removes the domain, the
/// daemon, the namespace and the directory, and leaves no process behind.
#[test]
fn mixed_lab_powers_a_redfish_server_and_down_leaves_nothing_behind() {
    common::require_redfish();
    let lab = TestLab::up_with(2, &["--no-services", "--bmc", "mixed"]);
    let dir = lab.dir.clone();
    let netns = lab.netns();
    let rack = std::fs::read_to_string(dir.join("rack.yaml")).unwrap();
    assert!(
        rack.contains("ipmi://admin@10.77.0.101:623")
            && rack.contains("redfish+http://admin@10.77.0.102:8000"),
        "{rack}"
    );
    let (code, _) = redfish(
        &lab,
        "srv2",
        Some("wrong-password"),
        "GET",
        "/redfish/v1/Systems",
        None,
    );
    assert_eq!(code, 401, "a wrong password is refused");
    let (code, systems) = redfish(&lab, "srv2", None, "GET", "/redfish/v1/Systems", None);
    assert_eq!(code, 200, "{systems}");
    assert_eq!(
        systems["Members"].as_array().map(Vec::len),
        Some(1),
        "only its own domain: {systems}"
    );
    let system = systems["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        redfish(&lab, "srv2", None, "GET", &system, None).1["PowerState"],
        "Off"
    );
    assert_eq!(lab.server("srv2")["power_on"], false);

    let reset = format!("{system}/Actions/ComputerSystem.Reset");
    let (code, answer) = redfish(
        &lab,
        "srv2",
        None,
        "POST",
        &reset,
        Some(r#"{"ResetType":"On"}"#),
    );
    assert!(code < 300, "{code} {answer}");
    poll("srv2's QEMU", LIMIT, || {
        lab.server("srv2")["pid"].is_u64().then_some(())
    });
    let pid = lab.server("srv2")["pid"].as_u64().unwrap();
    let cmd = cmdline(pid);
    assert!(
        cmd.contains("qemu-system-x86_64") && cmd.contains("tcg"),
        "{cmd}"
    );
    assert!(cmd.contains("52:54:00:c4:00:02"), "{cmd}");
    assert!(
        cmd.contains(&dir.join("servers/srv2/disk.raw").display().to_string()),
        "{cmd}"
    );
    assert_eq!(
        redfish(&lab, "srv2", None, "GET", &system, None).1["PowerState"],
        "On"
    );
    assert_eq!(
        lab.server("srv1")["power_on"],
        false,
        "only srv2 was powered"
    );

    // Off through Redfish: QEMU goes (reaped by the daemon's subreaper, not a zombie).
    let (code, _) = redfish(
        &lab,
        "srv2",
        None,
        "POST",
        &reset,
        Some(r#"{"ResetType":"ForceOff"}"#),
    );
    assert!(code < 300);
    poll("srv2's QEMU to go", LIMIT, || {
        cmdline(pid).is_empty().then_some(())
    });
    assert_eq!(lab.server("srv2")["power_on"], false);

    // On again and left running: `down` must remove it with everything else.
    let (code, _) = redfish(
        &lab,
        "srv2",
        None,
        "POST",
        &reset,
        Some(r#"{"ResetType":"On"}"#),
    );
    assert!(code < 300);
    poll("srv2's QEMU", LIMIT, || {
        lab.server("srv2")["pid"].is_u64().then_some(())
    });
    let pid2 = lab.server("srv2")["pid"].as_u64().unwrap();
    down_leaves_nothing(lab, Some(pid2), &netns, &dir);
}

/// `cairn-lab down` stops the running server `qemu_pid` and removes the namespace, the lab
/// directory and every process naming it (QEMU, BMCs, libvirtd, sushy, fault proxies).
fn down_leaves_nothing(mut lab: TestLab, qemu_pid: Option<u64>, netns: &str, dir: &Path) {
    let out = lab.lab(&["down"]);
    assert!(out.status.success(), "{}", text(&out));
    let status = lab.up.wait().unwrap();
    assert!(
        status.success(),
        "cairn-lab up exited {status}: {}",
        lab.log()
    );
    if let Some(pid) = qemu_pid {
        assert!(cmdline(pid).is_empty(), "QEMU still runs after down");
    }
    assert!(
        !Path::new("/run/netns").join(netns).exists(),
        "namespace left behind"
    );
    assert!(!dir.exists(), "lab directory left behind");
    let needle = dir.display().to_string();
    let leftovers: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u64>().ok())
        .map(cmdline)
        .filter(|c| c.contains(&needle))
        .collect();
    assert!(
        leftovers.is_empty(),
        "processes still name the lab (QEMU, BMCs, libvirtd, sushy): {leftovers:?}"
    );
}

/// `up --faults FILE`: the Redfish server the file names answers through the fault proxy,
/// misbehaving as written (garbage once, a vendor identity, one-time boot overrides
/// ignored); `down` stops the proxy with the rest. A file naming an IPMI server, or a
/// server the lab lacks, or a fault without its parameter, stops `up` before anything
/// starts, naming it.
#[test]
fn up_with_faults_puts_the_proxy_in_front_of_the_named_redfish_bmc() {
    common::require_redfish();
    let files = tempfile::tempdir().unwrap();
    let refused = [
        (
            "servers:\n  srv1:\n    faults: [{kind: garbage-json}]\n",
            "server srv1 has an IPMI BMC",
        ),
        (
            "servers:\n  srv9:\n    faults: [{kind: garbage-json}]\n",
            "does not have (it has srv1, srv2)",
        ),
        (
            "servers:\n  srv2:\n    faults: [{kind: slow}]\n",
            "needs `ms`",
        ),
    ];
    for (i, (content, why)) in refused.iter().enumerate() {
        let file = files.path().join(format!("bad{i}.yaml"));
        std::fs::write(&file, content).unwrap();
        let out = Command::new(LAB)
            .args(["up", "--servers", "2", "--bmc", "mixed", "--no-services"])
            .arg("--dir")
            .arg(files.path().join("never"))
            .arg("--faults")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            !out.status.success() && text(&out).contains(why),
            "{}",
            text(&out)
        );
        assert!(!files.path().join("never/lab.json").exists());
    }

    let file = files.path().join("faults.yaml");
    std::fs::write(
        &file,
        "servers:\n  srv2:\n    identity: { manufacturer: Supermicro }\n    faults:\n      - kind: garbage-json\n        count: 1\n        paths: [/redfish/v1/Systems]\n      - kind: ignore-boot-once\n",
    )
    .unwrap();
    let lab = TestLab::up_with(
        2,
        &[
            "--no-services",
            "--bmc",
            "mixed",
            "--faults",
            file.to_str().unwrap(),
        ],
    );
    let dir = lab.dir.clone();
    let netns = lab.netns();
    let (code, garbage) = redfish(&lab, "srv2", None, "GET", "/redfish/v1/Systems", None);
    assert_eq!(
        (code, garbage),
        (200, serde_json::Value::Null),
        "not JSON, once"
    );
    let (code, systems) = redfish(&lab, "srv2", None, "GET", "/redfish/v1/Systems", None);
    assert_eq!(code, 200, "{systems}");
    let system = systems["Members"][0]["@odata.id"]
        .as_str()
        .unwrap()
        .to_string();
    let before = redfish(&lab, "srv2", None, "GET", &system, None).1;
    assert_eq!(before["Manufacturer"], "Supermicro", "{before}");
    let (code, _) = redfish(
        &lab,
        "srv2",
        None,
        "PATCH",
        &system,
        Some(r#"{"Boot":{"BootSourceOverrideEnabled":"Once","BootSourceOverrideTarget":"Pxe"}}"#),
    );
    assert_eq!(code, 204, "accepted");
    let after = redfish(&lab, "srv2", None, "GET", &system, None).1;
    assert_eq!(after["Boot"], before["Boot"], "and never applied");
    let log = std::fs::read_to_string(dir.join("servers/srv2/fault-proxy.log")).unwrap();
    assert!(
        log.contains("garbage-json") && log.contains("ignore-boot-once"),
        "{log}"
    );
    down_leaves_nothing(lab, None, &netns, &dir);
}
