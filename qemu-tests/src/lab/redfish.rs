//! Redfish servers of the lab: sushy-tools (`sushy-emulator`, libvirt driver) as each
//! server's BMC, driving a libvirt domain that is the server's QEMU (TCG).
//!
//! # The lab's private libvirtd
//! One `libvirtd` per lab runs inside the lab's network namespace (so each domain's NIC, an
//! unmanaged tap created by the lab, lands on the lab bridge) and inside the private mount
//! namespace `ip netns exec` gives it, where the lab's own directories are bind-mounted over
//! `/etc/libvirt`, `/run`, `/var/lib`, `/var/cache` and `/var/log` (and a copy of
//! `/etc/passwd`/`/etc/group` adding the `libvirt-qemu` user libvirt 9 insists on). So the
//! lab's libvirt configuration, state, sockets and logs all live in `DIR/libvirt/`, and
//! nothing machine-wide is written: no `/etc/libvirt/qemu.conf` edit, no user added, no
//! socket in `/run`. Clients reach it at `qemu:///system?socket=DIR/libvirt/run/libvirt/libvirt-sock`.
//!
//! Process model: libvirtd daemonizes every QEMU it starts (double fork), and PID 1 here does
//! not reap orphans, so libvirtd runs under `tini -s` (a child subreaper): the orphaned QEMUs
//! become tini's children and are reaped. virtlogd is not needed (`stdio_handler = "file"`).
//! tini is the supervisor's direct child; `stop` destroys the domains, then SIGTERMs tini,
//! which forwards the signal and exits with libvirtd.
//!
//! # Reboots consume the boot override
//! sushy-tools' libvirt driver records every boot override as Continuous (LAB.md) and edits
//! only the persistent domain definition, which a guest reboot does not re-read. A real BMC
//! consults its boot settings at each reset and consumes a one-time override. The lab
//! reproduces that: a watcher (`virsh event --loop --event reboot`) sees each guest reboot and
//! restarts the domain with its persistent definition minus any boot override, so it boots
//! its disk (media stay inserted until ejected). The persistent definition, and so what
//! Redfish reads back, is left as the client set it. Limit: a Continuous PXE or CD override
//! therefore lasts only until the guest reboots.

use std::io::BufRead;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::lab::layout::ServerSpec;

/// The sushy-tools venv `scripts/setup` makes.
pub const VENV: &str = "/opt/cairn/venv";
/// The storage pool sushy-tools uploads inserted media into.
pub const POOL: &str = "cairn-lab";

/// The lab's libvirtd, its files under `DIR/libvirt/`.
#[derive(Debug)]
pub struct Libvirt {
    root: PathBuf,
    child: Option<Child>,
    watcher: Option<Child>,
}

/// A domain UUID per server index (one libvirtd per lab, so unique where it matters).
pub fn domain_uuid(index: usize) -> String {
    format!("c41ab000-0000-4000-8000-{index:012x}")
}

fn run(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// libvirt's QEMU driver settings for the lab: root, no security driver or cgroups (none of
/// those exist here), QEMU's output to files so no virtlogd is needed.
const QEMU_CONF: &str = "# Written by cairn-lab for its private libvirtd.\n\
security_driver = \"none\"\nuser = \"root\"\ngroup = \"root\"\ncgroup_controllers = [ ]\n\
stdio_handler = \"file\"\n";

/// Only root reaches the socket (file mode); no further authentication.
const LIBVIRTD_CONF: &str = "# Written by cairn-lab for its private libvirtd.\n\
unix_sock_group = \"root\"\nunix_sock_rw_perms = \"0700\"\nunix_sock_ro_perms = \"0700\"\n\
auth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\n";

impl Libvirt {
    /// The lab's libvirtd files.
    pub fn root(lab: &Path) -> PathBuf {
        lab.join("libvirt")
    }

    /// The connection URI for clients outside the daemon's mount namespace.
    pub fn uri_for(lab: &Path) -> String {
        format!(
            "qemu:///system?socket={}",
            Self::root(lab).join("run/libvirt/libvirt-sock").display()
        )
    }

    fn uri(&self) -> String {
        format!(
            "qemu:///system?socket={}",
            self.root.join("run/libvirt/libvirt-sock").display()
        )
    }

    /// `virsh` on this daemon.
    pub fn virsh(&self) -> Command {
        let mut cmd = Command::new("virsh");
        cmd.args(["-q", "-c", &self.uri()]);
        cmd
    }

    /// Starts libvirtd in namespace `netns` and waits until it answers (about 5 s).
    pub fn start(lab: &Path, netns: &str) -> anyhow::Result<Self> {
        for (dir, why) in [
            ("/run", "/run"),
            ("/var/lib", "/var/lib"),
            ("/var/cache", "/var/cache"),
            ("/var/log", "/var/log"),
        ] {
            anyhow::ensure!(
                !lab.starts_with(dir),
                "Redfish servers need a lab directory outside {why} (the lab's libvirtd gets its own {why}); choose another --dir"
            );
        }
        for tool in ["libvirtd", "virsh", "tini"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false);
            anyhow::ensure!(
                found,
                "{tool} is missing: Redfish servers need libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients and tini (scripts/setup)"
            );
        }
        let root = Self::root(lab);
        for d in [
            "etc",
            "run/lock",
            "var/lib/libvirt",
            "var/cache/libvirt",
            "var/log/libvirt",
            "pool",
        ] {
            std::fs::create_dir_all(root.join(d))
                .with_context(|| format!("creating {}", root.join(d).display()))?;
        }
        std::fs::write(root.join("etc/qemu.conf"), QEMU_CONF).context("writing qemu.conf")?;
        std::fs::write(root.join("etc/libvirtd.conf"), LIBVIRTD_CONF)
            .context("writing libvirtd.conf")?;
        // libvirt 9 resolves its default QEMU user before reading qemu.conf.
        let mut passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
        if !passwd.lines().any(|l| l.starts_with("libvirt-qemu:")) {
            passwd.push_str("libvirt-qemu:x:64055:64055:libvirt (cairn-lab):/var/lib/libvirt:/usr/sbin/nologin\n");
        }
        std::fs::write(root.join("passwd"), passwd).context("writing passwd copy")?;
        let mut group = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
        if !group.lines().any(|l| l.starts_with("libvirt-qemu:")) {
            group.push_str("libvirt-qemu:x:64055:\n");
        }
        std::fs::write(root.join("group"), group).context("writing group copy")?;
        let r = root.display();
        let script = format!(
            "set -e; mount --bind {r}/etc /etc/libvirt; mount --bind {r}/passwd /etc/passwd; \
             mount --bind {r}/group /etc/group; mount --bind {r}/var/lib /var/lib; \
             mount --bind {r}/var/cache /var/cache; mount --bind {r}/var/log /var/log; \
             mount --bind {r}/run /run; exec tini -s -- libvirtd --config {r}/etc/libvirtd.conf"
        );
        let log = std::fs::File::create(root.join("libvirtd.log")).context("libvirtd.log")?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("libvirtd.log")?)
            .stderr(log)
            .spawn()
            .context("starting libvirtd")?;
        let mut me = Libvirt {
            root,
            child: Some(child),
            watcher: None,
        };
        let start = Instant::now();
        loop {
            if let Some(child) = me.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                me.child = None;
                let text =
                    std::fs::read_to_string(me.root.join("libvirtd.log")).unwrap_or_default();
                bail!("libvirtd exited with {status}: {}", text.trim());
            }
            let ok = me
                .virsh()
                .arg("version")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "libvirtd did not answer within 60 s (log: {}/libvirtd.log)",
                    me.root.display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let pool = me.root.join("pool");
        run(
            me.virsh()
                .args(["pool-define-as", POOL, "dir", "--target"])
                .arg(&pool),
            "defining the media pool",
        )?;
        run(
            me.virsh().args(["pool-start", POOL]),
            "starting the media pool",
        )?;
        Ok(me)
    }

    /// Defines server `spec`'s domain: its blank disk, its tap on the lab bridge, its serial
    /// console appended to `console.log` in `dir`.
    pub fn define(
        &self,
        spec: &ServerSpec,
        uuid: &str,
        dir: &Path,
        memory_mb: u32,
    ) -> anyhow::Result<()> {
        let xml = domain_xml(spec, uuid, dir, memory_mb);
        let file = dir.join("domain.xml");
        std::fs::write(&file, xml).with_context(|| format!("writing {}", file.display()))?;
        run(
            self.virsh().arg("define").arg(&file),
            &format!("defining the domain of {}", spec.name),
        )?;
        Ok(())
    }

    /// Starts the reboot watcher (see the module comment).
    pub fn watch_reboots(&mut self) -> anyhow::Result<()> {
        let mut child = self
            .virsh()
            .args(["event", "--loop", "--event", "reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting virsh event")?;
        let stdout = child.stdout.take().context("virsh event output")?;
        let uri = self.uri();
        let root = self.root.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(name) = reboot_event_domain(&line)
                    && let Err(e) = restart_to_disk(&uri, &root, name)
                {
                    tracing::warn!(domain = name, error = %format!("{e:#}"), "restarting after a guest reboot");
                }
            }
        });
        self.watcher = Some(child);
        Ok(())
    }

    /// Whether `name` runs, and QEMU's PID then.
    pub fn state(&self, name: &str) -> (bool, Option<u32>) {
        let out = self
            .virsh()
            .args(["domstate", name])
            .stdin(Stdio::null())
            .output();
        let running = out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "running");
        let pid = std::fs::read_to_string(self.root.join(format!("run/libvirt/qemu/{name}.pid")))
            .ok()
            .and_then(|t| t.trim().parse().ok());
        (running, if running { pid } else { None })
    }

    /// Destroys every running domain, stops libvirtd and the watcher, and waits for them.
    pub fn stop(&mut self) {
        if self.child.is_none() {
            return;
        }
        if let Ok(out) = self.virsh().args(["list", "--name"]).output() {
            for name in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = self
                    .virsh()
                    .args(["destroy", name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(mut w) = self.watcher.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        if let Some(mut child) = self.child.take() {
            // tini forwards SIGTERM to libvirtd and exits with it; SIGKILL would orphan libvirtd.
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(15) {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The domain of `virsh event`'s line `event 'reboot' for domain 'srv1'`.
fn reboot_event_domain(line: &str) -> Option<&str> {
    let rest = line.split("event 'reboot' for domain '").nth(1)?;
    rest.split('\'').next().filter(|n| !n.is_empty())
}

/// `xml` with every boot override removed and the disk first: the one-time device consumed.
pub fn without_boot_override(xml: &str) -> String {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    while let Some(at) = rest.find("<boot ") {
        out.push_str(&rest[..at]);
        match rest[at..].find("/>") {
            Some(end) => rest = &rest[at + end + 2..],
            None => {
                rest = &rest[at..];
                break;
            }
        }
    }
    out.push_str(rest);
    out.replacen("</os>", "<boot dev='hd'/></os>", 1)
}

/// After a guest reboot: destroy and start `name` from its persistent definition minus the
/// boot override (the persistent definition itself stays as the BMC client left it).
fn restart_to_disk(uri: &str, root: &Path, name: &str) -> anyhow::Result<()> {
    let virsh = || {
        let mut c = Command::new("virsh");
        c.args(["-q", "-c", uri]);
        c
    };
    let xml = run(
        virsh().args(["dumpxml", "--inactive", name]),
        "reading the domain",
    )?;
    let file = root.join(format!("{name}.live.xml"));
    std::fs::write(&file, without_boot_override(&xml)).context("writing the live definition")?;
    run(
        virsh().args(["destroy", name]),
        "stopping the rebooting domain",
    )?;
    run(
        virsh().arg("create").arg(&file),
        "starting it from its disk",
    )?;
    tracing::info!(server = name, "guest reboot: restarted from its disk");
    Ok(())
}

fn domain_xml(spec: &ServerSpec, uuid: &str, dir: &Path, memory_mb: u32) -> String {
    // `<acpi/>`: without it libvirt 9 passes -no-acpi, which QEMU 10 no longer has.
    format!(
        r#"<domain type='qemu'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{memory_mb}</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/><smbios mode='sysinfo'/></os>
  <sysinfo type='smbios'><system><entry name='serial'>{serial}</entry></system></sysinfo>
  <features><acpi/><apic/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <interface type='ethernet'><mac address='{mac}'/><target dev='{tap}' managed='no'/><model type='virtio'/></interface>
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"#,
        name = spec.name,
        disk = dir.join("disk.raw").display(),
        mac = spec.mac,
        serial = spec.serial,
        tap = spec.tap,
        console = dir.join("console.log").display(),
    )
}

/// Writes server `spec`'s sushy-emulator config (its state dir, the lab's libvirtd, only its
/// own domain, the media pool, and an htpasswd file with the BMC user) into `dir`.
pub fn write_sushy_files(
    dir: &Path,
    lab: &Path,
    uuid: &str,
    user: &str,
    password: &str,
) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // bcrypt from sushy's own venv; the password goes over stdin, never argv.
    let mut child = Command::new(format!("{VENV}/bin/python"))
        .args([
            "-c",
            "import bcrypt,sys; print(bcrypt.hashpw(sys.stdin.readline().strip().encode(), bcrypt.gensalt(6)).decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running the sushy venv's python (scripts/setup makes /opt/cairn/venv)")?;
    child
        .stdin
        .take()
        .context("python stdin")?
        .write_all(format!("{password}\n").as_bytes())
        .context("hashing the BMC password")?;
    let out = child
        .wait_with_output()
        .context("hashing the BMC password")?;
    anyhow::ensure!(
        out.status.success(),
        "bcrypt in {VENV}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let hash = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("htpasswd"))
        .context("writing htpasswd")?;
    f.write_all(format!("{user}:{hash}\n").as_bytes())
        .context("writing htpasswd")?;
    // Always its own state dir: the default database is shared by every instance (LAB.md).
    let conf = format!(
        "# Written by cairn-lab.\n\
         SUSHY_EMULATOR_STATE_DIR = '{state}'\n\
         SUSHY_EMULATOR_LIBVIRT_URI = '{uri}'\n\
         SUSHY_EMULATOR_ALLOWED_INSTANCES = ['{uuid}']\n\
         SUSHY_EMULATOR_STORAGE_POOL = '{POOL}'\n\
         SUSHY_EMULATOR_AUTH_FILE = '{auth}'\n",
        state = dir.join("sushy-state").display(),
        uri = Libvirt::uri_for(lab),
        auth = dir.join("htpasswd").display(),
    );
    std::fs::write(dir.join("sushy.conf"), conf).context("writing sushy.conf")?;
    Ok(())
}

/// Starts server `spec`'s sushy-emulator in `netns` on its BMC address; returns once it
/// listens.
pub fn start_sushy(spec: &ServerSpec, dir: &Path, netns: &str) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("sushy.log")).context("creating sushy.log")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(format!("{VENV}/bin/sushy-emulator"))
        .args([
            "--interface",
            &spec.bmc_ip.to_string(),
            "--port",
            &spec.bmc_port.to_string(),
            "--config",
        ])
        .arg(dir.join("sushy.conf"))
        .env("SUSHY_EMULATOR_STATE_DIR", dir.join("sushy-state"))
        // Media downloads land here before the upload into the pool.
        .env("TMPDIR", dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("sushy.log")?)
        .stderr(log)
        .spawn()
        .context("starting sushy-emulator (install sushy-tools: scripts/setup)")?;
    wait_listening(
        &mut child,
        spec.bmc_ip,
        spec.bmc_port,
        &format!("sushy-emulator for {}", spec.name),
        &dir.join("sushy.log"),
    )?;
    Ok(child)
}

/// Waits until `child` listens on TCP `ip:port` (seen in its network namespace's table); if
/// it exits first or takes over 60 s, it is reaped and its log quoted.
pub fn wait_listening(
    child: &mut Child,
    ip: Ipv4Addr,
    port: u16,
    what: &str,
    log: &Path,
) -> anyhow::Result<()> {
    let needle = format!("{}:{port:04X}", hex_addr(ip));
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{what} exited with {status}: {}", text.trim());
        }
        let tcp =
            std::fs::read_to_string(format!("/proc/{}/net/tcp", child.id())).unwrap_or_default();
        // State 0A: listening.
        if tcp.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&needle.as_str()) && f.get(3) == Some(&"0A")
        }) {
            return Ok(());
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{what} did not listen within 60 s (log: {})", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An IPv4 address as /proc/net/tcp prints it (little-endian hex).
fn hex_addr(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{:02X}{:02X}{:02X}{:02X}", o[3], o[2], o[1], o[0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_boots_the_disk_and_keeps_the_media() {
        let xml = "<domain><os><type>hvm</type></os><devices>\
            <disk device='disk'><target dev='vda'/></disk>\
            <disk device='cdrom'><source file='/p/x.img'/><boot order='1'/></disk></devices></domain>";
        let live = without_boot_override(xml);
        assert!(!live.contains("order="), "{live}");
        assert!(live.contains("<boot dev='hd'/></os>"), "{live}");
        assert!(live.contains("/p/x.img"), "{live}");
        let legacy = "<domain><os><type>hvm</type><boot dev='network'/></os></domain>";
        assert_eq!(
            without_boot_override(legacy),
            "<domain><os><type>hvm</type><boot dev='hd'/></os></domain>"
        );
    }

    #[test]
    fn reboot_events_name_their_domain() {
        assert_eq!(
            reboot_event_domain("event 'reboot' for domain 'srv2'"),
            Some("srv2")
        );
        assert_eq!(reboot_event_domain("event loop interrupted"), None);
    }

    #[test]
    fn proc_net_addresses_are_little_endian_hex() {
        assert_eq!(hex_addr(Ipv4Addr::new(10, 77, 0, 102)), "66004D0A");
    }
}
