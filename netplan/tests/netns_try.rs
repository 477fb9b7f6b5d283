//! `net try`: probes, timeout, confirm, and recovery after the trying process dies, in two
//! namespaces joined by a veth: "node" (cairn) and "hub" (the probe target behind a route).
//! Ports are fixed inside the hub namespace, which belongs to this test alone.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_test_support::{ChildGuard, poll};
use common::{Netns, Yaml, veth};

const GOOD: &str = r#"
network:
  version: 2
  ethernets:
    n0:
      addresses: [10.1.0.1/24]
      routes: [{to: 10.2.0.0/24, via: 10.1.0.2}]
"#;

/// The same, but the route to the hub is gone: the hub becomes unreachable.
const LOSES_HUB: &str = r#"
network:
  version: 2
  ethernets:
    n0:
      addresses: [10.1.0.1/24, 10.1.0.50/24]
"#;

struct Lab {
    node: Netns,
    _hub: Netns,
    _servers: Vec<ChildGuard>,
    _web_root: tempfile::TempDir,
    state: tempfile::TempDir,
    yaml: Yaml,
}

fn lab(tag: &str) -> Lab {
    let node = Netns::new(tag);
    let hub = Netns::new(&format!("{tag}h"));
    veth(&node, "n0", &hub, "h0");
    hub.ip(&["addr", "add", "10.1.0.2/24", "dev", "h0"]);
    hub.ip(&["link", "set", "h0", "up"]);
    hub.ip(&["addr", "add", "10.2.0.1/32", "dev", "lo"]);
    let tcp = hub
        .command("socat")
        .args([
            "TCP-LISTEN:7000,bind=10.2.0.1,fork,reuseaddr",
            "SYSTEM:true",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat not found: install socat (scripts/setup)");
    let web_root = tempfile::tempdir().unwrap();
    std::fs::write(web_root.path().join("index.html"), "hub\n").unwrap();
    let http = hub
        .command("python3")
        .args([
            "-m",
            "http.server",
            "8080",
            "--bind",
            "10.2.0.1",
            "--directory",
        ])
        .arg(web_root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 not found");
    let state = tempfile::tempdir().unwrap();
    let yaml = Yaml::new();
    let l = Lab {
        node,
        _hub: hub,
        _servers: vec![ChildGuard::new(tcp), ChildGuard::new(http)],
        _web_root: web_root,
        state,
        yaml,
    };
    let good = l.yaml.write("good.yaml", GOOD);
    l.node
        .net_ok(l.state.path(), &["--file", good.to_str().unwrap(), "apply"]);
    // Both servers answer through the route before the test starts.
    poll("hub servers", Duration::from_secs(20), || {
        let ok = |target: &str| {
            l.node
                .command("socat")
                .args([
                    "-T2",
                    "/dev/null",
                    &format!("TCP:{target},connect-timeout=1"),
                ])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        (ok("10.2.0.1:7000") && ok("10.2.0.1:8080")).then_some(())
    });
    l
}

impl Lab {
    fn has_hub_route(&self) -> bool {
        self.node.routes().contains("10.2.0.0/24 via 10.1.0.2")
    }
}

#[test]
fn config_that_cuts_the_probe_target_reverts_itself() {
    let l = lab("tryp");
    let bad = l.yaml.write("bad.yaml", LOSES_HUB);
    for probe in ["10.2.0.1:7000", "http://10.2.0.1:8080/"] {
        let out = l.node.net(
            l.state.path(),
            &[
                "--file",
                bad.to_str().unwrap(),
                "try",
                "--timeout",
                "60",
                "--probe",
                probe,
            ],
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("rolled back: probe {probe} failed"))
                && stdout.contains("previous state restored"),
            "{stdout}"
        );
        assert!(l.has_hub_route(), "route restored:\n{}", l.node.routes());
        assert_eq!(l.node.addrs("n0"), vec!["10.1.0.1/24"]);
        assert!(!l.state.path().join("host/checkpoint.json").exists());
    }
    // With the route kept, the same probes pass and confirm keeps the change.
    let ok = l.yaml.write(
        "ok.yaml",
        &GOOD.replace("[10.1.0.1/24]", "[10.1.0.1/24, 10.1.0.60/24]"),
    );
    let mut child = ChildGuard::new(
        l.node
            .command(env!("CARGO_BIN_EXE_cairn-net"))
            .arg("--state-dir")
            .arg(l.state.path())
            .args(["--file", ok.to_str().unwrap(), "try", "--timeout", "60"])
            .args([
                "--probe",
                "10.2.0.1:7000",
                "--probe",
                "http://10.2.0.1:8080/",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    poll("the try to apply", Duration::from_secs(30), || {
        (l.node.addrs("n0").len() == 2).then_some(())
    });
    l.node.net_ok(l.state.path(), &["confirm"]);
    let status = child.child_mut().wait().unwrap();
    assert!(status.success());
    assert_eq!(l.node.addrs("n0"), vec!["10.1.0.1/24", "10.1.0.60/24"]);
}

#[test]
fn unconfirmed_try_rolls_back_at_the_deadline() {
    let l = lab("tryt");
    let bad = l.yaml.write("bad.yaml", LOSES_HUB);
    let out = l.node.net(
        l.state.path(),
        &[
            "--file",
            bad.to_str().unwrap(),
            "--output",
            "json",
            "try",
            "--timeout",
            "2",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "rolled-back");
    assert_eq!(v["reason"], "not confirmed in time");
    assert!(l.has_hub_route());
    assert_eq!(l.node.addrs("n0"), vec!["10.1.0.1/24"]);
}

#[test]
fn pending_try_is_restored_after_the_process_dies() {
    let l = lab("tryr");
    let bad = l.yaml.write("bad.yaml", LOSES_HUB);
    let mut child = ChildGuard::new(
        l.node
            .command(env!("CARGO_BIN_EXE_cairn-net"))
            .arg("--state-dir")
            .arg(l.state.path())
            .args(["--file", bad.to_str().unwrap(), "try", "--timeout", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll("the try to apply", Duration::from_secs(30), || {
        (!l.has_hub_route() && l.state.path().join("host/checkpoint.json").exists()).then_some(())
    });
    // Standing in for a crash or reboot: the trying process vanishes without cleanup.
    // `ip netns exec` execs the binary, so the child's pid is cairn-net's.
    Command::new("kill")
        .args(["-9", &child.id().to_string()])
        .status()
        .unwrap();
    child.child_mut().wait().unwrap();
    assert!(!l.has_hub_route(), "still on the unconfirmed config");
    let out = l.node.net(l.state.path(), &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("was interrupted; previous state restored"),
        "{stderr}"
    );
    assert!(
        l.has_hub_route(),
        "last-known-good restored:\n{}",
        l.node.routes()
    );
    assert_eq!(l.node.addrs("n0"), vec!["10.1.0.1/24"]);
    assert!(!l.state.path().join("host/checkpoint.json").exists());
}
