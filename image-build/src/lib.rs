//! Appliance OS images: the builder.
//!
//! Owns: building the A/B disk image, the root image, the PXE set, the install ISO and
//! signed update bundles from one config; GRUB's scripts and BIOS boot code; and
//! `cairn image ...`. Must not: write to a server's disk (the install agent does), talk to
//! BMCs, or define a format read at run time: the disk layout, the bundle, keys, the
//! verified stream, grubenv and the install manifest live in `cairn-formats`, shared with
//! the install agent, the node and the hub.

pub mod build;
pub mod cli;
pub mod config;
pub mod cpio;
mod debian;
pub mod grub;
pub mod media;
pub mod rootfs;
pub mod tools;
