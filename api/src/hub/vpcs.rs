use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::ApplianceId;

/// `POST /v1/vpcs` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVpc {
    /// Unique name.
    pub name: String,
    /// IPv4 subnet, CIDR.
    pub subnet: String,
    /// Owner; `None`: the caller's tenant (`default` for a fleet-wide token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
}

/// `POST /v1/vpcs/{name}/attach|detach` body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MembershipRequest {
    /// The appliance.
    pub appliance_id: String,
}

/// A VPC as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VpcView {
    /// Unique name.
    pub name: String,
    /// IPv4 subnet, CIDR.
    pub subnet: String,
    /// VXLAN network identifier, unique in the fleet.
    pub vni: u32,
    /// Attached appliances (those in the caller's scope).
    pub members: BTreeSet<ApplianceId>,
    /// Owner: only its appliances attach.
    #[serde(default)]
    pub tenant: String,
}
