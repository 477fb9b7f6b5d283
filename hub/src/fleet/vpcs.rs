//! VPCs: creation with a unique VNI, attach and detach, the members' overlays.

use super::*;

impl Fleet {
    /// Creates a VPC with a fresh VNI (operator, fleet-wide tokens only: VPCs span sites).
    pub async fn create_vpc(
        &self,
        caller: &Caller,
        name: &str,
        subnet: &str,
    ) -> Result<Vpc, FleetError> {
        let op = caller.operator()?;
        if op.site.is_some() {
            return Err(FleetError::Forbidden(
                "VPCs span sites: a fleet-wide token is needed".into(),
            ));
        }
        validate_name("VPC name", name)?;
        crate::vpc::parse_subnet(subnet).map_err(FleetError::Invalid)?;
        let key = format!("{}{name}", keys::VPCS);
        let key = key.as_str();
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
            };
            let vni_key = format!("{}{vni:08}", keys::VNIS);
            let audit = Self::audit_op(caller, "vpc.create", name, "ok", None);
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

    /// VPCs (viewer).
    pub async fn list_vpcs(&self) -> Result<Vec<Vpc>, FleetError> {
        Ok(self
            .list::<Vpc>(keys::VPCS)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Attaches an appliance to a VPC and updates every member's overlay.
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
                let (vpc_version, mut vpc): (_, Vpc) =
                    self.get(vpc_key)
                        .await?
                        .ok_or_else(|| FleetError::NotFound {
                            code: cairn_api::hub::ErrorCode::VpcUnknown,
                            message: format!("no VPC {vpc_name:?}"),
                        })?;
                let (app_version, mut a) = self.appliance_in_scope(caller, id).await?;
                if attach {
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
        self.refresh_desired(&a.id).await?;
        for m in &vpc.members {
            self.refresh_desired(m).await?;
        }
        Ok(vpc)
    }
}
