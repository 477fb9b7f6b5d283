//! The node's tunnel to the hub (issue 17), end to end with the real binaries: the node sits
//! in a network namespace behind a NAT router (nft masquerade) and the hub, in a namespace
//! of its own, has no route back to it. Everything the hub asks of the node (its journal, a
//! command) travels over the connection the node made.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cairn_api::hub::{CreateOperatorToken, CreateTenant, ExecRequest, LogsQuery, Role, SinceQuery};
use cairn_formats::grubenv;
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::Trust;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const NO_NET: &str = "network:\n  manage: false\n";
/// The hub's address, in its namespace; the node's subnet behind the router is 10.77.1.0/24.
const HUB_ADDR: &str = "10.77.0.1";
const HUB_LISTEN: &str = "10.77.0.1:8443";

/// Runs `cmd`, failing the test with its standard error when it fails.
fn run(cmd: &mut Command) {
    output_ok(cmd, "iproute2 and nftables are needed (scripts/setup)");
}

/// `ip -n NS ARGS`, checked.
fn ip(ns: &Netns, args: &[&str]) {
    run(Command::new("ip").args(["-n", &ns.0]).args(args));
}

/// Hub, router and node namespaces: hub `up0` 10.77.0.1 — router `wan0` 10.77.0.2, router
/// `lan0` 10.77.1.1 — node `eth0` 10.77.1.2, default route via the router, which
/// masquerades what leaves by `wan0`. The hub knows only its own /24.
struct Nat {
    hub: Netns,
    _router: Netns,
    node: Netns,
}

fn nat() -> Nat {
    let hub = Netns::new("ctun-h");
    let router = Netns::new("ctun-r");
    let node = Netns::new("ctun-n");
    let veth = |a: &str, b: &str, ns: &Netns| {
        ip(
            &router,
            &[
                "link", "add", a, "type", "veth", "peer", "name", b, "netns", &ns.0,
            ],
        );
    };
    veth("wan0", "up0", &hub);
    veth("lan0", "eth0", &node);
    for (ns, dev, addr) in [
        (&hub, "up0", "10.77.0.1/24"),
        (&router, "wan0", "10.77.0.2/24"),
        (&router, "lan0", "10.77.1.1/24"),
        (&node, "eth0", "10.77.1.2/24"),
    ] {
        ip(ns, &["addr", "add", addr, "dev", dev]);
        ip(ns, &["link", "set", dev, "up"]);
    }
    ip(&node, &["route", "add", "default", "via", "10.77.1.1"]);
    run(Command::new("ip").args([
        "netns",
        "exec",
        &router.0,
        "sysctl",
        "-qw",
        "net.ipv4.ip_forward=1",
    ]));
    let nft = |args: &[&str]| {
        run(Command::new("ip")
            .args(["netns", "exec", &router.0, "nft"])
            .args(args));
    };
    nft(&["add", "table", "ip", "nat"]);
    nft(&[
        "add",
        "chain",
        "ip",
        "nat",
        "postrouting",
        "{ type nat hook postrouting priority 100 ; }",
    ]);
    nft(&[
        "add",
        "rule",
        "ip",
        "nat",
        "postrouting",
        "oifname",
        "wan0",
        "masquerade",
    ]);
    Nat {
        hub,
        _router: router,
        node,
    }
}

/// A journal with one kubelet and one cairn-node entry, written by systemd-journal-remote
/// from the journal export format (what `journalctl -o export` prints).
fn journal(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let entries = "__REALTIME_TIMESTAMP=1765100000000000\n__MONOTONIC_TIMESTAMP=1000\n\
        _BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT=kubelet.service\n\
        SYSLOG_IDENTIFIER=kubelet\n_HOSTNAME=edge-test\nMESSAGE=kubelet started for the tunnel test\n\n\
        __REALTIME_TIMESTAMP=1765100001000000\n__MONOTONIC_TIMESTAMP=2000\n\
        _BOOT_ID=0123456789abcdef0123456789abcdef\n_SYSTEMD_UNIT=cairn-node.service\n\
        SYSLOG_IDENTIFIER=cairn-node\n_HOSTNAME=edge-test\nMESSAGE=cairn-node line of the test\n\n";
    let mut remote = Command::new("/usr/lib/systemd/systemd-journal-remote")
        .arg("-o")
        .arg(dir.join("remote.journal"))
        .arg("-")
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("systemd-journal-remote (apt-get install systemd-journal-remote)");
    std::io::Write::write_all(&mut remote.stdin.take().unwrap(), entries.as_bytes()).unwrap();
    assert!(
        remote.wait().unwrap().success(),
        "systemd-journal-remote failed"
    );
}

fn argv(words: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: words.iter().map(|w| (*w).to_owned()).collect(),
        timeout_seconds: None,
    }
}

/// The whole journal a logs request streams (it ends: no follow).
fn read_logs(admin: &Admin, id: &str, query: &LogsQuery) -> String {
    let mut stream = admin.ok(admin.client.appliance_logs(id, query));
    let mut text = Vec::new();
    while let Some(chunk) = admin.ok(stream.next_chunk()) {
        text.extend(chunk);
    }
    String::from_utf8(text).unwrap()
}

/// `cairn hub ARGS` in-process, logged in to `hub` as its admin (config under `dir`), on a
/// runtime of the calling thread (so in the hub's namespace).
fn cairn_hub(hub: &Hub, dir: &Path, args: &[&str]) -> cairn_api::cli::Exit {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        hub: cairn_hub_client::cli::HubArgs,
    }
    let config = dir.join("hub.json");
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, &hub.admin_token).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let run = |args: &[&str]| {
        let head = ["cairn-hub-test", "--config", config.to_str().unwrap()];
        let full = head.iter().chain(args);
        rt.block_on(Cli::parse_from(full).hub.run()).unwrap()
    };
    if !config.exists() {
        let login = [
            "login",
            "--url",
            &hub.url,
            "--ca-fingerprint",
            &hub.fingerprint,
            "--token-file",
            token_file.to_str().unwrap(),
        ];
        assert_eq!(run(&login), cairn_api::cli::Exit::Success);
    }
    run(args)
}

/// The upgrade record a committed upgrade to 1.1.0 leaves (slot b), and a GRUB environment
/// booting b.
fn committed_upgrade(root: &Path) {
    std::fs::create_dir_all(root.join("upgrade")).unwrap();
    let record = serde_json::json!({
        "order": {
            "campaign": "c1",
            "version": "1.1.0",
            "bundle_url": "https://hub.invalid/bundle",
            "sha256": "00",
            "size_bytes": 1,
        },
        "report": {
            "campaign": "c1",
            "version": "1.1.0",
            "phase": "committed",
            "reason": "",
            "bytes_done": 1,
            "bytes_total": 1,
            "logs": [],
            "at": "2026-12-07T10:00:00Z",
        },
        "target": "b",
        "from_version": "1.0.0",
    });
    std::fs::write(
        root.join("upgrade/state.json"),
        serde_json::to_vec(&record).unwrap(),
    )
    .unwrap();
    let block = grubenv::new_block(&BTreeMap::from([("cairn_slot", "b")])).unwrap();
    std::fs::write(root.join("grubenv"), block).unwrap();
}

/// The support bundle's files, by name under `support-bundle/`, as text.
fn support_bundle(path: &Path) -> BTreeMap<String, String> {
    let gz = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
    let mut archive = tar::Archive::new(gz);
    let mut parts = BTreeMap::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let name = name.strip_prefix("support-bundle/").unwrap().to_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
        parts.insert(name, String::from_utf8_lossy(&bytes).into_owned());
    }
    parts
}

/// GRUB's default slot in the node's environment.
fn grub_slot(root: &Path) -> String {
    let bytes = std::fs::read(root.join("grubenv")).unwrap();
    grubenv::select(&bytes, None).unwrap().vars["cairn_slot"].clone()
}

#[test]
fn logs_exec_support_bundle_reboot_and_rollback_reach_a_node_behind_nat_through_its_tunnel() {
    let dir = tempfile::tempdir().unwrap();
    let nat = nat();
    // This thread calls the hub where it listens: in its namespace.
    nat.hub.enter();
    let hub_data = dir.path().join("hub");
    let start_hub = || {
        hub_at(&hub_data)
            .prefix(&nat.hub.prefix())
            .listen(HUB_LISTEN)
            .names(&[HUB_ADDR])
            // Scrapes every second, so the node's metrics arrive within the test.
            .serve_args(&["--heartbeat-interval", "1", "--node-metrics-interval", "1"])
            .start()
    };
    let mut hub = start_hub();
    let admin = hub.admin();
    admin.ok(admin.client.create_tenant(&CreateTenant {
        name: "acme".into(),
        sites: ["edge".to_owned()].into(),
    }));
    admin.ok(admin.client.create_tenant(&CreateTenant {
        name: "globex".into(),
        sites: ["globex-main".to_owned()].into(),
    }));
    let token = hub.enrollment_token("edge");
    let root = dir.path().join("node");
    let journal_dir = dir.path().join("journal");
    journal(&journal_dir);
    // The reboot the hub asks for goes through the upgrade's reboot command: here it leaves
    // a line in a file instead.
    let rebooted = dir.path().join("rebooted");
    // A rollback needs a committed upgrade on record (from slot a to slot b, as a campaign
    // leaves it), the GRUB environment and the kernel command line naming the booted slot.
    let extra = format!(
        "{NO_NET}upgrade:\n  reboot_command: [sh, -c, 'echo reboot >> {}']\n  data_dir: /upgrade\n  grubenv: /grubenv\n  cmdline: /cmdline\n",
        rebooted.display()
    );
    committed_upgrade(&root);
    write_config(&root, &hub.url, &hub.fingerprint, &token, &extra);
    let node = Node::start_full(
        &root,
        &nat.node.prefix(),
        &["--journal-dir", journal_dir.to_str().unwrap()],
    );
    let id = poll("the node to register", LIMIT, || {
        node.status().and_then(|s| s.appliance_id)
    });

    // The hub has no way to the node but the tunnel.
    let route = Command::new("ip")
        .args(["route", "get", "10.77.1.2"])
        .output()
        .unwrap();
    assert!(
        !route.status.success(),
        "the hub's namespace routes to the node's subnet"
    );

    // Exec: the argv runs on the node (its address is the NATed one), output and exit code
    // come back.
    let opened = Instant::now();
    let result = poll("exec through the tunnel", LIMIT, || {
        admin
            .run(
                admin
                    .client
                    .exec(&id, &argv(&["sh", "-c", "echo out; echo err >&2; exit 3"])),
            )
            .ok()
    });
    eprintln!("tunnel usable {:?} after registration", opened.elapsed());
    assert_eq!(
        (
            result.exit_code,
            result.stdout.as_str(),
            result.stderr.as_str()
        ),
        (3, "out\n", "err\n"),
        "{result:?}"
    );
    let addr = admin.ok(admin
        .client
        .exec(&id, &argv(&["ip", "-4", "-br", "addr", "show", "eth0"])));
    assert!(addr.stdout.contains("10.77.1.2/24"), "{addr:?}");
    let missing = admin.ok(admin.client.exec(&id, &argv(&["no-such-program-here"])));
    assert_eq!(missing.exit_code, 127, "{missing:?}");

    // The operator's command passes the remote exit code through.
    assert_eq!(
        cairn_hub(
            &hub,
            dir.path(),
            &["appliances", "exec", &id, "--", "sh", "-c", "exit 7"]
        ),
        cairn_api::cli::Exit::Code(7)
    );

    // Logs: journalctl's lines, filtered by unit; with follow the lines arrive while the
    // stream stays open.
    let kubelet = read_logs(
        &admin,
        &id,
        &LogsQuery {
            unit: Some("kubelet.service".into()),
            ..Default::default()
        },
    );
    assert!(
        kubelet.contains("edge-test kubelet: kubelet started for the tunnel test"),
        "{kubelet}"
    );
    assert!(!kubelet.contains("cairn-node line"), "{kubelet}");
    let bad_since = read_logs(
        &admin,
        &id,
        &LogsQuery {
            since: Some("not a time".into()),
            ..Default::default()
        },
    );
    assert!(bad_since.contains("Failed to parse"), "{bad_since}");
    // The node's children, by name (the shell's parent is cairn-node).
    let children = argv(&[
        "sh",
        "-c",
        "for p in $(cat /proc/$PPID/task/*/children); do cat /proc/$p/comm; done",
    ]);
    {
        let mut follow = admin.ok(admin.client.appliance_logs(
            &id,
            &LogsQuery {
                follow: Some(true),
                ..Default::default()
            },
        ));
        let mut seen = String::new();
        while !seen.contains("cairn-node line of the test") {
            let chunk = admin
                .ok(follow.next_chunk())
                .expect("a followed journal stays open");
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
        let running = admin.ok(admin.client.exec(&id, &children)).stdout;
        assert!(running.contains("journalctl"), "{running}");
    }
    // The operator went: the node's journalctl goes too.
    poll("journalctl to end with the followed stream", LIMIT, || {
        let out = admin.ok(admin.client.exec(&id, &children)).stdout;
        (!out.contains("journalctl")).then_some(())
    });

    // Refusals: exec is an admin's, in scope.
    let client_with = |role: Role, tenant: Option<&str>| {
        let t = admin.ok(admin.client.create_operator_token(&CreateOperatorToken {
            name: format!("{role:?}-{tenant:?}")
                .to_lowercase()
                .replace(['"', '(', ')', ' '], ""),
            role,
            site: None,
            tenant: tenant.map(str::to_owned),
            ttl_seconds: None,
        }));
        HubClient::new(&hub.url, &Trust::CaBundle(hub.ca_pem.clone()), None)
            .unwrap()
            .with_bearer(&t.token)
    };
    let status = |r: Result<(), HubError>| match r {
        Err(HubError::Refused { status, .. }) => status,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let other_tenant = client_with(Role::Admin, Some("globex"));
    assert_eq!(
        status(
            admin
                .run(other_tenant.exec(&id, &argv(&["true"])))
                .map(drop)
        ),
        404
    );
    let operator = client_with(Role::Operator, None);
    assert_eq!(
        status(admin.run(operator.exec(&id, &argv(&["true"]))).map(drop)),
        403
    );
    // An operator reads logs.
    let mut logs = admin.ok(operator.appliance_logs(&id, &LogsQuery::default()));
    assert!(admin.ok(logs.next_chunk()).is_some());
    drop(logs);

    // Metrics: the hub scraped the node through its tunnel; each of the node's samples
    // carries the appliance and its site, and another tenant's operator sees none of it.
    let labels = format!("appliance=\"{id}\",site=\"edge\"");
    let scraped = poll("the hub to scrape the node's heartbeats", LIMIT, || {
        let text = admin.ok(operator.appliance_metrics());
        text.lines()
            .any(|l| {
                l.starts_with(&format!("cairn_node_heartbeat_seconds_count{{{labels}}} "))
                    && !l.ends_with(" 0")
            })
            .then_some(text)
    });
    assert_eq!(
        scraped
            .lines()
            .filter(|l| *l == "# TYPE cairn_node_heartbeat_seconds histogram")
            .count(),
        1,
        "{scraped}"
    );
    assert!(
        scraped.contains(&format!(
            "cairn_node_heartbeat_seconds_bucket{{{labels},le=\"+Inf\"}}"
        )),
        "{scraped}"
    );
    let foreign = admin.ok(client_with(Role::Operator, Some("globex")).appliance_metrics());
    assert!(!foreign.contains("cairn_node"), "{foreign}");
    assert!(!foreign.contains(&id), "{foreign}");
    // The hub's own metrics count the tunnel and the scrapes.
    let (tls, _) =
        cairn_hub_client::tls::client_config(&Trust::CaBundle(hub.ca_pem.clone()), None).unwrap();
    let hub_metrics = reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
        .get(format!("{}/metrics", hub.url))
        .bearer_auth(&hub.admin_token)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        hub_metrics.contains("cairn_hub_open_tunnels 1"),
        "{hub_metrics}"
    );
    assert!(
        hub_metrics.contains("cairn_hub_node_scrapes_total{result=\"ok\"}"),
        "{hub_metrics}"
    );

    // Reboot: an admin's, asked through the CLI; the node ran its reboot command once.
    assert_eq!(status(admin.run(operator.reboot(&id)).map(drop)), 403);
    assert!(!rebooted.exists(), "an operator's refused reboot ran");
    assert_eq!(
        cairn_hub(&hub, dir.path(), &["appliances", "reboot", &id, "--yes"]),
        cairn_api::cli::Exit::Success
    );
    assert_eq!(std::fs::read_to_string(&rebooted).unwrap(), "reboot\n");

    // Support bundle: an operator's; every part is there, and no secret of the node's.
    let bundle = dir.path().join("bundle.tar.gz");
    assert_eq!(
        cairn_hub(
            &hub,
            dir.path(),
            &[
                "appliances",
                "support-bundle",
                &id,
                "-o",
                bundle.to_str().unwrap()
            ]
        ),
        cairn_api::cli::Exit::Success
    );
    let parts = support_bundle(&bundle);
    for name in [
        "journal.txt",
        "status.json",
        "ip-addr.json",
        "ip-route.json",
        "ip-link.json",
        "dmesg.txt",
        "versions.txt",
        "upgrade-state.json",
        "config/etc/cairn/node.yaml",
    ] {
        assert!(parts.contains_key(name), "no {name} in {:?}", parts.keys());
    }
    assert!(
        parts["status.json"].contains(&id),
        "{}",
        parts["status.json"]
    );
    assert!(
        parts["ip-addr.json"].contains("10.77.1.2"),
        "{}",
        parts["ip-addr.json"]
    );
    assert!(
        parts["config/etc/cairn/node.yaml"].contains("token_file: <redacted>"),
        "{}",
        parts["config/etc/cairn/node.yaml"]
    );
    for (name, text) in &parts {
        assert!(!text.contains(&token), "the enrollment token is in {name}");
        assert!(!text.contains("PRIVATE KEY"), "a private key is in {name}");
    }
    let bundles = admin.ok(admin.client.audit(&SinceQuery::default()));
    assert!(
        bundles
            .iter()
            .any(|e| e.action == "appliance.support-bundle" && e.target == id),
        "{bundles:#?}"
    );

    // Rollback: refused, saying why, while the booted slot is unknown; then, booted from b
    // after the committed upgrade, slot a becomes the default and the node reboots.
    let refused = admin.run(admin.client.rollback(&id)).map(drop);
    match &refused {
        Err(HubError::Refused { status, body, .. }) => {
            assert_eq!(*status, 409);
            assert!(body.message.contains("booted slot is unknown"), "{body:?}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(grub_slot(&root), "b");
    std::fs::write(root.join("cmdline"), "root=/dev/vda2 cairn.slot=b quiet\n").unwrap();
    assert_eq!(status(admin.run(operator.rollback(&id)).map(drop)), 403);
    assert_eq!(
        cairn_hub(&hub, dir.path(), &["appliances", "rollback", &id, "--yes"]),
        cairn_api::cli::Exit::Success
    );
    assert_eq!(grub_slot(&root), "a");
    assert_eq!(
        std::fs::read_to_string(&rebooted).unwrap(),
        "reboot\nreboot\n"
    );

    // The audit log has who ran what, and how it ended.
    let audit = admin.ok(admin.client.audit(&SinceQuery::default()));
    for (action, result) in [
        ("appliance.reboot", "started"),
        ("appliance.reboot", "reboot requested (sh -c"),
        ("appliance.rollback", "failed: cairn-node cannot roll back"),
        (
            "appliance.rollback",
            "slot a is the default; reboot requested",
        ),
    ] {
        assert!(
            audit.iter().any(|e| e.action == action
                && e.target == id
                && e.result.starts_with(result)
                && e.actor.starts_with("operator:")),
            "no {action} {result:?} entry in {audit:#?}"
        );
    }
    let execs: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "appliance.exec")
        .collect();
    let first = format!("{id}: sh -c 'echo out; echo err >&2; exit 3'");
    for result in ["started", "exit 3"] {
        assert!(
            execs.iter().any(|e| e.target == first
                && e.result == result
                && e.actor.starts_with("operator:")),
            "no {result:?} entry for {first:?} in {execs:#?}"
        );
    }
    assert!(
        !execs.iter().any(|e| e.target.ends_with(": true")),
        "refused calls ran: {execs:#?}"
    );

    // The hub restarts (killed): the node's tunnel comes back by itself.
    hub.kill();
    drop(hub);
    let hub = start_hub();
    let admin = hub.admin();
    let back = Instant::now();
    let again = poll("exec after the hub restarted", LIMIT, || {
        admin
            .run(admin.client.exec(&id, &argv(&["echo", "back"])))
            .ok()
    });
    eprintln!("tunnel back {:?} after the hub restarted", back.elapsed());
    assert_eq!(again.stdout, "back\n");
    node.stop();
}
