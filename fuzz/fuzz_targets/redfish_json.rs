//! Redfish resources as a BMC sends them, through every model reader.
#![no_main]

use cairn_hardware::quirks;
use cairn_hardware::redfish::model;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = model::members(&v);
    let _ = model::link(&v, "Systems");
    let _ = model::power_state(&v);
    let _ = model::action(&v, "#ComputerSystem.Reset");
    let _ = model::boot_override(&v);
    let _ = model::allowed_boot_targets(&v);
    let _ = model::nic(&v);
    let _ = model::disks(&v);
    let _ = model::is_cd_slot(&v);
    let _ = model::media_status(&v);
    let _ = model::settings_object(&v);
    let _ = model::attributes(&v);
    for spec in model::registry(&v) {
        let _ = model::validate_attribute(&spec, &v);
        let _ = model::validate_attribute(&spec, &Value::from(1));
        let _ = model::validate_attribute(&spec, &Value::from("x"));
    }
    let _ = model::sensors(&v);
    let _ = model::log_entry(&v);
    let _ = model::firmware_component(&v);
    let _ = model::task_done(&v);
    let _ = model::error_message(&v);
    let _ = quirks::select(&quirks::identity(&v, Some(&v)));
});
