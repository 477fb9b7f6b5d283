//! From configuration to wanted state, and from (wanted, kernel) to the minimal ordered list
//! of changes. Pure: no I/O here, so every rule is unit-tested.
//!
//! Scope: only links the configuration names, links cairn created earlier (the `owned` set
//! from its state file) and their addresses, routes and FDB entries are compared. Anything
//! else in the kernel is left alone.
//!
//! Order: remove what goes away (routes, addresses, FDB, memberships, links) before creating
//! (renames, links parents first, attributes, memberships with the member down, up, then
//! addresses, routes, rules, FDB) so a gateway's subnet exists before its route.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::schema::{Config, ConfigError, Kind, Route, Rule, glob};
use crate::state::Kernel;
use crate::state::{LinkKind, LinkState, NetState, Owned, RouteSpec, RuleSpec};

/// One netlink change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    /// Create a link.
    AddLink {
        /// Name.
        name: String,
        /// Kind.
        kind: LinkKind,
    },
    /// Delete a link.
    DelLink {
        /// Name.
        name: String,
    },
    /// Rename a link (it must be down).
    Rename {
        /// Old name.
        from: String,
        /// New name.
        to: String,
    },
    /// Set the MTU.
    SetMtu {
        /// Link.
        name: String,
        /// MTU.
        mtu: u32,
    },
    /// Set the MAC address.
    SetMac {
        /// Link.
        name: String,
        /// MAC.
        mac: String,
    },
    /// Set admin state.
    SetUp {
        /// Link.
        name: String,
        /// Up or down.
        up: bool,
    },
    /// Attach to (or detach from) a bond, bridge or VRF.
    SetController {
        /// Link.
        name: String,
        /// Controller, or none.
        controller: Option<String>,
    },
    /// Add an address.
    AddAddress {
        /// Link.
        name: String,
        /// Address.
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
    /// Remove an address.
    DelAddress {
        /// Link.
        name: String,
        /// Address.
        addr: IpAddr,
        /// Prefix length.
        prefix: u8,
    },
    /// Add a route.
    AddRoute {
        /// Output link.
        name: String,
        /// Route.
        route: RouteSpec,
    },
    /// Remove a route.
    DelRoute {
        /// Output link.
        name: String,
        /// Route.
        route: RouteSpec,
    },
    /// Add a policy rule.
    AddRule {
        /// Rule.
        rule: RuleSpec,
    },
    /// Remove a policy rule.
    DelRule {
        /// Rule.
        rule: RuleSpec,
    },
    /// Add an all-zero FDB entry (head-end replication to a VTEP).
    AddFdb {
        /// VXLAN link.
        name: String,
        /// Remote VTEP.
        dst: IpAddr,
    },
    /// Remove an all-zero FDB entry.
    DelFdb {
        /// VXLAN link.
        name: String,
        /// Remote VTEP.
        dst: IpAddr,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::AddLink { name, kind } => write!(f, "create {} {name}", kind.kernel_kind()),
            Op::DelLink { name } => write!(f, "delete link {name}"),
            Op::Rename { from, to } => write!(f, "rename {from} to {to}"),
            Op::SetMtu { name, mtu } => write!(f, "set {name} mtu {mtu}"),
            Op::SetMac { name, mac } => write!(f, "set {name} address {mac}"),
            Op::SetUp { name, up } => write!(f, "set {name} {}", if *up { "up" } else { "down" }),
            Op::SetController { name, controller } => match controller {
                Some(c) => write!(f, "set {name} master {c}"),
                None => write!(f, "set {name} nomaster"),
            },
            Op::AddAddress { name, addr, prefix } => {
                write!(f, "add address {addr}/{prefix} to {name}")
            }
            Op::DelAddress { name, addr, prefix } => {
                write!(f, "remove address {addr}/{prefix} from {name}")
            }
            Op::AddRoute { name, route } => write!(f, "add route {} dev {name}", route_text(route)),
            Op::DelRoute { name, route } => {
                write!(f, "remove route {} dev {name}", route_text(route))
            }
            Op::AddRule { rule } => write!(f, "add rule {}", rule_text(rule)),
            Op::DelRule { rule } => write!(f, "remove rule {}", rule_text(rule)),
            Op::AddFdb { name, dst } => write!(f, "add fdb 00:00:00:00:00:00 dst {dst} dev {name}"),
            Op::DelFdb { name, dst } => {
                write!(f, "remove fdb 00:00:00:00:00:00 dst {dst} dev {name}")
            }
        }
    }
}

fn route_text(r: &RouteSpec) -> String {
    let kind = match r.kind {
        6 => "blackhole ",
        7 => "unreachable ",
        8 => "prohibit ",
        _ => "",
    };
    let mut s = format!("{kind}{}/{}", r.dst, r.prefix);
    if let Some(v) = r.via {
        s.push_str(&format!(" via {v}"));
    }
    if r.table != 254 {
        s.push_str(&format!(" table {}", r.table));
    }
    if let Some(m) = r.metric {
        s.push_str(&format!(" metric {m}"));
    }
    s
}

fn rule_text(r: &RuleSpec) -> String {
    let mut s = String::new();
    if let Some((a, p)) = r.from {
        s.push_str(&format!("from {a}/{p} "));
    }
    if let Some((a, p)) = r.to {
        s.push_str(&format!("to {a}/{p} "));
    }
    if let Some(p) = r.priority {
        s.push_str(&format!("priority {p} "));
    }
    if let Some(m) = r.mark {
        s.push_str(&format!("fwmark {m} "));
    }
    s.push_str(&format!("table {}", r.table));
    s
}

/// What a configuration wants, resolved against the kernel (ethernet `match`es).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    /// The state to reach.
    pub state: NetState,
    /// Renames to perform first: kernel name → new name.
    pub renames: BTreeMap<String, String>,
}

fn route_spec(r: &Route, vrf_table: Option<u32>) -> RouteSpec {
    RouteSpec {
        dst: r.to.addr,
        prefix: r.to.prefix,
        via: r.via,
        table: r.table.or(vrf_table).unwrap_or(254),
        metric: r.metric,
        scope: match r.scope.as_deref() {
            Some("link") => 253,
            Some("host") => 254,
            Some(_) => 0,
            // The kernel's default: link scope for a device route, global with a gateway.
            None if r.via.is_none() && r.kind == "unicast" => 253,
            None => 0,
        },
        onlink: r.on_link,
        kind: match r.kind.as_str() {
            "blackhole" => 6,
            "unreachable" => 7,
            "prohibit" => 8,
            _ => 1,
        },
    }
}

fn rule_spec(r: &Rule) -> RuleSpec {
    let v6 = r.from.or(r.to).is_some_and(|n| n.addr.is_ipv6());
    RuleSpec {
        from: r.from.map(|n| (n.addr, n.prefix)),
        to: r.to.map(|n| (n.addr, n.prefix)),
        table: r.table,
        priority: r.priority,
        mark: r.mark,
        v6,
    }
}

/// Resolves the configuration against the kernel into the wanted state.
pub fn wanted(config: &Config, kernel: &Kernel) -> Result<Wanted, ConfigError> {
    let mut out = Wanted::default();
    // id -> kernel name
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    for dev in config.devices.values() {
        let name = match &dev.kind {
            Kind::Ethernet {
                matcher: Some(m),
                set_name,
            } => {
                let found: Vec<&str> = kernel
                    .links
                    .iter()
                    .filter(|l| {
                        matches!(l.kind, LinkKind::Existing)
                            && m.name.as_ref().is_none_or(|g| {
                                glob(g, &l.name) || set_name.as_ref() == Some(&l.name)
                            })
                            && m.macaddress.as_ref().is_none_or(|mac| *mac == l.mac)
                            && m.driver
                                .as_ref()
                                .is_none_or(|g| l.driver.as_ref().is_some_and(|d| glob(g, d)))
                    })
                    .map(|l| l.name.as_str())
                    .collect();
                match (found.as_slice(), set_name) {
                    ([], _) if dev.common.optional => continue,
                    ([], _) => {
                        return Err(ConfigError {
                            mark: dev.mark.clone(),
                            path: format!("network.ethernets.{}.match", dev.id),
                            message: "no network device matches (mark it `optional: true` if it may be absent)".into(),
                        });
                    }
                    ([one], Some(new)) => {
                        if one != new {
                            out.renames.insert(one.to_string(), new.clone());
                        }
                        new.clone()
                    }
                    ([one], None) => one.to_string(),
                    (many, Some(_)) => {
                        return Err(ConfigError {
                            mark: dev.mark.clone(),
                            path: format!("network.ethernets.{}.set-name", dev.id),
                            message: format!(
                                "`set-name` needs exactly one matching device, found {}",
                                many.join(", ")
                            ),
                        });
                    }
                    // netplan applies one definition to several matched NICs; cairn keeps
                    // one name per definition so every object has one owner.
                    (many, None) => {
                        return Err(ConfigError {
                            mark: dev.mark.clone(),
                            path: format!("network.ethernets.{}.match", dev.id),
                            message: format!(
                                "matches several devices ({}); cairn needs one per definition",
                                many.join(", ")
                            ),
                        });
                    }
                }
            }
            Kind::Ethernet { matcher: None, .. } => {
                if kernel.link(&dev.id).is_none() && dev.common.optional {
                    continue;
                }
                if kernel.link(&dev.id).is_none() {
                    return Err(ConfigError {
                        mark: dev.mark.clone(),
                        path: format!("network.ethernets.{}", dev.id),
                        message: format!("no network device named {}", dev.id),
                    });
                }
                dev.id.clone()
            }
            _ => dev.id.clone(),
        };
        names.insert(&dev.id, name);
    }
    let vrf_of: BTreeMap<&str, u32> = config
        .devices
        .values()
        .filter_map(|d| match &d.kind {
            Kind::Vrf { table, interfaces } => {
                Some(interfaces.iter().map(move |i| (i.as_str(), *table)))
            }
            _ => None,
        })
        .flatten()
        .collect();
    let mut controller: BTreeMap<&str, &str> = BTreeMap::new();
    for dev in config.devices.values() {
        if let Kind::Bond { interfaces, .. }
        | Kind::Bridge { interfaces, .. }
        | Kind::Vrf { interfaces, .. } = &dev.kind
        {
            for i in interfaces {
                // A bridge inside a VRF: the VRF is the bridge's controller, not the ports'.
                controller.entry(i.as_str()).or_insert(dev.id.as_str());
                if !matches!(dev.kind, Kind::Vrf { .. }) {
                    controller.insert(i.as_str(), dev.id.as_str());
                }
            }
        }
    }
    for dev in config.devices.values() {
        let Some(name) = names.get(dev.id.as_str()) else {
            continue;
        };
        let kind = match &dev.kind {
            Kind::Ethernet { .. } => LinkKind::Existing,
            Kind::Dummy => LinkKind::Dummy,
            Kind::Bridge { params, .. } => LinkKind::Bridge {
                stp: params.stp,
                forward_delay: params.forward_delay.map(|s| s * 100),
                priority: params.priority,
            },
            Kind::Bond { params, .. } => LinkKind::Bond {
                mode: params.mode,
                miimon: params.mii_monitor_interval,
                lacp_rate: params.lacp_rate,
                xmit_hash_policy: params.transmit_hash_policy,
                updelay: params.up_delay,
                downdelay: params.down_delay,
                min_links: params.min_links,
                primary: params.primary.clone(),
            },
            Kind::Vlan { id, link } => LinkKind::Vlan {
                id: *id,
                parent: names
                    .get(link.as_str())
                    .cloned()
                    .unwrap_or_else(|| link.clone()),
            },
            Kind::Vrf { table, .. } => LinkKind::Vrf { table: *table },
            Kind::Vxlan(v) => LinkKind::Vxlan {
                vni: v.id,
                local: v.local,
                remote: v.remote,
                port: v.port.unwrap_or(4789),
                learning: v.mac_learning,
            },
        };
        let vrf_table = match &dev.kind {
            Kind::Vrf { table, .. } => Some(*table),
            _ => vrf_of.get(dev.id.as_str()).copied(),
        };
        let state = LinkState {
            kind,
            mtu: dev.common.mtu,
            mac: dev.common.macaddress.clone(),
            up: true,
            controller: controller
                .get(dev.id.as_str())
                .and_then(|c| names.get(*c).cloned()),
            addresses: dev
                .common
                .addresses
                .iter()
                .map(|a| (a.addr, a.prefix))
                .collect(),
            routes: dev
                .common
                .routes
                .iter()
                .map(|r| route_spec(r, vrf_table))
                .collect(),
            fdb: BTreeSet::new(),
            dhcp4: dev.common.dhcp4,
        };
        out.state
            .rules
            .extend(dev.common.routing_policy.iter().map(rule_spec));
        out.state.links.insert(name.clone(), Some(state));
    }
    Ok(out)
}

/// The kernel's current state for the given names (`None` for names that do not exist), in
/// the same shape as [`Wanted`]: a checkpoint for rollback.
pub fn observed(kernel: &Kernel, names: &BTreeSet<String>, rules: &BTreeSet<RuleSpec>) -> NetState {
    let mut state = NetState::default();
    for name in names {
        let link = kernel.link(name).map(|l| LinkState {
            kind: l.kind.clone(),
            mtu: Some(l.mtu),
            mac: Some(l.mac.clone()),
            up: l.up,
            controller: l
                .controller
                .and_then(|c| kernel.name_of(c))
                .map(str::to_string),
            addresses: kernel
                .addresses
                .get(&l.index)
                .map(|a| a.iter().copied().collect())
                .unwrap_or_default(),
            routes: kernel
                .routes
                .get(&l.index)
                .map(|r| r.iter().cloned().collect())
                .unwrap_or_default(),
            fdb: kernel
                .fdb
                .get(&l.index)
                .map(|r| r.iter().copied().collect())
                .unwrap_or_default(),
            dhcp4: false,
        });
        state.links.insert(name.clone(), link);
    }
    state.rules = kernel
        .rules
        .iter()
        .filter(|h| rules.iter().any(|r| rule_matches(r, h)))
        .cloned()
        .collect();
    state
}

/// Whether kernel rule `have` is the wanted rule `want`. A rule configured without a priority
/// gets one from the kernel, so then everything else must match.
pub fn rule_matches(want: &RuleSpec, have: &RuleSpec) -> bool {
    *have == *want
        || (want.priority.is_none()
            && *have
                == RuleSpec {
                    priority: have.priority,
                    ..want.clone()
                })
}

/// Computes the ordered changes from `kernel` to `want`. `owned` says which links, rules
/// and device-less routes cairn created earlier (it may delete those).
pub fn plan(want: &Wanted, kernel: &Kernel, owned_state: &Owned) -> Vec<Op> {
    let owned = &owned_state.links;
    let owned_rules = &owned_state.rules;
    // Device-less routes cairn may see as its own: added earlier, or wanted now.
    let deviceless: Vec<&RouteSpec> = kernel
        .routes
        .get(&0)
        .map(|r| r.iter().collect())
        .unwrap_or_default();
    let mut removes = Vec::new();
    let mut renames = Vec::new();
    let mut creates = Vec::new();
    let mut attrs = Vec::new();
    let mut members = Vec::new();
    let mut ups = Vec::new();
    let mut addrs = Vec::new();
    let mut routes = Vec::new();
    let mut extra = Vec::new();

    for (from, to) in &want.renames {
        if kernel.link(from).is_some_and(|l| l.up) {
            renames.push(Op::SetUp {
                name: from.clone(),
                up: false,
            });
        }
        renames.push(Op::Rename {
            from: from.clone(),
            to: to.clone(),
        });
    }
    // The kernel as it will be after renames.
    let current = |name: &str| {
        let old = want
            .renames
            .iter()
            .find(|(_, to)| to.as_str() == name)
            .map(|(from, _)| from.as_str())
            .unwrap_or(name);
        kernel.link(old)
    };

    // Links to delete: owned ones no longer wanted, or wanted as absent.
    for name in owned {
        if !want.state.links.contains_key(name) && kernel.link(name).is_some() {
            removes.push(Op::DelLink { name: name.clone() });
        }
    }
    let mut recreate = BTreeSet::new();
    for (name, wanted) in &want.state.links {
        let have = current(name);
        match (wanted, have) {
            // A physical NIC cannot be deleted; a checkpoint naming it absent means it had
            // another name, which the ethernet `match` resolves on the next apply.
            (None, Some(h)) if !matches!(h.kind, LinkKind::Existing) => {
                removes.push(Op::DelLink { name: name.clone() })
            }
            (None, _) => {}
            (Some(w), Some(h))
                if !w.kind.satisfied_by(&h.kind)
                    && (owned.contains(name) || !matches!(h.kind, LinkKind::Existing)) =>
            {
                removes.push(Op::DelLink { name: name.clone() });
                recreate.insert(name.clone());
            }
            _ => {}
        }
    }

    // Deleting a link deletes the VLANs on it: recreate those too.
    loop {
        let more: Vec<String> = want
            .state
            .links
            .iter()
            .filter_map(|(n, w)| match w {
                Some(LinkState {
                    kind: LinkKind::Vlan { parent, .. },
                    ..
                }) if recreate.contains(parent) && !recreate.contains(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        if more.is_empty() {
            break;
        }
        recreate.extend(more);
    }
    // Owned device-less routes that no link wants any more.
    for r in &owned_state.routes {
        let wanted_somewhere = want
            .state
            .links
            .values()
            .flatten()
            .any(|l| l.routes.contains(r));
        if !wanted_somewhere && deviceless.contains(&r) {
            removes.insert(
                0,
                Op::DelRoute {
                    name: String::new(),
                    route: r.clone(),
                },
            );
        }
    }

    // Creation order: links without parents, then VLANs on them.
    let mut order: Vec<(&String, &LinkState)> = want
        .state
        .links
        .iter()
        .filter_map(|(n, w)| w.as_ref().map(|w| (n, w)))
        .collect();
    order.sort_by_key(|(_, w)| matches!(w.kind, LinkKind::Vlan { .. }));

    for (name, w) in order {
        let have = if recreate.contains(name) {
            None
        } else {
            current(name)
        };
        let fresh = have.is_none();
        if fresh {
            if matches!(w.kind, LinkKind::Existing) {
                continue; // validated in `wanted`: an absent NIC is optional
            }
            creates.push(Op::AddLink {
                name: name.clone(),
                kind: w.kind.clone(),
            });
        }
        if let Some(mtu) = w.mtu
            && have.is_none_or(|h| h.mtu != mtu)
        {
            attrs.push(Op::SetMtu {
                name: name.clone(),
                mtu,
            });
        }
        if let Some(mac) = &w.mac
            && have.is_none_or(|h| &h.mac != mac)
        {
            attrs.push(Op::SetMac {
                name: name.clone(),
                mac: mac.clone(),
            });
        }
        let have_ctrl = have
            .and_then(|h| h.controller)
            .and_then(|c| kernel.name_of(c))
            // A controller being recreated releases its members.
            .filter(|c| !recreate.contains(*c))
            .map(|c| {
                want.renames
                    .get(c)
                    .cloned()
                    .unwrap_or_else(|| c.to_string())
            });
        if w.controller != have_ctrl && (w.controller.is_some() || have_ctrl.is_some()) {
            // Bond members must be down to be enslaved.
            let to_bond = w.controller.as_ref().is_some_and(|c| {
                want.state
                    .links
                    .get(c)
                    .and_then(|l| l.as_ref())
                    .is_some_and(|l| matches!(l.kind, LinkKind::Bond { .. }))
            });
            if to_bond && have.is_some_and(|h| h.up) && !want.renames.values().any(|n| n == name) {
                members.push(Op::SetUp {
                    name: name.clone(),
                    up: false,
                });
            }
            members.push(Op::SetController {
                name: name.clone(),
                controller: w.controller.clone(),
            });
        }
        let renamed = want.renames.values().any(|n| n == name);
        let members_down = members
            .iter()
            .any(|o| matches!(o, Op::SetUp { name: n, up: false } if n == name));
        if w.up && (fresh || renamed || members_down || have.is_some_and(|h| !h.up)) {
            ups.push(Op::SetUp {
                name: name.clone(),
                up: true,
            });
        } else if !w.up && have.is_some_and(|h| h.up) {
            ups.push(Op::SetUp {
                name: name.clone(),
                up: false,
            });
        }
        let have_idx = have.map(|h| h.index);
        let have_addrs: BTreeSet<(IpAddr, u8)> = have_idx
            .and_then(|i| kernel.addresses.get(&i))
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default();
        for (addr, prefix) in have_addrs.difference(&w.addresses).filter(|_| !w.dhcp4) {
            removes.insert(
                0,
                Op::DelAddress {
                    name: name.clone(),
                    addr: *addr,
                    prefix: *prefix,
                },
            );
        }
        for (addr, prefix) in w.addresses.difference(&have_addrs) {
            addrs.push(Op::AddAddress {
                name: name.clone(),
                addr: *addr,
                prefix: *prefix,
            });
        }
        let mut have_routes: BTreeSet<RouteSpec> = have_idx
            .and_then(|i| kernel.routes.get(&i))
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default();
        // The kernel attaches blackhole/unreachable/prohibit routes to no link: they count
        // for this one if it wants them (unwanted owned ones are removed above).
        if have_idx.is_some() {
            have_routes.extend(
                deviceless
                    .iter()
                    .filter(|r| w.routes.contains(r))
                    .map(|r| (*r).clone()),
            );
        }
        for r in have_routes.difference(&w.routes).filter(|_| !w.dhcp4) {
            removes.insert(
                0,
                Op::DelRoute {
                    name: name.clone(),
                    route: r.clone(),
                },
            );
        }
        for r in w.routes.difference(&have_routes) {
            routes.push(Op::AddRoute {
                name: name.clone(),
                route: r.clone(),
            });
        }
        let have_fdb: BTreeSet<IpAddr> = have_idx
            .and_then(|i| kernel.fdb.get(&i))
            .map(|a| a.iter().copied().collect())
            .unwrap_or_default();
        for d in have_fdb.difference(&w.fdb) {
            removes.insert(
                0,
                Op::DelFdb {
                    name: name.clone(),
                    dst: *d,
                },
            );
        }
        for d in w.fdb.difference(&have_fdb) {
            extra.push(Op::AddFdb {
                name: name.clone(),
                dst: *d,
            });
        }
    }
    let same = rule_matches;
    for r in &want.state.rules {
        if !kernel.rules.iter().any(|h| same(r, h)) {
            extra.insert(0, Op::AddRule { rule: r.clone() });
        }
    }
    for r in owned_rules {
        if want.state.rules.contains(r) {
            continue;
        }
        if let Some(h) = kernel.rules.iter().find(|h| same(r, h)) {
            removes.insert(0, Op::DelRule { rule: h.clone() });
        }
    }
    // Routes whose link is being deleted go with it.
    let deleted: BTreeSet<String> = removes
        .iter()
        .filter_map(|o| match o {
            Op::DelLink { name } => Some(name.clone()),
            _ => None,
        })
        .collect();
    removes.retain(|o| match o {
        Op::DelRoute { name, .. } | Op::DelAddress { name, .. } | Op::DelFdb { name, .. } => {
            !deleted.contains(name)
        }
        _ => true,
    });
    [
        removes, renames, creates, attrs, members, ups, addrs, routes, extra,
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::parse_str;
    use crate::state::KernelLink;

    fn link(index: u32, name: &str, kind: LinkKind, up: bool) -> KernelLink {
        KernelLink {
            index,
            name: name.into(),
            kind,
            kind_name: String::new(),
            mtu: 1500,
            mac: format!("02:00:00:00:00:{index:02x}"),
            up,
            controller: None,
            driver: Some("virtio_net".into()),
        }
    }

    fn kernel() -> Kernel {
        Kernel {
            links: vec![
                link(1, "lo", LinkKind::Existing, true),
                link(2, "eth0", LinkKind::Existing, false),
                link(3, "eth1", LinkKind::Existing, false),
                link(9, "unrelated", LinkKind::Dummy, true),
            ],
            ..Default::default()
        }
    }

    const BOND: &str = r#"
network:
  version: 2
  ethernets:
    eth0: {}
    eth1: {}
  bonds:
    bond0:
      interfaces: [eth0, eth1]
      parameters: {mode: active-backup, mii-monitor-interval: 100}
      addresses: [10.1.0.2/24]
      routes:
        - {to: default, via: 10.1.0.1}
  vlans:
    bond0.10: {id: 10, link: bond0, addresses: [10.10.0.2/24]}
"#;

    #[test]
    fn creates_bond_then_vlan_then_addresses_then_routes() {
        let cfg = parse_str("t.yaml", BOND).unwrap();
        let want = wanted(&cfg, &kernel()).unwrap();
        let ops = plan(&want, &kernel(), &Owned::default());
        let text: Vec<String> = ops.iter().map(|o| o.to_string()).collect();
        let pos = |s: &str| {
            text.iter()
                .position(|t| t == s)
                .unwrap_or_else(|| panic!("{s} missing in {text:#?}"))
        };
        assert!(pos("create bond bond0") < pos("create vlan bond0.10"));
        assert!(pos("set eth0 master bond0") < pos("set eth0 up"));
        assert!(
            pos("add address 10.1.0.2/24 to bond0")
                < pos("add route 0.0.0.0/0 via 10.1.0.1 dev bond0")
        );
        assert!(!text.iter().any(|t| t.contains("unrelated")), "{text:#?}");
    }

    #[test]
    fn nothing_to_do_when_kernel_matches() {
        let cfg = parse_str("t.yaml", BOND).unwrap();
        let mut k = kernel();
        let bond_kind = LinkKind::Bond {
            mode: 1,
            miimon: Some(100),
            lacp_rate: Some(0),
            xmit_hash_policy: Some(0),
            updelay: Some(0),
            downdelay: Some(0),
            min_links: Some(0),
            primary: None,
        };
        k.links.push(link(10, "bond0", bond_kind, true));
        k.links.push(link(
            11,
            "bond0.10",
            LinkKind::Vlan {
                id: 10,
                parent: "bond0".into(),
            },
            true,
        ));
        for l in &mut k.links {
            if l.name == "eth0" || l.name == "eth1" {
                l.controller = Some(10);
                l.up = true;
            }
        }
        k.addresses
            .insert(10, vec![("10.1.0.2".parse().unwrap(), 24)]);
        k.addresses
            .insert(11, vec![("10.10.0.2".parse().unwrap(), 24)]);
        let want = wanted(&cfg, &k).unwrap();
        let r = want.state.links["bond0"]
            .as_ref()
            .unwrap()
            .routes
            .iter()
            .next()
            .unwrap()
            .clone();
        k.routes.insert(10, vec![r]);
        let ops = plan(&want, &k, &Owned::default());
        assert!(ops.is_empty(), "{ops:#?}");
    }

    #[test]
    fn owned_links_no_longer_configured_are_deleted_others_are_not() {
        let cfg = parse_str("t.yaml", "network: {version: 2, ethernets: {eth0: {}}}").unwrap();
        let mut k = kernel();
        k.links.push(link(10, "old0", LinkKind::Dummy, true));
        let want = wanted(&cfg, &k).unwrap();
        let owned = Owned {
            links: ["old0".to_string()].into(),
            ..Default::default()
        };
        let ops = plan(&want, &k, &owned);
        assert_eq!(
            ops,
            vec![
                Op::DelLink {
                    name: "old0".into()
                },
                Op::SetUp {
                    name: "eth0".into(),
                    up: true
                }
            ]
        );
    }

    #[test]
    fn match_by_mac_with_set_name_renames_down_first() {
        let cfg = parse_str(
            "t.yaml",
            "network: {version: 2, ethernets: {lan: {match: {macaddress: '02:00:00:00:00:03'}, set-name: lan0}}}",
        )
        .unwrap();
        let mut k = kernel();
        k.links[2].up = true;
        let want = wanted(&cfg, &k).unwrap();
        let ops = plan(&want, &k, &Owned::default());
        assert_eq!(
            ops,
            vec![
                Op::SetUp {
                    name: "eth1".into(),
                    up: false
                },
                Op::Rename {
                    from: "eth1".into(),
                    to: "lan0".into()
                },
                Op::SetUp {
                    name: "lan0".into(),
                    up: true
                },
            ]
        );
    }

    #[test]
    fn missing_nic_is_an_error_unless_optional() {
        let cfg = parse_str("t.yaml", "network: {version: 2, ethernets: {eno9: {}}}").unwrap();
        let e = wanted(&cfg, &kernel()).unwrap_err();
        assert!(
            e.to_string().contains("no network device named eno9"),
            "{e}"
        );
        let cfg = parse_str(
            "t.yaml",
            "network: {version: 2, ethernets: {eno9: {optional: true}}}",
        )
        .unwrap();
        assert!(wanted(&cfg, &kernel()).unwrap().state.links.is_empty());
    }

    #[test]
    fn fdb_changes_touch_only_changed_peers() {
        let mut k = kernel();
        let vx = LinkKind::Vxlan {
            vni: 100,
            local: None,
            remote: None,
            port: 4789,
            learning: false,
        };
        k.links.push(link(20, "vx100", vx.clone(), true));
        k.fdb.insert(
            20,
            vec!["10.0.0.2".parse().unwrap(), "10.0.0.3".parse().unwrap()],
        );
        let mut want = Wanted::default();
        want.state.links.insert(
            "vx100".into(),
            Some(LinkState {
                kind: vx,
                mtu: None,
                mac: None,
                up: true,
                controller: None,
                addresses: BTreeSet::new(),
                routes: BTreeSet::new(),
                fdb: ["10.0.0.2".parse().unwrap(), "10.0.0.4".parse().unwrap()].into(),
                dhcp4: false,
            }),
        );
        let ops = plan(&want, &k, &Owned::default());
        assert_eq!(
            ops,
            vec![
                Op::DelFdb {
                    name: "vx100".into(),
                    dst: "10.0.0.3".parse().unwrap()
                },
                Op::AddFdb {
                    name: "vx100".into(),
                    dst: "10.0.0.4".parse().unwrap()
                },
            ]
        );
    }
}
