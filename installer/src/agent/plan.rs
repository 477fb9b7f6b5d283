//! What one install does, handed from the boot server (`POST /v1/install/plan` with the
//! one-time nonce of the iPXE script, answered with a [`PlanGrant`]) or from
//! `seed/install.yaml` on the install ISO to the agent. Agent and
//! boot server ship in the same binary set, so unknown fields are refused: a mismatch means
//! mixed artifacts.
//!
//! The seed the agent writes to the data partition (`seed/` on the `data` filesystem, mounted
//! at `/var/lib/cairn` on the appliance) is a cairn-node seed as node-daemon's `seed` module
//! defines it: `node.yaml` in cairn-node's own schema plus the files it refers to.
//! `cairn-node run --seed-dir /var/lib/cairn/seed` copies the directory into `/etc/cairn/`,
//! so node.yaml names the copies there ([`NODE_DIR`]) and `netplan/` lands in cairn-node's
//! default netplan directory. No profile translates it.

use std::collections::BTreeMap;

use cairn_api::node_config::{HubSection, NodeConfig};
use serde::{Deserialize, Serialize};

/// The install plan for one server.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallPlan {
    /// Server name (from the inventory); also the installed hostname.
    #[serde(default)]
    pub name: String,
    /// Which disk to install to (see `agent::disks::Hint`); none: the only eligible disk.
    #[serde(default)]
    pub disk_hint: Option<String>,
    /// Whether a disk holding partitions or filesystems may be overwritten.
    #[serde(default)]
    pub wipe: bool,
    /// Contents of `node.yaml` for the appliance, in cairn-node's schema (see [`node_yaml`]).
    #[serde(default)]
    pub node_yaml: Option<String>,
    /// Netplan files for the appliance, by file name.
    #[serde(default)]
    pub netplan: BTreeMap<String, String>,
    /// The hub's CA bundle (PEM).
    #[serde(default)]
    pub hub_ca: Option<String>,
    /// The enrollment token for the hub; written to the data partition with mode 0600 and
    /// never logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment_token: Option<String>,
}

/// The boot server's answer to the nonce exchange: the plan, and the token the agent
/// reports progress with (neither is ever on the kernel command line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanGrant {
    /// The plan, with this install's single-use enrollment token.
    pub plan: InstallPlan,
    /// Bearer token for `POST /v1/install/progress`.
    pub report_token: String,
}

/// Where cairn-node copies a seed to, and so where node.yaml finds the seed's files.
pub const NODE_DIR: &str = "/etc/cairn";
/// The seed file holding the hub's CA bundle.
pub const SEED_HUB_CA: &str = "hub-ca.pem";
/// The seed file holding the enrollment token.
pub const SEED_TOKEN: &str = "enrollment-token";

/// `node.yaml` in cairn-node's schema ([`NodeConfig`]: `hostname`, `hub.url`,
/// `hub.ca_file`, `hub.token_file`) for a server whose seed carries the hub CA and an
/// enrollment token. Serialised rather than formatted, so any name or URL is quoted as YAML
/// needs.
pub fn node_yaml(hostname: &str, hub_url: &str) -> String {
    let doc = NodeConfig {
        hostname: Some(hostname.to_owned()),
        hub: Some(HubSection {
            url: Some(hub_url.to_owned()),
            ca_file: Some(format!("{NODE_DIR}/{SEED_HUB_CA}").into()),
            token_file: Some(format!("{NODE_DIR}/{SEED_TOKEN}").into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = serde_yaml_ng::to_string(&doc).expect("plain strings serialise");
    format!(
        "# Written by cairn-agent from the boot server's plan; cairn-node copies this seed to {NODE_DIR}/.\n{body}"
    )
}

impl InstallPlan {
    /// The files of the seed directory on the data partition (`seed/...`), with modes.
    pub fn seed_files(&self) -> Vec<(String, Vec<u8>, u32)> {
        let mut files = Vec::new();
        if let Some(node) = &self.node_yaml {
            files.push(("node.yaml".to_owned(), node.clone().into_bytes(), 0o644));
        }
        for (name, text) in &self.netplan {
            files.push((format!("netplan/{name}"), text.clone().into_bytes(), 0o600));
        }
        if let Some(ca) = &self.hub_ca {
            files.push((SEED_HUB_CA.to_owned(), ca.clone().into_bytes(), 0o644));
        }
        if let Some(token) = &self.enrollment_token {
            files.push((SEED_TOKEN.to_owned(), token.clone().into_bytes(), 0o600));
        }
        if !self.name.is_empty() {
            files.push((
                "hostname".to_owned(),
                format!("{}\n", self.name).into_bytes(),
                0o644,
            ));
        }
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_node_daemon::{config, seed};

    /// The seed a boot-server plan produces is taken by cairn-node's own seed and config code
    /// as it is: copied into /etc/cairn, then valid, with the CA and token where it says.
    #[test]
    fn a_boot_server_seed_is_a_valid_cairn_node_configuration() {
        let plan = InstallPlan {
            name: "edge-1".into(),
            node_yaml: Some(node_yaml("edge-1", "https://hub.example:8443/")),
            netplan: [(
                "50-cairn.yaml".to_owned(),
                "network: {version: 2}\n".to_owned(),
            )]
            .into(),
            hub_ca: Some("-----BEGIN CERTIFICATE-----\n".into()),
            enrollment_token: Some("secret-token".into()),
            ..Default::default()
        };
        let seed_dir = tempfile::tempdir().unwrap();
        for (name, bytes, _) in plan.seed_files() {
            let path = seed_dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        }
        let root = tempfile::tempdir().unwrap();
        let origin = seed::ensure_config(root.path(), &[seed_dir.path().into()]).unwrap();
        assert_eq!(origin, seed::Origin::Seed(seed_dir.path().into()));
        let settings = config::load(root.path()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(settings.hostname, "edge-1");
        assert_eq!(settings.hub_url, "https://hub.example:8443");
        let ca = settings.hub_ca_file.expect("hub.ca_file");
        assert_eq!(ca, root.path().join("etc/cairn/hub-ca.pem"));
        assert!(
            std::fs::read_to_string(ca)
                .unwrap()
                .contains("BEGIN CERTIFICATE")
        );
        assert_eq!(
            std::fs::read_to_string(&settings.token_file).unwrap(),
            "secret-token"
        );
        assert_eq!(settings.netplan_dir, root.path().join("etc/cairn/netplan"));
        assert!(settings.netplan_dir.join("50-cairn.yaml").is_file());
        // The seed leaves the network to cairn-node; a profile that owns it says so itself.
        assert!(settings.manage_network);
    }
}
