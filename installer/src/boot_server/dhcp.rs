//! Proxy DHCP (PXE) on UDP 67 and 4011, answering only the inventory's MACs.
//!
//! Without a lease range it is a proxyDHCP server (PXE spec, RFC 4578): offers carry no
//! address, only `PXEClient`, the server identifier and the boot file, so another DHCP
//! server on the segment keeps handing out addresses. With `--dhcp-range` it also leases
//! addresses to inventory MACs (a segment with no other DHCP server). Packets are parsed and
//! built with dhcproto; the decisions ([`answer`]) are a pure function, tested on their own.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;

use dhcproto::v4::{self, DhcpOption, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

/// What the DHCP side needs to know.
#[derive(Debug, Clone)]
pub struct DhcpConfig {
    /// Our address on the segment.
    pub server_ip: Ipv4Addr,
    /// Prefix length of the segment.
    pub prefix: u8,
    /// Boot file URL per known MAC (lowercase `aa:bb:...`).
    pub boot_urls: BTreeMap<String, String>,
    /// Fixed lease per known MAC when leasing (`--dhcp-range`).
    pub leases: BTreeMap<String, Ipv4Addr>,
    /// TFTP boot file for PXE ROMs that are not iPXE (chainloads iPXE), by UEFI or BIOS.
    pub tftp_bootfile: (String, String),
}

/// Formats a hardware address as `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(chaddr: &[u8]) -> String {
    chaddr
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// The reply to a client message, or `None` to stay silent (unknown MAC, not PXE, not for us).
pub fn answer(cfg: &DhcpConfig, req: &v4::Message, proxy_port: bool) -> Option<v4::Message> {
    if req.opcode() != Opcode::BootRequest {
        return None;
    }
    let mac = mac_text(req.chaddr());
    let url = cfg.boot_urls.get(&mac)?;
    let opts = req.opts();
    let is_pxe = matches!(opts.get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient"));
    let is_ipxe = matches!(opts.get(OptionCode::UserClass), Some(DhcpOption::UserClass(c)) if c.windows(4).any(|w| w == b"iPXE"))
        || opts.get(OptionCode::from(175)).is_some();
    let reply_type = match opts.msg_type()? {
        MessageType::Discover if !proxy_port => MessageType::Offer,
        MessageType::Request => {
            // A request for a lease from another server is not ours to acknowledge.
            if let Some(DhcpOption::ServerIdentifier(id)) = opts.get(OptionCode::ServerIdentifier)
                && *id != cfg.server_ip
            {
                return None;
            }
            MessageType::Ack
        }
        _ => return None,
    };
    let lease = if proxy_port {
        None
    } else {
        cfg.leases.get(&mac).copied()
    };
    // Non-PXE clients (the install environment's udhcpc) only get a lease, when leasing.
    if !is_pxe && lease.is_none() {
        return None;
    }
    let mut r = v4::Message::default();
    r.set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_chaddr(req.chaddr())
        .set_giaddr(req.giaddr())
        .set_siaddr(cfg.server_ip)
        .set_yiaddr(lease.unwrap_or(Ipv4Addr::UNSPECIFIED));
    let bootfile = if is_ipxe {
        url.clone()
    } else {
        let uefi = matches!(opts.get(OptionCode::ClientSystemArchitecture),
            Some(DhcpOption::ClientSystemArchitecture(a)) if u16::from(*a) != 0);
        if uefi {
            cfg.tftp_bootfile.0.clone()
        } else {
            cfg.tftp_bootfile.1.clone()
        }
    };
    if is_pxe {
        r.set_fname_str(&bootfile);
    }
    let o = r.opts_mut();
    o.insert(DhcpOption::MessageType(reply_type));
    o.insert(DhcpOption::ServerIdentifier(cfg.server_ip));
    if is_pxe {
        o.insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
    if lease.is_some() {
        let mask = u32::MAX
            .checked_shl(32 - u32::from(cfg.prefix))
            .unwrap_or(0);
        o.insert(DhcpOption::SubnetMask(Ipv4Addr::from(mask)));
        o.insert(DhcpOption::AddressLeaseTime(3600));
    }
    Some(r)
}

/// Serves DHCP on `interface` until the task is dropped.
pub async fn serve(interface: &str, cfg: Arc<DhcpConfig>, port: u16) -> std::io::Result<()> {
    serve_on(bind(interface, port)?, &cfg, port == 4011).await;
    Ok(())
}

/// The serve loop. It never ends on account of a packet: anyone on the segment can send
/// one, so a datagram that cannot be read or answered is logged and the next one awaited.
async fn serve_on(socket: tokio::net::UdpSocket, cfg: &DhcpConfig, proxy_port: bool) {
    // The largest UDP datagram: a bigger buffer than any DHCP packet, so an oversized one is
    // decoded (and refused) whole instead of truncated.
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // UDP receive errors (an ICMP error for an earlier send) concern one packet.
                tracing::debug!(error = %e, "DHCP receive failed");
                continue;
            }
        };
        let Some((out, dest, mac, file)) = reply_to(cfg, &buf[..n], peer, proxy_port) else {
            continue;
        };
        tracing::info!(%mac, %file, "PXE answer");
        if let Err(e) = socket.send_to(&out, dest).await {
            tracing::warn!(%dest, error = %e, "sending the DHCP answer failed");
        }
    }
}

/// The encoded answer to one datagram and where it goes, or `None` to stay silent.
pub(crate) fn reply_to(
    cfg: &DhcpConfig,
    packet: &[u8],
    peer: SocketAddr,
    proxy_port: bool,
) -> Option<(Vec<u8>, SocketAddr, String, String)> {
    let req = v4::Message::decode(&mut Decoder::new(packet)).ok()?;
    // dhcproto decodes any hardware address length but its `chaddr()` panics past 16 (the
    // field's size): such a datagram would take the boot server down (found by fuzzing).
    if usize::from(req.hlen()) > 16 {
        return None;
    }
    // Proxy requests on 4011 are answered to their sender; port 0 cannot be sent to.
    if proxy_port && peer.port() == 0 {
        tracing::debug!(%peer, "ignoring a proxy DHCP request from port 0");
        return None;
    }
    let reply = answer(cfg, &req, proxy_port)?;
    let mut out = Vec::new();
    reply.encode(&mut Encoder::new(&mut out)).ok()?;
    // Clients without an address get a broadcast; proxy requests on 4011 come from one.
    let dest = if proxy_port {
        peer
    } else {
        SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::BROADCAST, 68))
    };
    let file = String::from_utf8_lossy(reply.fname().unwrap_or_default()).into_owned();
    Some((out, dest, mac_text(req.chaddr()), file))
}

/// A UDP socket on `port`, bound to `interface` only, allowed to broadcast.
pub fn bind(interface: &str, port: u16) -> std::io::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    tokio::net::UdpSocket::from_std(s.into())
}

/// `--preflight`: broadcasts PXE DHCPDISCOVERs on `interface` and lists the servers that
/// answer within `wait` (address, whether the offer carries PXE boot information).
pub async fn preflight(
    interface: &str,
    wait: std::time::Duration,
) -> std::io::Result<Vec<(Ipv4Addr, bool)>> {
    let socket = bind(interface, 68)?;
    let mac = [0x02, 0xca, 0x12, 0x00, 0x00, 0x01];
    let mut d = v4::Message::new_with_id(
        0xca1b_0001,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    d.set_flags(v4::Flags::default().set_broadcast());
    d.opts_mut()
        .insert(DhcpOption::MessageType(MessageType::Discover));
    d.opts_mut().insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
    ));
    let mut out = Vec::new();
    d.encode(&mut Encoder::new(&mut out))
        .map_err(std::io::Error::other)?;
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = vec![0u8; 1500];
    // Resent every 2 s like a client would: servers that ping an address before offering
    // it (dnsmasq, ISC dhcpd) answer the first DISCOVER only after about 3 s.
    let mut resend = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        let n = tokio::select! {
            _ = resend.tick() => {
                socket.send_to(&out, (Ipv4Addr::BROADCAST, 67)).await?;
                continue;
            }
            r = tokio::time::timeout_at(deadline, socket.recv_from(&mut buf)) => match r {
                Ok(r) => r?.0,
                Err(_) => break,
            },
        };
        let Ok(m) = v4::Message::decode(&mut Decoder::new(&buf[..n])) else {
            continue;
        };
        if m.xid() != d.xid() || m.opcode() != Opcode::BootReply {
            continue;
        }
        let server = match m.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => *ip,
            _ => m.siaddr(),
        };
        let pxe = m.fname().is_some_and(|f| !f.is_empty())
            || matches!(m.opts().get(OptionCode::ClassIdentifier), Some(DhcpOption::ClassIdentifier(c)) if c.starts_with(b"PXEClient"));
        if !found.iter().any(|(ip, _)| *ip == server) {
            found.push((server, pxe));
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DhcpConfig {
        DhcpConfig {
            server_ip: Ipv4Addr::new(192, 168, 77, 1),
            prefix: 24,
            boot_urls: BTreeMap::from([(
                "52:54:00:00:00:01".into(),
                "http://192.168.77.1:8080/boot/52:54:00:00:00:01.ipxe".into(),
            )]),
            leases: BTreeMap::new(),
            tftp_bootfile: ("ipxe.efi".into(), "undionly.kpxe".into()),
        }
    }

    fn discover(mac: [u8; 6], ipxe: bool) -> v4::Message {
        let mut m = v4::Message::new_with_id(
            7,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &mac,
        );
        m.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Discover));
        m.opts_mut().insert(DhcpOption::ClassIdentifier(
            b"PXEClient:Arch:00000:UNDI:002001".to_vec(),
        ));
        if ipxe {
            m.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
        }
        // Round-trip through the wire format, as the server sees it.
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).unwrap();
        v4::Message::decode(&mut Decoder::new(&buf)).unwrap()
    }

    #[test]
    fn only_inventory_macs_get_a_proxy_offer_without_a_lease() {
        let known = [0x52, 0x54, 0, 0, 0, 1];
        let r = answer(&cfg(), &discover(known, true), false).expect("an offer");
        assert_eq!(r.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(
            r.yiaddr(),
            Ipv4Addr::UNSPECIFIED,
            "proxy DHCP must not lease"
        );
        assert_eq!(
            String::from_utf8_lossy(r.fname().unwrap()),
            "http://192.168.77.1:8080/boot/52:54:00:00:00:01.ipxe"
        );
        // A plain PXE ROM is sent to TFTP for iPXE first.
        let r = answer(&cfg(), &discover(known, false), false).unwrap();
        assert_eq!(String::from_utf8_lossy(r.fname().unwrap()), "undionly.kpxe");
        assert!(answer(&cfg(), &discover([0x52, 0x54, 0, 0, 0, 2], true), false).is_none());
    }

    #[test]
    fn leases_only_with_a_range() {
        let mut c = cfg();
        c.leases
            .insert("52:54:00:00:00:01".into(), Ipv4Addr::new(192, 168, 77, 100));
        let r = answer(&c, &discover([0x52, 0x54, 0, 0, 0, 1], true), false).unwrap();
        assert_eq!(r.yiaddr(), Ipv4Addr::new(192, 168, 77, 100));
        assert!(
            matches!(r.opts().get(OptionCode::SubnetMask), Some(DhcpOption::SubnetMask(m)) if *m == Ipv4Addr::new(255, 255, 255, 0))
        );
    }

    /// Sends `payload` to 127.0.0.1:`port` in a UDP header written by hand, so the source
    /// port can be 0 (no ordinary socket sends from port 0).
    fn send_from_port_zero(port: u16, payload: &[u8]) {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let raw = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP))
            .expect("a raw socket (tests run as root)");
        let mut datagram = Vec::with_capacity(8 + payload.len());
        datagram.extend_from_slice(&0u16.to_be_bytes());
        datagram.extend_from_slice(&port.to_be_bytes());
        datagram.extend_from_slice(&u16::try_from(8 + payload.len()).unwrap().to_be_bytes());
        datagram.extend_from_slice(&0u16.to_be_bytes()); // no checksum
        datagram.extend_from_slice(payload);
        let to = SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
        raw.send_to(&datagram, &to).unwrap();
    }

    #[tokio::test]
    async fn the_serve_loop_survives_hostile_packets_and_still_answers() {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let server = tokio::spawn(async move { serve_on(socket, &cfg(), true).await });
        let mut request = discover([0x52, 0x54, 0, 0, 0, 1], true);
        request
            .opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Request));
        let mut wire = Vec::new();
        request.encode(&mut Encoder::new(&mut wire)).unwrap();
        // A valid request whose answer cannot be sent (port 0), then garbage: empty,
        // truncated, a 60 kB run of options, and bytes that are no DHCP at all.
        send_from_port_zero(port, &wire);
        send_from_port_zero(port, &[]);
        send_from_port_zero(port, &wire[..wire.len() / 2]);
        let mut oversized = wire[..240].to_vec();
        for _ in 0..200 {
            oversized.extend_from_slice(&[60, 255]);
            oversized.extend_from_slice(&[b'x'; 255]);
        }
        send_from_port_zero(port, &oversized);
        send_from_port_zero(port, &[0xff; 1000]);
        // A hardware address length past chaddr's 16 bytes (dhcproto panicked on it).
        let mut long_hlen = wire.clone();
        long_hlen[2] = 255;
        send_from_port_zero(port, &long_hlen);
        let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        client
            .send_to(&long_hlen, ("127.0.0.1", port))
            .await
            .unwrap();

        client.send_to(&wire, ("127.0.0.1", port)).await.unwrap();
        let mut buf = vec![0u8; 1500];
        let (n, _) = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.recv_from(&mut buf),
        )
        .await
        .expect("the server still answers after the hostile packets")
        .unwrap();
        let ack = v4::Message::decode(&mut Decoder::new(&buf[..n])).unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert!(!server.is_finished());
        server.abort();
    }

    #[test]
    fn a_hardware_address_longer_than_chaddr_is_ignored_not_a_panic() {
        // Regression: fuzz/artifacts/dhcp_server_packet, an otherwise valid request.
        let mut wire = Vec::new();
        discover([0x52, 0x54, 0, 0, 0, 1], true)
            .encode(&mut Encoder::new(&mut wire))
            .unwrap();
        let peer = SocketAddr::from((Ipv4Addr::new(192, 168, 77, 9), 68));
        assert!(reply_to(&cfg(), &wire, peer, false).is_some());
        wire[2] = 17;
        for proxy in [false, true] {
            assert!(reply_to(&cfg(), &wire, peer, proxy).is_none());
        }
    }
}
