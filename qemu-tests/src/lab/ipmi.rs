//! OpenIPMI `ipmi_sim` as a server's BMC: its LAN configuration and start-up commands.
//!
//! The recipe is LAB.md's: a LAN channel on the BMC's address, one admin user, a `serial`
//! line where QEMU's `ipmi-bmc-extern` chardev connects, and `chassis_control` pointing at
//! `cairn-lab chassis` so power and boot-device requests reach the lab supervisor. Each BMC
//! gets a fresh state directory: persisted users would otherwise override this config.

use std::net::Ipv4Addr;
use std::path::Path;

/// What one `ipmi_sim` needs to know.
#[derive(Debug, Clone)]
pub struct IpmiSimConfig<'a> {
    /// Server name (also the simulator's `name`).
    pub name: &'a str,
    /// LAN address and UDP port.
    pub addr: Ipv4Addr,
    /// UDP port.
    pub port: u16,
    /// Loopback port for QEMU's chardev.
    pub serial_port: u16,
    /// Admin user.
    pub user: &'a str,
    /// Admin password (written only to the 0600 config file).
    pub password: &'a str,
    /// The full `chassis_control` command line.
    pub chassis_control: &'a str,
}

impl IpmiSimConfig<'_> {
    /// The `lan.conf` text. Cipher suites are ipmi_sim's own (0–3, 6): clients use `-C 3`.
    pub fn lan_conf(&self) -> String {
        let auths = "none md2 md5 straight";
        format!(
            r#"name "{name}"
set_working_mc 0x20
  startlan 1
    addr {addr} {port}
    priv_limit admin
    allowed_auths_callback {auths}
    allowed_auths_user {auths}
    allowed_auths_operator {auths}
    allowed_auths_admin {auths}
    guid {guid}
  endlan
  serial 15 127.0.0.1 {serial} codec VM
  chassis_control "{cc}"
  user 1 true "" "" user 10 none md2 md5 straight
  user 2 true "{user}" "{password}" admin 10 none md2 md5 straight
"#,
            name = self.name,
            addr = self.addr,
            port = self.port,
            serial = self.serial_port,
            cc = self.chassis_control,
            user = self.user,
            password = self.password,
            guid = guid(self.name),
        )
    }
}

/// The command file: one BMC at 0x20 with SEL, as LAB.md describes.
pub const COMMANDS: &str = "mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
";

/// A stable 16-byte GUID (hex) derived from the name, so each BMC's differs.
fn guid(name: &str) -> String {
    let mut bytes = [0u8; 16];
    for (i, b) in name.bytes().enumerate() {
        bytes[i % 16] ^= b.wrapping_add(i as u8);
    }
    bytes[15] ^= 0xca;
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `lan.conf` (mode 0600: it holds the password), the command file and a fresh state
/// directory under `dir`.
pub fn write_files(dir: &Path, config: &IpmiSimConfig<'_>) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let state = dir.join("ipmi-state");
    if state.exists() {
        std::fs::remove_dir_all(&state)?;
    }
    std::fs::create_dir_all(&state)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("lan.conf"))?;
    std::io::Write::write_all(&mut file, config.lan_conf().as_bytes())?;
    std::fs::write(dir.join("ipmi_sim.cmds"), COMMANDS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_conf_carries_addresses_user_and_control_program() {
        let c = IpmiSimConfig {
            name: "srv1",
            addr: Ipv4Addr::new(10, 77, 0, 101),
            port: 623,
            serial_port: 9001,
            user: "admin",
            password: "pw",
            chassis_control: "/bin/cairn-lab chassis --dir /l srv1",
        };
        let text = c.lan_conf();
        assert!(text.contains("addr 10.77.0.101 623"), "{text}");
        assert!(text.contains("serial 15 127.0.0.1 9001 codec VM"), "{text}");
        assert!(text.contains(r#"chassis_control "/bin/cairn-lab chassis --dir /l srv1""#));
        assert!(text.contains(r#""admin" "pw" admin"#), "{text}");
        assert_ne!(guid("srv1"), guid("srv2"));
    }
}
