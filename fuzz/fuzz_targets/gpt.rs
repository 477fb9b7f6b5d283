//! A disk's partition table, read by the install agent and `cairn-node` before writing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cairn_formats::gpt::read(&mut std::io::Cursor::new(data));
});
