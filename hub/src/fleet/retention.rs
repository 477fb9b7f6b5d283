//! Retention of the audit log and the events: entries older than the configured age, and
//! the oldest beyond the configured count, are deleted by a periodic pass, and at once
//! after a burst of writes, so no flood grows the store without bound.

use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use tokio::sync::Notify;

use super::*;
use crate::store::MAX_TXN_OPS;

/// How long and how many entries one log keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Entries older than this are deleted.
    pub max_age: Duration,
    /// Beyond this many, the oldest are deleted.
    pub max_count: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: Duration::days(90),
            max_count: 100_000,
        }
    }
}

/// The store as the fleet uses it, counting audit and event writes: after `burst` of them
/// it wakes the retention pass ([`Fleet::log_burst`]) rather than waiting for its period.
pub(super) struct LogWrites {
    inner: Arc<dyn Store>,
    written: AtomicUsize,
    burst: usize,
    wake: Notify,
}

impl LogWrites {
    pub(super) fn new(inner: Arc<dyn Store>, settings: &FleetSettings) -> Self {
        // A tenth of the smaller log's count: the store never holds much more than it.
        let smallest = settings
            .audit_retention
            .max_count
            .min(settings.event_retention.max_count);
        Self {
            inner,
            written: AtomicUsize::new(0),
            burst: (smallest / 10).max(1),
            wake: Notify::new(),
        }
    }

    fn count(&self, ops: &[Op]) {
        let n = ops
            .iter()
            .filter(|op| {
                matches!(op, Op::Put { key, .. }
                    if key.starts_with(keys::AUDIT) || key.starts_with(keys::EVENTS))
            })
            .count();
        if n > 0 && self.written.fetch_add(n, Ordering::Relaxed) + n >= self.burst {
            self.wake.notify_one();
        }
    }
}

#[async_trait]
impl Store for LogWrites {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.list(prefix, start_after, limit).await
    }
    async fn txn(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.count(&ops);
        self.inner.txn(checks, ops).await
    }
    async fn txn_relaxed(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.count(&ops);
        self.inner.txn_relaxed(checks, ops).await
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

impl Fleet {
    /// Waits until audit and event writes since the last pass reach a burst (a tenth of
    /// the smaller retention count).
    pub async fn log_burst(&self) {
        self.log_writes.wake.notified().await;
    }

    /// One retention pass over the audit log and the events; answers how many entries it
    /// deleted.
    pub async fn prune_logs(&self) -> Result<usize, FleetError> {
        self.log_writes.written.store(0, Ordering::Relaxed);
        let audit = self
            .prune_log(keys::AUDIT, self.settings.audit_retention)
            .await?;
        let events = self
            .prune_log(keys::EVENTS, self.settings.event_retention)
            .await?;
        if audit + events > 0 {
            tracing::info!(audit, events, "retention deleted old log entries");
        }
        Ok(audit + events)
    }

    async fn prune_log(&self, prefix: &str, keep: Retention) -> Result<usize, FleetError> {
        // Keys sort by time: the oldest come first.
        let keys: Vec<String> = self
            .list_raw(prefix)
            .await?
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        let cutoff = log_start(prefix, now() - keep.max_age);
        let too_old = keys.partition_point(|k| k.as_str() < cutoff.as_str());
        let too_many = keys.len().saturating_sub(keep.max_count);
        let drop = too_old.max(too_many);
        for chunk in keys[..drop].chunks(MAX_TXN_OPS) {
            self.store
                .txn(vec![], chunk.iter().map(Op::delete).collect())
                .await?;
        }
        Ok(drop)
    }
}
