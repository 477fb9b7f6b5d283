//! A rack whose BMCs misbehave the way real ones do, provisioned by `cairn rack provision`'s
//! own state machine (`cairn_installer::rack::machine::Machine`, with cairn's Redfish
//! client): every server's BMC is the lab's fault proxy (`cairn-lab up --faults`) in front of
//! real sushy-tools (fake driver), each with one fault of the faults file. Each server must
//! detect its fault, use the fallback, say so in its own notes, never have its account
//! locked, and the rest of the rack must finish.
//!
//! No guest boots: the fake driver has no VM, so the proxy stands in for the server's
//! firmware and records what the server would boot at each power-on. The install agent and
//! the hub are doubles reading that record: the installer "runs" (reports completion, then
//! the appliance registers) only if the server powered on into PXE, or into a CD holding
//! the installer ISO. The boot through QEMU itself is covered by the lab scenarios.

#[path = "../../hardware/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use cairn_api::{InstallProgress, InstallStep};
use cairn_hardware::address::{BmcAddress, Credentials};
use cairn_hardware::bmc::Bmc;
use cairn_hardware::redfish::{RedfishBmc, RedfishOptions};
use cairn_installer::rack::machine::{
    BootMethod, FleetView, InstallProgressSource, Machine, MediaStore, MintError, MintedToken,
    Observer, PeerError, Phase, Policy, Record, ServerPlan, State, TokenBinding, TokenMinter,
};
use cairn_qemu_tests::lab::fault_proxy::{FaultProxy, Observed};
use cairn_qemu_tests::lab::faults::{FaultKind, FaultsFile};
use common::{Sushy, SushyDriver};

const PASSWORD: &str = "right-pw";

/// The rack's faults file, in the format `cairn-lab up --faults` reads.
const FAULTS: &str = r#"
servers:
  boot-once:
    faults:
      - kind: ignore-boot-once
  power-on:
    faults:
      - kind: reset-boot-override-after-power-on
  not-connected:
    faults:
      - kind: virtual-media-not-connected
        count: 1
  busy:
    faults:
      - kind: virtual-media-busy
        count: 1
  under-systems:
    identity: { manufacturer: "Dell Inc.", model: "PowerEdge R650", firmware: "5.10.50.00" }
    faults:
      - kind: virtual-media-under-systems
  under-managers:
    faults:
      - kind: virtual-media-under-managers
  lockout:
    faults:
      - kind: lockout-after
        bad_logins: 3
        lock_seconds: 600
  slow:
    faults:
      - kind: slow
        ms: 150
  timeout:
    faults:
      - kind: timeout
        count: 1
        seconds: 30
  garbage:
    faults:
      - kind: garbage-json
        count: 1
        paths: [/redfish/v1/Systems]
  sessions:
    faults:
      - kind: refuse-sessions
  reset:
    faults:
      - kind: bmc-reset
        after_requests: 12
        seconds: 1.5
"#;

/// One server of the rack: its name, how it boots, whether rack.yaml holds the right
/// password, and what its notes must say (all of them, in any order).
struct Case {
    name: &'static str,
    media: bool,
    right_password: bool,
    notes: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "clean",
        media: false,
        right_password: true,
        notes: &[],
    },
    Case {
        name: "clean-media",
        media: true,
        right_password: true,
        notes: &[],
    },
    Case {
        name: "boot-once",
        media: false,
        right_password: true,
        notes: &[
            "booting-installer: the BMC did not apply a one-time boot override to pxe; cairn set a persistent one instead",
        ],
    },
    Case {
        name: "power-on",
        media: false,
        right_password: true,
        notes: &[
            "booting-installer: the BMC dropped the boot override to pxe when the server powered on; cairn set it again and restarted the server",
        ],
    },
    Case {
        name: "not-connected",
        media: true,
        right_password: true,
        notes: &[
            "booting-installer: inserting the installer ISO into the virtual CD failed (the slot read back without the image); cairn ejected it and inserted again",
        ],
    },
    Case {
        name: "busy",
        media: true,
        right_password: true,
        notes: &[
            "booting-installer: inserting the installer ISO into the virtual CD failed (the BMC answered 409 Conflict: the virtual media device is in use); cairn ejected it and inserted again",
        ],
    },
    Case {
        name: "under-systems",
        media: true,
        right_password: true,
        notes: &[
            "booting-installer: the virtual CD is under the System, not under the Manager as quirk dell-idrac9-pre6 says; cairn used it there",
        ],
    },
    Case {
        name: "under-managers",
        media: true,
        right_password: true,
        notes: &[
            "booting-installer: the virtual CD is under the Manager, not under the System as quirk sushy-tools says; cairn used it there",
        ],
    },
    Case {
        name: "lockout",
        media: false,
        right_password: false,
        notes: &[],
    },
    Case {
        name: "slow",
        media: false,
        right_password: true,
        notes: &[],
    },
    Case {
        name: "timeout",
        media: false,
        right_password: true,
        // The first request of the run: a BMC silent from the start costs an attempt (it
        // may be a wrong address); `reset` shows one that answered before being waited for.
        notes: &[
            "inspecting attempt 1 failed: BMC reading power state: no answer within 2.0 s while GET /redfish/v1/",
        ],
    },
    Case {
        name: "garbage",
        media: false,
        right_password: true,
        notes: &[
            "inspecting attempt 1 failed: BMC reading power state: GET /redfish/v1/Systems: malformed answer: not JSON",
        ],
    },
    Case {
        name: "sessions",
        media: false,
        right_password: true,
        notes: &[],
    },
    Case {
        name: "reset",
        media: false,
        right_password: true,
        notes: &[
            "the BMC is not answering (restarting?), waiting for it",
            "the BMC answers again after",
        ],
    },
];

/// The emulated servers, seen through their fault proxies' record of what each booted.
struct Servers {
    by_mac: BTreeMap<String, Arc<FaultProxy>>,
    polls: Mutex<u64>,
}

impl Servers {
    fn booted_installer(&self, mac: &str) -> Option<Observed> {
        let seen = self.by_mac.get(mac)?.observed();
        seen.power_ons
            .iter()
            .any(|b| b == "Pxe" || b == "Cd")
            .then_some(seen)
    }
}

/// The install agent: it runs when the server's latest power-on went into PXE.
#[async_trait]
impl InstallProgressSource for Servers {
    async fn latest(&self, mac: &str) -> Result<Option<(u64, InstallProgress)>, PeerError> {
        let seen = self.by_mac[mac].observed();
        if seen.power_ons.last().map(String::as_str) != Some("Pxe") {
            return Ok(None);
        }
        let mut polls = self.polls.lock().unwrap();
        *polls += 1;
        Ok(Some((
            *polls,
            InstallProgress {
                mac: mac.to_owned(),
                step: InstallStep::Completed,
                bytes_written: 1,
                bytes_total: Some(1),
                message: String::new(),
            },
        )))
    }
}

/// The hub: the appliance registers once its server has booted the installer.
#[async_trait]
impl FleetView for Servers {
    async fn find(&self, name: &str, mac: &str) -> Result<Option<String>, PeerError> {
        Ok(self
            .booted_installer(mac)
            .map(|_| format!("appliance-{name}")))
    }
}

#[async_trait]
impl TokenMinter for Servers {
    async fn mint(&self, binding: &TokenBinding) -> Result<MintedToken, MintError> {
        Ok(MintedToken {
            id: format!("tok-{}", binding.mac),
            secret: "s3cret".into(),
        })
    }
    async fn revoke(&self, _id: &str) -> Result<(), PeerError> {
        Ok(())
    }
}

/// The seeded ISOs: a few bytes served over HTTP, which sushy-tools really downloads.
struct Isos {
    base: String,
}

#[async_trait]
impl MediaStore for Isos {
    async fn publish(&self, name: &str, token: &str) -> Result<String, PeerError> {
        Ok(format!("{}/media/{name}-{token}.iso", self.base))
    }
    async fn remove(&self, _name: &str) -> Result<(), PeerError> {
        Ok(())
    }
}

#[derive(Default)]
struct Notes(Mutex<BTreeMap<String, Vec<String>>>);

impl Observer for Notes {
    fn changed(&self, _server: &str, _state: &State) {}
    fn note(&self, server: &str, message: &str) {
        self.0
            .lock()
            .unwrap()
            .entry(server.to_owned())
            .or_default()
            .push(message.to_owned());
    }
}

fn options() -> RedfishOptions {
    RedfishOptions {
        // The `timeout` fault holds a request for 30 s; cairn gives up after this.
        request_timeout: Duration::from_secs(2),
        ..RedfishOptions::default()
    }
}

fn bmc_for(proxy: &FaultProxy, password: &str) -> RedfishBmc {
    let url = format!("redfish+http://admin@{}", proxy.addr());
    RedfishBmc::new(
        &BmcAddress::parse(&url).unwrap(),
        Credentials::new("admin", password),
        options(),
    )
    .unwrap()
}

/// The seconds a server spent in the phases that talk to its BMC.
fn bmc_seconds(record: &Record) -> f64 {
    [
        Phase::Inspecting,
        Phase::ConfiguringFirmware,
        Phase::BootingInstaller,
        Phase::Rebooting,
    ]
    .iter()
    .filter_map(|p| record.seconds.get(p))
    .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_is_detected_worked_around_and_reported_and_no_account_locks() {
    let file = FaultsFile::parse(FAULTS).unwrap();
    let kinds: std::collections::BTreeSet<FaultKind> = file
        .servers
        .values()
        .flat_map(|s| s.faults.iter().map(|f| f.kind))
        .collect();
    assert_eq!(
        kinds.len(),
        FaultKind::ALL.len(),
        "the rack has every fault kind"
    );
    // One emulator per server, as in the lab: a BMC of its own. (Fourteen systems in one
    // fake-driver emulator once lost a concurrent write.) Started side by side.
    let sushys: Vec<Sushy> = std::thread::scope(|s| {
        let started: Vec<_> = CASES
            .iter()
            .map(|_| s.spawn(|| Sushy::start(SushyDriver::Fake(1), Some(("admin", PASSWORD)))))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let isos = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let isos_base = format!("http://{}", isos.local_addr().unwrap());
    let app = axum::Router::new().route(
        "/media/{file}",
        axum::routing::get(|| async { &b"cairn installer ISO"[..] }),
    );
    let iso_server = tokio::spawn(async move { axum::serve(isos, app).await });

    let mut proxies = Vec::new();
    let mut by_mac = BTreeMap::new();
    for (i, case) in CASES.iter().enumerate() {
        let faults = file.servers.get(case.name).cloned().unwrap_or_default();
        let proxy = Arc::new(
            FaultProxy::start(
                case.name,
                "127.0.0.1:0".parse().unwrap(),
                &format!("http://127.0.0.1:{}", sushys[i].port),
                faults,
            )
            .await
            .unwrap(),
        );
        by_mac.insert(format!("52:54:00:fa:00:{i:02x}"), proxy.clone());
        proxies.push(proxy);
    }
    let servers = Servers {
        by_mac,
        polls: Mutex::new(0),
    };
    let media = Isos { base: isos_base };
    let notes = Notes::default();
    let policy = Policy {
        max_attempts: 3,
        backoff: Duration::from_millis(100),
        backoff_max: Duration::from_millis(400),
        poll: Duration::from_millis(50),
        install_start_timeout: Duration::from_secs(2),
        install_stall_timeout: Duration::from_secs(2),
        register_timeout: Duration::from_secs(3),
        bmc_away_timeout: Duration::from_secs(10),
    };
    let plans: Vec<ServerPlan> = CASES
        .iter()
        .enumerate()
        .map(|(i, case)| ServerPlan {
            name: case.name.into(),
            boot_mac: format!("52:54:00:fa:00:{i:02x}"),
            serial: None,
            boot: if case.media {
                BootMethod::VirtualMedia { site: "lab".into() }
            } else {
                BootMethod::Pxe
            },
            firmware: None,
        })
        .collect();
    let bmcs: Vec<RedfishBmc> = CASES
        .iter()
        .enumerate()
        .map(|(i, case)| {
            let password = if case.right_password {
                PASSWORD
            } else {
                "wrong-pw"
            };
            bmc_for(&proxies[i], password)
        })
        .collect();

    let started = Instant::now();
    let runs = plans.iter().zip(&bmcs).map(|(plan, bmc)| {
        let machine = Machine {
            plan,
            bmc,
            install: &servers,
            fleet: &servers,
            minter: &servers,
            media: &media,
            policy: &policy,
            observer: &notes,
        };
        async move {
            let mut record = Record::default();
            machine.run(&mut record, &|_| {}).await;
            bmc.close().await;
            record
        }
    });
    let records = futures::future::join_all(runs).await;
    let wall = started.elapsed();

    let notes = notes.0.lock().unwrap().clone();
    let mut report = String::new();
    for ((case, record), proxy) in CASES.iter().zip(&records).zip(&proxies) {
        let seen = proxy.observed();
        let mine = notes.get(case.name).cloned().unwrap_or_default();
        report.push_str(&format!(
            "{:<15} {:<12} BMC phases {:>5.2}s  requests {:>3}  bad logins {}  power-ons {:?}  fired {:?}\n",
            case.name,
            record.state.name(),
            bmc_seconds(record),
            seen.requests,
            seen.bad_logins,
            seen.power_ons,
            seen.fired,
        ));
        // Never a locked account: at most one refused login per server per run.
        assert!(seen.bad_logins <= 1, "{}: {seen:?}", case.name);
        assert!(
            !seen.fired.contains_key(&FaultKind::LockoutAfter),
            "{}: the account was locked: {seen:?}",
            case.name
        );
        for want in case.notes {
            assert!(
                mine.iter().any(|n| n.contains(want)),
                "{}: no note {want:?} in {mine:?}",
                case.name
            );
        }
        if case.notes.is_empty() {
            assert!(mine.is_empty(), "{}: {mine:?}", case.name);
        }
        if !case.right_password {
            match &record.state {
                State::Failed { phase, reason } => {
                    assert_eq!(*phase, Phase::Inspecting);
                    assert!(
                        reason.contains("authentication failed"),
                        "{}: {reason}",
                        case.name
                    );
                }
                other => panic!("{}: expected failed, got {other:?}", case.name),
            }
            assert_eq!(seen.bad_logins, 1, "{}: {seen:?}", case.name);
            continue;
        }
        assert!(
            matches!(record.state, State::Provisioned { .. }),
            "{}: {:?} {mine:?}\n{report}",
            case.name,
            record.state
        );
        assert_eq!(seen.bad_logins, 0, "{}: {seen:?}", case.name);
        // The server booted its installer, then the disk is its boot device for good.
        assert!(
            seen.power_ons
                .iter()
                .any(|b| b == if case.media { "Cd" } else { "Pxe" }),
            "{}: {seen:?}",
            case.name
        );
        let faults = &file.servers.get(case.name).map(|s| s.faults.clone());
        for fault in faults.iter().flatten() {
            assert!(
                seen.fired.contains_key(&fault.kind),
                "{}: {} never acted: {seen:?}",
                case.name,
                fault.kind
            );
        }
    }
    // The locked-out server's account still works with its right password.
    let lockout = CASES.iter().position(|c| c.name == "lockout").unwrap();
    let check = bmc_for(&proxies[lockout], PASSWORD);
    check
        .power_state()
        .await
        .expect("the account of the server with the wrong password is not locked");
    eprintln!("{report}all {} servers in {wall:.1?}", CASES.len());
    iso_server.abort();
}

/// The lockout fault is real: a client that keeps sending a wrong password locks the
/// account, and then the right password is refused too (what cairn must never cause).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockout_fault_locks_an_account_that_keeps_trying() {
    let file = FaultsFile::parse(
        "servers:\n  s:\n    faults:\n      - kind: lockout-after\n        bad_logins: 3\n",
    )
    .unwrap();
    let sushy = Sushy::start(SushyDriver::Fake(1), Some(("admin", PASSWORD)));
    let proxy = FaultProxy::start(
        "s",
        "127.0.0.1:0".parse().unwrap(),
        &format!("http://127.0.0.1:{}", sushy.port),
        file.servers["s"].clone(),
    )
    .await
    .unwrap();
    // curl, the reference client; the password goes in a config file, not argv.
    let dir = tempfile::tempdir().unwrap();
    let status = |password: &str| {
        let config = dir.path().join("curl.conf");
        std::fs::write(&config, format!("user = \"admin:{password}\"\n")).unwrap();
        let url = format!("http://{}/redfish/v1/Systems", proxy.addr());
        async move {
            let out = tokio::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-K"])
                .arg(&config)
                .arg(url)
                .output()
                .await
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    assert_eq!(status(PASSWORD).await, "200");
    for _ in 0..3 {
        assert_eq!(status("guess").await, "401");
    }
    assert_eq!(status(PASSWORD).await, "401", "locked");
    let seen = proxy.observed();
    assert_eq!(seen.bad_logins, 3, "{seen:?}");
    assert!(
        seen.fired.contains_key(&FaultKind::LockoutAfter),
        "{seen:?}"
    );
}
