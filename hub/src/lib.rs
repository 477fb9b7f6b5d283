//! The central hub.
//!
//! Owns: enrollment tokens, the hub CA and appliance certificates, the fleet registry,
//! heartbeats, hosted control planes, VPC allocation, the audit log, the HTTPS API of
//! `cairn-hub`, its storage (embedded store or etcd), and the operator client behind
//! `cairn hub ...`. Must not: depend on the node daemon or the installer; they meet only in
//! `cairn-api`. It never dials appliances: they dial out to it.
//!
//! The `server` feature (on by default) holds everything `cairn-hub` needs (axum, redb,
//! etcd-client, rcgen, kube); the `cairn` operator binary needs only [`client`] and can
//! depend on this crate with `default-features = false`.
//!
//! Storage: see [`store`] for the choice of redb as the embedded default.
//! The API contract is `hub/API.md` and `/v1/openapi.json`.

pub mod client;

#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod controlplane;
#[cfg(feature = "server")]
pub mod fleet;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod model;
#[cfg(feature = "server")]
pub mod pki;
#[cfg(feature = "server")]
pub mod ratelimit;
#[cfg(feature = "server")]
pub mod releases;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod vpc;

#[cfg(test)]
pub(crate) mod testutil;
