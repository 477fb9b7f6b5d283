//! Appliances as operators see and change them: list, show, labels, delete.

use super::*;

impl Fleet {
    /// Appliances in scope, optionally of one site (viewer).
    pub async fn list_appliances(
        &self,
        caller: &Caller,
        site: Option<&str>,
    ) -> Result<Vec<ApplianceView>, FleetError> {
        let appliances: Vec<(u64, Appliance)> = self.list(keys::APPLIANCES).await?;
        let mut statuses: BTreeMap<String, Status> = BTreeMap::new();
        for (k, v) in self.list_raw(keys::STATUS).await? {
            statuses.insert(
                k.trim_start_matches(keys::STATUS).to_owned(),
                decode(&k, &v)?,
            );
        }
        Ok(appliances
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| caller.sees(&a.site) && site.is_none_or(|s| s == a.site))
            .map(|a| {
                let status = statuses.remove(a.id.as_str());
                crate::views::appliance(&a, status.as_ref())
            })
            .collect())
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
