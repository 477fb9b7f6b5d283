//! BMC control over Redfish and IPMI, and local hardware discovery.
//!
//! Owns: the `Bmc` abstraction and its Redfish and IPMI (RMCP+) implementations, the
//! vendor-quirk table, BMC credentials and TLS trust, fleet-wide BMC operations and
//! `cairn bmc ...`. Must not: decide what a server should become (that is the installer's
//! and the firmware profiles' job), or write to local disks.
//!
//! Entry points: [`inventory::Rack`] reads `rack.yaml`, [`connect::connect`] opens a
//! [`bmc::Bmc`] for an address, [`fleet::run`] runs one operation across many BMCs.

pub mod address;
pub mod bmc;
pub mod cli;
pub mod connect;
pub mod fleet;
pub mod inventory;
pub mod ipmi;
pub mod quirks;
pub mod redfish;
pub mod tls;

/// Entry points for `fuzz/` into parsers that are private (feature `fuzzing` only).
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::ipmi::{crypto::CipherSuite, session};

    /// Open Session Response, RAKP 2 and RAKP 4 checks on the BMC's answer `r`, in `suite`.
    pub fn rakp(suite: u8, r: &[u8]) {
        let Some(suite) = CipherSuite::by_id(suite) else {
            return;
        };
        let _ = session::open_response("fuzz", &suite, r);
        let _ = session::rakp2("fuzz", "admin", &suite, r);
        let _ = session::rakp4("fuzz", "admin", &suite, r, &[0; 16][..suite.rakp4_len()]);
    }
}
