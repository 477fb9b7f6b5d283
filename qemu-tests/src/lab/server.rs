//! One lab server: what its BMC asked for (power, next boot device) and the QEMU process
//! that embodies it. `ipmi_sim` forwards chassis requests here through the supervisor.
//!
//! Semantics follow a real BMC: the boot device set over IPMI applies to the *next* power-on
//! only (it is consumed then), a reset restarts the machine so a new boot device takes effect,
//! and a guest reboot (the installer rebooting into the disk) keeps the machine running with
//! its normal boot order, disk first.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::lab::layout::{BmcKind, ServerSpec};
use cairn_vm_harness::qemu::{Nic, QemuError, Vm, VmBuilder};

/// Where the next power-on boots from, as `ipmi_sim`'s chassis_control names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NextBoot {
    /// No override: the disk.
    Default,
    /// Network (iPXE ROM).
    Pxe,
    /// The CD drive (virtual media).
    Cdrom,
    /// Firmware setup; the lab boots the disk.
    Bios,
}

impl NextBoot {
    /// Parses chassis_control's value (`none` and `default` both mean no override).
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "none" | "default" | "disk" => NextBoot::Default,
            "pxe" => NextBoot::Pxe,
            "cdrom" => NextBoot::Cdrom,
            "bios" => NextBoot::Bios,
            _ => return None,
        })
    }

    /// chassis_control's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            NextBoot::Default => "default",
            NextBoot::Pxe => "pxe",
            NextBoot::Cdrom => "cdrom",
            NextBoot::Bios => "bios",
        }
    }

    /// QEMU's `-boot` value: this device once, then the disk (and the network after it, as a
    /// server's firmware falls through to PXE when the disk does not boot).
    pub fn qemu_boot(self) -> &'static str {
        match self {
            NextBoot::Pxe => "once=n,order=c",
            NextBoot::Cdrom => "once=d,order=c",
            NextBoot::Default | NextBoot::Bios => "order=c",
        }
    }
}

/// A lab server's live state.
#[derive(Debug)]
pub struct LabServer {
    /// What was built.
    pub spec: ServerSpec,
    dir: PathBuf,
    netns: String,
    memory_mb: u32,
    /// The boot device for the next power-on.
    pub next_boot: NextBoot,
    /// An ISO in the virtual CD drive, if any.
    pub cdrom: Option<PathBuf>,
    vm: Option<Vm>,
    /// Power-ons so far.
    pub power_ons: u32,
}

impl LabServer {
    /// A powered-off server whose files live in `dir`.
    pub fn new(spec: ServerSpec, dir: PathBuf, netns: &str, memory_mb: u32) -> Self {
        Self {
            spec,
            dir,
            netns: netns.to_string(),
            memory_mb,
            next_boot: NextBoot::Default,
            cdrom: None,
            vm: None,
            power_ons: 0,
        }
    }

    /// The server's blank (or installed) disk.
    pub fn disk(&self) -> PathBuf {
        self.dir.join("disk.raw")
    }

    /// Whether QEMU is running.
    pub fn is_on(&self) -> bool {
        match self.spec.bmc {
            BmcKind::Ipmi => self.vm.is_some(),
            BmcKind::Redfish => self.pid().is_some(),
        }
    }

    /// QEMU's PID while on. A Redfish server's QEMU is libvirt's: found by its disk.
    pub fn pid(&self) -> Option<u32> {
        let needle = match (&self.vm, self.spec.bmc) {
            (Some(vm), _) => vm.dir().display().to_string(),
            (None, BmcKind::Redfish) => self.disk().display().to_string(),
            (None, BmcKind::Ipmi) => return None,
        };
        crate::lab::procs::with_arg(&needle).into_iter().next()
    }

    /// The QEMU command line for a power-on booting `boot`.
    pub fn builder(&self, boot: NextBoot) -> VmBuilder {
        let spec = &self.spec;
        let mut b = VmBuilder::new()
            .memory_mb(self.memory_mb)
            .netns(&self.netns)
            .qmp(true)
            .nic(
                Nic::Tap {
                    ifname: spec.tap.clone(),
                },
                &format!("virtio-net-pci,mac={}", spec.mac),
            )
            // The harness passes -no-reboot (right for its one-shot guests); a server must
            // survive the installer's reboot into its disk.
            .arg("-action")
            .arg("reboot=reset")
            // AES-NI, PCLMUL and SHA for the guest's TLS and hashing: on TCG's default
            // qemu64 model they fall back to portable code, and an upgrade's bundle download
            // crawled at ~60 KB/s.
            .arg("-cpu")
            .arg("max")
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=virtio",
                self.disk().display()
            ))
            .arg("-boot")
            .arg(boot.qemu_boot())
            .arg("-smbios")
            .arg(format!("type=1,serial={}", spec.serial));
        if let Some(iso) = &self.cdrom {
            b = b
                .arg("-drive")
                .arg(format!("file={},media=cdrom,readonly=on", iso.display()));
        }
        if spec.bmc == BmcKind::Ipmi {
            b = b
                .arg("-chardev")
                .arg(format!(
                    "socket,id=ipmi0,host=127.0.0.1,port={},reconnect-ms=1000",
                    spec.ipmi_serial_port
                ))
                .arg("-device")
                .arg("ipmi-bmc-extern,id=bmc0,chardev=ipmi0")
                .arg("-device")
                .arg("isa-ipmi-kcs,bmc=bmc0");
        }
        b
    }

    /// Powers on with the pending boot device, which is consumed (one-time override).
    pub fn power_on(&mut self) -> Result<(), QemuError> {
        if self.vm.is_some() {
            return Ok(());
        }
        let boot = std::mem::replace(&mut self.next_boot, NextBoot::Default);
        let vm = self.builder(boot).spawn()?;
        tracing::info!(server = %self.spec.name, boot = boot.as_str(), "power on");
        let live = self.dir.join("serial.log");
        let _ = std::fs::remove_file(&live);
        let _ = std::os::unix::fs::symlink(vm.serial_path(), &live);
        self.vm = Some(vm);
        self.power_ons += 1;
        Ok(())
    }

    /// Hard power off: QEMU is killed and reaped, its console appended to `console.log`.
    pub fn power_off(&mut self) {
        if let Some(mut vm) = self.vm.take() {
            vm.kill();
            self.archive(&vm);
            tracing::info!(server = %self.spec.name, "power off");
        }
    }

    /// Hard reset: off and on again, so a newly set boot device takes effect.
    pub fn reset(&mut self) -> Result<(), QemuError> {
        if self.vm.is_some() {
            self.power_off();
            self.power_on()?;
        }
        Ok(())
    }

    /// ACPI power button (the guest decides).
    pub fn soft_off(&self) -> Result<(), QemuError> {
        match &self.vm {
            Some(vm) => vm.qmp(r#"{"execute":"system_powerdown"}"#).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Reaps QEMU if the guest powered itself off. Returns whether it did.
    pub fn poll(&mut self) -> bool {
        let exited = match self.vm.as_mut() {
            Some(vm) => vm.wait_exit(Duration::ZERO).is_ok(),
            None => false,
        };
        if exited && let Some(vm) = self.vm.take() {
            self.archive(&vm);
            tracing::info!(server = %self.spec.name, "guest powered off");
        }
        exited
    }

    /// The server's whole console history: previous boots and the running one.
    pub fn console(&self) -> String {
        let mut text = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        if let Some(vm) = &self.vm {
            text.push_str(&vm.serial());
        }
        text
    }

    fn archive(&self, vm: &Vm) {
        use std::io::Write;
        let path = self.dir.join("console.log");
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
        {
            let _ = f.write_all(vm.serial().as_bytes());
        }
        let _ = std::fs::remove_file(self.dir.join("serial.log"));
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_devices_map_to_one_time_qemu_boot_orders() {
        assert_eq!(
            NextBoot::parse("pxe").unwrap().qemu_boot(),
            "once=n,order=c"
        );
        assert_eq!(
            NextBoot::parse("cdrom").unwrap().qemu_boot(),
            "once=d,order=c"
        );
        // ipmitool `bootdev disk` arrives as `default` (LAB.md).
        assert_eq!(NextBoot::parse("default"), Some(NextBoot::Default));
        assert_eq!(NextBoot::parse("floppy"), None);
    }
}
