//! What one peer may hold of a real `cairn-hub`: slow and idle clients are disconnected,
//! connections are capped per source, metric labels stay bounded, renewals are rate-limited,
//! and thousands of idle connections leave the fleet's heartbeats unaffected.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_hub_client::tls::{Trust, client_config};
use common::{Device, Hub, HubClients, LIMIT, heartbeat, post, start_hub};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn addr(hub: &Hub) -> SocketAddr {
    hub.addr().parse().unwrap()
}

/// A TCP connection to the hub from `source` (any 127.0.0.0/8 address works on loopback).
async fn connect_from(hub: &Hub, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    socket.connect(addr(hub)).await
}

/// Whether the server closed `tcp` within `wait` (end of stream or reset).
async fn closed_within(tcp: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 64];
    matches!(
        tokio::time::timeout(wait, tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// A TLS connection speaking HTTP/1.1 by hand, for clients no HTTP library would be.
async fn tls_connect(hub: &Hub) -> tokio_rustls::client::TlsStream<TcpStream> {
    let (mut config, _) = client_config(&Trust::CaBundle(hub.ca_pem.clone()), None).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr(hub)).await.unwrap();
    connector
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}

/// Sends `GET /healthz` on `tls` and reads the answer; `false` when the connection is gone.
async fn healthz_on(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> bool {
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";
    if tls.write_all(request).await.is_err() {
        return false;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.ends_with(b"\r\n\r\nok") {
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return false,
        }
    }
    answer.starts_with(b"HTTP/1.1 200")
}

#[tokio::test]
async fn slowloris_and_silent_clients_are_cut_off_by_the_header_read_timeout() {
    let hub = start_hub(&["--header-read-timeout", "2", "--idle-timeout", "5"]);
    // One byte of headers every 200 ms: it would take ~10 s to finish.
    let slow = async {
        let mut tls = tls_connect(&hub).await;
        let start = Instant::now();
        let request =
            b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in request {
            if tls.write_all(&[*byte]).await.is_err() || tls.flush().await.is_err() {
                return (start.elapsed(), false);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Sent it all without being cut off: the server answers.
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), tls.read_to_end(&mut answer)).await;
        (start.elapsed(), !answer.is_empty())
    };
    // Handshake done, then nothing.
    let silent = async {
        let mut tls = tls_connect(&hub).await;
        let start = Instant::now();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await;
        (start.elapsed(), r)
    };
    // A kept-alive connection waits for its next request longer than the header-read
    // timeout (appliances heartbeat every 30 s on one), and is closed once idle too long.
    let kept = async {
        let mut tls = tls_connect(&hub).await;
        assert!(healthz_on(&mut tls).await, "first request");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(healthz_on(&mut tls).await, "second request, 3 s later");
        let idle_since = Instant::now();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(15), tls.read(&mut buf)).await;
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "{r:?}");
        idle_since.elapsed()
    };
    // Meanwhile an ordinary client is served.
    let normal = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        hub.anonymous()
            .get(format!("{}/healthz", hub.url))
            .send()
            .await
            .unwrap()
            .status()
    };
    let ((slow_after, answered), (silent_after, silent_read), kept_for, status) =
        tokio::join!(slow, silent, kept, normal);
    println!(
        "slowloris cut off after {slow_after:?}; silent client after {silent_after:?}; idle kept-alive connection closed after {kept_for:?}"
    );
    assert!(
        kept_for > Duration::from_secs(3) && kept_for < Duration::from_secs(12),
        "{kept_for:?}"
    );
    assert!(!answered, "the slow client got an answer");
    assert!(slow_after < Duration::from_secs(8), "{slow_after:?}");
    assert!(
        matches!(silent_read, Ok(Ok(0) | Err(_))),
        "the silent client was not disconnected: {silent_read:?}"
    );
    assert!(silent_after < Duration::from_secs(8), "{silent_after:?}");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn connections_over_the_per_source_cap_are_closed_at_once() {
    let hub = start_hub(&[
        "--max-connections-per-source",
        "4",
        "--tls-handshake-timeout",
        "30",
    ]);
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(connect_from(&hub, here).await.unwrap());
    }
    for tcp in &mut held {
        assert!(!closed_within(tcp, Duration::from_millis(300)).await);
    }
    let mut excess = connect_from(&hub, here).await.unwrap();
    assert!(
        closed_within(&mut excess, Duration::from_secs(5)).await,
        "a fifth connection from one source was kept"
    );
    // Another source is not affected.
    let other = reqwest::Client::builder()
        .tls_backend_preconfigured(
            client_config(&Trust::CaBundle(hub.ca_pem.clone()), None)
                .unwrap()
                .0,
        )
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other
        .get(format!("{}/healthz", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // ... and sees the refusal counted.
    let metrics = other
        .get(format!("{}/metrics", hub.url))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"cairn_hub_refused_connections_total{cap="per_source"} 1"#),
        "{metrics}"
    );
    // A closed connection gives its place back.
    drop(held.pop());
    cairn_test_support::poll_async("a slot is free again", LIMIT, || async {
        let mut tcp = connect_from(&hub, here).await.ok()?;
        (!closed_within(&mut tcp, Duration::from_millis(500)).await).then_some(())
    })
    .await;
}

/// Reads one HTTP/1.1 answer with a `Content-Length` body from `tls`; `None` when the
/// connection broke first.
async fn answer_on(tls: &mut tokio_rustls::client::TlsStream<TcpStream>) -> Option<String> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&answer).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if body.len() >= len {
                return Some(text);
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

#[tokio::test]
async fn a_request_refused_before_its_body_is_read_still_gets_its_answer() {
    let hub = start_hub(&[]);
    // A heartbeat without a client certificate is refused on its headers; its 48 KiB body
    // (under the 64 KiB limit) is still on its way. Written whole before the answer is read,
    // as simple clients do: a hub that closed at once would reset the connection instead.
    let body = format!("{{\"pad\":\"{}\"}}", "x".repeat(48 * 1024));
    let mut tls = tls_connect(&hub).await;
    let head = format!(
        "POST /v1/heartbeats HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    // Let the hub answer on the headers alone before the body follows.
    tokio::time::sleep(Duration::from_millis(300)).await;
    tls.write_all(body.as_bytes()).await.unwrap();
    let answer = answer_on(&mut tls).await.expect("the refusal, not a reset");
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        !answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // The connection stays usable.
    assert!(
        healthz_on(&mut tls).await,
        "the connection was closed after the refusal"
    );
}

#[tokio::test]
async fn made_up_methods_do_not_grow_the_metrics() {
    let hub = start_hub(&[]);
    let http = hub.anonymous();
    for i in 0..20 {
        let method = reqwest::Method::from_bytes(format!("BOGUS{i}").as_bytes()).unwrap();
        let r = http
            .request(method, format!("{}/healthz", hub.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405);
    }
    let (s, text) = hub.admin().get("/metrics").await;
    assert_eq!(s, 200);
    let text = text.as_str().unwrap();
    assert!(!text.contains("BOGUS"), "{text}");
    assert!(
        text.contains(r#"method="other""#),
        "made-up methods are counted as other: {text}"
    );
}

#[tokio::test]
async fn renewals_are_rate_limited_per_appliance() {
    let hub = start_hub(&["--renewal-rate", "3"]);
    let token = hub.admin().enrollment_token("lab", 2).await;
    let a = Device::new("edge-a", "RL-A", &["52:54:00:20:00:01"]);
    let b = Device::new("edge-b", "RL-B", &["52:54:00:20:00:02"]);
    let (reg_a, reg_b) = (
        a.register(&hub, &token).await,
        b.register(&hub, &token).await,
    );
    let http_a = a.client(&hub, &reg_a);
    let renew = |http: reqwest::Client, csr: String| {
        let url = format!("{}/v1/renewals", hub.url);
        async move { post(&http, url, &json!({ "csr_pem": csr })).await }
    };
    // A CSR naming another subject is refused by the handler, but still counts.
    for _ in 0..3 {
        let (s, body) = renew(http_a.clone(), a.csr("not-the-id")).await;
        assert_eq!(s, 400, "{body}");
    }
    let (s, body) = renew(http_a.clone(), a.csr(&reg_a.appliance_id.to_string())).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    // Another appliance renews normally, from the same address.
    let (s, body) = renew(
        b.client(&hub, &reg_b),
        b.csr(&reg_b.appliance_id.to_string()),
    )
    .await;
    assert_eq!(s, 200, "{body}");
}

/// Raises this process's open-file limit (inherited by the hub it starts) to the hard limit.
fn raise_nofile(need: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    limit.current = limit.maximum;
    setrlimit(Resource::Nofile, limit).unwrap();
    let current = getrlimit(Resource::Nofile).current;
    assert!(
        current.is_none_or(|n| n >= need),
        "the hard open-file limit ({current:?}) is below the {need} this test needs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_thousand_idle_connections_leave_heartbeats_unaffected() {
    const IDLE: usize = 5_000;
    const SOURCES: usize = 10;
    raise_nofile(2 * IDLE as u64 + 1_000);
    // Idle connections are held for the handshake timeout; long enough for the test.
    let hub = start_hub(&["--tls-handshake-timeout", "60"]);
    let token = hub.admin().enrollment_token("lab", 10).await;
    let mut devices = Vec::new();
    for i in 0..10 {
        let d = Device::new(
            &format!("edge-{i}"),
            &format!("IDLE-{i}"),
            &[&format!("52:54:00:30:00:{i:02x}")],
        );
        let reg = d.register(&hub, &token).await;
        devices.push(d.client(&hub, &reg));
    }

    // 5,000 connections that never speak, from 10 addresses (under the per-source cap).
    let started = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    for i in 0..IDLE {
        let source: IpAddr = format!("127.0.1.{}", 1 + i % SOURCES).parse().unwrap();
        idle.push(connect_from(&hub, source).await.unwrap());
    }
    println!("{IDLE} idle connections opened in {:?}", started.elapsed());

    // Every device heartbeats back to back for a few seconds.
    let stop = Instant::now() + Duration::from_secs(5);
    let url = format!("{}/v1/heartbeats", hub.url);
    let mut tasks = tokio::task::JoinSet::new();
    for http in devices {
        let url = url.clone();
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let (s, body) = post(&http, url.clone(), &heartbeat(1, None)).await;
                assert_eq!(s, 200, "{body}");
                latencies.push(t.elapsed());
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = tasks.join_all().await.into_iter().flatten().collect();
    latencies.sort();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];

    // The idle connections are still held: the hub did not shed them to serve.
    let mut buf = [0u8; 16];
    let open = idle
        .iter()
        .filter(|tcp| {
            matches!(tcp.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    println!(
        "with {open} idle connections held: {} heartbeats, all succeeded; p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    assert_eq!(open, IDLE, "the hub closed idle connections under its caps");
    // The hub counts them as open, too (they were accepted, not left in the backlog).
    let (s, metrics) = hub.admin().get("/metrics").await;
    assert_eq!(s, 200);
    let held_by_hub: u64 = metrics
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("cairn_hub_open_connections "))
        .unwrap()
        .parse()
        .unwrap();
    println!("the hub reports {held_by_hub} open connections");
    assert!(held_by_hub >= IDLE as u64, "{held_by_hub}");
    assert!(latencies.len() >= 10);
}

/// `GET /v1/audit` from the beginning, as the admin sees it.
async fn audit(hub: &Hub) -> Vec<serde_json::Value> {
    let (s, body) = hub
        .admin()
        .get("/v1/audit?since=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(s, 200, "{body}");
    body.as_array().unwrap().clone()
}

#[tokio::test]
async fn a_flood_of_refusals_is_audited_once_a_minute_per_source_and_the_audit_is_bounded() {
    let hub = start_hub(&[
        "--audit-retention-count",
        "20",
        "--retention-check-every",
        "1",
    ]);
    let bad = hub.operator("cairn-op.0123456789ab.00112233445566778899aabbccddeeff00112233");
    for _ in 0..200 {
        assert_eq!(bad.get("/v1/appliances").await.0, 401);
    }
    // Another source: its own record.
    let (config, _) = client_config(&Trust::CaBundle(hub.ca_pem.clone()), None).unwrap();
    let other = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .local_address("127.0.0.2".parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let r = other
        .get(format!("{}/v1/appliances", hub.url))
        .bearer_auth(&bad.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let refusals: Vec<(String, String)> = audit(&hub)
        .await
        .into_iter()
        .filter(|e| e["action"] == "request.unauthenticated")
        .map(|e| {
            assert_eq!(e["target"], "/v1/appliances");
            (
                e["source"].as_str().unwrap().to_owned(),
                e["result"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        refusals,
        [
            ("127.0.0.1".to_owned(), "refused: 401".to_owned()),
            ("127.0.0.2".to_owned(), "refused: 401".to_owned())
        ]
    );

    // Sixty audited writes: retention keeps the newest twenty, promptly.
    for i in 0..60 {
        hub.admin().enrollment_token(&format!("site-{i}"), 1).await;
    }
    let kept = cairn_test_support::poll_async("audit pruned to its count", LIMIT, || async {
        let entries = audit(&hub).await;
        (entries.len() <= 20).then_some(entries)
    })
    .await;
    assert!(kept.len() >= 15, "{}", kept.len());
    let (_, tokens) = hub.admin().get("/v1/tokens").await;
    let newest = tokens
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["site"] == "site-59")
        .unwrap();
    assert!(
        kept.iter()
            .any(|e| e["action"] == "token.create" && e["target"] == newest["id"]),
        "{kept:?}"
    );
    assert!(
        !kept.iter().any(|e| e["actor"] == "cairn-hub init"),
        "the oldest entry is gone"
    );
}

/// The idle timeout closes a connection gracefully, after the response in progress: a watch
/// streaming on it carries on.
#[tokio::test]
async fn a_watch_outlives_the_idle_timeout() {
    use cairn_api::hub::{LabelRequest, WatchQuery};
    use cairn_hub_client::HubClient;

    let hub = start_hub(&["--idle-timeout", "1"]);
    let token = hub.admin().enrollment_token("east", 1).await;
    let reg = Device::new("edge-w", "SER-W", &[])
        .register(&hub, &token)
        .await;
    let client = HubClient::new(&hub.url, &Trust::CaBundle(hub.ca_pem.clone()), None)
        .unwrap()
        .with_bearer(hub.admin_token.clone());
    let mut watch = client
        .watch_appliances(&WatchQuery::default())
        .await
        .unwrap();
    // Nothing to poll for: the point is that time passes, three idle timeouts of it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let request = LabelRequest {
        labels: [("tier".to_owned(), Some("gold".to_owned()))].into(),
    };
    client
        .label_appliance(reg.appliance_id.as_str(), &request)
        .await
        .unwrap();
    let event = tokio::time::timeout(LIMIT, watch.next())
        .await
        .expect("an event within the limit")
        .unwrap()
        .expect("the watch is still open");
    assert_eq!(event.id, reg.appliance_id);
}
