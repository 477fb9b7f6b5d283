//! `kill -9` of a real `cairn-hub` under steady heartbeat load, on each store and at a
//! random point of the load: statuses (written without waiting for an fsync on the embedded
//! store) lose at most the last second, and every write the hub acknowledged as durable
//! (enrollment tokens created all along) is there after the restart. And `kill -9` between a
//! VPC membership change and the rewrite of its members' overlays: the restarted hub's
//! reconciler repairs them.

mod common;

#[allow(dead_code)]
#[path = "../src/testutil.rs"]
mod testutil;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_test_support::{poll, poll_async};
use common::{Device, Hub, HubClients, LIMIT, Overlay, process_state};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_under_heartbeat_load_loses_at_most_a_second_of_statuses() {
    // Two kills, each at its own random point of the load.
    for _ in 0..2 {
        crash_under_load(&[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_under_heartbeat_load_on_etcd_loses_no_acknowledged_write() {
    for _ in 0..2 {
        // A store of its own each time: `init` makes the first admin of an empty store.
        let etcd = testutil::Etcd::start(1).await;
        let endpoints = etcd.endpoints().join(",");
        crash_under_load(&["--etcd-endpoints", &endpoints]).await;
    }
}

/// Heartbeats from 8 appliances back to back and an operator creating tokens (durable
/// writes) all along, a SIGKILL at a random moment between 1.5 and 4 s into the load, then a
/// restart on the same data (and `store` arguments): every token answered is there, and each
/// appliance's stored status is no older than the last one answered a second before the kill.
async fn crash_under_load(store: &[&str]) {
    const DEVICES: usize = 8;
    let mut hub = Hub::builder(common::hub_bin())
        .init_args(store)
        .serve_args(store)
        .start();
    let token = hub.admin().enrollment_token("lab", DEVICES as u32).await;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let d = Device::new(
            &format!("edge-{i}"),
            &format!("CRASH-{i}"),
            &[&format!("52:54:00:40:00:{i:02x}")],
        );
        let reg = d.register(&hub, &token).await;
        devices.push((reg.appliance_id.to_string(), d.client(&hub, &reg)));
    }

    // Each device heartbeats back to back, its sequence number as uptime; every answered
    // heartbeat is recorded with when the answer came. An operator creates tokens (durable
    // writes) until the kill, so the load is never quiet and the kill may land mid-write.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let kill_at = started + Duration::from_millis(rand::random_range(1500..4000));
    let url = format!("{}/v1/heartbeats", hub.url);
    let mut beats = tokio::task::JoinSet::new();
    for (i, (_, http)) in devices.iter().enumerate() {
        let (http, url, stop) = (http.clone(), url.clone(), stop.clone());
        beats.spawn(async move {
            let mut acked: Vec<(u64, Instant)> = Vec::new();
            for seq in 1.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({"applied_generation": 0, "status": {
                    "agent_version": "0.1.0", "os_version": "1.0", "uptime_seconds": seq,
                    "observed_at": "2030-01-01T00:00:00Z"}});
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => acked.push((seq, Instant::now())),
                    // The hub is gone.
                    _ => break,
                }
            }
            (i, acked)
        });
    }
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let durable = {
        let (op, tokens) = (hub.admin(), tokens.clone());
        tokio::spawn(async move {
            loop {
                let r = op
                    .http
                    .post(format!("{}/v1/tokens", op.url))
                    .bearer_auth(&op.token)
                    .json(&json!({"site": "lab", "ttl_seconds": 3600, "max_uses": 1}))
                    .send()
                    .await;
                let Ok(r) = r else { break };
                if r.status() != 201 {
                    break;
                }
                let Ok(body) = r.json::<serde_json::Value>().await else {
                    break;
                };
                tokens
                    .lock()
                    .unwrap()
                    .push(body["id"].as_str().unwrap().to_owned());
            }
        })
    };

    // A store that flushed statuses only after a quiet second would keep none of them.
    tokio::time::sleep_until(kill_at.into()).await;
    let killed_at = Instant::now();
    hub.kill();
    stop.store(true, Ordering::Relaxed);
    // In the devices' order: `join_all` gives them in the order they finished.
    let mut acked = beats.join_all().await;
    acked.sort_by_key(|(i, _)| *i);
    let acked: Vec<Vec<(u64, Instant)>> = acked.into_iter().map(|(_, a)| a).collect();
    durable.await.unwrap();
    let tokens = tokens.lock().unwrap().clone();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 100, "only {total} heartbeats before the kill");

    // The same data directory, after the crash.
    let restarted = Hub::builder(common::hub_bin())
        .data(&hub.data)
        .serve_args(store)
        .start();
    let admin = restarted.admin();
    let mut worst_lag = Duration::ZERO;
    for ((id, _), acked) in devices.iter().zip(&acked) {
        let (s, view) = admin.get(&format!("/v1/appliances/{id}")).await;
        assert_eq!(s, 200, "{view}");
        let stored = view["status"]["status"]["uptime_seconds"].as_u64().unwrap();
        let promised = acked
            .iter()
            .rev()
            .find(|(_, at)| *at + Duration::from_secs(1) <= killed_at)
            .map_or(0, |(seq, _)| *seq);
        assert!(
            stored >= promised,
            "{id}: the store holds heartbeat {stored}, but {promised} was answered more than 1 s before the kill"
        );
        let lag = acked
            .iter()
            .find(|(seq, _)| *seq > stored)
            .map_or(Duration::ZERO, |(_, at)| killed_at.duration_since(*at));
        worst_lag = worst_lag.max(lag);
    }
    let (s, listed) = admin.get("/v1/tokens").await;
    assert_eq!(s, 200);
    let kept: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    for id in &tokens {
        assert!(kept.contains(&id.as_str()), "acknowledged token {id} lost");
    }
    println!(
        "{} ({:?} into the load): {total} heartbeats and {} durable writes answered before the kill; statuses lost cover at most the last {worst_lag:?}; every durable write kept",
        if store.is_empty() { "embedded" } else { "etcd" },
        killed_at.duration_since(started),
        tokens.len()
    );
}

/// Two hubs on a 3-member etcd under heartbeat load (8 appliances, each on hub A until it
/// fails, then on hub B, as a node with two hub URLs does) and an operator creating tokens
/// (durable writes) through either: a SIGKILL of hub A and of one etcd member at the same
/// random moment 1.5-3 s into the load. Every appliance carries on through hub B, and
/// nothing acknowledged is lost: every token answered is listed, and every appliance's
/// stored status is no older than the last heartbeat answered (etcd answers only what it
/// committed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_hub_and_an_etcd_member_under_load_loses_no_acknowledged_write() {
    const DEVICES: usize = 8;
    let mut etcd = testutil::Etcd::start(3).await;
    let endpoints = etcd.endpoints().join(",");
    let serve = ["--etcd-endpoints", &endpoints];
    let mut a = Hub::builder(common::hub_bin())
        .init_args(&serve)
        .serve_args(&serve)
        .start();
    let b = a.replica(&serve);
    let token = a.admin().enrollment_token("lab", DEVICES as u32).await;
    let mut devices = Vec::new();
    for i in 0..DEVICES {
        let d = Device::new(
            &format!("edge-f{i}"),
            &format!("FAILOVER-{i}"),
            &[&format!("52:54:00:41:00:{i:02x}")],
        );
        let reg = d.register(&a, &token).await;
        // Both hubs have the same CA and server identity: one client reaches either.
        devices.push((reg.appliance_id.to_string(), d.client(&a, &reg)));
    }
    let urls = Arc::new([a.url.clone(), b.url.clone()]);

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let kill_at = started + Duration::from_millis(rand::random_range(1500..3000));
    let mut beats = tokio::task::JoinSet::new();
    for (i, (_, http)) in devices.iter().enumerate() {
        let (http, urls, stop) = (http.clone(), urls.clone(), stop.clone());
        beats.spawn(async move {
            // Every answered heartbeat: its sequence number, when, and through which hub.
            let mut acked: Vec<(u64, Instant, usize)> = Vec::new();
            let mut hub = 0;
            for seq in 1.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let body = json!({"applied_generation": 0, "status": {
                    "agent_version": "0.1.0", "os_version": "1.0", "uptime_seconds": seq,
                    "observed_at": "2030-01-01T00:00:00Z"}});
                let url = format!("{}/v1/heartbeats", urls[hub]);
                match http.post(&url).json(&body).send().await {
                    Ok(r) if r.status() == 200 => acked.push((seq, Instant::now(), hub)),
                    // Refused while etcd re-forms: not acknowledged, nothing promised.
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    // The hub is gone: the next URL.
                    Err(_) => hub = 1,
                }
            }
            (i, acked)
        });
    }
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let durable = {
        let (op, urls, tokens, stop) = (a.admin(), urls.clone(), tokens.clone(), stop.clone());
        tokio::spawn(async move {
            let mut hub = 0;
            while !stop.load(Ordering::Relaxed) {
                let r = op
                    .http
                    .post(format!("{}/v1/tokens", urls[hub]))
                    .bearer_auth(&op.token)
                    .json(&json!({"site": "lab", "ttl_seconds": 3600, "max_uses": 1}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let body: serde_json::Value = r.json().await.unwrap();
                        let id = body["id"].as_str().unwrap().to_owned();
                        tokens.lock().unwrap().push(id);
                    }
                    Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    Err(_) => hub = 1,
                }
            }
        })
    };

    tokio::time::sleep_until(kill_at.into()).await;
    let killed_at = Instant::now();
    a.kill();
    etcd.kill(0);
    let written = tokens.lock().unwrap().len();
    // The operator's writes go on through hub B; the load runs on a while with them, so that
    // every appliance has had its time to move.
    poll_async("durable writes to go on through hub B", LIMIT, || async {
        (tokens.lock().unwrap().len() > written + 20).then_some(())
    })
    .await;
    let settled = Instant::now() + Duration::from_secs(2);
    tokio::time::sleep_until(settled.into()).await;
    stop.store(true, Ordering::Relaxed);
    // In the devices' order: `join_all` gives them in the order they finished.
    let mut acked = beats.join_all().await;
    acked.sort_by_key(|(i, _)| *i);
    let acked: Vec<Vec<(u64, Instant, usize)>> = acked.into_iter().map(|(_, a)| a).collect();
    durable.await.unwrap();

    let admin = b.admin();
    let mut worst_gap = Duration::ZERO;
    for ((id, _), acked) in devices.iter().zip(&acked) {
        let before = acked.iter().filter(|(_, at, _)| *at < killed_at).count();
        let first_after = acked
            .iter()
            .find(|(_, at, hub)| *at > killed_at && *hub == 1)
            .unwrap_or_else(|| panic!("{id} never heartbeat through hub B after the kill"));
        worst_gap = worst_gap.max(first_after.1 - killed_at);
        assert!(before > 0, "{id}: no heartbeat before the kill");
        let (s, view) = admin.get(&format!("/v1/appliances/{id}")).await;
        assert_eq!(s, 200, "{view}");
        let stored = view["status"]["status"]["uptime_seconds"].as_u64().unwrap();
        let last = acked.last().unwrap().0;
        // An unanswered heartbeat (cut off by the kill or the end) may still have landed.
        assert!(
            stored >= last,
            "{id}: heartbeat {last} was answered, the store holds {stored}"
        );
    }
    let (s, listed) = admin.get("/v1/tokens").await;
    assert_eq!(s, 200);
    let kept: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["id"].as_str())
        .collect();
    let tokens = tokens.lock().unwrap().clone();
    for id in &tokens {
        assert!(kept.contains(&id.as_str()), "acknowledged token {id} lost");
    }
    let total: usize = acked.iter().map(Vec::len).sum();
    println!(
        "hub A and etcd member 0 killed {:?} into the load: {total} heartbeats and {} durable writes answered, none lost; every appliance heartbeat through hub B within {worst_gap:?} of the kill",
        killed_at.duration_since(started),
        tokens.len()
    );
}

/// The hub is killed (SIGKILL, by its own failpoint: deterministic, at the one instant that
/// matters) after it committed an attach and before it rewrote the members' desired
/// states. Restarted, its reconciler's first pass repairs both members' overlays, with an
/// event each and the repairs counted in the metrics; without it the first member would
/// never learn of the second (a heartbeat that reports an unchanged VTEP rewrites nothing).
#[tokio::test]
async fn a_crash_between_a_membership_and_its_overlays_is_repaired_at_restart() {
    let failpoint = format!(
        "{}={}=kill",
        cairn_hub::failpoint::ENV,
        cairn_hub::failpoint::MEMBERSHIP_COMMITTED
    );
    let serve = ["--reconcile-every", "3600"];
    let mut hub = Hub::builder(common::hub_bin()).serve_args(&serve).start();
    let admin = hub.admin();
    let members = Overlay::register(&hub, 2, "edge-r", "52:54:00:50:00", "198.18.1").await;
    let (s, vpc) = admin
        .post(
            "/v1/vpcs",
            serde_json::json!({"name": "blue", "subnet": "10.70.0.0/24"}),
        )
        .await;
    assert_eq!(s, 201, "{vpc}");
    let r = members.attach(&admin, "blue", 0).await.unwrap();
    assert_eq!(r.status(), 200);
    let before = members.beat(&hub, 0).await;
    assert_eq!(
        before["overlay"]["vpcs"][0]["peer_vteps"],
        serde_json::json!([])
    );

    // The same hub with the failpoint armed: the second attach dies between its writes.
    hub.kill();
    let data = hub.data.clone();
    let mut armed = Hub::builder(common::hub_bin())
        .data(&data)
        .prefix(&["env", &failpoint])
        .serve_args(&serve)
        .start();
    let admin = armed.admin();
    assert!(
        members.attach(&admin, "blue", 1).await.is_err(),
        "the hub died before answering the attach"
    );
    let pid = armed.pid();
    poll("the hub to die at the failpoint", LIMIT, || {
        (process_state(pid) == Some('Z')).then_some(())
    });
    armed.kill();

    let restarted = Hub::builder(common::hub_bin())
        .data(&data)
        .serve_args(&serve)
        .start();
    let admin = restarted.admin();
    let (_, vpcs) = admin.get("/v1/vpcs").await;
    assert_eq!(
        vpcs[0]["members"].as_array().map(Vec::len),
        Some(2),
        "the membership was committed before the crash: {vpcs}"
    );
    // The reconciler runs as the hub starts; the desired states follow within its pass.
    let first = poll_async(
        "the first member's overlay to be repaired",
        LIMIT,
        || async {
            let d = members.beat(&restarted, 0).await;
            (d["overlay"]["vpcs"][0]["peer_vteps"] == serde_json::json!(["198.18.1.2"]))
                .then_some(d)
        },
    )
    .await;
    assert!(first["generation"].as_u64() > before["generation"].as_u64());
    let second = members.beat(&restarted, 1).await;
    assert_eq!(
        second["overlay"]["vpcs"][0]["peer_vteps"],
        serde_json::json!(["198.18.1.1"]),
        "{second}"
    );
    let (_, events) = admin.get("/v1/events?since=2000-01-01T00:00:00Z").await;
    let repaired = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "desired-state-repaired")
        .count();
    assert_eq!(repaired, 2, "{events}");
    let metrics = admin.metrics().await;
    let needle = r#"cairn_hub_reconciler_repairs_total{part="overlay"} 2"#;
    assert!(
        metrics.contains(needle),
        "metrics lack {needle}:\n{metrics}"
    );
}
