//! Two `cairn-hub` processes on one real etcd serve one fleet; the offline detector runs in
//! exactly one of them, and moves when that one dies.

mod common;

#[allow(dead_code)]
#[path = "../src/testutil.rs"]
mod testutil;

use cairn_test_support::poll_async;
use common::{Device, Hub, HubClients, LIMIT, Overlay, heartbeat, post, process_state};
use serde_json::Value;

async fn offline_events(op: &common::Operator, id: &str) -> Vec<Value> {
    let (_, events) = op.get("/v1/events?since=2000-01-01T00:00:00Z").await;
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["appliance"] == id && e["kind"] == "offline")
        .cloned()
        .collect()
}

/// `serve` arguments of two hubs on one etcd: a 2 s lease, 1 s heartbeats, offline after 1 s,
/// the offline detector every `detector_every` seconds.
fn serve<'a>(endpoints: &'a str, detector_every: &'a str) -> Vec<&'a str> {
    vec![
        "--etcd-endpoints",
        endpoints,
        "--etcd-lease-ttl",
        "2",
        "--heartbeat-interval",
        "1",
        "--offline-after",
        "1",
        "--offline-check-every",
        detector_every,
    ]
}

#[tokio::test]
async fn two_hubs_on_one_etcd_serve_one_fleet() {
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let serve = serve(&endpoints, "1");
    let mut a = Hub::builder(common::hub_bin())
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&serve)
        .start();
    let mut b = a.replica(&serve);

    // A token made on A registers on B; A lists what B accepted.
    let token = a.admin().enrollment_token("lab", 5).await;
    let device = Device::new("edge-e1", "ETCD-1", &["52:54:00:10:00:01"]);
    let reg = device.register(&b, &token).await;
    let id = reg.appliance_id.to_string();
    let (s, view) = a.admin().get(&format!("/v1/appliances/{id}")).await;
    assert_eq!(s, 200, "{view}");
    // Heartbeats to either hub.
    for hub in [&a, &b] {
        let (s, body) = post(
            &device.client(hub, &reg),
            format!("{}/v1/heartbeats", hub.url),
            &heartbeat(1, None),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }

    // A probe appliance, whose own offline event later proves more detector passes ran.
    let probe = Device::new("edge-probe", "ETCD-P", &["52:54:00:10:00:03"]);
    let probe_reg = probe.register(&a, &token).await;
    let probe_id = probe_reg.appliance_id.to_string();

    // Silence: offline exactly once, though both hubs run the detector loop.
    let first = poll_async("offline event", LIMIT, || async {
        let ev = offline_events(&a.admin(), &id).await;
        (!ev.is_empty()).then_some(ev)
    })
    .await;
    // The probe heartbeats only now: the pass that marks it offline comes after at least one
    // whole pass that saw it online, so every pass in between also went over the first
    // appliance, already offline. Waiting on that event, not on a guessed sleep.
    let (s, body) = post(
        &probe.client(&a, &probe_reg),
        format!("{}/v1/heartbeats", a.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    poll_async("the probe's offline event", LIMIT, || async {
        let ev = offline_events(&b.admin(), &probe_id).await;
        (!ev.is_empty()).then_some(())
    })
    .await;
    let events = offline_events(&b.admin(), &id).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let leader = first[0]["hub"].as_str().unwrap().to_owned();

    // Kill the leader; the survivor takes over the detector once the lease lapses.
    let (dead, survivor) = if leader.ends_with(&format!("/{}", a.pid())) {
        (&mut a, &b)
    } else {
        (&mut b, &a)
    };
    assert!(
        leader.ends_with(&format!("/{}", dead.pid())),
        "leader {leader} is one of the two hubs"
    );
    dead.kill();
    let second = Device::new("edge-e2", "ETCD-2", &["52:54:00:10:00:02"]);
    let reg2 = second.register(survivor, &token).await;
    let (s, _) = post(
        &second.client(survivor, &reg2),
        format!("{}/v1/heartbeats", survivor.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200);
    let ev = poll_async("offline event from the survivor", LIMIT, || async {
        let ev = offline_events(&survivor.admin(), reg2.appliance_id.as_str()).await;
        (!ev.is_empty()).then_some(ev)
    })
    .await;
    assert!(
        ev[0]["hub"]
            .as_str()
            .unwrap()
            .ends_with(&format!("/{}", survivor.pid())),
        "{ev:?}"
    );
}

/// etcd with TLS and client-certificate authentication: the hub connects with
/// `--etcd-cacert/--etcd-cert/--etcd-key` and serves; without its certificate it refuses to
/// start, saying why.
#[tokio::test]
async fn a_hub_reaches_etcd_over_tls_with_its_client_certificate() {
    let etcd = testutil::Etcd::start_tls().await;
    let certs = etcd.tls.as_ref().unwrap();
    let endpoints = etcd.endpoints().join(",");
    let (ca, cert, key) = (
        certs.ca.to_str().unwrap(),
        certs.cert.to_str().unwrap(),
        certs.key.to_str().unwrap(),
    );
    let flags = [
        "--etcd-endpoints",
        &endpoints,
        "--etcd-cacert",
        ca,
        "--etcd-cert",
        cert,
        "--etcd-key",
        key,
    ];
    let hub = Hub::builder(common::hub_bin())
        .init_args(&flags)
        .serve_args(&flags)
        .start();
    let token = hub.admin().enrollment_token("lab", 1).await;
    let device = Device::new("edge-tls", "TLS-1", &["52:54:00:10:01:01"]);
    let reg = device.register(&hub, &token).await;
    let (s, body) = post(
        &device.client(&hub, &reg),
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // Only the CA: etcd refuses the connection, and the hub does not start.
    let out = std::process::Command::new(common::hub_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&hub.data)
        .args(["--etcd-endpoints", &endpoints, "--etcd-cacert", ca])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("connecting to etcd"), "{stderr}");
}

/// A request stuck on the store (etcd stopped with SIGSTOP) is answered `503 timeout` after
/// `--request-timeout`, instead of holding the client for as long as the store waits; once
/// etcd runs again, requests succeed.
#[tokio::test]
async fn a_request_stuck_on_the_store_is_answered_after_the_request_timeout() {
    use rustix::process::{Pid, Signal, kill_process};
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let hub = Hub::builder(common::hub_bin())
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&["--etcd-endpoints", &endpoints, "--request-timeout", "1"])
        .start();
    let admin = hub.admin();
    assert_eq!(admin.get("/v1/appliances").await.0, 200);
    let pid = Pid::from_raw(etcd.pid(0).unwrap() as i32).unwrap();
    kill_process(pid, Signal::STOP).unwrap();
    let started = std::time::Instant::now();
    let (s, body) = admin.get("/v1/appliances").await;
    let took = started.elapsed();
    kill_process(pid, Signal::CONT).unwrap();
    assert_eq!(
        (s, body["error"].as_str()),
        (503, Some("timeout")),
        "{body}"
    );
    assert!(took < std::time::Duration::from_secs(8), "{took:?}");
    poll_async("requests succeed once etcd runs again", LIMIT, || async {
        (admin.get("/v1/appliances").await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked_or_deleted_on_etcd() {
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let hub = Hub::builder(common::hub_bin())
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&["--etcd-endpoints", &endpoints])
        .start();
    common::the_last_admin_is_kept(&hub).await;
}

/// Leader fencing with two real hubs: the leader stops itself (SIGSTOP, by its failpoint)
/// just before committing a leader write (marking a silent appliance offline), for longer
/// than the lease. The other hub takes the leadership; its offline detector runs only every
/// 20 s, so when the first hub resumes (SIGCONT) nothing has touched the appliance's
/// status: the pending write's own compare-and-set still holds, and only the fence refuses
/// it. The resumed hub stops that pass and campaigns again without winning; the appliance
/// goes offline once, marked by the new leader.
#[tokio::test]
async fn a_leader_paused_past_its_lease_commits_nothing_after() {
    use rustix::process::{Pid, Signal, kill_process};
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let failpoint = format!(
        "{}={}=stop",
        cairn_hub::failpoint::ENV,
        cairn_hub::failpoint::LEADER_COMMIT
    );
    // `a` starts first and leads; only `a` has the failpoint.
    let a = Hub::builder(common::hub_bin())
        .prefix(&["env", &failpoint])
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&serve(&endpoints, "1"))
        .start();
    let b = a.replica(&serve(&endpoints, "20"));
    let a_pid = a.pid();
    let leads = "this hub now runs the singleton jobs";
    let log = |hub: &Hub| std::fs::read_to_string(&hub.log).unwrap_or_default();

    let token = b.admin().enrollment_token("lab", 1).await;
    let device = Device::new("edge-f1", "FENCE-1", &["52:54:00:10:02:01"]);
    let reg = device.register(&b, &token).await;
    let id = reg.appliance_id.to_string();
    let (s, body) = post(
        &device.client(&b, &reg),
        format!("{}/v1/heartbeats", b.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200, "{body}");

    // The silence makes `a`'s detector mark it offline: `a` stops right before the write.
    cairn_test_support::poll("the leader to stop before its write", LIMIT, || {
        (process_state(a_pid) == Some('T')).then_some(())
    });
    // Its lease lapses; `b` takes the leadership (its other jobs ask every few seconds).
    poll_async("the other hub to take over", LIMIT, || async {
        log(&b).contains(leads).then_some(())
    })
    .await;
    // The paused hub marked nothing. The new leader's detector usually looks later, so the
    // mark is normally still pending and only the fence can refuse it; under load its pass
    // may already have run, and then it alone may have marked.
    let early = offline_events(&b.admin(), &id).await;
    assert!(
        early.iter().all(|e| e["hub"]
            .as_str()
            .is_some_and(|h| h.ends_with(&format!("/{}", b.pid())))),
        "marked by the paused hub: {early:?}"
    );

    let pid = Pid::from_raw(a_pid as i32).unwrap();
    kill_process(pid, Signal::CONT).unwrap();
    poll_async(
        "the resumed hub to find its write refused",
        LIMIT,
        || async {
            log(&a)
                .contains("leadership lost during the pass: its writes were refused")
                .then_some(())
        },
    )
    .await;

    // One detector acts afterwards: the new leader's, at its next pass.
    let events = poll_async(
        "the new leader to mark it offline",
        std::time::Duration::from_secs(60),
        || async {
            let ev = offline_events(&b.admin(), &id).await;
            (!ev.is_empty()).then_some(ev)
        },
    )
    .await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(
        events[0]["hub"]
            .as_str()
            .is_some_and(|h| h.ends_with(&format!("/{}", b.pid()))),
        "marked by the new leader, not by the paused one's pending write: {events:?}"
    );
    assert_eq!(
        log(&a).matches(leads).count(),
        1,
        "the resumed hub campaigned again without winning:\n{}",
        log(&a)
    );
}

/// A new leader repairs at once what the dead one left half-done: the leading hub is killed
/// by its failpoint after it committed a VPC attach and before it rewrote the members'
/// desired states. The other hub's reconciler runs only every hour, yet once the dead
/// leader's lease lapses and it takes the leadership over, its reconciler passes at the
/// takeover: both members' overlays name each other.
#[tokio::test]
async fn a_new_leader_repairs_what_the_dead_leader_left_half_done_at_the_takeover() {
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let failpoint = format!(
        "{}={}=kill",
        cairn_hub::failpoint::ENV,
        cairn_hub::failpoint::MEMBERSHIP_COMMITTED
    );
    let mut serve = serve(&endpoints, "1");
    serve.extend(["--reconcile-every", "3600"]);
    let leads = "this hub now runs the singleton jobs";
    let log = |hub: &Hub| std::fs::read_to_string(&hub.log).unwrap_or_default();
    // `a` starts first and leads; only `a` has the failpoint.
    let mut a = Hub::builder(common::hub_bin())
        .prefix(&["env", &failpoint])
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&serve)
        .start();
    cairn_test_support::poll("the first hub to lead", LIMIT, || {
        log(&a).contains(leads).then_some(())
    });
    let b = a.replica(&serve);

    let admin = b.admin();
    let members = Overlay::register(&b, 2, "edge-t", "52:54:00:10:03", "198.18.2").await;
    let (s, vpc) = admin
        .post(
            "/v1/vpcs",
            serde_json::json!({"name": "green", "subnet": "10.71.0.0/24"}),
        )
        .await;
    assert_eq!(s, 201, "{vpc}");
    let r = members.attach(&admin, "green", 0).await.unwrap();
    assert_eq!(r.status(), 200);

    // The leader dies between the second attach's writes.
    let a_pid = a.pid();
    assert!(
        members.attach(&a.admin(), "green", 1).await.is_err(),
        "the leader died before answering the attach"
    );
    cairn_test_support::poll("the leader to die at the failpoint", LIMIT, || {
        (process_state(a_pid) == Some('Z')).then_some(())
    });
    a.kill();
    let (_, vpcs) = admin.get("/v1/vpcs").await;
    assert_eq!(
        vpcs[0]["members"].as_array().map(Vec::len),
        Some(2),
        "the membership was committed before the crash: {vpcs}"
    );
    poll_async("the other hub to take over", LIMIT, || async {
        log(&b).contains(leads).then_some(())
    })
    .await;
    // Its reconciler's next period is an hour away: only the takeover's pass repairs.
    poll_async(
        "the first member's overlay to be repaired",
        LIMIT,
        || async {
            let d = members.beat(&b, 0).await;
            (d["overlay"]["vpcs"][0]["peer_vteps"] == serde_json::json!(["198.18.2.2"]))
                .then_some(())
        },
    )
    .await;
    let second = members.beat(&b, 1).await;
    assert_eq!(
        second["overlay"]["vpcs"][0]["peer_vteps"],
        serde_json::json!(["198.18.2.1"]),
        "{second}"
    );
    assert!(
        log(&b).contains("reconciler pass repaired stale desired states"),
        "{}",
        log(&b)
    );
}
