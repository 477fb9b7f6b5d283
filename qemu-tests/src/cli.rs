//! `cairn-lab ...`: argument parsing and output; the lab itself is [`crate::lab`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_api::cli::{Exit, LogArgs, OutputFormat};
use clap::{Args, Parser, Subcommand};

use crate::lab::control::{self, ChassisOp, Reply, Request, ServerState};
use crate::lab::layout::{Layout, Manifest};
use crate::lab::procs;
use crate::lab::services;
use crate::lab::supervisor::{self, BmcChoice, Lab, UpOptions};

/// Rehearse a site: an emulated rack of QEMU servers with real BMC emulators.
///
/// `cairn-lab up --servers 3` builds a lab (a network namespace with a bridge, QEMU servers
/// with blank disks, an `ipmi_sim` BMC each, and a rack.yaml) and stays in the foreground as
/// its supervisor. From another shell: `cairn-lab status`, `cairn-lab exec -- ipmitool ...`,
/// `cairn rack provision` through `cairn-lab exec`, and finally `cairn-lab down`.
#[derive(Debug, Parser)]
#[command(name = "cairn-lab", version, about, long_about)]
pub struct LabCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    command: LabCommand,
}

/// Where the lab lives.
#[derive(Debug, Clone, Args)]
struct DirArg {
    /// The lab directory: disks, BMC configs, rack.yaml, logs and the control socket.
    #[arg(long, env = "CAIRN_LAB_DIR", default_value = "/var/tmp/cairn-lab")]
    dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Build the lab and supervise it in the foreground until `down` or Ctrl-C.
    ///
    /// Servers start powered off; power them through their BMCs, e.g.
    /// `cairn-lab exec -- ipmitool -I lanplus -C 3 -H 10.77.0.101 -U admin -P ... power on`
    /// (passwords are in DIR/creds/), or provision them with `cairn rack provision`.
    ///
    /// Redfish servers (`--bmc redfish|mixed`) are libvirt domains behind one sushy-tools
    /// emulator each (`curl -u admin:... http://10.77.0.102:8000/redfish/v1/Systems`); the
    /// lab runs its own libvirtd inside its namespace with its files in DIR/libvirt; `cairn
    /// rack provision --site lab` seeds their virtual-media ISOs itself.
    Up(UpArgs),
    /// Stop every process of the lab, delete its namespace and directory.
    Down(DirArg),
    /// Show each server: BMC, MAC, power, QEMU PID, next boot device, and the hub's view of it.
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Run a command inside the lab's network namespace (where the BMCs and services are).
    Exec {
        #[command(flatten)]
        dir: DirArg,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Stop or start the lab's hub (to rehearse a site that loses its hub).
    Hub {
        #[command(flatten)]
        dir: DirArg,
        /// `stop` or `start`.
        action: HubAction,
    },
    /// Up, build the image, provision every server, show the fleet from the hub, print a
    /// summary with timings; then keep the lab running for exploration until `down`.
    Demo(DemoArgs),
    /// Run by `up --faults`: one server's fault proxy, in front of its sushy-tools.
    #[command(hide = true)]
    FaultProxy {
        /// The server (its entry in the faults file).
        #[arg(long)]
        server: String,
        /// The faults file.
        #[arg(long)]
        faults: PathBuf,
        /// Where the BMC answers.
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// sushy-tools, `http://IP:PORT`.
        #[arg(long)]
        upstream: String,
    },
    /// Used by ipmi_sim's chassis_control: forwards `get`/`set` to the lab supervisor.
    #[command(hide = true)]
    Chassis {
        #[command(flatten)]
        dir: DirArg,
        /// Server name.
        server: String,
        /// `get PARAM...` or `set PARAM VALUE...`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// What `cairn-lab hub` does.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum HubAction {
    /// Kill the hub process (appliances keep retrying).
    Stop,
    /// Start it again, with the same data and CA.
    Start,
}

#[derive(Debug, Args)]
struct DemoArgs {
    #[command(flatten)]
    up: UpArgs,
    /// Tear the lab down after the summary instead of leaving it running (scripts, CI).
    #[arg(long)]
    down_after: bool,
}

#[derive(Debug, Args)]
struct UpArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Number of servers.
    #[arg(long, default_value_t = 3)]
    servers: usize,
    /// BMC emulators: ipmi (ipmi_sim), redfish (sushy-tools) or mixed.
    #[arg(long, value_enum, default_value_t = BmcChoice::Ipmi)]
    bmc: BmcChoice,
    /// Guest memory per server, MiB.
    #[arg(long, default_value_t = 512)]
    memory_mb: u32,
    /// Blank disk per server, GiB (sparse).
    #[arg(long, default_value_t = 4)]
    disk_gb: u64,
    /// Serve this `cairn image build` output instead of building the minimal image.
    #[arg(long)]
    artifacts: Option<PathBuf>,
    /// Only servers and BMCs: no hub, no boot server, no image build.
    #[arg(long, conflicts_with = "artifacts")]
    no_services: bool,
    /// BMC faults to inject (docs/lab.md, "Faulty BMCs"): the Redfish servers this YAML file
    /// names get a proxy in front of their sushy-tools that misbehaves as it says.
    #[arg(long, value_name = "FILE")]
    faults: Option<PathBuf>,
}

impl UpArgs {
    fn options(&self) -> UpOptions {
        UpOptions {
            dir: self.dir.dir.clone(),
            servers: self.servers,
            bmc: self.bmc,
            memory_mb: self.memory_mb,
            disk_gb: self.disk_gb,
            services: !self.no_services,
            artifacts: self.artifacts.clone(),
            faults: self.faults.clone(),
        }
    }
}

impl LabCli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        match self.command {
            LabCommand::Up(args) => up(args).await,
            LabCommand::Down(dir) => down(&dir.dir),
            LabCommand::Status { dir, output } => status(&dir.dir, output),
            LabCommand::Exec { dir, command } => exec(&dir.dir, &command),
            LabCommand::Hub { dir, action } => hub(&dir.dir, action),
            LabCommand::Demo(args) => crate::demo::run(args.up.options(), args.down_after).await,
            LabCommand::Chassis { dir, server, args } => Ok(chassis(&dir.dir, &server, &args)),
            LabCommand::FaultProxy {
                server,
                faults,
                listen,
                upstream,
            } => fault_proxy(&server, &faults, listen, &upstream).await,
        }
    }
}

async fn up(args: UpArgs) -> anyhow::Result<Exit> {
    let opts = args.options();
    let lab = tokio::task::spawn_blocking(move || Lab::build(&opts)).await??;
    print!("{}", lab.describe());
    lab.serve().await?;
    Ok(Exit::Success)
}

/// What `up` and `demo` say once the lab is built.
fn read(dir: &std::path::Path) -> anyhow::Result<(Layout, Manifest)> {
    let layout = Layout::new(dir)?;
    let manifest = layout.read_manifest().map_err(anyhow::Error::msg)?;
    Ok((layout, manifest))
}

fn down(dir: &std::path::Path) -> anyhow::Result<Exit> {
    let (layout, manifest) = read(dir)?;
    match control::call(&layout.socket(), &Request::Down, Duration::from_secs(120)) {
        Ok(_) => {
            // The supervisor replies after tearing down, then exits; wait for that.
            let start = Instant::now();
            while procs::alive(manifest.supervisor_pid) && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            println!("lab at {} is down", layout.dir().display());
        }
        Err(control::ControlError::Connect { .. }) if !procs::alive(manifest.supervisor_pid) => {
            println!("the lab's supervisor is gone; cleaning up what it left:");
            for line in supervisor::cleanup_orphans(&layout, &manifest) {
                println!("  {line}");
            }
        }
        Err(e) => return Err(e).context("stopping the lab"),
    }
    Ok(Exit::Success)
}

fn states(layout: &Layout) -> anyhow::Result<Vec<ServerState>> {
    match control::call(&layout.socket(), &Request::Status, Duration::from_secs(30))? {
        Reply::Servers { servers } => Ok(servers),
        Reply::Error { message } => anyhow::bail!("lab supervisor: {message}"),
        Reply::Ok => anyhow::bail!("lab supervisor: unexpected reply to status"),
    }
}

fn hub(dir: &std::path::Path, action: HubAction) -> anyhow::Result<Exit> {
    let (layout, _) = read(dir)?;
    let run = matches!(action, HubAction::Start);
    match control::call(
        &layout.socket(),
        &Request::Hub { run },
        Duration::from_secs(60),
    )? {
        Reply::Error { message } => {
            eprintln!("error: {message}");
            Ok(Exit::Failed)
        }
        _ => {
            println!("hub {}", if run { "started" } else { "stopped" });
            Ok(Exit::Success)
        }
    }
}

fn status(dir: &std::path::Path, output: OutputFormat) -> anyhow::Result<Exit> {
    let (layout, manifest) = read(dir)?;
    let states = states(&layout)?;
    // The hub's view: appliances by hostname (= server name), or why it cannot be had.
    let hub_view = manifest
        .services
        .as_ref()
        .map(|info| services::hub_view(&manifest.netns, info));
    let appliance = |name: &str| -> Option<&cairn_api::hub::ApplianceView> {
        hub_view.as_ref()?.as_ref().ok()?.get(name)
    };
    match output {
        OutputFormat::Json => {
            let servers: Vec<serde_json::Value> = manifest
                .servers
                .iter()
                .map(|spec| {
                    let state = states.iter().find(|s| s.name == spec.name);
                    serde_json::json!({ "spec": spec, "state": state, "hub": appliance(&spec.name) })
                })
                .collect();
            let doc = serde_json::json!({
                "dir": layout.dir(),
                "netns": manifest.netns,
                "supervisor_pid": manifest.supervisor_pid,
                "rack_yaml": layout.rack_yaml(),
                "services": manifest.services,
                "hub_error": hub_view.as_ref().and_then(|v| v.as_ref().err()),
                "servers": servers,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Table => {
            println!(
                "lab {} (namespace {})",
                layout.dir().display(),
                manifest.netns
            );
            match (&manifest.services, &hub_view) {
                (Some(s), Some(Ok(_))) => {
                    println!("hub {} (up); boot server {}", s.hub_url, s.boot_server_url)
                }
                (Some(s), Some(Err(e))) => {
                    println!("hub {}: {e}; boot server {}", s.hub_url, s.boot_server_url)
                }
                _ => println!("no hub or boot server (started with --no-services)"),
            }
            println!(
                "{:<6} {:<30} {:<18} {:<6} {:<8} {:<9} {:<9} HUB",
                "SERVER", "BMC", "BOOT MAC", "POWER", "PID", "NEXT BOOT", "POWER-ONS"
            );
            for spec in &manifest.servers {
                let st = states.iter().find(|s| s.name == spec.name);
                let hub = match appliance(&spec.name) {
                    Some(a) => format!("{} {}", a.state, a.id),
                    None => "-".into(),
                };
                println!(
                    "{:<6} {:<30} {:<18} {:<6} {:<8} {:<9} {:<9} {}",
                    spec.name,
                    spec.bmc_url,
                    spec.mac,
                    st.map(|s| if s.power_on { "on" } else { "off" })
                        .unwrap_or("?"),
                    st.and_then(|s| s.pid)
                        .map(|p| p.to_string())
                        .unwrap_or("-".into()),
                    st.map(|s| s.next_boot.as_str()).unwrap_or("?"),
                    st.map(|s| s.power_ons).unwrap_or(0),
                    hub,
                );
            }
        }
    }
    Ok(Exit::Success)
}

fn exec(dir: &std::path::Path, command: &[String]) -> anyhow::Result<Exit> {
    let (_, manifest) = read(dir)?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &manifest.netns])
        .args(command)
        .status()
        .with_context(|| format!("running {command:?} in {}", manifest.netns))?;
    Ok(if status.success() {
        Exit::Success
    } else {
        Exit::Failed
    })
}

/// Serves one server's faulty BMC until SIGTERM or Ctrl-C (the supervisor stops it).
async fn fault_proxy(
    server: &str,
    faults: &std::path::Path,
    listen: std::net::SocketAddr,
    upstream: &str,
) -> anyhow::Result<Exit> {
    let file = crate::lab::faults::FaultsFile::load(faults).map_err(anyhow::Error::msg)?;
    let mine = file
        .servers
        .get(server)
        .cloned()
        .with_context(|| format!("{} has no entry for {server}", faults.display()))?;
    let proxy = crate::lab::fault_proxy::FaultProxy::start(server, listen, upstream, mine)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%server, %listen, %upstream, "fault proxy up");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!(%server, observed = ?proxy.observed(), "fault proxy stopping");
    proxy.stop().await;
    Ok(Exit::Success)
}

/// ipmi_sim reads our standard output: `param:value` lines for `get`, nothing for a
/// successful `set`, and an error text otherwise (with a failing exit status).
fn chassis(dir: &std::path::Path, server: &str, args: &[String]) -> Exit {
    let result = (|| -> anyhow::Result<String> {
        let layout = Layout::new(dir)?;
        match control::parse_chassis_args(args).map_err(anyhow::Error::msg)? {
            ChassisOp::Get(params) => {
                let states = states(&layout)?;
                let state = states
                    .iter()
                    .find(|s| s.name == server)
                    .with_context(|| format!("no server {server:?} in this lab"))?;
                control::format_get(state, &params).map_err(anyhow::Error::msg)
            }
            ChassisOp::Set(set) => {
                let request = Request::Chassis {
                    server: server.to_string(),
                    set,
                };
                match control::call(&layout.socket(), &request, Duration::from_secs(30))? {
                    Reply::Error { message } => anyhow::bail!(message),
                    _ => Ok(String::new()),
                }
            }
        }
    })();
    match result {
        Ok(text) => {
            print!("{text}");
            Exit::Success
        }
        Err(e) => {
            println!("{e:#}");
            Exit::Failed
        }
    }
}
