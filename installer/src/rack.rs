//! `cairn rack provision`: every server of an inventory through the provisioning state
//! machine ([`machine`]), in parallel, with its state persisted beside the inventory
//! ([`store`]) and shown as progress bars, log lines or JSON lines ([`report`]). The boot
//! server and the hub are reached over HTTP ([`peers`]); BMCs through `cairn-hardware`.

pub mod machine;
pub mod peers;
pub mod report;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cairn_api::cli::{Exit, OutputFormat};
use cairn_hardware::address::Scheme;
use cairn_hardware::cli::RedfishHttpArgs;
use cairn_hardware::connect::connect;
use cairn_hardware::inventory::{Rack, Server};
use clap::{Args, Subcommand, ValueEnum};

use machine::{
    BootMethod, FleetView, InstallProgressSource, Machine, Observer, Phase, Policy, Record,
    ServerPlan, State,
};
use report::Reporter;
use store::StateFile;

/// Provision a rack of servers from its inventory.
#[derive(Debug, Args)]
pub struct RackArgs {
    #[command(subcommand)]
    command: RackCommand,
}

#[derive(Debug, Subcommand)]
enum RackCommand {
    /// Inspect, baseline, boot the installer, install and register every server.
    ///
    /// Each server goes registered -> inspecting -> configuring-firmware -> booting-installer
    /// -> installing -> rebooting -> first-boot -> provisioned, or failed(reason) after
    /// bounded retries. State is kept in INVENTORY's directory as NAME.state.json: run the
    /// same command again to resume (provisioned servers are skipped, an interrupted install
    /// starts over, a failed step is retried). One server's failure never stops the others.
    ///
    /// Needs a running boot server (`cairn boot-server`) serving the artifacts of
    /// `cairn image build`, and a hub to register with.
    Provision(ProvisionArgs),
}

/// How servers boot the installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BootChoice {
    /// Virtual media for Redfish BMCs, PXE for IPMI ones.
    Auto,
    /// One-time PXE boot from each server's boot MAC.
    Pxe,
    /// The installer ISO in the BMC's virtual CD (Redfish only).
    VirtualMedia,
}

#[derive(Debug, Args)]
struct ProvisionArgs {
    /// The rack inventory (rack.yaml).
    inventory: PathBuf,
    /// Output of `cairn image build` (checked for pxe/ and installer.iso before anything is
    /// touched); the boot server serves the same directory.
    #[arg(long)]
    artifacts: PathBuf,
    /// The hub the appliances register with, e.g. https://hub.example:8443.
    #[arg(long)]
    hub: url::Url,
    /// File holding an operator token for the hub (viewer suffices), used to see each
    /// appliance register. Never pass tokens on the command line.
    #[arg(long)]
    token_file: PathBuf,
    /// The hub's CA certificate (PEM), the only CA trusted for the hub.
    #[arg(long)]
    hub_ca: PathBuf,
    /// The boot server's HTTP address, where install progress is read.
    #[arg(long)]
    boot_server: url::Url,
    /// How servers boot the installer.
    #[arg(long, value_enum, default_value_t = BootChoice::Auto)]
    boot: BootChoice,
    /// The installer ISO's URL for virtual media [default: BOOT_SERVER/installer.iso].
    /// `{server}` in it stands for the server's inventory name, for one seeded ISO per
    /// server (hostname, addresses), e.g. http://media.example/{server}.iso.
    #[arg(long)]
    iso_url: Option<String>,
    /// Only these servers (repeatable).
    #[arg(long)]
    only: Vec<String>,
    /// Servers provisioned at the same time.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Attempts per step before a server is failed.
    #[arg(long, default_value_t = 3)]
    max_attempts: u32,
    /// Seconds to wait for the installer to start reporting, and between two reports.
    #[arg(long, default_value_t = 600)]
    install_timeout: u64,
    /// Seconds to wait for the appliance to register after the install.
    #[arg(long, default_value_t = 900)]
    register_timeout: u64,
    /// Output: a table and progress bars for people, JSON lines for scripts.
    #[arg(long, value_enum, default_value_t)]
    output: OutputFormat,
    #[command(flatten)]
    redfish_http: RedfishHttpArgs,
}

impl RackArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        match self.command {
            RackCommand::Provision(args) => provision(args).await,
        }
    }
}

fn read_secret(path: &Path, what: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    let secret = text.trim().to_string();
    anyhow::ensure!(!secret.is_empty(), "{what} {} is empty", path.display());
    Ok(secret)
}

fn check_artifacts(dir: &Path, need_pxe: bool, need_iso: bool) -> Result<(), String> {
    let mut missing = Vec::new();
    if need_pxe {
        for f in ["pxe/vmlinuz", "pxe/initrd.img"] {
            if !dir.join(f).is_file() {
                missing.push(f);
            }
        }
    }
    if need_iso && !dir.join("installer.iso").is_file() {
        missing.push("installer.iso");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "artifacts directory {} lacks {}: build them with `cairn image build`",
            dir.display(),
            missing.join(", ")
        ))
    }
}

fn plan_for(server: &Server, boot: BootChoice, iso_url: &str) -> Result<ServerPlan, String> {
    let boot_mac = server
        .boot_mac
        .clone()
        .ok_or_else(|| {
            format!(
                "{}: no boot_mac in the inventory (it identifies the server to the boot server)",
                server.name
            )
        })?
        .to_ascii_lowercase();
    let redfish = matches!(server.bmc.scheme, Scheme::Redfish | Scheme::RedfishHttp);
    let method = match boot {
        BootChoice::Pxe => BootMethod::Pxe,
        BootChoice::Auto if !redfish => BootMethod::Pxe,
        BootChoice::VirtualMedia if !redfish => {
            return Err(format!(
                "{}: virtual media needs a Redfish BMC, this one is {}",
                server.name, server.bmc
            ));
        }
        BootChoice::Auto | BootChoice::VirtualMedia => {
            let iso_url = iso_url.replace("{server}", &server.name);
            url::Url::parse(&iso_url)
                .map_err(|e| format!("{}: --iso-url {iso_url:?} is not a URL: {e}", server.name))?;
            BootMethod::VirtualMedia { iso_url }
        }
    };
    Ok(ServerPlan {
        name: server.name.clone(),
        boot_mac,
        boot: method,
        firmware_profile: server.firmware_profile.clone(),
    })
}

async fn provision(args: ProvisionArgs) -> anyhow::Result<Exit> {
    let rack = match Rack::load(&args.inventory) {
        Ok(rack) => rack,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::InvalidInput);
        }
    };
    let servers = match rack.select(&args.only) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::Usage);
        }
    };
    let iso_url = args.iso_url.clone().unwrap_or_else(|| {
        args.boot_server
            .join("installer.iso")
            .expect("valid URL")
            .to_string()
    });
    let plans: Vec<Result<ServerPlan, String>> = servers
        .iter()
        .map(|s| plan_for(s, args.boot, &iso_url))
        .collect();
    let need_pxe = plans.iter().flatten().any(|p| p.boot == BootMethod::Pxe);
    let need_iso = plans.iter().flatten().any(|p| p.boot != BootMethod::Pxe);
    if let Err(e) = check_artifacts(&args.artifacts, need_pxe, need_iso) {
        eprintln!("error: {e}");
        return Ok(Exit::InvalidInput);
    }
    let token = read_secret(&args.token_file, "hub token file")?;
    let ca = std::fs::read_to_string(&args.hub_ca)
        .with_context(|| format!("reading hub CA {}", args.hub_ca.display()))?;
    let fleet = peers::HubFleet::new(args.hub.clone(), token, &ca)?;
    let install = peers::BootServerProgress::new(args.boot_server.clone())?;
    let policy = Policy {
        max_attempts: args.max_attempts.max(1),
        install_start_timeout: Duration::from_secs(args.install_timeout),
        install_stall_timeout: Duration::from_secs(args.install_timeout),
        register_timeout: Duration::from_secs(args.register_timeout),
        ..Policy::default()
    };

    let state_path = store::path_for(&args.inventory);
    let state = StateFile::load(&state_path)?;
    let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
    let reporter = Reporter::new(args.output, &names);
    let shared = Arc::new(Mutex::new(state));
    let persist = |name: &str, record: &Record| {
        let mut state = shared.lock().expect("state lock");
        state.servers.insert(name.to_string(), record.clone());
        if let Err(e) = state.save(&state_path) {
            tracing::error!(error = %e, "saving provisioning state");
        }
    };
    let limit = Arc::new(tokio::sync::Semaphore::new(args.parallel.max(1)));
    let jobs = servers.iter().zip(plans).map(|(server, plan)| {
        let previous = shared
            .lock()
            .expect("state lock")
            .servers
            .get(&server.name)
            .cloned();
        let limit = limit.clone();
        let (reporter, policy, rack, install, fleet, persist) =
            (&reporter, &policy, &rack, &install, &fleet, &persist);
        async move {
            let _permit = limit.acquire().await.expect("semaphore open");
            let mut record = previous.unwrap_or_default();
            record.state = record.state.clone().resume();
            if let State::Provisioned { .. } = record.state {
                reporter.note(&server.name, "already provisioned; skipped");
                return (server.name.clone(), record);
            }
            let fail = |record: &mut Record, reason: String| {
                record.state = State::Failed {
                    phase: Phase::Inspecting,
                    reason,
                };
                persist(&server.name, record);
                reporter.changed(&server.name, &record.state);
            };
            let plan = match plan {
                Ok(p) => p,
                Err(reason) => {
                    fail(&mut record, reason);
                    return (server.name.clone(), record);
                }
            };
            let bmc = match rack.credentials(server) {
                Err(e) => Err(e.to_string()),
                Ok(creds) => connect(&server.bmc, creds, &args.redfish_http.options())
                    .map_err(|e| format!("connecting to BMC {}: {e}", server.bmc)),
            };
            let bmc = match bmc {
                Ok(b) => b,
                Err(reason) => {
                    fail(&mut record, reason);
                    return (server.name.clone(), record);
                }
            };
            let machine = Machine {
                plan: &plan,
                bmc: bmc.as_ref(),
                install: install as &dyn InstallProgressSource,
                fleet: fleet as &dyn FleetView,
                policy,
                observer: reporter,
            };
            let name = server.name.clone();
            machine.run(&mut record, &|r| persist(&name, r)).await;
            bmc.close().await;
            (server.name.clone(), record)
        }
    });
    let results = futures::future::join_all(jobs).await;
    // The bars go before the table is printed.
    drop(reporter);
    match args.output {
        OutputFormat::Json => {
            let summary: Vec<serde_json::Value> = results
                .iter()
                .map(|(name, r)| serde_json::json!({"server": name, "record": r}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"event": "summary", "servers": summary})
            );
        }
        OutputFormat::Table => print!("{}", report::table(&results)),
    }
    let all_ok = results
        .iter()
        .all(|(_, r)| matches!(r.state, State::Provisioned { .. }));
    Ok(if all_ok { Exit::Success } else { Exit::Failed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rack() -> Rack {
        Rack::parse(
            "servers:\n  - name: srv1\n    bmc: redfish+http://admin@10.77.0.101:8000\n    credentials: c.yaml\n    boot_mac: \"52:54:00:C4:00:01\"\n  - name: srv2\n    bmc: ipmi://admin@10.77.0.102:623\n    credentials: c.yaml\n    boot_mac: \"52:54:00:c4:00:02\"\n",
            Path::new("/lab"),
        )
        .unwrap()
    }

    #[test]
    fn redfish_servers_get_their_own_iso_and_ipmi_ones_pxe() {
        let rack = rack();
        let iso = "http://10.77.0.1:8081/{server}.iso";
        let p = plan_for(&rack.servers[0], BootChoice::Auto, iso).unwrap();
        assert_eq!(
            p.boot,
            BootMethod::VirtualMedia {
                iso_url: "http://10.77.0.1:8081/srv1.iso".into()
            }
        );
        assert_eq!(p.boot_mac, "52:54:00:c4:00:01");
        let p = plan_for(&rack.servers[1], BootChoice::Auto, iso).unwrap();
        assert_eq!(p.boot, BootMethod::Pxe);
        let e = plan_for(&rack.servers[1], BootChoice::VirtualMedia, iso).unwrap_err();
        assert!(e.contains("needs a Redfish BMC"), "{e}");
        let e = plan_for(&rack.servers[0], BootChoice::Auto, "not a url/{server}").unwrap_err();
        assert!(e.contains("--iso-url") && e.contains("srv1"), "{e}");
    }
}
