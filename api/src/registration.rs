use serde::{Deserialize, Serialize};

use crate::{ApplianceId, DesiredState, HardwareInventory};

/// `POST /v1/registrations`: an appliance asks to join the fleet. A command, so unknown fields
/// are rejected (see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistrationRequest {
    /// The enrollment token, in clear; the hub stores only its hash.
    pub token: String,
    /// PKCS#10 certificate signing request, PEM. The key was generated on the appliance and
    /// never leaves it.
    pub csr_pem: String,
    /// Hostname the appliance was configured with.
    pub hostname: String,
    /// What the appliance found in itself.
    pub inventory: HardwareInventory,
    /// cairn version the appliance runs.
    pub agent_version: String,
}

/// The hub's answer to a successful registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RegistrationResponse {
    /// The identity assigned (or kept, for hardware the hub already knows).
    pub appliance_id: ApplianceId,
    /// Site the enrollment token belongs to.
    pub site: String,
    /// Client certificate, PEM; CN is the appliance ID.
    pub certificate_pem: String,
    /// CA bundle the appliance uses to verify the hub, PEM.
    pub ca_bundle_pem: String,
    /// First desired state.
    pub desired: DesiredState,
}
