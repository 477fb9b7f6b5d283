//! Tenants: who owns which sites, and with them which appliances, VPCs and control planes.

use cairn_api::hub::TenantView;

use super::*;

impl Fleet {
    /// Every claimed site and its tenant.
    pub(super) async fn site_tenants(&self) -> Result<BTreeMap<String, String>, FleetError> {
        Ok(self
            .list::<Site>(keys::SITES)
            .await?
            .into_iter()
            .map(|(_, s)| (s.name, s.tenant))
            .collect())
    }

    /// The tenant `site` belongs to now.
    pub(super) async fn tenant_of(&self, site: &str) -> Result<String, FleetError> {
        Ok(self
            .get::<Site>(&format!("{}{site}", keys::SITES))
            .await?
            .map_or_else(|| DEFAULT_TENANT.to_owned(), |(_, s)| s.tenant))
    }

    /// Refuses a tenant that does not exist (`default` always does).
    pub(super) async fn check_tenant_exists(&self, tenant: &str) -> Result<(), FleetError> {
        if tenant == DEFAULT_TENANT
            || self
                .store
                .get(&format!("{}{tenant}", keys::TENANTS))
                .await?
                .is_some()
        {
            Ok(())
        } else {
            Err(FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::TenantUnknown,
                message: format!("no tenant {tenant:?}"),
            })
        }
    }

    /// The write that claims an unclaimed `site` for `tenant`, with the check that keeps
    /// a concurrent claim from being overwritten.
    pub(super) fn claim_site(site: &str, tenant: &str) -> (Check, Op) {
        let key = format!("{}{site}", keys::SITES);
        let record = Site {
            name: site.into(),
            tenant: tenant.into(),
        };
        (Check::version(&key, 0), Op::put(&key, encode(&record)))
    }

    /// Creates a tenant claiming `sites` (admin, fleet-wide). A site already claimed is
    /// refused; an unclaimed one moves from the default tenant with its appliances.
    pub async fn create_tenant(
        &self,
        caller: &Caller,
        name: &str,
        sites: &BTreeSet<String>,
    ) -> Result<TenantView, FleetError> {
        if !caller.is_fleet_wide() {
            return Err(FleetError::Forbidden(
                "tenants are made by fleet-wide tokens".into(),
            ));
        }
        validate_name("tenant", name)?;
        if name == DEFAULT_TENANT {
            return Err(FleetError::Conflict(format!(
                "{DEFAULT_TENANT:?} is the tenant of unclaimed sites and always exists"
            )));
        }
        let claimed = self.site_tenants().await?;
        for site in sites {
            validate_name("site", site)?;
            if let Some(t) = claimed.get(site) {
                return Err(FleetError::Conflict(format!(
                    "site {site:?} belongs to tenant {t:?}"
                )));
            }
        }
        let key = format!("{}{name}", keys::TENANTS);
        let tenant = Tenant {
            name: name.into(),
            created_at: now(),
            created_by: caller.actor.clone(),
        };
        let mut checks = vec![Check::version(&key, 0)];
        let mut ops = vec![
            Op::put(&key, encode(&tenant)),
            Self::tenant_audit_op(caller, "tenant.create", name, "ok", name),
        ];
        for site in sites {
            let (check, op) = Self::claim_site(site, name);
            checks.push(check);
            ops.push(op);
        }
        if !self.store.txn(checks, ops).await? {
            return Err(FleetError::Conflict(format!(
                "tenant {name:?} exists, or one of its sites was claimed meanwhile"
            )));
        }
        Ok(TenantView {
            name: name.into(),
            sites: sites.clone(),
            created_at: Some(tenant.created_at),
            created_by: Some(tenant.created_by),
        })
    }

    /// Tenants in scope (viewer): a scoped token sees its own.
    pub async fn list_tenants(&self, caller: &Caller) -> Result<Vec<TenantView>, FleetError> {
        let claimed = self.site_tenants().await?;
        let sites_of = |t: &str| -> BTreeSet<String> {
            claimed
                .iter()
                .filter(|(_, owner)| owner.as_str() == t)
                .map(|(s, _)| s.clone())
                .collect()
        };
        let mut out = vec![TenantView {
            name: DEFAULT_TENANT.into(),
            sites: sites_of(DEFAULT_TENANT),
            created_at: None,
            created_by: None,
        }];
        for (_, t) in self.list::<Tenant>(keys::TENANTS).await? {
            out.push(TenantView {
                sites: sites_of(&t.name),
                name: t.name,
                created_at: Some(t.created_at),
                created_by: Some(t.created_by),
            });
        }
        out.retain(|t| caller.sees_tenant(&t.name));
        // A site-scoped token sees its tenant, not the tenant's other sites.
        if let Some(Scope::Site(mine)) = caller.scope() {
            for t in &mut out {
                t.sites.retain(|s| s == mine);
            }
        }
        Ok(out)
    }
}
