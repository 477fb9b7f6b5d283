//! The cairn-node .deb on an existing Debian 12 system: built with cargo-deb (from this test
//! run's debug binary: a release build per test run would cost minutes; `scripts/package`
//! makes the release packages from the same metadata), installed with dpkg into a booted
//! systemd-nspawn container, configured and started as cairn-node.service: it reaches
//! `active` only through READY=1 (Type=notify), pings the watchdog, leaves the host network
//! alone (`network.manage: false`) and registers with a hub running on the host.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(120);

/// `cargo deb` for cairn-node from the debug binary, after generating the man pages and
/// completions its assets name; returns the .deb.
fn build_deb(out: &Path) -> std::path::PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    output_ok(
        Command::new(workspace_bin("cairn-packaging", "cairn-packaging"))
            .arg("generate")
            .arg("--out")
            .arg(workspace.join("packaging/generated")),
        "cairn-packaging",
    );
    output_ok(
        Command::new("cargo")
            .current_dir(workspace)
            .args(["deb", "--no-build", "--profile", "dev", "--fast"])
            .args(["-p", "cairn-node-daemon", "-o"])
            .arg(out),
        "cargo-deb is needed: scripts/setup installs it",
    );
    let deb = std::fs::read_dir(out)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .expect("cargo deb wrote no .deb");
    assert!(
        deb.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("cairn-node_")
    );
    deb
}

/// Runs `args` inside the container (all its namespaces) and returns standard output.
fn inside(c: &Container, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &c.leader().to_string(), "-a", "--"])
        .args(args)
        .output()
        .expect("nsenter (util-linux)");
    assert!(
        out.status.success(),
        "{args:?} in the container: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn unit_property(c: &Container, property: &str) -> String {
    inside(
        c,
        &[
            "systemctl",
            "show",
            "cairn-node.service",
            "--value",
            "-p",
            property,
        ],
    )
    .trim()
    .to_owned()
}

#[test]
fn the_deb_installs_on_debian_and_the_unit_registers_with_the_hub() {
    let dir = tempfile::tempdir().unwrap();
    let deb = build_deb(dir.path());
    let hub = hub_at(&dir.path().join("hub")).start();
    let token = hub.enrollment_token("packaged");
    let container = Container::boot(&debian_root(), &format!("cairn-deb{}", std::process::id()));
    let root = container.root();

    std::fs::copy(&deb, root.join("tmp/cairn-node.deb")).unwrap();
    inside(&container, &["dpkg", "-i", "/tmp/cairn-node.deb"]);
    // The package installs the unit and a default configuration, and starts nothing.
    assert!(
        root.join("usr/lib/systemd/system/cairn-node.service")
            .is_file()
    );
    assert!(
        root.join("usr/share/bash-completion/completions/cairn-node")
            .is_file()
    );
    let shipped = std::fs::read_to_string(root.join("etc/cairn/node.yaml")).unwrap();
    assert!(shipped.contains("manage: false"), "{shipped}");
    assert_eq!(unit_property(&container, "ActiveState"), "inactive");

    // What docs/packages.md tells an operator to do: point it at the hub, add the token.
    let config = shipped
        .replace("https://hub.example.net:8443", &hub.url)
        .replace(
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            &hub.fingerprint,
        )
        .replace("hostname: edge-1", "hostname: edge-deb");
    std::fs::write(root.join("etc/cairn/node.yaml"), config).unwrap();
    std::fs::write(
        root.join("etc/cairn/enrollment-token"),
        format!("{token}\n"),
    )
    .unwrap();
    inside(
        &container,
        &["systemctl", "enable", "--now", "cairn-node.service"],
    );

    let admin = hub.admin();
    let appliance = poll("the packaged node registered with the hub", LIMIT, || {
        admin
            .appliances()
            .ok()?
            .into_iter()
            .find(|a| a.hostname == "edge-deb")
    });
    assert_eq!(appliance.site, "packaged", "{appliance:#?}");
    // Type=notify: `active` means the daemon sent READY=1; the watchdog was pinged.
    assert_eq!(unit_property(&container, "ActiveState"), "active");
    assert_eq!(unit_property(&container, "SubState"), "running");
    assert_eq!(unit_property(&container, "StatusText"), "running");
    assert_ne!(unit_property(&container, "WatchdogTimestampMonotonic"), "0");
    // The local API answers through the installed binary, in the unit's runtime directory,
    // and says the network was left to whatever manages it.
    let status: LocalStatus = serde_json::from_str(&inside(
        &container,
        &["cairn-node", "status", "--output", "json"],
    ))
    .unwrap();
    assert_eq!(
        status.appliance_id.as_deref(),
        Some(appliance.id.as_str()),
        "{status:?}"
    );
    assert!(
        status.conditions.iter().any(|c| c.reason == "NotManaged"),
        "{status:?}"
    );
    assert!(
        !root.join("etc/cairn/enrollment-token").exists(),
        "spent token kept"
    );
}
