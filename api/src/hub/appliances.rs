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
    /// Its fleet configuration: the generation sent, the one applied, the last good, drift.
    #[serde(default)]
    pub config: super::ConfigStateView,
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

/// Default page size of `GET /v1/appliances`.
pub const DEFAULT_PAGE: u32 = 500;
/// Largest page `GET /v1/appliances` answers; a larger `limit` is clamped to it.
pub const MAX_PAGE: u32 = 1000;

/// `GET /v1/appliances` query: a page of the appliances in scope that match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApplianceQuery {
    /// Only this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Only appliances in this state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ApplianceState>,
    /// Only appliances this label selector matches (`kubectl -l` syntax; `site` is the
    /// appliance's site). A malformed one is refused (400) with the character at fault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Page size (default 500, at most 1000: larger is clamped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The `continue` of the previous page: the next page after it.
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `GET /v1/watch/appliances` query: which appliances, and from when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WatchQuery {
    /// Only this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Only appliances in this state (one that leaves it is `DELETED` from the watch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ApplianceState>,
    /// Only appliances this label selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Start after this resource version (a list's `resource_version`, or the last event's);
    /// without it, from now. Too old: 410 `resource_version_too_old`, list again.
    #[serde(
        default,
        rename = "resourceVersion",
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_version: Option<u64>,
    /// End the stream after this many seconds (default: when the client goes).
    #[serde(
        default,
        rename = "timeoutSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<u64>,
}

/// `GET /v1/watch/appliances/{id}` query.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ResumeQuery {
    /// Start after this resource version; without it, from now.
    #[serde(
        default,
        rename = "resourceVersion",
        skip_serializing_if = "Option::is_none"
    )]
    pub resource_version: Option<u64>,
    /// End the stream after this many seconds (default: when the client goes).
    #[serde(
        default,
        rename = "timeoutSeconds",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout_seconds: Option<u64>,
}

/// `GET /v1/appliances` answer: one page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApplianceList {
    /// The appliances of this page, in ID order.
    pub items: Vec<ApplianceView>,
    /// Pass as `continue` for the next page; absent on the last page. Opaque. A page
    /// continues after the last appliance of the previous one: appliances added meanwhile
    /// after that point are listed, none is listed twice or skipped.
    #[serde(default, rename = "continue", skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// The store's version when the listing started: a watch from it sees every change
    /// since.
    pub resource_version: u64,
}

/// What `GET /v1/appliances/counts` groups by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CountBy {
    /// Registered, online, offline.
    State,
    /// Site.
    Site,
    /// The OS version of the latest heartbeat (`unknown` before one).
    Version,
}

/// `GET /v1/appliances/counts` query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CountQuery {
    /// What to group by.
    pub by: CountBy,
    /// Only appliances this label selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Only this site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

/// `GET /v1/appliances/counts` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ApplianceCounts {
    /// What it is grouped by.
    pub by: CountBy,
    /// Appliances per group.
    pub counts: BTreeMap<String, u64>,
    /// All appliances counted.
    pub total: u64,
}

/// What happened to an appliance, in a watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum WatchEventType {
    /// Registered, or newly matching the watch's filters.
    Added,
    /// A visible change: anything in its view but the heartbeat's own clocks and counters
    /// (`status.last_seen`, `observed_at`, `uptime_seconds`, `load1`, `counters`).
    Modified,
    /// Deleted, or no longer matching the watch's filters.
    Deleted,
}

impl WatchEventType {
    /// The wire name (`ADDED`, `MODIFIED`, `DELETED`), also the SSE event name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One event of a watch: the SSE event's name is `type`, its `id` the resource version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct WatchEvent {
    /// What happened.
    #[serde(rename = "type")]
    pub kind: WatchEventType,
    /// The store version of the change: resume a watch after it.
    pub resource_version: u64,
    /// The appliance.
    pub id: ApplianceId,
    /// Its view after the change (`None` when deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<ApplianceView>,
}

impl ApplianceView {
    /// This view without what every heartbeat changes ([`StatusView::without_heartbeat_noise`]):
    /// two views equal here differ in nothing a watcher is told about.
    pub fn without_heartbeat_noise(&self) -> ApplianceView {
        ApplianceView {
            status: self
                .status
                .as_ref()
                .map(StatusView::without_heartbeat_noise),
            ..self.clone()
        }
    }
}

impl StatusView {
    /// This status without what every heartbeat changes: its times, uptime, load and
    /// counters.
    pub fn without_heartbeat_noise(&self) -> StatusView {
        let mut status = self.clone();
        status.last_seen = OffsetDateTime::UNIX_EPOCH;
        status.status.observed_at = OffsetDateTime::UNIX_EPOCH;
        status.status.uptime_seconds = 0;
        status.status.load1 = 0.0;
        status.status.counters.clear();
        status
    }
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
