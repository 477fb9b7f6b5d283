//! Vendor quirks as data: `hardware/quirks.yaml` selects behaviour per manufacturer, model
//! and BMC firmware range. The selection is pure and tested on recorded payloads.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// The quirk table shipped with cairn.
pub const TABLE: &str = include_str!("../quirks.yaml");

/// Where to look first for the virtual CD.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum MediaLocation {
    /// Under the ComputerSystem.
    #[default]
    System,
    /// Under the Manager.
    Manager,
}

/// How far to trust a one-time boot override.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BootOnce {
    /// Believe the PATCH.
    Trust,
    /// Read back; fall back to a persistent override when not applied.
    #[default]
    Verify,
    /// "Once" reads back as "Continuous": accept that.
    ReadsBackContinuous,
}

/// The behaviour selected for one BMC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Quirks {
    /// Names of the entries that matched, in order.
    pub matched: Vec<String>,
    /// Virtual media location searched first.
    pub virtual_media: MediaLocation,
    /// One-time boot handling.
    pub boot_once: BootOnce,
    /// Eject before insert when a slot holds media.
    pub eject_before_insert: bool,
    /// Send `@Redfish.SettingsApplyTime` with staged BIOS settings.
    pub bios_apply_time: bool,
    /// Use Redfish sessions.
    pub sessions: bool,
}

impl Default for Quirks {
    fn default() -> Self {
        Quirks {
            matched: Vec::new(),
            virtual_media: MediaLocation::System,
            boot_once: BootOnce::Verify,
            eject_before_insert: false,
            bios_apply_time: false,
            sessions: true,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    quirks: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(rename = "match")]
    matches: Match,
    virtual_media: Option<MediaLocation>,
    boot_once: Option<BootOnce>,
    eject_before_insert: Option<bool>,
    bios_apply_time: Option<bool>,
    sessions: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Match {
    manufacturer: Option<String>,
    model: Option<String>,
    firmware: Option<Range>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Range {
    min: Option<String>,
    max: Option<String>,
}

/// What identifies a BMC for quirk selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Identity {
    /// ComputerSystem `Manufacturer`.
    pub manufacturer: String,
    /// ComputerSystem `Model`.
    pub model: String,
    /// Manager `FirmwareVersion`.
    pub firmware: String,
}

fn contains(hay: &str, needle: &Option<String>) -> bool {
    needle
        .as_ref()
        .is_none_or(|n| hay.to_lowercase().contains(&n.to_lowercase()))
}

impl Match {
    fn matches(&self, id: &Identity) -> bool {
        // "HP" must not match "HPE": the manufacturer matches as a whole word.
        let manufacturer = self.manufacturer.as_ref().is_none_or(|m| {
            id.manufacturer
                .to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .any(|w| w == m.to_lowercase())
                || (m.contains(' ') && contains(&id.manufacturer, &self.manufacturer))
        });
        let in_range = self.firmware.as_ref().is_none_or(|r| {
            !id.firmware.is_empty()
                && r.min.as_ref().is_none_or(|min| {
                    cairn_api::version::compare(&id.firmware, min) != Ordering::Less
                })
                && r.max.as_ref().is_none_or(|max| {
                    cairn_api::version::compare(&id.firmware, max) == Ordering::Less
                })
        });
        manufacturer && contains(&id.model, &self.model) && in_range
    }
}

/// Selects quirks from a table (YAML text) for a BMC.
pub fn select_from(table: &str, id: &Identity) -> Result<Quirks, String> {
    let table: Table = serde_yaml_ng::from_str(table).map_err(|e| match e.location() {
        Some(l) => format!("quirks table line {}: {e}", l.line()),
        None => format!("quirks table: {e}"),
    })?;
    let mut q = Quirks::default();
    for entry in table.quirks.iter().filter(|e| e.matches.matches(id)) {
        q.matched.push(entry.name.clone());
        if let Some(v) = entry.virtual_media {
            q.virtual_media = v;
        }
        if let Some(v) = entry.boot_once {
            q.boot_once = v;
        }
        if let Some(v) = entry.eject_before_insert {
            q.eject_before_insert = v;
        }
        if let Some(v) = entry.bios_apply_time {
            q.bios_apply_time = v;
        }
        if let Some(v) = entry.sessions {
            q.sessions = v;
        }
    }
    Ok(q)
}

/// Selects quirks from the shipped table.
pub fn select(id: &Identity) -> Quirks {
    // The shipped table is tested to parse, so this cannot fail at run time.
    select_from(TABLE, id).unwrap_or_default()
}

/// The identity of a Redfish BMC from its ComputerSystem and Manager payloads.
pub fn identity(system: &serde_json::Value, manager: Option<&serde_json::Value>) -> Identity {
    use crate::redfish::model::string;
    Identity {
        manufacturer: string(system, "Manufacturer").unwrap_or_default(),
        model: string(system, "Model").unwrap_or_default(),
        firmware: manager
            .and_then(|m| string(m, "FirmwareVersion"))
            .unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn shipped_table_parses_and_every_entry_has_a_source_comment() {
        select_from(TABLE, &Identity::default()).unwrap();
        let lines: Vec<&str> = TABLE.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("- name:") {
                assert!(
                    lines[..i]
                        .iter()
                        .rev()
                        .take_while(|l| l.trim_start().starts_with('#'))
                        .any(|l| l.contains("Source:")),
                    "entry at line {} has no `Source:` comment",
                    i + 1
                );
            }
        }
    }

    #[test]
    fn dell_virtual_media_moves_with_firmware() {
        // Recorded iDRAC9 payload fields (System.Embedded.1 / iDRAC.Embedded.1).
        let system = json!({"Manufacturer": "Dell Inc.", "Model": "PowerEdge R650"});
        let old = identity(&system, Some(&json!({"FirmwareVersion": "5.10.50.00"})));
        let new = identity(&system, Some(&json!({"FirmwareVersion": "6.10.30.00"})));
        let q_old = select(&old);
        let q_new = select(&new);
        assert_eq!(q_old.matched, ["dell-idrac9-pre6"]);
        assert_eq!(q_old.virtual_media, MediaLocation::Manager);
        assert_eq!(q_new.matched, ["dell-idrac9-6plus"]);
        assert_eq!(q_new.virtual_media, MediaLocation::System);
        assert!(q_new.eject_before_insert && q_new.bios_apply_time);
    }

    #[test]
    fn hp_does_not_match_hpe_and_vendors_resolve() {
        let hpe = select(&identity(
            &json!({"Manufacturer": "HPE", "Model": "ProLiant DL360 Gen10"}),
            None,
        ));
        assert_eq!(hpe.matched, ["hpe-ilo"]);
        let smc = select(&identity(
            &json!({"Manufacturer": "Supermicro", "Model": "SYS-1029U"}),
            None,
        ));
        assert_eq!(
            (smc.boot_once, smc.virtual_media),
            (BootOnce::Verify, MediaLocation::Manager)
        );
        let lenovo = select(&identity(
            &json!({"Manufacturer": "Lenovo", "Model": "ThinkSystem SE450"}),
            None,
        ));
        assert!(lenovo.bios_apply_time);
        let obmc = select(&identity(
            &json!({"Manufacturer": "OpenBMC", "Model": "Romulus"}),
            None,
        ));
        assert_eq!(obmc.matched, ["openbmc"]);
    }

    #[test]
    fn sushy_sample_and_emulator_select_expected_entries() {
        // Contoso sample from the sushy project: no entry matches, defaults apply.
        let sample: serde_json::Value =
            serde_json::from_str(include_str!("../tests/fixtures/sushy/system.json")).unwrap();
        let q = select(&identity(&sample, None));
        assert!(q.matched.is_empty());
        assert_eq!(q, Quirks::default());
        let emu = select(&identity(&json!({"Manufacturer": "Sushy Emulator"}), None));
        assert_eq!(emu.boot_once, BootOnce::ReadsBackContinuous);
    }

    #[test]
    fn bad_table_names_line() {
        let e = select_from(
            "quirks:\n  - name: x\n    match: {}\n    boot_once: sometimes\n",
            &Identity::default(),
        )
        .unwrap_err();
        assert!(e.contains("line 4"), "{e}");
    }
}
