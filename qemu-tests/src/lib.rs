//! The emulated rack, `cairn-lab`.
//!
//! Owns: lab networks in network namespaces, QEMU servers under TCG, BMC emulators
//! (OpenIPMI `ipmi_sim`, sushy-tools), the guest harness other crates' tests boot, the
//! end-to-end scenarios and `cairn-lab`. Must not: be needed by any product binary, or send
//! traffic outside the namespaces it creates.

pub mod cli;
pub mod demo;
pub mod guest;
pub mod initramfs;
pub mod lab;
pub mod qemu;
