//! Host networking for appliances: netplan YAML applied straight through netlink.
//!
//! Owns: parsing and validating netplan v2, planning the minimal change against the kernel's
//! state, applying it through rtnetlink with verification, safe apply with rollback
//! (`net try`/`confirm`), the DHCPv4 client, VXLAN VPC overlays, and `cairn-node net ...`.
//! Must not: talk to the hub or to systemd; it never uses networkd or NetworkManager.
//!
//! Modules, from pure to effectful: [`yaml`] (positioned YAML tree and file merge),
//! [`schema`] (netplan model and validation), [`state`] and [`plan`] (wanted state and the
//! change list), [`netlink`] (the only kernel access, behind the [`netlink::Netlink`] trait),
//! [`apply`] (apply, verify, rollback, on-disk state), [`safe`] (`net try`), [`overlay`]
//! (VPC overlays), [`dhcp`] (the DHCPv4 client), [`cli`].

pub mod apply;
pub mod cli;
pub mod dhcp;
pub mod netlink;
pub mod overlay;
pub mod plan;
pub mod safe;
pub mod schema;
pub mod state;
pub mod yaml;

/// Entry points for `fuzz/` into parsers that are private (feature `fuzzing` only).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use dhcproto::{Decodable, Decoder};

    /// What the DHCP client takes from a server's datagram: the message and its lease.
    pub fn dhcp_client_packet(packet: &[u8]) {
        if let Ok(m) = dhcproto::v4::Message::decode(&mut Decoder::new(packet)) {
            let _ = crate::dhcp::lease_from(&m, None);
        }
    }
}
