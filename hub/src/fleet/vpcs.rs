//! VPCs: creation with a unique VNI, attach and detach, the members' overlays. A VPC
//! belongs to a tenant; only that tenant's appliances join it.

use super::*;

impl Fleet {
    /// Creates a VPC with a fresh VNI (operator, fleet-wide or of the VPC's tenant: VPCs
    /// span sites, so a site-scoped token cannot).
    pub async fn create_vpc(
        &self,
        caller: &Caller,
        name: &str,
        subnet: &str,
        tenant: Option<&str>,
    ) -> Result<Vpc, FleetError> {
        caller.operator()?;
        let tenant = tenant
            .or(caller.tenant())
            .unwrap_or(DEFAULT_TENANT)
            .to_owned();
        caller.check_tenant_wide(&tenant)?;
        self.check_tenant_exists(&tenant).await?;
        validate_name("VPC name", name)?;
        crate::vpc::parse_subnet(subnet).map_err(FleetError::Invalid)?;
        let key = format!("{}{name}", keys::VPCS);
        let key = key.as_str();
        let tenant = tenant.as_str();
        self.cas(key, move || async move {
            if self.store.get(key).await?.is_some() {
                return Err(FleetError::Conflict(format!("VPC {name:?} exists")));
            }
            let taken: Vec<u32> = self
                .list_raw(keys::VNIS)
                .await?
                .iter()
                .filter_map(|(k, _)| k.trim_start_matches(keys::VNIS).parse().ok())
                .collect();
            let vni = crate::vpc::next_vni(&taken)
                .ok_or_else(|| FleetError::Conflict("no VNI left".into()))?;
            let vpc = Vpc {
                name: name.into(),
                subnet: subnet.into(),
                vni,
                members: Default::default(),
                tenant: tenant.into(),
            };
            let vni_key = format!("{}{vni:08}", keys::VNIS);
            let audit = Self::tenant_audit_op(caller, "vpc.create", name, "ok", tenant);
            Ok(Attempt::Write {
                checks: vec![Check::version(key, 0), Check::version(&vni_key, 0)],
                ops: vec![
                    Op::put(key, encode(&vpc)),
                    Op::put(&vni_key, name.as_bytes().to_vec()),
                    audit,
                ],
                then: vpc,
            })
        })
        .await
    }

    /// VPCs in scope (viewer): those of the caller's tenant, each listing only the members
    /// the caller sees.
    pub async fn list_vpcs(&self, caller: &Caller) -> Result<Vec<Vpc>, FleetError> {
        let mut out = Vec::new();
        for (_, vpc) in self.list::<Vpc>(keys::VPCS).await? {
            if caller.sees_tenant(&vpc.tenant) {
                out.push(self.vpc_as_seen(caller, vpc).await?);
            }
        }
        Ok(out)
    }

    /// The VPC with only the members `caller` sees: a site-scoped token learns nothing
    /// of the tenant's other sites.
    async fn vpc_as_seen(&self, caller: &Caller, mut vpc: Vpc) -> Result<Vpc, FleetError> {
        if caller.is_fleet_wide() {
            return Ok(vpc);
        }
        let mut seen = BTreeSet::new();
        for m in &vpc.members {
            if let Some((_, a)) = self
                .get::<Appliance>(&format!("{}{m}", keys::APPLIANCES))
                .await?
                && caller.sees(&a.site)
            {
                seen.insert(m.clone());
            }
        }
        vpc.members = seen;
        Ok(vpc)
    }

    /// A VPC of the caller's tenant; another tenant's answers as absent.
    pub(crate) async fn vpc_in_scope(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(u64, Vpc), FleetError> {
        let not_found = || FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::VpcUnknown,
            message: format!("no VPC {name:?}"),
        };
        let (version, vpc): (_, Vpc) = self
            .get(&format!("{}{name}", keys::VPCS))
            .await?
            .ok_or_else(not_found)?;
        if !caller.sees_tenant(&vpc.tenant) {
            return Err(not_found());
        }
        Ok((version, vpc))
    }

    /// Attaches an appliance of the VPC's tenant to it and updates every member's overlay.
    pub async fn attach(&self, caller: &Caller, vpc: &str, id: &str) -> Result<Vpc, FleetError> {
        self.membership(caller, vpc, id, true).await
    }

    /// Detaches an appliance from a VPC and updates every member's overlay.
    pub async fn detach(&self, caller: &Caller, vpc: &str, id: &str) -> Result<Vpc, FleetError> {
        self.membership(caller, vpc, id, false).await
    }

    pub(super) async fn membership(
        &self,
        caller: &Caller,
        vpc_name: &str,
        id: &str,
        attach: bool,
    ) -> Result<Vpc, FleetError> {
        let vpc_key = format!("{}{vpc_name}", keys::VPCS);
        let app_key = format!("{}{id}", keys::APPLIANCES);
        let (vpc_key, app_key) = (vpc_key.as_str(), app_key.as_str());
        let (vpc, a) = self
            .cas(vpc_key, move || async move {
                // Both sides: the VPC is the caller's tenant's, the appliance in its scope,
                // and the appliance of the VPC's tenant.
                let (vpc_version, mut vpc) = self.vpc_in_scope(caller, vpc_name).await?;
                let (app_version, mut a) = self.appliance_in_scope(caller, id).await?;
                if attach {
                    let tenant = self.tenant_of(&a.site).await?;
                    if tenant != vpc.tenant {
                        return Err(FleetError::Forbidden(format!(
                            "appliance {id} is of another tenant than VPC {vpc_name:?}: an appliance joins only its tenant's VPCs"
                        )));
                    }
                    // Not naming the other member: it may be of a site the caller does not see.
                    if let Some(vtep) = &a.vtep_address
                        && self.vtep_taken(&vpc, &a.id, vtep).await?
                    {
                        return Err(FleetError::Conflict(format!(
                            "another member of VPC {vpc_name:?} has the same VTEP address {vtep}"
                        )));
                    }
                    vpc.members.insert(a.id.clone());
                    a.vpcs.insert(vpc_name.into());
                } else {
                    vpc.members.remove(&a.id);
                    a.vpcs.remove(vpc_name);
                }
                let action = if attach { "vpc.attach" } else { "vpc.detach" };
                let audit = Self::audit_op(
                    caller,
                    action,
                    &format!("{vpc_name}/{id}"),
                    "ok",
                    Some(&a.site),
                );
                Ok(Attempt::Write {
                    checks: vec![
                        Check::version(vpc_key, vpc_version),
                        Check::version(app_key, app_version),
                    ],
                    ops: vec![
                        Op::put(vpc_key, encode(&vpc)),
                        Op::put(app_key, encode(&a)),
                        audit,
                    ],
                    then: (vpc, a),
                })
            })
            .await?;
        // A crash here leaves the members' overlays stale until the reconciler's next pass.
        crate::failpoint::hit(crate::failpoint::MEMBERSHIP_COMMITTED);
        self.refresh_desired(&a.id).await?;
        for m in &vpc.members {
            self.refresh_desired(m).await?;
        }
        self.vpc_as_seen(caller, vpc).await
    }

    /// Whether another member of `vpc` than `me` has the VTEP address `vtep`.
    pub(super) async fn vtep_taken(
        &self,
        vpc: &Vpc,
        me: &ApplianceId,
        vtep: &str,
    ) -> Result<bool, FleetError> {
        for m in vpc.members.iter().filter(|m| *m != me) {
            if let Some((_, p)) = self
                .get::<Appliance>(&format!("{}{m}", keys::APPLIANCES))
                .await?
                && p.vtep_address.as_deref() == Some(vtep)
            {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
