//! Lenient readers for Redfish payloads: pure functions from JSON to cairn's types.
//!
//! BMCs disagree on casing of paths, optional properties and even types (a number as a
//! string), so nothing here fails on a missing or odd field; it yields `None` instead. Tested
//! on the JSON samples of the `sushy` project (see `tests/fixtures/sushy/README.md`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::bmc::{
    AttributeSpec, BootDevice, BootMode, BootOverride, Disk, FirmwareComponent, LogEntry,
    MediaStatus, Nic, PowerState, Sensor,
};

/// `obj["@odata.id"]`.
pub fn odata_id(v: &Value) -> Option<&str> {
    v.get("@odata.id").and_then(Value::as_str)
}

/// The `@odata.id` of a link property (`{"Bios": {"@odata.id": ...}}`).
pub fn link<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(odata_id)
}

/// The member links of a collection.
pub fn members(collection: &Value) -> Vec<String> {
    collection
        .get("Members")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(odata_id).map(str::to_owned).collect())
        .unwrap_or_default()
}

/// A string property.
pub fn string(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: &Value, key: &str) -> Option<f64> {
    match v.get(key)? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// `PowerState` of a ComputerSystem.
pub fn power_state(system: &Value) -> PowerState {
    match system.get("PowerState").and_then(Value::as_str) {
        Some("On") | Some("PoweringOff") => PowerState::On,
        Some("Off") | Some("PoweringOn") => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

/// An action's target and the values it allows: `("#ComputerSystem.Reset", ...)`.
pub fn action(resource: &Value, name: &str) -> Option<(String, Vec<String>)> {
    let action = resource.get("Actions")?.get(name)?;
    let target = action.get("target")?.as_str()?.to_owned();
    let allowed = action
        .as_object()?
        .iter()
        .find(|(k, _)| k.ends_with("@Redfish.AllowableValues"))
        .and_then(|(_, v)| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some((target, allowed))
}

/// Redfish `BootSourceOverrideTarget` for a device.
pub fn boot_target(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "Pxe",
        BootDevice::Cd => "Cd",
        BootDevice::Disk => "Hdd",
        BootDevice::Http => "UefiHttp",
        BootDevice::BiosSetup => "BiosSetup",
        BootDevice::None => "None",
    }
}

/// The boot override of a ComputerSystem.
pub fn boot_override(system: &Value) -> Option<BootOverride> {
    let boot = system.get("Boot")?;
    let device = match boot.get("BootSourceOverrideTarget")?.as_str()? {
        "Pxe" => BootDevice::Pxe,
        "Cd" => BootDevice::Cd,
        "Hdd" => BootDevice::Disk,
        "UefiHttp" => BootDevice::Http,
        "BiosSetup" => BootDevice::BiosSetup,
        _ => BootDevice::None,
    };
    let enabled = boot
        .get("BootSourceOverrideEnabled")
        .and_then(Value::as_str);
    let device = if enabled == Some("Disabled") {
        BootDevice::None
    } else {
        device
    };
    let mode = match boot.get("BootSourceOverrideMode").and_then(Value::as_str) {
        Some("UEFI") => Some(BootMode::Uefi),
        Some("Legacy") => Some(BootMode::Legacy),
        _ => None,
    };
    Some(BootOverride {
        device,
        persistent: enabled == Some("Continuous"),
        mode,
    })
}

/// The allowed boot targets, when the BMC lists them.
pub fn allowed_boot_targets(system: &Value) -> Vec<String> {
    system
        .get("Boot")
        .and_then(|b| b.get("BootSourceOverrideTarget@Redfish.AllowableValues"))
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The `Boot` patch for an override.
pub fn boot_patch(boot: &BootOverride) -> Value {
    let mut b = serde_json::Map::new();
    b.insert(
        "BootSourceOverrideTarget".into(),
        boot_target(boot.device).into(),
    );
    b.insert(
        "BootSourceOverrideEnabled".into(),
        match (boot.device, boot.persistent) {
            (BootDevice::None, _) => "Disabled",
            (_, true) => "Continuous",
            (_, false) => "Once",
        }
        .into(),
    );
    if let Some(mode) = boot.mode {
        b.insert(
            "BootSourceOverrideMode".into(),
            match mode {
                BootMode::Uefi => "UEFI",
                BootMode::Legacy => "Legacy",
            }
            .into(),
        );
    }
    serde_json::json!({ "Boot": b })
}

/// A NIC from an EthernetInterface.
pub fn nic(v: &Value) -> Nic {
    Nic {
        name: string(v, "Id")
            .or_else(|| string(v, "Name"))
            .unwrap_or_default(),
        mac: string(v, "MACAddress")
            .or_else(|| string(v, "PermanentMACAddress"))
            .map(|m| m.to_ascii_lowercase()),
        link: string(v, "LinkStatus").or_else(|| {
            v.get("Status")
                .and_then(|s| string(s, "State"))
                .map(|s| format!("state {s}"))
        }),
    }
}

/// Disks from a SimpleStorage (`Devices`) or Drive resource.
pub fn disks(v: &Value) -> Vec<Disk> {
    if let Some(devices) = v.get("Devices").and_then(Value::as_array) {
        return devices
            .iter()
            .filter(|d| {
                d.get("Status")
                    .and_then(|s| s.get("State"))
                    .and_then(Value::as_str)
                    != Some("Absent")
            })
            .map(|d| Disk {
                name: string(d, "Name").unwrap_or_default(),
                capacity_bytes: number(d, "CapacityBytes").map(|c| c as u64),
                serial: string(d, "SerialNumber"),
            })
            .collect();
    }
    vec![Disk {
        name: string(v, "Model")
            .or_else(|| string(v, "Name"))
            .unwrap_or_default(),
        capacity_bytes: number(v, "CapacityBytes").map(|c| c as u64),
        serial: string(v, "SerialNumber"),
    }]
}

/// Whether a VirtualMedia resource can hold a CD/DVD image.
pub fn is_cd_slot(v: &Value) -> bool {
    v.get("MediaTypes")
        .and_then(Value::as_array)
        .map(|t| {
            t.iter()
                .filter_map(Value::as_str)
                .any(|t| t == "CD" || t == "DVD")
        })
        .unwrap_or(false)
}

/// State of a VirtualMedia resource.
pub fn media_status(v: &Value) -> MediaStatus {
    let image = string(v, "Image");
    MediaStatus {
        inserted: v
            .get("Inserted")
            .and_then(Value::as_bool)
            .unwrap_or(image.is_some()),
        image,
        location: odata_id(v).unwrap_or_default().to_owned(),
    }
}

/// Where staged BIOS settings go (`@Redfish.Settings.SettingsObject`), and the apply times
/// the BMC supports.
pub fn settings_object(v: &Value) -> Option<(String, Vec<String>)> {
    let settings = v.get("@Redfish.Settings")?;
    let object = link(settings, "SettingsObject")?.to_owned();
    let times = settings
        .get("SupportedApplyTimes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Some((object, times))
}

/// `Attributes` of a Bios (or settings) resource.
pub fn attributes(v: &Value) -> BTreeMap<String, Value> {
    v.get("Attributes")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default()
}

/// Attribute definitions of an AttributeRegistry.
pub fn registry(v: &Value) -> Vec<AttributeSpec> {
    v.get("RegistryEntries")
        .and_then(|e| e.get("Attributes"))
        .and_then(Value::as_array)
        .map(|attrs| {
            attrs
                .iter()
                .filter_map(|a| {
                    Some(AttributeSpec {
                        name: string(a, "AttributeName")?,
                        kind: string(a, "Type").unwrap_or_default(),
                        allowed: a
                            .get("Value")
                            .and_then(Value::as_array)
                            .map(|vals| {
                                vals.iter().filter_map(|x| string(x, "ValueName")).collect()
                            })
                            .unwrap_or_default(),
                        read_only: a.get("ReadOnly").and_then(Value::as_bool).unwrap_or(false)
                            || a.get("Immutable").and_then(Value::as_bool).unwrap_or(false),
                        lower: number(a, "LowerBound").map(|n| n as i64),
                        upper: number(a, "UpperBound").map(|n| n as i64),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks one value against its registry entry; the message names the attribute.
pub fn validate_attribute(spec: &AttributeSpec, value: &Value) -> Result<(), String> {
    let name = &spec.name;
    if spec.read_only {
        return Err(format!("{name} is read-only"));
    }
    match spec.kind.as_str() {
        "Enumeration" => match value.as_str() {
            Some(v) if spec.allowed.is_empty() || spec.allowed.iter().any(|a| a == v) => Ok(()),
            _ => Err(format!(
                "{name} = {value}: allowed values are {}",
                spec.allowed.join(", ")
            )),
        },
        "Integer" => match value.as_i64() {
            Some(n) if spec.lower.is_none_or(|l| n >= l) && spec.upper.is_none_or(|u| n <= u) => {
                Ok(())
            }
            _ => Err(format!(
                "{name} = {value}: expected an integer in [{}, {}]",
                spec.lower.map(|l| l.to_string()).unwrap_or_default(),
                spec.upper.map(|u| u.to_string()).unwrap_or_default()
            )),
        },
        "Boolean" if !value.is_boolean() => Err(format!("{name} = {value}: expected true/false")),
        "String" | "Password" if !value.is_string() => {
            Err(format!("{name} = {value}: expected a string"))
        }
        _ => Ok(()),
    }
}

/// Sensors of a Thermal resource (`Temperatures`, `Fans`) or Power resource (`Voltages`,
/// `PowerSupplies`).
pub fn sensors(v: &Value) -> Vec<Sensor> {
    let health = |s: &Value| s.get("Status").and_then(|st| string(st, "Health"));
    let mut out = Vec::new();
    let list = |key: &str| {
        v.get(key)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    for t in list("Temperatures") {
        out.push(Sensor {
            name: string(&t, "Name").unwrap_or_default(),
            kind: "temperature".into(),
            reading: number(&t, "ReadingCelsius"),
            unit: "°C".into(),
            status: health(&t),
        });
    }
    for f in list("Fans") {
        out.push(Sensor {
            name: string(&f, "Name")
                .or_else(|| string(&f, "FanName"))
                .unwrap_or_default(),
            kind: "fan".into(),
            reading: number(&f, "Reading"),
            unit: string(&f, "ReadingUnits").unwrap_or_else(|| "RPM".into()),
            status: health(&f),
        });
    }
    for volt in list("Voltages") {
        out.push(Sensor {
            name: string(&volt, "Name").unwrap_or_default(),
            kind: "voltage".into(),
            reading: number(&volt, "ReadingVolts"),
            unit: "V".into(),
            status: health(&volt),
        });
    }
    for psu in list("PowerSupplies") {
        out.push(Sensor {
            name: string(&psu, "Name").unwrap_or_default(),
            kind: "power-supply".into(),
            reading: number(&psu, "LastPowerOutputWatts"),
            unit: "W".into(),
            status: health(&psu),
        });
    }
    out
}

/// A LogEntry.
pub fn log_entry(v: &Value) -> LogEntry {
    LogEntry {
        id: string(v, "Id").unwrap_or_default(),
        created: string(v, "Created"),
        severity: string(v, "Severity"),
        message: string(v, "Message").unwrap_or_default(),
    }
}

/// A SoftwareInventory member.
pub fn firmware_component(v: &Value) -> FirmwareComponent {
    FirmwareComponent {
        id: string(v, "Id").unwrap_or_default(),
        name: string(v, "Name").unwrap_or_default(),
        version: string(v, "Version"),
        updateable: v
            .get("Updateable")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// Where the UpdateService takes an image pushed as `multipart/form-data` (Redfish 1.6,
/// `MultipartHttpPushUri`). The older `HttpPushUri` (a raw body, deprecated) is not used:
/// BMCs differ in how they accept it, and sushy-tools names one it does not implement.
pub fn multipart_push_uri(update_service: &Value) -> Option<String> {
    string(update_service, "MultipartHttpPushUri")
}

/// The state of a Task: `Ok(true)` done, `Ok(false)` still running, `Err` failed (with the
/// task's messages).
pub fn task_done(task: &Value) -> Result<bool, String> {
    match task.get("TaskState").and_then(Value::as_str) {
        Some("Completed") => match task.get("TaskStatus").and_then(Value::as_str) {
            Some("Critical") => Err(task_messages(task)),
            _ => Ok(true),
        },
        Some("Exception") | Some("Killed") | Some("Cancelled") => Err(task_messages(task)),
        Some(_) => Ok(false),
        // Not a Task: some BMCs answer the monitor with the finished resource.
        None => Ok(true),
    }
}

fn task_messages(task: &Value) -> String {
    let state = string(task, "TaskState").unwrap_or_default();
    let messages: Vec<String> = task
        .get("Messages")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|m| string(m, "Message")).collect())
        .unwrap_or_default();
    if messages.is_empty() {
        format!("task ended {state}")
    } else {
        format!("task ended {state}: {}", messages.join("; "))
    }
}

/// The message of a Redfish error body, when it has one.
pub fn error_message(body: &Value) -> Option<String> {
    let error = body.get("error")?;
    let extended: Vec<String> = error
        .get("@Message.ExtendedInfo")
        .and_then(Value::as_array)
        .map(|m| m.iter().filter_map(|m| string(m, "Message")).collect())
        .unwrap_or_default();
    if extended.is_empty() {
        string(error, "message")
    } else {
        Some(extended.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/tests/fixtures/sushy/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn system_sample() {
        let s = fixture("system.json");
        assert_eq!(power_state(&s), PowerState::On);
        assert_eq!(
            boot_override(&s),
            Some(BootOverride {
                device: BootDevice::Pxe,
                persistent: false,
                mode: Some(BootMode::Uefi)
            })
        );
        assert!(allowed_boot_targets(&s).contains(&"UefiHttp".to_owned()));
        let (target, allowed) = action(&s, "#ComputerSystem.Reset").unwrap();
        assert_eq!(
            target,
            "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset"
        );
        assert!(allowed.contains(&"ForceOff".to_owned()));
        assert_eq!(
            link(&s, "Bios"),
            Some("/redfish/v1/Systems/437XR1138R2/Bios")
        );
    }

    #[test]
    fn boot_patch_round_trips_through_reader() {
        for device in [
            BootDevice::Pxe,
            BootDevice::Cd,
            BootDevice::Disk,
            BootDevice::Http,
        ] {
            for persistent in [false, true] {
                let b = BootOverride {
                    device,
                    persistent,
                    mode: Some(BootMode::Legacy),
                };
                assert_eq!(boot_override(&boot_patch(&b)), Some(b));
            }
        }
    }

    #[test]
    fn bios_settings_objects_of_several_vendors() {
        let (object, times) = settings_object(&fixture("bios.json")).unwrap();
        assert_eq!(object, "/redfish/v1/Systems/437XR1138R2/BIOS/Settings");
        assert!(times.is_empty() || times.iter().any(|t| t == "OnReset"));
        // Lenovo SE450 and Nokia put pending settings elsewhere: never hard-code the path.
        let (lenovo, times) = settings_object(&fixture("settings-lenovo-se450.json")).unwrap();
        assert_eq!(lenovo, "/redfish/v1/Systems/1/Pending");
        assert_eq!(times, ["OnReset"]);
        let (nokia, _) = settings_object(&fixture("settings-nokia.json")).unwrap();
        assert_eq!(nokia, "/redfish/v1/Systems/Self/SD");
        let attrs = attributes(&fixture("bios.json"));
        assert_eq!(attrs.get("ProcTurboMode"), Some(&Value::from("Enabled")));
    }

    #[test]
    fn attribute_registry_validates() {
        let reg = registry(&fixture("bios_attribute_registry.json"));
        let find = |n: &str| reg.iter().find(|a| a.name == n).unwrap();
        let model = find("SystemModelName");
        assert!(model.read_only);
        assert!(
            validate_attribute(model, &"x".into())
                .unwrap_err()
                .contains("read-only")
        );
        let virt = find("ProcVirtualization");
        assert_eq!(virt.kind, "Enumeration");
        assert!(validate_attribute(virt, &"Enabled".into()).is_ok());
        let e = validate_attribute(virt, &"Maybe".into()).unwrap_err();
        assert!(
            e.contains("ProcVirtualization") && e.contains("Disabled"),
            "{e}"
        );
    }

    #[test]
    fn media_task_sensors_nics_firmware_samples() {
        let vm = fixture("virtual_mediav1_6.json");
        assert!(is_cd_slot(&vm));
        let st = media_status(&vm);
        assert!(st.inserted && st.image.is_some());
        let task = fixture("task.json");
        assert!(task_done(&task).is_ok());
        let mut failed = task.clone();
        failed["TaskState"] = "Exception".into();
        assert!(
            task_done(&failed)
                .unwrap_err()
                .starts_with("task ended Exception")
        );
        let s = sensors(&fixture("thermal.json"));
        assert!(
            s.iter()
                .any(|s| s.kind == "temperature" && s.reading == Some(62.0))
        );
        assert!(s.iter().any(|s| s.kind == "fan" && s.unit == "RPM"));
        let v = sensors(&fixture("power.json"));
        assert!(v.iter().any(|s| s.kind == "power-supply"), "{v:?}");
        let n = nic(&fixture("ethernet_interfaces.json"));
        assert_eq!(n.mac.as_deref(), Some("12:44:6a:3b:04:11"));
        let d = disks(&fixture("simple_storage.json"));
        assert!(!d.is_empty() && d.iter().all(|d| !d.name.is_empty()));
        let fw = fixture("softwareinventory.json");
        assert!(firmware_component(&fw).version.is_some());
        assert!(error_message(&fixture("error.json")).is_some());
    }
}
