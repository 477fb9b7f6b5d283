//! The network state cairn manages, in one shape for both sides of a plan: what the kernel
//! has (read through netlink, restricted to the managed names) and what the configuration
//! wants. A checkpoint for `net try` is the same shape, read from the kernel before applying,
//! so rolling back is planning towards the checkpoint.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A link kind with the settings cairn compares and sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum LinkKind {
    /// A device cairn does not create (a NIC, a veth): only configured.
    Existing,
    /// dummy.
    Dummy,
    /// Bridge.
    Bridge {
        /// STP on.
        stp: bool,
        /// Forward delay in centiseconds (kernel unit).
        forward_delay: Option<u32>,
        /// Priority.
        priority: Option<u16>,
    },
    /// Bond.
    Bond {
        /// Mode 0–6.
        mode: u8,
        /// miimon ms.
        miimon: Option<u32>,
        /// 0 slow, 1 fast.
        lacp_rate: Option<u8>,
        /// xmit_hash_policy.
        xmit_hash_policy: Option<u8>,
        /// updelay ms.
        updelay: Option<u32>,
        /// downdelay ms.
        downdelay: Option<u32>,
        /// min_links.
        min_links: Option<u32>,
        /// Primary member name.
        primary: Option<String>,
    },
    /// 802.1Q VLAN on a parent.
    Vlan {
        /// VLAN id.
        id: u16,
        /// Parent link name.
        parent: String,
    },
    /// VRF.
    Vrf {
        /// Table.
        table: u32,
    },
    /// VXLAN.
    Vxlan {
        /// VNI.
        vni: u32,
        /// Local address.
        local: Option<IpAddr>,
        /// Remote address.
        remote: Option<IpAddr>,
        /// UDP port.
        port: u16,
        /// Learning.
        learning: bool,
    },
}

impl LinkKind {
    /// The kernel `kind` string.
    pub fn kernel_kind(&self) -> &'static str {
        match self {
            LinkKind::Existing => "",
            LinkKind::Dummy => "dummy",
            LinkKind::Bridge { .. } => "bridge",
            LinkKind::Bond { .. } => "bond",
            LinkKind::Vlan { .. } => "vlan",
            LinkKind::Vrf { .. } => "vrf",
            LinkKind::Vxlan { .. } => "vxlan",
        }
    }

    /// Whether `kernel` (as read back) satisfies `self` (as wanted). Settings the kernel did
    /// not report, or that cairn did not ask for, do not count as differences.
    pub fn satisfied_by(&self, kernel: &LinkKind) -> bool {
        use LinkKind::*;
        fn opt<T: PartialEq>(want: &Option<T>, have: &Option<T>) -> bool {
            want.is_none() || have.is_none() || want == have
        }
        match (self, kernel) {
            (Existing, _) => true,
            (Dummy, Dummy) => true,
            (
                Bridge {
                    stp,
                    forward_delay,
                    priority,
                },
                Bridge {
                    stp: s2,
                    forward_delay: f2,
                    priority: p2,
                },
            ) => stp == s2 && opt(forward_delay, f2) && opt(priority, p2),
            (
                Bond {
                    mode,
                    miimon,
                    lacp_rate,
                    xmit_hash_policy,
                    updelay,
                    downdelay,
                    min_links,
                    primary: _,
                },
                Bond {
                    mode: m2,
                    miimon: mi2,
                    lacp_rate: l2,
                    xmit_hash_policy: x2,
                    updelay: u2,
                    downdelay: d2,
                    min_links: n2,
                    primary: _,
                },
            ) => {
                mode == m2
                    && opt(miimon, mi2)
                    && opt(lacp_rate, l2)
                    && opt(xmit_hash_policy, x2)
                    && opt(updelay, u2)
                    && opt(downdelay, d2)
                    && opt(min_links, n2)
            }
            (Vlan { id, parent }, Vlan { id: i2, parent: p2 }) => id == i2 && parent == p2,
            (Vrf { table }, Vrf { table: t2 }) => table == t2,
            (
                Vxlan {
                    vni,
                    local,
                    remote,
                    port,
                    learning,
                },
                Vxlan {
                    vni: v2,
                    local: l2,
                    remote: r2,
                    port: p2,
                    learning: le2,
                },
            ) => vni == v2 && local == l2 && remote == r2 && port == p2 && learning == le2,
            _ => false,
        }
    }
}

/// A route as managed (always attached to a link).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RouteSpec {
    /// Destination network.
    pub dst: IpAddr,
    /// Destination prefix length.
    pub prefix: u8,
    /// Gateway.
    pub via: Option<IpAddr>,
    /// Table (254 = main).
    pub table: u32,
    /// Metric.
    pub metric: Option<u32>,
    /// 0 universe/global, 253 link, 254 host.
    pub scope: u8,
    /// on-link flag.
    pub onlink: bool,
    /// 1 unicast, 6 blackhole, 7 unreachable, 8 prohibit.
    pub kind: u8,
}

/// A policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RuleSpec {
    /// Source.
    pub from: Option<(IpAddr, u8)>,
    /// Destination.
    pub to: Option<(IpAddr, u8)>,
    /// Table.
    pub table: u32,
    /// Priority.
    pub priority: Option<u32>,
    /// fwmark.
    pub mark: Option<u32>,
    /// IPv6 rule.
    pub v6: bool,
}

/// One link's managed state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkState {
    /// Kind.
    pub kind: LinkKind,
    /// MTU (None: not managed).
    pub mtu: Option<u32>,
    /// MAC (None: not managed), lower-case `xx:..`.
    pub mac: Option<String>,
    /// Administratively up.
    pub up: bool,
    /// Controller (bond, bridge or VRF) name.
    pub controller: Option<String>,
    /// Addresses with prefix.
    pub addresses: BTreeSet<(IpAddr, u8)>,
    /// Routes out of this link.
    pub routes: BTreeSet<RouteSpec>,
    /// All-zero FDB entries (VXLAN head-end replication): remote VTEPs.
    pub fdb: BTreeSet<IpAddr>,
    /// Served by the DHCP client: addresses and routes beyond the configured ones are the
    /// lease's and are left alone.
    #[serde(default)]
    pub dhcp4: bool,
}

/// The whole managed state: `None` means "this name must not exist".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// Links by kernel name.
    pub links: BTreeMap<String, Option<LinkState>>,
    /// Policy rules.
    pub rules: BTreeSet<RuleSpec>,
}

/// What cairn remembers between runs: the links and rules it created.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owned {
    /// Links created by cairn.
    pub links: BTreeSet<String>,
    /// Rules added by cairn.
    pub rules: BTreeSet<RuleSpec>,
    /// Device-less routes (blackhole, unreachable, prohibit) added by cairn: the kernel keeps
    /// no link for them, so this is how they are found again.
    #[serde(default)]
    pub routes: BTreeSet<RouteSpec>,
}

/// Formats a MAC address.
pub fn mac_string(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `xx:xx:..` (validated earlier by the schema).
pub fn mac_bytes(mac: &str) -> Vec<u8> {
    mac.split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect()
}

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelLink {
    /// ifindex.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Kind with the settings cairn reads back (`Existing` for kinds cairn does not create).
    pub kind: LinkKind,
    /// The kernel's kind string (`veth`, `e1000` devices have none).
    pub kind_name: String,
    /// MTU.
    pub mtu: u32,
    /// MAC.
    pub mac: String,
    /// Administratively up.
    pub up: bool,
    /// Controller ifindex.
    pub controller: Option<u32>,
    /// Driver (from sysfs), for `match: driver`.
    pub driver: Option<String>,
}

/// A kernel snapshot: what the plan compares against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Kernel {
    /// Links.
    pub links: Vec<KernelLink>,
    /// Addresses per ifindex (IPv6 link-local excluded).
    pub addresses: BTreeMap<u32, Vec<(IpAddr, u8)>>,
    /// Routes per output ifindex, excluding kernel-generated (`proto kernel`) and local-table
    /// routes.
    pub routes: BTreeMap<u32, Vec<RouteSpec>>,
    /// Policy rules, excluding the kernel's defaults.
    pub rules: Vec<RuleSpec>,
    /// All-zero FDB entries per ifindex (remote VTEPs).
    pub fdb: BTreeMap<u32, Vec<IpAddr>>,
}

impl Kernel {
    /// The link named `name`.
    pub fn link(&self, name: &str) -> Option<&KernelLink> {
        self.links.iter().find(|l| l.name == name)
    }

    /// The name of link `index`.
    pub fn name_of(&self, index: u32) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.as_str())
    }
}
