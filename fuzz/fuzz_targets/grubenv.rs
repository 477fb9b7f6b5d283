//! GRUB environment blocks, parsed and edited by upgrades and rollbacks.
#![no_main]

use cairn_formats::grubenv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if grubenv::parse(data).is_ok() {
        let _ = grubenv::edit(data, &[("cairn_slot", "b"), ("cairn_tries", "3")]);
    }
});
