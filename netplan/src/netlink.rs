//! The one module that talks to the kernel: reads a [`Kernel`] snapshot and performs [`Op`]s
//! through rtnetlink, counting every write (the idempotence guarantee is "a second apply
//! makes zero writes", and this counter is how it is checked).
//!
//! Writes are raw requests built with rtnetlink's message builders and sent on its connection
//! (its request builders each wait for their answer, which would forbid pipelining). Caveats
//! of rtnetlink 0.24 worked around here (CRATES.md): FDB entries are appended with
//! `NLM_F_APPEND` (the builder sets `NLM_F_EXCL`, which allows only one all-zero entry per
//! VXLAN device); bridge/bond/VRF membership is `RTM_SETLINK` with `IFLA_MASTER`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::stream::FuturesOrdered;
use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{
    NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage,
    NetlinkPayload,
};
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage};
use rtnetlink::packet_route::link::{
    BondMode, InfoBond, InfoBridge, InfoData, InfoVlan, InfoVrf, InfoVxlan, LinkAttribute,
    LinkExtentMask, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::{AddressFamily, RouteNetlinkMessage};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBond, LinkBridge, LinkDummy, LinkUnspec, LinkVlan, LinkVrf,
    LinkVxlan, RouteMessageBuilder,
};

use crate::plan::Op;
use crate::state::{Kernel, KernelLink, LinkKind, RouteSpec, RuleSpec, mac_bytes, mac_string};

/// A netlink failure, naming the operation.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Opening the netlink socket failed.
    #[error("opening a netlink socket")]
    Connect(#[source] std::io::Error),
    /// A request failed.
    #[error("{what}")]
    Request {
        /// What was attempted.
        what: String,
        /// The kernel's answer.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// A name did not resolve to a link.
    #[error("no link named {0}")]
    NoLink(String),
}

/// Reading and writing kernel network state. The real implementation is [`RtNetlink`];
/// everything above it (plan, apply, rollback) only sees this trait.
#[allow(async_fn_in_trait)]
pub trait Netlink {
    /// Reads the current state.
    async fn read(&mut self) -> Result<Kernel, NetlinkError>;
    /// Performs changes in order and says how each went, in order. Sending stops at the
    /// first failure seen, so the answer may be shorter than `ops`; changes already sent by
    /// then are answered too (an implementation may send several before reading answers).
    async fn write_all(&mut self, ops: &[Op]) -> Vec<Result<(), NetlinkError>>;
    /// Performs one change.
    async fn write(&mut self, op: &Op) -> Result<(), NetlinkError> {
        let mut done = self.write_all(std::slice::from_ref(op)).await;
        done.pop().unwrap_or(Ok(()))
    }
    /// Writes performed so far.
    fn writes(&self) -> u64;
}

/// rtnetlink in the current network namespace.
///
/// Writes are pipelined like `ip -batch` streams its lines, but without waiting for each
/// answer: up to `WINDOW` (64) requests are in flight on the one socket. The kernel handles one
/// socket's requests in the order sent, so a request may name a link an earlier one creates.
pub struct RtNetlink {
    handle: Handle,
    writes: u64,
    /// Name to ifindex, from the last listing and the changes sent since.
    index: BTreeMap<String, u32>,
    /// Links were created since the last listing (an unknown name may be one of them).
    stale: bool,
}

/// Requests in flight before the oldest answer is awaited: enough to keep the kernel busy,
/// few enough that the answers fit the socket's receive buffer (the kernel drops answers that
/// do not fit, and a lost acknowledgement would leave its request waiting forever).
const WINDOW: usize = 64;

/// Waits for the kernel's answer to one request.
async fn answer(
    what: String,
    sent: Result<impl futures::Stream<Item = NetlinkMessage<RouteNetlinkMessage>>, NetlinkError>,
) -> Result<(), NetlinkError> {
    let mut resp = std::pin::pin!(sent?);
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::Error(e) = m.payload {
            return Err(NetlinkError::Request {
                what,
                source: Box::new(rtnetlink::Error::NetlinkError(e)),
            });
        }
    }
    Ok(())
}

fn req(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetlinkError {
    let what = what.into();
    move |source| NetlinkError::Request {
        what,
        source: Box::new(source),
    }
}

impl RtNetlink {
    /// Opens a connection; its driver task runs on the current tokio runtime.
    pub fn connect() -> Result<Self, NetlinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Connect)?;
        tokio::spawn(conn);
        Ok(Self {
            handle,
            writes: 0,
            index: BTreeMap::new(),
            stale: true,
        })
    }

    /// The ifindex of `name`. Links created since the index was last read are resolved by
    /// one fresh listing (sent after, so answered after, every request already in flight),
    /// which is cheaper than one lookup per new name.
    async fn index_of(&mut self, name: &str) -> Result<u32, NetlinkError> {
        if let Some(i) = self.index.get(name) {
            return Ok(*i);
        }
        if self.stale {
            let mut links = self.list_links();
            let mut index = BTreeMap::new();
            while let Some(msg) = links.try_next().await.map_err(req("listing links"))? {
                if let Some(n) = msg.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(n) => Some(n.clone()),
                    _ => None,
                }) {
                    index.insert(n, msg.header.index);
                }
            }
            self.index = index;
            self.stale = false;
        }
        self.index
            .get(name)
            .copied()
            .ok_or_else(|| NetlinkError::NoLink(name.to_string()))
    }

    /// A dump of all links without their statistics (the kernel skips computing them).
    fn list_links(
        &self,
    ) -> impl futures::Stream<Item = Result<LinkMessage, rtnetlink::Error>> + use<> {
        self.handle
            .link()
            .get()
            .set_filter_mask(AddressFamily::Unspec, vec![LinkExtentMask::SkipStats])
            .execute()
    }

    /// Keeps the name index right after `op` is sent.
    fn note(&mut self, op: &Op) {
        match op {
            Op::AddLink { name, .. } => {
                self.index.remove(name);
                self.stale = true;
            }
            // Deleting a link also deletes the VLANs on it; the plan recreates those with
            // `AddLink`, which drops their stale entries.
            Op::DelLink { name } => {
                self.index.remove(name);
            }
            Op::Rename { from, to } => {
                if let Some(i) = self.index.remove(from) {
                    self.index.insert(to.clone(), i);
                }
            }
            _ => {}
        }
    }

    /// The request that performs `op`, with the flags `ip` uses for it.
    async fn request(
        &mut self,
        op: &Op,
    ) -> Result<NetlinkMessage<RouteNetlinkMessage>, NetlinkError> {
        const SET: u16 = NLM_F_REQUEST | NLM_F_ACK;
        const NEW: u16 = SET | NLM_F_CREATE | NLM_F_EXCL;
        let (msg, flags) = match op {
            Op::AddLink { name, kind } => {
                let parent = match kind {
                    LinkKind::Vlan { parent, .. } => Some(self.index_of(parent).await?),
                    _ => None,
                };
                (
                    RouteNetlinkMessage::NewLink(self.link_message(name, kind, parent)),
                    NEW,
                )
            }
            Op::DelLink { name } => {
                let mut msg = LinkMessage::default();
                msg.header.index = self.index_of(name).await?;
                (RouteNetlinkMessage::DelLink(msg), SET)
            }
            Op::Rename { from, to } => {
                let i = self.index_of(from).await?;
                let msg = LinkUnspec::new_with_index(i).name(to.clone()).build();
                (RouteNetlinkMessage::SetLink(msg), SET)
            }
            Op::SetMtu { name, mtu } => {
                let i = self.index_of(name).await?;
                let msg = LinkUnspec::new_with_index(i).mtu(*mtu).build();
                (RouteNetlinkMessage::SetLink(msg), SET)
            }
            Op::SetMac { name, mac } => {
                let i = self.index_of(name).await?;
                let msg = LinkUnspec::new_with_index(i)
                    .address(mac_bytes(mac))
                    .build();
                (RouteNetlinkMessage::SetLink(msg), SET)
            }
            Op::SetUp { name, up } => {
                let b = LinkUnspec::new_with_index(self.index_of(name).await?);
                let msg = if *up { b.up() } else { b.down() }.build();
                (RouteNetlinkMessage::SetLink(msg), SET)
            }
            Op::SetController { name, controller } => {
                let b = LinkUnspec::new_with_index(self.index_of(name).await?);
                let msg = match controller {
                    Some(c) => b.controller(self.index_of(c).await?),
                    None => b.nocontroller(),
                }
                .build();
                (RouteNetlinkMessage::SetLink(msg), SET)
            }
            Op::AddAddress { name, addr, prefix } => {
                let msg = Self::address_message(self.index_of(name).await?, *addr, *prefix);
                (RouteNetlinkMessage::NewAddress(msg), NEW)
            }
            Op::DelAddress { name, addr, prefix } => {
                let msg = Self::address_message(self.index_of(name).await?, *addr, *prefix);
                (RouteNetlinkMessage::DelAddress(msg), SET)
            }
            Op::AddRoute { name, route } => {
                let i = self.index_of(name).await?;
                (
                    RouteNetlinkMessage::NewRoute(Self::route_message(i, route)),
                    NEW,
                )
            }
            Op::DelRoute { name, route } => {
                // Device-less routes (blackhole, ...) have no link.
                let i = self.index_of(name).await.unwrap_or(0);
                (
                    RouteNetlinkMessage::DelRoute(Self::route_message(i, route)),
                    SET,
                )
            }
            Op::AddRule { rule } => (
                RouteNetlinkMessage::NewRule(Self::rule_message(rule)),
                SET | NLM_F_CREATE,
            ),
            Op::DelRule { rule } => (RouteNetlinkMessage::DelRule(Self::rule_message(rule)), SET),
            Op::AddFdb { name, dst } => {
                let i = self.index_of(name).await?;
                (
                    RouteNetlinkMessage::NewNeighbour(Self::fdb_message(i, *dst)),
                    SET | NLM_F_CREATE | NLM_F_APPEND,
                )
            }
            Op::DelFdb { name, dst } => {
                let i = self.index_of(name).await?;
                (
                    RouteNetlinkMessage::DelNeighbour(Self::fdb_message(i, *dst)),
                    SET,
                )
            }
        };
        let mut msg = NetlinkMessage::from(msg);
        msg.header.flags = flags;
        Ok(msg)
    }

    fn address_message(index: u32, addr: IpAddr, prefix: u8) -> AddressMessage {
        match addr {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<Ipv6Addr>::new()
                .index(index)
                .address(a, prefix)
                .build(),
        }
    }

    fn link_message(&self, name: &str, kind: &LinkKind, parent: Option<u32>) -> LinkMessage {
        match kind {
            LinkKind::Existing | LinkKind::Dummy => LinkDummy::new(name).build(),
            LinkKind::Bridge {
                stp,
                forward_delay,
                priority,
            } => {
                let mut info = vec![InfoBridge::StpState(u32::from(*stp).into())];
                if let Some(d) = forward_delay {
                    info.push(InfoBridge::ForwardDelay(*d));
                }
                if let Some(p) = priority {
                    info.push(InfoBridge::Priority(*p));
                }
                LinkBridge::new(name)
                    .set_info_data(InfoData::Bridge(info))
                    .build()
            }
            LinkKind::Bond {
                mode,
                miimon,
                lacp_rate,
                xmit_hash_policy,
                updelay,
                downdelay,
                min_links,
                primary: _,
            } => {
                let mut info = vec![InfoBond::Mode(BondMode::from(*mode))];
                if let Some(v) = miimon {
                    info.push(InfoBond::MiiMon(*v));
                }
                if let Some(v) = updelay {
                    info.push(InfoBond::UpDelay(*v));
                }
                if let Some(v) = downdelay {
                    info.push(InfoBond::DownDelay(*v));
                }
                if let Some(v) = min_links {
                    info.push(InfoBond::MinLinks(*v));
                }
                // The kernel refuses options that do not apply to the mode ("mode dependency
                // failed"); a checkpoint read back from the kernel carries them all.
                if let Some(v) = lacp_rate.filter(|_| *mode == 4) {
                    info.push(InfoBond::AdLacpRate(v.into()));
                }
                if let Some(v) = xmit_hash_policy.filter(|_| matches!(mode, 2 | 4 | 5)) {
                    info.push(InfoBond::XmitHashPolicy(v.into()));
                }
                LinkBond::new(name)
                    .set_info_data(InfoData::Bond(info))
                    .build()
            }
            LinkKind::Vlan { id, .. } => LinkVlan::new(name, parent.unwrap_or(0), *id).build(),
            LinkKind::Vrf { table } => LinkVrf::new(name, *table).build(),
            LinkKind::Vxlan {
                vni,
                local,
                remote,
                port,
                learning,
            } => {
                let mut b = LinkVxlan::new(name, *vni).port(*port).learning(*learning);
                match local {
                    Some(IpAddr::V4(a)) => b = b.local(*a),
                    Some(IpAddr::V6(a)) => b = b.local6(*a),
                    None => {}
                }
                match remote {
                    Some(IpAddr::V4(a)) if a.is_multicast() => b = b.group(*a),
                    Some(IpAddr::V4(a)) => b = b.remote(*a),
                    Some(IpAddr::V6(a)) if a.is_multicast() => b = b.group6(*a),
                    Some(IpAddr::V6(a)) => b = b.remote6(*a),
                    None => {}
                }
                b.build()
            }
        }
    }

    fn route_message(index: u32, r: &RouteSpec) -> RouteMessage {
        let mut msg = RouteMessageBuilder::<IpAddr>::new()
            .destination_prefix(r.dst, r.prefix)
            .map(|b| b.build())
            .unwrap_or_default();
        msg.header.table = if r.table < 256 { r.table as u8 } else { 252 };
        msg.attributes.push(RouteAttribute::Table(r.table));
        msg.header.protocol = RouteProtocol::Static;
        msg.header.scope = RouteScope::from(r.scope);
        msg.header.kind = RouteType::from(r.kind);
        if r.kind == 1 {
            msg.attributes.push(RouteAttribute::Oif(index));
        }
        if let Some(via) = r.via {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(via)));
        }
        if let Some(m) = r.metric {
            msg.attributes.push(RouteAttribute::Priority(m));
        }
        if r.onlink {
            msg.header.flags |= RouteFlags::Onlink;
        }
        msg
    }

    fn rule_message(r: &RuleSpec) -> RuleMessage {
        let mut msg = RuleMessage::default();
        msg.header.family = if r.v6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        msg.header.action = RuleAction::ToTable;
        msg.header.table = if r.table < 256 { r.table as u8 } else { 252 };
        msg.attributes.push(RuleAttribute::Table(r.table));
        if let Some((a, p)) = r.from {
            msg.header.src_len = p;
            msg.attributes.push(RuleAttribute::Source(a));
        }
        if let Some((a, p)) = r.to {
            msg.header.dst_len = p;
            msg.attributes.push(RuleAttribute::Destination(a));
        }
        if let Some(p) = r.priority {
            msg.attributes.push(RuleAttribute::Priority(p));
        }
        if let Some(m) = r.mark {
            msg.attributes.push(RuleAttribute::FwMark(m));
        }
        msg
    }

    fn fdb_message(index: u32, dst: IpAddr) -> NeighbourMessage {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![0; 6]));
        msg.attributes
            .push(NeighbourAttribute::Destination(match dst {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            }));
        msg
    }
}

fn parse_link(msg: &LinkMessage) -> KernelLink {
    let mut link = KernelLink {
        index: msg.header.index,
        name: String::new(),
        kind: LinkKind::Existing,
        kind_name: String::new(),
        mtu: 0,
        mac: String::new(),
        up: msg.header.flags.contains(LinkFlags::Up),
        controller: None,
        driver: None,
    };
    let mut parent = None;
    let mut infos: &[LinkInfo] = &[];
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n.clone(),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::Address(a) => link.mac = mac_string(a),
            LinkAttribute::Controller(c) => link.controller = Some(*c),
            LinkAttribute::Link(l) => parent = Some(*l),
            LinkAttribute::LinkInfo(i) => infos = i,
            _ => {}
        }
    }
    let mut data = None;
    for info in infos {
        match info {
            LinkInfo::Kind(k) => link.kind_name = k.to_string(),
            LinkInfo::Data(d) => data = Some(d),
            _ => {}
        }
    }
    link.kind = match (link.kind_name.as_str(), data) {
        ("dummy", _) => LinkKind::Dummy,
        ("bridge", Some(InfoData::Bridge(b))) => {
            let mut stp = false;
            let mut forward_delay = None;
            let mut priority = None;
            for i in b {
                match i {
                    InfoBridge::StpState(s) => stp = u32::from(*s) != 0,
                    InfoBridge::ForwardDelay(d) => forward_delay = Some(*d),
                    InfoBridge::Priority(p) => priority = Some(*p),
                    _ => {}
                }
            }
            LinkKind::Bridge {
                stp,
                forward_delay,
                priority,
            }
        }
        ("bond", Some(InfoData::Bond(b))) => {
            let mut k = (0u8, None, None, None, None, None, None);
            for i in b {
                match i {
                    InfoBond::Mode(m) => k.0 = u8::from(*m),
                    InfoBond::MiiMon(v) => k.1 = Some(*v),
                    InfoBond::AdLacpRate(v) => k.2 = Some(u8::from(*v)),
                    InfoBond::XmitHashPolicy(v) => k.3 = Some(u8::from(*v)),
                    InfoBond::UpDelay(v) => k.4 = Some(*v),
                    InfoBond::DownDelay(v) => k.5 = Some(*v),
                    InfoBond::MinLinks(v) => k.6 = Some(*v),
                    _ => {}
                }
            }
            LinkKind::Bond {
                mode: k.0,
                miimon: k.1,
                lacp_rate: k.2,
                xmit_hash_policy: k.3,
                updelay: k.4,
                downdelay: k.5,
                min_links: k.6,
                primary: None,
            }
        }
        ("vlan", Some(InfoData::Vlan(v))) => LinkKind::Vlan {
            id: v
                .iter()
                .find_map(|i| match i {
                    InfoVlan::Id(id) => Some(*id),
                    _ => None,
                })
                .unwrap_or(0),
            // Resolved to a name by the caller, which has all links.
            parent: parent.map(|p| format!("#{p}")).unwrap_or_default(),
        },
        ("vrf", Some(InfoData::Vrf(v))) => LinkKind::Vrf {
            table: v
                .iter()
                .find_map(|i| match i {
                    InfoVrf::TableId(t) => Some(*t),
                    _ => None,
                })
                .unwrap_or(0),
        },
        ("vxlan", Some(InfoData::Vxlan(v))) => {
            let mut vni = 0;
            let mut local = None;
            let mut remote = None;
            let mut port = 4789;
            let mut learning = true;
            for i in v {
                match i {
                    InfoVxlan::Id(x) => vni = *x,
                    InfoVxlan::Local(a) => local = Some(IpAddr::V4(*a)),
                    InfoVxlan::Local6(a) => local = Some(IpAddr::V6(*a)),
                    InfoVxlan::Group(a) if !a.is_unspecified() => remote = Some(IpAddr::V4(*a)),
                    InfoVxlan::Group6(a) if !a.is_unspecified() => remote = Some(IpAddr::V6(*a)),
                    InfoVxlan::Port(p) => port = *p,
                    InfoVxlan::Learning(l) => learning = *l,
                    _ => {}
                }
            }
            LinkKind::Vxlan {
                vni,
                local,
                remote,
                port,
                learning,
            }
        }
        _ => LinkKind::Existing,
    };
    // Only devices without a kind (NICs) have a driver; virtual links are not looked up.
    if link.kind_name.is_empty() {
        link.driver = std::fs::read_link(format!("/sys/class/net/{}/device/driver", link.name))
            .ok()
            .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
    }
    link
}

fn route_addr(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(IpAddr::V4(*v)),
        RouteAddress::Inet6(v) => Some(IpAddr::V6(*v)),
        _ => None,
    }
}

impl Netlink for RtNetlink {
    async fn read(&mut self) -> Result<Kernel, NetlinkError> {
        let mut kernel = Kernel::default();
        let mut links = self.list_links();
        while let Some(msg) = links.try_next().await.map_err(req("listing links"))? {
            kernel.links.push(parse_link(&msg));
        }
        let names: BTreeMap<u32, String> = kernel
            .links
            .iter()
            .map(|l| (l.index, l.name.clone()))
            .collect();
        for link in &mut kernel.links {
            if let LinkKind::Vlan { parent, .. } = &mut link.kind
                && let Some(idx) = parent.strip_prefix('#').and_then(|p| p.parse::<u32>().ok())
            {
                *parent = names.get(&idx).cloned().unwrap_or_default();
            }
        }
        self.index = names.into_iter().map(|(i, n)| (n, i)).collect();
        self.stale = false;

        let mut addrs = self.handle.address().get().execute();
        while let Some(msg) = addrs.try_next().await.map_err(req("listing addresses"))? {
            let ip = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(ip) => Some(*ip),
                _ => None,
            });
            let local = msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            });
            let Some(ip) = local.or(ip) else { continue };
            if let IpAddr::V6(v6) = ip
                && (v6.segments()[0] & 0xffc0) == 0xfe80
            {
                continue;
            }
            kernel
                .addresses
                .entry(msg.header.index)
                .or_default()
                .push((ip, msg.header.prefix_len));
        }

        // A request without a destination is a dump of every table.
        let dumps = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for filter in dumps {
            let mut routes = self.handle.route().get(filter).execute();
            while let Some(msg) = routes.try_next().await.map_err(req("listing routes"))? {
                let h = &msg.header;
                if h.protocol == RouteProtocol::Kernel
                    || h.kind == RouteType::Local
                    || h.kind == RouteType::Broadcast
                    || h.kind == RouteType::Multicast
                    || h.table == 255
                {
                    continue;
                }
                let mut table = u32::from(h.table);
                let mut oif = None;
                let mut dst = None;
                let mut via = None;
                let mut metric = None;
                for a in &msg.attributes {
                    match a {
                        RouteAttribute::Table(t) => table = *t,
                        RouteAttribute::Oif(o) => oif = Some(*o),
                        RouteAttribute::Destination(d) => dst = route_addr(d),
                        RouteAttribute::Gateway(g) => via = route_addr(g),
                        RouteAttribute::Priority(p) => metric = Some(*p),
                        _ => {}
                    }
                }
                if table == 255 {
                    continue;
                }
                let is_v6 = h.address_family == AddressFamily::Inet6;
                // IPv6 routes always carry a metric (1024 by default); IPv4 only when set.
                if is_v6 && metric == Some(1024) {
                    metric = None;
                }
                let spec = RouteSpec {
                    dst: dst.unwrap_or(if is_v6 {
                        IpAddr::V6(0.into())
                    } else {
                        IpAddr::V4(0.into())
                    }),
                    prefix: h.destination_prefix_length,
                    via,
                    table,
                    metric,
                    scope: u8::from(h.scope),
                    onlink: h.flags.contains(RouteFlags::Onlink),
                    kind: u8::from(h.kind),
                };
                kernel
                    .routes
                    .entry(oif.unwrap_or(0))
                    .or_default()
                    .push(spec);
            }
        }

        for v6 in [false, true] {
            let version = if v6 {
                rtnetlink::IpVersion::V6
            } else {
                rtnetlink::IpVersion::V4
            };
            let mut rules = self.handle.rule().get(version).execute();
            while let Some(msg) = rules.try_next().await.map_err(req("listing rules"))? {
                let mut spec = RuleSpec {
                    from: None,
                    to: None,
                    table: u32::from(msg.header.table),
                    priority: None,
                    mark: None,
                    v6,
                };
                for a in &msg.attributes {
                    match a {
                        RuleAttribute::Source(s) => spec.from = Some((*s, msg.header.src_len)),
                        RuleAttribute::Destination(d) => spec.to = Some((*d, msg.header.dst_len)),
                        RuleAttribute::Table(t) => spec.table = *t,
                        RuleAttribute::Priority(p) => spec.priority = Some(*p),
                        RuleAttribute::FwMark(m) => spec.mark = Some(*m),
                        _ => {}
                    }
                }
                kernel.rules.push(spec);
            }
        }

        let mut neigh = self
            .handle
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        while let Some(msg) = neigh.try_next().await.map_err(req("listing FDB"))? {
            let mut lla = None;
            let mut dst = None;
            for a in &msg.attributes {
                match a {
                    NeighbourAttribute::LinkLayerAddress(l) => lla = Some(l.clone()),
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => {
                        dst = Some(IpAddr::V4(*v))
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => {
                        dst = Some(IpAddr::V6(*v))
                    }
                    // In AF_BRIDGE messages the destination is not decoded by family.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        dst = match b.len() {
                            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
                            _ => None,
                        }
                    }
                    _ => {}
                }
            }
            if let (Some(l), Some(d)) = (lla, dst)
                && l.iter().all(|b| *b == 0)
            {
                kernel.fdb.entry(msg.header.ifindex).or_default().push(d);
            }
        }
        Ok(kernel)
    }

    async fn write_all(&mut self, ops: &[Op]) -> Vec<Result<(), NetlinkError>> {
        let mut done = Vec::with_capacity(ops.len());
        let mut in_flight = FuturesOrdered::new();
        let mut failed = false;
        for op in ops {
            while in_flight.len() >= WINDOW && !failed {
                if let Some(r) = in_flight.next().await {
                    let r: Result<(), NetlinkError> = r;
                    failed = r.is_err();
                    done.push(r);
                }
            }
            if failed {
                break;
            }
            tracing::debug!(%op, "netlink write");
            let what = op.to_string();
            let sent = match self.request(op).await {
                Ok(msg) => {
                    self.writes += 1;
                    self.note(op);
                    self.handle.request(msg).map_err(req(what.clone()))
                }
                Err(e) => Err(e),
            };
            in_flight.push_back(answer(what, sent));
        }
        while let Some(r) = in_flight.next().await {
            done.push(r);
        }
        done
    }

    fn writes(&self) -> u64 {
        self.writes
    }
}
