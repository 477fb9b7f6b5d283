//! Hosted control planes: registration, assignment by site and labels, and the join
//! bundle (a bootstrap token minted in the API server) each assigned appliance gets.

use super::*;

/// Whether a control plane's assignment selects an appliance of tenant `tenant`.
pub(super) fn matches(cp: &ControlPlane, a: &Appliance, tenant: &str) -> bool {
    cp.tenant == tenant
        && (cp.site.is_some() || !cp.labels.is_empty())
        && cp.site.as_ref().is_none_or(|s| s == &a.site)
        && cp.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v))
}

/// Lifetime of kubelet bootstrap tokens minted for appliances.
const BOOTSTRAP_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Fleet {
    /// Registers a control plane for a tenant (admin, fleet-wide: its `credentials_ref` is
    /// a file on the hub's machine, which no tenant may name).
    pub async fn add_control_plane(
        &self,
        caller: &Caller,
        mut cp: ControlPlane,
    ) -> Result<ControlPlane, FleetError> {
        caller.operator()?;
        if !caller.is_fleet_wide() {
            return Err(FleetError::Forbidden(
                "control planes are registered by a fleet-wide admin token".into(),
            ));
        }
        validate_name("control plane name", &cp.name)?;
        self.check_tenant_exists(&cp.tenant).await?;
        if !cp.api_server_url.starts_with("https://") {
            return Err(FleetError::Invalid(
                "api_server_url: must be https://".into(),
            ));
        }
        let certs =
            rustls::pki_types::CertificateDer::pem_slice_iter(cp.ca_bundle_pem.as_bytes()).count();
        if certs == 0 {
            return Err(FleetError::Invalid(
                "ca_bundle_pem: no PEM certificate found".into(),
            ));
        }
        if cp.credentials_ref.trim().is_empty() {
            return Err(FleetError::Invalid(
                "credentials_ref: path of a bearer token file on the hub".into(),
            ));
        }
        cp.site = None;
        cp.labels.clear();
        let key = format!("{}{}", keys::CONTROL_PLANES, cp.name);
        let audit = Self::tenant_audit_op(caller, "control-plane.add", &cp.name, "ok", &cp.tenant);
        if !self
            .store
            .txn(
                vec![Check::version(&key, 0)],
                vec![Op::put(&key, encode(&cp)), audit],
            )
            .await?
        {
            return Err(FleetError::Conflict(format!(
                "control plane {:?} exists",
                cp.name
            )));
        }
        Ok(cp)
    }

    /// Control planes in scope (viewer): those of the caller's tenant; a site-scoped token
    /// sees those assigned to its site or tenant-wide by labels, not other sites'.
    pub async fn list_control_planes(
        &self,
        caller: &Caller,
    ) -> Result<Vec<ControlPlane>, FleetError> {
        Ok(self
            .list::<ControlPlane>(keys::CONTROL_PLANES)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| Self::control_plane_visible(caller, c))
            .collect())
    }

    fn control_plane_visible(caller: &Caller, cp: &ControlPlane) -> bool {
        caller.sees_tenant(&cp.tenant) && cp.site.as_deref().is_none_or(|s| caller.sees(s))
    }

    /// A control plane the caller sees; others answer as absent.
    pub(crate) async fn control_plane_in_scope(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(u64, ControlPlane), FleetError> {
        let not_found = || FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::ControlPlaneUnknown,
            message: format!("no control plane {name:?}"),
        };
        let (version, cp): (_, ControlPlane) = self
            .get(&format!("{}{name}", keys::CONTROL_PLANES))
            .await?
            .ok_or_else(not_found)?;
        if !Self::control_plane_visible(caller, &cp) {
            return Err(not_found());
        }
        Ok((version, cp))
    }

    /// Assigns appliances of `site` and/or with `labels` to a control plane (operator), and
    /// joins every matching appliance in scope now; later registrations that match join at
    /// registration. Both sides are checked: the caller must be allowed to change the
    /// assignment the control plane has (another site's is not its to take) and the one
    /// it asks for, and only appliances of the control plane's tenant are assigned.
    pub async fn assign(
        &self,
        caller: &Caller,
        name: &str,
        site: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Result<AssignResult, FleetError> {
        if site.is_none() && labels.is_empty() {
            return Err(FleetError::Invalid("give a site, labels, or both".into()));
        }
        let key = format!("{}{name}", keys::CONTROL_PLANES);
        let (version, mut cp) = self.control_plane_in_scope(caller, name).await?;
        // What it has now: a site assignment the caller sees (visibility checked it), or a
        // tenant-wide label assignment only a tenant or fleet token may replace.
        if cp.site.is_none() && !cp.labels.is_empty() {
            caller.check_tenant_wide(&cp.tenant)?;
        }
        // What it asks for.
        match &site {
            Some(s) => {
                caller.check_site(s)?;
                if self.tenant_of(s).await? != cp.tenant {
                    return Err(FleetError::Forbidden(format!(
                        "site {s:?} is not of control plane {name:?}'s tenant"
                    )));
                }
            }
            None => caller.check_tenant_wide(&cp.tenant)?,
        }
        cp.site = site;
        cp.labels = labels;
        let audit = match cp.site.as_deref() {
            Some(s) => Self::audit_op(caller, "control-plane.assign", name, "ok", Some(s)),
            None => Self::tenant_audit_op(caller, "control-plane.assign", name, "ok", &cp.tenant),
        };
        if !self
            .store
            .txn(
                vec![Check::version(&key, version)],
                vec![Op::put(&key, encode(&cp)), audit],
            )
            .await?
        {
            return Err(FleetError::Contended(key));
        }
        let mut result = AssignResult::default();
        let site_tenants = self.site_tenants().await?;
        for (_, a) in self.list::<Appliance>(keys::APPLIANCES).await? {
            if !caller.sees(&a.site)
                || !matches(&cp, &a, tenant_in(&site_tenants, &a.site))
                || a.control_plane.as_deref() == Some(name)
            {
                continue;
            }
            match self.join(caller, &cp, &a.id).await {
                Ok(_) => result.assigned.push(a.id),
                Err(e) => result.failed.push((a.id, e.to_string())),
            }
        }
        Ok(result)
    }

    pub(super) async fn join_matching_control_plane(
        &self,
        caller: &Caller,
        a: &Appliance,
    ) -> Result<Option<Appliance>, FleetError> {
        if a.control_plane.is_some() {
            return Ok(None);
        }
        let tenant = self.tenant_of(&a.site).await?;
        for (_, cp) in self.list::<ControlPlane>(keys::CONTROL_PLANES).await? {
            if matches(&cp, a, &tenant) {
                return self.join(caller, &cp, &a.id).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Mints a bootstrap token in `cp` for the appliance, puts the join bundle in its
    /// desired state and revokes the tokens it had before (another control plane's, or one
    /// a failed join left). The token's record is written first: a crash before the bundle
    /// is stored leaves a tracked token, which the next join or the delete revokes.
    pub(super) async fn join(
        &self,
        caller: &Caller,
        cp: &ControlPlane,
        id: &ApplianceId,
    ) -> Result<Appliance, FleetError> {
        let token = BootstrapToken::generate(BOOTSTRAP_TOKEN_TTL);
        let record = MintedBootstrapToken {
            appliance: id.clone(),
            control_plane: cp.name.clone(),
            token_id: token.id.clone(),
            expires_at: token.expires_at,
        };
        let record_key = bootstrap_key(id, &token.id);
        if !self
            .store
            .txn(
                vec![Check::version(&record_key, 0)],
                vec![Op::put(&record_key, encode(&record))],
            )
            .await?
        {
            return Err(FleetError::Contended(record_key));
        }
        if let Err(e) = self.kube.create(cp, id, &token).await {
            let message = format!("{e}");
            self.audit(
                caller,
                "control-plane.join",
                &format!("{}/{id}", cp.name),
                &format!("failed: {message}"),
                None,
            )
            .await?;
            return Err(FleetError::ControlPlane {
                name: cp.name.clone(),
                message,
            });
        }
        let key = format!("{}{id}", keys::APPLIANCES);
        let key = key.as_str();
        let token = &token;
        let joined = self
            .cas(key, move || async move {
                let Some((version, mut a)) = self.get::<Appliance>(key).await? else {
                    return Err(FleetError::NotFound {
                        code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                        message: format!("appliance {id} vanished"),
                    });
                };
                let revision = a.join.as_ref().map_or(0, |j| j.revision) + 1;
                a.control_plane = Some(cp.name.clone());
                a.join = Some(cairn_api::JoinBundle {
                    control_plane: cp.name.clone(),
                    api_server_url: cp.api_server_url.clone(),
                    ca_bundle_pem: cp.ca_bundle_pem.clone(),
                    bootstrap_token: token.token(),
                    revision,
                });
                let audit = Self::audit_op(
                    caller,
                    "control-plane.join",
                    &format!("{}/{id}", cp.name),
                    "ok",
                    Some(&a.site),
                );
                Ok(Attempt::Write {
                    checks: vec![Check::version(key, version)],
                    ops: vec![Op::put(key, encode(&a)), audit],
                    then: a,
                })
            })
            .await?;
        self.revoke_bootstrap_tokens(caller, id, Some(&joined.site), Some(&token.id))
            .await?;
        Ok(self.refresh_desired(id).await?.unwrap_or(joined))
    }

    /// Revokes in their control planes the appliance's tracked bootstrap tokens but
    /// `keep`, and forgets those revoked. One the API server would not delete stays
    /// tracked (audited as failed) for the next join, delete or
    /// [`Fleet::sweep_bootstrap_tokens`] to retry; the caller's change stands either way.
    pub(super) async fn revoke_bootstrap_tokens(
        &self,
        caller: &Caller,
        id: &ApplianceId,
        site: Option<&str>,
        keep: Option<&str>,
    ) -> Result<(), FleetError> {
        let prefix = bootstrap_key(id, "");
        for (version, t) in self.list::<MintedBootstrapToken>(&prefix).await? {
            if keep == Some(t.token_id.as_str()) {
                continue;
            }
            let target = format!("{}/{id}", t.control_plane);
            let cp = self
                .get::<ControlPlane>(&format!("{}{}", keys::CONTROL_PLANES, t.control_plane))
                .await?;
            let result = match &cp {
                // Its control plane is gone from the hub, and with it the way to reach it.
                None => Ok(()),
                Some((_, cp)) => self.kube.delete(cp, &t.token_id).await,
            };
            let key = bootstrap_key(id, &t.token_id);
            match result {
                Ok(()) => {
                    let audit = Self::audit_op(
                        caller,
                        "control-plane.revoke-bootstrap-token",
                        &target,
                        "ok",
                        site,
                    );
                    self.store
                        .txn(
                            vec![Check::version(&key, version)],
                            vec![Op::delete(&key), audit],
                        )
                        .await?;
                }
                Err(e) => {
                    tracing::warn!(appliance = %id, control_plane = %t.control_plane, token = %t.token_id, error = %e, "revoking a bootstrap token failed; kept to retry");
                    self.audit(
                        caller,
                        "control-plane.revoke-bootstrap-token",
                        &target,
                        &format!("failed: {e}"),
                        site,
                    )
                    .await?;
                }
            }
        }
        Ok(())
    }
}

impl Fleet {
    /// A leader pass over the tracked bootstrap tokens: forgets those past their expiry
    /// (the API server deleted them) and revokes those of deleted appliances whose
    /// revocation failed at the delete. Answers how many records it removed.
    pub async fn sweep_bootstrap_tokens(&self) -> Result<usize, FleetError> {
        let hub = Caller {
            actor: "cairn-hub".into(),
            source: "local".into(),
            ..Default::default()
        };
        let mut removed = 0;
        let mut orphans = BTreeSet::new();
        for (k, v) in self.list_raw(keys::BOOTSTRAP_TOKENS).await? {
            let t: MintedBootstrapToken = decode(&k, &v)?;
            if t.expires_at <= now() {
                if self
                    .store
                    .txn(vec![Check::version(&k, v.version)], vec![Op::delete(&k)])
                    .await?
                {
                    removed += 1;
                }
            } else if self
                .store
                .get(&format!("{}{}", keys::APPLIANCES, t.appliance))
                .await?
                .is_none()
            {
                orphans.insert(t.appliance);
            }
        }
        for id in orphans {
            let before = self.list_raw(&bootstrap_key(&id, "")).await?.len();
            self.revoke_bootstrap_tokens(&hub, &id, None, None).await?;
            removed += before - self.list_raw(&bootstrap_key(&id, "")).await?.len();
        }
        Ok(removed)
    }
}

/// `bootstrap-tokens/<appliance>/<token id>`; with an empty ID, the appliance's prefix.
fn bootstrap_key(id: &ApplianceId, token_id: &str) -> String {
    format!("{}{id}/{token_id}", keys::BOOTSTRAP_TOKENS)
}
