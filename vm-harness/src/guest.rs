//! Run checks inside a throw-away QEMU guest booted with Debian's kernel.
//!
//! # API
//! ```no_run
//! use cairn_vm_harness::guest::GuestRun;
//! let report = GuestRun::new()
//!     .module("dummy", "")
//!     .binary("/usr/bin/ip", "/usr/local/bin/ip")
//!     .script(r#"
//! /usr/local/bin/ip link add d0 type dummy
//! check dummy-exists /usr/local/bin/ip link show d0
//! "#)
//!     .run()
//!     .unwrap();
//! report.assert_all_passed();
//! ```
//! - The script runs under busybox `sh` after `/proc`, `/sys`, `/dev` are mounted, loopback
//!   is up and the modules are loaded. A `check NAME CMD...` shell function runs `CMD` and
//!   prints `CAIRN-CHECK NAME PASS|FAIL` plus the command's output on failure;
//!   `result NAME PASS|FAIL [DETAIL]` reports anything else; `emit KEY VALUE` reports a value
//!   (a timing, a count) the host reads from [`GuestReport::values`].
//! - After the script, `/init` prints `CAIRN-DONE <exit status>` and powers off; QEMU runs
//!   with `-no-reboot`, so it exits. [`GuestRun::run`] waits for that and parses the console.
//! - Copied tools must be called by full path: busybox `sh` prefers its own applets (LAB.md).
//! - Extra QEMU NICs ([`GuestRun::nic`]) appear as `eth0`, `eth1`, ... (e1000, module loaded).
//!
//! One boot costs 6–10 s under TCG: put many checks in one script.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::initramfs::{Initramfs, InitramfsError, Kernel, debian_kernel};
use crate::qemu::{Nic, QemuError, Vm, VmBuilder};

/// Errors of a guest run.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// Building the initramfs failed.
    #[error("building the guest initramfs")]
    Initramfs(#[from] InitramfsError),
    /// QEMU failed or the guest did not finish.
    #[error("running the guest")]
    Qemu(#[from] QemuError),
    /// A temporary file could not be created.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// One `check`/`result` line from the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name.
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Output or detail printed with it.
    pub detail: String,
}

/// What the guest reported.
#[derive(Debug, Clone)]
pub struct GuestReport {
    /// Checks in the order they ran.
    pub checks: Vec<CheckResult>,
    /// `emit KEY VALUE` lines.
    pub values: Vec<(String, String)>,
    /// The script's exit status.
    pub exit_status: i32,
    /// The whole serial console.
    pub serial: String,
}

impl GuestReport {
    /// The check named `name`.
    pub fn check(&self, name: &str) -> Option<&CheckResult> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// The value emitted under `key`.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Panics with the failed checks and the console if any check failed, none ran, or the
    /// script exited non-zero. For tests.
    pub fn assert_all_passed(&self) {
        let failed: Vec<&CheckResult> = self.checks.iter().filter(|c| !c.passed).collect();
        assert!(
            failed.is_empty() && !self.checks.is_empty() && self.exit_status == 0,
            "guest checks failed: {failed:#?} (ran {}, script exit {})\n--- serial ---\n{}",
            self.checks.len(),
            self.exit_status,
            self.serial
        );
    }
}

/// Shell helpers available to the script.
const HELPERS: &str = r#"
check() {
  name="$1"; shift
  if out=$("$@" 2>&1); then
    echo "CAIRN-CHECK $name PASS"
  else
    echo "CAIRN-CHECK $name FAIL $(echo "$out" | tr '\n' '|' | cut -c1-2000)"
  fi
}
result() { n="$1"; s="$2"; shift 2; echo "CAIRN-CHECK $n $s $*"; }
emit() { echo "CAIRN-VALUE $1 $2"; }
"#;

/// A guest boot with a script.
#[derive(Debug, Clone, Default)]
pub struct GuestRun {
    modules: Vec<(String, String)>,
    binaries: Vec<(PathBuf, String)>,
    files: Vec<(String, Vec<u8>, u32)>,
    script: String,
    nics: Vec<Nic>,
    memory_mb: Option<u32>,
    timeout: Option<Duration>,
}

impl GuestRun {
    /// An empty run (busybox only).
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads kernel module `name` (with dependencies) before the script.
    pub fn module(mut self, name: &str, params: &str) -> Self {
        self.modules.push((name.into(), params.into()));
        self
    }

    /// Copies a host executable (and its libraries) to `guest_path`.
    pub fn binary(mut self, host: impl Into<PathBuf>, guest_path: &str) -> Self {
        self.binaries.push((host.into(), guest_path.into()));
        self
    }

    /// Adds a file.
    pub fn file(mut self, guest_path: &str, contents: impl Into<Vec<u8>>) -> Self {
        self.files.push((guest_path.into(), contents.into(), 0o644));
        self
    }

    /// The check script (busybox `sh`).
    pub fn script(mut self, script: &str) -> Self {
        self.script = script.into();
        self
    }

    /// Adds a NIC (e1000 model).
    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
    }

    /// Guest memory (default 512 MiB).
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = Some(mb);
        self
    }

    /// How long the whole run may take (default 180 s: TCG on a busy 2-core host).
    pub fn timeout(mut self, limit: Duration) -> Self {
        self.timeout = Some(limit);
        self
    }

    /// Builds the initramfs into `dir` and returns its path and the kernel.
    pub fn build(&self, dir: &Path) -> Result<(PathBuf, Kernel), GuestError> {
        let kernel = debian_kernel()?;
        let mut fs = Initramfs::new(&kernel)?;
        for (name, params) in &self.modules {
            fs.module(name, params)?;
        }
        if !self.nics.is_empty() {
            fs.module("e1000", "")?;
        }
        for (host, guest) in &self.binaries {
            fs.binary(host, guest)?;
        }
        for (path, data, mode) in &self.files {
            fs.file(path, data.clone(), *mode);
        }
        fs.file("/cairn/helpers.sh", HELPERS, 0o644);
        fs.file("/cairn/check.sh", self.script.as_bytes().to_vec(), 0o755);
        let init = format!(
            "#!/bin/sh\n\
             export PATH=/bin:/usr/local/bin\n\
             mount -t proc proc /proc\n\
             mount -t sysfs sys /sys\n\
             mount -t devtmpfs dev /dev\n\
             mount -t tmpfs tmp /tmp\n\
             mount -t tmpfs run /run\n\
             {modules}\
             ip link set lo up\n\
             echo CAIRN-START\n\
             (. /cairn/helpers.sh; . /cairn/check.sh)\n\
             echo \"CAIRN-DONE $?\"\n\
             sync\n\
             poweroff -f\n",
            modules = fs.module_loader()
        );
        fs.init(&init);
        let path = dir.join("initramfs.cpio");
        fs.write(&path)?;
        Ok((path, kernel))
    }

    /// Boots the guest, runs the script, powers off and parses the console.
    pub fn run(&self) -> Result<GuestReport, GuestError> {
        self.spawn()?.finish()
    }

    /// Boots the guest and returns while the script runs, so the host can act on what the
    /// guest prints (see [`RunningGuest`]); [`RunningGuest::finish`] collects the report.
    pub fn spawn(&self) -> Result<RunningGuest, GuestError> {
        let dir = tempfile::Builder::new().prefix("cairn-guest-").tempdir()?;
        let (initrd, kernel) = self.build(dir.path())?;
        let mut builder = VmBuilder::new()
            .kernel(&kernel.image)
            .initrd(&initrd)
            // Under TCG on a loaded host the kernel's IO-APIC timer check can fail and panic
            // ("IO-APIC + timer doesn't work"); the check is pointless in a VM.
            .append("quiet no_timer_check")
            .memory_mb(self.memory_mb.unwrap_or(512));
        for nic in &self.nics {
            builder = builder.nic(nic.clone(), "e1000");
        }
        let vm = builder.spawn()?;
        Ok(RunningGuest {
            vm,
            limit: self.timeout.unwrap_or(Duration::from_secs(180)),
            started: std::time::Instant::now(),
            _dir: dir,
        })
    }
}

/// A guest whose script is running. The script and the host can take turns: the script
/// prints a marker (`echo CAIRN-MARK name`) and waits for something it can observe (a link
/// appearing), the host waits for the marker with [`RunningGuest::wait_for`] and acts.
/// Dropping it kills QEMU.
#[derive(Debug)]
pub struct RunningGuest {
    vm: Vm,
    limit: Duration,
    started: std::time::Instant,
    _dir: tempfile::TempDir,
}

impl RunningGuest {
    /// Waits until the console contains `needle`, within what is left of the run's timeout.
    pub fn wait_for(&mut self, needle: &str) -> Result<String, GuestError> {
        let left = self.limit.saturating_sub(self.started.elapsed());
        Ok(self.vm.wait_for_serial(needle, left)?)
    }

    /// The console so far.
    pub fn serial(&self) -> String {
        self.vm.serial()
    }

    /// Waits for the script to finish, powers off and parses the console.
    pub fn finish(mut self) -> Result<GuestReport, GuestError> {
        self.wait_for("CAIRN-DONE")?;
        // Power-off follows the marker within a second or two; kill if it hangs.
        let _ = self.vm.wait_exit(Duration::from_secs(20));
        Ok(parse_report(&self.vm.serial()))
    }
}

/// Parses the `CAIRN-*` lines of a console log.
pub fn parse_report(serial: &str) -> GuestReport {
    let mut checks = Vec::new();
    let mut values = Vec::new();
    let mut exit_status = -1;
    for line in serial.lines() {
        let line = line.trim_end_matches('\r');
        // Kernel messages can interleave on the same console; find the marker anywhere.
        if let Some(rest) = line.find("CAIRN-CHECK ").map(|i| &line[i + 12..]) {
            let mut parts = rest.splitn(3, ' ');
            let name = parts.next().unwrap_or_default().to_string();
            let status = parts.next().unwrap_or_default();
            checks.push(CheckResult {
                name,
                passed: status == "PASS",
                detail: parts.next().unwrap_or_default().to_string(),
            });
        } else if let Some(rest) = line.find("CAIRN-VALUE ").map(|i| &line[i + 12..]) {
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            values.push((k.to_string(), v.to_string()));
        } else if let Some(rest) = line.find("CAIRN-DONE ").map(|i| &line[i + 11..]) {
            exit_status = rest.trim().parse().unwrap_or(-1);
        }
    }
    GuestReport {
        checks,
        values,
        exit_status,
        serial: serial.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_among_kernel_noise() {
        let serial = "[ 1.0] booting\nCAIRN-CHECK a PASS\n[ 2.0] x CAIRN-CHECK b FAIL boom|bang\nCAIRN-VALUE t 12.5\nCAIRN-DONE 0\n";
        let r = parse_report(serial);
        assert_eq!(r.checks.len(), 2);
        assert!(r.check("a").unwrap().passed);
        assert!(!r.check("b").unwrap().passed);
        assert_eq!(r.check("b").unwrap().detail, "boom|bang");
        assert_eq!(r.value("t"), Some("12.5"));
        assert_eq!(r.exit_status, 0);
    }
}

#[cfg(test)]
mod boot_tests {
    use super::*;
    use crate::qemu::Beacon;

    /// Boots Debian's kernel with a dummy module, a copied iproute2 and a beacon NIC: the
    /// harness end to end (module loading, copied binaries, console parsing, power-off).
    #[test]
    fn guest_runs_checks_and_reports() {
        let beacon = Beacon::bind().unwrap();
        let fwd = beacon.guestfwd(9000);
        let listener = std::thread::spawn(move || beacon.read_line(Duration::from_secs(240)));
        let report = GuestRun::new()
            .module("dummy", "")
            .binary("/usr/bin/ip", "/usr/local/bin/ip")
            .nic(Nic::User { options: fwd })
            .script(
                r#"
/usr/local/bin/ip link add d0 type dummy
check dummy-created /usr/local/bin/ip link show d0
check no-such-link /usr/local/bin/ip link show nope
ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0
echo "hello-from-guest" | timeout 30 nc 10.0.2.100 9000
emit answer 42
"#,
            )
            .run()
            .unwrap();
        assert!(
            report.check("dummy-created").unwrap().passed,
            "{}",
            report.serial
        );
        let failed = report.check("no-such-link").unwrap();
        assert!(
            !failed.passed && failed.detail.contains("does not exist"),
            "{failed:?}"
        );
        assert_eq!(report.value("answer"), Some("42"));
        assert_eq!(report.exit_status, 0);
        assert_eq!(listener.join().unwrap().unwrap(), "hello-from-guest");
    }
}
