//! The rack inventory file (`rack.yaml`): which servers exist and how to reach their BMCs.
//!
//! Shared with the installer (`cairn rack provision`), which reads the same file: the
//! server fields it needs beyond the BMC (boot MAC, serial, role, disk hint, netplan, firmware
//! profile) are parsed here too so one file has one schema and one set of error messages.
//!
//! ```yaml
//! servers:
//!   - name: r1s1
//!     bmc: redfish://admin@10.0.0.11
//!     credentials: creds/r1s1.yaml    # relative to rack.yaml
//!     boot_mac: 52:54:00:12:34:56
//!     serial: CZ21440XYZ              # optional: binds its enrollment token
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::address::{BmcAddress, Credentials, CredentialsError, Scheme};

/// A parsed `rack.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rack {
    /// Servers, in file order.
    pub servers: Vec<Server>,
    /// Directory of the inventory file; relative paths inside it resolve against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
}

/// One server of the rack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Unique name.
    pub name: String,
    /// BMC address.
    pub bmc: BmcAddress,
    /// Credentials file (YAML `username`/`password`, or the password alone).
    pub credentials: PathBuf,
    /// MAC address the server PXE-boots from.
    #[serde(default)]
    pub boot_mac: Option<String>,
    /// The system serial number (SMBIOS, as on the label and the delivery manifest). The
    /// server's single-use enrollment token is bound to it, so an install on other hardware
    /// cannot register with it; when the BMC reports a serial, the two must match.
    #[serde(default)]
    pub serial: Option<String>,
    /// Role in the cluster (e.g. `control-plane`, `worker`).
    #[serde(default)]
    pub role: Option<String>,
    /// Which disk to install to (e.g. `/dev/nvme0n1`, `size>=400G`, `model=PM9A3`).
    #[serde(default)]
    pub disk_hint: Option<String>,
    /// Netplan snippet file for the installed system.
    #[serde(default)]
    pub netplan: Option<PathBuf>,
    /// Firmware profile name (see `cairn firmware`); matched by model when absent.
    #[serde(default)]
    pub firmware_profile: Option<String>,
    /// Per-server TLS fingerprint pin (SHA-256 of the BMC certificate, hex).
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// How this server boots the installer, over `cairn rack provision --boot`. A Metal3
    /// `*-virtualmedia://` BMC address says `virtual-media` on its own.
    #[serde(default)]
    pub boot: Option<ServerBoot>,
}

/// A server's own boot method (rack.yaml `boot:`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerBoot {
    /// One-time PXE boot from its boot MAC.
    Pxe,
    /// Its seeded installer ISO in the BMC's virtual CD (Redfish only).
    VirtualMedia,
}

impl Server {
    /// The boot method this server's entry asks for, if any: its `boot:`, else what its BMC
    /// address's scheme says.
    pub fn boot(&self) -> Option<ServerBoot> {
        self.boot
            .or(self.bmc.virtual_media.then_some(ServerBoot::VirtualMedia))
    }
}

/// An inventory that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Reading the file failed.
    #[error("reading inventory {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema (message names line and key).
    #[error("inventory {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with its location.
        message: String,
    },
    /// `--only` named a server that is not in the file.
    #[error("inventory {path}: no server named {name:?} (have: {have})")]
    UnknownServer {
        /// The file.
        path: PathBuf,
        /// The name asked for.
        name: String,
        /// The names present.
        have: String,
    },
}

impl Rack {
    /// Reads and validates an inventory file.
    pub fn load(path: &Path) -> Result<Rack, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new(".")).to_owned();
        Rack::parse(&text, &base).map_err(|message| InventoryError::Invalid {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses inventory text; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: &Path) -> Result<Rack, String> {
        let mut rack: Rack = serde_yaml_ng::from_str(text).map_err(|e| yaml_error(&e))?;
        rack.base_dir = base_dir.to_owned();
        let mut seen = std::collections::BTreeSet::new();
        for (i, server) in rack.servers.iter().enumerate() {
            if server.name.is_empty() {
                return Err(format!("servers[{i}].name: empty"));
            }
            if !seen.insert(server.name.as_str()) {
                return Err(format!(
                    "servers[{i}].name: duplicate server name {:?}",
                    server.name
                ));
            }
            match (server.boot, &server.bmc) {
                (Some(ServerBoot::Pxe), bmc) if bmc.virtual_media => {
                    return Err(format!(
                        "servers[{i}].boot: pxe, but its BMC address {bmc} asks for virtual media \
                         (use redfish:// with boot: pxe)"
                    ));
                }
                (Some(ServerBoot::VirtualMedia), bmc) if bmc.scheme == Scheme::Ipmi => {
                    return Err(format!(
                        "servers[{i}].boot: virtual-media needs a Redfish BMC, {bmc} is IPMI"
                    ));
                }
                _ => {}
            }
            if server
                .serial
                .as_deref()
                .is_some_and(|s| s.trim().is_empty())
            {
                return Err(format!(
                    "servers[{i}].serial: empty (leave the key out when the serial is unknown)"
                ));
            }
        }
        Ok(rack)
    }

    /// The servers named in `only` (all when empty), in file order.
    pub fn select(&self, only: &[String]) -> Result<Vec<&Server>, InventoryError> {
        for name in only {
            if !self.servers.iter().any(|s| &s.name == name) {
                return Err(InventoryError::UnknownServer {
                    path: self.base_dir.clone(),
                    name: name.clone(),
                    have: self
                        .servers
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            }
        }
        Ok(self
            .servers
            .iter()
            .filter(|s| only.is_empty() || only.contains(&s.name))
            .collect())
    }

    /// Reads a server's credentials file.
    pub fn credentials(&self, server: &Server) -> Result<Credentials, CredentialsError> {
        Credentials::from_file(
            &self.base_dir.join(&server.credentials),
            server.bmc.user.as_deref(),
        )
    }
}

/// "line L column C: message" for a YAML error (serde_yaml_ng appends the location to the
/// message; it is moved to the front where people look for it).
pub fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    let text = e.to_string();
    let message = text.split(" at line ").next().unwrap_or(&text);
    match e.location() {
        Some(l) => format!("line {} column {}: {message}", l.line(), l.column()),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RACK: &str = "servers:
  - name: a
    bmc: redfish://admin@10.0.0.1
    credentials: a.yaml
    boot_mac: 52:54:00:00:00:01
  - name: b
    bmc: ipmi://127.0.0.1:9623
    credentials: /etc/b.pw
";

    #[test]
    fn parses_and_selects() {
        let rack = Rack::parse(RACK, Path::new("/inv")).unwrap();
        assert_eq!(rack.servers.len(), 2);
        assert_eq!(rack.servers[1].bmc.port, 9623);
        let only = rack.select(&["b".into()]).unwrap();
        assert_eq!(only.len(), 1);
        let e = rack.select(&["zz".into()]).unwrap_err().to_string();
        assert!(e.contains("\"zz\"") && e.contains("a, b"), "{e}");
    }

    #[test]
    fn a_server_boots_as_its_entry_or_its_metal3_address_says() {
        let rack = Rack::parse(RACK, Path::new(".")).unwrap();
        assert_eq!(
            (rack.servers[0].boot(), rack.servers[1].boot()),
            (None, None)
        );
        let media = RACK.replace("redfish://", "idrac-virtualmedia://");
        let rack = Rack::parse(&media, Path::new(".")).unwrap();
        assert_eq!(rack.servers[0].boot(), Some(ServerBoot::VirtualMedia));
        let pxe = RACK.replace("a.yaml\n", "a.yaml\n    boot: pxe\n");
        let rack = Rack::parse(&pxe, Path::new(".")).unwrap();
        assert_eq!(rack.servers[0].boot(), Some(ServerBoot::Pxe));
        let both = media.replace("a.yaml\n", "a.yaml\n    boot: pxe\n");
        let e = Rack::parse(&both, Path::new(".")).unwrap_err();
        assert!(
            e.contains("servers[0].boot: pxe") && e.contains("idrac-virtualmedia://"),
            "{e}"
        );
    }

    #[test]
    fn errors_name_line_and_key() {
        let e = Rack::parse(&RACK.replace("boot_mac", "boot_mca"), Path::new(".")).unwrap_err();
        assert!(e.contains("line 5") && e.contains("boot_mca"), "{e}");
        let e = Rack::parse(&RACK.replace("ipmi://", "ftp://"), Path::new(".")).unwrap_err();
        assert!(
            e.contains("line 6") && e.contains("servers[1]") && e.contains("unknown scheme"),
            "{e}"
        );
        let e = Rack::parse(&RACK.replace("name: b", "name: a"), Path::new(".")).unwrap_err();
        assert!(e.contains("servers[1].name: duplicate"), "{e}");
        let blank = RACK.replace("/etc/b.pw\n", "/etc/b.pw\n    serial: \" \"\n");
        let e = Rack::parse(&blank, Path::new(".")).unwrap_err();
        assert!(e.contains("servers[1].serial: empty"), "{e}");
        let e = Rack::parse(
            &RACK.replace("/etc/b.pw\n", "/etc/b.pw\n    boot: virtual-media\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(
            e.contains("servers[1].boot: virtual-media needs a Redfish BMC"),
            "{e}"
        );
        let e = Rack::parse(
            &RACK.replace("/etc/b.pw\n", "/etc/b.pw\n    boot: usb\n"),
            Path::new("."),
        )
        .unwrap_err();
        assert!(e.contains("servers[1].boot") && e.contains("usb"), "{e}");
        let given = RACK.replace("/etc/b.pw\n", "/etc/b.pw\n    serial: CZ21440XYZ\n");
        let rack = Rack::parse(&given, Path::new(".")).unwrap();
        assert_eq!(rack.servers[1].serial.as_deref(), Some("CZ21440XYZ"));
        assert_eq!(rack.servers[0].serial, None);
    }
}
