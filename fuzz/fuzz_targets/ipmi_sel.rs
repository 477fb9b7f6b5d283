//! System Event Log entries and the other short IPMI answers cairn decodes.
#![no_main]

use cairn_hardware::ipmi::commands::{boot_flags, device_id, power_on, sel_entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sel_entry(data);
    let _ = device_id(data);
    let _ = power_on(data);
    let _ = boot_flags(data);
});
