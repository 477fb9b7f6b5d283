//! The node daemon against a real `cairn-hub`: registration, heartbeats, autonomy while the
//! hub is down, in-order delivery when it is back (read from the hub's etcd history), the
//! local API refusing other users, and the bad-input cases.

mod common;

use std::process::Command;
use std::time::Duration;

use cairn_api::ConditionStatus;
use cairn_api::hub::{ApplyLayer, CreateVpc};
use cairn_test_support::ports::free_tcp_port;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const NO_NET: &str = "network:\n  manage: false\n";

fn registered(node: &Node) -> LocalStatus {
    poll("the node to register and heartbeat", LIMIT, || {
        node.status()
            .filter(|s| s.appliance_id.is_some() && s.hub_reachable && s.phase == "running")
    })
}

#[test]
fn registers_heartbeats_and_keeps_its_identity_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("factory-7");
    write_config(&root, &hub.url, &hub.fingerprint, &token, NO_NET);

    let node = Node::start(&root);
    let status = registered(&node);
    let id = status.appliance_id.clone().unwrap();
    assert_eq!(status.site.as_deref(), Some("factory-7"));
    // The hub's interval (1 s in these tests) replaces the default 30 s.
    assert_eq!(status.heartbeat_interval_seconds, 1, "{status:?}");
    assert!(status.certificate_not_after.is_some(), "{status:?}");
    assert!(
        !root.join("etc/cairn/token").exists(),
        "the spent token is removed from disk"
    );

    // The hub knows the appliance with the inventory read from the fixture.
    let admin = hub.admin();
    let appliance = admin.ok(admin.client.appliance(&id));
    let inventory = &appliance.inventory;
    assert_eq!(inventory.serial, "cairn-fixture-0001", "{appliance:#?}");
    assert!(
        inventory.nics.iter().any(|n| n.mac == "02:fc:00:00:00:01"),
        "{appliance:#?}"
    );

    // A restart keeps the identity (no token any more, no new registration).
    node.stop();
    let node = Node::start(&root);
    let again = registered(&node);
    assert_eq!(again.appliance_id.as_deref(), Some(id.as_str()));
    let list = admin.appliances().unwrap();
    assert_eq!(list.len(), 1, "{list:#?}");
    node.stop();
}

#[test]
fn the_vtep_reaches_the_hub_and_a_node_not_managing_its_network_says_it_realises_no_vpc() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("vpc");
    // A documentation address: only reported, nothing is sent to it.
    let config = "network:\n  manage: false\n  vtep_address: 192.0.2.7\n";
    write_config(&root, &hub.url, &hub.fingerprint, &token, config);
    let node = Node::start(&root);
    let id = registered(&node).appliance_id.unwrap();
    let admin = hub.admin();
    let appliance = || admin.run(admin.client.appliance(&id)).ok();
    poll("the hub to learn the VTEP", LIMIT, || {
        appliance()
            .filter(|a| a.vtep_address.as_deref() == Some("192.0.2.7"))
            .map(drop)
    });

    admin.ok(admin.client.create_vpc(&CreateVpc {
        name: "red".into(),
        subnet: "10.9.0.0/24".into(),
        tenant: None,
    }));
    admin.ok(admin.client.attach("red", &id));
    let seen = poll("the node to report the overlay condition", LIMIT, || {
        let a = appliance()?;
        let condition = a
            .status
            .as_ref()?
            .status
            .conditions
            .iter()
            .find(|c| c.kind == "OverlayApplied")?
            .clone();
        Some((condition, a))
    });
    let (condition, a) = seen;
    assert_eq!(condition.status, ConditionStatus::False, "{a:#?}");
    assert_eq!(condition.reason, "NotManaged", "{a:#?}");
    assert_eq!(
        a.desired.overlay.as_ref().map(|o| o.local_vtep.as_str()),
        Some("192.0.2.7"),
        "{a:#?}"
    );
    node.stop();
}

/// A site layer's heartbeat interval, DNS and NTP servers reach a real node through the
/// hub's desired state: the interval is kept, the resolved drop-in and the chrony sources
/// are written under the node's root and chrony is told to re-read them; the hub shows
/// drift until the node reports the configuration generation applied, with nothing left
/// in `not_applied`.
#[test]
fn a_site_layer_sets_the_heartbeat_interval_and_the_node_reports_the_generation() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("layered");
    write_config(&root, &hub.url, &hub.fingerprint, &token, NO_NET);
    let node = Node::start(&root);
    let id = registered(&node).appliance_id.unwrap();
    // Stopped, so that the drift below is seen before the node can answer it.
    node.stop();

    let admin = hub.admin();
    let change = admin.ok(admin.client.apply_config_layer(&ApplyLayer {
        file: "site.yaml".into(),
        document: "layer: site:layered\nsettings:\n  heartbeat_interval_seconds: 2\n  \
                   dns: [192.0.2.53]\n  ntp: [ntp.example, 192.0.2.123]\n"
            .into(),
        dry_run: false,
        force: false,
    }));
    assert_eq!(change.appliances, 1, "{change:?}");
    let shown = admin.ok(admin.client.appliance_config(&id));
    assert_eq!(shown.state.desired_generation, 1, "{shown:?}");
    assert!(shown.state.drift, "not applied yet: {shown:?}");

    // A stand-in chronyc that records how it was called.
    let chronyc = dir.path().join("chronyc");
    let calls = dir.path().join("chronyc.calls");
    std::fs::write(
        &chronyc,
        format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
    )
    .unwrap();
    std::fs::set_permissions(
        &chronyc,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let node = Node::start_full(&root, &[], &["--chronyc", chronyc.to_str().unwrap()]);
    let shown = poll(
        "the node to report configuration generation 1",
        LIMIT,
        || {
            admin
                .run(admin.client.appliance_config(&id))
                .ok()
                .filter(|c| !c.state.drift)
        },
    );
    assert_eq!(shown.state.applied_generation, 1, "{shown:?}");
    assert_eq!(shown.state.last_good_generation, Some(1), "{shown:?}");
    let report = shown.state.report.unwrap();
    assert!(report.not_applied.is_empty(), "{report:?}");
    let resolved =
        std::fs::read_to_string(root.join("etc/systemd/resolved.conf.d/50-cairn.conf")).unwrap();
    assert!(
        resolved.contains("[Resolve]\nDNS=192.0.2.53\n"),
        "{resolved}"
    );
    let sources = std::fs::read_to_string(root.join("etc/chrony/sources.d/cairn.sources")).unwrap();
    assert!(
        sources.contains("server ntp.example iburst\nserver 192.0.2.123 iburst\n"),
        "{sources}"
    );
    assert_eq!(
        std::fs::read_to_string(&calls).unwrap(),
        "reload sources\n",
        "chrony re-reads its sources once"
    );
    let status = poll("the node to keep the layer's interval", LIMIT, || {
        node.status().filter(|s| s.heartbeat_interval_seconds == 2)
    });
    assert_eq!(status.appliance_id.as_deref(), Some(id.as_str()));
    node.stop();
}

#[test]
fn the_certificate_is_renewed_before_expiry_and_a_deleted_identity_is_never_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("renew");
    write_config(&root, &hub.url, &hub.fingerprint, &token, NO_NET);
    let node = Node::start(&root);
    let id = registered(&node).appliance_id.unwrap();
    node.stop();

    // 20 hours later (libfaketime; the hub signs for 24 h): under a third of the validity
    // is left, so the node renews with the real hub and heartbeats with the new certificate.
    let node = Node::start_with(
        &root,
        &[
            "env",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
            "faketime",
            "-f",
            "+20h",
        ],
    );
    poll("the renewal", LIMIT, || {
        node.log()
            .contains("client certificate renewed")
            .then_some(())
    });
    let after = node.status().unwrap().last_hub_contact;
    // Heartbeats go on with the new certificate (the hub takes the old one only until the
    // next renewal).
    let renewed = poll("a heartbeat after the renewal", LIMIT, || {
        node.status()
            .filter(|s| s.last_hub_contact != after && s.hub_reachable && s.last_error.is_none())
    });
    assert_eq!(
        renewed.appliance_id.as_deref(),
        Some(id.as_str()),
        "same identity"
    );
    assert_eq!(
        node.log().matches("client certificate renewed").count(),
        1,
        "renewed once, not on every heartbeat although the clocks disagree"
    );
    node.stop();

    // The operator deletes the appliance: the node stops with the way out, and does not
    // register itself again as a new appliance.
    let node = Node::start(&root);
    registered(&node);
    let admin = hub.admin();
    admin.ok(admin.client.delete_appliance(&id));
    let status = poll("the node to see its identity rejected", LIMIT, || {
        node.status().filter(|s| s.phase == "identity-rejected")
    });
    let error = status.last_error.as_deref().unwrap_or_default();
    assert!(error.contains("register again"), "{status:?}");
    let list = admin.appliances().unwrap();
    assert!(list.is_empty(), "{list:#?}");
    node.stop();
}

/// A one-member etcd on loopback for a hub to keep its state in: etcd keeps every revision,
/// so a test can read every status the hub stored, in the order it stored them.
struct Etcd {
    url: String,
    _child: ChildGuard,
    _dir: tempfile::TempDir,
}

/// Plain HTTP to etcd; reqwest still wants a TLS backend, so it gets an empty one with the
/// workspace's crypto provider.
fn plain_http() -> reqwest::blocking::Client {
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    reqwest::blocking::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap()
}

impl Etcd {
    fn start() -> Etcd {
        let dir = tempfile::tempdir().unwrap();
        let ports = cairn_test_support::ports::free_tcp_ports(2);
        let url = format!("http://127.0.0.1:{}", ports[0]);
        let peer = format!("http://127.0.0.1:{}", ports[1]);
        let child = ChildGuard::spawn(
            Command::new("etcd")
                .arg("--data-dir")
                .arg(dir.path().join("data"))
                .args([
                    "--listen-client-urls",
                    &url,
                    "--advertise-client-urls",
                    &url,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                ])
                .args(["--initial-cluster", &format!("default={peer}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap()),
        )
        .expect("etcd is needed for this test: install etcd-server (scripts/setup does)");
        let http = plain_http();
        poll("etcd to answer", LIMIT, || {
            http.get(format!("{url}/health"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        Etcd {
            url,
            _child: child,
            _dir: dir,
        }
    }

    /// One key as of `revision` (0: now), through etcd's JSON gateway.
    fn range(&self, key: &str, revision: i64) -> serde_json::Value {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        plain_http()
            .post(format!("{}/v3/kv/range", self.url))
            .json(&serde_json::json!({"key": b64.encode(key), "revision": revision}))
            .send()
            .unwrap()
            .json()
            .unwrap()
    }

    /// Every value `key` had, oldest first.
    fn history(&self, key: &str) -> Vec<serde_json::Value> {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD;
        let int = |v: &serde_json::Value| v.as_str().unwrap().parse::<i64>().unwrap();
        let now = self.range(key, 0);
        let kv = &now["kvs"][0];
        assert!(kv.is_object(), "{key} is not in etcd: {now}");
        let (first, last) = (int(&kv["create_revision"]), int(&now["header"]["revision"]));
        let mut seen = None;
        let mut values = Vec::new();
        for revision in first..=last {
            let kv = self.range(key, revision)["kvs"][0].clone();
            let modified = int(&kv["mod_revision"]);
            if seen != Some(modified) {
                seen = Some(modified);
                let raw = b64.decode(kv["value"].as_str().unwrap()).unwrap();
                values.push(serde_json::from_slice(&raw).unwrap());
            }
        }
        values
    }
}

/// When the node took each report the hub stored for appliance `id`, in the order stored.
/// Read from etcd, not through the hub's client: the hub's API shows only the latest status,
/// and every revision of it is only in etcd's history.
fn received_reports(etcd: &Etcd, id: &str) -> Vec<time::OffsetDateTime> {
    etcd.history(&format!("/cairn/hub/status/{id}"))
        .into_iter()
        .map(|status| {
            serde_json::from_value::<cairn_api::NodeStatus>(status["status"].clone())
                .unwrap()
                .observed_at
        })
        .collect()
}

#[test]
fn with_the_hub_down_reports_queue_boundedly_and_are_delivered_when_it_returns() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let hub_data = dir.path().join("hub");
    let on_etcd = |builder: HubBuilder| {
        builder
            .init_args(&["--etcd-endpoints", &etcd.url])
            .serve_args(&["--heartbeat-interval", "1", "--etcd-endpoints", &etcd.url])
    };
    let hub = on_etcd(hub_at(&hub_data)).start();
    let addr = hub.addr().to_owned();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("s");
    write_config(
        &root,
        &hub.url,
        &hub.fingerprint,
        &token,
        &format!("{NO_NET}state:\n  queue_limit: 3\n"),
    );
    let node = Node::start(&root);
    let id = registered(&node).appliance_id.unwrap();

    drop(hub);
    let down_at = time::OffsetDateTime::now_utc();
    // Reports pile up to the bound; the oldest are dropped and counted.
    let status = poll("reports to be dropped from the full queue", LIMIT, || {
        node.status()
            .filter(|s| s.counters.get("reports_dropped").is_some_and(|&n| n >= 1))
    });
    assert!(!status.hub_reachable);
    assert_eq!(status.queued_reports, 3);
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("unreachable"),
        "{status:?}"
    );

    // Same address, same data: the queue drains and the reconnect is counted.
    let hub = on_etcd(hub_at(&hub_data)).listen(&addr).start();
    let up_at = time::OffsetDateTime::now_utc();
    let status = poll("the queue to drain", Duration::from_secs(400), || {
        node.status()
            .filter(|s| s.queued_reports == 0 && s.hub_reachable)
    });
    assert!(
        status.counters.get("reconnects").is_some_and(|&n| n >= 1),
        "{status:?}"
    );
    drop(hub);
    node.stop();

    // What the hub received: every report it stored, none older than the one before (the
    // queue goes oldest first; the same report twice is a retry whose answer was lost), and
    // among them the ones taken while it was down or starting (the queue holds 3; the first
    // round that reaches it queues one more first).
    let received = received_reports(&etcd, &id);
    assert!(
        received.windows(2).all(|w| w[0] <= w[1]),
        "not in the order taken: {received:?}"
    );
    let queued = received
        .iter()
        .filter(|t| **t > down_at && **t < up_at)
        .count();
    assert!(
        queued >= 2,
        "{queued} reports taken during the outage reached the hub: {received:?}"
    );
}

/// Two hubs on one etcd, the node configured with both URLs: it registers with and
/// heartbeats to the first; once that one is killed (SIGKILL) it carries on against the
/// second. Bound: a heartbeat that cannot connect goes to the next URL at once, and one that
/// broke mid-way is retried after the first backoff (at most 1 s), so the node is back within
/// one heartbeat interval (1 s here, ±10 %) plus one backoff; asserted under 5 s on a shared
/// machine.
#[test]
fn a_node_carries_on_against_the_next_hub_url_when_its_hub_is_killed() {
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    let serve = ["--heartbeat-interval", "1", "--etcd-endpoints", &etcd.url];
    let mut first = hub_at(&dir.path().join("hub-a"))
        .init_args(&["--etcd-endpoints", &etcd.url])
        .serve_args(&serve)
        .start();
    let second = first.replica(&serve);
    let root = dir.path().join("node");
    let token = first.enrollment_token("s");
    write_config(&root, &first.url, &first.fingerprint, &token, NO_NET);
    std::fs::create_dir_all(root.join("etc/cairn/node.d")).unwrap();
    std::fs::write(
        root.join("etc/cairn/node.d/10-hubs.yaml"),
        format!("hub:\n  urls: [{}, {}]\n", first.url, second.url),
    )
    .unwrap();
    let node = Node::start(&root);
    let status = registered(&node);
    let id = status.appliance_id.unwrap();
    assert_eq!(status.hub_url, first.url);
    // The tunnel is the first hub's: the second forwards the request there.
    let admin = second.admin();
    let exec = || admin.run(admin.client.exec(&id, &echo_tunnel()));
    let forwarded = poll("exec through the second hub", LIMIT, || exec().ok());
    assert_eq!(forwarded.stdout, "tunnel\n");
    // Logs too: the system's journal, or journalctl saying there is none.
    let mut logs = admin.ok(admin.client.appliance_logs(&id, &Default::default()));
    let mut text = Vec::new();
    while let Some(chunk) = admin.ok(logs.next_chunk()) {
        text.extend(chunk);
    }
    assert!(!text.is_empty(), "journalctl printed nothing");
    // Audited once, by the replica that ran it.
    let audit = admin.ok(admin.client.audit(&Default::default()));
    let started = audit
        .iter()
        .filter(|e| e.action == "appliance.exec" && e.result == "started")
        .count();
    assert_eq!(started, 1, "{audit:#?}");

    first.kill();
    let killed = std::time::Instant::now();
    let killed_at = time::OffsetDateTime::now_utc();
    // The node says it reached the second hub, and that hub stored a heartbeat sent after
    // the kill.
    poll("the node to heartbeat to the second hub", LIMIT, || {
        let status = node.status()?;
        let seen = admin
            .run(admin.client.appliance(&id))
            .ok()?
            .status?
            .last_seen;
        (status.hub_url == second.url && status.hub_reachable && seen > killed_at).then_some(())
    });
    let took = killed.elapsed();
    println!("the node heartbeats to the second hub {took:?} after the first was killed");
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    // The tunnel follows the node to the next hub URL.
    let moved = poll("the tunnel to reach the second hub", LIMIT, || exec().ok());
    assert_eq!(moved.stdout, "tunnel\n");
    node.stop();
}

fn echo_tunnel() -> cairn_api::hub::ExecRequest {
    cairn_api::hub::ExecRequest {
        argv: vec!["echo".into(), "tunnel".into()],
        timeout_seconds: None,
    }
}

/// The local API is root's: with every directory on the way open to all, another user
/// (`nobody`, running the real `cairn-node status`) is refused by the socket itself while
/// root is answered.
#[test]
fn the_local_api_answers_root_and_refuses_any_other_user() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    // An unreachable hub: the daemon serves its local API all the same.
    let fingerprint = format!("sha256:{}", "ab".repeat(32));
    write_config(&root, "https://127.0.0.1:9", &fingerprint, "unused", NO_NET);
    let node = Node::start(&root);
    poll("the local API to answer", LIMIT, || node.status());
    let sock = root.join("run/cairn/node.sock");
    for d in [
        dir.path(),
        &root,
        &root.join("run"),
        &root.join("run/cairn"),
    ] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let status_as = |uid: u32| {
        Command::new(workspace_bin("cairn-node", "cairn-node-daemon"))
            .args(["status", "--output", "json", "--socket"])
            .arg(&sock)
            .uid(uid)
            .gid(uid)
            .output()
            .unwrap()
    };
    let out = status_as(0);
    assert!(out.status.success(), "{out:?}");
    let as_root: LocalStatus = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(as_root.hostname, "edge-test", "{as_root:?}");
    let nobody = 65534;
    let out = status_as(nobody);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "nobody was answered: {out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    node.stop();
}

#[test]
fn a_hub_ca_not_matching_the_pinned_fingerprint_is_refused_and_nothing_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("s");
    let wrong = format!("sha256:{}", "ab".repeat(32));
    write_config(&root, &hub.url, &wrong, &token, NO_NET);
    let node = Node::start(&root);
    let status = poll("the fingerprint error", LIMIT, || {
        node.status().filter(|s| s.last_error.is_some())
    });
    let err = status.last_error.as_deref().unwrap();
    assert!(
        err.contains("does not match the pinned CA fingerprint"),
        "{err}"
    );
    assert!(
        err.contains(&hub.fingerprint),
        "names what the hub presented: {err}"
    );
    assert_eq!(status.phase, "registering");
    // The token was not used: the hub still accepts it.
    let admin = hub.admin();
    let check = admin.ok(admin.client.check_token(&token));
    assert!(check.valid, "{check:?}");
    node.stop();
}

#[test]
fn a_rejected_token_is_reported_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    write_config(
        &root,
        &hub.url,
        &hub.fingerprint,
        "cairn-et.000000000000.00000000000000000000000000000000",
        NO_NET,
    );
    let node = Node::start(&root);
    let status = poll("the token error", LIMIT, || {
        node.status().filter(|s| s.last_error.is_some())
    });
    let err = status.last_error.as_deref().unwrap();
    assert!(err.contains("rejected the enrollment token"), "{err}");
    assert!(err.contains("cairn hub token create"), "{err}");
    node.stop();
}

#[test]
fn a_hub_answering_garbage_is_named_as_such() {
    // openssl's s_server -www answers every request with an HTML page: TLS is fine (the
    // fingerprint is pinned to its certificate), the content is not the cairn API.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        output_ok(
            Command::new("openssl").current_dir(d).args(args),
            "openssl is needed for this test: apt-get install openssl",
        )
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=garbage-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=localhost",
                "-keyout",
                "k.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    );
    std::fs::write(d.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(&[
        "x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "1",
        "-extfile", "ext", "-out", "c.pem",
    ]);
    let port = free_tcp_port();
    let _server = ChildGuard::spawn(
        Command::new("openssl")
            .current_dir(d)
            .args([
                "s_server",
                "-quiet",
                "-www",
                "-cert",
                "c.pem",
                "-key",
                "k.pem",
                "-cert_chain",
                "ca.pem",
                "-accept",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null()),
    )
    .unwrap();
    let der = openssl(&["x509", "-outform", "DER", "-in", "ca.pem"]);
    let fp = hex::encode(ring::digest::digest(&ring::digest::SHA256, &der));
    let root = dir.path().join("node");
    write_config(
        &root,
        &format!("https://127.0.0.1:{port}"),
        &fp,
        "cairn-et.a.b",
        NO_NET,
    );
    let node = Node::start(&root);
    let status = poll("the garbage error", LIMIT, || {
        node.status().filter(|s| {
            s.last_error
                .as_deref()
                .is_some_and(|e| e.contains("not the cairn API"))
        })
    });
    assert!(
        status.last_error.as_deref().unwrap().contains("GET /v1/ca"),
        "{status:?}"
    );
    node.stop();
}

#[test]
fn a_corrupt_state_store_stops_the_start_with_the_way_out() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("node");
    write_config(&root, "https://127.0.0.1:9", &"ab".repeat(32), "t", NO_NET);
    let state = root.join("var/lib/cairn");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("node.redb"), vec![0x42; 8192]).unwrap();
    let node_bin = workspace_bin("cairn-node", "cairn-node-daemon");
    let out = Command::new(&node_bin)
        .arg("--root")
        .arg(&root)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is corrupt"), "{err}");
    assert!(err.contains("cairn-node state reset"), "{err}");
    // The way out works and keeps the old file for inspection.
    let out = Command::new(&node_bin)
        .arg("--root")
        .arg(&root)
        .args(["state", "reset"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!state.join("node.redb").exists());
    assert!(std::fs::read_dir(&state).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("node.redb.corrupt-")
    }));
}

#[test]
fn invalid_configuration_exits_3_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_config(root, "https://h.test", &"ab".repeat(32), "t", NO_NET);
    std::fs::create_dir_all(root.join("etc/cairn/node.d")).unwrap();
    std::fs::write(
        root.join("etc/cairn/node.d/50-k.yaml"),
        "kubelet:\n  unit: kubelet\n",
    )
    .unwrap();
    let out = Command::new(workspace_bin("cairn-node", "cairn-node-daemon"))
        .arg("--root")
        .arg(root)
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("node.d/50-k.yaml:2: key `kubelet.unit`"),
        "{err}"
    );
}
