//! netplan YAML as an operator (or a seed ISO) writes it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = cairn_netplan::schema::parse_str("fuzz.yaml", text);
    }
});
