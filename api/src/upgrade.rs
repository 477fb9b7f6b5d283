use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// An OS upgrade the hub asks of one appliance, carried in [`crate::DesiredState`]. Part of a
/// document, so unknown fields are tolerated.
///
/// The node downloads the bundle, checks it against its own trust store (never against what
/// the hub says), writes the inactive slot and reboots into it once. A newer order (another
/// version or campaign) replaces this one; its absence means "stay on what you run".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UpgradeOrder {
    /// The campaign this order belongs to, for reports and audit.
    pub campaign: String,
    /// The release version to run, e.g. `2026.11.2`.
    pub version: String,
    /// Where to download the signed update bundle (`https://...`; the hub serves its own
    /// releases, an external mirror is allowed).
    pub bundle_url: String,
    /// SHA-256 of the whole bundle file, lower-case hex: a download check, not a trust
    /// anchor (the bundle's Ed25519 signature is).
    pub sha256: String,
    /// Size of the bundle file in bytes, for progress and free-space checks.
    pub size_bytes: u64,
    /// Versions this release may be installed over; empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compatible_from: Vec<String>,
    /// Allow installing a version older than the running one.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// Install (write, reboot) only inside this window, in the appliance's local time.
    /// `None`: install as soon as the order arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<MaintenanceWindow>,
    /// Download and verify ahead of the window.
    #[serde(default)]
    pub prestage: bool,
    /// Download bandwidth cap in bytes per second; `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_second: Option<u64>,
}

/// A daily maintenance window in the appliance's local time zone, `HH:MM` to `HH:MM`. A
/// window whose end is before its start spans midnight (`22:00`–`04:00`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MaintenanceWindow {
    /// Opening time, `HH:MM`.
    pub start: String,
    /// Closing time, `HH:MM`.
    pub end: String,
}

impl MaintenanceWindow {
    /// Parses `HH:MM-HH:MM` (00:00 to 23:59 each; may span midnight).
    pub fn parse(s: &str) -> Result<Self, String> {
        let (start, end) = s
            .split_once('-')
            .ok_or_else(|| format!("window {s:?}: expected HH:MM-HH:MM"))?;
        for t in [start, end] {
            let ok = t.len() == 5
                && t.as_bytes()[2] == b':'
                && t[..2]
                    .bytes()
                    .chain(t[3..].bytes())
                    .all(|b| b.is_ascii_digit())
                && t[..2].parse::<u8>().is_ok_and(|h| h < 24)
                && t[3..].parse::<u8>().is_ok_and(|m| m < 60);
            if !ok {
                return Err(format!(
                    "window {s:?}: {t:?} is not a time HH:MM (00:00 to 23:59)"
                ));
            }
        }
        Ok(Self {
            start: start.into(),
            end: end.into(),
        })
    }
}

/// Where an appliance is with its last upgrade order, reported in [`crate::NodeStatus`]. A
/// report, so unknown fields are tolerated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct UpgradeReport {
    /// The campaign of the order this report is about.
    #[serde(default)]
    pub campaign: String,
    /// The version being installed (or that was installed, refused or rolled back).
    pub version: String,
    /// The phase reached.
    pub phase: UpgradePhase,
    /// Why it stopped, for `refused`, `failed`, `rolled-back` and `interrupted`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// Bytes downloaded or written so far in the current phase.
    #[serde(default)]
    pub bytes_done: u64,
    /// Bytes the current phase will handle in all.
    #[serde(default)]
    pub bytes_total: u64,
    /// The last lines the failed version logged (health-check output, boot log), bounded,
    /// so the operator sees why without reaching the site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// When the node entered this phase.
    #[schemars(with = "crate::Rfc3339")]
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// The phases of an appliance upgrade, in order; the last five end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradePhase {
    /// Order received; waiting for the maintenance window.
    Waiting,
    /// Fetching the bundle.
    Downloading,
    /// Bundle downloaded and verified ahead of the window (prestage).
    Staged,
    /// Streaming the root image into the inactive slot.
    Writing,
    /// Boot loader set to try the new slot once; rebooting.
    Rebooting,
    /// Booted the new slot; health checks running before the deadline.
    Verifying,
    /// Health checks passed; the new slot is marked good.
    Committed,
    /// The new slot failed its health checks or did not boot; the old slot runs again.
    RolledBack,
    /// The node restarted while writing: the old slot runs, the new one was not activated.
    Interrupted,
    /// The bundle was refused before anything was written (signature, hash, version).
    Refused,
    /// Any other failure before the reboot; the running system is unchanged.
    Failed,
}

impl UpgradePhase {
    /// Whether the upgrade is over (successfully or not).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Committed | Self::RolledBack | Self::Interrupted | Self::Refused | Self::Failed
        )
    }
}
