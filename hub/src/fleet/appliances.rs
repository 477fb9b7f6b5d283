//! Appliances as operators see and change them: list (paged, filtered, counted), show,
//! labels, delete.

use cairn_api::hub::{
    ApplianceCounts, ApplianceList, ApplianceState, CountBy, LabelSelector, MAX_PAGE,
};

use super::*;

/// Appliance records read per store request while listing or counting.
const SCAN: usize = 500;

/// What a list, count or watch keeps of the appliances in the caller's scope.
#[derive(Debug, Clone, Default)]
pub struct ApplianceFilter {
    /// Only this site.
    pub site: Option<String>,
    /// Only this state.
    pub state: Option<ApplianceState>,
    /// Only those it matches.
    pub selector: LabelSelector,
    /// Only this appliance (a watch of one).
    pub id: Option<String>,
}

impl ApplianceFilter {
    /// Whether `a` (with its status) passes, for `caller`.
    pub(crate) fn admits(&self, caller: &Caller, a: &Appliance, status: Option<&Status>) -> bool {
        caller.sees(&a.site)
            && self.site.as_ref().is_none_or(|s| s == &a.site)
            && self.id.as_ref().is_none_or(|id| id == a.id.as_str())
            && self
                .state
                .is_none_or(|s| s == crate::views::state_of(status))
            && self.selector.matches(crate::model::selector_lookup(a))
    }
}

/// The `continue` cursor after appliance `id`: opaque to clients, so its form can change.
fn cursor_after(id: &str) -> String {
    hex::encode(format!("a:{id}"))
}

fn id_of_cursor(cursor: &str) -> Result<String, FleetError> {
    hex::decode(cursor)
        .ok()
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|text| text.strip_prefix("a:").map(str::to_owned))
        .ok_or(FleetError::BadCursor)
}

impl Fleet {
    /// One page of the appliances in scope that pass `filter`, in ID order, after the
    /// appliance `cursor` names (viewer). Keyset pagination: a page starts after the last
    /// ID of the previous one, so records added or removed meanwhile never make another
    /// record repeat or go missing.
    pub async fn list_appliance_page(
        &self,
        caller: &Caller,
        filter: &ApplianceFilter,
        limit: u32,
        cursor: Option<&str>,
    ) -> Result<ApplianceList, FleetError> {
        caller.operator()?;
        let resource_version = self.store.revision().await?;
        let limit = limit.clamp(1, MAX_PAGE) as usize;
        let mut after = cursor.map(id_of_cursor).transpose()?;
        let mut items = Vec::with_capacity(limit);
        loop {
            let (batch, more) = self.scan_appliances(after.as_deref()).await?;
            for (a, status) in &batch {
                if !filter.admits(caller, a, status.as_ref()) {
                    continue;
                }
                if items.len() == limit {
                    // One more matches: this page is full and another follows.
                    let last: &ApplianceView = &items[limit - 1];
                    return Ok(ApplianceList {
                        cursor: Some(cursor_after(last.id.as_str())),
                        items,
                        resource_version,
                    });
                }
                items.push(crate::views::appliance(a, status.as_ref()));
            }
            match batch.last() {
                Some((a, _)) if more => after = Some(a.id.to_string()),
                _ => {
                    return Ok(ApplianceList {
                        items,
                        cursor: None,
                        resource_version,
                    });
                }
            }
        }
    }

    /// The appliances in scope that pass `filter`, counted by `by` (viewer).
    pub async fn count_appliances(
        &self,
        caller: &Caller,
        filter: &ApplianceFilter,
        by: CountBy,
    ) -> Result<ApplianceCounts, FleetError> {
        caller.operator()?;
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        if by == CountBy::State {
            for s in [
                ApplianceState::Registered,
                ApplianceState::Online,
                ApplianceState::Offline,
            ] {
                counts.insert(s.to_string(), 0);
            }
        }
        let mut total = 0;
        let mut after: Option<String> = None;
        loop {
            let (batch, more) = self.scan_appliances(after.as_deref()).await?;
            for (a, status) in &batch {
                if !filter.admits(caller, a, status.as_ref()) {
                    continue;
                }
                let group = match by {
                    CountBy::State => crate::views::state_of(status.as_ref()).to_string(),
                    CountBy::Site => a.site.clone(),
                    CountBy::Version => status
                        .as_ref()
                        .map_or_else(|| "unknown".to_owned(), |s| s.status.os_version.clone()),
                };
                *counts.entry(group).or_default() += 1;
                total += 1;
            }
            match batch.last() {
                Some((a, _)) if more => after = Some(a.id.to_string()),
                _ => return Ok(ApplianceCounts { by, counts, total }),
            }
        }
    }

    /// Up to [`SCAN`] appliances after `after` (an ID) with their statuses, and whether
    /// more may follow. Statuses are read as one key range over the same IDs, not one by one.
    async fn scan_appliances(
        &self,
        after: Option<&str>,
    ) -> Result<(Vec<(Appliance, Option<Status>)>, bool), FleetError> {
        let after_key = after.map(|id| format!("{}{id}", keys::APPLIANCES));
        let raw = self
            .store
            .list(keys::APPLIANCES, after_key.as_deref(), SCAN)
            .await?;
        let more = raw.len() == SCAN;
        let Some((last_key, _)) = raw.last() else {
            return Ok((Vec::new(), false));
        };
        let through = last_key.trim_start_matches(keys::APPLIANCES).to_owned();
        let mut statuses = self.statuses_between(after, &through).await?;
        let mut out = Vec::with_capacity(raw.len());
        for (k, v) in &raw {
            let a: Appliance = decode(k, v)?;
            let status = statuses.remove(a.id.as_str());
            out.push((a, status));
        }
        Ok((out, more))
    }

    /// The statuses of the IDs after `after` up to `through` (inclusive).
    async fn statuses_between(
        &self,
        after: Option<&str>,
        through: &str,
    ) -> Result<BTreeMap<String, Status>, FleetError> {
        let mut out = BTreeMap::new();
        let mut after_key = after.map(|id| format!("{}{id}", keys::STATUS));
        loop {
            let page = self
                .store
                .list(keys::STATUS, after_key.as_deref(), SCAN)
                .await?;
            let full = page.len() == SCAN;
            for (k, v) in &page {
                let id = k.trim_start_matches(keys::STATUS);
                if id > through {
                    return Ok(out);
                }
                out.insert(id.to_owned(), decode(k, v)?);
            }
            match page.last() {
                Some((k, _)) if full => after_key = Some(k.clone()),
                _ => return Ok(out),
            }
        }
    }

    pub(super) async fn list_raw(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, Versioned)>, FleetError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(prefix, after.as_deref(), PAGE).await?;
            let n = page.len();
            after = page.last().map(|(k, _)| k.clone());
            out.extend(page);
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    pub(crate) async fn appliance_in_scope(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(u64, Appliance), FleetError> {
        let not_found = || FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::ApplianceUnknown,
            message: format!("no appliance {id:?}"),
        };
        let (version, a): (_, Appliance) = self
            .get(&format!("{}{id}", keys::APPLIANCES))
            .await?
            .ok_or_else(not_found)?;
        // Out of scope looks the same as absent: a scoped token learns nothing of other sites.
        if !caller.sees(&a.site) {
            return Err(not_found());
        }
        Ok((version, a))
    }

    /// The site of appliance `id`, for the hub's own use (its scrapes); `None` when absent.
    pub async fn appliance_site(&self, id: &str) -> Result<Option<String>, FleetError> {
        let a: Option<(u64, Appliance)> = self.get(&format!("{}{id}", keys::APPLIANCES)).await?;
        Ok(a.map(|(_, a)| a.site))
    }

    /// One appliance (viewer, in scope).
    pub async fn show_appliance(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<ApplianceView, FleetError> {
        let (_, a) = self.appliance_in_scope(caller, id).await?;
        let status = self
            .get::<Status>(&format!("{}{id}", keys::STATUS))
            .await?
            .map(|(_, s)| s);
        Ok(crate::views::appliance(&a, status.as_ref()))
    }

    /// The join bundle with its bootstrap token (admin, in scope, audited): the one way a
    /// person gets a secret meant for the appliance.
    pub async fn join_bundle_for_admin(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<cairn_api::hub::JoinSecretView, FleetError> {
        caller.require(Role::Admin)?;
        let (_, a) = self.appliance_in_scope(caller, id).await?;
        let bundle = a.desired.join.clone().ok_or_else(|| FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::NoJoinBundle,
            message: format!("appliance {id} has no join bundle (not assigned to a control plane)"),
        })?;
        self.audit(
            caller,
            "appliance.join-bundle.read",
            a.id.as_str(),
            "ok",
            Some(&a.site),
        )
        .await?;
        tracing::info!(appliance = %a.id, actor = %caller.actor, "join bundle read by an admin");
        Ok(cairn_api::hub::JoinSecretView {
            appliance: a.id,
            bundle,
        })
    }

    /// Sets labels (operator, in scope): `Some(v)` sets, `None` removes.
    pub async fn label_appliance(
        &self,
        caller: &Caller,
        id: &str,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<Appliance, FleetError> {
        let changes = &changes;
        self.cas(id, move || async move {
            let (version, mut a) = self.appliance_in_scope(caller, id).await?;
            for (k, v) in changes {
                match v {
                    Some(v) => a.labels.insert(k.clone(), v.clone()),
                    None => a.labels.remove(k),
                };
            }
            let key = format!("{}{id}", keys::APPLIANCES);
            let audit = Self::audit_op(caller, "appliance.label", id, "ok", Some(&a.site));
            Ok(Attempt::Write {
                checks: vec![Check::version(&key, version)],
                ops: vec![Op::put(&key, encode(&a)), audit],
                then: a,
            })
        })
        .await
    }

    /// Deletes an appliance (operator, in scope): its certificate stops working at once.
    pub async fn delete_appliance(&self, caller: &Caller, id: &str) -> Result<(), FleetError> {
        let (_, a) = self.appliance_in_scope(caller, id).await?;
        for vpc in &a.vpcs {
            self.detach(caller, vpc, id).await?;
        }
        let (version, a) = self.appliance_in_scope(caller, id).await?;
        let key = format!("{}{id}", keys::APPLIANCES);
        let mut ops = vec![
            Op::delete(&key),
            Op::delete(format!("{}{id}", keys::STATUS)),
            Self::audit_op(caller, "appliance.delete", id, "ok", Some(&a.site)),
        ];
        if let Some(hw) = hardware_key(&a.inventory) {
            ops.push(Op::delete(hw));
        }
        if !self
            .store
            .txn(vec![Check::version(&key, version)], ops)
            .await?
        {
            return Err(FleetError::Contended(id.into()));
        }
        // After the delete: a kubelet that still has the token cannot join any more.
        self.revoke_bootstrap_tokens(caller, &a.id, Some(&a.site), None)
            .await
    }
}
