//! netplan v2 configuration: file discovery and merging, the typed model, and validation.
//!
//! Every error carries the file, line, column and key path of the offending node. Keys
//! cairn does not implement are errors naming them, never silently ignored: an appliance
//! whose network silently differs from its YAML is the failure this crate exists to prevent.
//!
//! Merge rule (as netplan): files named `*.yaml` in `lib/netplan`, `etc/netplan`,
//! `run/netplan` under the root are ordered by file name (a file in a later directory
//! shadows one of the same name in an earlier directory); mappings merge key by key, a later
//! scalar or sequence replaces the earlier one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::yaml::{self, Mark, Node, Value};

/// A configuration problem, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{mark}: {path}: {message}")]
pub struct ConfigError {
    /// Where.
    pub mark: Mark,
    /// Key path, e.g. `network.ethernets.eth0.addresses[1]`.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Errors loading configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading a file or directory failed.
    #[error("reading {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// YAML syntax.
    #[error(transparent)]
    Syntax(#[from] yaml::SyntaxError),
    /// Schema or validation.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
    /// No files at all.
    #[error("no netplan files found under {0}")]
    Empty(String),
}

/// An address with prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct IpNet {
    /// Address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} needs a prefix length (ADDRESS/PREFIX)"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("{p:?} is not a prefix length"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(format!("prefix /{prefix} is longer than {max}"));
        }
        Ok(IpNet { addr, prefix })
    }
}

impl IpNet {
    /// The network address (host bits cleared).
    pub fn network(&self) -> IpNet {
        match self.addr {
            IpAddr::V4(a) => {
                let bits = u32::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - self.prefix)
                };
                IpNet {
                    addr: IpAddr::V4((bits & mask).into()),
                    prefix: self.prefix,
                }
            }
            IpAddr::V6(a) => {
                let bits = u128::from(a);
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - self.prefix)
                };
                IpNet {
                    addr: IpAddr::V6((bits & mask).into()),
                    prefix: self.prefix,
                }
            }
        }
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        IpNet {
            addr: ip,
            prefix: self.prefix,
        }
        .network()
            == self.network()
            && ip.is_ipv4() == self.addr.is_ipv4()
    }
}

/// `match:` of an ethernet.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Match {
    /// Name glob (`*`, `?`, `[...]`).
    pub name: Option<String>,
    /// MAC address, lower case.
    pub macaddress: Option<String>,
    /// Kernel driver name glob.
    pub driver: Option<String>,
}

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Route {
    /// Destination; `default` is `0.0.0.0/0` (or `::/0` when `via` is IPv6).
    pub to: IpNet,
    /// Gateway.
    pub via: Option<IpAddr>,
    /// Metric (kernel priority).
    pub metric: Option<u32>,
    /// Table; main (254) when absent.
    pub table: Option<u32>,
    /// `global`, `link` or `host`.
    pub scope: Option<String>,
    /// Gateway reachable without a covering route.
    pub on_link: bool,
    /// `unicast`, `blackhole`, `unreachable`, `prohibit`.
    pub kind: String,
}

/// A routing-policy rule.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Rule {
    /// Source prefix.
    pub from: Option<IpNet>,
    /// Destination prefix.
    pub to: Option<IpNet>,
    /// Lookup table.
    pub table: u32,
    /// Rule priority.
    pub priority: Option<u32>,
    /// fwmark.
    pub mark: Option<u32>,
}

/// Keys every device kind shares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Common {
    /// Static addresses.
    pub addresses: Vec<IpNet>,
    /// Routes via this device.
    pub routes: Vec<Route>,
    /// Policy rules.
    pub routing_policy: Vec<Rule>,
    /// MTU.
    pub mtu: Option<u32>,
    /// MAC address to set.
    pub macaddress: Option<String>,
    /// DNS servers (recorded for the resolver; not a netlink object).
    pub nameservers: Vec<IpAddr>,
    /// DNS search domains.
    pub search: Vec<String>,
    /// Boot does not wait for it.
    pub optional: bool,
    /// DHCPv4 by cairn's client.
    pub dhcp4: bool,
}

/// Bonding parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BondParams {
    /// Kernel mode number 0–6.
    pub mode: u8,
    /// miimon in ms.
    pub mii_monitor_interval: Option<u32>,
    /// `slow` (0) or `fast` (1).
    pub lacp_rate: Option<u8>,
    /// xmit_hash_policy number.
    pub transmit_hash_policy: Option<u8>,
    /// Primary member name.
    pub primary: Option<String>,
    /// updelay ms.
    pub up_delay: Option<u32>,
    /// downdelay ms.
    pub down_delay: Option<u32>,
    /// min_links.
    pub min_links: Option<u32>,
}

/// Bridge parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BridgeParams {
    /// STP on (netplan's default is on).
    pub stp: bool,
    /// Forward delay in seconds.
    pub forward_delay: Option<u32>,
    /// Bridge priority.
    pub priority: Option<u16>,
}

/// VXLAN tunnel parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Vxlan {
    /// VNI.
    pub id: u32,
    /// Local VTEP address.
    pub local: Option<IpAddr>,
    /// Remote VTEP (unicast) or group.
    pub remote: Option<IpAddr>,
    /// UDP port (4789 when absent).
    pub port: Option<u16>,
    /// Learning (netplan's default: on).
    pub mac_learning: bool,
    /// ARP/ND suppression on the bridge port.
    pub neigh_suppress: bool,
}

/// What kind of device a definition is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Kind {
    /// A physical NIC (never created, only configured).
    Ethernet {
        /// How to find it.
        #[serde(rename = "match")]
        matcher: Option<Match>,
        /// Rename to this.
        set_name: Option<String>,
    },
    /// A bond.
    Bond {
        /// Members.
        interfaces: Vec<String>,
        /// Parameters.
        params: BondParams,
    },
    /// A bridge.
    Bridge {
        /// Ports.
        interfaces: Vec<String>,
        /// Parameters.
        params: BridgeParams,
    },
    /// An 802.1Q VLAN.
    Vlan {
        /// VLAN id.
        id: u16,
        /// Parent device id.
        link: String,
    },
    /// A VRF.
    Vrf {
        /// Routing table.
        table: u32,
        /// Enslaved devices.
        interfaces: Vec<String>,
    },
    /// A VXLAN tunnel.
    Vxlan(Vxlan),
    /// A dummy device.
    Dummy,
}

/// One device definition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// The id (key in the YAML), which is the kernel name unless `match` says otherwise.
    pub id: String,
    /// Kind and kind-specific settings.
    #[serde(flatten)]
    pub kind: Kind,
    /// Shared settings.
    #[serde(flatten)]
    pub common: Common,
    /// Where it was defined.
    #[serde(skip)]
    pub mark: Mark,
}

/// A validated configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Config {
    /// Devices by id.
    pub devices: BTreeMap<String, Device>,
    /// The files it was merged from, in merge order.
    pub files: Vec<PathBuf>,
}

/// The directories netplan reads, in merge order, relative to the root.
pub const SEARCH_DIRS: [&str; 3] = ["lib/netplan", "etc/netplan", "run/netplan"];

/// The `*.yaml` files under `root` in netplan's order.
pub fn discover(root: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut by_name: BTreeMap<String, PathBuf> = BTreeMap::new();
    for dir in SEARCH_DIRS {
        let dir = root.join(dir);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => return Err(LoadError::Io { path: dir, source }),
        };
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Io {
                path: dir.clone(),
                source,
            })?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") {
                by_name.insert(name, entry.path());
            }
        }
    }
    Ok(by_name.into_values().collect())
}

/// Reads, merges and validates the given files (already in merge order).
pub fn load_files(files: &[PathBuf]) -> Result<Config, LoadError> {
    let mut merged: Option<Node> = None;
    for file in files {
        let text = std::fs::read_to_string(file).map_err(|source| LoadError::Io {
            path: file.clone(),
            source,
        })?;
        let node = yaml::parse(file, &text)?;
        merged = Some(match merged {
            Some(base) => yaml::merge(base, node),
            None => node,
        });
    }
    let merged = merged.ok_or_else(|| LoadError::Empty(format!("{files:?}")))?;
    let mut config = from_tree(&merged)?;
    config.files = files.to_vec();
    Ok(config)
}

/// Loads from a root directory (`/` on an appliance).
pub fn load_root(root: &Path) -> Result<Config, LoadError> {
    let files = discover(root)?;
    if files.is_empty() {
        return Err(LoadError::Empty(root.display().to_string()));
    }
    load_files(&files)
}

/// Parses and validates one document given as text (tests, overlay rendering).
pub fn parse_str(name: &str, text: &str) -> Result<Config, LoadError> {
    let node = yaml::parse(Path::new(name), text)?;
    Ok(from_tree(&node)?)
}

/// A node with its key path, for typed reads with positioned errors.
struct At<'a> {
    node: &'a Node,
    path: String,
}

impl<'a> At<'a> {
    fn err(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            mark: self.node.mark.clone(),
            path: self.path.clone(),
            message: message.into(),
        }
    }

    /// The mapping's entries, refusing keys outside `allowed`.
    fn map(&self, allowed: &[&str]) -> Result<Vec<(String, At<'a>)>, ConfigError> {
        let Value::Map(entries) = &self.node.value else {
            return Err(self.err("expected a mapping"));
        };
        let mut out = Vec::new();
        for (key, kmark, value) in entries {
            let path = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !allowed.contains(&key.as_str()) {
                return Err(ConfigError {
                    mark: kmark.clone(),
                    path,
                    message: format!(
                        "key `{key}` is not supported by cairn (supported here: {})",
                        allowed.join(", ")
                    ),
                });
            }
            out.push((key.clone(), At { node: value, path }));
        }
        Ok(out)
    }

    /// Entries of a mapping whose keys are ids (device names).
    fn entries(&self) -> Result<Vec<(String, At<'a>)>, ConfigError> {
        let Value::Map(entries) = &self.node.value else {
            return Err(self.err("expected a mapping of device ids"));
        };
        Ok(entries
            .iter()
            .map(|(k, _, v)| {
                (
                    k.clone(),
                    At {
                        node: v,
                        path: format!("{}.{k}", self.path),
                    },
                )
            })
            .collect())
    }

    fn seq(&self) -> Result<Vec<At<'a>>, ConfigError> {
        let Value::Seq(items) = &self.node.value else {
            return Err(self.err("expected a list"));
        };
        Ok(items
            .iter()
            .enumerate()
            .map(|(i, n)| At {
                node: n,
                path: format!("{}[{i}]", self.path),
            })
            .collect())
    }

    fn str(&self) -> Result<&'a str, ConfigError> {
        match &self.node.value {
            Value::Scalar { text, .. } => Ok(text),
            _ => Err(self.err("expected a single value")),
        }
    }

    fn bool(&self) -> Result<bool, ConfigError> {
        match &self.node.value {
            Value::Scalar { text, plain: true } => match text.to_ascii_lowercase().as_str() {
                "true" | "yes" | "on" | "y" => Ok(true),
                "false" | "no" | "off" | "n" => Ok(false),
                _ => Err(self.err(format!("{text:?} is not a boolean (true/false)"))),
            },
            _ => Err(self.err("expected a boolean (true/false)")),
        }
    }

    fn num<T: std::str::FromStr>(&self, what: &str) -> Result<T, ConfigError> {
        let s = self.str()?;
        s.parse()
            .map_err(|_| self.err(format!("{s:?} is not {what}")))
    }

    fn parse<T: std::str::FromStr<Err = String>>(&self) -> Result<T, ConfigError> {
        self.str()?.parse().map_err(|e: String| self.err(e))
    }

    fn ip(&self) -> Result<IpAddr, ConfigError> {
        let s = self.str()?;
        s.parse()
            .map_err(|_| self.err(format!("{s:?} is not an IP address")))
    }

    fn names(&self) -> Result<Vec<String>, ConfigError> {
        self.seq()?
            .iter()
            .map(|a| a.str().map(str::to_string))
            .collect()
    }
}

const COMMON_KEYS: &[&str] = &[
    "addresses",
    "routes",
    "routing-policy",
    "mtu",
    "macaddress",
    "nameservers",
    "optional",
    "dhcp4",
    "dhcp6",
    "renderer",
];

fn keys(extra: &[&'static str]) -> Vec<&'static str> {
    COMMON_KEYS
        .iter()
        .copied()
        .chain(extra.iter().copied())
        .collect()
}

fn mac(at: &At<'_>) -> Result<String, ConfigError> {
    let s = at.str()?.to_ascii_lowercase();
    let ok = s.len() == 17
        && s.split(':')
            .all(|p| p.len() == 2 && p.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(at.err(format!("{s:?} is not a MAC address (xx:xx:xx:xx:xx:xx)")));
    }
    Ok(s)
}

/// Shared keys; `vrf_table` is the default table of rules on a VRF (as netplan does).
fn common(entries: &[(String, At<'_>)], vrf_table: Option<u32>) -> Result<Common, ConfigError> {
    let mut c = Common::default();
    for (key, v) in entries {
        match key.as_str() {
            "addresses" => {
                for a in v.seq()? {
                    // netplan also allows `- ADDR: {lifetime, label}`; cairn does not.
                    c.addresses.push(a.parse()?);
                }
            }
            "routes" => {
                for r in v.seq()? {
                    c.routes.push(route(&r)?);
                }
            }
            "routing-policy" => {
                for r in v.seq()? {
                    c.routing_policy.push(rule(&r, vrf_table)?);
                }
            }
            "mtu" => {
                let mtu: u32 = v.num("an MTU")?;
                if !(68..=65535).contains(&mtu) {
                    return Err(v.err(format!("MTU {mtu} is outside 68..65535")));
                }
                c.mtu = Some(mtu);
            }
            "macaddress" => c.macaddress = Some(mac(v)?),
            "nameservers" => {
                for (k, n) in v.map(&["addresses", "search"])? {
                    match k.as_str() {
                        "addresses" => {
                            for a in n.seq()? {
                                c.nameservers.push(a.ip()?);
                            }
                        }
                        _ => c.search = n.names()?,
                    }
                }
            }
            "optional" => c.optional = v.bool()?,
            "dhcp4" => c.dhcp4 = v.bool()?,
            "dhcp6" if v.bool()? => {
                return Err(v.err("dhcp6: true is not supported by cairn (only dhcp4)"));
            }
            "renderer" => renderer(v)?,
            _ => {}
        }
    }
    Ok(c)
}

fn renderer(v: &At<'_>) -> Result<(), ConfigError> {
    // cairn is the renderer; `networkd` describes the same kernel objects, so it is
    // accepted. NetworkManager-only semantics are not.
    match v.str()? {
        "networkd" => Ok(()),
        other => Err(v.err(format!(
            "renderer {other:?} is not supported (cairn applies through netlink; use networkd or omit it)"
        ))),
    }
}

fn route(at: &At<'_>) -> Result<Route, ConfigError> {
    let mut to = None;
    let mut r = Route {
        to: IpNet {
            addr: IpAddr::V4(0.into()),
            prefix: 0,
        },
        via: None,
        metric: None,
        table: None,
        scope: None,
        on_link: false,
        kind: "unicast".into(),
    };
    for (k, v) in at.map(&["to", "via", "metric", "table", "scope", "on-link", "type"])? {
        match k.as_str() {
            "to" => {
                let s = v.str()?;
                to = Some(if s == "default" {
                    None
                } else if s.contains('/') {
                    Some(v.parse::<IpNet>()?)
                } else {
                    let ip = v.ip()?;
                    Some(IpNet {
                        addr: ip,
                        prefix: if ip.is_ipv4() { 32 } else { 128 },
                    })
                });
            }
            "via" => r.via = Some(v.ip()?),
            "metric" => r.metric = Some(v.num("a metric")?),
            "table" => r.table = Some(v.num("a table number")?),
            "scope" => {
                let s = v.str()?;
                if !["global", "link", "host"].contains(&s) {
                    return Err(v.err(format!("scope {s:?} must be global, link or host")));
                }
                r.scope = Some(s.to_string());
            }
            "on-link" => r.on_link = v.bool()?,
            _ => {
                let s = v.str()?;
                if !["unicast", "blackhole", "unreachable", "prohibit"].contains(&s) {
                    return Err(v.err(format!(
                        "route type {s:?} must be unicast, blackhole, unreachable or prohibit"
                    )));
                }
                r.kind = s.to_string();
            }
        }
    }
    match to {
        None => Err(at.err("a route needs `to`")),
        Some(Some(to)) => {
            r.to = to.network();
            check_route(at, r)
        }
        Some(None) => {
            // `to: default`: the family follows `via`.
            let v6 = r.via.is_some_and(|v| v.is_ipv6());
            r.to = IpNet {
                addr: if v6 {
                    IpAddr::V6(0.into())
                } else {
                    IpAddr::V4(0.into())
                },
                prefix: 0,
            };
            check_route(at, r)
        }
    }
}

fn check_route(at: &At<'_>, r: Route) -> Result<Route, ConfigError> {
    if let Some(via) = r.via
        && via.is_ipv4() != r.to.addr.is_ipv4()
    {
        return Err(at.err("`via` and `to` are of different address families"));
    }
    Ok(r)
}

/// `10.0.0.0/8`, or a bare address meaning a host prefix.
fn prefix_or_host(at: &At<'_>) -> Result<IpNet, ConfigError> {
    if at.str()?.contains('/') {
        return Ok(at.parse::<IpNet>()?.network());
    }
    let addr = at.ip()?;
    Ok(IpNet {
        addr,
        prefix: if addr.is_ipv4() { 32 } else { 128 },
    })
}

fn rule(at: &At<'_>, default_table: Option<u32>) -> Result<Rule, ConfigError> {
    let mut r = Rule {
        from: None,
        to: None,
        table: 0,
        priority: None,
        mark: None,
    };
    let mut has_table = false;
    for (k, v) in at.map(&["from", "to", "table", "priority", "mark"])? {
        match k.as_str() {
            "from" => r.from = Some(prefix_or_host(&v)?),
            "to" => r.to = Some(prefix_or_host(&v)?),
            "table" => {
                r.table = v.num("a table number")?;
                has_table = true;
            }
            "priority" => r.priority = Some(v.num("a priority")?),
            _ => r.mark = Some(v.num("a mark")?),
        }
    }
    if !has_table {
        r.table = default_table.ok_or_else(|| at.err("a routing-policy rule needs `table`"))?;
    }
    if r.from.is_none() && r.to.is_none() {
        return Err(at.err("a routing-policy rule needs `from` or `to`"));
    }
    Ok(r)
}

fn bond_mode(at: &At<'_>) -> Result<u8, ConfigError> {
    Ok(match at.str()? {
        "balance-rr" => 0,
        "active-backup" => 1,
        "balance-xor" => 2,
        "broadcast" => 3,
        "802.3ad" => 4,
        "balance-tlb" => 5,
        "balance-alb" => 6,
        other => {
            return Err(at.err(format!(
                "bond mode {other:?} is not one of balance-rr, active-backup, balance-xor, broadcast, 802.3ad, balance-tlb, balance-alb"
            )));
        }
    })
}

fn bond_params(at: &At<'_>) -> Result<BondParams, ConfigError> {
    let mut p = BondParams::default();
    for (k, v) in at.map(&[
        "mode",
        "mii-monitor-interval",
        "lacp-rate",
        "transmit-hash-policy",
        "primary",
        "up-delay",
        "down-delay",
        "min-links",
    ])? {
        match k.as_str() {
            "mode" => p.mode = bond_mode(&v)?,
            "mii-monitor-interval" => p.mii_monitor_interval = Some(ms(&v)?),
            "lacp-rate" => {
                p.lacp_rate = Some(match v.str()? {
                    "slow" => 0,
                    "fast" => 1,
                    o => return Err(v.err(format!("lacp-rate {o:?} must be slow or fast"))),
                })
            }
            "transmit-hash-policy" => {
                p.transmit_hash_policy = Some(match v.str()? {
                    "layer2" => 0,
                    "layer3+4" => 1,
                    "layer2+3" => 2,
                    "encap2+3" => 3,
                    "encap3+4" => 4,
                    o => {
                        return Err(v.err(format!(
                            "transmit-hash-policy {o:?} must be layer2, layer3+4, layer2+3, encap2+3 or encap3+4"
                        )));
                    }
                })
            }
            "primary" => p.primary = Some(v.str()?.to_string()),
            "up-delay" => p.up_delay = Some(ms(&v)?),
            "down-delay" => p.down_delay = Some(ms(&v)?),
            _ => p.min_links = Some(v.num("a number")?),
        }
    }
    Ok(p)
}

/// Milliseconds, as netplan writes them: a plain number or with an `ms`/`s` suffix.
fn ms(at: &At<'_>) -> Result<u32, ConfigError> {
    let s = at.str()?;
    let (num, factor) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else {
        (s, 1)
    };
    num.trim()
        .parse::<u32>()
        .map(|n| n * factor)
        .map_err(|_| at.err(format!("{s:?} is not a duration in milliseconds")))
}

fn bridge_params(at: &At<'_>) -> Result<BridgeParams, ConfigError> {
    let mut p = BridgeParams {
        stp: true,
        ..Default::default()
    };
    for (k, v) in at.map(&["stp", "forward-delay", "priority"])? {
        match k.as_str() {
            "stp" => p.stp = v.bool()?,
            "forward-delay" => {
                let d: u32 = v.num("seconds")?;
                if !(2..=30).contains(&d) {
                    return Err(v.err(format!("forward-delay {d} is outside 2..30 seconds")));
                }
                p.forward_delay = Some(d);
            }
            _ => p.priority = Some(v.num("a priority 0..65535")?),
        }
    }
    Ok(p)
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(['/', ' ', ':', '\t'])
}

/// Converts the merged tree into a validated [`Config`].
/// Validates a parsed tree (its marks name the file and line it was read from): the hub
/// checks a layer's netplan patch inside the operator's file with it.
pub fn from_tree(root: &Node) -> Result<Config, ConfigError> {
    let top = At {
        node: root,
        path: String::new(),
    };
    let mut config = Config::default();
    let mut network = None;
    for (_, v) in top.map(&["network"])? {
        network = Some(v);
    }
    let Some(network) = network else {
        return Err(top.err("missing `network:`"));
    };
    let sections = [
        "version",
        "renderer",
        "ethernets",
        "bonds",
        "bridges",
        "vlans",
        "vrfs",
        "tunnels",
        "dummy-devices",
    ];
    let mut version = None;
    for (key, v) in network.map(&sections)? {
        match key.as_str() {
            "version" => {
                if v.str()? != "2" {
                    return Err(v.err("only `version: 2` is supported"));
                }
                version = Some(());
            }
            "renderer" => renderer(&v)?,
            section => {
                for (id, d) in v.entries()? {
                    let device = device(section, &id, &d)?;
                    if let Some(prev) = config.devices.get(&id) {
                        return Err(d.err(format!(
                            "id `{id}` is already defined at {} (ids are unique across sections)",
                            prev.mark
                        )));
                    }
                    config.devices.insert(id, device);
                }
            }
        }
    }
    // netplan itself accepts documents without `version` (its own vrf.yaml example is one),
    // so an absent version means 2; any other value is refused above.
    let _ = version;
    validate(&config)?;
    Ok(config)
}

fn device(section: &str, id: &str, at: &At<'_>) -> Result<Device, ConfigError> {
    let kind_keys: &[&'static str] = match section {
        "ethernets" => &["match", "set-name"],
        "bonds" => &["interfaces", "parameters"],
        "bridges" => &["interfaces", "parameters"],
        "vlans" => &["id", "link"],
        "vrfs" => &["table", "interfaces"],
        "tunnels" => &[
            "mode",
            "id",
            "local",
            "remote",
            "port",
            "mac-learning",
            "neigh-suppress",
        ],
        _ => &[],
    };
    let entries = at.map(&keys(kind_keys))?;
    let get = |k: &str| entries.iter().find(|(key, _)| key == k).map(|(_, v)| v);
    let need = |k: &str| get(k).ok_or_else(|| at.err(format!("`{k}` is required")));
    let is_ethernet_with_match = section == "ethernets" && get("match").is_some();
    if !is_ethernet_with_match && !valid_ifname(id) {
        return Err(at.err(format!(
            "`{id}` is not a valid interface name (1-15 characters, no '/', ':' or spaces)"
        )));
    }
    let kind = match section {
        "ethernets" => {
            let matcher = match get("match") {
                Some(m) => {
                    let mut out = Match::default();
                    for (k, v) in m.map(&["name", "macaddress", "driver"])? {
                        match k.as_str() {
                            "name" => out.name = Some(v.str()?.to_string()),
                            "macaddress" => out.macaddress = Some(mac(&v)?),
                            _ => out.driver = Some(v.str()?.to_string()),
                        }
                    }
                    Some(out)
                }
                None => None,
            };
            let set_name = match get("set-name") {
                Some(v) => {
                    let n = v.str()?;
                    if !valid_ifname(n) {
                        return Err(v.err(format!("`{n}` is not a valid interface name")));
                    }
                    if matcher.is_none() {
                        return Err(v.err("`set-name` requires `match`"));
                    }
                    Some(n.to_string())
                }
                None => None,
            };
            Kind::Ethernet { matcher, set_name }
        }
        "bonds" => Kind::Bond {
            interfaces: get("interfaces")
                .map(At::names)
                .transpose()?
                .unwrap_or_default(),
            params: get("parameters")
                .map(bond_params)
                .transpose()?
                .unwrap_or_default(),
        },
        "bridges" => Kind::Bridge {
            interfaces: get("interfaces")
                .map(At::names)
                .transpose()?
                .unwrap_or_default(),
            params: match get("parameters") {
                Some(p) => bridge_params(p)?,
                None => BridgeParams {
                    stp: true,
                    ..Default::default()
                },
            },
        },
        "vlans" => {
            let idv = need("id")?;
            let id: u16 = idv.num("a VLAN id")?;
            if !(1..=4094).contains(&id) {
                return Err(idv.err(format!("VLAN id {id} is outside 1..4094")));
            }
            Kind::Vlan {
                id,
                link: need("link")?.str()?.to_string(),
            }
        }
        "vrfs" => {
            let t = need("table")?;
            let table: u32 = t.num("a table number")?;
            if table == 0 || table == 253 || table == 254 || table == 255 {
                return Err(t.err(format!("table {table} is reserved by the kernel")));
            }
            Kind::Vrf {
                table,
                interfaces: get("interfaces")
                    .map(At::names)
                    .transpose()?
                    .unwrap_or_default(),
            }
        }
        "tunnels" => {
            let mode = need("mode")?;
            if mode.str()? != "vxlan" {
                return Err(mode.err(format!(
                    "tunnel mode {:?} is not supported by cairn (only vxlan)",
                    mode.str()?
                )));
            }
            let idv = need("id")?;
            let vni: u32 = idv.num("a VNI")?;
            if !(1..=16_777_215).contains(&vni) {
                return Err(idv.err(format!("VNI {vni} is outside 1..16777215")));
            }
            Kind::Vxlan(Vxlan {
                id: vni,
                local: get("local").map(At::ip).transpose()?,
                remote: get("remote").map(At::ip).transpose()?,
                port: get("port").map(|p| p.num("a UDP port")).transpose()?,
                mac_learning: get("mac-learning")
                    .map(At::bool)
                    .transpose()?
                    .unwrap_or(true),
                neigh_suppress: get("neigh-suppress")
                    .map(At::bool)
                    .transpose()?
                    .unwrap_or(false),
            })
        }
        _ => Kind::Dummy,
    };
    if section == "vrfs" {
        // A VRF device carries routes and rules; addresses belong on its members.
        for k in ["addresses", "dhcp4", "macaddress"] {
            if let Some(v) = get(k) {
                return Err(v.err(format!("`{k}` is not valid on a VRF (put it on a member)")));
            }
        }
    }
    let vrf_table = match &kind {
        Kind::Vrf { table, .. } => Some(*table),
        _ => None,
    };
    let common = common(&entries, vrf_table)?;
    Ok(Device {
        id: id.to_string(),
        kind,
        common,
        mark: at.node.mark.clone(),
    })
}

/// Cross-device checks: references exist, a device has at most one controller.
fn validate(config: &Config) -> Result<(), ConfigError> {
    let mut controller: BTreeMap<&str, &str> = BTreeMap::new();
    for dev in config.devices.values() {
        let err = |key: &str, message: String| ConfigError {
            mark: dev.mark.clone(),
            path: format!("network.{}.{key}", dev.id),
            message,
        };
        let members: &[String] = match &dev.kind {
            Kind::Bond { interfaces, .. }
            | Kind::Bridge { interfaces, .. }
            | Kind::Vrf { interfaces, .. } => interfaces,
            _ => &[],
        };
        for m in members {
            let Some(member) = config.devices.get(m) else {
                return Err(err("interfaces", format!("member `{m}` is not defined")));
            };
            if let Some(prev) = controller.insert(m, &dev.id)
                && !(matches!(dev.kind, Kind::Vrf { .. }) || is_vrf(config, prev))
            {
                return Err(err(
                    "interfaces",
                    format!("`{m}` is already a member of `{prev}`"),
                ));
            }
            if matches!(dev.kind, Kind::Bond { .. })
                && !matches!(member.kind, Kind::Ethernet { .. } | Kind::Dummy)
            {
                return Err(err(
                    "interfaces",
                    format!("bond member `{m}` must be an ethernet or dummy device"),
                ));
            }
            if (!member.common.addresses.is_empty() || member.common.dhcp4)
                && !matches!(dev.kind, Kind::Vrf { .. })
            {
                return Err(err(
                    "interfaces",
                    format!("member `{m}` has addresses; put them on `{}`", dev.id),
                ));
            }
        }
        if let Kind::Bond { interfaces, params } = &dev.kind
            && let Some(p) = &params.primary
            && !interfaces.contains(p)
        {
            return Err(err(
                "parameters.primary",
                format!("primary `{p}` is not one of the bond's interfaces"),
            ));
        }
        if let Kind::Vlan { link, .. } = &dev.kind
            && !config.devices.contains_key(link)
        {
            return Err(err("link", format!("link `{link}` is not defined")));
        }
        for (i, r) in dev.common.routes.iter().enumerate() {
            if r.kind == "unicast"
                && r.via.is_none()
                && r.scope.as_deref() == Some("global")
                && !r.on_link
            {
                return Err(err(
                    &format!("routes[{i}]"),
                    "a global-scope route without `via` needs `on-link: true`".into(),
                ));
            }
        }
    }
    let vrf_tables: BTreeSet<u32> = config
        .devices
        .values()
        .filter_map(|d| match d.kind {
            Kind::Vrf { table, .. } => Some(table),
            _ => None,
        })
        .collect();
    if vrf_tables.len()
        != config
            .devices
            .values()
            .filter(|d| matches!(d.kind, Kind::Vrf { .. }))
            .count()
    {
        let dev = config
            .devices
            .values()
            .find(|d| matches!(d.kind, Kind::Vrf { .. }))
            .map(|d| d.mark.clone());
        return Err(ConfigError {
            mark: dev.unwrap_or_else(|| Mark {
                file: "".into(),
                line: 0,
                col: 0,
            }),
            path: "network.vrfs".into(),
            message: "two VRFs use the same table".into(),
        });
    }
    Ok(())
}

fn is_vrf(config: &Config, id: &str) -> bool {
    config
        .devices
        .get(id)
        .is_some_and(|d| matches!(d.kind, Kind::Vrf { .. }))
}

/// Shell-style glob (`*`, `?`, `[abc]`, `[a-z]`) as netplan uses for `match`.
pub fn glob(pattern: &str, text: &str) -> bool {
    fn rec(p: &[char], t: &[char]) -> bool {
        match p.first() {
            None => t.is_empty(),
            Some('*') => (0..=t.len()).any(|i| rec(&p[1..], &t[i..])),
            Some('?') => !t.is_empty() && rec(&p[1..], &t[1..]),
            Some('[') => {
                let Some(end) = p.iter().position(|&c| c == ']') else {
                    return t.first() == Some(&'[') && rec(&p[1..], &t[1..]);
                };
                let Some(&c) = t.first() else { return false };
                let class = &p[1..end];
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == '-' {
                        hit |= class[i] <= c && c <= class[i + 2];
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit && rec(&p[end + 1..], &t[1..])
            }
            Some(&c) => t.first() == Some(&c) && rec(&p[1..], &t[1..]),
        }
    }
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    rec(&p, &t)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every key the issue lists, in one document.
    const FULL: &str = r#"
network:
  version: 2
  renderer: networkd
  ethernets:
    eno1:
      match: {name: "en*", macaddress: "52:54:00:AA:BB:01", driver: "e1000*"}
      set-name: lan0
      mtu: 9000
      optional: true
    eth1: {dhcp4: true, nameservers: {addresses: [10.0.0.53], search: [lab]}}
    eth2: {}
    eth3: {}
  bonds:
    bond0:
      interfaces: [eth2, eth3]
      macaddress: "02:00:00:00:00:01"
      parameters:
        mode: 802.3ad
        mii-monitor-interval: 100
        lacp-rate: fast
        transmit-hash-policy: layer3+4
        up-delay: 200ms
        down-delay: 1s
        min-links: 1
  bridges:
    br0:
      interfaces: [vx0]
      parameters: {stp: false, forward-delay: 4, priority: 4096}
      addresses: [192.168.10.1/24, "fd00::1/64"]
  vlans:
    bond0.100: {id: 100, link: bond0, addresses: [10.100.0.2/24]}
  vrfs:
    vrf-a:
      table: 1000
      interfaces: [br0]
      routes: [{to: default, via: 192.168.10.254}]
      routing-policy: [{from: 192.168.10.0/24, table: 1000, priority: 100, mark: 7}]
  tunnels:
    vx0:
      mode: vxlan
      id: 100
      local: 10.0.0.1
      remote: 10.0.0.2
      port: 4789
      mac-learning: false
      neigh-suppress: true
  dummy-devices:
    dm0:
      addresses: [10.9.9.9/32]
      routes:
        - {to: 10.8.0.0/16, via: 10.9.9.1, metric: 50, table: 200, on-link: true}
        - {to: 10.7.0.0/16, type: blackhole}
        - {to: 10.6.0.1, scope: link}
"#;

    #[test]
    fn every_listed_key_parses() {
        let c = parse_str("full.yaml", FULL).unwrap();
        assert_eq!(c.devices.len(), 10);
        let Kind::Bond { params, .. } = &c.devices["bond0"].kind else {
            panic!()
        };
        assert_eq!(params.mode, 4);
        assert_eq!(params.up_delay, Some(200));
        assert_eq!(params.down_delay, Some(1000));
        let Kind::Vxlan(v) = &c.devices["vx0"].kind else {
            panic!()
        };
        assert!(!v.mac_learning && v.neigh_suppress);
        assert_eq!(c.devices["dm0"].common.routes[0].table, Some(200));
        assert_eq!(c.devices["dm0"].common.routes[2].to.prefix, 32);
        assert!(c.devices["eth1"].common.dhcp4);
        assert_eq!(
            c.devices["eno1"].common.mtu,
            Some(9000),
            "ethernet keys kept"
        );
    }

    fn err(text: &str) -> String {
        match parse_str("t.yaml", text) {
            Err(LoadError::Invalid(e)) => e.to_string(),
            Err(e) => e.to_string(),
            Ok(_) => panic!("accepted: {text}"),
        }
    }

    #[test]
    fn unsupported_key_is_named_with_file_line_column_and_path() {
        let e = err("network:\n  version: 2\n  ethernets:\n    eth0:\n      wakeonlan: true\n");
        assert!(
            e.starts_with(
                "t.yaml:5:7: network.ethernets.eth0.wakeonlan: key `wakeonlan` is not supported"
            ),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_position() {
        let e = err(
            "network:\n  version: 2\n  ethernets:\n    eth0:\n      addresses: [10.0.0.1/24, 10.0.0.300/24]\n",
        );
        assert!(
            e.starts_with("t.yaml:5:32: network.ethernets.eth0.addresses[1]:"),
            "{e}"
        );
        let e = err("network: {version: 2, vlans: {v1: {id: 5000, link: eth0}}}");
        assert!(
            e.contains("network.vlans.v1.id: VLAN id 5000 is outside 1..4094"),
            "{e}"
        );
        let e = err("network: {version: 2, vlans: {v1: {id: 5, link: nope}}}");
        assert!(e.contains("link `nope` is not defined"), "{e}");
        let e = err("network: {version: 2, tunnels: {t: {mode: gre, id: 1}}}");
        assert!(e.contains("tunnel mode \"gre\" is not supported"), "{e}");
        let e = err("network: {version: 3}");
        assert!(e.contains("only `version: 2`"), "{e}");
        let e = err(
            "network:\n  version: 2\n  ethernets: {eth0: {}}\n  bonds: {b: {interfaces: [eth0]}}\n  bridges: {br: {interfaces: [eth0]}}\n",
        );
        assert!(e.contains("already a member of `b`"), "{e}");
    }

    #[test]
    fn files_merge_in_lexical_order_across_directories() {
        let root = tempfile::tempdir().unwrap();
        let w = |dir: &str, name: &str, text: &str| {
            let d = root.path().join(dir);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(name), text).unwrap();
        };
        w(
            "lib/netplan",
            "10-base.yaml",
            "network: {version: 2, ethernets: {eth0: {mtu: 1400, addresses: [10.0.0.1/24]}}}\n",
        );
        w(
            "etc/netplan",
            "20-site.yaml",
            "network: {ethernets: {eth0: {mtu: 9000}, eth1: {dhcp4: true}}}\n",
        );
        // Same name in a later directory shadows the earlier file entirely.
        w(
            "etc/netplan",
            "30-x.yaml",
            "network: {ethernets: {eth2: {}}}\n",
        );
        w(
            "run/netplan",
            "30-x.yaml",
            "network: {ethernets: {eth3: {}}}\n",
        );
        w("etc/netplan", "notes.txt", "ignored: not yaml\n");
        let c = load_root(root.path()).unwrap();
        assert_eq!(c.devices["eth0"].common.mtu, Some(9000));
        assert_eq!(c.devices["eth0"].common.addresses.len(), 1);
        assert!(c.devices["eth1"].common.dhcp4);
        assert!(c.devices.contains_key("eth3") && !c.devices.contains_key("eth2"));
        assert_eq!(c.files.len(), 3);
        // An error in a later file names that file.
        w(
            "run/netplan",
            "40-bad.yaml",
            "network:\n  ethernets:\n    eth0: {mtu: big}\n",
        );
        let e = load_root(root.path()).unwrap_err().to_string();
        assert!(
            e.contains("40-bad.yaml:3:") && e.contains("network.ethernets.eth0.mtu"),
            "{e}"
        );
    }

    #[test]
    fn glob_matches_like_netplan() {
        assert!(glob("en*", "enp3s0"));
        assert!(glob("eth[0-3]", "eth2"));
        assert!(!glob("eth[0-3]", "eth7"));
        assert!(glob("e?h0", "eth0"));
        assert!(!glob("en*", "eth0"));
    }
}
