//! IPMI 2.0 RMCP+ against OpenIPMI's ipmi_sim, with ipmitool as the reference client in both
//! directions: what cairn sets, ipmitool reads, and the other way round.

mod common;

use std::time::Duration;

use cairn_hardware::address::{BmcAddress, Credentials};
use cairn_hardware::bmc::{
    Bmc, BmcError, BootDevice, BootMode, BootOverride, Capability, PowerAction, PowerState,
};
use cairn_hardware::ipmi::session::Timing;
use cairn_hardware::ipmi::{IpmiBmc, IpmiOptions, SuiteChoice};
use common::IpmiSim;

fn bmc(
    url: &str,
    password: &str,
    suites: SuiteChoice,
    allow_insecure: bool,
) -> Result<IpmiBmc, BmcError> {
    IpmiBmc::new(
        &BmcAddress::parse(url).unwrap(),
        Credentials::new("admin", password),
        IpmiOptions {
            suites,
            allow_insecure,
            timing: Timing {
                retry_after: Duration::from_millis(300),
                limit: Duration::from_secs(2),
            },
        },
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn power_boot_device_id_both_ways_with_ipmitool() {
    let sim = IpmiSim::start();
    // Auto tries suite 17 first; ipmi_sim lacks it, so the session falls back to suite 3.
    let b = bmc(&sim.url(), &sim.password, SuiteChoice::Auto, false).unwrap();

    assert_eq!(b.power_state().await.unwrap(), PowerState::Off);
    b.power(PowerAction::On).await.unwrap();
    assert!(
        sim.ipmitool(&["chassis", "power", "status"])
            .contains("Chassis Power is on")
    );
    sim.ipmitool(&["chassis", "power", "off"]);
    assert_eq!(b.power_state().await.unwrap(), PowerState::Off);

    // cairn sets, ipmitool reads.
    b.set_boot_override(BootOverride {
        device: BootDevice::Cd,
        persistent: false,
        mode: Some(BootMode::Uefi),
    })
    .await
    .unwrap();
    let param = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(param.contains("Force Boot from CD/DVD"), "{param}");
    // ipmitool sets, cairn reads.
    sim.ipmitool(&["chassis", "bootdev", "pxe"]);
    assert_eq!(b.boot_override().await.unwrap().device, BootDevice::Pxe);
    sim.ipmitool(&["chassis", "bootdev", "disk"]);
    assert_eq!(b.boot_override().await.unwrap().device, BootDevice::Disk);

    let inv = b.inventory().await.unwrap();
    let mc = sim.ipmitool(&["mc", "info"]);
    let fw = inv.bmc_version.unwrap();
    assert!(
        mc.contains(&format!("Firmware Revision         : {fw}")),
        "{fw} vs {mc}"
    );
    assert_eq!(inv.manufacturer.as_deref(), Some("IANA 4753"));

    // Capabilities IPMI lacks are typed errors, before any packet.
    let e = b.media_insert("http://127.0.0.1/x.iso").await.unwrap_err();
    assert!(
        matches!(
            e,
            BmcError::Unsupported {
                capability: Capability::VirtualMedia,
                ..
            }
        ),
        "{e}"
    );
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sel_and_sdr_match_ipmitool() {
    let sim = IpmiSim::start();
    let b = bmc(&sim.url(), &sim.password, SuiteChoice::Only(3), false).unwrap();
    assert!(b.logs().await.unwrap().is_empty());
    let ev = sim.peer.dir.path().join("events");
    std::fs::write(
        &ev,
        "0x04 0x01 0x30 0x01 0x01 0x02 0x03\n0x04 0x02 0x31 0x01 0x07 0x08 0x09\n",
    )
    .unwrap();
    sim.ipmitool(&["sel", "add", ev.to_str().unwrap()]);
    let logs = b.logs().await.unwrap();
    let listed = sim.ipmitool(&["sel", "list"]);
    assert_eq!(logs.len(), listed.lines().count(), "{logs:?} vs {listed}");
    assert!(logs[0].message.starts_with("Temperature #0x30"), "{logs:?}");
    assert!(logs[1].message.starts_with("Voltage #0x31"), "{logs:?}");

    let sensors = b.sensors().await.unwrap();
    let sdr = sim.ipmitool(&["sdr", "list"]);
    assert!(
        sdr.contains("CPU Temp") && sdr.contains("45 degrees C"),
        "{sdr}"
    );
    assert_eq!(sensors.len(), 1, "{sensors:?}");
    assert_eq!(
        (
            sensors[0].name.as_str(),
            sensors[0].reading,
            sensors[0].unit.as_str()
        ),
        ("CPU Temp", Some(45.0), "°C")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_suites_and_insecure_refusal() {
    let sim = IpmiSim::start();
    let bad = bmc(&sim.url(), "Tr0ub4dor", SuiteChoice::Only(3), false).unwrap();
    let e = bad.power_state().await.unwrap_err();
    assert!(
        e.is_auth()
            && e.to_string().contains("\"admin\"")
            && e.to_string().contains("wrong password"),
        "{e}"
    );
    assert!(
        !e.to_string().contains("Tr0ub4dor"),
        "the password must not appear: {e}"
    );
    // Remembered: the refused password is not sent again.
    assert!(bad.inventory().await.unwrap_err().is_auth());

    let e = bmc(&sim.url(), &sim.password, SuiteChoice::Only(17), false)
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("RMCP+ status"),
        "suite 17 on ipmi_sim: {e}"
    );

    let e = bmc(&sim.url(), &sim.password, SuiteChoice::Only(0), false).unwrap_err();
    assert!(e.to_string().contains("--allow-insecure-ipmi"), "{e}");
    let insecure = bmc(&sim.url(), &sim.password, SuiteChoice::Only(0), true).unwrap();
    assert_eq!(insecure.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test(flavor = "multi_thread")]
async fn silent_and_truncating_bmcs() {
    // Never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("ipmi://admin@{}", silent.local_addr().unwrap());
    let e = bmc(&url, "x", SuiteChoice::Only(3), false)
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");

    // Answers every datagram with the first 10 bytes of a valid-looking RMCP+ packet.
    let trunc = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let url = format!("ipmi://admin@{}", trunc.local_addr().unwrap());
    trunc
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let responder = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((_, from)) = trunc.recv_from(&mut buf) {
            let _ = trunc.send_to(&[0x06, 0x00, 0xff, 0x07, 0x06, 0x11, 0, 0, 0, 0], from);
        }
    });
    let e = bmc(&url, "x", SuiteChoice::Only(3), false)
        .unwrap()
        .power_state()
        .await
        .unwrap_err();
    assert!(
        matches!(e, BmcError::Malformed { .. }) && e.to_string().contains("truncated"),
        "{e}"
    );
    responder.join().unwrap();
}
