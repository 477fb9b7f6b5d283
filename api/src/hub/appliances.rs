use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    ApplianceId, DesiredState, HardwareInventory, JoinBundle, NodeStatus, OverlayDocument,
    UpgradeOrder,
};

/// An appliance with its latest status, as operators see it (`GET /v1/appliances`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApplianceView {
    /// Identity (certificate CN).
    pub id: ApplianceId,
    /// Site.
    pub site: String,
    /// Hostname it registered with.
    pub hostname: String,
    /// Operator and token labels.
    pub labels: BTreeMap<String, String>,
    /// Hardware it reported at (re-)registration.
    pub inventory: HardwareInventory,
    /// cairn version at registration.
    pub agent_version: String,
    /// SHA-256 (hex) of the current client certificate.
    pub cert_sha256: String,
    /// The certificate it replaced, accepted until the appliance uses the new one.
    #[serde(default)]
    pub previous_cert_sha256: Option<String>,
    /// End of the current certificate's validity.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub cert_not_after: OffsetDateTime,
    /// First registration.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// Re-registrations of the same hardware (re-keys).
    pub rekeys: u32,
    /// VTEP address from its latest heartbeat that carried a valid one.
    #[serde(default)]
    pub vtep_address: Option<String>,
    /// The VTEP address its latest heartbeat reported when the hub refused it, and why
    /// (not unicast, or another member of one of its VPCs has it): peers do not tunnel to
    /// it until the appliance reports a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_refused: Option<(String, String)>,
    /// VPCs it is attached to.
    pub vpcs: BTreeSet<String>,
    /// Control plane it is assigned to.
    #[serde(default)]
    pub control_plane: Option<String>,
    /// How it joins that control plane (without the bootstrap token).
    #[serde(default)]
    pub join: Option<JoinView>,
    /// Desired state, with its generation.
    pub desired: DesiredView,
    /// Versions campaigns must not order to it again, with why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<String, String>,
    /// Set when it came back on a version nobody ordered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_flag: Option<String>,
    /// Online, offline, or registered with no heartbeat yet.
    pub state: ApplianceState,
    /// Latest heartbeat.
    pub status: Option<StatusView>,
}

/// Where an appliance is, as the hub sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ApplianceState {
    /// Registered, no heartbeat yet.
    Registered,
    /// Heartbeating.
    Online,
    /// Missed its heartbeats.
    Offline,
}

impl ApplianceState {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::Online => "online",
            Self::Offline => "offline",
        }
    }
}

impl fmt::Display for ApplianceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A join bundle as operators see it: where and at which revision, never the bootstrap token
/// (that reaches only the appliance, in its desired state over mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinView {
    /// Control plane name on the hub.
    pub control_plane: String,
    /// API server URL.
    pub api_server_url: String,
    /// Increases whenever the kubelet configuration must be rewritten.
    #[serde(default)]
    pub revision: u64,
}

impl From<&JoinBundle> for JoinView {
    fn from(j: &JoinBundle) -> Self {
        Self {
            control_plane: j.control_plane.clone(),
            api_server_url: j.api_server_url.clone(),
            revision: j.revision,
        }
    }
}

/// `GET /v1/appliances/{id}/join-bundle`: the join bundle with its bootstrap token, for an
/// admin who asks for it explicitly (audited). Nothing else answers the token to anyone but
/// the appliance itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinSecretView {
    /// The appliance.
    pub appliance: ApplianceId,
    /// Its join bundle as the appliance gets it.
    pub bundle: JoinBundle,
}

/// An appliance's desired state as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DesiredView {
    /// Increases with every change.
    pub generation: u64,
    /// Heartbeat interval handed to the appliance, seconds.
    pub heartbeat_interval_seconds: u32,
    /// The upgrade order it carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeOrder>,
    /// Its control-plane join (without the bootstrap token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinView>,
    /// Its VPC overlays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayDocument>,
}

impl From<&DesiredState> for DesiredView {
    fn from(d: &DesiredState) -> Self {
        Self {
            generation: d.generation,
            heartbeat_interval_seconds: d.heartbeat_interval_seconds,
            upgrade: d.upgrade.clone(),
            join: d.join.as_ref().map(JoinView::from),
            overlay: d.overlay.clone(),
        }
    }
}

/// What an appliance's latest heartbeat said.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatusView {
    /// When the hub received it.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// The interval the appliance was told to keep.
    pub interval_seconds: u32,
    /// Generation it has applied.
    pub applied_generation: u64,
    /// Online until the offline detector says otherwise.
    pub online: bool,
    /// The report.
    pub status: NodeStatus,
}

/// `GET /v1/appliances` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct SiteQuery {
    /// Only this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// `PUT /v1/appliances/{id}/labels` body: `null` removes a label.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LabelRequest {
    /// Label changes.
    pub labels: BTreeMap<String, Option<String>>,
}

/// `POST /v1/renewals` body (mTLS).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RenewalRequest {
    /// A CSR whose CN is the appliance ID.
    pub csr_pem: String,
}

/// `POST /v1/renewals` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Renewal {
    /// New client certificate, PEM.
    pub certificate_pem: String,
    /// Hub CA, PEM.
    pub ca_bundle_pem: String,
    /// End of validity.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}
