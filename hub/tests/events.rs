//! Fleet events against a real hub: the list's filters, the server-sent event stream cut
//! and resumed by sequence number (typed client and a raw `Last-Event-ID`), across a hub
//! restart, and scoped to the caller's tenant.

mod common;

#[allow(dead_code)]
#[path = "../src/testutil.rs"]
mod testutil;

use cairn_api::hub::{EventQuery, EventView, EventWatchQuery};
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::Trust;
use cairn_test_support::poll_async;
use common::*;
use serde_json::json;

/// Hub flags under which an appliance that stops heartbeating goes offline within seconds.
const FAST: [&str; 6] = [
    "--heartbeat-interval",
    "1",
    "--offline-after",
    "2",
    "--offline-check-every",
    "1",
];

fn typed(hub: &Hub, token: &str) -> HubClient {
    HubClient::new(&hub.url, &Trust::CaBundle(hub.ca_pem.clone()), None)
        .unwrap()
        .with_bearer(token.to_owned())
}

/// A registered appliance that can heartbeat.
struct Appliance {
    id: String,
    http: reqwest::Client,
}

async fn enroll(hub: &Hub, site: &str, name: &str) -> Appliance {
    let token = hub.admin().enrollment_token(site, 1).await;
    let device = Device::new(name, &name.to_uppercase(), &[]);
    let reg = device.register(hub, &token).await;
    Appliance {
        id: reg.appliance_id.to_string(),
        http: device.client(hub, &reg),
    }
}

impl Appliance {
    async fn heartbeat(&self, hub: &Hub) {
        let (s, body) = post(
            &self.http,
            format!("{}/v1/heartbeats", hub.url),
            &heartbeat(0, None),
        )
        .await;
        assert_eq!(s, 200, "{body}");
    }
}

/// Every event `client` may list after `after`.
async fn listed_after(client: &HubClient, after: u64) -> Vec<EventView> {
    client
        .events(&EventQuery {
            after: Some(after),
            ..Default::default()
        })
        .await
        .unwrap()
}

/// A stream read over plain HTTP as a browser's `EventSource` resumes one: the
/// `Last-Event-ID` header, `timeoutSeconds=0` (the events it starts with, then the end).
/// Answers each event's SSE `id` with its data.
async fn raw_resume(hub: &Hub, token: &str, last_event_id: u64) -> Vec<(u64, EventView)> {
    let response = hub
        .anonymous()
        .get(format!("{}/v1/watch/events?timeoutSeconds=0", hub.url))
        .bearer_auth(token)
        .header("Last-Event-ID", last_event_id.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let text = response.text().await.unwrap();
    let mut out = Vec::new();
    for frame in text.split("\n\n").filter(|f| !f.trim().is_empty()) {
        let field = |name: &str| {
            frame
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(": "))
                .map(str::to_owned)
        };
        let Some(data) = field("data") else { continue };
        assert_eq!(field("event"), None, "no error in the stream: {frame}");
        let id: u64 = field("id").expect("every event has an id").parse().unwrap();
        out.push((id, serde_json::from_str(&data).unwrap()));
    }
    out
}

fn seqs(events: &[EventView]) -> Vec<u64> {
    events.iter().map(|e| e.seq).collect()
}

fn kinds_of<'a>(events: &'a [EventView], id: &str) -> Vec<&'a str> {
    events
        .iter()
        .filter(|e| e.appliance.as_str() == id)
        .map(|e| e.kind.as_str())
        .collect()
}

/// Real appliance state changes (registered, online, offline, online again) reach a watch
/// in sequence order; a watch cut and resumed after the last event it got, by `after` or
/// by `Last-Event-ID`, sees every event exactly once, also across a hub restart; another
/// tenant's token sees none of them, live or listed, and only its own.
#[tokio::test]
async fn a_cut_event_stream_resumes_without_gaps_or_duplicates_and_stays_in_scope() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("hub");
    let mut hub = Hub::builder(hub_bin())
        .data(&data)
        .serve_args(&FAST)
        .start();
    let admin = hub.admin();
    for (tenant, site) in [("acme", "north"), ("globex", "south")] {
        let (s, body) = admin
            .post("/v1/tenants", json!({"name": tenant, "sites": [site]}))
            .await;
        assert_eq!(s, 201, "{body}");
    }
    let (s, body) = admin
        .post(
            "/v1/operator-tokens",
            json!({"name": "globex-view", "role": "viewer", "tenant": "globex"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let globex_token = body["token"].as_str().unwrap().to_owned();
    let client = typed(&hub, &hub.admin_token);
    let globex = typed(&hub, &globex_token);
    let start = listed_after(&client, 0).await.last().map_or(0, |e| e.seq);

    let mut watch = client
        .watch_events(&EventWatchQuery::default())
        .await
        .unwrap();
    let mut globex_watch = globex
        .watch_events(&EventWatchQuery::default())
        .await
        .unwrap();

    // Registering and the first heartbeat: two events, in sequence order.
    let a = enroll(&hub, "north", "edge-a").await;
    a.heartbeat(&hub).await;
    let mut seen = vec![
        watch.next().await.unwrap().unwrap(),
        watch.next().await.unwrap().unwrap(),
    ];
    assert_eq!(kinds_of(&seen, &a.id), ["registered", "online"]);
    assert!(seen[0].seq < seen[1].seq, "{:?}", seqs(&seen));
    // The connection is cut; meanwhile B registers and comes online, and A, silent, goes
    // offline.
    drop(watch);
    let cut_at = seen[1].seq;
    let b = enroll(&hub, "north", "edge-b").await;
    b.heartbeat(&hub).await;
    // Both end silent: wait until both are offline, so no event follows until the next
    // step makes one.
    let missed = poll_async("edge-a and edge-b to go offline", LIMIT, || async {
        let events = listed_after(&client, cut_at).await;
        let offline = |id: &str| kinds_of(&events, id).contains(&"offline");
        (offline(&a.id) && offline(&b.id)).then_some(events)
    })
    .await;

    // Resumed after the last event it had: exactly the events it missed, in order.
    let mut resumed = client
        .watch_events(&EventWatchQuery {
            after: Some(cut_at),
            ..Default::default()
        })
        .await
        .unwrap();
    for want in &missed {
        assert_eq!(&resumed.next().await.unwrap().unwrap(), want);
    }
    seen.extend(missed.iter().cloned());
    // The same through a reconnecting EventSource's header, which ends at the backlog: no
    // event twice, none missing.
    let raw = raw_resume(&hub, &hub.admin_token, cut_at).await;
    assert!(raw.iter().all(|(id, e)| *id == e.seq));
    assert_eq!(
        raw.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
        missed,
        "Last-Event-ID resumes exactly after the event named"
    );
    // Everything watched (before and after the cut) is everything the hub recorded.
    assert_eq!(seqs(&seen), seqs(&listed_after(&client, start).await));
    assert!(seqs(&seen).windows(2).all(|w| w[0] < w[1]));

    // Filters: by kind and by appliance, on the list and the stream.
    let offline = client
        .events(&EventQuery {
            after: Some(start),
            kind: Some("offline".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!offline.is_empty() && offline.iter().all(|e| e.kind == "offline"));
    let mut only_b = client
        .watch_events(&EventWatchQuery {
            after: Some(start),
            appliance: Some(b.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    let first_b = only_b.next().await.unwrap().unwrap();
    assert_eq!(
        (first_b.appliance.as_str(), first_b.kind.as_str()),
        (b.id.as_str(), "registered")
    );

    // Another tenant's token: nothing of north, listed or streamed (its live watch was
    // open all along), until its own site has an event.
    assert_eq!(listed_after(&globex, 0).await, vec![]);
    assert_eq!(raw_resume(&hub, &globex_token, 0).await, vec![]);
    let c = enroll(&hub, "south", "edge-c").await;
    let theirs = globex_watch.next().await.unwrap().unwrap();
    assert_eq!(
        (
            theirs.appliance.as_str(),
            theirs.kind.as_str(),
            theirs.site.as_str()
        ),
        (c.id.as_str(), "registered", "south"),
        "globex's first event is its own: north's never reached it"
    );

    // A hub restart keeps the sequence: a watch resumed after the last event seen before it
    // gets the next one, numbered higher.
    let before_restart = listed_after(&client, 0).await.last().unwrap().seq;
    hub.kill();
    let hub = Hub::builder(hub_bin())
        .data(&data)
        .serve_args(&FAST)
        .start();
    let client = typed(&hub, &hub.admin_token);
    let mut after_restart = client
        .watch_events(&EventWatchQuery {
            after: Some(before_restart),
            appliance: Some(a.id.clone()),
            ..Default::default()
        })
        .await
        .unwrap();
    a.heartbeat(&hub).await;
    let back = after_restart.next().await.unwrap().unwrap();
    assert_eq!(back.kind, "online", "{back:?}");
    assert!(back.seq > before_restart, "{} > {before_restart}", back.seq);
}

/// On etcd, the sequence is the fleet's: events recorded by one hub stream from another,
/// and a stream cut on one resumes on the other, exactly after its last event.
#[tokio::test]
async fn on_etcd_a_stream_cut_on_one_hub_resumes_on_another() {
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let mut serve = vec!["--etcd-endpoints", &endpoints, "--etcd-lease-ttl", "2"];
    serve.extend(FAST);
    let a = Hub::builder(hub_bin())
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&serve)
        .start();
    let b = a.replica(&serve);
    let on_a = typed(&a, &a.admin_token);
    let on_b = typed(&b, &b.admin_token);

    let mut watch = on_b
        .watch_events(&EventWatchQuery::default())
        .await
        .unwrap();
    let device = enroll(&a, "lab", "edge-e").await;
    device.heartbeat(&a).await;
    let first = watch.next().await.unwrap().unwrap();
    let second = watch.next().await.unwrap().unwrap();
    assert_eq!(
        kinds_of(&[first.clone(), second.clone()], &device.id),
        ["registered", "online"]
    );
    drop(watch);
    // Silent: the leader, whichever hub it is, records it offline.
    let missed = poll_async("edge-e to go offline", LIMIT, || async {
        let events = listed_after(&on_a, second.seq).await;
        kinds_of(&events, &device.id)
            .contains(&"offline")
            .then_some(events)
    })
    .await;
    let mut resumed = on_a
        .watch_events(&EventWatchQuery {
            after: Some(second.seq),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut seen = vec![first.clone(), second];
    for want in &missed {
        let got = resumed.next().await.unwrap().unwrap();
        assert_eq!(&got, want);
        seen.push(got);
    }
    // Then live: the appliance comes back.
    device.heartbeat(&b).await;
    let back = resumed.next().await.unwrap().unwrap();
    assert_eq!(
        (back.appliance.as_str(), back.kind.as_str()),
        (device.id.as_str(), "online")
    );
    seen.push(back);
    assert!(
        seqs(&seen).windows(2).all(|w| w[0] < w[1]),
        "each event once, in order: {:?}",
        seqs(&seen)
    );
    let raw: Vec<u64> = raw_resume(&a, &a.admin_token, first.seq)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        raw,
        seqs(&seen[1..]),
        "after the first event: the second and those missed, once each"
    );
}

/// What the test's webhook receiver got: every attempt, and the events it accepted.
#[derive(Default)]
struct Received {
    attempts: usize,
    /// (the `X-Cairn-Event-Seq` header, the body, the signature header) of accepted ones.
    accepted: Vec<(u64, Vec<u8>, String)>,
}

/// A receiver on 127.0.0.1. When `flaky`, it fails its first attempts: the first hangs
/// past the hub's timeout, the next two answer 500; every later one is accepted.
async fn receiver(flaky: bool) -> (String, std::sync::Arc<std::sync::Mutex<Received>>) {
    use axum::http::{HeaderMap, StatusCode};
    let got = std::sync::Arc::new(std::sync::Mutex::new(Received::default()));
    let state = got.clone();
    let hook = move |headers: HeaderMap, body: axum::body::Bytes| {
        let state = state.clone();
        async move {
            let attempt = {
                let mut r = state.lock().unwrap();
                r.attempts += 1;
                r.attempts
            };
            match attempt {
                1 if flaky => {
                    // Longer than --event-webhook-timeout: the hub gives up on it.
                    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
                    StatusCode::OK
                }
                2 | 3 if flaky => StatusCode::INTERNAL_SERVER_ERROR,
                _ => {
                    let header = |name: &str| headers[name].to_str().unwrap().to_owned();
                    state.lock().unwrap().accepted.push((
                        header("x-cairn-event-seq").parse().unwrap(),
                        body.to_vec(),
                        header("x-cairn-signature"),
                    ));
                    StatusCode::NO_CONTENT
                }
            }
        }
    };
    let app = axum::Router::new().route("/hook", axum::routing::post(hook));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, got)
}

/// The webhook: every event of the kinds asked for arrives once, in sequence order, though
/// the receiver failed the first attempts (a timeout, then 500s); each body is the event's
/// view and its signature checks out with the shared secret; after a hub restart only new
/// events are sent, none delivered before.
#[tokio::test]
async fn webhooks_deliver_every_event_in_order_signed_through_failures_and_restarts() {
    use hmac::{Hmac, Mac};

    let (url, received) = receiver(true).await;
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.key");
    std::fs::write(&secret_file, "s3cret-webhook-key\n").unwrap();
    let data = dir.path().join("hub");
    let mut serve: Vec<&str> = vec![
        "--event-webhook",
        &url,
        "--event-webhook-kinds",
        "registered,online",
        "--event-webhook-secret-file",
        secret_file.to_str().unwrap(),
        "--event-webhook-timeout",
        "1",
        "--event-webhook-retry-first-ms",
        "50",
        "--event-webhook-retry-max",
        "1",
    ];
    serve.extend(FAST);
    let mut hub = Hub::builder(hub_bin())
        .data(&data)
        .serve_args(&serve)
        .start();
    let client = typed(&hub, &hub.admin_token);
    let mut appliances = Vec::new();
    for name in ["edge-w1", "edge-w2"] {
        let a = enroll(&hub, "lab", name).await;
        a.heartbeat(&hub).await;
        appliances.push(a);
    }
    let wanted = |events: Vec<EventView>| -> Vec<EventView> {
        events
            .into_iter()
            .filter(|e| e.kind == "registered" || e.kind == "online")
            .collect()
    };
    let recorded = wanted(listed_after(&client, 0).await);
    assert_eq!(recorded.len(), 4, "{recorded:?}");
    // The receiver runs on this test's runtime: wait without blocking it.
    let accepted = |n: usize| {
        let received = received.clone();
        move || {
            let received = received.clone();
            async move {
                let r = received.lock().unwrap();
                (r.accepted.len() >= n).then(|| r.accepted.clone())
            }
        }
    };
    let got = poll_async("the receiver to accept 4 events", LIMIT, accepted(4)).await;
    assert!(
        received.lock().unwrap().attempts >= 4 + 3,
        "the failed attempts were retried"
    );
    let check = |got: &[(u64, Vec<u8>, String)], want: &[EventView]| {
        for ((seq, body, signature), event) in got.iter().zip(want) {
            let mut mac = <Hmac<sha2::Sha256>>::new_from_slice(b"s3cret-webhook-key").unwrap();
            mac.update(body);
            assert_eq!(
                signature,
                &format!("sha256={}", hex::encode(mac.finalize().into_bytes())),
                "signed with the secret file's key, over the body"
            );
            let view: EventView = serde_json::from_slice(body).unwrap();
            assert_eq!((&view, *seq), (event, event.seq));
        }
        assert_eq!(got.len(), want.len());
    };
    check(&got, &recorded);

    // Restarted, the hub sends what followed, not again what was delivered.
    hub.kill();
    let hub = Hub::builder(hub_bin())
        .data(&data)
        .serve_args(&serve)
        .start();
    let client = typed(&hub, &hub.admin_token);
    let late = enroll(&hub, "lab", "edge-w3").await;
    late.heartbeat(&hub).await;
    let got = poll_async("the receiver to accept 6 events", LIMIT, accepted(6)).await;
    let recorded = wanted(listed_after(&client, 0).await);
    assert_eq!(kinds_of(&recorded, &late.id), ["registered", "online"]);
    check(&got, &recorded);
    assert!(
        seqs(&recorded).windows(2).all(|w| w[0] < w[1]),
        "in sequence order"
    );
}

/// `cairn hub events` lists with its filters; a malformed `--since` says what it expects.
#[tokio::test]
async fn cairn_hub_events_lists_with_filters() {
    use cairn_api::cli::Exit;
    let hub = start_hub(&[]);
    let a = enroll(&hub, "lab", "edge-cli").await;
    let cli = common::OperatorCli::login(&hub).await;
    let listed = [
        "events",
        "--appliance",
        &a.id,
        "--kind",
        "registered",
        "--since",
        "2000-01-01T00:00:00Z",
        "--output",
        "json",
    ];
    assert_eq!(cli.run(&listed).await.unwrap(), Exit::Success);
    let err = cli
        .run(&["events", "--since", "yesterday"])
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("expected RFC 3339"), "{err:#}");
}

/// On etcd only the leading hub delivers: two hubs configured with the same receiver send
/// each event once, and when the leader dies the other takes over where it stopped.
#[tokio::test]
async fn on_etcd_only_the_leader_delivers_each_event_once_and_another_takes_over() {
    let (url, received) = receiver(false).await;
    let etcd = testutil::Etcd::start(1).await;
    let endpoints = etcd.endpoints().join(",");
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("webhook.key");
    std::fs::write(&secret_file, "k").unwrap();
    let mut serve = vec![
        "--etcd-endpoints",
        &endpoints,
        "--etcd-lease-ttl",
        "2",
        "--event-webhook",
        &url,
        "--event-webhook-secret-file",
        secret_file.to_str().unwrap(),
    ];
    serve.extend(FAST);
    let a = Hub::builder(hub_bin())
        .init_args(&["--etcd-endpoints", &endpoints])
        .serve_args(&serve)
        .start();
    let b = a.replica(&serve);
    let accepted = |n: usize| {
        let received = received.clone();
        move || {
            let received = received.clone();
            async move {
                let r = received.lock().unwrap();
                (r.accepted.len() >= n)
                    .then(|| r.accepted.iter().map(|(seq, ..)| *seq).collect::<Vec<_>>())
            }
        }
    };
    // Recorded through either hub.
    let first = enroll(&a, "lab", "edge-l1").await;
    let second = enroll(&b, "lab", "edge-l2").await;
    poll_async("two events delivered", LIMIT, accepted(2)).await;
    // The leader dies; the other hub takes over and delivers what follows, resuming after
    // the last event delivered: no event twice.
    let mut a = a;
    a.kill();
    let third = enroll(&b, "lab", "edge-l3").await;
    let got = poll_async("the third event delivered", LIMIT, accepted(3)).await;
    let recorded = listed_after(&typed(&b, &b.admin_token), 0).await;
    assert_eq!(got, seqs(&recorded), "each event once, in order: {got:?}");
    for (e, id) in recorded.iter().zip([&first.id, &second.id, &third.id]) {
        assert_eq!(
            (e.appliance.as_str(), e.kind.as_str()),
            (id.as_str(), "registered")
        );
    }
}
