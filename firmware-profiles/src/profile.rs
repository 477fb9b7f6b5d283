//! The profile format: YAML files matched to servers by manufacturer and model.
//!
//! ```yaml
//! name: dell-poweredge-r650
//! match: { manufacturer: Dell, model: PowerEdge R650 }
//! bios:
//!   boot_mode: { attribute: BootMode, value: Uefi }
//!   secure_boot: { attribute: SecureBoot, value: Enabled }
//!   attributes: { ProcVirtualization: Enabled }
//! firmware:
//!   - { component: bios, min_version: "1.10.2", image_url: https://..., sha256: ... }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_hardware::bmc::{FirmwareTarget, Inventory};
use serde::{Deserialize, Serialize};

/// The profiles shipped with cairn (`firmware-profiles/profiles/`).
pub const SHIPPED: &[(&str, &str)] = &[
    ("emulator.yaml", include_str!("../profiles/emulator.yaml")),
    (
        "dell-poweredge-r650.yaml",
        include_str!("../profiles/dell-poweredge-r650.yaml"),
    ),
    (
        "hpe-proliant-dl360-gen10.yaml",
        include_str!("../profiles/hpe-proliant-dl360-gen10.yaml"),
    ),
    (
        "supermicro-x12.yaml",
        include_str!("../profiles/supermicro-x12.yaml"),
    ),
    (
        "lenovo-thinksystem-sr650-v2.yaml",
        include_str!("../profiles/lenovo-thinksystem-sr650-v2.yaml"),
    ),
];

/// A firmware baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Unique name.
    pub name: String,
    /// What it is for.
    #[serde(default)]
    pub description: String,
    /// Which servers it applies to.
    #[serde(rename = "match")]
    pub matches: Match,
    /// BIOS settings.
    #[serde(default)]
    pub bios: Bios,
    /// Minimum firmware versions.
    #[serde(default)]
    pub firmware: Vec<Firmware>,
}

/// Manufacturer and model, compared case-insensitively as substrings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Manufacturer substring.
    pub manufacturer: String,
    /// Model substring; any model when absent.
    #[serde(default)]
    pub model: Option<String>,
}

/// A setting expressed with the vendor's own attribute name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    /// Attribute name in the BMC's registry.
    pub attribute: String,
    /// Desired value.
    pub value: serde_json::Value,
}

/// BIOS part of a profile.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bios {
    /// UEFI or legacy, as the vendor's attribute.
    #[serde(default)]
    pub boot_mode: Option<Setting>,
    /// Secure boot, as the vendor's attribute.
    #[serde(default)]
    pub secure_boot: Option<Setting>,
    /// Other attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, serde_json::Value>,
}

/// A minimum firmware version and where to get it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firmware {
    /// Which firmware.
    pub component: FirmwareTarget,
    /// Minimum version (dotted, compared numerically).
    pub min_version: String,
    /// Where cairn downloads the update image (into its cache; the BMC gets that verified
    /// copy, and downloads this URL itself only with `--bmc-fetches-upstream`).
    pub image_url: String,
    /// SHA-256 of the image (hex): the cached copy must match it before the BMC gets it.
    pub sha256: String,
}

/// A profile file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// Reading failed.
    #[error("reading profile {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema.
    #[error("profile {path}: {message}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// What and where.
        message: String,
    },
    /// No profile of that name.
    #[error("no firmware profile named {name:?} (have: {have})")]
    Unknown {
        /// Asked for.
        name: String,
        /// Available.
        have: String,
    },
}

impl Profile {
    /// Parses one profile; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Profile, ProfileError> {
        let invalid = |message: String| ProfileError::Invalid {
            path: origin.to_owned(),
            message,
        };
        let p: Profile = serde_yaml_ng::from_str(text)
            .map_err(|e| invalid(cairn_hardware::inventory::yaml_error(&e)))?;
        for f in &p.firmware {
            if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(format!(
                    "firmware {:?}: sha256 must be 64 hex digits",
                    f.min_version
                )));
            }
        }
        Ok(p)
    }

    /// Every desired BIOS attribute, boot mode and secure boot included.
    pub fn desired(&self) -> BTreeMap<String, serde_json::Value> {
        let mut d = self.bios.attributes.clone();
        for s in [&self.bios.boot_mode, &self.bios.secure_boot]
            .into_iter()
            .flatten()
        {
            d.insert(s.attribute.clone(), s.value.clone());
        }
        d
    }

    /// Whether the profile is meant for this server.
    pub fn matches(&self, inv: &Inventory) -> bool {
        let has = |hay: &Option<String>, needle: &str| {
            hay.as_deref()
                .is_some_and(|h| h.to_lowercase().contains(&needle.to_lowercase()))
        };
        has(&inv.manufacturer, &self.matches.manufacturer)
            && self
                .matches
                .model
                .as_deref()
                .is_none_or(|m| has(&inv.model, m))
    }
}

/// The shipped profiles, replaced or extended by the `*.yaml` files of `dir`.
pub fn load_all(dir: Option<&Path>) -> Result<Vec<Profile>, ProfileError> {
    let mut out = Vec::new();
    for (name, text) in SHIPPED {
        out.push(Profile::parse(
            text,
            &Path::new("firmware-profiles/profiles").join(name),
        )?);
    }
    if let Some(dir) = dir {
        let entries = std::fs::read_dir(dir).map_err(|source| ProfileError::Read {
            path: dir.to_owned(),
            source,
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Read {
                path: path.clone(),
                source,
            })?;
            let p = Profile::parse(&text, &path)?;
            out.retain(|q| q.name != p.name);
            out.push(p);
        }
    }
    Ok(out)
}

/// The profile named `name`.
pub fn by_name<'a>(profiles: &'a [Profile], name: &str) -> Result<&'a Profile, ProfileError> {
    profiles
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ProfileError::Unknown {
            name: name.to_owned(),
            have: profiles
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_profiles_parse_and_match_their_models() {
        let all = load_all(None).unwrap();
        assert_eq!(all.len(), SHIPPED.len());
        let inv = |m: &str, model: &str| Inventory {
            manufacturer: Some(m.into()),
            model: Some(model.into()),
            ..Default::default()
        };
        let find = |i: &Inventory| {
            all.iter()
                .filter(|p| p.matches(i))
                .map(|p| p.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            find(&inv("Dell Inc.", "PowerEdge R650")),
            ["dell-poweredge-r650"]
        );
        assert_eq!(
            find(&inv("HPE", "ProLiant DL360 Gen10")),
            ["hpe-proliant-dl360-gen10"]
        );
        assert_eq!(
            find(&inv("Supermicro", "Super Server X12DPU-6")),
            ["supermicro-x12"]
        );
        assert_eq!(
            find(&inv("Lenovo", "ThinkSystem SR650 V2")),
            ["lenovo-thinksystem-sr650-v2"]
        );
        assert_eq!(find(&inv("Sushy Emulator", "")), ["emulator"]);
        let dell = by_name(&all, "dell-poweredge-r650").unwrap();
        assert_eq!(dell.desired().get("BootMode"), Some(&"Uefi".into()));
        assert!(
            by_name(&all, "nope")
                .unwrap_err()
                .to_string()
                .contains("emulator")
        );
    }

    #[test]
    fn bad_profiles_name_file_line_and_key() {
        let e = Profile::parse(
            "name: x\nmatch: {manufacturer: A}\nbios:\n  atributes: {}\n",
            Path::new("p.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("p.yaml") && e.contains("line 4") && e.contains("atributes"),
            "{e}"
        );
        let e = Profile::parse(
            "name: x\nmatch: {manufacturer: A}\nfirmware:\n  - {component: bios, min_version: '1', image_url: u, sha256: abc}\n",
            Path::new("q.yaml"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sha256 must be 64 hex"), "{e}");
    }
}
