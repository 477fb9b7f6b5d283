//! Prometheus metrics, kept in one registry owned by the server (no globals).

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::store::{Check, Op, Store, StoreError, Versioned};

type Labels = Vec<(&'static str, String)>;
type HistogramFamily = Family<Labels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.1 ms .. ~3.3 s
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

/// Every metric the hub exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub requests: Family<Labels, Counter>,
    /// Request latency by route.
    pub request_seconds: HistogramFamily,
    /// Appliances by state (set at scrape time).
    pub appliances: Family<Labels, Gauge>,
    /// Registrations by result.
    pub registrations: Family<Labels, Counter>,
    /// Store operation latency by operation.
    pub store_seconds: HistogramFamily,
    /// Campaigns by state (set at scrape time).
    pub campaigns: Family<Labels, Gauge>,
    /// Members of running and paused campaigns by state (set at scrape time).
    pub campaign_members: Family<Labels, Gauge>,
    /// Connections open now.
    pub open_connections: Gauge,
    /// Connections closed at accept by a cap, by cap (`total`, `per_source`).
    pub refused_connections: Family<Labels, Counter>,
    /// Stale parts of desired states the reconciler rewrote, by part (`overlay`, `join`).
    pub reconciler_repairs: Family<Labels, Counter>,
    /// Appliances' tunnels this replica holds (set at scrape time).
    pub open_tunnels: Gauge,
    /// Scrapes of the nodes' metrics through their tunnels, by result (`ok`, `failed`).
    pub node_scrapes: Family<Labels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("cairn_hub");
        let requests = Family::<Labels, Counter>::default();
        let request_seconds = HistogramFamily::new_with_constructor(latency_histogram);
        let appliances = Family::<Labels, Gauge>::default();
        let registrations = Family::<Labels, Counter>::default();
        let store_seconds = HistogramFamily::new_with_constructor(latency_histogram);
        let campaigns = Family::<Labels, Gauge>::default();
        let campaign_members = Family::<Labels, Gauge>::default();
        let open_connections = Gauge::default();
        let refused_connections = Family::<Labels, Counter>::default();
        let reconciler_repairs = Family::<Labels, Counter>::default();
        let open_tunnels = Gauge::default();
        let node_scrapes = Family::<Labels, Counter>::default();
        registry.register(
            "open_tunnels",
            "Appliances' tunnels this replica holds",
            open_tunnels.clone(),
        );
        registry.register(
            "node_scrapes",
            "Scrapes of the nodes' metrics through their tunnels, by result",
            node_scrapes.clone(),
        );
        registry.register(
            "reconciler_repairs",
            "Stale parts of appliances' desired states the reconciler rewrote, by part",
            reconciler_repairs.clone(),
        );
        registry.register(
            "open_connections",
            "Connections open now",
            open_connections.clone(),
        );
        registry.register(
            "refused_connections",
            "Connections closed at accept by the total or per-source cap",
            refused_connections.clone(),
        );
        registry.register("campaigns", "Upgrade campaigns by state", campaigns.clone());
        registry.register(
            "campaign_members",
            "Appliances of running and paused campaigns by state",
            campaign_members.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            request_seconds.clone(),
        );
        registry.register("appliances", "Appliances by state", appliances.clone());
        registry.register(
            "registrations",
            "Registrations by result",
            registrations.clone(),
        );
        registry.register(
            "store_operation_duration_seconds",
            "Store latency by operation",
            store_seconds.clone(),
        );
        Self {
            registry,
            requests,
            request_seconds,
            appliances,
            registrations,
            store_seconds,
            campaigns,
            campaign_members,
            open_connections,
            refused_connections,
            reconciler_repairs,
            open_tunnels,
            node_scrapes,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A store that times every call into [`Metrics::store_seconds`].
pub struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Arc<Metrics>,
}

impl MeteredStore {
    /// Wraps a store.
    pub fn new(inner: Arc<dyn Store>, metrics: Arc<Metrics>) -> Self {
        Self { inner, metrics }
    }

    fn observe(&self, op: &'static str, start: Instant) {
        self.metrics
            .store_seconds
            .get_or_create(&vec![
                ("op", op.to_owned()),
                ("backend", self.inner.backend().to_owned()),
            ])
            .observe(start.elapsed().as_secs_f64());
    }
}

#[async_trait]
impl Store for MeteredStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let start = Instant::now();
        let r = self.inner.get(key).await;
        self.observe("get", start);
        r
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let start = Instant::now();
        let r = self.inner.list(prefix, start_after, limit).await;
        self.observe("list", start);
        r
    }
    async fn txn(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        let start = Instant::now();
        let r = self.inner.txn(checks, ops).await;
        self.observe("txn", start);
        r
    }
    async fn txn_relaxed(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        let start = Instant::now();
        let r = self.inner.txn_relaxed(checks, ops).await;
        self.observe("txn_relaxed", start);
        r
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision().await
    }
    async fn watch(
        &self,
        prefixes: &[&str],
        after: u64,
    ) -> Result<crate::store::Changes, StoreError> {
        self.inner.watch(prefixes, after).await
    }
    async fn lead(&self) -> Result<Option<crate::store::Fence>, StoreError> {
        self.inner.lead().await
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}
