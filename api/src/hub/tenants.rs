use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// `POST /v1/tenants` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Unique name (a-z, 0-9, '-'); `default` is taken by the tenant of unclaimed sites.
    pub name: String,
    /// Sites it claims now; a site another tenant claimed is refused (409).
    #[serde(default)]
    pub sites: BTreeSet<String>,
}

/// A tenant as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantView {
    /// Name.
    pub name: String,
    /// Sites it claimed. The `default` tenant also owns every site no tenant claimed.
    pub sites: BTreeSet<String>,
    /// When it was made (`None` for `default`, which always exists).
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
    /// Who made it.
    #[serde(default)]
    pub created_by: Option<String>,
}
