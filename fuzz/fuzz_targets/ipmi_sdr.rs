//! Sensor Data Records and sensor readings from a BMC.
#![no_main]

use cairn_hardware::ipmi::commands::{sensor, sensor_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte splits the input into a record and a reading.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (record, reading) = rest.split_at(usize::from(split).min(rest.len()));
    if let Some(r) = sensor_record(record) {
        let _ = sensor(&r, reading);
    }
});
