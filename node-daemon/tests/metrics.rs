//! The node's Prometheus metrics, scraped from a running `cairn-node` on its local API
//! socket while it heartbeats a real hub, and after the hub goes away.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const NO_NET: &str = "network:\n  manage: false\n";

/// `GET /metrics` on the node's socket, as a Prometheus agent on the appliance would.
fn scrape(socket: &Path) -> Option<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let client = reqwest::Client::builder()
            .unix_socket(socket)
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        let response = client.get("http://node/metrics").send().await.ok()?;
        assert_eq!(response.status(), 200);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/openmetrics-text"),
        );
        response.text().await.ok()
    })
}

/// The value of the sample `name` (with its labels, as written), if scraped.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn the_node_serves_heartbeat_latency_queue_and_reconnect_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let mut hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("metrics-site");
    write_config(&root, &hub.url, &hub.fingerprint, &token, NO_NET);
    let node = Node::start(&root);
    let socket = root.join("run/cairn/node.sock");

    // Heartbeats are timed: the histogram counts each delivered report.
    let text = poll("two timed heartbeats", LIMIT, || {
        scrape(&socket).filter(|t| sample(t, "cairn_node_heartbeat_seconds_count") >= Some(2.0))
    });
    assert_eq!(
        sample(&text, "cairn_node_queued_reports"),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, "cairn_node_heartbeat_seconds_sum") > Some(0.0),
        "{text}"
    );

    // The hub goes: reports queue up on the node.
    let addr = hub.addr().to_owned();
    hub.kill();
    poll("reports queued while the hub is away", LIMIT, || {
        scrape(&socket).filter(|t| sample(t, "cairn_node_queued_reports") >= Some(2.0))
    });
    // Back at the same address: the queue drains and the reconnect is counted.
    let _hub = hub_at(&dir.path().join("hub")).listen(&addr).start();
    let text = poll(
        "the queue to drain and the reconnect to count",
        LIMIT,
        || {
            scrape(&socket).filter(|t| {
                sample(t, "cairn_node_queued_reports") == Some(0.0)
                    && sample(t, "cairn_node_events_total{name=\"reconnects\"}") >= Some(1.0)
            })
        },
    );
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text: {text}");
    node.stop();
}
