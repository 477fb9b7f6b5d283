//! GRUB environment blocks, read as a pair (either copy torn or garbage) and rewritten by
//! upgrades and rollbacks.
#![no_main]

use cairn_formats::grubenv;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (one, two) = data.split_at(data.len() / 2);
    for copy2 in [None, Some(two)] {
        if let Ok(selection) = grubenv::select(one, copy2) {
            let _ = grubenv::next_block(
                &selection,
                &[("cairn_slot", "b"), ("cairn_tries", "3")],
                &[one, two],
                1024,
            );
        }
    }
});
