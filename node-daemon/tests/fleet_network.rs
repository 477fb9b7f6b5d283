//! A fleet configuration's netplan patch from a real hub, applied by a real `cairn-node`
//! through the safe apply, in two namespaces joined by a veth: "node" (the appliance, its
//! uplink `n0`) and "hub" (a real `cairn-hub` on 10.2.0.1, behind a route the node's own
//! netplan file sets). A patch that cuts the route to the hub is rolled back and reported
//! as such; one that keeps it is kept and reported applied.

mod common;

use std::process::Command;
use std::time::Duration;

use cairn_api::ConfigOutcome;
use cairn_api::hub::{ApplianceConfigView, ApplyLayer, LayerChange};
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

/// The node's own netplan file: its address, and the route to the hub.
const BASE: &str = "\
network:
  version: 2
  ethernets:
    n0:
      addresses: [10.1.0.1/24]
      routes: [{to: 10.2.0.0/24, via: 10.1.0.2}]
";

/// Runs `f` on a thread inside `ns`: the hub listens there only.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            ns.enter();
            f()
        })
        .join()
        .expect("a thread in the hub's namespace")
    })
}

/// Applies an appliance layer with `netplan`; `force` past the hub's guard rail.
fn layer(
    hub: &Hub,
    ns: &Netns,
    id: &str,
    netplan: &str,
    force: bool,
) -> Result<LayerChange, String> {
    let document = format!("layer: appliance:{id}\nnetplan:\n{netplan}");
    in_ns(ns, || {
        let admin = hub.admin();
        admin
            .run(admin.client.apply_config_layer(&ApplyLayer {
                file: "uplink.yaml".into(),
                document,
                dry_run: false,
                force,
            }))
            .map_err(|e| cairn_api::error_chain(&e))
    })
}

/// The appliance's configuration once its report names `generation`.
fn reported(hub: &Hub, ns: &Netns, id: &str, generation: u64) -> ApplianceConfigView {
    poll(
        &format!("the node to report configuration generation {generation}"),
        LIMIT,
        || {
            let shown = in_ns(ns, || {
                let admin = hub.admin();
                admin.run(admin.client.appliance_config(id)).ok()
            })?;
            (shown.state.report.as_ref()?.generation == generation).then_some(shown)
        },
    )
}

/// The two namespaces, the hub in one, a registered node in the other.
struct Lab {
    node_ns: Netns,
    hub_ns: Netns,
    hub: Hub,
    root: std::path::PathBuf,
    node: Node,
    id: String,
    /// The hub's and the node's directories: bound by each test, so they last as long.
    _dir: tempfile::TempDir,
}

/// The route to the hub the node's own file sets.
const ROUTE: &str = "10.2.0.0/24 via 10.1.0.2";

fn lab(tag: &str) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let node_ns = Netns::new(&format!("{tag}n"));
    let hub_ns = Netns::new(&format!("{tag}h"));
    let ok = Command::new("ip")
        .args(["link", "add", "n0", "netns", &node_ns.0, "type", "veth"])
        .args(["peer", "name", "h0", "netns", &hub_ns.0])
        .status()
        .unwrap();
    assert!(ok.success(), "creating the veth pair");
    hub_ns.ip(&["addr", "add", "10.1.0.2/24", "dev", "h0"]);
    hub_ns.ip(&["link", "set", "h0", "up"]);
    hub_ns.ip(&["addr", "add", "10.2.0.1/32", "dev", "lo"]);
    let hub = hub_at(&dir.path().join("hub"))
        .prefix(&hub_ns.prefix())
        .names(&["10.2.0.1"])
        .listen("10.2.0.1:0")
        .start();
    let token = in_ns(&hub_ns, || hub.enrollment_token("edge"));

    let root = dir.path().join("node");
    write_config(
        &root,
        &hub.url,
        &hub.fingerprint,
        &token,
        "network:\n  manage: true\n",
    );
    std::fs::create_dir_all(root.join("etc/cairn/netplan")).unwrap();
    std::fs::write(root.join("etc/cairn/netplan/10-uplink.yaml"), BASE).unwrap();
    let node = Node::start_with(&root, &node_ns.prefix());
    let id = poll("the node to register", LIMIT, || {
        node.status()
            .filter(|s| s.hub_reachable)
            .and_then(|s| s.appliance_id)
    });
    assert!(
        node_ns.ip(&["route"]).contains(ROUTE),
        "the node's own route"
    );
    Lab {
        node_ns,
        hub_ns,
        hub,
        root,
        node,
        id,
        _dir: dir,
    }
}

#[test]
fn a_patch_cutting_the_hub_is_rolled_back_and_a_good_one_kept() {
    let Lab {
        node_ns,
        hub_ns,
        hub,
        node,
        id,
        _dir: _keep,
        ..
    } = lab("cfg");
    let route = ROUTE;

    // Replacing n0's routes with none cuts the hub: the hub's guard rail refuses it, from
    // the link the node reported, naming the route and the line.
    let cut = "  network:\n    version: 2\n    ethernets:\n      n0:\n        routes: []\n";
    let refusal = layer(&hub, &hub_ns, &id, cut, false).unwrap_err();
    assert!(
        refusal.contains(&format!("appliance {id}"))
            && refusal.contains("the route via 10.1.0.2 on n0 (uplink.yaml:7:"),
        "{refusal}"
    );
    // Forced past it, the node's probe fails and the node rolls back.
    let applied_at = std::time::Instant::now();
    layer(&hub, &hub_ns, &id, cut, true).unwrap();
    let shown = reported(&hub, &hub_ns, &id, 1);
    eprintln!(
        "bad change: apply to rolled back, reported at the hub: {:?}",
        applied_at.elapsed()
    );
    let report = shown.state.report.clone().unwrap();
    let ConfigOutcome::RolledBack { reason } = &report.outcome else {
        panic!("not rolled back: {shown:?}\n{}", node.log())
    };
    assert!(reason.contains("10.2.0.1"), "names the hub probe: {reason}");
    assert!(shown.state.drift, "{shown:?}");
    assert_eq!(shown.state.last_good_generation, None);
    assert!(node_ns.ip(&["route"]).contains(route), "the route is back");

    // A second address, the route kept: applied, kept, reported.
    let applied_at = std::time::Instant::now();
    layer(
        &hub,
        &hub_ns,
        &id,
        "  network:\n    version: 2\n    ethernets:\n      n0:\n        addresses: [10.1.0.1/24, 10.1.0.60/24]\n",
        false,
    )
    .unwrap();
    let shown = reported(&hub, &hub_ns, &id, 2);
    eprintln!(
        "good change: apply to applied, reported at the hub: {:?}",
        applied_at.elapsed()
    );
    assert_eq!(
        shown.state.report.as_ref().map(|r| &r.outcome),
        Some(&ConfigOutcome::Applied),
        "{shown:?}\n{}",
        node.log()
    );
    assert!(!shown.state.drift, "{shown:?}");
    assert_eq!(shown.state.last_good_generation, Some(2));
    let addrs = node_ns.ip(&["-br", "addr", "show", "n0"]);
    assert!(addrs.contains("10.1.0.60/24"), "{addrs}");
    assert!(node_ns.ip(&["route"]).contains(route));
    node.stop();
}

/// A node killed while a change that cuts the hub is on trial (its probe waiting on a
/// gateway that does not answer) finds the unconfirmed change at its next start and rolls
/// it back, then reports the generation rolled back.
#[test]
fn a_change_on_trial_when_the_node_dies_is_rolled_back_at_its_next_start() {
    let Lab {
        node_ns,
        hub_ns,
        hub,
        root,
        node,
        id,
        _dir: _keep,
    } = lab("cfk");
    let dead_end = "10.2.0.0/24 via 10.1.0.99";
    layer(
        &hub,
        &hub_ns,
        &id,
        "  network:\n    version: 2\n    ethernets:\n      n0:\n        routes: [{to: 10.2.0.0/24, via: 10.1.0.99}]\n",
        true,
    )
    .unwrap();
    // On trial: the route points at nothing, the probe waits for its timeout.
    poll("the change to be on trial", LIMIT, || {
        node_ns.ip(&["route"]).contains(dead_end).then_some(())
    });
    node.kill();
    assert!(
        node_ns.ip(&["route"]).contains(dead_end),
        "the node died with the change applied"
    );

    let restarted = std::time::Instant::now();
    let node = Node::start_with(&root, &node_ns.prefix());
    poll("the old route back", LIMIT, || {
        node_ns.ip(&["route"]).contains(ROUTE).then_some(())
    });
    eprintln!(
        "node killed mid-try: start to the old route serving again: {:?}",
        restarted.elapsed()
    );
    let shown = reported(&hub, &hub_ns, &id, 1);
    assert!(
        matches!(
            shown.state.report.as_ref().map(|r| &r.outcome),
            Some(ConfigOutcome::RolledBack { .. })
        ),
        "{shown:?}\n{}",
        node.log()
    );
    assert!(
        node_ns.ip(&["route"]).contains(ROUTE),
        "{}",
        node_ns.ip(&["route"])
    );
    assert!(
        node.log().contains("interrupted and rolled back"),
        "the start found the unconfirmed change:\n{}",
        node.log()
    );
    node.stop();
}
