//! Firmware baselines against sushy-tools' libvirt test driver (BIOS attributes with an
//! AttributeRegistry, SimpleUpdate with a task): plan, apply, second apply changes nothing.
//! sushy-tools 2.2 offers no `MultipartHttpPushUri`, so its image goes the served way; its
//! SimpleUpdate accepts the URL and bumps `BiosVersion` without downloading it (what a BMC
//! receives is checked against tests/image_delivery.rs's recording endpoint).

#[path = "../../hardware/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cairn_firmware_profiles::apply::{ApplyOptions, Delivery, Images, apply, read_plan};
use cairn_firmware_profiles::image::ImageCache;
use cairn_firmware_profiles::profile::{Profile, by_name, load_all};
use cairn_firmware_profiles::serve::{ImageServer, ServeLimits};
use cairn_hardware::address::{BmcAddress, Credentials};
use cairn_hardware::bmc::Bmc;
use cairn_hardware::redfish::{RedfishBmc, RedfishOptions};
use common::{Peer, Sushy, SushyDriver};

const IMAGE: &[u8] = b"cairn emulator bios image\n";

fn image_server() -> (Peer, u16) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("firmware")).unwrap();
    std::fs::write(dir.path().join("firmware/emulator-bios.bin"), IMAGE).unwrap();
    let port = common::free_tcp_port();
    let child = std::process::Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::poll("http.server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let log = dir.path().join("none");
    (Peer::new(child, log, dir), port)
}

/// The shipped emulator profile with the image URL pointed at this test's server.
fn emulator_profile(port: u16) -> Profile {
    let all = load_all(None).unwrap();
    let mut p = by_name(&all, "emulator").unwrap().clone();
    p.firmware[0].image_url = format!("http://127.0.0.1:{port}/firmware/emulator-bios.bin");
    p
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_apply_then_nothing_to_do() {
    let sushy = Sushy::start(SushyDriver::LibvirtTest, None);
    let (_http, port) = image_server();
    let b = RedfishBmc::new(
        &BmcAddress::parse(&sushy.url("")).unwrap(),
        Credentials::new("admin", "x"),
        RedfishOptions::default(),
    )
    .unwrap();
    let inv = b.inventory().await.unwrap();
    let profile = emulator_profile(port);
    assert!(profile.matches(&inv), "{inv:?}");

    let plan = read_plan(&b, &profile).await.unwrap();
    assert!(plan.registry_checked, "sushy offers an AttributeRegistry");
    assert!(plan.invalid.is_empty(), "{:?}", plan.invalid);
    assert_eq!(
        plan.changes
            .iter()
            .map(|c| c.attribute.as_str())
            .collect::<Vec<_>>(),
        ["ProcTurboMode"]
    );
    assert_eq!(plan.updates.len(), 1);
    // plan changed nothing.
    assert_eq!(read_plan(&b, &profile).await.unwrap(), plan);

    let cache = tempfile::tempdir().unwrap();
    let server = Arc::new(
        ImageServer::start("127.0.0.1:0".parse().unwrap(), ServeLimits::default(), None)
            .await
            .unwrap(),
    );
    let options = ApplyOptions {
        reset: true,
        power_on: false,
        settle_timeout: Duration::from_secs(30),
        images: Images {
            cache: Arc::new(ImageCache::open(cache.path()).unwrap()),
            server: Some(server.clone()),
            upstream_allowed: false,
        },
    };
    let applied = apply(&b, &profile, &options).await.unwrap();
    assert_eq!(applied.staged, 1);
    assert!(applied.verified);
    assert_eq!(applied.updated.len(), 1);
    assert_eq!(applied.updated[0].delivery, Delivery::Served);
    let bios = b.bios().await.unwrap();
    assert_eq!(bios.current.get("ProcTurboMode"), Some(&"Disabled".into()));

    let again = apply(&b, &profile, &options).await.unwrap();
    assert!(
        again.plan.is_empty() && again.staged == 0 && again.updated.is_empty(),
        "{again:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_values_and_bad_images_change_nothing() {
    let sushy = Sushy::start(SushyDriver::LibvirtTest, None);
    let (_http, port) = image_server();
    let b = RedfishBmc::new(
        &BmcAddress::parse(&sushy.url("")).unwrap(),
        Credentials::new("admin", "x"),
        RedfishOptions::default(),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let options = ApplyOptions {
        reset: false,
        power_on: false,
        settle_timeout: Duration::from_secs(5),
        images: Images {
            cache: Arc::new(ImageCache::open(cache.path()).unwrap()),
            server: None,
            upstream_allowed: false,
        },
    };

    let mut p = emulator_profile(port);
    p.bios
        .attributes
        .insert("ProcTurboMode".into(), "Ludicrous".into());
    let e = apply(&b, &p, &options).await.unwrap_err().to_string();
    assert!(
        e.contains("ProcTurboMode") && e.contains("nothing was changed"),
        "{e}"
    );
    assert_eq!(
        b.bios().await.unwrap().current.get("ProcTurboMode"),
        Some(&"Enabled".into())
    );

    let mut p = emulator_profile(port);
    p.bios.attributes.clear();
    p.bios.boot_mode = None;
    let good = p.clone();
    p.firmware[0].sha256 = "00".repeat(32);
    let before = b.inventory().await.unwrap().bios_version;
    let e = cairn_api::error_chain(&apply(&b, &p, &options).await.unwrap_err());
    assert!(
        e.contains("SHA-256") && e.contains("nothing was sent"),
        "{e}"
    );
    assert_eq!(
        b.inventory().await.unwrap().bios_version,
        before,
        "no update started"
    );

    // A good image, but sushy takes no push and nothing serves it: refused, not fetched
    // by the BMC from upstream.
    let e = apply(&b, &good, &options).await.unwrap_err().to_string();
    assert!(e.contains("--serve-address"), "{e}");
    assert_eq!(b.inventory().await.unwrap().bios_version, before);
}

#[test]
fn profile_directory_overrides_shipped_profiles() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("emulator.yaml"), "name: emulator\nmatch: {manufacturer: Sushy Emulator}\nbios:\n  attributes: {ProcTurboMode: Enabled}\n").unwrap();
    let all = load_all(Some(dir.path())).unwrap();
    assert_eq!(by_name(&all, "emulator").unwrap().bios.attributes.len(), 1);
    std::fs::write(dir.path().join("broken.yaml"), "name: [\n").unwrap();
    let e = load_all(Some(dir.path())).unwrap_err().to_string();
    assert!(e.contains("broken.yaml") && e.contains("line"), "{e}");
    assert!(
        Profile::parse("name: x\n", Path::new("y.yaml"))
            .unwrap_err()
            .to_string()
            .contains("match")
    );
}
