//! Fleet operations across a mixed rack of real emulated BMCs (sushy-tools, ipmi_sim) plus
//! broken ones: every server gets its own result, and the broken ones do not stall the rest.

mod common;

use std::sync::Arc;

use cairn_api::cli::{Exit, OutputFormat};
use cairn_hardware::bmc::Bmc;
use cairn_hardware::cli::{ConnectArgs, conformance, report};
use cairn_hardware::fleet::{Operation, OutcomeResult};
use clap::Parser;
use common::{IpmiSim, Sushy, SushyDriver};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    connect: ConnectArgs,
}

fn status_op() -> Operation<String> {
    Arc::new(|b: Arc<dyn Bmc>, _server: String| {
        Box::pin(async move { Ok(b.power_state().await?.to_string()) })
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn mixed_rack_reports_every_server() {
    let sushy = Sushy::start(SushyDriver::Fake(2), None);
    let sim = IpmiSim::start();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("ipmi.yaml"),
        format!("username: admin\npassword: {}\n", sim.password),
    )
    .unwrap();
    std::fs::write(d.join("wrong.yaml"), "username: admin\npassword: nope\n").unwrap();
    std::fs::write(d.join("any.pw"), "x\n").unwrap();
    let sys = |i: u32| format!("/redfish/v1/Systems/00000000-0000-0000-0000-{i:012}");
    let rack = format!(
        "servers:
  - name: rf0
    bmc: {}
    credentials: any.pw
  - name: rf1
    bmc: {}
    credentials: any.pw
  - name: ipmi
    bmc: {}
    credentials: ipmi.yaml
  - name: wrongpw
    bmc: {}
    credentials: wrong.yaml
  - name: silent
    bmc: ipmi://admin@{}
    credentials: any.pw
  - name: nocreds
    bmc: {}
    credentials: missing.yaml
",
        sushy.url(&sys(0)),
        sushy.url(&sys(1)),
        sim.url(),
        sim.url(),
        silent.local_addr().unwrap(),
        sushy.url(&sys(0)),
    );
    std::fs::write(d.join("rack.yaml"), rack).unwrap();
    let inv = d.join("rack.yaml");
    let cli = Cli::parse_from([
        "t",
        "--inventory",
        inv.to_str().unwrap(),
        "--timeout",
        "3",
        "--request-timeout",
        "1",
        "--parallel",
        "4",
        "--ipmi-cipher-suite",
        "3",
    ]);
    let out = cli.connect.run(status_op()).await.unwrap();
    let names: Vec<&str> = out.iter().map(|o| o.server.as_str()).collect();
    assert_eq!(
        names,
        ["rf0", "rf1", "ipmi", "wrongpw", "silent", "nocreds"],
        "inventory order"
    );
    let result = |name: &str| &out.iter().find(|o| o.server == name).unwrap().result;
    for ok in ["rf0", "rf1", "ipmi"] {
        assert!(
            matches!(result(ok), OutcomeResult::Ok { result } if result == "off"),
            "{ok}: {:?}",
            result(ok)
        );
    }
    let err = |name: &str| match result(name) {
        OutcomeResult::Err { error } => error.clone(),
        OutcomeResult::Ok { .. } => panic!("{name} should fail"),
    };
    assert!(
        err("wrongpw").contains("authentication failed"),
        "{}",
        err("wrongpw")
    );
    assert!(
        err("silent").contains("no answer within"),
        "{}",
        err("silent")
    );
    assert!(
        err("nocreds").contains("missing.yaml"),
        "{}",
        err("nocreds")
    );
    assert_eq!(
        report(OutputFormat::Json, &out, |s| s.clone()),
        Exit::Failed
    );

    // --only narrows the rack; all ok means exit 0.
    let cli = Cli::parse_from([
        "t",
        "--inventory",
        inv.to_str().unwrap(),
        "--only",
        "rf0,ipmi",
        "--ipmi-cipher-suite",
        "3",
    ]);
    let out = cli.connect.run(status_op()).await.unwrap();
    assert_eq!(out.len(), 2);
    assert_eq!(
        report(OutputFormat::Table, &out, |s| s.clone()),
        Exit::Success
    );
    let cli = Cli::parse_from(["t", "--inventory", inv.to_str().unwrap(), "--only", "zz"]);
    let e = cli.connect.run(status_op()).await.unwrap_err();
    assert!(e.to_string().contains("no server named \"zz\""), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn single_bmc_needs_a_password_file() {
    let cli = Cli::parse_from(["t", "--bmc", "redfish://admin@127.0.0.1:1"]);
    let e = cli.connect.targets().unwrap_err();
    assert!(e.to_string().contains("--password-file"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn conformance_on_sushy_and_ipmi_sim() {
    let sushy = Sushy::start(SushyDriver::LibvirtTest, None);
    let (_http, port) = {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("boot.iso"), b"iso").unwrap();
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
        let log = dir.path().join("none");
        common::poll("http.server", std::time::Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        (common::Peer::new(child, log, dir), port)
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = common::password_file(dir.path(), "x");
    let cli = Cli::parse_from([
        "t",
        "--bmc",
        &sushy.url(""),
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    let target = cli.connect.targets().unwrap().remove(0);
    let b = cairn_hardware::connect::connect(
        &target.address,
        target.credentials.unwrap(),
        &cli.connect.options().unwrap(),
    )
    .unwrap();
    let checks = conformance(
        b.as_ref(),
        true,
        Some(&format!("http://127.0.0.1:{port}/boot.iso")),
    )
    .await;
    let get = |n: &str| checks.iter().find(|c| c.check == n).unwrap().clone();
    for pass in [
        "login + power state",
        "inventory",
        "boot override read",
        "boot override read-back",
        "virtual media status",
        "BIOS attributes read",
    ] {
        assert_eq!(get(pass).result, "pass", "{pass}: {:?}", get(pass));
    }
    // Insert/eject ran (pass or a named failure from the emulator), it was not skipped.
    assert_ne!(get("virtual media insert/eject").result, "skip");

    let sim = IpmiSim::start();
    let pw = common::password_file(dir.path(), &sim.password);
    let cli = Cli::parse_from([
        "t",
        "--bmc",
        &sim.url(),
        "--password-file",
        pw.to_str().unwrap(),
        "--ipmi-cipher-suite",
        "3",
    ]);
    let target = cli.connect.targets().unwrap().remove(0);
    let b = cairn_hardware::connect::connect(
        &target.address,
        target.credentials.unwrap(),
        &cli.connect.options().unwrap(),
    )
    .unwrap();
    let checks = conformance(b.as_ref(), false, None).await;
    let get = |n: &str| checks.iter().find(|c| c.check == n).unwrap().clone();
    assert_eq!(get("login + power state").result, "pass");
    assert_eq!(get("sensors").result, "pass");
    assert_eq!(get("virtual media status").result, "skip");
    assert_eq!(get("BIOS attributes read").result, "skip");
}
