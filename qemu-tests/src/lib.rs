//! The emulated rack, `cairn-lab`.
//!
//! Owns: lab networks in network namespaces, the lab's QEMU servers under TCG (booted with
//! `cairn-vm-harness`, which owns the VM and guest harness other crates' tests use), BMC
//! emulators (OpenIPMI `ipmi_sim`, sushy-tools), the end-to-end scenarios and `cairn-lab`.
//! Must not: be a dependency of any crate, product or test (shared test code lives in
//! `cairn-test-support` and `cairn-vm-harness`), or send traffic outside the namespaces it
//! creates.

pub mod cli;
pub mod demo;
pub mod lab;
