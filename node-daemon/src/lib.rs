//! The appliance daemon, `cairn-node`.
//!
//! Owns: node configuration and seeds, the first-boot wizard, registration with the hub,
//! kubelet bootstrap through systemd's D-Bus API, heartbeats, edge autonomy, A/B upgrades on
//! the node, and the local API. Must not: parse netplan or touch netlink itself (that is
//! `cairn-netplan`), or depend on the hub crate: it speaks to the hub only through
//! `cairn-api` types over HTTPS.
//!
//! Modules, from pure to effectful: [`config`], [`inventory`], [`pki`], [`kubelet`] (files
//! and the supervisor's decisions), [`status`]; the seams to the outside: [`store`] (redb),
//! [`hub`] (HTTPS), [`tunnel`] (the hub's way back in), [`systemd`] (D-Bus), [`network`] (`cairn-netplan`), [`seed`] (mount);
//! [`daemon`] ties them into one loop, [`local_api`] serves its status, [`cli`] parses
//! arguments.

pub mod cli;
pub mod config;
pub mod daemon;
pub mod host_settings;
pub mod hub;
pub mod hub_link;
pub mod identity_key;
pub mod inventory;
pub mod kubelet;
pub mod local_api;
pub mod metrics;
pub mod network;
pub mod pki;
pub mod seed;
pub mod status;
pub mod store;
pub mod support;
pub mod systemd;
pub mod tpm;
pub mod tunnel;
pub mod upgrade;
pub mod wizard;
