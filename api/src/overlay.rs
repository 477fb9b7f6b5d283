use serde::{Deserialize, Serialize};

/// The VPC overlays one appliance takes part in. The hub computes one per appliance; the node
/// realises it (VRF + bridge + VXLAN per VPC) through the `netplan` crate.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OverlayDocument {
    /// This appliance's underlay address that VXLAN packets leave from.
    pub local_vtep: String,
    /// The VPCs, each with its peers.
    #[serde(default)]
    pub vpcs: Vec<VpcMembership>,
}

/// One VPC as seen from one appliance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VpcMembership {
    /// VPC name, unique in the fleet.
    pub name: String,
    /// VXLAN network identifier (24 bits), allocated by the hub.
    pub vni: u32,
    /// Routing table of the VRF the VPC lives in on this appliance.
    pub vrf_table: u32,
    /// The VPC's subnet, CIDR.
    pub subnet: String,
    /// Gateway address with prefix length, placed on the VPC bridge.
    pub gateway: String,
    /// Underlay addresses of the other members.
    #[serde(default)]
    pub peer_vteps: Vec<String>,
}
