//! The lab supervisor: `cairn-lab up` builds the lab, then stays in the foreground as the
//! parent of every process the lab runs, until `cairn-lab down` (over the control socket),
//! Ctrl-C or SIGTERM. See the process model in [`crate::lab`].

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::lab::control::{Reply, Request, ServerState};
use crate::lab::faults::FaultsFile;
use crate::lab::ipmi::{self, IpmiSimConfig};
use crate::lab::layout::{self, BmcKind, Layout, Manifest, ServerSpec};
use crate::lab::redfish::{self, Libvirt};
use crate::lab::server::{LabServer, NextBoot};
use crate::lab::services::Services;
use crate::lab::{net, procs, rackfile};

/// Which BMC emulators `up` gives the servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BmcChoice {
    /// Every server gets `ipmi_sim`.
    Ipmi,
    /// Every server gets sushy-tools (Redfish).
    Redfish,
    /// Odd servers IPMI, even servers Redfish.
    Mixed,
}

/// What `up` builds.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Lab directory.
    pub dir: PathBuf,
    /// Number of servers.
    pub servers: usize,
    /// BMC emulators.
    pub bmc: BmcChoice,
    /// Guest memory per server.
    pub memory_mb: u32,
    /// Blank disk size per server.
    pub disk_gb: u64,
    /// Run the lab's hub and boot server (off: BMCs and servers only).
    pub services: bool,
    /// An existing `cairn image build` output for the boot server; `None` builds one.
    pub artifacts: Option<PathBuf>,
    /// A faults file ([`crate::lab::faults`]): the Redfish servers it names get the fault
    /// proxy in front of their sushy-tools.
    pub faults: Option<PathBuf>,
}

/// The BMC user the lab creates.
pub const BMC_USER: &str = "admin";

/// A built, running lab. Dropping it tears everything down.
pub struct Lab {
    layout: Layout,
    manifest: Manifest,
    servers: Arc<Mutex<Vec<LabServer>>>,
    helpers: Vec<(String, Child)>,
    services: Option<Arc<Mutex<Services>>>,
    libvirt: Option<Libvirt>,
    torn_down: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("manifest", &self.manifest)
            .finish()
    }
}

fn random_password() -> anyhow::Result<String> {
    // IPMI passwords are at most 20 bytes: 8 random bytes give 16 hex digits.
    let mut bytes = [0u8; 8];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").context("opening /dev/urandom")?,
        &mut bytes,
    )
    .context("reading /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The servers' specs: names, addresses, ports, taps, MACs.
pub fn plan(servers: usize, bmc: BmcChoice) -> Vec<ServerSpec> {
    (1..=servers)
        .map(|i| {
            let kind = match bmc {
                BmcChoice::Ipmi => BmcKind::Ipmi,
                BmcChoice::Redfish => BmcKind::Redfish,
                BmcChoice::Mixed if i % 2 == 1 => BmcKind::Ipmi,
                BmcChoice::Mixed => BmcKind::Redfish,
            };
            let [a, b, c] = layout::SUBNET_PREFIX;
            let bmc_ip = Ipv4Addr::new(a, b, c, 100 + i as u8);
            let (bmc_port, bmc_url) = match kind {
                BmcKind::Ipmi => (623, format!("ipmi://{BMC_USER}@{bmc_ip}:623")),
                BmcKind::Redfish => (8000, format!("redfish+http://{BMC_USER}@{bmc_ip}:8000")),
            };
            ServerSpec {
                name: format!("srv{i}"),
                bmc: kind,
                bmc_ip,
                bmc_port,
                bmc_url,
                mac: layout::mac_for(i),
                serial: layout::serial_for(i),
                tap: format!("tap{i}"),
                ipmi_serial_port: 9000 + i as u16,
            }
        })
        .collect()
}

impl Lab {
    /// What is up, for people: servers, inventory, hub, boot server and how to stop it.
    pub fn describe(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let m = self.manifest();
        let dir = self.layout().dir().display().to_string();
        let _ = writeln!(out, "lab up in {dir} (network namespace {})", m.netns);
        let _ = writeln!(out, "{:<6} {:<34} BOOT MAC", "SERVER", "BMC");
        for s in &m.servers {
            let _ = writeln!(out, "{:<6} {:<34} {:<18}", s.name, s.bmc_url, s.mac);
        }
        let _ = writeln!(out, "inventory: {}", self.layout().rack_yaml().display());
        if let Some(s) = &m.services {
            let _ = writeln!(out, "hub: {} (CA {})", s.hub_url, s.hub_ca_fingerprint);
            let _ = writeln!(
                out,
                "  operator: cairn-lab exec --dir {dir} -- cairn hub --config {} appliances list",
                s.hub_login.display()
            );
            let _ = writeln!(
                out,
                "boot server: {} serving {}",
                s.boot_server_url,
                s.artifacts.display()
            );
        }
        let _ = writeln!(
            out,
            "supervising; stop with `cairn-lab down --dir {dir}` or Ctrl-C"
        );
        out
    }

    /// Builds the lab: directory, namespace, disks, BMC emulators, rack.yaml.
    pub fn build(opts: &UpOptions) -> anyhow::Result<Lab> {
        if opts.servers == 0 || opts.servers > 100 {
            bail!("--servers must be between 1 and 100");
        }
        let layout = Layout::new(&opts.dir).context("resolving the lab directory")?;
        if let Ok(m) = layout.read_manifest() {
            if procs::alive(m.supervisor_pid) {
                bail!(
                    "a lab is already up at {} (supervisor pid {}); `cairn-lab down --dir {}` first",
                    layout.dir().display(),
                    m.supervisor_pid,
                    layout.dir().display()
                );
            }
            bail!(
                "{} holds a lab whose supervisor is gone; clean it with `cairn-lab down --dir {}`",
                layout.dir().display(),
                layout.dir().display()
            );
        }
        if layout.dir().exists()
            && std::fs::read_dir(layout.dir())
                .map(|mut d| d.next().is_some())
                .unwrap_or(true)
        {
            bail!(
                "{} exists and is not empty; `down` removes the whole lab directory, so give a new or empty one",
                layout.dir().display()
            );
        }
        std::fs::create_dir_all(layout.dir())
            .with_context(|| format!("creating {}", layout.dir().display()))?;
        let pid = std::process::id();
        let manifest = Manifest {
            netns: format!("cairn-lab-{pid}"),
            bridge: "labbr0".into(),
            supervisor_pid: pid,
            servers: plan(opts.servers, opts.bmc),
            memory_mb: opts.memory_mb,
            disk_gb: opts.disk_gb,
            services: None,
        };
        let mut lab = Lab {
            layout,
            servers: Arc::new(Mutex::new(Vec::new())),
            helpers: Vec::new(),
            services: None,
            libvirt: None,
            manifest,
            torn_down: false,
        };
        let faults = opts
            .faults
            .as_deref()
            .map(|path| checked_faults(path, &lab.manifest.servers).map(|f| (path, f)))
            .transpose()?;
        // Any error from here on drops `lab`, which removes what was made so far.
        lab.populate(faults.as_ref().map(|(p, f)| (*p, f)))?;
        if opts.services {
            let services = Services::start(
                &lab.layout,
                &lab.manifest.netns,
                &lab.manifest.bridge,
                opts.artifacts.as_deref(),
            )?;
            lab.manifest.services = Some(services.info.clone());
            lab.services = Some(Arc::new(Mutex::new(services)));
        }
        Ok(lab)
    }

    fn populate(&mut self, faults: Option<(&std::path::Path, &FaultsFile)>) -> anyhow::Result<()> {
        let m = self.manifest.clone();
        net::create(&m.netns, &m.bridge, layout::gateway())?;
        let exe = std::env::current_exe().context("finding the cairn-lab binary")?;
        let mut passwords = Vec::new();
        let mut servers = Vec::new();
        if m.servers.iter().any(|s| s.bmc == BmcKind::Redfish) {
            tracing::info!("starting the lab's libvirtd for the Redfish servers");
            self.libvirt = Some(Libvirt::start(self.layout.dir(), &m.netns)?);
        }
        for (index, spec) in m.servers.iter().enumerate() {
            net::add_tap(&m.netns, &m.bridge, &spec.tap)?;
            net::add_address(&m.netns, &m.bridge, spec.bmc_ip)?;
            let dir = self.layout.server(&spec.name);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let disk = dir.join("disk.raw");
            std::fs::File::create(&disk)
                .and_then(|f| f.set_len(m.disk_gb << 30))
                .with_context(|| format!("creating blank disk {}", disk.display()))?;
            let password = random_password()?;
            if let (BmcKind::Redfish, Some(libvirt)) = (spec.bmc, &self.libvirt) {
                let uuid = redfish::domain_uuid(index + 1);
                libvirt.define(spec, &uuid, &dir, m.memory_mb)?;
                redfish::write_sushy_files(&dir, self.layout.dir(), &uuid, BMC_USER, &password)
                    .with_context(|| format!("writing sushy-tools files for {}", spec.name))?;
                match faults.filter(|(_, f)| f.servers.contains_key(&spec.name)) {
                    Some((file, _)) => self.start_faulty_bmc(spec, &dir, file, &exe)?,
                    None => {
                        let child = redfish::start_sushy(spec, &dir, &m.netns)?;
                        self.helpers
                            .push((format!("sushy-emulator {}", spec.name), child));
                    }
                }
                passwords.push(password);
                servers.push(LabServer::new(spec.clone(), dir, &m.netns, m.memory_mb));
                continue;
            }
            let control = format!(
                "{} chassis --dir {} {}",
                exe.display(),
                self.layout.dir().display(),
                spec.name
            );
            ipmi::write_files(
                &dir,
                &IpmiSimConfig {
                    name: &spec.name,
                    addr: spec.bmc_ip,
                    port: spec.bmc_port,
                    serial_port: spec.ipmi_serial_port,
                    user: BMC_USER,
                    password: &password,
                    chassis_control: &control,
                },
            )
            .with_context(|| format!("writing ipmi_sim files in {}", dir.display()))?;
            self.start_ipmi_sim(spec, &dir)?;
            passwords.push(password);
            servers.push(LabServer::new(spec.clone(), dir, &m.netns, m.memory_mb));
        }
        if let Some(libvirt) = self.libvirt.as_mut() {
            libvirt.watch_reboots()?;
        }
        *self.servers.lock().expect("lab state lock") = servers;
        rackfile::write(&self.layout, &m.servers, BMC_USER, &passwords)?;
        Ok(())
    }

    /// sushy-tools one port up, and the fault proxy on the BMC's address in front of it
    /// (`cairn-lab fault-proxy`, the supervisor's child like every helper).
    fn start_faulty_bmc(
        &mut self,
        spec: &ServerSpec,
        dir: &std::path::Path,
        faults: &std::path::Path,
        exe: &std::path::Path,
    ) -> anyhow::Result<()> {
        let behind = ServerSpec {
            bmc_port: spec.bmc_port + 1,
            ..spec.clone()
        };
        let sushy = redfish::start_sushy(&behind, dir, &self.manifest.netns)?;
        self.helpers
            .push((format!("sushy-emulator {}", spec.name), sushy));
        // The lab keeps its own copy: the proxy reads it, and it stays with the lab's logs.
        let file = dir.join("faults.yaml");
        std::fs::copy(faults, &file)
            .with_context(|| format!("copying {} to {}", faults.display(), file.display()))?;
        let log = dir.join("fault-proxy.log");
        let out = std::fs::File::create(&log).context("creating fault-proxy.log")?;
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.manifest.netns])
            .arg(exe)
            .args(["fault-proxy", "--server", &spec.name, "--faults"])
            .arg(&file)
            .arg("--listen")
            .arg(format!("{}:{}", spec.bmc_ip, spec.bmc_port))
            .arg("--upstream")
            .arg(format!("http://{}:{}", spec.bmc_ip, behind.bmc_port))
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("fault-proxy.log")?)
            .stderr(out)
            .spawn()
            .context("starting cairn-lab fault-proxy")?;
        redfish::wait_listening(
            &mut child,
            spec.bmc_ip,
            spec.bmc_port,
            &format!("the fault proxy of {}", spec.name),
            &log,
        )?;
        self.helpers
            .push((format!("fault proxy {}", spec.name), child));
        tracing::info!(server = %spec.name, log = %log.display(), "BMC faults injected");
        Ok(())
    }

    fn start_ipmi_sim(&mut self, spec: &ServerSpec, dir: &std::path::Path) -> anyhow::Result<()> {
        let log =
            std::fs::File::create(dir.join("ipmi_sim.log")).context("creating ipmi_sim.log")?;
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.manifest.netns,
                "ipmi_sim",
                "-n",
                "-c",
            ])
            .arg(dir.join("lan.conf"))
            .arg("-f")
            .arg(dir.join("ipmi_sim.cmds"))
            .arg("-s")
            .arg(dir.join("ipmi-state"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("ipmi_sim.log")?)
            .stderr(log)
            .spawn()
            .context("starting ipmi_sim (install openipmi: scripts/setup)")?;
        // Ready when its UDP socket shows in its namespace's table (port in hex).
        let needle = format!(":{:04X}", spec.bmc_port);
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                let text = std::fs::read_to_string(dir.join("ipmi_sim.log")).unwrap_or_default();
                bail!(
                    "ipmi_sim for {} exited with {status}: {}",
                    spec.name,
                    text.trim()
                );
            }
            let udp = std::fs::read_to_string(format!("/proc/{}/net/udp", child.id()))
                .unwrap_or_default();
            if udp.lines().any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| a.ends_with(&needle))
            }) {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "ipmi_sim for {} did not open its LAN port within 10 s",
                    spec.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.helpers
            .push((format!("ipmi_sim {}", spec.name), child));
        Ok(())
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The lab's paths.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Every server's state.
    pub fn states(servers: &Mutex<Vec<LabServer>>) -> Vec<ServerState> {
        servers
            .lock()
            .expect("lab state lock")
            .iter()
            .map(|s| ServerState {
                name: s.spec.name.clone(),
                power_on: s.is_on(),
                pid: s.pid(),
                next_boot: s.next_boot,
                power_ons: s.power_ons,
            })
            .collect()
    }

    /// Kills every process, deletes the namespace and the lab directory.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        if let Ok(mut servers) = self.servers.lock() {
            for s in servers.iter_mut() {
                s.power_off();
            }
        }
        if let Some(services) = self.services.take()
            && let Ok(mut services) = services.lock()
        {
            services.stop();
        }
        for (name, child) in &mut self.helpers {
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(%name, "stopped");
        }
        if let Some(mut libvirt) = self.libvirt.take() {
            libvirt.stop();
        }
        if net::exists(&self.manifest.netns)
            && let Err(e) = net::delete(&self.manifest.netns)
        {
            tracing::warn!(error = %e, "deleting the lab namespace");
        }
        if let Err(e) = std::fs::remove_dir_all(self.layout.dir()) {
            tracing::warn!(error = %e, dir = %self.layout.dir().display(), "removing the lab directory");
        }
    }

    /// Serves the control socket until `down` or a signal, then tears down.
    pub async fn serve(mut self) -> anyhow::Result<()> {
        let socket = self.layout.socket();
        let listener =
            UnixListener::bind(&socket).with_context(|| format!("binding {}", socket.display()))?;
        let manifest_text = serde_json::to_string_pretty(&self.manifest)?;
        std::fs::write(self.layout.manifest(), manifest_text).context("writing lab.json")?;
        let (down_tx, mut down_rx) = mpsc::channel::<OwnedWriteHalf>(1);
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let reply_to = loop {
            tokio::select! {
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        tokio::spawn(handle(stream, self.servers.clone(), self.services.clone(), down_tx.clone()));
                    }
                }
                _ = tick.tick() => {
                    let servers = self.servers.clone();
                    let _ = tokio::task::spawn_blocking(move || {
                        for s in servers.lock().expect("lab state lock").iter_mut() {
                            s.poll();
                        }
                    }).await;
                }
                Some(reply) = down_rx.recv() => break Some(reply),
                _ = tokio::signal::ctrl_c() => break None,
                _ = term.recv() => break None,
            }
        };
        tracing::info!("tearing the lab down");
        tokio::task::spawn_blocking(move || {
            self.teardown();
        })
        .await?;
        // Answered only now, so that `down` returns once everything is gone.
        if let Some(mut writer) = reply_to {
            let _ = writer.write_all(b"{\"result\":\"ok\"}\n").await;
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.teardown();
    }
}

async fn handle(
    stream: UnixStream,
    servers: Arc<Mutex<Vec<LabServer>>>,
    services: Option<Arc<Mutex<Services>>>,
    down: mpsc::Sender<OwnedWriteHalf>,
) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    if BufReader::new(read).read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(&line) {
        Err(e) => Reply::Error {
            message: format!("bad request: {e}"),
        },
        Ok(Request::Down) => {
            // The main loop answers after the teardown.
            let _ = down.send(write).await;
            return;
        }
        Ok(Request::Status) => {
            let servers = servers.clone();
            tokio::task::spawn_blocking(move || Reply::Servers {
                servers: Lab::states(&servers),
            })
            .await
            .unwrap_or_else(|e| Reply::Error {
                message: e.to_string(),
            })
        }
        Ok(Request::Hub { run }) => tokio::task::spawn_blocking(move || hub(services, run))
            .await
            .unwrap_or_else(|e| Reply::Error {
                message: e.to_string(),
            }),
        Ok(Request::Chassis { server, set }) => {
            tokio::task::spawn_blocking(move || chassis(&servers, &server, &set))
                .await
                .unwrap_or_else(|e| Reply::Error {
                    message: e.to_string(),
                })
        }
    };
    let mut text = serde_json::to_string(&reply).unwrap_or_default();
    text.push('\n');
    let _ = write.write_all(text.as_bytes()).await;
}

/// Stops or starts the lab's hub.
fn hub(services: Option<Arc<Mutex<Services>>>, run: bool) -> Reply {
    let Some(services) = services else {
        return Reply::Error {
            message: "this lab runs no hub (it was started with --no-services)".into(),
        };
    };
    let mut services = services.lock().expect("lab services lock");
    if run {
        if let Err(e) = services.start_hub() {
            return Reply::Error {
                message: format!("{e:#}"),
            };
        }
    } else {
        services.stop_hub();
    }
    Reply::Ok
}

/// Applies chassis_control `set` pairs to one server: boot device first, then power.
fn chassis(servers: &Mutex<Vec<LabServer>>, name: &str, set: &[(String, String)]) -> Reply {
    let mut servers = servers.lock().expect("lab state lock");
    let Some(server) = servers.iter_mut().find(|s| s.spec.name == name) else {
        return Reply::Error {
            message: format!("no server {name:?} in this lab"),
        };
    };
    let mut ordered: Vec<&(String, String)> = set.iter().filter(|(p, _)| p == "boot").collect();
    ordered.extend(set.iter().filter(|(p, _)| p != "boot"));
    for (param, value) in ordered {
        let result = match (param.as_str(), value.as_str()) {
            ("boot", v) => match NextBoot::parse(v) {
                Some(b) => {
                    server.next_boot = b;
                    Ok(())
                }
                None => Err(format!("unknown boot device {v:?}")),
            },
            ("power", "1") => server.power_on().map_err(|e| format!("{e:#}")),
            ("power", "0") => {
                server.power_off();
                Ok(())
            }
            ("reset", "1") => server.reset().map_err(|e| format!("{e:#}")),
            ("shutdown", "1") => server.soft_off().map_err(|e| format!("{e:#}")),
            // Identify LEDs and resets with value 0 change nothing in a VM.
            ("identify", _) | ("reset", "0") | ("shutdown", "0") => Ok(()),
            (p, v) => Err(format!("cannot set {p} to {v:?}")),
        };
        if let Err(message) = result {
            tracing::warn!(server = %name, %param, %value, %message, "chassis request failed");
            return Reply::Error { message };
        }
    }
    Reply::Ok
}

/// Reads a faults file and checks it against the lab's servers: every server it names must
/// exist and have a Redfish BMC (the proxy speaks Redfish).
fn checked_faults(path: &std::path::Path, servers: &[ServerSpec]) -> anyhow::Result<FaultsFile> {
    let faults = FaultsFile::load(path).map_err(anyhow::Error::msg)?;
    faults
        .check_servers(servers.iter().map(|s| s.name.as_str()))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    if let Some(s) = servers
        .iter()
        .find(|s| s.bmc != BmcKind::Redfish && faults.servers.contains_key(&s.name))
    {
        bail!(
            "{}: server {} has an IPMI BMC; faults apply to Redfish BMCs (start the lab with --bmc redfish or mixed, and name its even servers)",
            path.display(),
            s.name
        );
    }
    Ok(faults)
}

/// `down` when the supervisor is gone: kill what still runs with the lab's paths in its
/// arguments, delete the namespace, remove the directory. Returns what it removed.
pub fn cleanup_orphans(layout: &Layout, manifest: &Manifest) -> Vec<String> {
    let mut done = Vec::new();
    for pid in procs::with_arg(&layout.dir().display().to_string()) {
        if Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok()
        {
            done.push(format!("killed pid {pid}"));
        }
    }
    if net::exists(&manifest.netns) && net::delete(&manifest.netns).is_ok() {
        done.push(format!("deleted namespace {}", manifest.netns));
    }
    if std::fs::remove_dir_all(layout.dir()).is_ok() {
        done.push(format!("removed {}", layout.dir().display()));
    }
    done
}
