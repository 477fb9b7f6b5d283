//! Appliance OS images.
//!
//! Owns: building the A/B disk image, the root image, the PXE set, the install ISO and
//! signed update bundles from one config; bundle signing and verification; and
//! `cairn image ...`. Must not: write to a server's disk (the install agent does) or talk to
//! BMCs. The disk layout ([`gpt`]) and the verified stream ([`stream`]) are shared with the
//! install agent, which writes the same layout onto a real disk.

pub mod build;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod cpio;
mod debian;
pub mod gpt;
pub mod grub;
pub mod keys;
pub mod rootfs;
pub mod stream;
pub mod tools;
