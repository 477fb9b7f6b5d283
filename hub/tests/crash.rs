//! `kill -9` of a real `cairn-hub` (embedded store) under steady heartbeat load: statuses
//! (written without waiting for an fsync) lose at most the last second, and every write the
//! hub acknowledged as durable is there after the restart.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Device, Hub, HubClients};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_under_heartbeat_load_loses_at_most_a_second_of_statuses() {
    const DEVICES: usize = 8;
    let mut hub = Hub::builder(common::hub_bin()).start();
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
    // writes) during the first second; after that the load is statuses only, never quiet.
    let stop = Arc::new(AtomicBool::new(false));
    let durable_until = Instant::now() + Duration::from_secs(1);
    let url = format!("{}/v1/heartbeats", hub.url);
    let mut beats = tokio::task::JoinSet::new();
    for (_, http) in &devices {
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
            acked
        });
    }
    let tokens = Arc::new(Mutex::new(Vec::<String>::new()));
    let durable = {
        let (op, tokens) = (hub.admin(), tokens.clone());
        tokio::spawn(async move {
            while Instant::now() < durable_until {
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

    // Statuses only for three seconds (a store that flushed only after a quiet second would
    // keep none of them), then SIGKILL.
    tokio::time::sleep_until((durable_until + Duration::from_secs(3)).into()).await;
    let killed_at = Instant::now();
    hub.kill();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<Vec<(u64, Instant)>> = beats.join_all().await;
    durable.await.unwrap();
    let tokens = tokens.lock().unwrap().clone();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total > 100, "only {total} heartbeats before the kill");

    // The same data directory, after the crash.
    let restarted = Hub::builder(common::hub_bin()).data(&hub.data).start();
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
        "{total} heartbeats and {} durable writes answered before the kill; statuses lost cover at most the last {worst_lag:?}; every durable write kept",
        tokens.len()
    );
}
