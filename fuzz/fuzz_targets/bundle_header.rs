//! The header of an update bundle, read before its signature is checked.
#![no_main]

use cairn_formats::bundle::Header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = Header::read(&mut &data[..]) {
        let m = header.unverified_manifest();
        let _ = m.accepts_upgrade_from("1.0.0");
    }
});
