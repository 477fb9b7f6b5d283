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

/// What `cairn-hub init --output json` prints: where the hub lives and what its first
/// operator needs (the CA fingerprint sites pin, and the admin token unless it went to a
/// file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSummary {
    /// The data directory.
    pub data: std::path::PathBuf,
    /// The CA fingerprint (`sha256:...`) sites and operators pin.
    pub ca_fingerprint: String,
    /// The first admin token, in clear; `None` when it was written to `admin_token_file`.
    pub admin_token: Option<String>,
    /// Where the admin token was written instead of shown.
    pub admin_token_file: Option<std::path::PathBuf>,
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
