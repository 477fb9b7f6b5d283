//! Wire types of cairn's `/v1` API, shared by `cairn-hub`, `cairn-node` and the installer.
//!
//! This crate owns the shape of every message that crosses a process boundary between cairn
//! components: appliance identity, hardware inventory, registration, heartbeats (status up,
//! desired state down, both with generation numbers), VPC overlay documents, install progress
//! events, and OS upgrade orders and reports. It must not do I/O, hold state or depend on any
//! other cairn crate: the hub, the node daemon and the installer meet here and nowhere else.
//!
//! # Unknown fields
//! Two rules, chosen by what an ignored field would cost:
//! - **Commands** (a request that asks the receiver to do something: [`RegistrationRequest`],
//!   [`InstallProgress`]) reject unknown fields. If a newer sender adds a field an older
//!   receiver does not know, silently dropping it would change what was asked for; the sender
//!   must hear that it was not understood.
//! - **Reports and documents** ([`NodeStatus`], [`DesiredState`], [`HardwareInventory`],
//!   [`OverlayDocument`], [`UpgradeOrder`], [`UpgradeReport`], responses) tolerate unknown fields. Either end of a hub–node link can
//!   be the newer one during a rolling upgrade, and ignoring an extra report field is harmless.
//!
//! [`node_config`] is the schema of the node's configuration files, shared by cairn-node and
//! every program that writes them; unknown keys there are refused (a typo must not be
//! ignored in a file an operator wrote).
//!
//! [`version`] is the one version order (releases and firmware) every crate compares with.
//!
//! The `cli` feature adds [`cli`], the logging and exit-code conventions shared by the cairn
//! binaries; the wire types never depend on it.

mod config;
mod heartbeat;
pub mod hub;
mod identity;
mod install;
mod inventory;
mod overlay;
mod registration;
mod upgrade;

pub mod node_config;
pub mod version;

#[cfg(feature = "cli")]
pub mod cli;

pub use config::{
    ConfigOutcome, ConfigReport, DiffEntry, LayerDocument, LayerRef, RenderedConfig, diff, merge,
};
pub use heartbeat::{
    Condition, ConditionStatus, DesiredState, Heartbeat, HeartbeatResponse, HubLink, JoinBundle,
    NodeStatus,
};
pub use identity::{ApplianceId, CertFingerprint, InvalidApplianceId, InvalidFingerprint};
pub use install::{InstallProgress, InstallStep};
pub use inventory::{Cpu, Disk, HardwareInventory, Nic};
pub use overlay::{OverlayDocument, VpcMembership};
pub use registration::{RegistrationRequest, RegistrationResponse};
pub use upgrade::{MaintenanceWindow, UpgradeOrder, UpgradePhase, UpgradeReport};

/// An error with its causes, "outer: inner: root", for messages and logs that must say why.
/// A cause whose text the message already holds (a `transparent` wrapper) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The API version every path is served under (`/v1/...`).
pub const API_VERSION: &str = "v1";

/// The JSON schema of an RFC 3339 timestamp: the wire form of every `OffsetDateTime` here
/// (`#[schemars(with = "crate::Rfc3339")]` beside `#[serde(with = "time::serde::rfc3339")]`).
pub(crate) struct Rfc3339;

impl schemars::JsonSchema for Rfc3339 {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rfc3339".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "format": "date-time"})
    }
}

#[cfg(test)]
mod tests;
