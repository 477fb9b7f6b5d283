//! The guard rail (docs/hub.md "Guard rail"): a netplan patch that would remove the
//! interface, address or route an appliance reaches the hub by is refused unless forced.
//!
//! The hub sees only the merged patch, not the node's own netplan files, so it judges only
//! what the patch says: an interface the patch defined and no longer does, an `addresses`
//! list (with DHCP off) that leaves out the hub-link address,
//! or a `routes`/`gateway4`/`gateway6` setting (with DHCP off) that leaves out the hub-link
//! gateway. Each cut names the key's file and line. A cut the patch already made before this
//! change is not this change's doing (the appliance reported the link through it), so only
//! new cuts count.

use std::net::IpAddr;

use cairn_api::HubLink;
use cairn_netplan::yaml::{Mark, Node, Value};

/// The netplan sections whose entries are interfaces.
const SECTIONS: [&str; 7] = [
    "ethernets",
    "bonds",
    "bridges",
    "vlans",
    "wifis",
    "tunnels",
    "vrfs",
];

/// One way a patch cuts the hub link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cut {
    /// What it removes, e.g. `address 192.0.2.10 of eth0`.
    pub(crate) what: String,
    /// The key that does it (for a removed interface: where it was defined).
    pub(crate) mark: Mark,
}

/// The cuts `after` makes to `link` that `before` did not (both merged netplan patches,
/// `netplan:` values as the layers wrote them).
pub(crate) fn new_cuts(link: &HubLink, before: Option<&Node>, after: Option<&Node>) -> Vec<Cut> {
    let old = cuts(link, before, None);
    let mut out = cuts(link, after, before);
    out.retain(|c| !old.iter().any(|o| o.what == c.what));
    out
}

/// The cuts `patch` makes to `link`; `previous` is the patch it replaces, for an interface
/// it no longer defines.
fn cuts(link: &HubLink, patch: Option<&Node>, previous: Option<&Node>) -> Vec<Cut> {
    let iface = link.interface.as_str();
    let Some(config) = patch.and_then(|p| interface(p, iface)) else {
        return previous
            .and_then(|p| interface(p, iface))
            .map(|was| Cut {
                what: format!("interface {iface} (the patch no longer defines it)"),
                mark: was.mark.clone(),
            })
            .into_iter()
            .collect();
    };
    let mut out = Vec::new();
    let address = link
        .address
        .as_deref()
        .and_then(|a| a.parse::<IpAddr>().ok());
    if let (Some(ip), Some(list)) = (address, get(config, "addresses"))
        && !dhcp(config, ip)
        && !seq(list).any(|n| {
            scalar(n)
                .and_then(|s| s.split('/').next())
                .and_then(|s| s.parse::<IpAddr>().ok())
                == Some(ip)
        })
    {
        out.push(Cut {
            what: format!("address {ip} of {iface}"),
            mark: list.mark.clone(),
        });
    }
    let gateway = link
        .gateway
        .as_deref()
        .and_then(|g| g.parse::<IpAddr>().ok());
    if let Some(gw) = gateway
        && !dhcp(config, gw)
    {
        let legacy = if gw.is_ipv4() { "gateway4" } else { "gateway6" };
        let routes = get(config, "routes");
        let old_style = get(config, legacy);
        let kept = routes
            .is_some_and(|r| seq(r).any(|route| get(route, "via").and_then(scalar_ip) == Some(gw)))
            || old_style.and_then(scalar_ip) == Some(gw);
        if let Some(at) = routes.or(old_style).filter(|_| !kept) {
            out.push(Cut {
                what: format!("the route via {gw} on {iface}"),
                mark: at.mark.clone(),
            });
        }
    }
    out
}

/// The patch's settings of interface `name`, in whichever section.
fn interface<'n>(patch: &'n Node, name: &str) -> Option<&'n Node> {
    let network = get(patch, "network")?;
    SECTIONS
        .iter()
        .find_map(|s| get(network, s).and_then(|sec| get(sec, name)))
}

/// Whether the interface takes addresses of `ip`'s family by DHCP (then the lease, not the
/// patch, decides the address and the default route).
fn dhcp(config: &Node, ip: IpAddr) -> bool {
    let key = if ip.is_ipv4() { "dhcp4" } else { "dhcp6" };
    get(config, key)
        .and_then(scalar)
        .is_some_and(|v| matches!(v, "true" | "yes" | "on"))
}

fn get<'n>(node: &'n Node, key: &str) -> Option<&'n Node> {
    match &node.value {
        Value::Map(entries) => entries.iter().find(|(k, _, _)| k == key).map(|e| &e.2),
        _ => None,
    }
}

fn seq(node: &Node) -> impl Iterator<Item = &Node> {
    match &node.value {
        Value::Seq(items) => items.as_slice(),
        _ => &[],
    }
    .iter()
}

fn scalar(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text),
        _ => None,
    }
}

fn scalar_ip(node: &Node) -> Option<IpAddr> {
    scalar(node)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn patch(text: &str) -> Node {
        cairn_netplan::yaml::parse(Path::new("layer.yaml"), text).unwrap()
    }

    fn link(gateway: Option<&str>) -> HubLink {
        HubLink {
            interface: "eth0".into(),
            address: Some("192.0.2.10".into()),
            gateway: gateway.map(Into::into),
        }
    }

    const BEFORE: &str = "network:\n  ethernets:\n    eth0:\n      addresses: [192.0.2.10/24]\n      routes:\n        - {to: default, via: 192.0.2.1}\n";

    #[test]
    fn cuts_are_found_with_their_line_and_only_when_new() {
        let before = patch(BEFORE);
        type Case<'a> = (&'a str, Option<&'a str>, &'a [&'a str], usize);
        let table: &[Case] = &[
            // (after, gateway, cuts, line of the first)
            (BEFORE, Some("192.0.2.1"), &[], 0),
            (
                "network:\n  ethernets:\n    eth0:\n      mtu: 9000\n",
                None,
                &[],
                0,
            ),
            (
                "network:\n  ethernets:\n    eth0:\n      addresses: [192.0.2.99/24]\n      routes:\n        - {to: default, via: 192.0.2.1}\n",
                Some("192.0.2.1"),
                &["address 192.0.2.10 of eth0"],
                4,
            ),
            (
                "network:\n  ethernets:\n    eth0:\n      addresses: [192.0.2.99/24]\n      dhcp4: true\n",
                Some("192.0.2.1"),
                &[],
                0,
            ),
            (
                "network:\n  ethernets:\n    eth0:\n      addresses: [192.0.2.10/24]\n      routes:\n        - {to: default, via: 192.0.2.254}\n",
                Some("192.0.2.1"),
                &["the route via 192.0.2.1 on eth0"],
                6,
            ),
            (
                "network:\n  ethernets:\n    eth0:\n      addresses: [192.0.2.10/24]\n      routes:\n        - {to: default, via: 192.0.2.254}\n",
                None,
                &[],
                0,
            ),
            (
                "network:\n  ethernets:\n    eth1:\n      dhcp4: true\n",
                None,
                &["interface eth0 (the patch no longer defines it)"],
                4,
            ),
        ];
        for (after, gateway, want, line) in table {
            let got = new_cuts(&link(*gateway), Some(&before), Some(&patch(after)));
            let whats: Vec<&str> = got.iter().map(|c| c.what.as_str()).collect();
            assert_eq!(&whats, want, "{after}");
            if let Some(first) = got.first() {
                assert_eq!(first.mark.line, *line, "{after}");
            }
        }
        // A cut already in force is not this change's.
        let cut = patch("network:\n  ethernets:\n    eth0:\n      addresses: [192.0.2.99/24]\n");
        assert!(new_cuts(&link(None), Some(&cut), Some(&cut)).is_empty());
        // No patch before or after: nothing to judge.
        assert!(new_cuts(&link(None), None, None).is_empty());
    }
}
