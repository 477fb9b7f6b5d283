//! The central hub.
//!
//! Owns: enrollment tokens, the hub CA and appliance certificates, the fleet registry,
//! heartbeats, hosted control planes, VPC allocation, the audit log, the HTTPS API of
//! `cairn-hub` and its storage (embedded store or etcd). Must not: depend on the node daemon
//! or the installer; they meet only in `cairn-api`. It never dials appliances: they dial
//! out to it. Its API's types are `cairn_api::hub`'s; its one client is `cairn-hub-client`.
//!
//! Storage: see [`store`] for the choice of redb as the embedded default.
//! The API contract is `hub/API.md` and `/v1/openapi.json`.

pub mod cli;
pub mod controlplane;
pub mod failpoint;
pub mod fleet;
pub mod metrics;
pub mod model;
pub mod pki;
pub mod ratelimit;
pub mod releases;
pub mod scrape;
pub mod server;
pub mod store;
pub mod tunnel;
pub mod views;
pub mod vpc;
pub mod webhooks;

#[cfg(test)]
pub(crate) mod testutil;
