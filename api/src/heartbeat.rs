use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{ConfigReport, OverlayDocument, RenderedConfig, UpgradeOrder, UpgradeReport};

/// `POST /v1/heartbeats` over mTLS: status up. The appliance is identified by its client
/// certificate, not by a field in the body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Heartbeat {
    /// The last desired-state generation the node has fully applied.
    pub applied_generation: u64,
    /// What the node reports about itself.
    pub status: NodeStatus,
}

/// The hub's answer to a heartbeat: desired state down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HeartbeatResponse {
    /// What the hub wants this appliance to be.
    pub desired: DesiredState,
}

/// The state an appliance reports. A report, so unknown fields are tolerated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NodeStatus {
    /// cairn version running.
    #[serde(default)]
    pub agent_version: String,
    /// OS image version booted.
    #[serde(default)]
    pub os_version: String,
    /// Boot slot in use (`a` or `b`), when the appliance has an A/B disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booted_slot: Option<String>,
    /// Seconds since boot.
    #[serde(default)]
    pub uptime_seconds: u64,
    /// One-minute load average.
    #[serde(default)]
    pub load1: f64,
    /// Named conditions (`NetworkApplied`, `Registered`, `KubeletActive`, ...).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Monotonic counters (queued reports dropped, reconnects, ...).
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    /// The underlay address this appliance terminates VXLAN on, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_address: Option<String>,
    /// The state of the last upgrade order, once the node has received one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeReport>,
    /// What the node did with the latest rendered configuration it received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<ConfigReport>,
    /// The path this appliance reaches the hub by, so that the hub can refuse a netplan
    /// change that would cut it (docs/hub.md "Guard rail").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_link: Option<HubLink>,
    /// When the node took this snapshot.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub observed_at: OffsetDateTime,
}

/// The interface, source address and gateway an appliance's packets to the hub leave by, as
/// its kernel routes them. A report: unknown fields tolerated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HubLink {
    /// The interface, e.g. `eth0`.
    pub interface: String,
    /// The source address on it, e.g. `192.0.2.10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The next hop, when the hub is not on the link itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// One condition of an appliance, in the Kubernetes style.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Condition {
    /// Condition name, e.g. `KubeletActive`.
    pub kind: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// Short machine-readable reason, e.g. `UnitFailed`.
    #[serde(default)]
    pub reason: String,
    /// Human-readable explanation.
    #[serde(default)]
    pub message: String,
}

/// Whether a [`Condition`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "PascalCase")]
pub enum ConditionStatus {
    /// It holds.
    True,
    /// It does not hold.
    False,
    /// Not known yet.
    Unknown,
}

/// What the hub wants an appliance to be. A document, so unknown fields are tolerated: a
/// newer hub may say more than an older node understands, and the node applies what it knows.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DesiredState {
    /// Increases with every change; the node applies a generation once, idempotently.
    pub generation: u64,
    /// How often the node should heartbeat, in seconds.
    #[serde(default = "default_heartbeat_interval")]
    pub heartbeat_interval_seconds: u32,
    /// The OS upgrade the appliance should carry out, when a campaign includes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeOrder>,
    /// How to join a hosted control plane, when assigned to one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<JoinBundle>,
    /// VPC overlays this appliance belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayDocument>,
    /// The fleet configuration its layers render to, when any layer applies to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<RenderedConfig>,
}

fn default_heartbeat_interval() -> u32 {
    30
}

/// Everything a kubelet needs to bootstrap into a hosted control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct JoinBundle {
    /// Control plane name on the hub.
    pub control_plane: String,
    /// API server URL, `https://...`.
    pub api_server_url: String,
    /// The API server's CA bundle, PEM.
    pub ca_bundle_pem: String,
    /// Bootstrap token `<id>.<secret>`.
    pub bootstrap_token: String,
    /// Increases whenever the kubelet configuration must be rewritten.
    #[serde(default)]
    pub revision: u64,
}
