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
        "--allow-insecure-redfish",
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
        "--allow-insecure-redfish",
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

/// The log lines a test's fleet run writes, as JSON objects (tracing's JSON format).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
    fn lines(&self) -> Vec<serde_json::Value> {
        self.text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn requests_seen(sushy: &Sushy) -> usize {
    std::fs::read_to_string(&sushy.peer.log)
        .unwrap()
        .matches("\"GET /redfish/v1")
        .count()
}

/// `redfish+http://` sends the password in clear: refused (before anything is sent, saying
/// what to do) unless --allow-insecure-redfish, then allowed with one warning per BMC that
/// names it and never carries the password. Current-thread runtime: the log capture is
/// per thread and the fleet's tasks run on this one.
#[tokio::test]
async fn plain_http_redfish_needs_the_flag_and_is_warned_about_once_per_bmc() {
    let password = "pw-never-logged-7f3a";
    let sushy = Sushy::start(SushyDriver::Fake(2), Some(("admin", password)));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pw = common::password_file(d, password);
    let sys = |i: u32| format!("/redfish/v1/Systems/00000000-0000-0000-0000-{i:012}");
    std::fs::write(
        d.join("rack.yaml"),
        format!(
            "servers:\n  - name: rf0\n    bmc: {}\n    credentials: {pw}\n  - name: rf1\n    bmc: {}\n    credentials: {pw}\n",
            sushy.url(&sys(0)),
            sushy.url(&sys(1)),
            pw = pw.display(),
        ),
    )
    .unwrap();
    let inv = d.join("rack.yaml");
    let captured = Captured::default();
    let writer = captured.clone();
    let _log = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish(),
    );

    let before = requests_seen(&sushy);
    // One BMC at a time: both systems live in one sushy-tools, whose SQLite state answers
    // "database is locked" (a 500) to concurrent requests on a loaded machine.
    let cli = Cli::parse_from(["t", "--inventory", inv.to_str().unwrap(), "--parallel", "1"]);
    let out = cli.connect.run(status_op()).await.unwrap();
    assert_eq!(out.len(), 2);
    for o in &out {
        let OutcomeResult::Err { error } = &o.result else {
            panic!("{}: plain HTTP accepted without the flag", o.server);
        };
        for needed in ["in clear", "redfish://", "--allow-insecure-redfish"] {
            assert!(error.contains(needed), "{}: {error}", o.server);
        }
    }
    assert_eq!(requests_seen(&sushy), before, "nothing was sent to the BMC");

    let cli = Cli::parse_from([
        "t",
        "--inventory",
        inv.to_str().unwrap(),
        "--parallel",
        "1",
        "--allow-insecure-redfish",
    ]);
    let out = cli.connect.run(status_op()).await.unwrap();
    for o in &out {
        assert!(
            matches!(&o.result, OutcomeResult::Ok { result } if result == "off"),
            "{}: {:?}",
            o.server,
            o.result
        );
    }
    assert!(requests_seen(&sushy) > before);
    let mut warned: Vec<String> = captured
        .lines()
        .into_iter()
        .filter(|l| {
            l["level"] == "WARN"
                && l["fields"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("plain-HTTP Redfish")
        })
        .map(|l| {
            assert_eq!(l["fields"]["user"], "admin", "{l}");
            l["fields"]["bmc"].as_str().unwrap().to_owned()
        })
        .collect();
    warned.sort();
    assert_eq!(warned, [sushy.url(&sys(0)), sushy.url(&sys(1))]);
    assert!(!captured.text().contains(password), "{}", captured.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn single_bmc_needs_a_password_file() {
    let cli = Cli::parse_from(["t", "--bmc", "redfish://admin@127.0.0.1:1"]);
    let e = cli.connect.targets().unwrap_err();
    assert!(e.to_string().contains("--password-file"), "{e}");
}

/// `cairn bmc conformance --destructive --media-url URL` on one sushy-tools BMC.
async fn redfish_conformance(
    sushy: &Sushy,
    dir: &std::path::Path,
    media_url: &str,
) -> Vec<cairn_hardware::cli::Check> {
    let pw = common::password_file(dir, "x");
    let cli = Cli::parse_from([
        "t",
        "--bmc",
        &sushy.url(""),
        "--password-file",
        pw.to_str().unwrap(),
        "--allow-insecure-redfish",
    ]);
    let target = cli.connect.targets().unwrap().remove(0);
    let b = cairn_hardware::connect::connect(
        &target.address,
        target.credentials.unwrap(),
        &cli.connect.options().unwrap(),
    )
    .unwrap();
    conformance(b.as_ref(), true, Some(media_url)).await
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
    let media_url = format!("http://127.0.0.1:{port}/boot.iso");
    let checks = redfish_conformance(&sushy, dir.path(), &media_url).await;
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
    // sushy's libvirt driver refuses every insert (its test:///default connection cannot
    // upload into a storage pool): a BMC refusing the insert fails the check.
    let media = get("virtual media insert/eject");
    assert_eq!(media.result, "fail", "{media:?}");
    assert!(media.detail.contains("InsertMedia"), "{media:?}");
    // Its fake driver inserts: the check passes, and the CD is empty again afterwards.
    let fake = Sushy::start(SushyDriver::Fake(1), None);
    let checks = redfish_conformance(&fake, dir.path(), &media_url).await;
    let media = checks
        .iter()
        .find(|c| c.check == "virtual media insert/eject")
        .unwrap();
    assert_eq!(media.result, "pass", "{media:?}");
    let cd = fake.curl(
        "/redfish/v1/Systems/00000000-0000-0000-0000-000000000000/VirtualMedia/Cd",
        None,
    );
    assert_eq!(cd["Inserted"], false, "{cd}");

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
