//! Appliance OS images.
//!
//! Owns: building the A/B disk image, the root image, the PXE set, the install ISO and
//! signed update bundles from one config; bundle signing and verification; and
//! `cairn image ...`. Must not: write to a server's disk (the install agent does) or talk to
//! BMCs.

pub mod bundle;
pub mod cli;
pub mod keys;
pub mod stream;
