//! VPC overlays: an [`OverlayDocument`] realised as, per VPC, a VRF, a bridge in it carrying
//! the gateway address, and a VXLAN port on the bridge with learning off and one all-zero FDB
//! entry per peer VTEP (head-end replication: broadcast and unknown unicast go to each peer).
//!
//! Device names derive from the VNI (`vrf<vni>`, `br<vni>`, `vx<vni>`: at most 11 characters,
//! within the kernel's 15) so they are stable when a VPC is renamed. Overlay links are tracked
//! in their own ownership file, apart from the netplan configuration's, so applying one never
//! deletes the other's links.
//!
//! The overlay's MTU is 1500; VXLAN over IPv4 adds 50 bytes, so the underlay link holding the
//! local VTEP address must have an MTU of at least 1550, or the overlay is refused (a silently
//! fragmenting or black-holing overlay is worse than none).

use std::collections::BTreeSet;
use std::net::IpAddr;

use cairn_api::OverlayDocument;

use crate::apply::{ApplyError, Target};
use crate::plan::Wanted;
use crate::schema::IpNet;
use crate::state::Kernel;
use crate::state::{LinkKind, LinkState};

/// MTU inside the overlay.
pub const OVERLAY_MTU: u32 = 1500;
/// Bytes VXLAN adds over IPv4 (outer Ethernet 14 + IPv4 20 + UDP 8 + VXLAN 8).
pub const VXLAN_OVERHEAD: u32 = 50;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;

/// A validated overlay document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    local: IpAddr,
    vpcs: Vec<Vpc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Vpc {
    vni: u32,
    table: u32,
    gateway: IpNet,
    peers: BTreeSet<IpAddr>,
}

fn invalid(msg: String) -> ApplyError {
    ApplyError::Unrealisable(msg)
}

impl Overlay {
    /// Validates a document: addresses parse, VNIs and tables are unique and in range, the
    /// gateway lies in the subnet.
    pub fn new(doc: &OverlayDocument) -> Result<Self, ApplyError> {
        let local: IpAddr = doc.local_vtep.parse().map_err(|_| {
            invalid(format!(
                "local_vtep {:?} is not an IP address",
                doc.local_vtep
            ))
        })?;
        let mut vnis = BTreeSet::new();
        let mut tables = BTreeSet::new();
        let mut vpcs = Vec::new();
        for (i, v) in doc.vpcs.iter().enumerate() {
            let at = format!("vpcs[{i}] ({})", v.name);
            if !(1..=16_777_215).contains(&v.vni) {
                return Err(invalid(format!(
                    "{at}: vni {} is outside 1..16777215",
                    v.vni
                )));
            }
            if !vnis.insert(v.vni) {
                return Err(invalid(format!("{at}: vni {} is used twice", v.vni)));
            }
            if matches!(v.vrf_table, 0 | 253..=255) || !tables.insert(v.vrf_table) {
                return Err(invalid(format!(
                    "{at}: vrf_table {} is reserved or used twice",
                    v.vrf_table
                )));
            }
            let subnet: IpNet = v
                .subnet
                .parse()
                .map_err(|e| invalid(format!("{at}: subnet: {e}")))?;
            let gateway: IpNet = v
                .gateway
                .parse()
                .map_err(|e| invalid(format!("{at}: gateway: {e}")))?;
            if !subnet.contains(gateway.addr) || gateway.prefix != subnet.prefix {
                return Err(invalid(format!(
                    "{at}: gateway {gateway} is not an address of subnet {subnet}"
                )));
            }
            let mut peers = BTreeSet::new();
            for p in &v.peer_vteps {
                let ip: IpAddr = p.parse().map_err(|_| {
                    invalid(format!("{at}: peer_vteps: {p:?} is not an IP address"))
                })?;
                if ip != local {
                    peers.insert(ip);
                }
            }
            vpcs.push(Vpc {
                vni: v.vni,
                table: v.vrf_table,
                gateway,
                peers,
            });
        }
        Ok(Self { local, vpcs })
    }
}

impl Target for Overlay {
    fn wanted(&self, kernel: &Kernel) -> Result<Wanted, ApplyError> {
        let mut want = Wanted::default();
        if self.vpcs.is_empty() {
            return Ok(want);
        }
        let underlay = kernel
            .addresses
            .iter()
            .find(|(_, addrs)| addrs.iter().any(|(a, _)| *a == self.local))
            .and_then(|(index, _)| kernel.links.iter().find(|l| l.index == *index))
            .ok_or_else(|| {
                invalid(format!(
                    "local VTEP address {} is not configured on any link",
                    self.local
                ))
            })?;
        if underlay.mtu < OVERLAY_MTU + VXLAN_OVERHEAD {
            return Err(invalid(format!(
                "underlay {} has MTU {}, too small for VXLAN: needs at least {} ({OVERLAY_MTU} + {VXLAN_OVERHEAD} bytes of encapsulation)",
                underlay.name,
                underlay.mtu,
                OVERLAY_MTU + VXLAN_OVERHEAD
            )));
        }
        for v in &self.vpcs {
            let (vrf, br, vx) = names(v.vni);
            let link = |kind, controller: Option<&str>| LinkState {
                kind,
                mtu: None,
                mac: None,
                up: true,
                controller: controller.map(str::to_string),
                addresses: BTreeSet::new(),
                routes: BTreeSet::new(),
                fdb: BTreeSet::new(),
                dhcp4: false,
            };
            want.state.links.insert(
                vrf.clone(),
                Some(link(LinkKind::Vrf { table: v.table }, None)),
            );
            let mut bridge = link(
                LinkKind::Bridge {
                    stp: false,
                    forward_delay: None,
                    priority: None,
                },
                Some(&vrf),
            );
            bridge.mtu = Some(OVERLAY_MTU);
            bridge.addresses.insert((v.gateway.addr, v.gateway.prefix));
            want.state.links.insert(br.clone(), Some(bridge));
            let mut tunnel = link(
                LinkKind::Vxlan {
                    vni: v.vni,
                    local: Some(self.local),
                    remote: None,
                    port: VXLAN_PORT,
                    learning: false,
                },
                Some(&br),
            );
            tunnel.mtu = Some(OVERLAY_MTU);
            tunnel.fdb = v.peers.clone();
            want.state.links.insert(vx, Some(tunnel));
        }
        Ok(want)
    }
}

/// The VRF, bridge and VXLAN device names of a VNI.
pub fn names(vni: u32) -> (String, String, String) {
    (format!("vrf{vni}"), format!("br{vni}"), format!("vx{vni}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Op, plan};
    use crate::state::KernelLink;
    use cairn_api::VpcMembership;

    fn doc(peers: &[&str]) -> OverlayDocument {
        OverlayDocument {
            local_vtep: "192.168.50.1".into(),
            vpcs: vec![VpcMembership {
                name: "blue".into(),
                vni: 100,
                vrf_table: 1100,
                subnet: "10.100.0.0/24".into(),
                gateway: "10.100.0.1/24".into(),
                peer_vteps: peers.iter().map(|p| p.to_string()).collect(),
            }],
        }
    }

    fn kernel(mtu: u32) -> Kernel {
        let mut k = Kernel::default();
        k.links.push(KernelLink {
            index: 2,
            name: "u0".into(),
            kind: LinkKind::Existing,
            kind_name: "veth".into(),
            mtu,
            mac: "02:00:00:00:00:02".into(),
            up: true,
            controller: None,
            driver: None,
        });
        k.addresses
            .insert(2, vec![("192.168.50.1".parse().unwrap(), 24)]);
        k
    }

    #[test]
    fn realises_vrf_bridge_vxlan_with_one_fdb_entry_per_peer() {
        let o = Overlay::new(&doc(&["192.168.50.1", "192.168.50.2", "192.168.50.3"])).unwrap();
        let w = o.wanted(&kernel(1550)).unwrap();
        let ops = plan(&w, &kernel(1550), &Default::default());
        let text: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
        for expect in [
            "create vrf vrf100",
            "create bridge br100",
            "create vxlan vx100",
            "set br100 master vrf100",
            "set vx100 master br100",
            "add address 10.100.0.1/24 to br100",
            "add fdb 00:00:00:00:00:00 dst 192.168.50.2 dev vx100",
            "add fdb 00:00:00:00:00:00 dst 192.168.50.3 dev vx100",
        ] {
            assert!(
                text.iter().any(|t| t == expect),
                "{expect} missing: {text:#?}"
            );
        }
        assert!(
            !text.iter().any(|t| t.contains("dst 192.168.50.1")),
            "no entry for ourselves"
        );
        assert!(ops.iter().any(|o| matches!(
            o,
            Op::AddLink {
                kind: LinkKind::Vxlan {
                    learning: false,
                    ..
                },
                ..
            }
        )));
    }

    #[test]
    fn small_underlay_mtu_is_a_clear_error() {
        let o = Overlay::new(&doc(&["192.168.50.2"])).unwrap();
        let e = o.wanted(&kernel(1500)).unwrap_err().to_string();
        assert_eq!(
            e,
            "underlay u0 has MTU 1500, too small for VXLAN: needs at least 1550 (1500 + 50 bytes of encapsulation)"
        );
    }

    #[test]
    fn bad_documents_are_refused() {
        let mut d = doc(&[]);
        d.vpcs[0].gateway = "10.200.0.1/24".into();
        assert!(
            Overlay::new(&d)
                .unwrap_err()
                .to_string()
                .contains("not an address of subnet")
        );
        let mut d = doc(&[]);
        d.vpcs.push(d.vpcs[0].clone());
        assert!(
            Overlay::new(&d)
                .unwrap_err()
                .to_string()
                .contains("used twice")
        );
        let mut d = doc(&["nope"]);
        d.local_vtep = "192.168.50.1".into();
        assert!(
            Overlay::new(&d)
                .unwrap_err()
                .to_string()
                .contains("peer_vteps")
        );
    }
}
