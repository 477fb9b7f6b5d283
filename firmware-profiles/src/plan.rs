//! The diff between a profile and what a BMC reports: pure, so `plan` changes nothing and
//! `apply` acts only on what this computes.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use cairn_hardware::bmc::{AttributeSpec, BiosSettings, FirmwareComponent, FirmwareTarget};
use cairn_hardware::redfish::model::validate_attribute;
use serde::Serialize;
use serde_json::Value;

use crate::profile::{Firmware, Profile};

/// One BIOS attribute to change.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    /// Attribute name.
    pub attribute: String,
    /// Current value (`None` when the BMC does not report it).
    pub current: Option<Value>,
    /// Desired value.
    pub desired: Value,
    /// Already staged (pending the next reset).
    pub pending: bool,
}

/// One firmware update to run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Update {
    /// Which firmware.
    pub component: FirmwareTarget,
    /// Version now.
    pub current: Option<String>,
    /// Minimum wanted.
    pub minimum: String,
    /// Image URL.
    pub image_url: String,
    /// Expected SHA-256.
    pub sha256: String,
}

/// What `apply` would do on one server.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Plan {
    /// Profile used.
    pub profile: String,
    /// BIOS changes.
    pub changes: Vec<Change>,
    /// Firmware updates.
    pub updates: Vec<Update>,
    /// Desired values the BMC would refuse (validated against its AttributeRegistry, or
    /// against the attributes it reports when it has no registry).
    pub invalid: Vec<String>,
    /// Whether values were checked against an AttributeRegistry.
    pub registry_checked: bool,
}

impl Plan {
    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.updates.is_empty() && self.invalid.is_empty()
    }

    /// The changes not yet staged.
    pub fn to_stage(&self) -> BTreeMap<String, Value> {
        self.changes
            .iter()
            .filter(|c| !c.pending)
            .map(|c| (c.attribute.clone(), c.desired.clone()))
            .collect()
    }
}

/// Attribute values compare loosely: BMCs report `"true"` for `true` and `"10"` for `10`.
pub fn same_value(a: &Value, b: &Value) -> bool {
    a == b || shown(a).eq_ignore_ascii_case(&shown(b))
}

/// A value as BMCs and profiles spell it: a string without JSON quotes.
pub fn shown(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn version_of(component: FirmwareTarget, firmware: &[FirmwareComponent]) -> Option<String> {
    let want = match component {
        FirmwareTarget::Bios => ["bios", "system rom", "uefi"],
        FirmwareTarget::Bmc => ["bmc", "idrac", "ilo"],
    };
    firmware
        .iter()
        .find(|f| {
            let n = format!("{} {}", f.id, f.name).to_lowercase();
            want.iter().any(|w| n.contains(w))
        })
        .and_then(|f| f.version.clone())
}

/// Computes the plan.
pub fn plan(
    profile: &Profile,
    bios: &BiosSettings,
    registry: Option<&[AttributeSpec]>,
    firmware: &[FirmwareComponent],
) -> Plan {
    let mut p = Plan {
        profile: profile.name.clone(),
        registry_checked: registry.is_some(),
        ..Default::default()
    };
    for (name, desired) in profile.desired() {
        match registry {
            Some(reg) => match reg.iter().find(|a| a.name == name) {
                Some(spec) => {
                    if let Err(e) = validate_attribute(spec, &desired) {
                        p.invalid.push(e);
                        continue;
                    }
                }
                None => {
                    p.invalid
                        .push(format!("{name}: not in the BMC's AttributeRegistry"));
                    continue;
                }
            },
            None if !bios.current.contains_key(&name) => {
                p.invalid
                    .push(format!("{name}: the BMC reports no such BIOS attribute"));
                continue;
            }
            None => {}
        }
        let current = bios.current.get(&name);
        if current.is_some_and(|c| same_value(c, &desired)) {
            continue;
        }
        let pending = bios
            .pending
            .get(&name)
            .is_some_and(|v| same_value(v, &desired));
        p.changes.push(Change {
            attribute: name,
            current: current.cloned(),
            desired,
            pending,
        });
    }
    for f in &profile.firmware {
        let current = version_of(f.component, firmware);
        let below = current
            .as_deref()
            .is_none_or(|c| cairn_api::version::compare(c, &f.min_version) == Ordering::Less);
        if below {
            p.updates.push(update(f, current));
        }
    }
    p
}

fn update(f: &Firmware, current: Option<String>) -> Update {
    Update {
        component: f.component,
        current,
        minimum: f.min_version.clone(),
        image_url: f.image_url.clone(),
        sha256: f.sha256.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{by_name, load_all};

    fn sushy_bios() -> BiosSettings {
        let mut current = BTreeMap::new();
        for (k, v) in [
            ("BootMode", "Uefi"),
            ("ProcTurboMode", "Enabled"),
            ("NicBoot1", "NetworkBoot"),
            ("QuietBoot", "true"),
        ] {
            current.insert(k.to_owned(), Value::from(v));
        }
        BiosSettings {
            current,
            pending: BTreeMap::new(),
        }
    }

    fn registry() -> Vec<AttributeSpec> {
        let spec = |name: &str, allowed: &[&str]| AttributeSpec {
            name: name.into(),
            kind: "Enumeration".into(),
            allowed: allowed.iter().map(|s| s.to_string()).collect(),
            read_only: false,
            lower: None,
            upper: None,
        };
        vec![
            spec("BootMode", &["Bios", "Uefi"]),
            spec("ProcTurboMode", &["Enabled", "Disabled"]),
            spec("NicBoot1", &["NetworkBoot", "Disabled"]),
        ]
    }

    #[test]
    fn emulator_profile_plans_one_change_and_one_update() {
        let all = load_all(None).unwrap();
        let p = by_name(&all, "emulator").unwrap();
        let fw = [FirmwareComponent {
            id: "BIOS".into(),
            name: "BIOS".into(),
            version: Some("1.0.0".into()),
            updateable: false,
        }];
        let plan = plan(p, &sushy_bios(), Some(&registry()), &fw);
        assert!(plan.invalid.is_empty(), "{:?}", plan.invalid);
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.changes[0].attribute, "ProcTurboMode");
        assert_eq!(plan.updates.len(), 1);
        assert_eq!(plan.updates[0].current.as_deref(), Some("1.0.0"));

        // After apply: nothing left.
        let mut done = sushy_bios();
        done.current
            .insert("ProcTurboMode".into(), "Disabled".into());
        let fw2 = [FirmwareComponent {
            version: Some("1.1.0".into()),
            ..fw[0].clone()
        }];
        assert!(super::plan(p, &done, Some(&registry()), &fw2).is_empty());

        // Staged but not yet applied: reported, not staged again.
        let mut staged = sushy_bios();
        staged
            .pending
            .insert("ProcTurboMode".into(), "Disabled".into());
        let pl = super::plan(p, &staged, Some(&registry()), &fw2);
        assert!(pl.changes[0].pending && pl.to_stage().is_empty());
    }

    #[test]
    fn values_are_validated_against_the_registry() {
        let all = load_all(None).unwrap();
        let mut p = by_name(&all, "emulator").unwrap().clone();
        p.bios
            .attributes
            .insert("ProcTurboMode".into(), "Turbo".into());
        p.bios.attributes.insert("Nonexistent".into(), "x".into());
        let plan = plan(&p, &sushy_bios(), Some(&registry()), &[]);
        assert!(
            plan.invalid
                .iter()
                .any(|e| e.contains("ProcTurboMode") && e.contains("Enabled, Disabled")),
            "{:?}",
            plan.invalid
        );
        assert!(
            plan.invalid
                .iter()
                .any(|e| e.contains("Nonexistent") && e.contains("AttributeRegistry"))
        );
        // Without a registry, unknown attributes are still caught.
        let plan = super::plan(&p, &sushy_bios(), None, &[]);
        assert!(
            plan.invalid
                .iter()
                .any(|e| e.contains("Nonexistent") && e.contains("no such BIOS attribute"))
        );
    }

    #[test]
    fn loose_value_comparison() {
        assert!(same_value(&Value::from(true), &Value::from("true")));
        assert!(same_value(&Value::from(10), &Value::from("10")));
        assert!(!same_value(
            &Value::from("Enabled"),
            &Value::from("Disabled")
        ));
    }
}
