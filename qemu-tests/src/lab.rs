//! The emulated rack behind `cairn-lab`: one lab = one directory, one network namespace with
//! a bridge, N QEMU servers with blank disks, and one real BMC emulator per server, all owned
//! by one foreground supervisor process.
//!
//! # Process model (why the supervisor runs in the foreground)
//! PID 1 on the lab machines does not reap orphans, so nothing may daemonize. `cairn-lab up`
//! *is* the supervisor: it creates the namespace, starts every `ipmi_sim` as its direct child,
//! and starts or stops each server's QEMU when that server's BMC asks it to. `ipmi_sim` learns
//! power and boot-device changes over IPMI and calls its `chassis_control` program, which is
//! `cairn-lab chassis` — a short-lived client that forwards the request over the lab's unix
//! socket ([`control`]) to the supervisor and prints the answer. QEMU is therefore always the
//! supervisor's child and is reaped by it. Run `cairn-lab up` in a terminal, under a job
//! control shell (`&`), or as a child of a test; `cairn-lab down` asks it over the socket to
//! tear everything down and exit (its parent reaps it).
//!
//! Modules: [`layout`] (paths and the manifest), [`net`] (namespace, bridge, taps),
//! [`ipmi`] (`ipmi_sim` configuration), [`server`] (one server's power and boot device),
//! [`supervisor`] (the process), [`control`] (the socket protocol), [`rackfile`] (rack.yaml), [`services`] (the lab's hub and boot server),
//! [`redfish`] (sushy-tools BMCs over a private libvirtd, for `--bmc redfish|mixed`).

pub mod control;
pub mod fault_proxy;
pub mod faults;
pub mod ipmi;
pub mod layout;
pub mod net;
pub mod procs;
pub mod rackfile;
pub mod redfish;
pub mod server;
pub mod services;
pub mod supervisor;
