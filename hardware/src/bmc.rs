//! The one BMC abstraction every protocol implements, and the values it speaks in.
//!
//! A protocol that lacks a capability keeps the trait's default method, which returns
//! [`BmcError::Unsupported`] without touching the network: callers learn "IPMI has no
//! virtual media" before any packet is sent.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// Something a BMC may or may not be able to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Capability {
    /// Power state and power actions.
    Power,
    /// One-time and persistent boot device.
    Boot,
    /// Manufacturer, model, serial, firmware versions, CPUs, memory, NICs, storage.
    Inventory,
    /// Insert and eject a remote ISO.
    VirtualMedia,
    /// Event logs (Redfish LogServices, IPMI SEL).
    Logs,
    /// Temperatures, fans, voltages.
    Sensors,
    /// BIOS attributes: read, stage, pending.
    Bios,
    /// Firmware inventory and update.
    Firmware,
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Capability::Power => "power",
            Capability::Boot => "boot",
            Capability::Inventory => "inventory",
            Capability::VirtualMedia => "virtual media",
            Capability::Logs => "logs",
            Capability::Sensors => "sensors",
            Capability::Bios => "BIOS attributes",
            Capability::Firmware => "firmware update",
        })
    }
}

/// Why a BMC operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    /// The protocol or this BMC cannot do it; nothing was sent.
    #[error("{protocol} BMC does not support {capability}")]
    Unsupported {
        /// What was asked.
        capability: Capability,
        /// `redfish` or `ipmi`.
        protocol: &'static str,
    },
    /// The BMC rejected the credentials. They are not retried (accounts lock out).
    #[error(
        "authentication failed as user {user:?}: {detail} (not retried, to avoid locking the account)"
    )]
    Auth {
        /// The user name (never the password).
        user: String,
        /// What the BMC said.
        detail: String,
    },
    /// The BMC did not answer in time.
    #[error("no answer within {seconds:.1} s while {doing}")]
    Timeout {
        /// What cairn was waiting for.
        doing: String,
        /// How long it waited.
        seconds: f64,
    },
    /// The network or TLS failed.
    #[error("{doing}")]
    Transport {
        /// What cairn was doing.
        doing: String,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The BMC answered with an error status.
    #[error("{doing}: BMC answered {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// What cairn was doing.
        doing: String,
        /// HTTP status or IPMI completion code, as text.
        status: String,
        /// The BMC's own message, when it gave one.
        message: Option<String>,
    },
    /// The BMC answered something cairn cannot understand.
    #[error("{doing}: malformed answer: {detail}")]
    Malformed {
        /// What cairn was doing.
        doing: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The request itself is invalid for this BMC (e.g. a value it does not allow).
    #[error("{0}")]
    Invalid(String),
    /// The BMC accepted a setting but reads back something else.
    #[error("{what}: set {wanted}, BMC reads back {got}")]
    NotApplied {
        /// Which setting.
        what: String,
        /// The value cairn set.
        wanted: String,
        /// The value the BMC reports.
        got: String,
    },
}

impl BmcError {
    /// Whether the credentials were refused (the caller must not retry them).
    pub fn is_auth(&self) -> bool {
        matches!(self, BmcError::Auth { .. })
    }
}

/// Result of a BMC operation.
pub type BmcResult<T> = Result<T, BmcError>;

/// Chassis power state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    /// Powered on.
    On,
    /// Powered off.
    Off,
    /// Transitioning or unknown.
    Unknown,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Unknown => "unknown",
        })
    }
}

/// A power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    /// Power on.
    On,
    /// Hard power off.
    Off,
    /// Ask the OS to shut down (ACPI).
    SoftOff,
    /// Off, then on.
    Cycle,
    /// Hard reset.
    Reset,
}

/// Device to boot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BootDevice {
    /// Network boot (PXE).
    Pxe,
    /// CD/DVD, including virtual media.
    Cd,
    /// First local disk.
    Disk,
    /// UEFI HTTP boot.
    Http,
    /// Firmware setup.
    BiosSetup,
    /// No override.
    None,
}

impl fmt::Display for BootDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootDevice::Pxe => "pxe",
            BootDevice::Cd => "cd",
            BootDevice::Disk => "disk",
            BootDevice::Http => "http",
            BootDevice::BiosSetup => "bios-setup",
            BootDevice::None => "none",
        })
    }
}

/// Firmware boot mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BootMode {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Legacy,
}

/// A boot override: device, once or persistent, and the mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootOverride {
    /// Device.
    pub device: BootDevice,
    /// Keep it for every boot (otherwise only the next one).
    pub persistent: bool,
    /// UEFI or legacy; `None` leaves the BMC's current mode.
    pub mode: Option<BootMode>,
}

/// One network interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Name or id.
    pub name: String,
    /// MAC address, lower case.
    pub mac: Option<String>,
    /// Link state as the BMC reports it.
    pub link: Option<String>,
}

/// One disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Name or model.
    pub name: String,
    /// Capacity in bytes.
    pub capacity_bytes: Option<u64>,
    /// Serial number.
    pub serial: Option<String>,
}

/// Hardware inventory read from a BMC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Model.
    pub model: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// BIOS / system firmware version.
    pub bios_version: Option<String>,
    /// BMC firmware version.
    pub bmc_version: Option<String>,
    /// CPU count.
    pub cpus: Option<u32>,
    /// CPU model.
    pub cpu_model: Option<String>,
    /// Memory in GiB.
    pub memory_gib: Option<f64>,
    /// Network interfaces.
    pub nics: Vec<Nic>,
    /// Disks.
    pub disks: Vec<Disk>,
}

/// State of the virtual CD.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaStatus {
    /// Image URL when one is inserted.
    pub image: Option<String>,
    /// Whether media is inserted.
    pub inserted: bool,
    /// Where the BMC keeps it (`@odata.id`), for diagnostics.
    pub location: String,
}

/// One event log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Id within the log.
    pub id: String,
    /// Time as the BMC gives it.
    pub created: Option<String>,
    /// Severity (OK, Warning, Critical) when known.
    pub severity: Option<String>,
    /// Text.
    pub message: String,
}

/// One sensor reading.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sensor {
    /// Name.
    pub name: String,
    /// Kind: temperature, fan, voltage, ...
    pub kind: String,
    /// Value.
    pub reading: Option<f64>,
    /// Unit.
    pub unit: String,
    /// Health as reported.
    pub status: Option<String>,
}

/// BIOS attributes: current values and staged (pending) changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BiosSettings {
    /// Current values.
    pub current: BTreeMap<String, serde_json::Value>,
    /// Staged values that differ from current (applied on next reset).
    pub pending: BTreeMap<String, serde_json::Value>,
}

/// One attribute of the BMC's AttributeRegistry, used to validate values before staging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeSpec {
    /// Attribute name.
    pub name: String,
    /// Enumeration, String, Integer, Boolean, Password.
    pub kind: String,
    /// Allowed values for enumerations.
    pub allowed: Vec<String>,
    /// Read-only attributes cannot be staged.
    pub read_only: bool,
    /// Integer bounds.
    pub lower: Option<i64>,
    /// Integer bounds.
    pub upper: Option<i64>,
}

/// One firmware component.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FirmwareComponent {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Version.
    pub version: Option<String>,
    /// Whether it can be updated.
    pub updateable: bool,
}

/// Which firmware an update image is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FirmwareTarget {
    /// System firmware (BIOS/UEFI).
    Bios,
    /// The BMC's own firmware.
    Bmc,
}

/// An async BMC. Every method that a protocol does not implement reports
/// [`BmcError::Unsupported`] without any network traffic.
#[async_trait]
pub trait Bmc: Send + Sync {
    /// `redfish` or `ipmi`.
    fn protocol(&self) -> &'static str;

    /// The capabilities this BMC offers.
    fn capabilities(&self) -> &'static [Capability];

    /// Current power state.
    async fn power_state(&self) -> BmcResult<PowerState>;

    /// Performs a power action.
    async fn power(&self, action: PowerAction) -> BmcResult<()>;

    /// Reads the boot override.
    async fn boot_override(&self) -> BmcResult<BootOverride>;

    /// Sets the boot override.
    async fn set_boot_override(&self, boot: BootOverride) -> BmcResult<()>;

    /// Reads hardware inventory.
    async fn inventory(&self) -> BmcResult<Inventory>;

    /// Virtual CD state.
    async fn media_status(&self) -> BmcResult<MediaStatus> {
        Err(self.unsupported(Capability::VirtualMedia))
    }

    /// Inserts an ISO by URL into the virtual CD.
    async fn media_insert(&self, _url: &str) -> BmcResult<()> {
        Err(self.unsupported(Capability::VirtualMedia))
    }

    /// Ejects the virtual CD.
    async fn media_eject(&self) -> BmcResult<()> {
        Err(self.unsupported(Capability::VirtualMedia))
    }

    /// Event log entries, oldest first.
    async fn logs(&self) -> BmcResult<Vec<LogEntry>> {
        Err(self.unsupported(Capability::Logs))
    }

    /// Sensor readings.
    async fn sensors(&self) -> BmcResult<Vec<Sensor>> {
        Err(self.unsupported(Capability::Sensors))
    }

    /// BIOS attributes.
    async fn bios(&self) -> BmcResult<BiosSettings> {
        Err(self.unsupported(Capability::Bios))
    }

    /// The AttributeRegistry, when the BMC offers one (`Ok(None)` when it does not).
    async fn bios_registry(&self) -> BmcResult<Option<Vec<AttributeSpec>>> {
        Err(self.unsupported(Capability::Bios))
    }

    /// Stages BIOS attributes for the next reset. Returns whether a reset is needed.
    async fn stage_bios(&self, _changes: &BTreeMap<String, serde_json::Value>) -> BmcResult<bool> {
        Err(self.unsupported(Capability::Bios))
    }

    /// Firmware inventory.
    async fn firmware(&self) -> BmcResult<Vec<FirmwareComponent>> {
        Err(self.unsupported(Capability::Firmware))
    }

    /// Starts a firmware update of `target` from a URL the BMC downloads itself, and waits
    /// for its task to finish. Nothing checks what the BMC gets from that URL: give it a
    /// URL that serves only verified bytes.
    async fn update_firmware(&self, _image_url: &str, _target: FirmwareTarget) -> BmcResult<()> {
        Err(self.unsupported(Capability::Firmware))
    }

    /// Whether the BMC takes an image pushed to it ([`Bmc::push_firmware`]), so that it
    /// flashes exactly the bytes cairn sends.
    async fn accepts_firmware_push(&self) -> BmcResult<bool> {
        Ok(false)
    }

    /// Sends the image file itself to the BMC as the update of `target` and waits for its
    /// task to finish.
    async fn push_firmware(&self, _image: &Path, _target: FirmwareTarget) -> BmcResult<()> {
        Err(self.unsupported(Capability::Firmware))
    }

    /// Ends the session, when the protocol has one. Best effort.
    async fn close(&self) {}

    /// What this BMC needed worked around since the last call (a fallback or quirk that
    /// cairn used because the BMC misbehaved), one line each, for the server's report.
    fn take_notes(&self) -> Vec<String> {
        Vec::new()
    }

    /// The typed error for a missing capability.
    fn unsupported(&self, capability: Capability) -> BmcError {
        BmcError::Unsupported {
            capability,
            protocol: self.protocol(),
        }
    }
}
