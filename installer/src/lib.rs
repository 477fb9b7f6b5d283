//! Rack provisioning and the install path.
//!
//! Owns: the `cairn` operator CLI (it gathers the subcommands of the feature crates), rack
//! provisioning (`cairn rack provision`), the boot server (proxy DHCP, TFTP, HTTP/iPXE) and
//! the install agent `cairn-agent`. Must not: speak BMC protocols or build images itself;
//! it drives `cairn-hardware` and consumes `cairn-image-build`'s artifacts.

pub mod agent;
pub mod boot_server;
pub mod cli;
pub mod rack;
