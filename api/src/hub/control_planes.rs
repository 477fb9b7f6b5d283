use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ApplianceId;

/// `POST /v1/control-planes` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddControlPlane {
    /// Unique name.
    pub name: String,
    /// `https://...` of its API server.
    pub api_server_url: String,
    /// The API server's CA bundle, PEM.
    pub ca_bundle_pem: String,
    /// Path, on the hub's machine, of a file holding a bearer token allowed to create
    /// Secrets in `kube-system`.
    pub credentials_ref: String,
    /// Owner: only its appliances are assigned; `None`: `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// A hosted control plane as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ControlPlaneView {
    /// Unique name.
    pub name: String,
    /// API server URL.
    pub api_server_url: String,
    /// API server CA bundle, PEM.
    pub ca_bundle_pem: String,
    /// Where the hub finds its credentials (a path on the hub's machine, never the token).
    pub credentials_ref: String,
    /// Appliances of this site are assigned (when set).
    pub site: Option<String>,
    /// Appliances with all these labels are assigned (when non-empty).
    pub labels: BTreeMap<String, String>,
    /// Owner: only its appliances are assigned.
    #[serde(default)]
    pub tenant: String,
}

/// `POST /v1/control-planes/{name}/assign` body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignRequest {
    /// Appliances of this site.
    #[serde(default)]
    pub site: Option<String>,
    /// Appliances with all these labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/control-planes/{name}/assign` answer: per-appliance results.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AssignResult {
    /// Appliances that got a join bundle.
    pub assigned: Vec<ApplianceId>,
    /// Appliances that could not be joined, with the reason.
    pub failed: Vec<(ApplianceId, String)>,
}
