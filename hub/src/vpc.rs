//! Pure VPC arithmetic: subnets, VNI allocation, one appliance's view of a VPC.

use std::net::Ipv4Addr;

use cairn_api::VpcMembership;

use crate::model::Vpc;

/// Lowest VNI the hub hands out; lower ones are left for manual use.
pub const FIRST_VNI: u32 = 4096;
/// Highest VXLAN VNI (24 bits).
pub const LAST_VNI: u32 = (1 << 24) - 1;
/// VRF routing tables are `VRF_TABLE_BASE + vni`: unique per VPC, clear of the kernel's
/// reserved tables (253-255) and of small tables operators use by hand.
pub const VRF_TABLE_BASE: u32 = 100_000;

/// Parses `a.b.c.d/len` (IPv4, network address, length 8-30).
pub fn parse_subnet(subnet: &str) -> Result<(Ipv4Addr, u8), String> {
    let bad = |why: &str| format!("subnet {subnet:?}: {why}");
    let (addr, len) = subnet
        .split_once('/')
        .ok_or_else(|| bad("expected a.b.c.d/len"))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
    let len: u8 = len
        .parse()
        .map_err(|_| bad("prefix length is not a number"))?;
    if !(8..=30).contains(&len) {
        return Err(bad("prefix length must be 8-30"));
    }
    let mask = u32::MAX << (32 - len);
    if u32::from(addr) & !mask != 0 {
        return Err(bad("host bits are set; give the network address"));
    }
    Ok((addr, len))
}

/// The smallest free VNI.
pub fn next_vni(taken: &[u32]) -> Option<u32> {
    let mut taken: Vec<u32> = taken.iter().copied().filter(|v| *v >= FIRST_VNI).collect();
    taken.sort_unstable();
    let mut candidate = FIRST_VNI;
    for t in taken {
        if t == candidate {
            candidate += 1;
        } else if t > candidate {
            break;
        }
    }
    (candidate <= LAST_VNI).then_some(candidate)
}

/// One appliance's view of `vpc`, with its peers' VTEP addresses.
pub fn membership(vpc: &Vpc, peer_vteps: Vec<String>) -> VpcMembership {
    let gateway = match parse_subnet(&vpc.subnet) {
        Ok((net, len)) => format!("{}/{len}", Ipv4Addr::from(u32::from(net) + 1)),
        Err(_) => String::new(),
    };
    VpcMembership {
        name: vpc.name.clone(),
        vni: vpc.vni,
        vrf_table: VRF_TABLE_BASE + vpc.vni,
        subnet: vpc.subnet.clone(),
        gateway,
        peer_vteps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_validated() {
        assert_eq!(parse_subnet("10.20.0.0/16").unwrap().1, 16);
        for bad in [
            "10.20.0.1/16",
            "10.20.0.0",
            "10.20.0.0/31",
            "x/24",
            "10.0.0.0/abc",
        ] {
            assert!(parse_subnet(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn vnis_fill_gaps_then_grow() {
        assert_eq!(next_vni(&[]), Some(FIRST_VNI));
        assert_eq!(next_vni(&[4096, 4097, 4099]), Some(4098));
        assert_eq!(next_vni(&[4097, 4096]), Some(4098));
        assert_eq!(next_vni(&[7]), Some(FIRST_VNI));
    }

    #[test]
    fn gateway_is_the_first_host() {
        let vpc = Vpc {
            name: "blue".into(),
            subnet: "10.1.2.0/24".into(),
            vni: 4100,
            members: Default::default(),
            tenant: crate::model::DEFAULT_TENANT.into(),
        };
        let m = membership(&vpc, vec!["192.0.2.1".into()]);
        assert_eq!(m.gateway, "10.1.2.1/24");
        assert_eq!(m.vrf_table, 104_100);
    }
}
