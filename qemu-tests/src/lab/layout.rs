//! Where a lab keeps its files, and the manifest (`lab.json`) that `status` and `down` read.
//!
//! ```text
//! DIR/lab.json             the manifest (this module)
//! DIR/control.sock         the supervisor's socket (see `control`)
//! DIR/rack.yaml            the generated inventory; DIR/creds/NAME.yaml its BMC passwords
//! DIR/servers/NAME/        disk.raw, ipmi_sim config and state, console.log
//! ```

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The lab's subnet inside its own namespace. Nothing outside the namespace ever sees it.
pub const SUBNET_PREFIX: [u8; 3] = [10, 77, 0];

/// The host side of the lab segment (the bridge's address, where lab services listen).
pub fn gateway() -> Ipv4Addr {
    let [a, b, c] = SUBNET_PREFIX;
    Ipv4Addr::new(a, b, c, 1)
}

/// Which BMC emulator a server gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BmcKind {
    /// OpenIPMI `ipmi_sim`, IPMI 2.0 RMCP+.
    Ipmi,
    /// sushy-tools, Redfish.
    Redfish,
}

/// One server of the lab as built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerSpec {
    /// Name, `srv1`, `srv2`, ...
    pub name: String,
    /// Its BMC emulator.
    pub bmc: BmcKind,
    /// The BMC's address inside the namespace.
    pub bmc_ip: Ipv4Addr,
    /// The BMC's UDP (IPMI) or TCP (Redfish) port.
    pub bmc_port: u16,
    /// The BMC URL as written to rack.yaml.
    pub bmc_url: String,
    /// The boot NIC's MAC.
    pub mac: String,
    /// Its SMBIOS system serial, which the guest reports and rack.yaml declares (so its
    /// enrollment token is bound to it, as on a real rack).
    pub serial: String,
    /// Its tap device in the namespace.
    pub tap: String,
    /// Loopback TCP port (inside the namespace) where `ipmi_sim` serves QEMU's
    /// `ipmi-bmc-extern` chardev.
    pub ipmi_serial_port: u16,
}

/// `lab.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Network namespace holding the lab segment.
    pub netns: String,
    /// Bridge inside it.
    pub bridge: String,
    /// PID of the supervisor (`cairn-lab up`).
    pub supervisor_pid: u32,
    /// Servers.
    pub servers: Vec<ServerSpec>,
    /// Guest memory per server.
    pub memory_mb: u32,
    /// Disk size per server.
    pub disk_gb: u64,
    /// The lab's hub and boot server, when it runs them.
    #[serde(default)]
    pub services: Option<ServicesInfo>,
}

/// Paths of one lab.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// A lab rooted at `dir` (made absolute, because `ipmi_sim` and QEMU get these paths).
    pub fn new(dir: &Path) -> std::io::Result<Self> {
        let dir = if dir.is_absolute() {
            dir.to_owned()
        } else {
            std::env::current_dir()?.join(dir)
        };
        Ok(Self { dir })
    }

    /// The lab directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `lab.json`.
    pub fn manifest(&self) -> PathBuf {
        self.dir.join("lab.json")
    }

    /// The supervisor's control socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The generated inventory.
    pub fn rack_yaml(&self) -> PathBuf {
        self.dir.join("rack.yaml")
    }

    /// A server's credentials file.
    pub fn creds(&self, name: &str) -> PathBuf {
        self.dir.join("creds").join(format!("{name}.yaml"))
    }

    /// A server's own directory.
    pub fn server(&self, name: &str) -> PathBuf {
        self.dir.join("servers").join(name)
    }

    /// Reads `lab.json`.
    pub fn read_manifest(&self) -> Result<Manifest, String> {
        let path = self.manifest();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "no lab at {} ({e}); start one with `cairn-lab up --dir {}`",
                self.dir.display(),
                self.dir.display()
            )
        })?;
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The lab's SMBIOS serial number for server `index` (1-based).
pub fn serial_for(index: usize) -> String {
    format!("CAIRNLAB{index:04}")
}

/// The MAC of server `index` (1-based): QEMU's locally administered prefix.
pub fn mac_for(index: usize) -> String {
    format!(
        "52:54:00:c4:{:02x}:{:02x}",
        (index >> 8) & 0xff,
        index & 0xff
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_are_unique_and_well_formed() {
        assert_eq!(mac_for(1), "52:54:00:c4:00:01");
        assert_eq!(mac_for(300), "52:54:00:c4:01:2c");
        assert_ne!(mac_for(1), mac_for(257));
    }

    #[test]
    fn serials_are_unique_per_server() {
        assert_eq!(serial_for(7), "CAIRNLAB0007");
        assert_ne!(serial_for(1), serial_for(2));
    }
}

/// What the services of a lab are, as recorded in `lab.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicesInfo {
    /// `https://10.77.0.1:8443`.
    pub hub_url: String,
    /// The hub CA's SHA-256 fingerprint (sites pin it).
    pub hub_ca_fingerprint: String,
    /// The hub CA bundle (PEM).
    pub hub_ca: PathBuf,
    /// The operator (admin) token file, mode 0600.
    pub admin_token: PathBuf,
    /// `cairn hub --config FILE ...` login saved for the operator.
    pub hub_login: PathBuf,
    /// `http://10.77.0.1:8080`.
    pub boot_server_url: String,
    /// The image build the boot server serves.
    pub artifacts: PathBuf,
    /// Seconds the lab spent building that image (`None`: given with --artifacts).
    #[serde(default)]
    pub image_build_seconds: Option<f64>,
    /// Seconds from `cairn-hub init` to the boot server answering.
    #[serde(default)]
    pub services_seconds: f64,
}
