//! Releases and campaigns through a real `cairn-hub` over real mTLS: signed bundles made
//! with `cairn-formats` (unsigned and unknown-key bundles refused), bundles served with
//! HTTP Range, and simulated appliances whose heartbeats carry the reports a node sends
//! (the real node side lives in node-daemon/): canary then batches, a rollback that
//! quarantines and pauses, an appliance back on an unexpected version, an offline one.

mod common;

#[allow(dead_code)]
#[path = "../src/testutil.rs"]
mod testutil;

use std::path::{Path, PathBuf};

use cairn_formats::bundle;
use cairn_formats::keys::SigningKey;
use common::{Device, Hub, HubClients, LIMIT, Operator, process_state};

/// Polls `$body` (an `Option`-valued block that may borrow mutably) until it is `Some`; a
/// closure-based poll cannot lend `&mut` nodes to its future.
macro_rules! until {
    ($what:expr, $body:block) => {{
        let mut polling = cairn_test_support::Poll::new($what, LIMIT).start();
        loop {
            if let Some(v) = $body {
                break v;
            }
            polling.wait_async().await;
        }
    }};
}
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// A signing key and bundles made with it, in a temp dir.
struct Releases {
    dir: tempfile::TempDir,
    key: SigningKey,
    public: PathBuf,
}

impl Releases {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate().unwrap();
        let public = dir.path().join("release.pub.pem");
        key.public_key().write(&public).unwrap();
        Releases { dir, key, public }
    }

    /// A bundle of `version` (signed by `key` when given); returns its path and SHA-256.
    fn bundle(&self, version: &str, key: Option<&SigningKey>) -> (PathBuf, String) {
        let root = self.dir.path().join(format!("{version}.img"));
        let image: Vec<u8> = (0..256 * 1024u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&root, &image).unwrap();
        let payload = self.dir.path().join(format!("{version}.img.zst"));
        std::fs::write(&payload, zstd::encode_all(&image[..], 3).unwrap()).unwrap();
        let out = self.dir.path().join(format!(
            "{version}-{}.bundle",
            if key.is_some() { "signed" } else { "unsigned" }
        ));
        let _ = std::fs::remove_file(&out);
        bundle::create(
            &out,
            version,
            "x86_64",
            vec!["1.0".into()],
            "2026-11-22T00:00:00Z",
            &root,
            &payload,
        )
        .unwrap();
        if let Some(k) = key {
            bundle::sign(&out, k).unwrap();
        }
        (out.clone(), sha256_file(&out))
    }
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn serve_args() -> Vec<&'static str> {
    vec![
        "--heartbeat-interval",
        "1",
        "--campaign-check-every-ms",
        "100",
    ]
}

fn hub_trusting(releases: &Releases) -> Hub {
    Hub::builder(common::hub_bin())
        .init_args(&["--trusted-release-key", releases.public.to_str().unwrap()])
        .serve_args(&serve_args())
        .start()
}

async fn upload(op: &Operator, path: &Path, sha256: &str) -> (u16, Value) {
    let resp = op
        .http
        .post(format!("{}/v1/releases/upload?sha256={sha256}", op.url))
        .bearer_auth(&op.token)
        .body(std::fs::read(path).unwrap())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Serves `body` to the first HTTP request on a loopback port, then stops listening;
/// returns the URL.
async fn serve_once(body: Vec<u8>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/release.bundle", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "request cut short");
            head.extend_from_slice(&buf[..n]);
        }
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        conn.write_all(answer.as_bytes()).await.unwrap();
        conn.write_all(&body).await.unwrap();
        conn.shutdown().await.unwrap();
    });
    url
}

/// What a simulated node does with an order.
#[derive(Clone, PartialEq)]
enum Behaviour {
    /// Downloads the bundle (checking its SHA-256), reports downloading, then committed.
    Commit,
    /// Reports rolled-back: the new slot failed its health check.
    RollBack,
    /// Comes back on this version, with no report.
    Unexpected(&'static str),
    /// Never heartbeats.
    Offline,
}

/// A simulated appliance: registered for real, heartbeating over its own mTLS client.
struct Node {
    id: String,
    http: reqwest::Client,
    os: String,
    slot: &'static str,
    report: Option<Value>,
    applied: u64,
    behaviour: Behaviour,
    downloaded: bool,
}

impl Node {
    async fn register(hub: &Hub, token: &str, n: usize, behaviour: Behaviour) -> Node {
        let device = Device::new(
            &format!("edge-{n}"),
            &format!("UPG-{n}"),
            &[&format!("52:54:00:20:00:{n:02x}")],
        );
        let reg = device.register(hub, token).await;
        Node {
            id: reg.appliance_id.to_string(),
            http: device.client(hub, &reg),
            os: "1.0".into(),
            slot: "a",
            report: None,
            applied: 0,
            behaviour,
            downloaded: false,
        }
    }

    /// One heartbeat to `url`; acts on the order it gets back for the next one.
    async fn beat(&mut self, url: &str) -> Value {
        if self.behaviour == Behaviour::Offline {
            return Value::Null;
        }
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let body = json!({"applied_generation": self.applied, "status": {
            "agent_version": "0.1.0", "os_version": self.os, "booted_slot": self.slot,
            "upgrade": self.report, "observed_at": now}});
        let (status, resp) = common::post(&self.http, format!("{url}/v1/heartbeats"), &body).await;
        assert_eq!(status, 200, "{resp}");
        let desired = resp["desired"].clone();
        self.applied = desired["generation"].as_u64().unwrap();
        let order = &desired["upgrade"];
        if order.is_null() {
            return desired;
        }
        let same = self.report.as_ref().is_some_and(|r| {
            r["campaign"] == order["campaign"] && r["version"] == order["version"]
        });
        let phase = self.report.as_ref().map(|r| r["phase"].clone());
        let report = |phase: &str, reason: &str| {
            json!({"campaign": order["campaign"], "version": order["version"], "phase": phase,
                "reason": reason, "at": now})
        };
        match self.behaviour.clone() {
            Behaviour::Commit if !same => {
                let bundle_url = order["bundle_url"].as_str().unwrap();
                assert!(bundle_url.starts_with(url), "{bundle_url}");
                let bytes = self.http.get(bundle_url).send().await.unwrap();
                assert_eq!(bytes.status(), 200);
                let bytes = bytes.bytes().await.unwrap();
                assert_eq!(hex::encode(Sha256::digest(&bytes)), order["sha256"]);
                self.downloaded = true;
                self.report = Some(report("downloading", ""));
            }
            Behaviour::Commit if phase == Some(json!("downloading")) => {
                self.os = order["version"].as_str().unwrap().into();
                self.slot = "b";
                self.report = Some(report("committed", ""));
            }
            Behaviour::RollBack if !same => {
                self.report = Some(report(
                    "rolled-back",
                    "health check failed: kubelet inactive",
                ));
            }
            Behaviour::Unexpected(v) => self.os = v.into(),
            _ => {}
        }
        desired
    }
}

async fn campaign(op: &Operator, name: &str) -> Value {
    let (s, v) = op.get(&format!("/v1/campaigns/{name}")).await;
    assert_eq!(s, 200, "{v}");
    v
}

fn member<'a>(c: &'a Value, id: &str) -> &'a Value {
    c["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["appliance"] == id)
        .unwrap()
}

fn states(c: &Value) -> Vec<String> {
    c["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["state"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn releases_are_verified_against_trusted_keys_and_served_with_ranges() {
    let releases = Releases::new();
    let hub = hub_trusting(&releases);
    let admin = hub.admin();

    // Unsigned, signed by a key the hub does not trust, wrong digest: all refused.
    let (unsigned, unsigned_sha) = releases.bundle("2.0", None);
    let (s, v) = upload(&admin, &unsigned, &unsigned_sha).await;
    assert_eq!(
        (s, v["error"].as_str()),
        (400, Some("bundle_refused")),
        "{v}"
    );
    assert!(v["message"].as_str().unwrap().contains("not signed"), "{v}");
    let stranger = SigningKey::generate().unwrap();
    let (foreign, foreign_sha) = releases.bundle("2.0", Some(&stranger));
    let (s, v) = upload(&admin, &foreign, &foreign_sha).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["message"].as_str().unwrap().contains("trusted key"),
        "{v}"
    );
    let (signed, sha) = releases.bundle("2.0", Some(&releases.key));
    let (s, v) = upload(&admin, &signed, &"0".repeat(64)).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("SHA-256"), "{v}");
    let (s, v) = admin.get("/v1/releases").await;
    assert_eq!(
        (s, v.as_array().unwrap().len()),
        (200, 0),
        "nothing refused was kept: {v}"
    );

    // The good one: listed with size, compatible-from and signing key.
    let (s, v) = upload(&admin, &signed, &sha).await;
    assert_eq!(s, 201, "{v}");
    let (_, list) = admin.get("/v1/releases").await;
    let r = &list[0];
    assert_eq!(r["version"], "2.0");
    assert_eq!(r["size_bytes"], std::fs::metadata(&signed).unwrap().len());
    assert_eq!(r["compatible_from"], json!(["1.0"]));
    assert_eq!(r["signing_key"], releases.key.public_key().fingerprint());
    assert_eq!(r["sha256"], sha);
    let (s, _) = upload(&admin, &signed, &sha).await;
    assert_eq!(s, 409, "the same version twice");

    // Every attempt is in the audit log, refusals with the reason.
    let (_, audit) = admin.get("/v1/audit?since=2000-01-01T00:00:00Z").await;
    let adds: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "release.add")
        .map(|e| e["result"].as_str().unwrap())
        .collect();
    assert_eq!(
        adds.iter().filter(|r| r.starts_with("refused")).count(),
        4,
        "{adds:?}"
    );
    assert!(adds.contains(&"ok"), "{adds:?}");

    // An appliance downloads it over mTLS, resuming with a range; strangers cannot.
    let token = admin.enrollment_token("lab", 1).await;
    let node = Node::register(&hub, &token, 1, Behaviour::Commit).await;
    let url = format!("{}/v1/releases/2.0/bundle", hub.url);
    let all = std::fs::read(&signed).unwrap();
    let resp = node
        .http
        .get(&url)
        .header("range", "bytes=100-")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(resp.bytes().await.unwrap(), all[100..]);
    let resp = node.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap(), all[..]);
    let resp = hub.anonymous().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // Added by URL: the hub downloads it once (from a loopback server here) and refuses a
    // URL that does not answer.
    let (v3, sha3) = releases.bundle("3.0", Some(&releases.key));
    let url3 = serve_once(std::fs::read(&v3).unwrap()).await;
    let (s, v) = admin
        .post("/v1/releases", json!({"url": url3, "sha256": sha3}))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["source_url"], url3);
    let got = node
        .http
        .get(format!("{}/v1/releases/3.0/bundle", hub.url))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hex::encode(Sha256::digest(&got)), sha3);
    let (s, v) = admin
        .post("/v1/releases", json!({"url": url3, "sha256": sha3}))
        .await;
    assert_eq!((s, v["error"].as_str()), (502, Some("fetch_failed")), "{v}");
    // Something that is no http(s) URL is the caller's mistake, not a failed upstream.
    let (s, v) = admin
        .post("/v1/releases", json!({"url": "ftp://x/b", "sha256": sha3}))
        .await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid")), "{v}");

    // Deleting it removes it.
    let (s, _) = admin
        .call(reqwest::Method::DELETE, "/v1/releases/2.0", None)
        .await;
    assert_eq!(s, 204);
    assert_eq!(node.http.get(&url).send().await.unwrap().status(), 404);
}

#[tokio::test]
async fn canary_then_batches_pause_on_a_rollback_that_is_quarantined() {
    let releases = Releases::new();
    let hub = hub_trusting(&releases);
    let admin = hub.admin();
    let (signed, sha) = releases.bundle("2.0", Some(&releases.key));
    assert_eq!(upload(&admin, &signed, &sha).await.0, 201);
    let token = admin.enrollment_token("lab", 10).await;
    let mut nodes = Vec::new();
    for n in 0..5 {
        nodes.push(Node::register(&hub, &token, n, Behaviour::Commit).await);
    }
    nodes.sort_by(|a, b| a.id.cmp(&b.id));
    // Batch layout by ID: [0] canary, [1,2] batch 1, [3,4] batch 2. One of batch 1 rolls back.
    nodes[2].behaviour = Behaviour::RollBack;
    for n in nodes.iter_mut() {
        n.beat(&hub.url).await;
    }

    let (s, c) = admin
        .post(
            "/v1/campaigns",
            json!({"name": "nov", "release": "2.0", "selector": {"site": "lab"},
                "canaries": 1, "batch_size": 2, "max_failures": 0,
                "window": {"start": "22:00", "end": "04:00"}, "prestage": true}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(states(&c), ["pending"; 5]);
    let kinds: Vec<&str> = c["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["canary", "batch", "batch"]);
    assert_eq!(
        admin.post("/v1/campaigns/nov/start", json!({})).await.0,
        200
    );

    // The canary alone gets the order, with the window and prestage; nobody else until it
    // committed.
    let desired = until!("the canary's order", {
        let d = nodes[0].beat(&hub.url).await;
        (!d["upgrade"].is_null()).then_some(d)
    });
    let order = &desired["upgrade"];
    assert_eq!(order["version"], "2.0");
    assert_eq!(order["campaign"], "nov");
    assert_eq!(
        order["bundle_url"],
        format!("{}/v1/releases/2.0/bundle", hub.url),
        "an https URL on the address the node reached the hub at"
    );
    assert_eq!(order["sha256"], sha);
    assert_eq!(order["window"], json!({"start": "22:00", "end": "04:00"}));
    assert_eq!(order["prestage"], true);
    for n in nodes[1..].iter_mut() {
        assert!(
            n.beat(&hub.url).await["upgrade"].is_null(),
            "only the canary is ordered"
        );
    }

    // Everybody heartbeats until the campaign pauses itself on the rollback.
    let c = until!("the campaign to pause", {
        for n in nodes.iter_mut() {
            n.beat(&hub.url).await;
        }
        let c = campaign(&admin, "nov").await;
        (c["state"] == "paused").then_some(c)
    });
    assert_eq!(member(&c, &nodes[0].id)["state"], "committed");
    // Paused stops new orders; the batch-mate already ordered still finishes.
    let c = until!("the rest of batch 1 to finish", {
        for n in nodes.iter_mut() {
            n.beat(&hub.url).await;
        }
        let c = campaign(&admin, "nov").await;
        (member(&c, &nodes[1].id)["state"] == "committed").then_some(c)
    });
    assert_eq!(c["state"], "paused");
    let failed = member(&c, &nodes[2].id);
    assert_eq!(failed["state"], "failed");
    assert_eq!(failed["phase"], "rolled-back");
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("kubelet inactive"),
        "{failed}"
    );
    // Batch 2 never started.
    assert_eq!(member(&c, &nodes[3].id)["state"], "pending");
    assert_eq!(member(&c, &nodes[4].id)["state"], "pending");
    assert!(
        c["state_reason"].as_str().unwrap().contains("1 failed"),
        "{c}"
    );
    assert!(nodes[3].beat(&hub.url).await["upgrade"].is_null());

    // The failed version is quarantined on that appliance; its order is withdrawn; its view
    // shows the booted version, slot and last upgrade result.
    let (_, view) = admin.get(&format!("/v1/appliances/{}", nodes[2].id)).await;
    assert!(view["quarantined"]["2.0"].is_string(), "{view}");
    assert!(view["desired"]["upgrade"].is_null(), "{view}");
    assert_eq!(view["status"]["status"]["os_version"], "1.0");
    assert_eq!(view["status"]["status"]["booted_slot"], "a");
    assert_eq!(view["status"]["status"]["upgrade"]["phase"], "rolled-back");
    let (_, committed) = admin.get(&format!("/v1/appliances/{}", nodes[0].id)).await;
    assert_eq!(committed["status"]["status"]["os_version"], "2.0");
    assert_eq!(committed["status"]["status"]["booted_slot"], "b");

    // Each step is an event of its appliance.
    let (_, events) = admin.get("/v1/events?since=2000-01-01T00:00:00Z").await;
    let kinds_of = |id: &str| -> Vec<String> {
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["appliance"] == id)
            .map(|e| e["kind"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(kinds_of(&nodes[0].id).contains(&"upgrade-committed".to_owned()));
    let failed_kinds = kinds_of(&nodes[2].id);
    assert!(
        failed_kinds.contains(&"upgrade-ordered".to_owned()),
        "{failed_kinds:?}"
    );
    assert!(
        failed_kinds.contains(&"upgrade-failed".to_owned()),
        "{failed_kinds:?}"
    );

    // Metrics count campaigns and members.
    let metrics = admin.metrics().await;
    assert!(
        metrics.contains("cairn_hub_campaigns{state=\"paused\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("cairn_hub_campaign_members{state=\"failed\"} 1"),
        "{metrics}"
    );

    // A new campaign never orders the quarantined version to it...
    let (s, c2) = admin
        .post(
            "/v1/campaigns",
            json!({"name": "retry", "release": "2.0",
            "selector": {"site": "lab"}, "max_concurrency": 5, "max_failures": 5}),
        )
        .await;
    assert_eq!(s, 201, "{c2}");
    let skipped = member(&c2, &nodes[2].id);
    assert_eq!(skipped["state"], "skipped");
    assert!(
        skipped["reason"].as_str().unwrap().contains("quarantined"),
        "{skipped}"
    );
    // ...until an operator clears it (audited).
    let (s, v) = admin
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/appliances/{}/quarantine/2.0", nodes[2].id),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["quarantined"].is_null(), "{v}");
    let (_, audit) = admin.get("/v1/audit?since=2000-01-01T00:00:00Z").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in [
        "campaign.create",
        "campaign.start",
        "appliance.quarantine",
        "campaign.pause",
        "appliance.quarantine.clear",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }

    // Resuming the paused campaign after raising nothing: it pauses again (still over).
    // Aborting it withdraws nothing started and skips the pending batch.
    let (s, c) = admin.post("/v1/campaigns/nov/abort", json!({})).await;
    assert_eq!(s, 200, "{c}");
    assert_eq!(c["state"], "aborted");
    assert_eq!(member(&c, &nodes[3].id)["state"], "skipped");
    let (s, _) = admin.post("/v1/campaigns/nov/resume", json!({})).await;
    assert_eq!(s, 409, "an aborted campaign cannot resume");
}

#[tokio::test]
async fn an_unexpected_version_is_flagged_and_an_offline_appliance_keeps_its_order() {
    let releases = Releases::new();
    let hub = hub_trusting(&releases);
    let admin = hub.admin();
    let (signed, sha) = releases.bundle("2.0", Some(&releases.key));
    assert_eq!(upload(&admin, &signed, &sha).await.0, 201);
    let token = admin.enrollment_token("lab", 10).await;
    let mut odd = Node::register(&hub, &token, 1, Behaviour::Unexpected("1.7")).await;
    let mut away = Node::register(&hub, &token, 2, Behaviour::Commit).await;
    odd.beat(&hub.url).await;
    away.beat(&hub.url).await;
    away.behaviour = Behaviour::Offline;

    let (s, c) = admin
        .post(
            "/v1/campaigns",
            json!({"name": "odd", "release": "2.0",
            "selector": {"site": "lab"}, "max_concurrency": 2, "max_failures": 5}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        admin.post("/v1/campaigns/odd/start", json!({})).await.0,
        200
    );
    let c = until!("the unexpected version to be flagged", {
        odd.beat(&hub.url).await;
        let c = campaign(&admin, "odd").await;
        (member(&c, &odd.id)["state"] == "failed").then_some(c)
    });
    let m = member(&c, &odd.id);
    assert!(
        m["reason"].as_str().unwrap().contains("unexpected version"),
        "{m}"
    );
    let (_, view) = admin.get(&format!("/v1/appliances/{}", odd.id)).await;
    assert!(
        view["upgrade_flag"].as_str().unwrap().contains("1.7"),
        "{view}"
    );
    assert!(
        view["desired"]["upgrade"].is_null(),
        "the order is withdrawn: {view}"
    );

    // The offline appliance: ordered, silent, and nothing times it out (no deadline).
    let m = member(&c, &away.id);
    assert_eq!(m["state"], "ordered", "{m}");
    for _ in 0..10 {
        odd.beat(&hub.url).await;
    }
    let c = campaign(&admin, "odd").await;
    assert_eq!(member(&c, &away.id)["state"], "ordered");
    assert_eq!(c["state"], "running");
    // Back online it picks the order up and finishes.
    away.behaviour = Behaviour::Commit;
    until!("the returning appliance to commit", {
        away.beat(&hub.url).await;
        let c = campaign(&admin, "odd").await;
        (c["state"] == "completed").then_some(())
    });
    assert!(away.downloaded);

    // A flagged appliance is never ordered again blindly: a new campaign skips it.
    let (signed3, sha3) = releases.bundle("3.0", Some(&releases.key));
    assert_eq!(upload(&admin, &signed3, &sha3).await.0, 201);
    let (s, c) = admin
        .post(
            "/v1/campaigns",
            json!({"name": "next", "release": "3.0",
            "selector": {"site": "lab"}, "deadline_seconds": 1}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let m = member(&c, &odd.id);
    assert_eq!(m["state"], "skipped");
    assert!(m["reason"].as_str().unwrap().starts_with("flagged"), "{m}");
    // With a deadline, a silent appliance does fail.
    away.behaviour = Behaviour::Offline;
    assert_eq!(
        admin.post("/v1/campaigns/next/start", json!({})).await.0,
        200
    );
    let c = until!("the deadline to fail the silent appliance", {
        let c = campaign(&admin, "next").await;
        (c["state"] == "paused").then_some(c)
    });
    assert!(
        member(&c, &away.id)["reason"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{c}"
    );
}

#[tokio::test]
async fn two_hubs_on_etcd_run_one_campaign_driver() {
    let releases = Releases::new();
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let key = releases.public.to_str().unwrap().to_owned();
    let mut serve = serve_args();
    serve.extend(["--etcd-endpoints", &endpoints, "--etcd-lease-ttl", "2"]);
    serve.extend(["--trusted-release-key", &key]);
    let a = Hub::builder(common::hub_bin())
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&serve)
        .start();
    let b = a.replica(&serve);
    let (signed, sha) = releases.bundle("2.0", Some(&releases.key));
    assert_eq!(upload(&a.admin(), &signed, &sha).await.0, 201);
    // B sees the release A accepted.
    let (_, list) = b.admin().get("/v1/releases").await;
    assert_eq!(list[0]["version"], "2.0");

    let token = a.admin().enrollment_token("lab", 10).await;
    let mut nodes = Vec::new();
    for n in 0..3 {
        nodes.push(Node::register(&a, &token, n, Behaviour::Commit).await);
    }
    let (s, c) = b
        .admin()
        .post(
            "/v1/campaigns",
            json!({"name": "etcd", "release": "2.0",
            "canaries": 1, "batch_size": 2}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        b.admin()
            .post("/v1/campaigns/etcd/start", json!({}))
            .await
            .0,
        200
    );
    // Nodes heartbeat to A (which holds the bundle); the campaign is driven once.
    until!("the campaign on etcd to complete", {
        for n in nodes.iter_mut() {
            n.beat(&a.url).await;
        }
        let c = campaign(&b.admin(), "etcd").await;
        (c["state"] == "completed").then_some(())
    });
    // Each appliance was ordered exactly once and released once: generation 1 + 2.
    for n in &nodes {
        let (_, view) = b.admin().get(&format!("/v1/appliances/{}", n.id)).await;
        assert_eq!(view["desired"]["generation"], 3, "{view}");
        assert_eq!(view["status"]["status"]["os_version"], "2.0");
    }
}

/// A campaign step is not executed twice by two drivers: the leading hub stops itself
/// (SIGSTOP, by its failpoint) just before committing the canary's order, for longer than
/// its lease. The other hub takes the leadership; its driver looks only every 20 s, so when
/// the first resumes (SIGCONT) the campaign record is as it was and only the fence refuses
/// the pending order. The resumed hub stops that pass and campaigns again without winning;
/// the canary is ordered once, by the new leader's driver.
#[tokio::test]
async fn a_driver_paused_past_its_lease_does_not_order_after_the_takeover() {
    use rustix::process::{Pid, Signal, kill_process};
    let releases = Releases::new();
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let key = releases.public.to_str().unwrap().to_owned();
    let serve = |campaign_every: &'static str| {
        let mut serve = vec!["--campaign-check-every-ms", campaign_every];
        serve.extend(["--etcd-endpoints", &endpoints, "--etcd-lease-ttl", "2"]);
        serve.extend(["--offline-check-every", "1", "--trusted-release-key", &key]);
        serve
    };
    let failpoint = format!(
        "{}={}=stop",
        cairn_hub::failpoint::ENV,
        cairn_hub::failpoint::LEADER_COMMIT
    );
    let a = Hub::builder(common::hub_bin())
        .prefix(&["env", &failpoint])
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&serve("100"))
        .start();
    let b = a.replica(&serve("20000"));
    let leads = "this hub now runs the singleton jobs";
    let log = |hub: &Hub| std::fs::read_to_string(&hub.log).unwrap_or_default();
    let (signed, sha) = releases.bundle("2.0", Some(&releases.key));
    assert_eq!(upload(&b.admin(), &signed, &sha).await.0, 201);
    let token = b.admin().enrollment_token("lab", 2).await;
    let mut ids = Vec::new();
    for n in 0..2 {
        ids.push(Node::register(&b, &token, n, Behaviour::Commit).await.id);
    }
    let admin = b.admin();
    let (s, c) = admin
        .post(
            "/v1/campaigns",
            json!({"name": "fenced", "release": "2.0", "canaries": 1, "batch_size": 1}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        admin.post("/v1/campaigns/fenced/start", json!({})).await.0,
        200
    );

    cairn_test_support::poll("the leader to stop before ordering", LIMIT, || {
        (process_state(a.pid()) == Some('T')).then_some(())
    });
    until!("the other hub to take over", {
        log(&b).contains(leads).then_some(())
    });
    let orders = || async {
        let (_, events) = admin.get("/v1/events?since=2000-01-01T00:00:00Z").await;
        events
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "upgrade-ordered")
            .cloned()
            .collect::<Vec<Value>>()
    };
    // The paused hub ordered nothing. The new leader's driver usually looks only 20 s later,
    // so the order is normally still pending and only the fence can refuse it; under load
    // its pass may already have run, and then it alone may have ordered.
    let early = orders().await;
    assert!(
        early.iter().all(|o| o["hub"]
            .as_str()
            .is_some_and(|h| h.ends_with(&format!("/{}", b.pid())))),
        "ordered by the paused hub: {early:?}"
    );

    kill_process(Pid::from_raw(a.pid() as i32).unwrap(), Signal::CONT).unwrap();
    until!("the resumed hub to find its order refused", {
        log(&a)
            .contains("leadership lost during the pass: its writes were refused")
            .then_some(())
    });
    let ordered = cairn_test_support::poll_async(
        "the new leader's driver to order the canary",
        std::time::Duration::from_secs(60),
        || async {
            let o = orders().await;
            (!o.is_empty()).then_some(o)
        },
    )
    .await;
    assert_eq!(ordered.len(), 1, "{ordered:?}");
    assert!(
        ordered[0]["hub"]
            .as_str()
            .is_some_and(|h| h.ends_with(&format!("/{}", b.pid()))),
        "ordered by the new leader, not by the paused one's pending pass: {ordered:?}"
    );
    let c = campaign(&admin, "fenced").await;
    let canary = ordered[0]["appliance"].as_str().unwrap();
    assert_eq!(member(&c, canary)["state"], "ordered", "{c}");
    let (_, view) = admin.get(&format!("/v1/appliances/{canary}")).await;
    assert_eq!(
        view["desired"]["generation"], 2,
        "ordered exactly once: {view}"
    );
    assert_eq!(
        log(&a).matches(leads).count(),
        1,
        "the resumed hub campaigned again without winning:\n{}",
        log(&a)
    );
}

/// `cairn hub releases ...` and `cairn hub campaigns ...` against a real hub.
#[tokio::test]
async fn operator_cli_adds_releases_and_drives_campaigns() {
    use cairn_api::cli::Exit;
    let releases = Releases::new();
    let hub = hub_trusting(&releases);
    let cli = common::OperatorCli::login(&hub).await;

    let (bundle, sha) = releases.bundle("2.0", Some(&releases.key));
    let add = [
        "releases",
        "add",
        "--bundle",
        bundle.to_str().unwrap(),
        "--sha256",
        &sha,
    ];
    assert_eq!(cli.run(&add).await.unwrap(), Exit::Success);
    assert_eq!(
        cli.run(&add).await.unwrap(),
        Exit::Failed,
        "the same version twice"
    );
    assert_eq!(cli.run(&["releases", "list"]).await.unwrap(), Exit::Success);

    let token = hub.admin().enrollment_token("lab", 2).await;
    let mut node = Node::register(&hub, &token, 7, Behaviour::Commit).await;
    node.beat(&hub.url).await;
    // A malformed window is refused before anything is sent.
    let err = cli
        .run(&[
            "campaigns",
            "create",
            "c1",
            "--release",
            "2.0",
            "--window",
            "25:00-01:00",
        ])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("25:00"), "{err:#}");
    let create = [
        "campaigns",
        "create",
        "c1",
        "--release",
        "2.0",
        "--selector",
        "site=lab",
        "--canaries",
        "1",
        "--batch-size",
        "1",
        "--window",
        "22:00-04:00",
        "--prestage",
    ];
    assert_eq!(cli.run(&create).await.unwrap(), Exit::Success);
    let (_, c) = hub.admin().get("/v1/campaigns/c1").await;
    assert_eq!(c["window"], json!({"start": "22:00", "end": "04:00"}));
    assert_eq!(c["prestage"], true);
    assert_eq!(c["selector"]["expression"], "site=lab");
    assert_eq!(
        cli.run(&["campaigns", "start", "c1"]).await.unwrap(),
        Exit::Success
    );
    assert_eq!(
        cli.run(&["campaigns", "start", "c1"]).await.unwrap(),
        Exit::Failed
    );
    until!("the CLI-made campaign to complete", {
        node.beat(&hub.url).await;
        let (_, c) = hub.admin().get("/v1/campaigns/c1").await;
        (c["state"] == "completed").then_some(())
    });
    for show in [
        &["campaigns", "show", "c1"][..],
        &["--output", "json", "campaigns", "show", "c1"],
        &["campaigns", "list"],
        &["appliances", "list"],
    ] {
        assert_eq!(cli.run(show).await.unwrap(), Exit::Success, "{show:?}");
    }
    assert_eq!(
        cli.run(&["appliances", "clear-flag", &node.id])
            .await
            .unwrap(),
        Exit::Failed,
        "nothing to clear"
    );
}

/// A batch of 300 on etcd: more appliances than one etcd transaction may change (128 ops),
/// so the driver orders, withdraws (after an abort) and judges them in passes under the
/// limit; an aborted campaign lets go of every order and a second one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_member_batch_on_etcd_is_ordered_aborted_and_completed() {
    const N: usize = 300;
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let releases = Releases::new();
    let mut serve = serve_args();
    serve.extend([
        "--etcd-endpoints",
        &endpoints,
        "--registration-rate",
        "1000",
    ]);
    let hub = Hub::builder(common::hub_bin())
        .init_args(&[
            "--trusted-release-key",
            releases.public.to_str().unwrap(),
            "--etcd-endpoints",
            &endpoints,
        ])
        .serve_args(&serve)
        .start();
    let admin = hub.admin();
    let (signed, sha) = releases.bundle("2.0", Some(&releases.key));
    assert_eq!(upload(&admin, &signed, &sha).await.0, 201);

    // Registered appliances on 1.0, each with its own mTLS client; a token per worker, as
    // registrations on one token contend for its use count.
    let started = std::time::Instant::now();
    let hub = std::sync::Arc::new(hub);
    let mut registering = tokio::task::JoinSet::new();
    for worker in 0..8 {
        let token = admin.enrollment_token("lab", N as u32).await;
        let hub = hub.clone();
        registering.spawn(async move {
            let mut clients = Vec::new();
            for n in (worker..N).step_by(8) {
                let device = Device::new(
                    &format!("edge-{n}"),
                    &format!("BIG-{n}"),
                    &[&format!("52:54:01:{:02x}:{:02x}:01", n / 256, n % 256)],
                );
                let reg = device.register(&hub, &token).await;
                clients.push(device.client(&hub, &reg));
            }
            clients
        });
    }
    let nodes: Vec<reqwest::Client> = registering.join_all().await.into_iter().flatten().collect();
    let url = format!("{}/v1/heartbeats", hub.url);
    // Every node heartbeats once with `report`; returns the orders they got back.
    let beat_all = |os: &'static str, report: Option<&'static str>| {
        let (nodes, url) = (nodes.clone(), url.clone());
        async move {
            let mut beats = tokio::task::JoinSet::new();
            for chunk in nodes.chunks(N / 8) {
                let (chunk, url) = (chunk.to_vec(), url.clone());
                beats.spawn(async move {
                    let mut ordered = 0;
                    for http in chunk {
                        let upgrade = report.map(|phase| {
                            json!({"campaign": "big", "version": "2.0", "phase": phase,
                                "at": "2030-01-01T00:00:00Z"})
                        });
                        let body = json!({"applied_generation": 0, "status": {
                            "agent_version": "0.1.0", "os_version": os, "upgrade": upgrade,
                            "observed_at": "2030-01-01T00:00:00Z"}});
                        let (s, resp) = common::post(&http, url.clone(), &body).await;
                        assert_eq!(s, 200, "{resp}");
                        if !resp["desired"]["upgrade"].is_null() {
                            ordered += 1;
                        }
                    }
                    ordered
                });
            }
            beats.join_all().await.into_iter().sum::<usize>()
        }
    };
    beat_all("1.0", None).await;
    println!(
        "{N} appliances registered and reporting in {:?}",
        started.elapsed()
    );

    // A first campaign, aborted once all are ordered: the abort withdraws 40 orders in its
    // own transaction and the driver the rest.
    let (s, c) = admin
        .post(
            "/v1/campaigns",
            json!({"name": "dropped", "release": "2.0", "selector": {"site": "lab"},
                "canaries": 0, "batch_size": N, "max_failures": 0}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(
        admin.post("/v1/campaigns/dropped/start", json!({})).await.0,
        200
    );
    until!("all 300 ordered", {
        let c = campaign(&admin, "dropped").await;
        (states(&c).iter().all(|s| s == "ordered")).then_some(())
    });
    let (s, c) = admin.post("/v1/campaigns/dropped/abort", json!({})).await;
    assert_eq!(s, 200, "{c}");
    until!("every order withdrawn", {
        let c = campaign(&admin, "dropped").await;
        (states(&c).iter().all(|s| s == "skipped")).then_some(())
    });
    assert_eq!(beat_all("1.0", None).await, 0, "no node carries an order");

    let (s, c) = admin
        .post(
            "/v1/campaigns",
            json!({"name": "big", "release": "2.0", "selector": {"site": "lab"},
                "canaries": 0, "batch_size": N, "max_failures": 0}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    assert_eq!(c["batches"].as_array().unwrap().len(), 1, "{c}");
    assert_eq!(
        admin.post("/v1/campaigns/big/start", json!({})).await.0,
        200
    );
    let started = std::time::Instant::now();
    until!("all 300 ordered", {
        let c = campaign(&admin, "big").await;
        (states(&c).iter().all(|s| s == "ordered")).then_some(())
    });
    println!("{N} members ordered in {:?}", started.elapsed());
    assert_eq!(
        beat_all("1.0", None).await,
        N,
        "every node carries the order"
    );

    // All of them come back committed on 2.0 at once.
    beat_all("2.0", Some("committed")).await;
    let c = until!("the campaign to complete", {
        let c = campaign(&admin, "big").await;
        (c["state"] == "completed").then_some(c)
    });
    assert!(states(&c).iter().all(|s| s == "committed"), "{c}");
    println!(
        "{N} members committed and the campaign completed in {:?}",
        started.elapsed()
    );
}
