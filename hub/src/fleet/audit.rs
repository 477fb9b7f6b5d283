//! The audit log and fleet events, read in scope.

use super::*;

impl Fleet {
    /// Audit entries at or after `since`, in scope (viewer), at most `limit`.
    pub async fn audit_since(
        &self,
        caller: &Caller,
        since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, FleetError> {
        // A site's entries to who sees the site; a tenant's to its tenant-scoped tokens; the
        // rest (tokens, releases, fleet-wide changes) to fleet-wide tokens only.
        self.log_since(keys::AUDIT, since, limit, |e: &AuditEntry| {
            match (&e.site, &e.tenant) {
                (Some(s), _) => caller.sees(s),
                (None, Some(t)) => caller.check_tenant_wide(t).is_ok(),
                (None, None) => caller.is_fleet_wide(),
            }
        })
        .await
    }

    pub(super) async fn log_since<T: DeserializeOwned>(
        &self,
        prefix: &str,
        since: OffsetDateTime,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, FleetError> {
        let mut out = Vec::new();
        let mut after = log_start(prefix, since);
        loop {
            let page = self.store.list(prefix, Some(&after), PAGE).await?;
            let n = page.len();
            for (k, v) in &page {
                let entry: T = decode(k, v)?;
                if keep(&entry) {
                    out.push(entry);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            match page.into_iter().last() {
                Some((k, _)) if n == PAGE => after = k,
                _ => return Ok(out),
            }
        }
    }

    /// Counts appliances by state, for metrics.
    pub async fn count_by_state(&self) -> Result<BTreeMap<String, u64>, FleetError> {
        let mut counts: BTreeMap<String, u64> = ["online", "offline", "registered"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        let total = self.list_raw(keys::APPLIANCES).await?.len() as u64;
        let mut seen = 0;
        for (k, v) in self.list_raw(keys::STATUS).await? {
            let s: Status = decode(&k, &v)?;
            *counts
                .entry(if s.online { "online" } else { "offline" }.into())
                .or_default() += 1;
            seen += 1;
        }
        counts.insert("registered".into(), total.saturating_sub(seen));
        Ok(counts)
    }
}
