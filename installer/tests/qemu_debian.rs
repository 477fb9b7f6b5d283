//! The `debian` profile end to end: `cairn image build` of `image-build/examples/debian.yaml`
//! (mmdebstrap from the configured mirror, its packages kept in the package cache for the
//! next build), `cairn-agent` installs it with a seed onto a blank disk, and the disk boots in
//! QEMU (TCG) to systemd starting cairn-node, which takes its configuration from the seed
//! (bound onto `/etc/cairn` from the data partition), applies the seed's netplan and
//! registers with a real `cairn-hub` the seed names, behind QEMU's user network; after a
//! power cut it boots again and carries on as the same appliance.
//! The build is cached per `cairn` binary under the target directory, like the minimal one.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_api::hub::{ApplianceQuery, ApplianceView, CreateEnrollmentToken};
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::Trust;
use cairn_test_support::hub::Hub;
use cairn_test_support::{Poll, workspace_bin};
use cairn_vm_harness::qemu::{BEACON_GUEST_ADDR, Nic, VmBuilder};
use common::*;

const CAIRN: &str = env!("CARGO_BIN_EXE_cairn");
const AGENT: &str = env!("CARGO_BIN_EXE_cairn-agent");
/// Boot to cairn-node under TCG took ~170 s by hand; generous for a loaded machine.
const BOOT_LIMIT: Duration = Duration::from_secs(900);
const SITE: &str = "deb-site";
const HOSTNAME: &str = "edge-deb";
const MAC: &str = "52:54:00:c0:de:01";
const HUB_PORT: u16 = 8443;

/// Builds the debian image once per `cairn` binary; returns its output directory.
fn debian_image() -> PathBuf {
    let node = Path::new(CAIRN).with_file_name("cairn-node");
    assert!(
        node.is_file(),
        "the debian image carries cairn-node: cargo build -p cairn-node-daemon (same target dir)"
    );
    let m = std::fs::metadata(CAIRN).unwrap();
    let stamp = m
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cairn-images");
    std::fs::create_dir_all(&base).unwrap();
    let out = base.join(format!("debian-{}-{stamp}", m.len()));
    let lock = std::fs::File::create(base.join("lock-debian")).unwrap();
    lock.lock().unwrap();
    if !out.join("manifest.json").exists() {
        let started = Instant::now();
        let (code, _, err) = run(
            CAIRN,
            &[
                "image",
                "build",
                "--config",
                example("debian").to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
            &[("SOURCE_DATE_EPOCH", EPOCH)],
        );
        assert_eq!(
            code, 0,
            "debian build failed (needs mmdebstrap and a reachable mirror):\n{err}"
        );
        eprintln!("debian image build: {:?}", started.elapsed());
    }
    out
}

/// The one appliance the hub lists, once it is online and has reported a status.
fn online_appliance(rt: &tokio::runtime::Runtime, hub: &HubClient) -> Option<ApplianceView> {
    let list = rt
        .block_on(hub.list_appliances(&ApplianceQuery::default()))
        .expect("listing appliances");
    assert!(
        list.len() <= 1,
        "more than one appliance registered: {list:#?}"
    );
    list.into_iter()
        .next()
        .filter(|a| a.status.as_ref().is_some_and(|s| s.online))
}

#[test]
fn the_debian_appliance_registers_with_its_hub_and_is_still_registered_after_a_power_cut() {
    let image = debian_image();
    let dir = tempfile::tempdir().unwrap();
    // A real hub whose certificate names the address the guest reaches it at.
    let hub = Hub::builder(workspace_bin("cairn-hub", "cairn-hub"))
        .names(&["127.0.0.1", BEACON_GUEST_ADDR])
        .serve_args(&["--heartbeat-interval", "5"])
        .start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let operator = HubClient::new(&hub.url, &Trust::CaBundle(hub.ca_pem.clone()), None)
        .unwrap()
        .with_bearer(&hub.admin_token);
    let token = rt
        .block_on(operator.create_token(&CreateEnrollmentToken {
            site: SITE.into(),
            ttl_seconds: 3600,
            max_uses: 1,
            labels: Default::default(),
            tenant: None,
            mac: Some(MAC.into()),
            serial: None,
        }))
        .expect("minting a MAC-bound token")
        .token;

    let source = source_copy(&image, dir.path());
    // The seed as `cairn boot-server` renders it (agent::plan::node_yaml), plus the netplan
    // an inventory carries: the debian image has no network of its own, cairn-node owns it.
    let seed = source.join("seed");
    std::fs::create_dir_all(seed.join("netplan")).unwrap();
    std::fs::write(
        seed.join("node.yaml"),
        cairn_installer::agent::plan::node_yaml(
            HOSTNAME,
            &format!("https://{BEACON_GUEST_ADDR}:{HUB_PORT}"),
        ),
    )
    .unwrap();
    std::fs::write(seed.join("hub-ca.pem"), &hub.ca_pem).unwrap();
    std::fs::write(seed.join("enrollment-token"), format!("{token}\n")).unwrap();
    std::fs::write(
        seed.join("netplan/50-cairn.yaml"),
        format!(
            "network:\n  version: 2\n  ethernets:\n    lan:\n      match: {{macaddress: \"{MAC}\"}}\n      addresses: [10.0.2.15/24]\n"
        ),
    )
    .unwrap();
    let disk = dir.path().join("disk.raw");
    blank_disk(&disk, 4096);
    let (code, out, err) = run(
        AGENT,
        &[
            "--source",
            source.to_str().unwrap(),
            "--target",
            disk.to_str().unwrap(),
            "--output",
            "json",
        ],
        &[],
    );
    assert_eq!(code, 0, "{out}\n{err}");

    // Each connection the guest opens to the hub's address is relayed to the real hub.
    let hub_port = hub.addr().rsplit_once(':').unwrap().1.to_owned();
    let machine = VmBuilder::new()
        .memory_mb(1024)
        .nic(
            Nic::User {
                options: format!(
                    "guestfwd=tcp:{BEACON_GUEST_ADDR}:{HUB_PORT}-cmd:socat - TCP:127.0.0.1:{hub_port}"
                ),
            },
            &format!("virtio-net-pci,mac={MAC}"),
        )
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=virtio,cache=unsafe",
            disk.display()
        ));
    let mut vm = machine.spawn().unwrap();
    let powered_on = Instant::now();
    // The hub's own log is printed by its guard when the test fails.
    let context = || format!("serial:\n{}", vm.tail(60));
    let first = Poll::new("the debian appliance registered and online", BOOT_LIMIT)
        .every(Duration::from_secs(2))
        .context(&context)
        .until(|| online_appliance(&rt, &operator));
    let registered = powered_on.elapsed();
    eprintln!("debian appliance: power-on to registered and online: {registered:?}");
    assert_eq!(first.hostname, HOSTNAME);
    assert_eq!(first.site, SITE);
    let seen = Instant::now();
    let uptime = first.status.as_ref().unwrap().status.uptime_seconds;

    // A power cut and power-on (QEMU runs with -no-reboot, so this is how a machine is
    // reset here): the appliance boots again from its disk and heartbeats as itself, with
    // no second registration and no new key.
    vm.kill();
    let vm = machine.spawn().unwrap();
    let context = || format!("serial:\n{}", vm.tail(60));
    let reset = Instant::now();
    let again = Poll::new("the debian appliance back after a reset", BOOT_LIMIT)
        .every(Duration::from_secs(2))
        .context(&context)
        .until(|| {
            // Without the reset its uptime would be `uptime` plus the time since; a fresh
            // boot reports far less.
            let unreset = uptime + seen.elapsed().as_secs();
            online_appliance(&rt, &operator).filter(|a| {
                a.status
                    .as_ref()
                    .is_some_and(|s| s.status.uptime_seconds + 30 < unreset)
            })
        });
    eprintln!(
        "debian appliance: power-on after the cut to heartbeating again: {:?}",
        reset.elapsed()
    );
    assert_eq!(
        again.id, first.id,
        "the reset appliance came back as another one"
    );
    assert_eq!(
        again.cert_sha256, first.cert_sha256,
        "the reset appliance re-keyed"
    );
    assert_eq!(again.rekeys, 0);
    drop(vm);
}
