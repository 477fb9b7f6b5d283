//! The path to the hub the node reports in each heartbeat ([`cairn_api::HubLink`]), so that
//! the hub can refuse a netplan change that would cut it (docs/hub.md "Guard rail").
//!
//! The source address is the kernel's choice for a UDP socket connected to the hub (no
//! packet is sent); the interface and gateway are the main routing table's best match in
//! `/proc/net/route` or `/proc/net/ipv6_route`: longest prefix, then lowest metric. Policy
//! routing rules are not followed: the hub then judges the main table's path. These are
//! read from the real `/proc`, not the `--proc-root` inventory fixture: routes are the live
//! state of the node's network namespace, not hardware.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use cairn_api::HubLink;

/// `RTF_UP`: the route is usable.
const RTF_UP: u32 = 0x1;
/// `RTF_REJECT`: an unreachable route, not a path.
const RTF_REJECT: u32 = 0x200;

/// The hub link to the hub at `url`, as this host routes it now; `None` when the hub's name
/// does not resolve or no route matches.
pub async fn discover(url: &str) -> Option<HubLink> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let host = parsed.host_str()?.trim_matches(['[', ']']).to_owned();
    let port = parsed.port_or_known_default()?;
    let hub = tokio::net::lookup_host((host.as_str(), port))
        .await
        .ok()?
        .next()?;
    let address = source_address(hub).await;
    if hub.ip().is_loopback() {
        return Some(HubLink {
            interface: "lo".into(),
            address: address.map(|a| a.to_string()),
            gateway: None,
        });
    }
    let table = match hub.ip() {
        IpAddr::V4(_) => std::fs::read_to_string("/proc/net/route"),
        IpAddr::V6(_) => std::fs::read_to_string("/proc/net/ipv6_route"),
    }
    .ok()?;
    let (interface, gateway) = route_for(&table, hub.ip())?;
    Some(HubLink {
        interface,
        address: address.map(|a| a.to_string()),
        gateway: gateway.map(|g| g.to_string()),
    })
}

/// The address the kernel would send from to `hub`.
async fn source_address(hub: SocketAddr) -> Option<IpAddr> {
    let any: SocketAddr = match hub {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = tokio::net::UdpSocket::bind(any).await.ok()?;
    socket.connect(hub).await.ok()?;
    Some(socket.local_addr().ok()?.ip())
}

/// One usable route: destination, prefix length, gateway, metric, interface.
struct Route {
    dest: IpAddr,
    prefix: u8,
    gateway: Option<IpAddr>,
    metric: u32,
    interface: String,
}

/// The interface and gateway of the best route to `ip` in a procfs routing table
/// (`net/route` for IPv4, `net/ipv6_route` for IPv6).
fn route_for(table: &str, ip: IpAddr) -> Option<(String, Option<IpAddr>)> {
    let routes = table.lines().filter_map(|line| match ip {
        IpAddr::V4(_) => route_v4(line),
        IpAddr::V6(_) => route_v6(line),
    });
    routes
        .filter(|r| contains(r.dest, r.prefix, ip))
        .min_by_key(|r| (std::cmp::Reverse(r.prefix), r.metric))
        .map(|r| (r.interface, r.gateway))
}

/// A `net/route` line: addresses are the kernel's `__be32` printed as a native integer.
fn route_v4(line: &str) -> Option<Route> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let addr = |s: &str| hex(s).map(|v| Ipv4Addr::from(v.to_ne_bytes()));
    let flags = hex(f.get(3)?)?;
    if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
        return None;
    }
    let gateway = addr(f.get(2)?)?;
    Some(Route {
        dest: addr(f.get(1)?)?.into(),
        prefix: u8::try_from(u32::from(addr(f.get(7)?)?).count_ones()).ok()?,
        gateway: (!gateway.is_unspecified()).then_some(gateway.into()),
        metric: hex(f.get(6)?)?,
        interface: (*f.first()?).to_owned(),
    })
}

/// A `net/ipv6_route` line: addresses in network order.
fn route_v6(line: &str) -> Option<Route> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let hex = |s: &str| u32::from_str_radix(s, 16).ok();
    let addr = |s: &str| u128::from_str_radix(s, 16).ok().map(Ipv6Addr::from);
    let flags = hex(f.get(8)?)?;
    if flags & RTF_UP == 0 || flags & RTF_REJECT != 0 {
        return None;
    }
    let gateway = addr(f.get(4)?)?;
    Some(Route {
        dest: addr(f.first()?)?.into(),
        prefix: u8::from_str_radix(f.get(1)?, 16).ok()?,
        gateway: (!gateway.is_unspecified()).then_some(gateway.into()),
        metric: hex(f.get(5)?)?,
        interface: (*f.get(9)?).to_owned(),
    })
}

fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Written as a little-endian kernel prints it: default via 192.0.2.1 on eth0, metric
    /// 100; 192.0.2.0/24 on eth0; 198.51.100.0/24 via 192.0.2.254 on eth1; a reject route.
    fn v4_table() -> String {
        let be = |a: Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(a.octets()));
        let row = |iface: &str, dest: &str, gw: &str, flags: u32, metric: u32, mask: &str| {
            format!(
                "{iface}\t{}\t{}\t{flags:04X}\t0\t0\t{metric}\t{}\t0\t0\t0\n",
                be(dest.parse().unwrap()),
                be(gw.parse().unwrap()),
                be(mask.parse().unwrap())
            )
        };
        [
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
                .to_owned(),
            row("eth0", "0.0.0.0", "192.0.2.1", 3, 100, "0.0.0.0"),
            row("eth2", "0.0.0.0", "192.0.2.9", 3, 200, "0.0.0.0"),
            row("eth0", "192.0.2.0", "0.0.0.0", 1, 0, "255.255.255.0"),
            row("eth1", "198.51.100.0", "192.0.2.254", 3, 0, "255.255.255.0"),
            row("lo", "203.0.113.0", "0.0.0.0", 0x201, 0, "255.255.255.0"),
        ]
        .concat()
    }

    #[test]
    fn the_best_route_names_interface_and_gateway() {
        let table = v4_table();
        // (hub address, the interface and gateway expected)
        type Case<'a> = (&'a str, Option<(&'a str, Option<&'a str>)>);
        let cases: &[Case] = &[
            ("203.0.113.7", Some(("eth0", Some("192.0.2.1")))),
            ("192.0.2.77", Some(("eth0", None))),
            ("198.51.100.5", Some(("eth1", Some("192.0.2.254")))),
        ];
        for (ip, want) in cases {
            let got = route_for(&table, ip.parse().unwrap());
            let want = want.map(|(i, g)| (i.to_owned(), g.map(|g| g.parse().unwrap())));
            assert_eq!(got, want, "{ip}");
        }
        assert_eq!(route_for("", "192.0.2.1".parse().unwrap()), None);
        let v6 = "\
20010db8000000000000000000000000 20 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000003 00000000 00000003     eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo
";
        assert_eq!(
            route_for(v6, "2001:db8::5".parse().unwrap()),
            Some(("eth0".into(), None))
        );
        assert_eq!(
            route_for(v6, "2001:db9::5".parse().unwrap()),
            Some(("eth0".into(), Some("2001:db8::1".parse().unwrap())))
        );
    }
}
