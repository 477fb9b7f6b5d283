//! kubelet bootstrap against a real systemd: a Debian root booted with systemd-nspawn, its
//! system bus reached from the host. The node runs with the hub unreachable and only local
//! state (a stored desired state with a join bundle), in a network namespace of its own, as
//! after a reboot with the site's uplink down: the network and the kubelet unit come back.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use cairn_api::{DesiredState, JoinBundle};
use cairn_node_daemon::store::Store;
use cairn_node_daemon::systemd::{DbusSystemd, UnitManager};
use common::*;

const LIMIT: Duration = Duration::from_secs(120);

fn unit_state(rt: &tokio::runtime::Runtime, bus: &str) -> Option<(String, String)> {
    rt.block_on(async {
        let systemd = DbusSystemd::connect(bus).await.ok()?;
        let s = systemd.state("kubelet.service").await.ok()?;
        Some((s.active, s.sub))
    })
}

#[test]
fn after_a_restart_with_the_hub_down_network_and_kubelet_come_back_from_local_state() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let container = Container::boot(&debian_root(), &format!("cairn-t{}", std::process::id()));
    let root = container.root();
    let netns = Netns::new("cairn-node");

    // What the image and the last run left behind: the config, a netplan file, the kubelet
    // base unit, and a stored desired state with a join bundle. No hub is listening.
    let fail_once = "/bin/sh -c 'test -e /run/kubelet-ran-once || { touch /run/kubelet-ran-once; exit 1; }; exec sleep 3600'";
    write_config(
        &root,
        "https://127.0.0.1:9",
        &"ab".repeat(32),
        "unused",
        &format!(
            "kubelet:\n  exec_start: \"{fail_once}\"\n  system_bus: \"{}\"\n",
            container.bus()
        ),
    );
    std::fs::remove_file(root.join("etc/cairn/token")).unwrap();
    std::fs::create_dir_all(root.join("etc/cairn/netplan")).unwrap();
    std::fs::write(
        root.join("etc/cairn/netplan/10-site.yaml"),
        "network:\n  version: 2\n  bridges:\n    br-site:\n      addresses: [10.213.0.1/24]\n",
    )
    .unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/kubelet.service"),
        root.join("etc/systemd/system/kubelet.service"),
    )
    .unwrap();
    {
        let store = Store::open(&root.join("var/lib/cairn")).unwrap();
        store
            .set_desired(&DesiredState {
                generation: 5,
                heartbeat_interval_seconds: 30,
                upgrade: None,
                join: Some(JoinBundle {
                    control_plane: "edge-east".into(),
                    api_server_url: "https://10.213.0.10:6443".into(),
                    ca_bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
                        .into(),
                    bootstrap_token: "abcdef.0123456789abcdef".into(),
                    revision: 1,
                }),
                overlay: None,
                config: None,
            })
            .unwrap();
    }

    let ns_prefix = ["ip", "netns", "exec", netns.0.as_str()];
    let node = Node::start_with(&root, &ns_prefix);

    // The network comes back from the netplan file.
    poll(
        "br-site with its address in the node's namespace",
        LIMIT,
        || {
            netns
                .ip(&["-4", "addr", "show", "br-site"])
                .contains("10.213.0.1/24")
                .then_some(())
        },
    );
    // The kubelet files are written, the unit is started, fails once, and is restarted by
    // the node (Restart=no in the drop-in: systemd does not do it on its own).
    // A simple unit reads "active" from the fork on, so the first, failing start can look
    // active for a moment: wait for the node to have restarted it.
    let kubeconfig = root.join("var/lib/kubelet/bootstrap-kubeconfig");
    let status = poll("the node to restart the failed kubelet", LIMIT, || {
        node.status().filter(|s| {
            s.kubelet_unit.as_deref() == Some("active/running")
                && s.counters.get("kubelet_restarts").is_some_and(|&n| n != 0)
        })
    });
    assert_eq!(
        status.counters.get("kubelet_restarts"),
        Some(&1),
        "{status:?}"
    );
    let (active, sub) = poll("kubelet.service active after one restart", LIMIT, || {
        unit_state(&rt, &container.bus()).filter(|(a, _)| a == "active")
    });
    assert_eq!((active.as_str(), sub.as_str()), ("active", "running"));
    assert!(
        root.join("run/kubelet-ran-once").exists(),
        "the first start failed as scripted"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&kubeconfig).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(status.applied_generation, 5);
    assert!(!status.hub_reachable);

    // A second start of the node with the same state: nothing is rewritten, the kubelet is
    // not restarted (its main PID stays).
    let mtime = std::fs::metadata(&kubeconfig).unwrap().modified().unwrap();
    let pid_before = main_pid(&container.bus());
    node.stop();
    let node = Node::start_with(&root, &ns_prefix);
    poll("the restarted node to look at the kubelet", LIMIT, || {
        node.status()
            .filter(|s| s.kubelet_unit.as_deref() == Some("active/running"))
    });
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().modified().unwrap(),
        mtime
    );
    assert_eq!(
        main_pid(&container.bus()),
        pid_before,
        "kubelet was restarted needlessly:\n{}",
        node.log()
    );
    node.stop();
}

fn main_pid(bus: &str) -> String {
    let out = Command::new("busctl")
        .arg(format!("--address={bus}"))
        .args([
            "get-property",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1/unit/kubelet_2eservice",
            "org.freedesktop.systemd1.Service",
            "MainPID",
        ])
        .output()
        .expect("busctl (systemd) is needed");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
