//! Prometheus metrics of the node, in one registry owned by the daemon (no globals), served
//! as OpenMetrics text on the local API (`GET /metrics`). What the daemon measures as it
//! goes (heartbeat round trips, network applies) is recorded here when it happens; what the
//! status snapshot already holds (queued reports, the persistent counters, the upgrade
//! phase) is read from it at each scrape, so the two never disagree.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::status::LocalStatus;

type Labels = Vec<(&'static str, String)>;

/// The node's metrics.
pub struct NodeMetrics {
    /// Encoding and the scrape-time updates happen under this lock: two scrapes at once
    /// would otherwise add a counter's increase twice.
    registry: Mutex<Registry>,
    heartbeat_seconds: Histogram,
    network_applies: Family<Labels, Counter>,
    queued_reports: Gauge,
    counters: Family<Labels, Counter>,
    upgrade_phase: Family<Labels, Gauge>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl Default for NodeMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cairn_node");
        // 1 ms .. ~33 s: a heartbeat over a slow uplink, up to the client's timeout.
        let heartbeat_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let network_applies = Family::<Labels, Counter>::default();
        let queued_reports = Gauge::default();
        let counters = Family::<Labels, Counter>::default();
        let upgrade_phase = Family::<Labels, Gauge>::default();
        registry.register(
            "heartbeat_seconds",
            "Round trip of each report delivered to the hub",
            heartbeat_seconds.clone(),
        );
        registry.register(
            "network_applies",
            "Network applies by what (host, overlay) and result (ok, failed)",
            network_applies.clone(),
        );
        registry.register(
            "queued_reports",
            "Reports waiting for the hub (kept on disk while it cannot be reached)",
            queued_reports.clone(),
        );
        registry.register(
            "events",
            "Persistent counts of what happened to the node, by name (reconnects, reports_dropped, kubelet_restarts)",
            counters.clone(),
        );
        registry.register(
            "upgrade_phase",
            "1 for the phase the last upgrade order reached, with its version",
            upgrade_phase.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            heartbeat_seconds,
            network_applies,
            queued_reports,
            counters,
            upgrade_phase,
        }
    }
}

impl NodeMetrics {
    /// A report reached the hub after `took`.
    pub fn heartbeat(&self, took: Duration) {
        self.heartbeat_seconds.observe(took.as_secs_f64());
    }

    /// A network apply of `what` (`host`, `overlay`) ended, `ok` or not.
    pub fn network_applied(&self, what: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.network_applies
            .get_or_create(&vec![("what", what.to_owned()), ("result", result.into())])
            .inc();
    }

    /// The OpenMetrics text, with the snapshot's values as of now.
    pub fn render(&self, status: &LocalStatus) -> String {
        let registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        self.queued_reports
            .set(i64::try_from(status.queued_reports).unwrap_or(i64::MAX));
        for (name, &value) in &status.counters {
            let counter = self.counters.get_or_create(&vec![("name", name.clone())]);
            // The store's counts persist across restarts and only grow: add the increase.
            counter.inc_by(value.saturating_sub(counter.get()));
        }
        self.upgrade_phase.clear();
        if let Some(report) = &status.upgrade {
            let phase = serde_json::to_value(report.phase)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            self.upgrade_phase
                .get_or_create(&vec![("phase", phase), ("version", report.version.clone())])
                .set(1);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scrape_shows_what_happened_and_the_snapshot() {
        let m = NodeMetrics::default();
        m.heartbeat(Duration::from_millis(20));
        m.network_applied("overlay", false);
        let mut status = LocalStatus {
            queued_reports: 3,
            counters: [("reconnects".to_owned(), 2)].into(),
            upgrade: Some(
                serde_json::from_value(
                    serde_json::json!({"campaign": "c", "version": "1.2", "phase": "writing", "at": "2026-01-01T00:00:00Z"}),
                )
                .unwrap(),
            ),
            ..Default::default()
        };
        let text = m.render(&status);
        for line in [
            "cairn_node_heartbeat_seconds_count 1",
            "cairn_node_network_applies_total{what=\"overlay\",result=\"failed\"} 1",
            "cairn_node_queued_reports 3",
            "cairn_node_events_total{name=\"reconnects\"} 2",
            "cairn_node_upgrade_phase{phase=\"writing\",version=\"1.2\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
        // Counters follow the store's counts; the phase is the latest only.
        status.counters.insert("reconnects".into(), 5);
        status.upgrade.as_mut().unwrap().phase = cairn_api::UpgradePhase::Committed;
        let text = m.render(&status);
        assert!(
            text.contains("cairn_node_events_total{name=\"reconnects\"} 5"),
            "{text}"
        );
        assert!(!text.contains("phase=\"writing\""), "{text}");
        assert!(text.contains("phase=\"committed\""), "{text}");
    }
}
