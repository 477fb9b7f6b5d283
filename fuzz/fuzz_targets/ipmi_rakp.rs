//! The BMC's answers in the RMCP+ handshake: Open Session Response, RAKP 2, RAKP 4.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((&suite, r)) = data.split_first() {
        cairn_hardware::fuzzing::rakp(suite % 18, r);
    }
});
