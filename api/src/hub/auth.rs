use std::fmt;

use serde::{Deserialize, Serialize};

/// An operator's role; each includes the ones before it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything in scope.
    Viewer,
    /// Also changes appliances, enrollment tokens, VPCs, assignments.
    Operator,
    /// Also manages operator tokens and control planes.
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// `GET /v1/whoami`: the calling operator token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WhoAmI {
    /// Token name.
    pub name: String,
    /// Token ID.
    pub id: String,
    /// Role.
    pub role: Role,
    /// Site scope.
    pub site: Option<String>,
    /// Tenant scope (for a site-scoped token, the site's tenant).
    #[serde(default)]
    pub tenant: Option<String>,
    /// End of validity; `None`: until revoked.
    #[schemars(with = "Option<crate::Rfc3339>")]
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub expires_at: Option<time::OffsetDateTime>,
}

/// `GET /v1/ca`: the hub CA.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CaInfo {
    /// The hub CA, PEM.
    pub ca_bundle_pem: String,
    /// `sha256:<hex>` of its DER.
    pub fingerprint: String,
}
