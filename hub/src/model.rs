//! Records the hub keeps in its store, and the keys they live under. JSON-encoded, so an
//! operator can read them with `etcdctl get` and a newer hub can add fields.
//!
//! Records never leave the hub as they are: answers are `cairn_api::hub` views, made in
//! [`crate::views`]. Value types that hold nothing secret (roles, selectors, campaign
//! members and states) are `cairn_api`'s own and shared by both.

use std::collections::{BTreeMap, BTreeSet};

pub use cairn_api::hub::{
    CampaignMember, CampaignState, MemberState, Pacing, Role, Selector, TokenKind,
};
use cairn_api::{
    ApplianceId, DesiredState, HardwareInventory, JoinBundle, MaintenanceWindow, NodeStatus,
};
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
    /// `event-webhooks/<sha256(url), 16 hex>` -> [`super::WebhookCursor`].
    pub const EVENT_WEBHOOKS: &str = "event-webhooks/";
    /// `vpcs/<name>` -> [`super::Vpc`].
    pub const VPCS: &str = "vpcs/";
    /// `vnis/<vni>` -> VPC name: makes VNI allocation unique under concurrency.
    pub const VNIS: &str = "vnis/";
    /// `control-planes/<name>` -> [`super::ControlPlane`].
    pub const CONTROL_PLANES: &str = "control-planes/";
    /// `bootstrap-tokens/<appliance>/<token id>` -> [`super::MintedBootstrapToken`]: written
    /// before the token is minted in the control plane, deleted once it is revoked there.
    pub const BOOTSTRAP_TOKENS: &str = "bootstrap-tokens/";
    /// `releases/<version>` -> [`super::Release`]; the bundle file itself lives in the
    /// hub's data directory, never in the store.
    pub const RELEASES: &str = "releases/";
    /// `campaigns/<name>` -> [`super::Campaign`].
    pub const CAMPAIGNS: &str = "campaigns/";
    /// `tenants/<name>` -> [`super::Tenant`]; the default tenant has no record.
    pub const TENANTS: &str = "tenants/";
    /// `sites/<name>` -> [`super::Site`]: the tenant a site belongs to. A site without a
    /// record belongs to [`super::DEFAULT_TENANT`], so deployments from before tenants
    /// keep working unchanged.
    pub const SITES: &str = "sites/";
    /// `config-layers/<kind>:<name>` -> [`super::ConfigLayer`]: a layer's current generation.
    pub const CONFIG_LAYERS: &str = "config-layers/";
    /// `config-history/<kind>:<name>/<generation, 20 digits>` -> [`super::ConfigLayer`]:
    /// every generation, written in the same transaction as the layer.
    pub const CONFIG_HISTORY: &str = "config-history/";
    /// `tunnels/<appliance>` -> [`super::TunnelHolder`]: the hub replica an appliance's
    /// tunnel is connected to, so another replica can say where it is.
    pub const TUNNELS: &str = "tunnels/";
}

/// One generation of a configuration layer (docs/hub.md "Configuration layers").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigLayer {
    /// `kind:name`.
    pub layer: String,
    /// The tenant whose operators may change it (a site's or appliance's tenant, a group's
    /// own).
    pub tenant: String,
    /// A group's label selector.
    pub selector: Option<String>,
    /// From 1, one more per accepted change.
    pub generation: u64,
    /// `operator:<name>`.
    pub author: String,
    /// When it was written.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// The YAML file as the operator wrote it.
    pub document: String,
    /// The name of that file, for messages that point into it.
    #[serde(default)]
    pub file: String,
    /// What it sets: `{"settings": ..., "netplan": ...}`, parsed and validated.
    pub value: serde_json::Value,
}

/// The tenant of every site, VPC and control plane no tenant claims.
pub const DEFAULT_TENANT: &str = "default";

fn default_tenant() -> String {
    DEFAULT_TENANT.into()
}

/// A tenant: owns sites (their appliances and tokens), VPCs and control planes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    /// Unique name.
    pub name: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
}

/// A site claimed by a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    /// Site name.
    pub name: String,
    /// Its tenant.
    pub tenant: String,
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
    /// The only site it sees, when scoped to a site.
    pub site: Option<String>,
    /// The only tenant it sees, when scoped to a tenant (for a site-scoped token: the
    /// site's tenant when the token was made, for people; the site decides).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// SHA-256 of the secret, hex.
    pub secret_sha256: String,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
    /// End of validity; `None`: until revoked.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires_at: Option<OffsetDateTime>,
    /// Revoked by an admin: refused, kept for the record.
    #[serde(default)]
    pub revoked: bool,
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
    /// Enrollment of new hardware, or the re-install of one appliance. Records of older
    /// hubs are enrollment tokens.
    #[serde(default)]
    pub kind: TokenKind,
    /// The boot MAC (lowercase) the registering inventory must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// The serial number the registering inventory must report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The appliance a re-install token re-keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appliance: Option<ApplianceId>,
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
    /// The registrations it completed, newest last (at most [`COMPLETED_KEPT`]): a
    /// registration repeating one of them with the same key, whose answer was lost on the
    /// way, gets that identity again without a second use.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub completed: Vec<CompletedRegistration>,
}

/// How many completed registrations a token record remembers: a lost answer is retried
/// within minutes, so the newest few cover every appliance still retrying while the record
/// stays small for tokens with many uses.
pub const COMPLETED_KEPT: usize = 32;

/// A registration an enrollment token completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompletedRegistration {
    /// SHA-256 of the DER public key (SubjectPublicKeyInfo) of its CSR, hex.
    pub key_sha256: String,
    /// The appliance it registered (or re-keyed).
    pub appliance: ApplianceId,
    /// SHA-256 of the certificate last issued for that key, hex: the registration is
    /// answered again only while the appliance still has that certificate (not renewed,
    /// re-keyed or deleted since).
    pub cert_sha256: String,
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
    /// VTEP address from its latest heartbeat that carried a valid one.
    pub vtep_address: Option<String>,
    /// The VTEP address its latest heartbeat reported when the hub refused it, with why:
    /// peers do not tunnel to it until the appliance reports a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_refused: Option<(String, String)>,
    /// VPCs it is attached to.
    pub vpcs: BTreeSet<String>,
    /// Control plane it is assigned to.
    pub control_plane: Option<String>,
    /// Join bundle minted for it in that control plane.
    pub join: Option<JoinBundle>,
    /// Desired state, with its generation.
    pub desired: DesiredState,
    /// Versions this appliance must never be ordered to again automatically, with why
    /// (it rolled back, was interrupted or refused the bundle). An operator clears them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quarantined: BTreeMap<String, String>,
    /// Set when the appliance came back on a version nobody ordered: campaigns leave it
    /// alone until an operator looks and clears the flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade_flag: Option<String>,
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
    /// Tenant concerned, for tenant-wide things (VPCs, control planes) that have no site.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// The hub replica holding an appliance's tunnel, since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelHolder {
    /// The replica's name (host/pid).
    pub hub: String,
    /// Its public URL, when it was given one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When the tunnel connected.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
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

/// How far an event webhook got: written by the leader after each delivery, so a restart
/// or another leader resumes after the last event the receiver accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookCursor {
    /// The receiver's origin (scheme, host, port: its path may hold a credential); the key
    /// holds a hash of the whole URL.
    pub url: String,
    /// Sequence number of the last event delivered, or of the store when the webhook was
    /// first configured (it gets the events from then on).
    pub delivered: u64,
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
    /// Owner: only its appliances join.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

/// A kubelet bootstrap token the hub minted (or was about to mint) in a control plane for
/// an appliance: what revoking it there on delete or reassignment needs. No secret: the
/// ID names the `bootstrap-token-<id>` Secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MintedBootstrapToken {
    /// The appliance it is for.
    pub appliance: ApplianceId,
    /// The control plane it lives in.
    pub control_plane: String,
    /// Its public ID.
    pub token_id: String,
    /// When the API server drops it by itself.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
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
    /// Owner: only its appliances are assigned.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

/// A signed OS release the hub can roll out. The bundle (format of `cairn-formats`) was
/// verified against the hub's trusted release keys when it was added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// Version the bundle installs (from its signed manifest).
    pub version: String,
    /// CPU architecture.
    pub architecture: String,
    /// Versions it may be installed over; empty means any.
    pub compatible_from: Vec<String>,
    /// Size of the bundle file, bytes.
    pub size_bytes: u64,
    /// SHA-256 of the bundle file, hex.
    pub sha256: String,
    /// Fingerprint of the trusted key that signed it.
    pub signing_key: String,
    /// Build time from the manifest.
    pub build_time: String,
    /// Where the hub fetched it from, when added by URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// When it was added.
    #[serde(with = "time::serde::rfc3339")]
    pub added_at: OffsetDateTime,
    /// Who added it.
    pub added_by: String,
}

/// A rollout of one release to the appliances a selector picked when it was created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Campaign {
    /// Unique name.
    pub name: String,
    /// The release version.
    pub release: String,
    /// Which appliances (evaluated at creation).
    pub selector: Selector,
    /// Canaries: batch 0, which must finish before anything else starts.
    pub canaries: u32,
    /// Batches or rolling window.
    pub pacing: Pacing,
    /// The campaign pauses itself when more members than this failed.
    pub max_failures: u32,
    /// Maintenance window handed to nodes (applied in their local time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
    /// Let nodes download and verify ahead of the window.
    pub prestage: bool,
    /// Let nodes install an older version than they run.
    pub allow_downgrade: bool,
    /// A member with no final report this long after its order counts as failed; `None`:
    /// an appliance that stays offline keeps its order pending forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_seconds: Option<u64>,
    /// Where it is.
    pub state: CampaignState,
    /// Why it is paused or aborted.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub state_reason: String,
    /// The appliances, in batch order.
    pub members: Vec<CampaignMember>,
    /// When it was made.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Who made it.
    pub created_by: String,
    /// The site its members are in, when they all share one (scoped tokens see only
    /// campaigns of their site).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

impl Campaign {
    /// Members that failed.
    pub fn failures(&self) -> usize {
        self.members
            .iter()
            .filter(|m| m.state == MemberState::Failed)
            .count()
    }
}

/// Whether a campaign's selector covers the appliance.
pub fn selects(selector: &Selector, a: &Appliance) -> bool {
    selector.to_label_selector().matches(selector_lookup(a))
}

/// What selectors see of an appliance: its labels, and its site under
/// [`cairn_api::hub::SITE_KEY`].
pub fn selector_lookup<'a>(a: &'a Appliance) -> impl Fn(&str) -> Option<&'a str> + 'a {
    move |key| {
        if key == cairn_api::hub::SITE_KEY {
            Some(a.site.as_str())
        } else {
            a.labels.get(key).map(String::as_str)
        }
    }
}
