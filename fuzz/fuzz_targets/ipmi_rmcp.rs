//! RMCP / RMCP+ datagrams and IPMI messages from a BMC, before and after session keys.
#![no_main]

use cairn_hardware::ipmi::crypto::{CipherSuite, keys};
use cairn_hardware::ipmi::packet::{Framing, decode, ipmi_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&suite, bytes)) = data.split_first() else {
        return;
    };
    let Some(suite) = CipherSuite::by_id(suite % 18) else {
        return;
    };
    for framing in [
        Framing { suite, keys: None },
        Framing {
            suite,
            keys: Some(keys(&suite, &[7u8; 32])),
        },
    ] {
        if let Ok(datagram) = decode(&framing, bytes) {
            let _ = ipmi_response(&datagram.payload);
        }
    }
    let _ = ipmi_response(bytes);
});
