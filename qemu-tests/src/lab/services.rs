//! The lab's own site services, run inside its namespace as children of the supervisor:
//! a real `cairn-hub` (initialised with a CA that names the lab address, and an operator
//! login) and a real `cairn boot-server` (proxy DHCP plus leases for the lab's MACs, iPXE
//! and HTTP from the artifacts of `cairn image build`), which mints one single-use
//! enrollment token per install at the hub, bound to the server's boot MAC. Redfish servers'
//! seeded virtual-media ISOs are `cairn rack provision`'s own (served by the boot server),
//! with tokens it mints. No multi-use enrollment token exists in the lab.
//!
//! Everything is driven through the same commands an operator types (`cairn-hub init`,
//! `cairn hub login`, `cairn image build`, `cairn boot-server`), so
//! the lab rehearses the real procedure. The binaries are taken from beside `cairn-lab`
//! (one build), else from `PATH`.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::lab::layout::{self, Layout, ServicesInfo};

/// Port of the lab hub (HTTPS) on the lab gateway address.
pub const HUB_PORT: u16 = 8443;
/// Port of the boot server (HTTP) on the lab gateway address.
pub const BOOT_PORT: u16 = 8080;
/// The lab segment's IPv6 prefix (a ULA, inside the namespace only), advertised so that
/// iPXE does not wait for a router.
const LAB_ULA_GATEWAY: &str = "fd77:cafe::1/64";

/// A cairn binary: beside the running `cairn-lab` when it is there, else from `PATH`.
pub fn binary(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|exe| exe.with_file_name(name))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The image config the lab builds: the `minimal` profile (busybox and cairn's binaries).
/// `no_timer_check`: a TCG guest starved of CPU (several guests on a loaded host) otherwise
/// fails the kernel's IO-APIC timer check and panics at boot ("IO-APIC + timer doesn't work").
const IMAGE_CONFIG: &str = "# Written by cairn-lab: the minimal appliance profile.\n\
profile: minimal\nversion: 0.1.0\ncompatible_from: []\n\
disk:\n  size_mib: 384\n  esp_mib: 32\n  slot_mib: 96\n\
kernel_args: console=ttyS0,115200 no_timer_check\n";

/// Runs a command to completion; its output is kept in `log` and shown on failure.
fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let _ = std::fs::write(log, format!("{stdout}{stderr}"));
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            tail(&format!("{stdout}{stderr}"), 15)
        );
    }
    Ok(stdout)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Builds the minimal image into `out` with `cairn` (`cairn image build`, about a minute
/// here); the image carries the cairn binaries found beside that `cairn`. It is signed
/// with the lab's release key (`out` with the extension `key`, made once by `cairn image
/// keygen`) and trusts only that key, so every lab install checks its signed manifest.
pub fn build_image(cairn: &Path, out: &Path, log: &Path) -> anyhow::Result<()> {
    let key = out.with_extension("key");
    let public = out.with_extension("key.pub");
    if !key.is_file() || !public.is_file() {
        let _ = std::fs::remove_file(&key);
        let _ = std::fs::remove_file(&public);
        run_logged(
            Command::new(cairn)
                .args(["image", "keygen", "--out"])
                .arg(&key),
            "cairn image keygen (the lab's release key)",
            log,
        )?;
    }
    let config = out.with_extension("yaml");
    let text = format!("{IMAGE_CONFIG}release_keys: [{}]\n", public.display());
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    run_logged(
        Command::new(cairn)
            .args(["image", "build", "--config"])
            .arg(&config)
            .arg("--out")
            .arg(out)
            .arg("--signing-key")
            .arg(&key),
        "cairn image build (minimal profile)",
        log,
    )?;
    Ok(())
}

/// A long-running service of the lab (a direct child: `ip netns exec` execs the program).
#[derive(Debug)]
struct Service {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Service {
    fn start(
        name: &'static str,
        netns: &str,
        argv: &mut Command,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(argv.get_program())
            .args(argv.get_args())
            .envs(argv.get_envs().filter_map(|(k, v)| Some((k, v?))))
            // Plain log lines (no colour codes): the lab and its tests read them.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone().context("log file")?)
            .stderr(file);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Service { name, child, log })
    }

    /// Waits until the log shows `marker`; fails with the log when the process exits first.
    fn wait_for(&mut self, marker: &str, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(marker) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}: {}", self.name, tail(&text, 15));
            }
            if start.elapsed() > limit {
                bail!(
                    "{} did not report {marker:?} within {limit:?}: {}",
                    self.name,
                    tail(&text, 15)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        tracing::debug!(name = self.name, "stopped");
    }
}

/// The running hub and boot server. Dropping it stops both.
#[derive(Debug)]
pub struct Services {
    /// What they are.
    pub info: ServicesInfo,
    netns: String,
    hub_dir: PathBuf,
    hub: Option<Service>,
    boot: Option<Service>,
    router: Option<Service>,
}

impl Services {
    /// Initialises the hub, starts it and the boot server. `artifacts` is an existing image
    /// build; `None` builds one into the lab directory first.
    pub fn start(
        layout: &Layout,
        netns: &str,
        bridge: &str,
        artifacts: Option<&Path>,
    ) -> anyhow::Result<Self> {
        let gw = layout::gateway();
        let dir = layout.dir();
        let mut image_build_seconds = None;
        let artifacts = match artifacts {
            Some(a) => {
                anyhow::ensure!(
                    a.join("pxe/ipxe.tera").is_file(),
                    "--artifacts {}: not an output of `cairn image build` (no pxe/ipxe.tera)",
                    a.display()
                );
                std::fs::canonicalize(a).with_context(|| format!("resolving {}", a.display()))?
            }
            None => {
                let out = dir.join("artifacts");
                tracing::info!(out = %out.display(), "building the minimal image");
                let started = Instant::now();
                build_image(&binary("cairn"), &out, &dir.join("image-build.log"))?;
                image_build_seconds = Some(started.elapsed().as_secs_f64());
                out
            }
        };
        let hub_dir = dir.join("hub");
        std::fs::create_dir_all(&hub_dir)
            .with_context(|| format!("creating {}", hub_dir.display()))?;
        let hub_url = format!("https://{gw}:{HUB_PORT}");
        let info = ServicesInfo {
            hub_ca_fingerprint: String::new(),
            hub_ca: hub_dir.join("ca.pem"),
            admin_token: hub_dir.join("admin.token"),
            hub_login: hub_dir.join("login.json"),
            boot_server_url: format!("http://{gw}:{BOOT_PORT}"),
            artifacts,
            hub_url,
            image_build_seconds,
            services_seconds: 0.0,
        };
        let started = Instant::now();
        let mut services = Services {
            info,
            netns: netns.to_string(),
            hub_dir,
            hub: None,
            boot: None,
            router: None,
        };
        services.start_router_advertisements(layout, bridge)?;
        services.init_hub(gw)?;
        services.start_hub()?;
        services.login()?;
        services.start_boot_server(layout, bridge, gw)?;
        services.info.services_seconds = started.elapsed().as_secs_f64();
        Ok(services)
    }

    fn init_hub(&mut self, gw: Ipv4Addr) -> anyhow::Result<()> {
        let out = run_logged(
            Command::new(binary("cairn-hub"))
                .args(["init", "--data"])
                .arg(&self.hub_dir)
                .args([
                    "--name",
                    &gw.to_string(),
                    "--name",
                    "localhost",
                    "--admin-token-file",
                ])
                .arg(&self.info.admin_token)
                .args(["--output", "json"]),
            "cairn-hub init",
            &self.hub_dir.join("init.log"),
        )?;
        let answer: cairn_api::hub::InitSummary =
            serde_json::from_str(out.trim()).context("reading cairn-hub init's JSON")?;
        self.info.hub_ca_fingerprint = answer.ca_fingerprint;
        Ok(())
    }

    /// Starts `cairn-hub serve` (again, after [`Services::stop_hub`]): same data, same CA.
    pub fn start_hub(&mut self) -> anyhow::Result<()> {
        if self.hub.is_some() {
            return Ok(());
        }
        let listen = format!("{}:{HUB_PORT}", layout::gateway());
        let mut hub = Service::start(
            "cairn-hub",
            &self.netns,
            Command::new(binary("cairn-hub"))
                .args(["serve", "--data"])
                .arg(&self.hub_dir)
                .args(["--listen", &listen, "--heartbeat-interval", "5"]),
            self.hub_dir.join("hub.log"),
        )?;
        // Appended, so a restart keeps the earlier log: the marker must be the new one.
        hub.wait_for("listening on https://", Duration::from_secs(30))?;
        self.hub = Some(hub);
        Ok(())
    }

    /// Stops the hub (a site losing its hub); appliances keep retrying.
    pub fn stop_hub(&mut self) {
        if let Some(mut hub) = self.hub.take() {
            hub.stop();
            let old = self.hub_dir.join("hub.log");
            let _ = std::fs::rename(&old, self.hub_dir.join("hub.log.stopped"));
        }
    }

    /// Whether the hub process runs.
    pub fn hub_running(&mut self) -> bool {
        self.hub
            .as_mut()
            .is_some_and(|h| h.child.try_wait().ok().flatten().is_none())
    }

    /// `cairn hub ...` as the lab's operator, inside the namespace.
    pub fn hub_cli(netns: &str, info: &ServicesInfo) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(binary("cairn"))
            .args(["hub", "--config"])
            .arg(&info.hub_login);
        cmd
    }

    fn login(&mut self) -> anyhow::Result<()> {
        run_logged(
            Self::hub_cli(&self.netns, &self.info)
                .args(["login", "--url", &self.info.hub_url, "--ca-fingerprint"])
                .arg(&self.info.hub_ca_fingerprint)
                .arg("--token-file")
                .arg(&self.info.admin_token),
            "cairn hub login",
            &self.hub_dir.join("login.log"),
        )?;
        Ok(())
    }

    fn start_boot_server(
        &mut self,
        layout: &Layout,
        bridge: &str,
        gw: Ipv4Addr,
    ) -> anyhow::Result<()> {
        let [a, b, c] = layout::SUBNET_PREFIX;
        let range = format!(
            "{}-{}",
            Ipv4Addr::new(a, b, c, 20),
            Ipv4Addr::new(a, b, c, 99)
        );
        let mut boot = Service::start(
            "cairn boot-server",
            &self.netns,
            Command::new(binary("cairn"))
                .args(["boot-server", "--artifacts"])
                .arg(&self.info.artifacts)
                .args(["--interface", bridge, "--address", &gw.to_string()])
                .args(["--http-port", &BOOT_PORT.to_string(), "--inventory"])
                .arg(layout.rack_yaml())
                .args(["--dhcp-range", &range, "--hub-url", &self.info.hub_url])
                .arg("--hub-ca")
                .arg(&self.info.hub_ca)
                // The lab's operator: the boot server mints each install's token with it.
                .arg("--hub-token-file")
                .arg(&self.info.admin_token)
                .args(["--site", "lab"])
                // The lab's disks are the lab's: a re-run may overwrite a half-written one.
                .arg("--allow-wipe"),
            layout.dir().join("boot-server.log"),
        )?;
        boot.wait_for("boot server up", Duration::from_secs(30))?;
        self.boot = Some(boot);
        Ok(())
    }

    /// IPv6 router advertisements on the lab segment (dnsmasq, RA only: no DNS, no DHCP, so
    /// it binds no UDP port beside the boot server). iPXE waits 13–20 s for a router on a
    /// segment without one before it even asks DHCPv4 (LAB.md); with an RA it goes on at once.
    fn start_router_advertisements(&mut self, layout: &Layout, bridge: &str) -> anyhow::Result<()> {
        // `nodad`: usable at once, or dnsmasq finds no address to advertise from.
        run_logged(
            Command::new("ip").args([
                "-n",
                &self.netns,
                "addr",
                "add",
                LAB_ULA_GATEWAY,
                "dev",
                bridge,
                "nodad",
            ]),
            "adding the lab's IPv6 address",
            &layout.dir().join("router.log"),
        )?;
        let mut ra = Service::start(
            "router advertisements (dnsmasq)",
            &self.netns,
            Command::new("dnsmasq")
                .args([
                    "--keep-in-foreground",
                    "--conf-file=/dev/null",
                    "--port=0",
                    "--no-resolv",
                    "--no-hosts",
                    "--pid-file=",
                    "--log-facility=-",
                    "--bind-interfaces",
                    "--enable-ra",
                ])
                .arg(format!("--interface={bridge}"))
                .arg(format!("--dhcp-range=::,constructor:{bridge},ra-only")),
            layout.dir().join("router.log"),
        )?;
        ra.wait_for("router advertisement enabled", Duration::from_secs(30))?;
        self.router = Some(ra);
        Ok(())
    }

    /// Stops every service.
    pub fn stop(&mut self) {
        if let Some(mut r) = self.router.take() {
            r.stop();
        }
        if let Some(mut b) = self.boot.take() {
            b.stop();
        }
        if let Some(mut h) = self.hub.take() {
            h.stop();
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The hub's view of the lab's servers: appliances by hostname (the server name the install
/// seed gives each appliance). Asked with `cairn hub appliances list`, as an operator would.
pub fn hub_view(
    netns: &str,
    info: &ServicesInfo,
) -> Result<std::collections::BTreeMap<String, cairn_api::hub::ApplianceView>, String> {
    let mut child = Services::hub_cli(netns, info)
        .args(["--output", "json", "appliances", "list", "--all"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running cairn hub: {e}"))?;
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if !status.success() {
        return Err(format!("hub unreachable: {}", tail(&err, 3).trim()));
    }
    let list: cairn_api::hub::ApplianceList =
        serde_json::from_str(&out).map_err(|e| format!("hub answer: {e}"))?;
    Ok(list
        .items
        .into_iter()
        .map(|a| (a.hostname.clone(), a))
        .collect())
}
