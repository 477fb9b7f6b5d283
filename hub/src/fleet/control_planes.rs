//! Hosted control planes: registration, assignment by site and labels, and the join
//! bundle (a bootstrap token minted in the API server) each assigned appliance gets.

use super::*;

/// Whether a control plane's assignment selects an appliance.
pub(super) fn matches(cp: &ControlPlane, a: &Appliance) -> bool {
    (cp.site.is_some() || !cp.labels.is_empty())
        && cp.site.as_ref().is_none_or(|s| s == &a.site)
        && cp.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v))
}

/// Lifetime of kubelet bootstrap tokens minted for appliances.
const BOOTSTRAP_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Fleet {
    /// Registers a control plane (admin, fleet-wide).
    pub async fn add_control_plane(
        &self,
        caller: &Caller,
        mut cp: ControlPlane,
    ) -> Result<ControlPlane, FleetError> {
        let op = caller.operator()?;
        if op.site.is_some() {
            return Err(FleetError::Forbidden(
                "control planes are fleet-wide: a fleet-wide admin token is needed".into(),
            ));
        }
        validate_name("control plane name", &cp.name)?;
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
        let audit = Self::audit_op(caller, "control-plane.add", &cp.name, "ok", None);
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

    /// Control planes (viewer).
    pub async fn list_control_planes(&self) -> Result<Vec<ControlPlane>, FleetError> {
        Ok(self
            .list::<ControlPlane>(keys::CONTROL_PLANES)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Assigns appliances of `site` and/or with `labels` to a control plane (operator), and
    /// joins every matching appliance in scope now; later registrations that match join at
    /// registration.
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
        caller.check_scope(site.as_deref(), "a site-scoped token must name its site")?;
        let key = format!("{}{name}", keys::CONTROL_PLANES);
        let (version, mut cp): (_, ControlPlane) =
            self.get(&key).await?.ok_or_else(|| FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::ControlPlaneUnknown,
                message: format!("no control plane {name:?}"),
            })?;
        cp.site = site;
        cp.labels = labels;
        let audit = Self::audit_op(
            caller,
            "control-plane.assign",
            name,
            "ok",
            cp.site.as_deref(),
        );
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
        for (_, a) in self.list::<Appliance>(keys::APPLIANCES).await? {
            if !caller.sees(&a.site)
                || !matches(&cp, &a)
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
        for (_, cp) in self.list::<ControlPlane>(keys::CONTROL_PLANES).await? {
            if matches(&cp, a) {
                return self.join(caller, &cp, &a.id).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Mints a bootstrap token in `cp` for the appliance and puts the join bundle in its
    /// desired state.
    pub(super) async fn join(
        &self,
        caller: &Caller,
        cp: &ControlPlane,
        id: &ApplianceId,
    ) -> Result<Appliance, FleetError> {
        let token = BootstrapToken::generate(BOOTSTRAP_TOKEN_TTL);
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
        Ok(self.refresh_desired(id).await?.unwrap_or(joined))
    }
}
