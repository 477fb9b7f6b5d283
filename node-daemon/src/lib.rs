//! The appliance daemon, `cairn-node`.
//!
//! Owns: node configuration and seeds, the first-boot wizard, registration with the hub,
//! kubelet bootstrap through systemd's D-Bus API, heartbeats, edge autonomy, A/B upgrades on
//! the node, and the local API. Must not: parse netplan or touch netlink itself (that is
//! `cairn-netplan`), or depend on the hub crate: it speaks to the hub only through
//! `cairn-api` types over HTTPS.

pub mod cli;
pub mod config;
pub mod hub;
pub mod inventory;
pub mod kubelet;
pub mod pki;
pub mod store;
pub mod systemd;
