//! Apply, idempotence, scope and rollback against the real kernel, in fresh network
//! namespaces (veth, bridge and VXLAN exist in the host kernel; LAB.md).

mod common;

use common::{Netns, Yaml, veth};

const CONFIG: &str = r#"
network:
  version: 2
  ethernets:
    up0:
      addresses: [10.50.0.1/24]
      routes:
        - {to: 10.60.0.0/16, via: 10.50.0.254, metric: 20}
    p0: {}
  bridges:
    br0:
      interfaces: [p0]
      parameters: {stp: false}
      mtu: 1400
      addresses: [192.168.77.1/24]
  tunnels:
    vx7:
      mode: vxlan
      id: 7
      local: 10.50.0.1
      port: 4789
      mac-learning: false
"#;

#[test]
fn apply_reaches_config_and_second_apply_writes_nothing() {
    let ns = Netns::new("apply");
    let peer = Netns::new("applyp");
    veth(&ns, "up0", &peer, "up0p");
    veth(&ns, "p0", &peer, "p0p");
    // Something cairn must leave alone.
    ns.ip(&["link", "add", "keep0", "type", "bridge"]);
    ns.ip(&["addr", "add", "172.31.0.1/24", "dev", "keep0"]);
    let state = tempfile::tempdir().unwrap();
    let y = Yaml::new();
    let f = y.write("50-cfg.yaml", CONFIG);
    let f = f.to_str().unwrap();

    let diff = ns.net_ok(state.path(), &["--file", f, "diff"]);
    assert!(diff.contains("create bridge br0"), "{diff}");
    assert!(diff.contains("create vxlan vx7"), "{diff}");

    let out = ns.net_ok(state.path(), &["--file", f, "--output", "json", "apply"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(report["writes"].as_u64().unwrap() > 5, "{report}");

    // The kernel matches the YAML.
    assert_eq!(ns.addrs("up0"), vec!["10.50.0.1/24"]);
    assert_eq!(ns.addrs("br0"), vec!["192.168.77.1/24"]);
    let br = ns.ip_json(&["-d", "link", "show", "br0"]);
    assert_eq!(br[0]["mtu"], 1400);
    assert_eq!(br[0]["linkinfo"]["info_data"]["stp_state"], 0);
    let p0 = ns.ip_json(&["link", "show", "p0"]);
    assert_eq!(p0[0]["master"], "br0");
    let vx = ns.ip_json(&["-d", "link", "show", "vx7"]);
    assert_eq!(vx[0]["linkinfo"]["info_data"]["id"], 7);
    assert_eq!(vx[0]["linkinfo"]["info_data"]["learning"], false);
    assert!(vx[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let routes = ns.routes();
    assert!(
        routes.contains("10.60.0.0/16 via 10.50.0.254 dev up0") && routes.contains("metric 20"),
        "{routes}"
    );

    // Idempotent: zero netlink writes the second time.
    let out = ns.net_ok(state.path(), &["--file", f, "--output", "json", "apply"]);
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["writes"], 0, "second apply wrote: {report}");
    let diff = ns.net_ok(state.path(), &["--file", f, "diff"]);
    assert_eq!(diff.trim(), "no changes");

    // The unrelated bridge was never touched.
    assert_eq!(ns.addrs("keep0"), vec!["172.31.0.1/24"]);

    // Dropping the bridge and the tunnel from the YAML deletes what cairn created, and only
    // the changed address moves.
    let f2 = y.write(
        "50-cfg.yaml",
        "network:\n  version: 2\n  ethernets:\n    up0: {addresses: [10.50.0.2/24]}\n",
    );
    let out = ns.net_ok(
        state.path(),
        &["--file", f2.to_str().unwrap(), "--output", "json", "apply"],
    );
    let ops: serde_json::Value = serde_json::from_str(&out).unwrap();
    let kinds: Vec<String> = ops["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["op"].as_str().unwrap().to_string())
        .collect();
    assert!(
        kinds.iter().filter(|k| *k == "del-link").count() == 2,
        "{ops}"
    );
    assert!(!ns.has_link("br0") && !ns.has_link("vx7"));
    assert!(ns.has_link("p0") && ns.has_link("keep0"));
    assert_eq!(ns.addrs("up0"), vec!["10.50.0.2/24"]);
    assert!(
        !ns.routes().contains("10.60.0.0/16"),
        "route of the old config removed"
    );
}

#[test]
fn failure_midway_restores_previous_state() {
    let ns = Netns::new("fail");
    let peer = Netns::new("failp");
    veth(&ns, "up0", &peer, "up0p");
    ns.ip(&["addr", "add", "10.70.0.1/24", "dev", "up0"]);
    ns.ip(&["link", "set", "up0", "up"]);
    let state = tempfile::tempdir().unwrap();
    let y = Yaml::new();
    // The route's gateway is not on any connected subnet: the kernel refuses it after the
    // bridge was created and the address was changed. Changes are pipelined, so `bry` and its
    // route, planned after the bad route, were sent before the refusal was read: the rollback
    // must remove them too.
    let f = y.write(
        "bad.yaml",
        r#"
network:
  version: 2
  ethernets:
    up0: {addresses: [10.70.0.9/24], mtu: 1300}
  bridges:
    brx:
      addresses: [192.168.99.1/24]
      routes: [{to: 10.80.0.0/16, via: 10.99.99.99}]
    bry:
      addresses: [192.168.98.1/24]
      routes: [{to: 10.81.0.0/16, via: 192.168.98.254}]
"#,
    );
    let out = ns.net(state.path(), &["--file", f.to_str().unwrap(), "apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "add route 10.80.0.0/16 via 10.99.99.99 dev brx failed (previous state restored)"
        ),
        "{stderr}"
    );
    assert!(!ns.has_link("brx"), "created bridge removed again");
    assert!(
        !ns.has_link("bry"),
        "bridge created after the failure removed too"
    );
    assert!(!ns.routes().contains("10.81.0.0/16"), "its route is gone");
    assert_eq!(ns.addrs("up0"), vec!["10.70.0.1/24"], "old address back");
    let up0 = ns.ip_json(&["link", "show", "up0"]);
    assert_eq!(up0[0]["mtu"], 1500, "old MTU back");
}

#[test]
fn invalid_config_exits_3_and_names_the_key() {
    let ns = Netns::new("inval");
    let state = tempfile::tempdir().unwrap();
    let y = Yaml::new();
    let f = y.write(
        "x.yaml",
        "network:\n  version: 2\n  ethernets:\n    lo:\n      accept-ra: true\n",
    );
    let out = ns.net(state.path(), &["--file", f.to_str().unwrap(), "apply"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains(
            "x.yaml:5:7: network.ethernets.lo.accept-ra: key `accept-ra` is not supported"
        ),
        "{stderr}"
    );
}
