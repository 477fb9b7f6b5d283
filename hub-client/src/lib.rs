//! The one typed client of the cairn hub's `/v1` API.
//!
//! Owns: [`HubClient`] (a method per route, typed with `cairn_api::hub`'s requests and views
//! and `cairn_api`'s appliance messages), [`tls`] (how every client trusts the hub: a pinned
//! CA fingerprint, then the CA bundle; mTLS identities), and with the `cli` feature
//! `cairn hub ...`, the operator's command. Used by `cairn hub`, rack provisioning,
//! `cairn-node`, `cairn-lab` and the tests. Must not: depend on the hub server or declare a
//! wire type of its own (they live in `cairn-api`).

mod client;
pub mod tls;

#[cfg(feature = "cli")]
pub mod cli;

pub use client::{Error, HubClient, Watch};
