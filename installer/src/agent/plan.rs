//! What one install does, handed from the boot server (`GET /v1/install/plan` with the
//! per-install token) or from `seed/install.yaml` on the install ISO to the agent. Agent and
//! boot server ship in the same binary set, so unknown fields are refused: a mismatch means
//! mixed artifacts.

use std::collections::BTreeMap;

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
    /// Contents of `node.yaml` (hub URL, enrollment token file, hub CA) for the appliance.
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
            files.push(("hub-ca.pem".to_owned(), ca.clone().into_bytes(), 0o644));
        }
        if let Some(token) = &self.enrollment_token {
            files.push((
                "enrollment-token".to_owned(),
                token.clone().into_bytes(),
                0o600,
            ));
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
