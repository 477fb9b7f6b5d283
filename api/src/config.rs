//! Fleet configuration layers (docs/hub.md "Configuration layers"): what an operator writes
//! ([`LayerDocument`]), how layers merge ([`merge`]), what an appliance is sent
//! ([`RenderedConfig`], in its [`crate::DesiredState`]) and what it answers
//! ([`ConfigReport`], in its [`crate::NodeStatus`]).
//!
//! Merge rule: layers apply in the order tenant, site, label groups (by name), appliance;
//! a later layer wins per key. Mappings (the settings, the netplan patch) merge key by key,
//! as netplan merges its files; a later scalar or list replaces the earlier one whole.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::node_config::FleetConfig;

/// Which layer: the kinds in merge order, each with its name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LayerRef {
    /// Every appliance of a tenant.
    Tenant(String),
    /// Every appliance of a site.
    Site(String),
    /// The appliances of the group's tenant that match its label selector.
    Group(String),
    /// One appliance.
    Appliance(String),
}

impl LayerRef {
    /// `tenant`, `site`, `group` or `appliance`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tenant(_) => "tenant",
            Self::Site(_) => "site",
            Self::Group(_) => "group",
            Self::Appliance(_) => "appliance",
        }
    }

    /// The name after the kind.
    pub fn name(&self) -> &str {
        match self {
            Self::Tenant(n) | Self::Site(n) | Self::Group(n) | Self::Appliance(n) => n,
        }
    }
}

impl fmt::Display for LayerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind(), self.name())
    }
}

impl FromStr for LayerRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "layer {s:?}: write tenant:NAME, site:NAME, group:NAME or appliance:ID \
                 (e.g. site:berlin)"
            )
        };
        let (kind, name) = s.split_once(':').ok_or_else(bad)?;
        if name.is_empty() || name.contains('/') {
            return Err(bad());
        }
        let name = name.to_owned();
        Ok(match kind {
            "tenant" => Self::Tenant(name),
            "site" => Self::Site(name),
            "group" => Self::Group(name),
            "appliance" => Self::Appliance(name),
            _ => return Err(bad()),
        })
    }
}

/// The file `cairn hub config apply -f` reads: one layer, whole. A command, so unknown keys
/// are refused.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayerDocument {
    /// The layer this file is, e.g. `site:berlin` ([`LayerRef`]).
    pub layer: String,
    /// A group's tenant; unset: the caller's (`default` for a fleet-wide token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A group's label selector (`kubectl -l` syntax); only groups have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Node settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<FleetConfig>,
    /// A netplan patch: a netplan document (`network:` ...), merged as YAML maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netplan: Option<Value>,
}

/// The merged configuration one appliance is sent. A document: unknown fields tolerated.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RenderedConfig {
    /// Increases whenever the merged result changes.
    pub generation: u64,
    /// The merged node settings.
    #[serde(default)]
    pub settings: FleetConfig,
    /// The merged netplan patch, when a layer has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netplan: Option<Value>,
    /// The layers merged, in order, each `kind:name@generation`.
    #[serde(default)]
    pub layers: Vec<String>,
}

/// What a node did with a rendered configuration. A report: unknown fields tolerated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConfigReport {
    /// The [`RenderedConfig::generation`] this is about.
    pub generation: u64,
    /// Applied, refused or rolled back.
    pub outcome: ConfigOutcome,
    /// The last generation the node applied and kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_good_generation: Option<u64>,
    /// Settings the node received and keeps but does not act on (yet), e.g.
    /// `settings.ntp`: an operator sees that setting them changed nothing on it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_applied: Vec<String>,
}

/// The outcome of a [`ConfigReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ConfigOutcome {
    /// `ConfigApplied`: in force.
    Applied,
    /// Not applied: the node's own checks refused it.
    Refused {
        /// Why, for the operator.
        reason: String,
    },
    /// Applied, then undone (a probe failed); the last good generation is in force.
    RolledBack {
        /// Why, for the operator.
        reason: String,
    },
}

/// Merges `over` into `base`: mappings key by key, anything else (scalars, lists) replaced.
pub fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot) => merge(slot, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

/// One difference between two documents, at a key path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DiffEntry {
    /// Key path, e.g. `settings.dns` or `netplan.network.ethernets.eth0.mtu`.
    pub path: String,
    /// The value before; absent: the key is new.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old: Option<Value>,
    /// The value after; absent: the key is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new: Option<Value>,
}

impl fmt::Display for DiffEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.old, &self.new) {
            (None, Some(n)) => write!(f, "+ {}: {n}", self.path),
            (Some(o), None) => write!(f, "- {}: {o}", self.path),
            (Some(o), Some(n)) => write!(f, "~ {}: {o} -> {n}", self.path),
            (None, None) => write!(f, "  {}", self.path),
        }
    }
}

/// The differences from `old` to `new`, by key path down through mappings; lists and
/// scalars compare whole (as they merge).
pub fn diff(old: &Value, new: &Value) -> Vec<DiffEntry> {
    let mut out = Vec::new();
    diff_at("", Some(old), Some(new), &mut out);
    out
}

fn diff_at(path: &str, old: Option<&Value>, new: Option<&Value>, out: &mut Vec<DiffEntry>) {
    // A mapping added or removed whole is listed key by key, as one changed in part is.
    let empty = serde_json::Map::new();
    let either_map = matches!(old, Some(Value::Object(_))) || matches!(new, Some(Value::Object(_)));
    if let (true, Some(o), Some(n)) = (either_map, as_map(old, &empty), as_map(new, &empty)) {
        let keys: std::collections::BTreeSet<&String> = o.keys().chain(n.keys()).collect();
        for k in keys {
            let sub = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            diff_at(&sub, o.get(k), n.get(k), out);
        }
        return;
    }
    if old != new {
        out.push(DiffEntry {
            path: path.to_owned(),
            old: old.cloned(),
            new: new.cloned(),
        });
    }
}

/// A mapping as a mapping, an absent value as `empty`, anything else as `None`.
fn as_map<'a>(
    v: Option<&'a Value>,
    empty: &'a serde_json::Map<String, Value>,
) -> Option<&'a serde_json::Map<String, Value>> {
    match v {
        Some(Value::Object(m)) => Some(m),
        None => Some(empty),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn later_layers_win_per_key_maps_merge_lists_replace() {
        let mut merged = json!({"settings": {"dns": ["192.0.2.53"], "ntp": ["a"]},
            "netplan": {"network": {"ethernets": {"eth0": {"mtu": 1500, "addresses": ["10.0.0.2/24"]}}}}});
        merge(
            &mut merged,
            &json!({"settings": {"dns": ["192.0.2.1", "192.0.2.2"]},
                "netplan": {"network": {"ethernets": {"eth0": {"addresses": ["10.0.0.3/24"]},
                    "eth1": {"dhcp4": true}}}}}),
        );
        assert_eq!(
            merged,
            json!({"settings": {"dns": ["192.0.2.1", "192.0.2.2"], "ntp": ["a"]},
                "netplan": {"network": {"ethernets": {
                    "eth0": {"mtu": 1500, "addresses": ["10.0.0.3/24"]},
                    "eth1": {"dhcp4": true}}}}})
        );
    }

    #[test]
    fn diff_names_added_removed_and_changed_keys() {
        let old = json!({"settings": {"dns": ["a"], "ntp": ["n"]}});
        let new = json!({"settings": {"dns": ["b"], "heartbeat_interval_seconds": 5}});
        let lines: Vec<String> = diff(&old, &new).iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                r#"~ settings.dns: ["a"] -> ["b"]"#,
                "+ settings.heartbeat_interval_seconds: 5",
                r#"- settings.ntp: ["n"]"#,
            ]
        );
        assert!(diff(&new, &new).is_empty());
        let added: Vec<String> = diff(&json!({}), &json!({"settings": {"dns": ["a"]}}))
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            added,
            [r#"+ settings.dns: ["a"]"#],
            "a new mapping, key by key"
        );
    }

    #[test]
    fn layer_refs_parse_and_order_as_they_merge() {
        let refs: Vec<LayerRef> = ["appliance:x", "group:gpu", "site:berlin", "tenant:acme"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let mut sorted = refs.clone();
        sorted.sort();
        assert_eq!(
            sorted.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["tenant:acme", "site:berlin", "group:gpu", "appliance:x"]
        );
        for bad in ["site", "site:", "rack:r1", "site:a/b"] {
            assert!(bad.parse::<LayerRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked_naming_the_key() {
        let bad = FleetConfig {
            dns: Some(vec!["192.0.2.1".into(), "dns.example".into()]),
            ..Default::default()
        };
        assert!(bad.validate().unwrap_err().starts_with("settings.dns[1]"));
        let zero = FleetConfig {
            heartbeat_interval_seconds: Some(0),
            ..Default::default()
        };
        assert!(
            zero.validate()
                .unwrap_err()
                .contains("heartbeat_interval_seconds")
        );
    }
}
