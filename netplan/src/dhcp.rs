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
            {
                tracing::info!(iface = %self.iface, address = %ack.yiaddr(), "DHCP lease re-confirmed (init-reboot)");
                return Ok(lease_from(&ack, Some(old)));
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
            {
                tracing::info!(iface = %self.iface, address = %ack.yiaddr(), "DHCP lease obtained");
                return Ok(lease_from(&ack, persisted.as_ref()));
            }
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
                    lease = lease_from(&ack, Some(&lease));
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

/// The lease an ACK grants, with defaults (RFC 2131 T1/T2) for what it leaves out.
pub(crate) fn lease_from(ack: &Message, previous: Option<&Lease>) -> Lease {
    let opts = ack.opts();
    let lease_secs = match opts.get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => *s,
        _ => 3600,
    };
    let prefix = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => u32::from(*m).count_ones() as u8,
        _ => 24,
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let dns = match opts.get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let server = match opts.get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => previous.map(|p| p.server).unwrap_or(ack.siaddr()),
    };
    let t1 = match opts.get(OptionCode::Renewal) {
        Some(DhcpOption::Renewal(t)) => *t,
        _ => lease_secs / 2,
    };
    let t2 = match opts.get(OptionCode::Rebinding) {
        Some(DhcpOption::Rebinding(t)) => *t,
        _ => lease_secs / 8 * 7,
    };
    Lease {
        address: ack.yiaddr(),
        prefix,
        router,
        dns,
        server,
        lease_secs,
        t1_secs: t1,
        t2_secs: t2,
        obtained_unix: now_unix(),
        phase: Phase::Bound,
        renewals: previous.map(|p| p.renewals).unwrap_or(0),
        rebinds: previous.map(|p| p.rebinds).unwrap_or(0),
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
