//! Rack provisioning and the install path.
//!
//! Owns: the `cairn` operator CLI (it gathers the subcommands of the feature crates), rack
//! provisioning (`cairn rack provision`), the boot server (proxy DHCP, TFTP, HTTP/iPXE) and
//! the install agent `cairn-agent`. Must not: speak BMC protocols or build images itself;
//! it drives `cairn-hardware` and consumes `cairn-image-build`'s artifacts.

pub mod agent;
pub mod boot_server;
pub mod cli;
pub mod rack;

/// Entry points for `fuzz/` into parsers that are private (feature `fuzzing` only).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use std::collections::BTreeMap;
    use std::net::{Ipv4Addr, SocketAddr};

    use crate::boot_server::dhcp::{DhcpConfig, reply_to};

    /// The boot server's answer to one datagram, on port 67 and on 4011, from `peer_port`.
    pub fn dhcp_server_packet(packet: &[u8], peer_port: u16) {
        let cfg = DhcpConfig {
            server_ip: Ipv4Addr::new(192, 168, 77, 1),
            prefix: 24,
            boot_urls: BTreeMap::from([(
                "52:54:00:00:00:01".into(),
                "http://192.168.77.1:8080/boot/52:54:00:00:00:01.ipxe".into(),
            )]),
            leases: BTreeMap::from([(
                "52:54:00:00:00:01".into(),
                Ipv4Addr::new(192, 168, 77, 100),
            )]),
            tftp_bootfile: ("ipxe.efi".into(), "undionly.kpxe".into()),
        };
        let peer = SocketAddr::from((Ipv4Addr::new(192, 168, 77, 9), peer_port));
        for proxy_port in [false, true] {
            let _ = reply_to(&cfg, packet, peer, proxy_port);
        }
    }
}
