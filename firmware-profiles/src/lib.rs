//! Declarative BIOS and firmware baselines per vendor and model.
//!
//! Owns: the profile format (YAML under `profiles/`), matching a profile to a server,
//! planning (diff against the BMC's current settings), applying and verifying, the cache of
//! verified firmware images and the file server that hands them to BMCs during an apply, and
//! `cairn firmware ...`. Must not: speak a BMC protocol itself; it goes through
//! `cairn-hardware`'s `Bmc` abstraction.

pub mod apply;
pub mod cli;
pub mod image;
pub mod plan;
pub mod profile;
pub mod serve;
