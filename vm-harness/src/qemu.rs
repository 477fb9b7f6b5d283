//! One QEMU virtual machine as a direct child process, and a beacon the guest calls home on.
//!
//! # API
//! - [`VmBuilder`]: kernel + initrd (or any extra arguments), memory, CPUs, NICs, QMP.
//!   [`VmBuilder::spawn`] starts `qemu-system-x86_64 -accel tcg` with the serial console
//!   written to a file and returns a [`Vm`].
//! - [`Vm`]: [`Vm::wait_for_serial`] polls the console log for a string,
//!   [`Vm::wait_exit`] waits for the guest to power off, [`Vm::qmp`] sends one QMP command,
//!   [`Vm::serial`] reads the whole log. Dropping a `Vm` kills QEMU and reaps it.
//! - [`Beacon`]: a TCP listener on `127.0.0.1:0`. [`Beacon::guestfwd`] gives the
//!   `-netdev user` option that forwards a guest address (`10.0.2.100:PORT`) to it; the guest
//!   announces itself by writing a line there, [`Beacon::wait_line`] returns that line and
//!   closes the connection (busybox `nc` only exits when the far end closes, so the guest
//!   should send with `timeout 30 nc 10.0.2.100 PORT` and the host must be reading).
//!
//! # Why like this
//! - TCG only: `/dev/kvm` exists on the lab machines but hangs (LAB.md).
//! - QEMU is never daemonized: PID 1 on these machines does not reap orphans, so QEMU stays
//!   our child and `Drop` kills and `wait()`s it.
//! - The beacon uses a `guestfwd` to a TCP chardev rather than `cmd:socat`: QEMU connects the
//!   chardev once at start-up, so no per-connection helper process is left to become a zombie.
//!   A connection alone therefore only means "QEMU started"; the guest's *line* is the signal.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Errors of the QEMU harness.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    /// QEMU could not be started (not installed?).
    #[error("starting {program} (install qemu-system-x86 via scripts/setup)")]
    Spawn {
        /// The program that failed to start.
        program: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file or socket operation of the harness failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The guest did not do what was awaited within the limit.
    #[error("timed out after {waited:?} waiting for {what}; serial log tail:\n{tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        waited: Duration,
        /// The last lines of the serial console, to see where the guest was.
        tail: String,
    },
    /// QEMU exited before the awaited event.
    #[error("qemu exited with {status} while waiting for {what}; serial log tail:\n{tail}")]
    Exited {
        /// The exit status.
        status: ExitStatus,
        /// What was awaited.
        what: String,
        /// The last lines of the serial console.
        tail: String,
    },
    /// QMP answered with an error or nonsense.
    #[error("QMP: {0}")]
    Qmp(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> QemuError {
    let what = what.into();
    move |source| QemuError::Io { what, source }
}

/// A network interface of the guest.
#[derive(Debug, Clone)]
pub enum Nic {
    /// QEMU user networking (`-netdev user`), with extra options such as a `guestfwd=...`
    /// from [`Beacon::guestfwd`]. The guest sees 10.0.2.0/24; nothing leaves the host except
    /// what the options forward to loopback.
    User {
        /// Options appended to `-netdev user,id=...` (without a leading comma), may be empty.
        options: String,
    },
    /// A tap device that already exists (e.g. created inside the test's network namespace
    /// and QEMU run under `ip netns exec`).
    Tap {
        /// The tap's name.
        ifname: String,
    },
}

/// Builds the QEMU command line.
#[derive(Debug, Clone)]
pub struct VmBuilder {
    program: String,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: String,
    memory_mb: u32,
    cpus: u32,
    nics: Vec<(Nic, String)>,
    qmp: bool,
    netns: Option<String>,
    extra: Vec<String>,
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self {
            program: "qemu-system-x86_64".into(),
            kernel: None,
            initrd: None,
            append: "console=ttyS0 panic=-1".into(),
            memory_mb: 512,
            cpus: 1,
            nics: Vec::new(),
            qmp: false,
            netns: None,
            extra: Vec::new(),
        }
    }
}

impl VmBuilder {
    /// A VM with 512 MiB, one CPU, no disks, no NICs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Direct kernel boot (`-kernel`).
    pub fn kernel(mut self, path: impl Into<PathBuf>) -> Self {
        self.kernel = Some(path.into());
        self
    }

    /// The initramfs (`-initrd`).
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }

    /// Extra kernel command line, appended after `console=ttyS0 panic=-1`.
    pub fn append(mut self, args: &str) -> Self {
        self.append.push(' ');
        self.append.push_str(args);
        self
    }

    /// Guest memory in MiB.
    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    /// Number of virtual CPUs.
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Adds a NIC of the given QEMU device model (`e1000`, `virtio-net-pci`).
    pub fn nic(mut self, nic: Nic, model: &str) -> Self {
        self.nics.push((nic, model.to_string()));
        self
    }

    /// Opens a QMP socket (see [`Vm::qmp`]).
    pub fn qmp(mut self, on: bool) -> Self {
        self.qmp = on;
        self
    }

    /// Runs QEMU under `ip netns exec NS` (for tap NICs inside a test namespace).
    pub fn netns(mut self, ns: &str) -> Self {
        self.netns = Some(ns.to_string());
        self
    }

    /// Any further QEMU arguments (disks, `-boot`, firmware).
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.extra.push(arg.into());
        self
    }

    /// The full argument vector after the program name, with files placed in `dir`.
    fn args(&self, dir: &Path) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "-accel".into(),
            "tcg".into(),
            "-nodefaults".into(),
            "-no-reboot".into(),
            "-display".into(),
            "none".into(),
            "-m".into(),
            self.memory_mb.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
            "-serial".into(),
            format!("file:{}", dir.join("serial.log").display()),
        ];
        if let Some(kernel) = &self.kernel {
            args.extend(["-kernel".into(), kernel.display().to_string()]);
            args.extend(["-append".into(), self.append.clone()]);
        }
        if let Some(initrd) = &self.initrd {
            args.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        for (i, (nic, model)) in self.nics.iter().enumerate() {
            let netdev = match nic {
                Nic::User { options } if options.is_empty() => format!("user,id=n{i}"),
                Nic::User { options } => format!("user,id=n{i},{options}"),
                Nic::Tap { ifname } => {
                    format!("tap,id=n{i},ifname={ifname},script=no,downscript=no")
                }
            };
            args.extend(["-netdev".into(), netdev]);
            args.extend(["-device".into(), format!("{model},netdev=n{i}")]);
        }
        if self.qmp {
            args.extend([
                "-qmp".into(),
                format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
            ]);
        }
        args.extend(self.extra.iter().cloned());
        args
    }

    /// Starts QEMU. Its serial log and QMP socket live in a fresh temporary directory.
    pub fn spawn(&self) -> Result<Vm, QemuError> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-vm-")
            .tempdir()
            .map_err(io("creating the VM directory"))?;
        let args = self.args(dir.path());
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, &self.program]);
                c
            }
            None => Command::new(&self.program),
        };
        command
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("qemu.stderr"))
                    .map_err(io("creating qemu.stderr"))?,
            );
        tracing::debug!(?args, "starting qemu");
        let child = command.spawn().map_err(|source| QemuError::Spawn {
            program: self.program.clone(),
            source,
        })?;
        Ok(Vm {
            child,
            serial: dir.path().join("serial.log"),
            qmp: self.qmp.then(|| dir.path().join("qmp.sock")),
            dir,
        })
    }
}

/// A running QEMU. Dropping it kills QEMU and reaps it.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    serial: PathBuf,
    qmp: Option<PathBuf>,
    dir: tempfile::TempDir,
}

/// How often the harness looks at the console or the process.
const POLL: Duration = Duration::from_millis(100);

impl Vm {
    /// The serial console log file.
    pub fn serial_path(&self) -> &Path {
        &self.serial
    }

    /// The directory holding the serial log, QEMU's stderr and the QMP socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The serial console so far (lossy UTF-8).
    pub fn serial(&self) -> String {
        std::fs::read(&self.serial)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The last `n` lines of the console plus QEMU's stderr, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let serial = self.serial();
        let lines: Vec<&str> = serial.lines().collect();
        let start = lines.len().saturating_sub(n);
        let stderr =
            std::fs::read_to_string(self.dir.path().join("qemu.stderr")).unwrap_or_default();
        let mut out = lines[start..].join("\n");
        if !stderr.trim().is_empty() {
            out.push_str("\nqemu stderr: ");
            out.push_str(stderr.trim());
        }
        out
    }

    /// Polls the console until it contains `needle`; returns the console at that point.
    pub fn wait_for_serial(&mut self, needle: &str, limit: Duration) -> Result<String, QemuError> {
        let start = Instant::now();
        loop {
            let serial = self.serial();
            if serial.contains(needle) {
                return Ok(serial);
            }
            if let Some(status) = self.child.try_wait().map_err(io("polling qemu"))? {
                return Err(QemuError::Exited {
                    status,
                    what: format!("{needle:?} on the serial console"),
                    tail: self.tail(30),
                });
            }
            if start.elapsed() > limit {
                return Err(QemuError::Timeout {
                    what: format!("{needle:?} on the serial console"),
                    waited: limit,
                    tail: self.tail(30),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits for QEMU to exit by itself (guest power-off with `-no-reboot`).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, QemuError> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().map_err(io("polling qemu"))? {
                return Ok(status);
            }
            if start.elapsed() > limit {
                return Err(QemuError::Timeout {
                    what: "the guest to power off".into(),
                    waited: limit,
                    tail: self.tail(30),
                });
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends one QMP command (a JSON object as text) and returns the `return` reply line.
    /// Each call opens its own session: capabilities negotiation, command, answer.
    pub fn qmp(&self, command: &str) -> Result<String, QemuError> {
        let path = self
            .qmp
            .as_ref()
            .ok_or_else(|| QemuError::Qmp("VM was built without .qmp(true)".into()))?;
        let stream = UnixStream::connect(path).map_err(io("connecting to QMP"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(io("setting QMP timeout"))?;
        let mut writer = stream.try_clone().map_err(io("cloning QMP socket"))?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader
            .read_line(&mut line)
            .map_err(io("reading QMP greeting"))?;
        for request in [r#"{"execute":"qmp_capabilities"}"#, command] {
            writer
                .write_all(format!("{request}\n").as_bytes())
                .map_err(io("writing QMP"))?;
            loop {
                line.clear();
                if reader.read_line(&mut line).map_err(io("reading QMP"))? == 0 {
                    return Err(QemuError::Qmp("connection closed".into()));
                }
                // Asynchronous events may arrive between a command and its answer.
                if line.contains("\"event\"") {
                    continue;
                }
                if line.contains("\"error\"") {
                    return Err(QemuError::Qmp(line.trim().to_string()));
                }
                break;
            }
        }
        Ok(line.trim().to_string())
    }

    /// Kills QEMU now and reaps it.
    pub fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A host TCP listener on `127.0.0.1:0` that a guest reports to.
#[derive(Debug)]
pub struct Beacon {
    listener: TcpListener,
    port: u16,
}

/// Where the guest reaches the beacon inside QEMU user networking.
pub const BEACON_GUEST_ADDR: &str = "10.0.2.100";

impl Beacon {
    /// Binds a fresh loopback port.
    pub fn bind() -> Result<Self, QemuError> {
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("binding the beacon"))?;
        let port = listener.local_addr().map_err(io("beacon address"))?.port();
        Ok(Self { listener, port })
    }

    /// The host port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The `-netdev user` option forwarding `10.0.2.100:guest_port` in the guest to this
    /// beacon; pass it as [`Nic::User`] options.
    pub fn guestfwd(&self, guest_port: u16) -> String {
        format!(
            "guestfwd=tcp:{BEACON_GUEST_ADDR}:{guest_port}-tcp:127.0.0.1:{}",
            self.port
        )
    }

    /// Waits for a connection and the first line written on it (the guest's announcement),
    /// failing early if QEMU exits.
    pub fn wait_line(&self, vm: &mut Vm, limit: Duration) -> Result<String, QemuError> {
        let start = Instant::now();
        self.read_line_while(|| Self::check_vm(vm, start, limit))
    }

    /// Like [`Beacon::wait_line`] without watching a VM (for use from another thread while
    /// the VM is owned elsewhere, e.g. by [`crate::guest::GuestRun::run`]).
    pub fn read_line(&self, limit: Duration) -> Result<String, QemuError> {
        let start = Instant::now();
        self.read_line_while(|| {
            if start.elapsed() > limit {
                return Err(QemuError::Timeout {
                    what: "the guest's beacon".into(),
                    waited: limit,
                    tail: String::new(),
                });
            }
            Ok(())
        })
    }

    fn read_line_while(
        &self,
        mut keep_going: impl FnMut() -> Result<(), QemuError>,
    ) -> Result<String, QemuError> {
        self.listener
            .set_nonblocking(true)
            .map_err(io("beacon nonblocking"))?;
        let mut stream: TcpStream = loop {
            match self.listener.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io("accepting the beacon")(e)),
            }
            keep_going()?;
            std::thread::sleep(POLL);
        };
        stream
            .set_nonblocking(false)
            .map_err(io("beacon blocking"))?;
        stream
            .set_read_timeout(Some(POLL))
            .map_err(io("beacon read timeout"))?;
        let mut buf = Vec::new();
        loop {
            let mut chunk = [0u8; 256];
            match stream.read(&mut chunk) {
                // QEMU's chardev may connect before the guest has anything to say.
                Ok(0) if buf.is_empty() => std::thread::sleep(POLL),
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.contains(&b'\n') {
                        break;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(io("reading the beacon")(e)),
            }
            keep_going()?;
        }
        let text = String::from_utf8_lossy(&buf);
        Ok(text.lines().next().unwrap_or_default().to_string())
    }

    fn check_vm(vm: &mut Vm, start: Instant, limit: Duration) -> Result<(), QemuError> {
        if let Some(status) = vm.child.try_wait().map_err(io("polling qemu"))? {
            return Err(QemuError::Exited {
                status,
                what: "the guest's beacon".into(),
                tail: vm.tail(30),
            });
        }
        if start.elapsed() > limit {
            return Err(QemuError::Timeout {
                what: "the guest's beacon".into(),
                waited: limit,
                tail: vm.tail(30),
            });
        }
        Ok(())
    }
}
