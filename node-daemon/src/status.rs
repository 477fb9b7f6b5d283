//! What `cairn-node status` shows and the local API serves: a snapshot of the daemon.

use std::collections::BTreeMap;

use cairn_api::Condition;
use serde::{Deserialize, Serialize};

/// The daemon's state as the local API reports it (`GET /v1/status` on the node socket).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalStatus {
    /// Hostname from the configuration.
    pub hostname: String,
    /// Hub URL.
    pub hub_url: String,
    /// What the daemon is doing: `registering`, `running`, `identity-rejected`.
    pub phase: String,
    /// Appliance ID, once registered.
    pub appliance_id: Option<String>,
    /// Site, once registered.
    pub site: Option<String>,
    /// Client certificate expiry (RFC 3339).
    pub certificate_not_after: Option<String>,
    /// Generation of the last desired state received.
    pub desired_generation: Option<u64>,
    /// Generation fully applied.
    pub applied_generation: u64,
    /// Heartbeat interval in force, seconds.
    pub heartbeat_interval_seconds: u32,
    /// Whether the last exchange with the hub succeeded.
    pub hub_reachable: bool,
    /// When the hub last answered (RFC 3339).
    pub last_hub_contact: Option<String>,
    /// The last error, with what to do about it.
    pub last_error: Option<String>,
    /// Reports waiting for the hub.
    pub queued_reports: u64,
    /// Counters (reports dropped, reconnects, kubelet restarts).
    pub counters: BTreeMap<String, u64>,
    /// Conditions as sent in heartbeats.
    pub conditions: Vec<Condition>,
    /// kubelet unit state, `active/running` style, when the node manages it.
    pub kubelet_unit: Option<String>,
    /// The A/B slot the system booted from (`a`/`b`).
    #[serde(default)]
    pub booted_slot: Option<String>,
    /// Where the last upgrade order is.
    #[serde(default)]
    pub upgrade: Option<cairn_api::UpgradeReport>,
}

impl LocalStatus {
    /// Human-readable lines for `cairn-node status`.
    pub fn render_text(&self) -> String {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let mut out = String::new();
        let mut line = |k: &str, v: String| out.push_str(&format!("{k:<22}{v}\n"));
        line("hostname", self.hostname.clone());
        line("phase", self.phase.clone());
        line("appliance", or_dash(&self.appliance_id));
        line("site", or_dash(&self.site));
        line("hub", self.hub_url.clone());
        line(
            "hub reachable",
            format!(
                "{} (last contact {})",
                if self.hub_reachable { "yes" } else { "no" },
                or_dash(&self.last_hub_contact)
            ),
        );
        line("certificate expires", or_dash(&self.certificate_not_after));
        line(
            "generation",
            format!(
                "applied {} / desired {}",
                self.applied_generation,
                self.desired_generation
                    .map_or_else(|| "-".into(), |g| g.to_string())
            ),
        );
        line(
            "heartbeat",
            format!("every {} s", self.heartbeat_interval_seconds),
        );
        line("queued reports", self.queued_reports.to_string());
        line("kubelet", or_dash(&self.kubelet_unit));
        line("booted slot", or_dash(&self.booted_slot));
        if let Some(u) = &self.upgrade {
            line(
                "upgrade",
                format!("{} {:?} {}", u.version, u.phase, u.reason)
                    .trim_end()
                    .to_owned(),
            );
        }
        for c in &self.conditions {
            line(
                &format!("  {}", c.kind),
                format!("{:?} {} {}", c.status, c.reason, c.message)
                    .trim_end()
                    .to_owned(),
            );
        }
        for (k, v) in &self.counters {
            line(&format!("  {k}"), v.to_string());
        }
        if let Some(e) = &self.last_error {
            line("last error", e.clone());
        }
        out
    }
}

/// A NIC as the wizard lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicView {
    /// Interface name.
    pub name: String,
    /// MAC address.
    pub mac: String,
    /// Whether the link is up.
    pub link_up: bool,
}
