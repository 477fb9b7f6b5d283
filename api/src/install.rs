use serde::{Deserialize, Serialize};

/// `POST /v1/install/progress` on the boot server: the install agent reports a step. A command
/// (it moves the server's state machine), so unknown fields are rejected; agent and boot server
/// come from the same build, so a mismatch means mixed artifacts and should be loud.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InstallProgress {
    /// Boot MAC of the server being installed.
    pub mac: String,
    /// The step reached.
    pub step: InstallStep,
    /// Bytes of the image written so far.
    #[serde(default)]
    pub bytes_written: u64,
    /// Total bytes to write, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    /// Human-readable detail: the chosen disk, or why it failed.
    #[serde(default)]
    pub message: String,
}

/// The steps of an install, in order; `Failed` may follow any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum InstallStep {
    /// The agent started and found its configuration.
    Started,
    /// Disks discovered and the target chosen.
    DiskSelected,
    /// Partition table written (not yet bootable).
    Partitioned,
    /// Image streaming into the root slot.
    Writing,
    /// Image written and its SHA-256 verified.
    Verified,
    /// Boot loader installed: the disk is now bootable (after the seed: it never boots
    /// without it).
    BootloaderInstalled,
    /// Seed configuration written (the disk is not bootable yet).
    SeedWritten,
    /// Done; the agent is about to reboot.
    Completed,
    /// Gave up; `message` says why.
    Failed,
}
