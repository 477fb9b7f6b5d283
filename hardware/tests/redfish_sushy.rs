//! Redfish against real sushy-tools (fake driver and libvirt's in-memory test driver).

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_hardware::address::{BmcAddress, Credentials};
use cairn_hardware::bmc::{
    Bmc, BmcError, BootDevice, BootMode, BootOverride, FirmwareTarget, PowerAction, PowerState,
};
use cairn_hardware::redfish::{RedfishBmc, RedfishOptions};
use cairn_hardware::tls::{self, Trust};
use common::{Peer, Sushy, SushyDriver, free_tcp_port, poll};

fn bmc(url: &str, password: &str) -> RedfishBmc {
    bmc_with(url, password, RedfishOptions::default())
}

fn bmc_with(url: &str, password: &str, options: RedfishOptions) -> RedfishBmc {
    let address = BmcAddress::parse(url).unwrap();
    RedfishBmc::new(&address, Credentials::new("admin", password), options).unwrap()
}

/// A plain HTTP file server (python's) for ISO and firmware image URLs.
fn file_server(files: &[(&str, &[u8])]) -> (Peer, u16) {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    let port = free_tcp_port();
    let log = dir.path().join("http.log");
    let child = Command::new("python3")
        .args([
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            &port.to_string(),
        ])
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let peer = Peer::new(child, log, dir);
    poll("python http.server", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    (peer, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn power_boot_inventory_media_on_fake_driver() {
    let sushy = Sushy::start(SushyDriver::Fake(1), None);
    let b = bmc(&sushy.url(""), "unused");

    // Power: the fake driver applies resets after a random delay; poll what curl sees.
    assert_eq!(b.power_state().await.unwrap(), PowerState::Off);
    b.power(PowerAction::On).await.unwrap();
    let path = "/redfish/v1/Systems/00000000-0000-0000-0000-000000000000";
    poll("power on seen by curl", Duration::from_secs(30), || {
        (sushy.curl(path, None)["PowerState"] == "On").then_some(())
    });
    assert_eq!(b.power_state().await.unwrap(), PowerState::On);

    // One-time PXE: sushy reads "Once" back as "Continuous"; the quirk table knows.
    assert!(
        b.quirks()
            .await
            .unwrap()
            .matched
            .contains(&"sushy-tools".to_owned())
    );
    b.set_boot_override(BootOverride {
        device: BootDevice::Pxe,
        persistent: false,
        mode: None,
    })
    .await
    .unwrap();
    assert_eq!(
        sushy.curl(path, None)["Boot"]["BootSourceOverrideTarget"],
        "Pxe"
    );
    b.set_boot_override(BootOverride {
        device: BootDevice::Cd,
        persistent: true,
        mode: None,
    })
    .await
    .unwrap();
    let got = b.boot_override().await.unwrap();
    assert_eq!((got.device, got.persistent), (BootDevice::Cd, true));
    assert_eq!(
        sushy.curl(path, None)["Boot"]["BootSourceOverrideTarget"],
        "Cd"
    );
    // UEFI HTTP boot: sushy lists UefiHttp in UEFI mode but stores it as Pxe. cairn reads
    // back and says so instead of reporting success.
    let e = b
        .set_boot_override(BootOverride {
            device: BootDevice::Http,
            persistent: false,
            mode: Some(BootMode::Uefi),
        })
        .await
        .unwrap_err();
    assert!(
        matches!(e, BmcError::NotApplied { .. }) || e.to_string().contains("not offered"),
        "{e}"
    );

    let inv = b.inventory().await.unwrap();
    assert_eq!(inv.manufacturer.as_deref(), Some("Sushy Emulator"));
    assert_eq!(inv.nics.len(), 1);
    assert_eq!(inv.nics[0].mac.as_deref(), Some("52:54:00:00:00:00"));

    // Virtual media: found under Systems (Managers has none on sushy), insert and eject.
    let (_http, port) = file_server(&[("boot.iso", b"not really an iso")]);
    let url = format!("http://127.0.0.1:{port}/boot.iso");
    b.media_insert(&url).await.unwrap();
    let st = b.media_status().await.unwrap();
    assert!(
        st.inserted && st.image.as_deref() == Some(url.as_str()),
        "{st:?}"
    );
    assert!(st.location.contains("/Systems/"), "{st:?}");
    assert_eq!(sushy.curl(&st.location, None)["Image"], url.as_str());
    b.media_eject().await.unwrap();
    assert!(!b.media_status().await.unwrap().inserted);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn several_systems_need_a_system_path() {
    let sushy = Sushy::start(SushyDriver::Fake(2), None);
    let e = bmc(&sushy.url(""), "x").power_state().await.unwrap_err();
    assert!(e.to_string().contains("manages 2 systems"), "{e}");
    let one = bmc(
        &sushy.url("/redfish/v1/Systems/00000000-0000-0000-0000-000000000001"),
        "x",
    );
    assert_eq!(one.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread")]
async fn bios_registry_and_firmware_update_on_libvirt_test_driver() {
    let sushy = Sushy::start(SushyDriver::LibvirtTest, None);
    let b = bmc(&sushy.url(""), "x");
    let bios = b.bios().await.unwrap();
    assert_eq!(bios.current.get("ProcTurboMode"), Some(&"Enabled".into()));

    // The registry is found through Registries -> file -> Location, though its file is
    // named differently from the registry id the Bios resource references.
    let registry = b
        .bios_registry()
        .await
        .unwrap()
        .expect("sushy offers a registry");
    let turbo = registry.iter().find(|a| a.name == "ProcTurboMode").unwrap();
    assert!(turbo.allowed.contains(&"Disabled".to_owned()), "{turbo:?}");

    let mut changes = BTreeMap::new();
    changes.insert(
        "ProcTurboMode".to_owned(),
        serde_json::Value::from("Disabled"),
    );
    assert!(b.stage_bios(&changes).await.unwrap());
    // sushy applies staged settings at once (a real BMC keeps them pending until reset).
    let after = b.bios().await.unwrap();
    let seen = after
        .pending
        .get("ProcTurboMode")
        .or(after.current.get("ProcTurboMode"));
    assert_eq!(seen, Some(&"Disabled".into()), "{after:?}");

    let fw = b.firmware().await.unwrap();
    assert!(!fw.is_empty(), "firmware inventory");
    let (_http, port) = file_server(&[("bios.bin", b"firmware image")]);
    let before = b.inventory().await.unwrap().bios_version.unwrap();
    b.update_firmware(
        &format!("http://127.0.0.1:{port}/bios.bin"),
        FirmwareTarget::Bios,
    )
    .await
    .unwrap();
    let after = b.inventory().await.unwrap().bios_version.unwrap();
    assert_ne!(
        before, after,
        "sushy bumps the BIOS version on SimpleUpdate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_is_not_retried() {
    let sushy = Sushy::start(SushyDriver::Fake(1), Some(("admin", "right")));
    let good = bmc(&sushy.url(""), "right");
    assert_eq!(good.power_state().await.unwrap(), PowerState::Off);

    let bad = bmc(&sushy.url(""), "wrong");
    let log_401 = || {
        std::fs::read_to_string(&sushy.peer.log)
            .unwrap()
            .lines()
            .filter(|l| l.contains("\" 401 "))
            .count()
    };
    let before = log_401();
    let e = bad.power_state().await.unwrap_err();
    assert!(e.is_auth(), "{e}");
    assert!(
        e.to_string().contains("\"admin\"") && !e.to_string().contains("wrong"),
        "{e}"
    );
    for _ in 0..3 {
        assert!(bad.inventory().await.unwrap_err().is_auth());
    }
    assert_eq!(
        log_401() - before,
        1,
        "a refused password must be sent once only"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_bmc_times_out() {
    // A socket that accepts and never answers, like a hung BMC web server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let b = bmc_with(
        &format!("redfish+http://admin@127.0.0.1:{port}"),
        "x",
        RedfishOptions {
            request_timeout: Duration::from_millis(500),
            ..Default::default()
        },
    );
    let e = b.power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    drop(listener);
}

#[tokio::test(flavor = "multi_thread")]
async fn error_status_and_malformed_json_are_named() {
    // python's file server: a broken service root, and 404 for everything else.
    let (_http, port) =
        file_server(&[("redfish/v1/index.html", b"{\"Systems\": {\"@odata.id\": ")]);
    let b = bmc(&format!("redfish+http://admin@127.0.0.1:{port}"), "x");
    let e = b.power_state().await.unwrap_err();
    assert!(
        matches!(e, BmcError::Malformed { .. }) && e.to_string().contains("not JSON"),
        "{e}"
    );

    let (_http2, port2) = file_server(&[(
        "redfish/v1/index.html",
        b"{\"Systems\": {\"@odata.id\": \"/redfish/v1/Systems\"}}",
    )]);
    let b = bmc(&format!("redfish+http://admin@127.0.0.1:{port2}"), "x");
    let e = b.power_state().await.unwrap_err();
    assert!(
        e.to_string().contains("GET /redfish/v1/Systems") && e.to_string().contains("404"),
        "{e}"
    );
}

fn openssl(dir: &std::path::Path, args: &str) {
    let ok = Command::new("openssl")
        .args(args.split(' '))
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed to make test certificates");
    assert!(ok.success(), "openssl {args}");
}

/// A site CA and a BMC certificate it issued for 127.0.0.1: (ca, cert, key, fingerprint).
fn site_ca(
    dir: &std::path::Path,
) -> (
    std::path::PathBuf,
    std::path::PathBuf,
    std::path::PathBuf,
    String,
) {
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
    openssl(
        dir,
        &format!("req -x509 {ec} -days 2 -subj /CN=site-ca -keyout ca.key -out ca.pem"),
    );
    openssl(
        dir,
        &format!("req {ec} -subj /CN=bmc -keyout bmc.key -out bmc.csr"),
    );
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir,
        "x509 -req -in bmc.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out bmc.pem",
    );
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in", "bmc.pem"])
        .current_dir(dir)
        .output()
        .unwrap();
    (
        dir.join("ca.pem"),
        dir.join("bmc.pem"),
        dir.join("bmc.key"),
        tls::fingerprint(&der.stdout),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_pinning_trust_on_first_use_and_refusal() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key, fp) = site_ca(dir.path());
    let sushy = Sushy::start_with(SushyDriver::Fake(1), None, Some((&cert, &key)));
    let url = format!("redfish://admin@127.0.0.1:{}", sushy.port);
    let with = |trust: Trust| {
        bmc_with(
            &url,
            "x",
            RedfishOptions {
                trust,
                ..Default::default()
            },
        )
    };

    // Default: system CAs, which do not know this self-signed certificate.
    let e = with(Trust::System).power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Transport { .. }), "{e}");
    if let Err(e) = with(Trust::Fingerprint(fp.clone())).power_state().await {
        panic!("pinned fingerprint refused: {}", cairn_api::error_chain(&e));
    }
    let wrong = "00".repeat(32);
    let e = with(Trust::Fingerprint(wrong))
        .power_state()
        .await
        .unwrap_err();
    assert!(
        cairn_api::error_chain(&e).contains("does not match the pinned"),
        "{}",
        cairn_api::error_chain(&e)
    );
    if let Err(e) = with(Trust::CaBundle(ca)).power_state().await {
        panic!("site CA refused: {}", cairn_api::error_chain(&e));
    }
    assert!(with(Trust::Insecure).power_state().await.is_ok());

    // Trust on first use records the fingerprint; a different one is then refused.
    let known = dir.path().join("known_hosts");
    assert!(
        with(Trust::KnownHosts(known.clone()))
            .power_state()
            .await
            .is_ok()
    );
    let authority = format!("127.0.0.1:{}", sushy.port);
    assert_eq!(tls::known_host(&known, &authority), Some(fp));
    std::fs::write(&known, format!("{authority} {}\n", "11".repeat(32))).unwrap();
    let e = with(Trust::KnownHosts(known))
        .power_state()
        .await
        .unwrap_err();
    assert!(
        cairn_api::error_chain(&e).contains("does not match"),
        "{}",
        cairn_api::error_chain(&e)
    );
}
