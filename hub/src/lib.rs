//! The central hub.
//!
//! Owns: enrollment tokens, the hub CA and appliance certificates, the fleet registry,
//! heartbeats, hosted control planes, VPC allocation, the audit log, the HTTPS API and web
//! console of `cairn-hub`, its storage (embedded store or etcd), and the operator client
//! behind `cairn hub ...`. Must not: depend on the node daemon or the installer; they meet
//! only in `cairn-api`. It never dials appliances: they dial out to it.

pub mod cli;
pub mod client;
