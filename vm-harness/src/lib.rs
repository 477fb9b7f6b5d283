//! Throw-away QEMU guests for tests and for the lab: one VM as a direct child process, a
//! beacon the guest calls home on, a busybox initramfs with Debian's kernel and modules, and a
//! runner for check scripts inside such a guest.
//!
//! Owns: starting, watching and reaping `qemu-system-x86_64 -accel tcg` ([`qemu`]), building
//! initramfs archives ([`initramfs`]), the `CAIRN-CHECK` console protocol ([`guest`]).
//! Must not: depend on any cairn crate (netplan, node-daemon and installer tests use it, and
//! so does `cairn-lab`), daemonize QEMU (PID 1 here reaps no orphans, LAB.md), or give a guest
//! a network path to anything but loopback or a namespace the caller created.

pub mod guest;
pub mod initramfs;
pub mod qemu;
