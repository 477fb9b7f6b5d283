//! Host networking for appliances: netplan YAML applied straight through netlink.
//!
//! Owns: parsing and validating netplan v2, planning the minimal change against the kernel's
//! state, applying it through rtnetlink with verification, safe apply with rollback
//! (`net try`/`confirm`), the DHCPv4 client, VXLAN VPC overlays, and `cairn-node net ...`.
//! Must not: talk to the hub or to systemd; it never uses networkd or NetworkManager.

pub mod cli;
