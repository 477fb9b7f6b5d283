use serde::{Deserialize, Serialize};

/// What an appliance (or its BMC) says about its hardware. Sent at registration and kept by
/// the hub; the serial number and NIC MACs identify the same machine across re-installs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HardwareInventory {
    /// System manufacturer (DMI `sys_vendor`, Redfish `Manufacturer`).
    #[serde(default)]
    pub manufacturer: String,
    /// System model (DMI `product_name`, Redfish `Model`).
    #[serde(default)]
    pub model: String,
    /// System serial number; with the MACs, the hardware's identity.
    #[serde(default)]
    pub serial: String,
    /// BIOS / UEFI firmware version, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bios_version: Option<String>,
    /// Processors (sockets).
    #[serde(default)]
    pub cpus: Vec<Cpu>,
    /// Installed memory in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Network interfaces.
    #[serde(default)]
    pub nics: Vec<Nic>,
    /// Block devices.
    #[serde(default)]
    pub disks: Vec<Disk>,
}

impl HardwareInventory {
    /// MAC addresses of all NICs, lowercased and sorted: the part of the hardware identity
    /// that does not depend on the order NICs were enumerated in.
    pub fn normalized_macs(&self) -> Vec<String> {
        let mut macs: Vec<String> = self
            .nics
            .iter()
            .map(|n| n.mac.to_ascii_lowercase())
            .collect();
        macs.sort();
        macs.dedup();
        macs
    }
}

/// One processor socket.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Cpu {
    /// Model string, e.g. `Intel(R) Xeon(R) Gold 6338`.
    #[serde(default)]
    pub model: String,
    /// Physical cores.
    #[serde(default)]
    pub cores: u32,
    /// Hardware threads.
    #[serde(default)]
    pub threads: u32,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Nic {
    /// Kernel or BMC name of the interface.
    #[serde(default)]
    pub name: String,
    /// MAC address, `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Link speed in Mbit/s, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mbps: Option<u32>,
    /// Whether the link is up, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_up: Option<bool>,
}

/// One block device.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Disk {
    /// Kernel name (`sda`, `nvme0n1`) or BMC drive name.
    #[serde(default)]
    pub name: String,
    /// Size in bytes.
    #[serde(default)]
    pub size_bytes: u64,
    /// Model string, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Serial number, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// Spinning disk, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}
