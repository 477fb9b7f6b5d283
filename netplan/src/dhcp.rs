//! cairn's DHCPv4 client for `dhcp4: true` (RFC 2131: INIT → SELECTING → REQUESTING → BOUND →
//! RENEWING → REBINDING, INIT-REBOOT from a persisted lease, RELEASE on removal).
//!
//! Hand-written state machine over `dhcproto` messages because no maintained async client
//! crate exists that takes an injected netlink layer and persists its lease. Messages go over
//! a UDP socket bound to `0.0.0.0:68` and to the interface (`SO_BINDTODEVICE`), with the
//! BROADCAST flag set so servers answer by broadcast before the address exists; no raw socket.
//!
//! The lease is persisted (`<state-dir>/dhcp-<iface>.json`, atomically) after every change:
//! a restarted client re-requests the same address (INIT-REBOOT) instead of starting over.
//! Addresses carry the lease's lifetime, so the kernel drops them by itself if the client
//! dies; the planner leaves a `dhcp4` link's extra addresses and routes alone.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;

use crate::netlink::{Netlink, NetlinkError};
use crate::plan::Op;
use crate::state::RouteSpec;

/// DHCP client failures.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// Socket or file I/O.
    #[error("{what}")]
    Io {
        /// What was attempted.
        what: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Configuring the address failed.
    #[error("configuring the lease")]
    Netlink(#[from] NetlinkError),
    /// The interface does not exist.
    #[error("no interface {0}")]
    NoInterface(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DhcpError {
    let what = what.into();
    move |source| DhcpError::Io { what, source }
}

/// Where the client is in RFC 2131's state machine (persisted with the lease).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Holding a valid lease.
    Bound,
    /// Past T1: asking the leasing server (unicast).
    Renewing,
    /// Past T2: asking any server (broadcast).
    Rebinding,
}

/// A lease as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Leased address.
    pub address: Ipv4Addr,
    /// Prefix length from the subnet mask.
    pub prefix: u8,
    /// Default gateway.
    pub router: Option<Ipv4Addr>,
    /// DNS servers offered.
    pub dns: Vec<Ipv4Addr>,
    /// The leasing server.
    pub server: Ipv4Addr,
    /// Lease time, seconds.
    pub lease_secs: u32,
    /// Renewal time T1, seconds from `obtained_unix`.
    pub t1_secs: u32,
    /// Rebinding time T2, seconds from `obtained_unix`.
    pub t2_secs: u32,
    /// When the last ACK arrived.
    pub obtained_unix: u64,
    /// Current phase.
    pub phase: Phase,
    /// Successful renewals (unicast) so far.
    pub renewals: u32,
    /// Successful rebinds (broadcast) so far.
    pub rebinds: u32,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Lease {
    fn age(&self) -> u64 {
        now_unix().saturating_sub(self.obtained_unix)
    }

    fn expired(&self) -> bool {
        self.age() >= u64::from(self.lease_secs)
    }
}

/// The lease file of an interface.
pub fn lease_path(state_dir: &Path, iface: &str) -> PathBuf {
    state_dir.join(format!("dhcp-{iface}.json"))
}

fn save(path: &Path, lease: &Lease) -> Result<(), DhcpError> {
    let bytes = serde_json::to_vec_pretty(lease).unwrap_or_default();
    cairn_formats::fsio::atomic_write(path, &bytes)
        .map_err(io(format!("writing {}", path.display())))
}

/// One interface's client.
pub struct Client<N> {
    iface: String,
    mac: Vec<u8>,
    socket: UdpSocket,
    nl: N,
    path: PathBuf,
}

const SERVER_PORT: u16 = 67;
/// How long one request waits for its answer before being resent.
const ANSWER_WAIT: Duration = Duration::from_secs(2);

impl<N: Netlink> Client<N> {
    /// Opens the client's socket on `iface`.
    pub async fn new(iface: &str, mut nl: N, state_dir: &Path) -> Result<Self, DhcpError> {
        let kernel = nl.read().await?;
        let link = kernel
            .link(iface)
            .ok_or_else(|| DhcpError::NoInterface(iface.to_string()))?;
        let mac = crate::state::mac_bytes(&link.mac);
        if !link.up {
            nl.write(&Op::SetUp {
                name: iface.to_string(),
                up: true,
            })
            .await?;
        }
        let sock = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .map_err(io("creating the DHCP socket"))?;
        sock.set_reuse_address(true).map_err(io("SO_REUSEADDR"))?;
        sock.set_broadcast(true).map_err(io("SO_BROADCAST"))?;
        sock.bind_device(Some(iface.as_bytes()))
            .map_err(io(format!("binding the DHCP socket to {iface}")))?;
        sock.bind(&SocketAddr::from(([0, 0, 0, 0], 68)).into())
            .map_err(io("binding UDP port 68"))?;
        sock.set_nonblocking(true).map_err(io("non-blocking"))?;
        let socket = UdpSocket::from_std(sock.into()).map_err(io("registering the socket"))?;
        Ok(Self {
            iface: iface.to_string(),
            mac,
            socket,
            nl,
            path: lease_path(state_dir, iface),
        })
    }

    fn message(&self, xid: u32, kind: MessageType, ciaddr: Ipv4Addr, broadcast: bool) -> Message {
        let unspecified = Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(
            xid,
            ciaddr,
            unspecified,
            unspecified,
            unspecified,
            &self.mac,
        );
        m.set_opcode(Opcode::BootRequest);
        if broadcast {
            m.set_flags(Flags::default().set_broadcast());
        }
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        m.opts_mut().insert(DhcpOption::ParameterRequestList(vec![
            OptionCode::SubnetMask,
            OptionCode::Router,
            OptionCode::DomainNameServer,
            OptionCode::AddressLeaseTime,
            OptionCode::Renewal,
            OptionCode::Rebinding,
        ]));
        m
    }

    /// Sends `msg` to `to` and waits for an answer of one of the `want` types, resending
    /// until `limit`. `None` when nothing answered.
    async fn exchange(
        &self,
        msg: &Message,
        to: Ipv4Addr,
        want: &[MessageType],
        limit: Duration,
    ) -> Result<Option<Message>, DhcpError> {
        let mut buf = Vec::new();
        msg.encode(&mut Encoder::new(&mut buf))
            .map_err(|e| DhcpError::Io {
                what: "encoding DHCP".into(),
                source: std::io::Error::other(e),
            })?;
        let start = Instant::now();
        while start.elapsed() < limit {
            let dest = SocketAddrV4::new(to, SERVER_PORT);
            if let Err(e) = self.socket.send_to(&buf, dest).await {
                // Unicast to a server we cannot route to right now: wait and retry.
                tracing::debug!(error = %e, %dest, "DHCP send failed");
            }
            let round = Instant::now();
            while round.elapsed() < ANSWER_WAIT {
                let mut rx = [0u8; 1500];
                let left = ANSWER_WAIT.saturating_sub(round.elapsed());
                let Ok(got) = tokio::time::timeout(left, self.socket.recv_from(&mut rx)).await
                else {
                    break;
                };
                let (n, _) = got.map_err(io("receiving DHCP"))?;
                let Ok(reply) = Message::decode(&mut Decoder::new(&rx[..n])) else {
                    continue;
                };
                if reply.xid() != msg.xid() || reply.opcode() != Opcode::BootReply {
                    continue;
                }
                if reply.opts().msg_type().is_some_and(|t| want.contains(&t)) {
                    return Ok(Some(reply));
                }
            }
        }
        Ok(None)
    }

    /// The lease of an ACK; a refused one is logged and counts as no answer.
    fn accept(&self, ack: &Message, previous: Option<&Lease>) -> Option<Lease> {
        match lease_from(ack, previous) {
            Ok(lease) => Some(lease),
            Err(why) => {
                tracing::warn!(iface = %self.iface, server = %ack.siaddr(), %why, "DHCP answer refused");
                None
            }
        }
    }

    /// DISCOVER → OFFER → REQUEST → ACK, or INIT-REBOOT when a persisted lease is still valid.
    async fn obtain(&self) -> Result<Lease, DhcpError> {
        let persisted: Option<Lease> = std::fs::read(&self.path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .filter(|l: &Lease| !l.expired());
        if let Some(old) = &persisted {
            let mut req = self.message(
                rand_xid(),
                MessageType::Request,
                Ipv4Addr::UNSPECIFIED,
                true,
            );
            req.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(old.address));
            if let Some(ack) = self
                .exchange(
                    &req,
                    Ipv4Addr::BROADCAST,
                    &[MessageType::Ack, MessageType::Nak],
                    Duration::from_secs(6),
                )
                .await?
                && ack.opts().msg_type() == Some(MessageType::Ack)
                && let Some(lease) = self.accept(&ack, Some(old))
            {
                tracing::info!(iface = %self.iface, address = %lease.address, "DHCP lease re-confirmed (init-reboot)");
                return Ok(lease);
            }
        }
        loop {
            let xid = rand_xid();
            let discover = self.message(xid, MessageType::Discover, Ipv4Addr::UNSPECIFIED, true);
            let Some(offer) = self
                .exchange(
                    &discover,
                    Ipv4Addr::BROADCAST,
                    &[MessageType::Offer],
                    Duration::from_secs(10),
                )
                .await?
            else {
                tracing::warn!(iface = %self.iface, "no DHCP offer, retrying");
                continue;
            };
            let mut req = self.message(xid, MessageType::Request, Ipv4Addr::UNSPECIFIED, true);
            req.opts_mut()
                .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
            if let Some(DhcpOption::ServerIdentifier(s)) =
                offer.opts().get(OptionCode::ServerIdentifier)
            {
                req.opts_mut().insert(DhcpOption::ServerIdentifier(*s));
            }
            if let Some(ack) = self
                .exchange(
                    &req,
                    Ipv4Addr::BROADCAST,
                    &[MessageType::Ack, MessageType::Nak],
                    Duration::from_secs(6),
                )
                .await?
                && ack.opts().msg_type() == Some(MessageType::Ack)
                && let Some(lease) = self.accept(&ack, persisted.as_ref())
            {
                tracing::info!(iface = %self.iface, address = %lease.address, "DHCP lease obtained");
                return Ok(lease);
            }
            // NAK or a refused ACK: pause so a broken server cannot drive a packet storm.
            tokio::time::sleep(ANSWER_WAIT).await;
        }
    }

    fn ops(&self, lease: &Lease, add: bool) -> Vec<Op> {
        let name = self.iface.clone();
        let addr = IpAddr::V4(lease.address);
        let mut ops = vec![if add {
            Op::AddAddress {
                name: name.clone(),
                addr,
                prefix: lease.prefix,
            }
        } else {
            Op::DelAddress {
                name: name.clone(),
                addr,
                prefix: lease.prefix,
            }
        }];
        if let Some(gw) = lease.router {
            let route = RouteSpec {
                dst: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                prefix: 0,
                via: Some(IpAddr::V4(gw)),
                table: 254,
                metric: None,
                scope: 0,
                onlink: false,
                kind: 1,
            };
            ops.push(if add {
                Op::AddRoute { name, route }
            } else {
                Op::DelRoute { name, route }
            });
        }
        if !add {
            ops.reverse();
        }
        ops
    }

    /// Configures the lease's address and default route if missing.
    async fn install(&mut self, lease: &Lease) -> Result<(), DhcpError> {
        let kernel = self.nl.read().await?;
        let index = kernel.link(&self.iface).map(|l| l.index).unwrap_or(0);
        let has_addr = kernel
            .addresses
            .get(&index)
            .is_some_and(|a| a.contains(&(IpAddr::V4(lease.address), lease.prefix)));
        let has_route = lease.router.is_none_or(|gw| {
            kernel.routes.get(&index).is_some_and(|r| {
                r.iter()
                    .any(|r| r.prefix == 0 && r.via == Some(IpAddr::V4(gw)))
            })
        });
        for op in self.ops(lease, true) {
            let needed = match op {
                Op::AddAddress { .. } => !has_addr,
                _ => !has_route,
            };
            if needed {
                self.nl.write(&op).await?;
            }
        }
        Ok(())
    }

    /// Runs until `stop` resolves, then releases the lease and removes its address.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), DhcpError> {
        tokio::pin!(stop);
        let mut lease = tokio::select! {
            l = self.obtain() => l?,
            () = &mut stop => return Ok(()),
        };
        loop {
            save(&self.path, &lease)?;
            self.install(&lease).await?;
            let next = match lease.phase {
                Phase::Bound => lease.t1_secs,
                Phase::Renewing => lease.t2_secs,
                Phase::Rebinding => lease.lease_secs,
            };
            let wait = Duration::from_secs(u64::from(next).saturating_sub(lease.age()));
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut stop => {
                    self.release(&lease).await?;
                    return Ok(());
                }
            }
            lease.phase = match lease.phase {
                Phase::Bound => Phase::Renewing,
                Phase::Renewing => Phase::Rebinding,
                Phase::Rebinding => {
                    tracing::warn!(iface = %self.iface, "DHCP lease expired");
                    for op in self.ops(&lease, false) {
                        let _ = self.nl.write(&op).await;
                    }
                    let _ = std::fs::remove_file(&self.path);
                    lease = tokio::select! {
                        l = self.obtain() => l?,
                        () = &mut stop => return Ok(()),
                    };
                    continue;
                }
            };
            save(&self.path, &lease)?;
            // RENEWING: unicast to the leasing server; REBINDING: broadcast to any server.
            let (to, end) = match lease.phase {
                Phase::Renewing => (lease.server, lease.t2_secs),
                _ => (Ipv4Addr::BROADCAST, lease.lease_secs),
            };
            let mut req = self.message(
                rand_xid(),
                MessageType::Request,
                lease.address,
                to.is_broadcast(),
            );
            req.set_ciaddr(lease.address);
            let limit = Duration::from_secs(u64::from(end).saturating_sub(lease.age()).max(1));
            let answer = tokio::select! {
                a = self.exchange(&req, to, &[MessageType::Ack, MessageType::Nak], limit) => a?,
                () = &mut stop => {
                    self.release(&lease).await?;
                    return Ok(());
                }
            };
            match answer {
                Some(ack) if ack.opts().msg_type() == Some(MessageType::Ack) => {
                    let phase = lease.phase;
                    let Some(extended) = self.accept(&ack, Some(&lease)) else {
                        // A nonsense answer does not end a good lease: the next phase
                        // (rebinding, then a fresh DISCOVER) asks again.
                        continue;
                    };
                    lease = extended;
                    match phase {
                        Phase::Renewing => lease.renewals += 1,
                        _ => lease.rebinds += 1,
                    }
                    tracing::info!(iface = %self.iface, ?phase, "DHCP lease extended");
                }
                Some(_) => {
                    tracing::warn!(iface = %self.iface, "DHCP NAK: starting over");
                    for op in self.ops(&lease, false) {
                        let _ = self.nl.write(&op).await;
                    }
                    let _ = std::fs::remove_file(&self.path);
                    lease = self.obtain().await?;
                }
                // No answer until the phase's end: the loop moves to the next phase.
                None => {}
            }
        }
    }

    /// DHCPRELEASE to the server, then removes the address and the lease file.
    async fn release(&mut self, lease: &Lease) -> Result<(), DhcpError> {
        let mut msg = self.message(rand_xid(), MessageType::Release, lease.address, false);
        msg.set_ciaddr(lease.address);
        msg.opts_mut()
            .insert(DhcpOption::ServerIdentifier(lease.server));
        let mut buf = Vec::new();
        if msg.encode(&mut Encoder::new(&mut buf)).is_ok() {
            let _ = self
                .socket
                .send_to(&buf, SocketAddrV4::new(lease.server, SERVER_PORT))
                .await;
        }
        for op in self.ops(lease, false) {
            let _ = self.nl.write(&op).await;
        }
        let _ = std::fs::remove_file(&self.path);
        tracing::info!(iface = %self.iface, address = %lease.address, "DHCP lease released");
        Ok(())
    }
}

/// The lease an ACK grants, or why it is refused (the caller treats a refused ACK as no
/// answer and asks again later).
pub(crate) fn lease_from(ack: &Message, previous: Option<&Lease>) -> Result<Lease, Refused> {
    let opts = ack.opts();
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => mask_prefix(*m).ok_or(Refused::Mask(*m))?,
        _ => 24,
    };
    let address = ack.yiaddr();
    check_address(address)?;
    let router = match opts.get(OptionCode::Router) {
        // A router that is no unicast host, or is us, would black-hole the default route.
        Some(DhcpOption::Router(r)) => r
            .iter()
            .copied()
            .find(|gw| check_address(*gw).is_ok() && *gw != address),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d
            .iter()
            .copied()
            .filter(|a| check_address(*a).is_ok())
            .collect(),
        _ => Vec::new(),
    };
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => previous.map(|p| p.server).unwrap_or(ack.siaddr()),
    };
    let get = |code| match opts.get(code) {
        Some(
            DhcpOption::AddressLeaseTime(t) | DhcpOption::Renewal(t) | DhcpOption::Rebinding(t),
        ) => Some(*t),
        _ => None,
    };
    let timers = Timers::clamped(
        get(OptionCode::AddressLeaseTime),
        get(OptionCode::Renewal),
        get(OptionCode::Rebinding),
    );
    Ok(Lease {
        address,
        prefix,
        router,
        dns,
        server,
        lease_secs: timers.lease,
        t1_secs: timers.t1,
        t2_secs: timers.t2,
        obtained_unix: now_unix(),
        phase: Phase::Bound,
        renewals: previous.map(|p| p.renewals).unwrap_or(0),
        rebinds: previous.map(|p| p.rebinds).unwrap_or(0),
    })
}

/// Why an ACK is not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    /// The address is no unicast host address.
    #[error("offered address {0} is not a unicast host address")]
    Address(Ipv4Addr),
    /// The subnet mask has holes.
    #[error("subnet mask {0} is not contiguous")]
    Mask(Ipv4Addr),
}

/// An address a host may hold or talk to: not unspecified, broadcast, multicast, loopback
/// or in class E.
fn check_address(a: Ipv4Addr) -> Result<(), Refused> {
    let reserved = a.octets()[0] >= 240;
    if a.is_unspecified() || a.is_broadcast() || a.is_multicast() || a.is_loopback() || reserved {
        return Err(Refused::Address(a));
    }
    Ok(())
}

/// Prefix length of a contiguous, non-empty mask.
fn mask_prefix(mask: Ipv4Addr) -> Option<u8> {
    let bits = u32::from(mask);
    let prefix = bits.leading_ones();
    (prefix > 0 && bits.checked_shl(prefix).unwrap_or(0) == 0).then_some(prefix as u8)
}

/// Lease timers as the client uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Timers {
    lease: u32,
    t1: u32,
    t2: u32,
}

/// dhcpcd's floor: a shorter lease (0 included) would have the client renew, and persist
/// the lease, in a hot loop.
const MIN_LEASE_SECS: u32 = 20;
/// Used when the server gives no lease time.
const DEFAULT_LEASE_SECS: u32 = 3600;

impl Timers {
    /// RFC 2131 §4.4.5 timers from what a server offered: the lease at least
    /// [`MIN_LEASE_SECS`]; T1 and T2 as offered when 0 < T1 < T2 < lease, else the RFC's
    /// defaults (0.5 and 0.875 of the lease) for whichever is out of order.
    fn clamped(lease: Option<u32>, t1: Option<u32>, t2: Option<u32>) -> Self {
        let lease = lease.unwrap_or(DEFAULT_LEASE_SECS).max(MIN_LEASE_SECS);
        let default_t1 = lease / 2;
        let default_t2 = (u64::from(lease) * 7 / 8) as u32;
        let t2 = t2.filter(|t| *t > 0 && *t < lease).unwrap_or(default_t2);
        let t1 = t1
            .filter(|t| *t > 0 && *t < t2)
            .unwrap_or(default_t1.min(t2 - 1));
        Self { lease, t1, t2 }
    }
}

fn rand_xid() -> u32 {
    // Transaction ids only need to differ between exchanges; time and pid suffice.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_are_clamped_to_sane_values() {
        let t = |lease: u32, t1: u32, t2: u32| Timers { lease, t1, t2 };
        // Offered (lease, T1, T2) and the timers used.
        type Row = (Option<u32>, Option<u32>, Option<u32>, Timers);
        let rows: &[Row] = &[
            // As offered when in order.
            (Some(120), Some(3), Some(8), t(120, 3, 8)),
            // No lease time: an hour, RFC defaults.
            (None, None, None, t(3600, 1800, 3150)),
            // Lease 0 or 1 s would renew in a hot loop: floored.
            (Some(0), None, None, t(20, 10, 17)),
            (Some(1), Some(0), Some(0), t(20, 10, 17)),
            // T1 = 0, T1 >= T2, T2 >= lease: the RFC defaults instead.
            (Some(100), Some(0), Some(80), t(100, 50, 80)),
            (Some(100), Some(90), Some(80), t(100, 50, 80)),
            (Some(100), Some(10), Some(100), t(100, 10, 87)),
            (Some(100), Some(95), Some(200), t(100, 50, 87)),
            // An infinite lease keeps its timers finite.
            (
                Some(u32::MAX),
                None,
                None,
                t(u32::MAX, u32::MAX / 2, 3_758_096_383),
            ),
        ];
        for (lease, t1, t2, want) in rows {
            let got = Timers::clamped(*lease, *t1, *t2);
            assert_eq!(got, *want, "offer lease={lease:?} t1={t1:?} t2={t2:?}");
            assert!(
                got.t1 > 0 && got.t1 < got.t2 && got.t2 < got.lease,
                "{got:?}"
            );
        }
    }

    #[test]
    fn nonsense_addresses_and_masks_are_refused() {
        for bad in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "127.0.0.1",
            "240.0.0.1",
        ] {
            let a: Ipv4Addr = bad.parse().unwrap();
            assert_eq!(check_address(a), Err(Refused::Address(a)), "{bad}");
        }
        assert_eq!(check_address(Ipv4Addr::new(10, 9, 0, 100)), Ok(()));
        let m = |s: &str| mask_prefix(s.parse().unwrap());
        assert_eq!(m("255.255.255.0"), Some(24));
        assert_eq!(m("255.255.255.255"), Some(32));
        assert_eq!(m("255.0.255.0"), None);
        assert_eq!(m("0.0.0.0"), None);
    }
}
