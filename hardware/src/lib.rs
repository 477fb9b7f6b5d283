//! BMC control over Redfish and IPMI, and local hardware discovery.
//!
//! Owns: the `Bmc` abstraction and its Redfish and IPMI (RMCP+) implementations, the
//! vendor-quirk table, BMC credentials and TLS trust, fleet-wide BMC operations and
//! `cairn bmc ...`. Must not: decide what a server should become (that is the installer's
//! and the firmware profiles' job), or write to local disks.

pub mod cli;
