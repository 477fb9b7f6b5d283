//! Records the hub keeps in its store, and the keys they live under. JSON-encoded, so an
//! operator can read them with `etcdctl get` and a newer hub can add fields.

use std::collections::{BTreeMap, BTreeSet};

use cairn_api::{ApplianceId, DesiredState, HardwareInventory, JoinBundle, NodeStatus};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Key prefixes.
pub mod keys {
    /// `appliances/<id>` -> [`super::Appliance`].
    pub const APPLIANCES: &str = "appliances/";
    /// `status/<id>` -> [`super::Status`]: written by every heartbeat, kept apart from the
    /// appliance record so operators' changes never race the heartbeat stream.
    pub const STATUS: &str = "status/";
    /// `hardware/<sha256(serial, macs)>` -> appliance ID.
    pub const HARDWARE: &str = "hardware/";
    /// `enrollment-tokens/<id>` -> [`super::EnrollmentToken`].
    pub const ENROLLMENT_TOKENS: &str = "enrollment-tokens/";
    /// `operator-tokens/<id>` -> [`super::OperatorToken`].
    pub const OPERATOR_TOKENS: &str = "operator-tokens/";
    /// `audit/<nanos>-<rand>` -> [`super::AuditEntry`].
    pub const AUDIT: &str = "audit/";
    /// `events/<nanos>-<rand>` -> [`super::Event`].
    pub const EVENTS: &str = "events/";
    /// `vpcs/<name>` -> [`super::Vpc`].
    pub const VPCS: &str = "vpcs/";
    /// `vnis/<vni>` -> VPC name: makes VNI allocation unique under concurrency.
    pub const VNIS: &str = "vnis/";
    /// `control-planes/<name>` -> [`super::ControlPlane`].
    pub const CONTROL_PLANES: &str = "control-planes/";
}

/// An operator's role; each includes the ones before it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything in scope.
    Viewer,
    /// Also changes appliances, enrollment tokens, VPCs, assignments.
    Operator,
    /// Also manages operator tokens and control planes.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        })
    }
}

/// An operator bearer token, stored by ID with only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorToken {
    /// Public part of the token.
    pub id: String,
    /// Who it is for.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The only site it sees, when scoped.
    pub site: Option<String>,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
}

/// An enrollment token, stored by ID with only the hash of its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentToken {
    /// Public part of the token.
    pub id: String,
    /// Site appliances enrolled with it join.
    pub site: String,
    /// Labels given to appliances enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// How many registrations it allows.
    pub max_uses: u32,
    /// How many it was used for.
    pub uses: u32,
    /// End of validity.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// Revoked by an operator.
    pub revoked: bool,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
}

/// One appliance in the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Appliance {
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
    /// The certificate it replaced, still accepted until the appliance uses the new one, so
    /// an answer lost in transit does not lock the appliance out.
    pub previous_cert_sha256: Option<String>,
    /// End of the current certificate's validity.
    #[serde(with = "time::serde::rfc3339")]
    pub cert_not_after: OffsetDateTime,
    /// First registration.
    #[serde(with = "time::serde::rfc3339")]
    pub registered_at: OffsetDateTime,
    /// Re-registrations of the same hardware (re-keys).
    pub rekeys: u32,
    /// VTEP address from its latest heartbeat that carried one.
    pub vtep_address: Option<String>,
    /// VPCs it is attached to.
    pub vpcs: BTreeSet<String>,
    /// Control plane it is assigned to.
    pub control_plane: Option<String>,
    /// Join bundle minted for it in that control plane.
    pub join: Option<JoinBundle>,
    /// Desired state, with its generation.
    pub desired: DesiredState,
}

/// What the latest heartbeat said; written on every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// When the hub received it.
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

/// An audit record: who did what, when, from where, with what result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// `operator:<name>`, `appliance:<id>`, or `anonymous`.
    pub actor: String,
    /// What, e.g. `token.create`, `appliance.register`.
    pub action: String,
    /// On what.
    pub target: String,
    /// From where (peer address).
    pub source: String,
    /// `ok`, or `refused: <reason>`.
    pub result: String,
    /// Site concerned, when there is one (scoped tokens see only theirs).
    pub site: Option<String>,
}

/// A fleet event: appliance state transitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The appliance.
    pub appliance: ApplianceId,
    /// Its site.
    pub site: String,
    /// `online`, `offline`, `registered`, `rekeyed`.
    pub kind: String,
    /// Detail for people.
    pub message: String,
    /// Which hub process recorded it.
    pub hub: String,
}

/// A VPC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vpc {
    /// Unique name.
    pub name: String,
    /// IPv4 subnet, CIDR.
    pub subnet: String,
    /// VXLAN network identifier, unique in the fleet.
    pub vni: u32,
    /// Attached appliances.
    pub members: BTreeSet<ApplianceId>,
}

/// A hosted Kubernetes control plane appliances join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlPlane {
    /// Unique name.
    pub name: String,
    /// API server URL.
    pub api_server_url: String,
    /// API server CA bundle, PEM.
    pub ca_bundle_pem: String,
    /// Where the hub finds credentials to call the API server: a path to a bearer token
    /// file on the hub's machine (never the token itself).
    pub credentials_ref: String,
    /// Appliances of this site are assigned (when set).
    pub site: Option<String>,
    /// Appliances with all these labels are assigned (when non-empty).
    pub labels: BTreeMap<String, String>,
}
