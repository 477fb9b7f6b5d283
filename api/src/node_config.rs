//! The node configuration schema: `/etc/cairn/node.yaml` and its drop-ins
//! `/etc/cairn/node.d/*.yaml` (DESIGN.md "Node configuration").
//!
//! One schema for every writer (the first-boot wizard, the install agent's seed, the image
//! build's baked drop-ins, the lab) and for cairn-node, which reads, merges and validates
//! the files into its settings. Every key is optional, so that a drop-in may set just one,
//! and unset keys are not written, so a drop-in never overrides another file with a null;
//! what is required is checked by cairn-node after merging. Unknown keys are refused: a typo
//! is reported where it was written instead of being ignored.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The on-disk schema. Every key is optional here so that a drop-in may set just one; what is
/// required is checked after merging, when cairn-node builds its `Settings`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The appliance's hostname.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// How to reach the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hub: Option<HubSection>,
    /// Host network.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<NetworkSection>,
    /// kubelet unit and files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<KubeletSection>,
    /// Where state lives, how big the report queue may grow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<StateSection>,
    /// The local API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api: Option<ApiSection>,
    /// The first-boot wizard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wizard: Option<WizardSection>,
    /// A/B upgrades.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<UpgradeSection>,
    /// Where the identity key lives: the TPM or a file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmSection>,
}

/// `tpm:`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TpmSection {
    /// Site policy for the identity key (default `preferred`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<TpmPolicy>,
    /// TPM Command Transmission Interface: `device:/dev/tpmrm0` (the default when it
    /// exists), `swtpm:host=127.0.0.1,port=2321`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcti: Option<String>,
}

/// Whether the identity key must, should or must not live in a TPM.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TpmPolicy {
    /// In the TPM; without one the node refuses to start.
    Required,
    /// In the TPM when there is one, else in a file.
    #[default]
    Preferred,
    /// Always in a file.
    Off,
}

/// `hub:`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// `https://host:port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// More URLs of the same fleet's hubs (several hub processes on one etcd), tried in
    /// order after `url` when a hub cannot be reached; `url` may then be left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    /// SHA-256 of the hub CA certificate (DER), hex with or without colons.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_fingerprint: Option<String>,
    /// PEM bundle of the hub CA, instead of (or as well as) the fingerprint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// File holding the one-time enrollment token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
}

/// `network:`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// Directory of netplan YAML files applied at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netplan_dir: Option<PathBuf>,
    /// Whether the node applies the network at all (off when something else owns it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manage: Option<bool>,
    /// The underlay address VXLAN tunnels of VPC overlays end on (configured on a link by
    /// the host network). Reported to the hub, which hands it to the VPC's peers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vtep_address: Option<String>,
}

/// `kubelet:`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KubeletSection {
    /// systemd unit to manage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// `ExecStart=` of the drop-in (the kubelet binary and its flags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exec_start: Option<String>,
    /// Directory for bootstrap-kubeconfig and config.yaml.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Directory for the unit drop-in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropin_dir: Option<PathBuf>,
    /// D-Bus address of the system bus.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub system_bus: Option<String>,
}

/// `state:`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StateSection {
    /// Directory of the state store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
    /// Most reports kept while the hub is unreachable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_limit: Option<u64>,
}

/// `api:`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Unix socket of the local API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
}

/// `wizard:`.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WizardSection {
    /// `address:port` the wizard listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

/// `upgrade:` (docs/node-daemon.md "Upgrades").
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpgradeSection {
    /// Release public keys (PEM, from `cairn image keygen`) bundles must be signed by. The
    /// node's own trust store: never taken from the hub.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_keys: Option<Vec<PathBuf>>,
    /// Where bundles are downloaded and the upgrade's state is kept.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// Directory holding the slot block devices by partition label (`root-a`, `root-b`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slot_dir: Option<PathBuf>,
    /// Instead of `slot_dir`: the whole disk (device or image file) whose GPT names the slots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<PathBuf>,
    /// The GRUB environment block on the mounted ESP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grubenv: Option<PathBuf>,
    /// The kernel command line, where `cairn.slot=` names the booted slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<PathBuf>,
    /// Boots the new slot gets before GRUB falls back (1 or 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tries: Option<u8>,
    /// Run before the reboot (e.g. to drain the node); a failure stops the upgrade.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub drain_command: Option<Vec<String>>,
    /// How to reboot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reboot_command: Option<Vec<String>>,
    /// Health checks after booting the new slot must pass within this many seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_deadline_seconds: Option<u64>,
    /// Operator checks run after booting the new slot, besides the built-in ones.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<Vec<HealthCheckSection>>,
    /// The appliance's UTC offset for maintenance windows, `+HH:MM`; default: the local time
    /// zone (`/etc/localtime`, daylight saving included).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utc_offset: Option<String>,
}

/// One operator health check: a command (exit 0 passes) or an HTTP probe (2xx passes).
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// Shown in reports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// argv of a command.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `http://` URL to GET.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// The node settings the hub's configuration layers set (docs/hub.md "Configuration
/// layers"): the part of an appliance's configuration an operator changes fleet-wide
/// without a new image. The hub validates it with [`FleetConfig::validate`] before it
/// accepts a layer, and cairn-node with the same function before it applies one. Keys of
/// the node's own trust (hub URLs, release keys, paths) are not here: the hub never sets
/// them.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// DNS servers (IP addresses), in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Vec<String>>,
    /// NTP servers (host names or addresses), in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ntp: Option<Vec<String>>,
    /// How often the node heartbeats, seconds (1 to 3600); unset: the hub's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_seconds: Option<u32>,
    /// Operator health checks, as `upgrade.health_checks` of node.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_checks: Option<Vec<HealthCheckSection>>,
    /// Run before a reboot to drain the node, as `upgrade.drain_command` of node.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_command: Option<Vec<String>>,
    /// kubelet settings, as `kubelet:` of node.yaml.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubelet: Option<KubeletSection>,
}

/// Longest heartbeat interval a layer may set: an hour, past which offline detection is
/// too slow to be of use.
pub const MAX_HEARTBEAT_INTERVAL: u32 = 3600;

impl FleetConfig {
    /// Checks what serde cannot: addresses, names, ranges, one kind per health check. The
    /// error names the key (`settings.dns[1]`).
    pub fn validate(&self) -> Result<(), String> {
        for (i, dns) in self.dns.iter().flatten().enumerate() {
            if dns.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("settings.dns[{i}]: {dns:?} is not an IP address"));
            }
        }
        for (i, ntp) in self.ntp.iter().flatten().enumerate() {
            if ntp.parse::<std::net::IpAddr>().is_err() && !valid_hostname(ntp) {
                return Err(format!(
                    "settings.ntp[{i}]: {ntp:?} is neither an IP address nor a host name"
                ));
            }
        }
        if let Some(s) = self.heartbeat_interval_seconds
            && !(1..=MAX_HEARTBEAT_INTERVAL).contains(&s)
        {
            return Err(format!(
                "settings.heartbeat_interval_seconds: {s} is outside 1..={MAX_HEARTBEAT_INTERVAL}"
            ));
        }
        for (i, check) in self.health_checks.iter().flatten().enumerate() {
            match (&check.command, &check.http) {
                (Some(argv), None) if !argv.is_empty() => {}
                (None, Some(url)) if url.starts_with("http://") => {}
                (None, Some(url)) => {
                    return Err(format!(
                        "settings.health_checks[{i}].http: {url:?} must be an http:// URL"
                    ));
                }
                _ => {
                    return Err(format!(
                        "settings.health_checks[{i}]: give exactly one of a non-empty \
                         `command` or `http`"
                    ));
                }
            }
        }
        if self.drain_command.as_ref().is_some_and(Vec::is_empty) {
            return Err("settings.drain_command: give the command's argv, or leave it out".into());
        }
        Ok(())
    }
}

/// Normalises a SHA-256 fingerprint to lowercase hex without separators.
pub fn normalize_fingerprint(text: &str) -> Option<String> {
    crate::CertFingerprint::parse(text)
        .ok()
        .map(|fp| fp.hex().to_owned())
}

/// Checks a hostname as a DNS name (RFC 1123 labels).
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A drop-in written from the typed schema sets only what it names: a `null` would
    /// override the main file's value when cairn-node merges the files.
    #[test]
    fn unset_keys_are_not_written_and_unknown_keys_are_refused() {
        let config = NodeConfig {
            upgrade: Some(UpgradeSection {
                tries: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(json, r#"{"upgrade":{"tries":2}}"#);
        assert_eq!(serde_json::from_str::<NodeConfig>(&json).unwrap(), config);
        let typo = serde_json::from_str::<NodeConfig>(r#"{"hub":{"urll":"https://x"}}"#);
        assert!(
            typo.unwrap_err()
                .to_string()
                .contains("unknown field `urll`")
        );
    }

    #[test]
    fn hostnames_and_fingerprints_are_checked() {
        assert!(valid_hostname("edge-1.site.example"));
        for bad in ["", "-edge", "edge_1", &"a".repeat(64)] {
            assert!(!valid_hostname(bad), "{bad:?}");
        }
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", "AB:".repeat(31) + "AB")).as_deref(),
            Some("ab".repeat(32).as_str())
        );
        assert_eq!(normalize_fingerprint("abc"), None);
    }
}
