//! `cairn rack provision`: every server of an inventory through the provisioning state
//! machine ([`machine`]), in parallel, with its state persisted beside the inventory
//! ([`store`]) and shown as progress bars, log lines or JSON lines ([`report`]). The boot
//! server and the hub are reached over HTTP ([`peers`]); BMCs through `cairn-hardware`;
//! virtual media's per-server seeded ISOs are built into the boot server's directory
//! ([`media`]).

pub mod machine;
pub mod media;
pub mod peers;
pub mod report;
pub mod store;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use cairn_api::cli::{Exit, OutputFormat};
use cairn_firmware_profiles::apply::ApplyOptions;
use cairn_firmware_profiles::profile::{Profile, by_name, load_all};
use cairn_hardware::address::Scheme;
use cairn_hardware::cli::RedfishHttpArgs;
use cairn_hardware::connect::connect;
use cairn_hardware::inventory::{Rack, Server, ServerBoot};
use clap::{Args, Subcommand, ValueEnum};

use crate::agent::plan::InstallPlan;
use machine::{
    BootMethod, Firmware, FleetView, InstallProgressSource, Machine, MediaStore, Observer, Phase,
    Policy, Record, ServerPlan, State, TokenMinter,
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
    /// configuring-firmware applies the profile each server's `firmware_profile` names, as
    /// `cairn firmware apply` does (stage, reset or power on, verify within
    /// --firmware-settle-timeout, update firmware); a name no profile has stops the command
    /// before any BMC is touched, and settings the BMC refuses or does not take fail that
    /// server, naming them.
    ///
    /// Needs a running boot server (`cairn boot-server`) serving the artifacts of
    /// `cairn image build`, and a hub to register with.
    ///
    /// Virtual media: for each attempt, one single-use enrollment token is minted at the hub
    /// per server (bound to its boot MAC and to the serial its BMC reported, expiring after
    /// --install-timeout + --register-timeout), and the server's own installer ISO seeded
    /// with it is built into ARTIFACTS/media/<random>/, which the boot server serves; the
    /// BMC is given that URL. The ISO is deleted once the server is provisioned or failed,
    /// and an unused token revoked. Neither token nor URL is logged or kept in the state.
    Provision(ProvisionArgs),
}

/// How servers boot the installer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BootChoice {
    /// Virtual media for Redfish BMCs (needs --site), PXE for IPMI ones.
    Auto,
    /// One-time PXE boot from each server's boot MAC.
    Pxe,
    /// The server's own seeded installer ISO, with its enrollment token, in the BMC's
    /// virtual CD (Redfish only; needs --site).
    VirtualMedia,
}

#[derive(Debug, Args)]
struct ProvisionArgs {
    /// The rack inventory (rack.yaml).
    inventory: PathBuf,
    /// Output of `cairn image build` (checked for pxe/ and installer.iso before anything is
    /// touched); the boot server serves the same directory. Virtual media writes its seeded
    /// ISOs into its media/ (so it must be writable).
    #[arg(long)]
    artifacts: PathBuf,
    /// The hub the appliances register with, e.g. https://hub.example:8443.
    #[arg(long)]
    hub: url::Url,
    /// File holding an operator token for the hub, used to see each appliance register
    /// (viewer suffices for PXE) and, for virtual media, to mint each server's enrollment
    /// token (then it must be an operator or admin token for --site). Never pass tokens on
    /// the command line.
    #[arg(long)]
    token_file: PathBuf,
    /// The hub's CA certificate (PEM), the only CA trusted for the hub.
    #[arg(long)]
    hub_ca: PathBuf,
    /// The boot server's HTTP address, where install progress is read and the seeded
    /// virtual-media ISOs are served from (BOOT_SERVER/media/...).
    #[arg(long)]
    boot_server: url::Url,
    /// How servers boot the installer, unless their rack.yaml entry says (`boot: pxe` or
    /// `boot: virtual-media`, or a Metal3 `*-virtualmedia://` BMC address).
    #[arg(long, value_enum, default_value_t = BootChoice::Auto)]
    boot: BootChoice,
    /// Site the virtual-media servers enroll into (their tokens are minted for it); needed
    /// when any server boots from virtual media. PXE servers get theirs from the boot
    /// server's own --site.
    #[arg(long)]
    site: Option<String>,
    /// Let the installer of a virtual-media ISO overwrite disks that hold partitions or
    /// filesystems (the boot server's --allow-wipe, for PXE).
    #[arg(long)]
    allow_wipe: bool,
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
    /// Seconds a BMC that has answered may then stay silent (refused connections, timeouts,
    /// as while it restarts) before its server fails; retries in that time spend none of
    /// --max-attempts. A BMC silent from the start fails after --max-attempts.
    #[arg(long, default_value_t = 300)]
    bmc_away_timeout: u64,
    /// Extra firmware profile directory (as `cairn firmware --profiles`); its files replace
    /// shipped profiles of the same name. Each server's `firmware_profile` must name a known
    /// profile, or nothing is started.
    #[arg(long, value_name = "DIR")]
    profiles: Option<PathBuf>,
    /// Seconds to wait, after the boot that applies them, for staged BIOS settings to read
    /// back as current; a server whose settings are still not in effect then fails.
    #[arg(long, default_value_t = 900)]
    firmware_settle_timeout: u64,
    /// Serve verified firmware images, on this address of this machine (an IP the BMCs
    /// reach, and a port; 0: any free one), to BMCs that take no pushed image (as `cairn
    /// firmware apply --serve-address`). Runs while the rack is provisioned.
    #[arg(long, value_name = "IP:PORT")]
    firmware_serve_address: Option<SocketAddr>,
    /// Serve the images over HTTPS with this certificate (PEM chain), for BMCs that fetch
    /// only https:// (as `cairn firmware apply --serve-tls-cert`).
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["firmware_serve_address", "firmware_serve_tls_key"]
    )]
    firmware_serve_tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "firmware_serve_tls_cert")]
    firmware_serve_tls_key: Option<PathBuf>,
    /// Let a BMC that takes no pushed image download the profile's image_url itself when
    /// --firmware-serve-address is not given: the SHA-256 cairn checks then does NOT cover
    /// what it flashes.
    #[arg(long)]
    bmc_fetches_upstream: bool,
    /// Directory of verified firmware images, one file per SHA-256
    /// [default: $XDG_CACHE_HOME/cairn/firmware, else ~/.cache/cairn/firmware].
    #[arg(long, value_name = "DIR")]
    firmware_image_cache: Option<PathBuf>,
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

/// The profile each server's `firmware_profile` names, by server name; an unknown name is an
/// error naming the server and the profiles known.
fn firmware_profiles(
    servers: &[&Server],
    profiles: &[Profile],
) -> Result<BTreeMap<String, Profile>, String> {
    let mut out = BTreeMap::new();
    for server in servers {
        if let Some(name) = &server.firmware_profile {
            let profile = by_name(profiles, name).map_err(|e| {
                format!(
                    "server {}: {e}; correct its firmware_profile in the inventory, or pass \
                     --profiles DIR holding it",
                    server.name
                )
            })?;
            out.insert(server.name.clone(), profile.clone());
        }
    }
    Ok(out)
}

fn plan_for(
    server: &Server,
    boot: BootChoice,
    site: Option<&str>,
    firmware: Option<Firmware>,
) -> Result<ServerPlan, String> {
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
    // The server's own entry (its `boot:` or its Metal3 address) wins over the run's default.
    let boot = match server.boot() {
        Some(ServerBoot::Pxe) => BootChoice::Pxe,
        Some(ServerBoot::VirtualMedia) => BootChoice::VirtualMedia,
        None => boot,
    };
    let method = match boot {
        BootChoice::Pxe => BootMethod::Pxe,
        BootChoice::Auto if !redfish => BootMethod::Pxe,
        BootChoice::VirtualMedia if !redfish => {
            return Err(format!(
                "{}: virtual media needs a Redfish BMC, this one is {}",
                server.name, server.bmc
            ));
        }
        BootChoice::Auto | BootChoice::VirtualMedia => BootMethod::VirtualMedia {
            site: site
                .ok_or_else(|| {
                    format!(
                        "{}: virtual media needs --site (the site its enrollment token is minted for)",
                        server.name
                    )
                })?
                .to_owned(),
        },
    };
    Ok(ServerPlan {
        name: server.name.clone(),
        boot_mac,
        serial: server.serial.clone(),
        boot: method,
        firmware,
    })
}

/// What a virtual-media server's seeded ISO tells its installer: the plan the boot server
/// hands a PXE install, less the token (minted per attempt).
fn install_plan(
    server: &Server,
    hub: &url::Url,
    hub_ca: &str,
    wipe: bool,
) -> anyhow::Result<InstallPlan> {
    let mut netplan = BTreeMap::new();
    if let Some(p) = &server.netplan {
        let text = std::fs::read_to_string(p)
            .with_context(|| format!("{}: netplan {}", server.name, p.display()))?;
        netplan.insert("50-cairn.yaml".to_owned(), text);
    }
    Ok(InstallPlan {
        name: server.name.clone(),
        disk_hint: server.disk_hint.clone(),
        wipe,
        node_yaml: Some(crate::agent::plan::node_yaml(&server.name, hub.as_str())),
        netplan,
        hub_ca: Some(hub_ca.to_owned()),
        enrollment_token: None,
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
    let mut firmware = match load_all(args.profiles.as_deref())
        .map_err(|e| cairn_api::error_chain(&e))
        .and_then(|all| firmware_profiles(&servers, &all))
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(Exit::InvalidInput);
        }
    };
    // The image cache and server only when some server has a baseline to apply.
    let options = if firmware.is_empty() {
        None
    } else {
        let images = match cairn_firmware_profiles::cli::start_images(
            args.firmware_image_cache.clone(),
            args.firmware_serve_address,
            args.firmware_serve_tls_cert
                .clone()
                .zip(args.firmware_serve_tls_key.clone())
                .as_ref(),
            args.bmc_fetches_upstream,
        )
        .await
        {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(Exit::InvalidInput);
            }
        };
        // Rack provisioning boots every server next anyway: one found off is powered on so
        // its baseline is verified before the install rather than left pending.
        Some(Arc::new(ApplyOptions {
            reset: true,
            power_on: true,
            settle_timeout: Duration::from_secs(args.firmware_settle_timeout.max(1)),
            images,
        }))
    };
    let plans: Vec<Result<ServerPlan, String>> = servers
        .iter()
        .map(|s| {
            let firmware = firmware.remove(&s.name).zip(options.clone());
            plan_for(
                s,
                args.boot,
                args.site.as_deref(),
                firmware.map(|(profile, options)| Firmware { profile, options }),
            )
        })
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
    let mut media_plans = BTreeMap::new();
    for (server, plan) in servers.iter().zip(&plans) {
        if let Ok(ServerPlan {
            boot: BootMethod::VirtualMedia { .. },
            ..
        }) = plan
        {
            media_plans.insert(
                server.name.clone(),
                install_plan(server, &args.hub, &ca, args.allow_wipe)?,
            );
        }
    }
    let media = media::IsoStore::new(&args.artifacts, &args.boot_server, media_plans)?;
    let fleet = peers::HubFleet::new(args.hub.clone(), token, &ca)?;
    let install = peers::BootServerProgress::new(args.boot_server.clone())?;
    let policy = Policy {
        max_attempts: args.max_attempts.max(1),
        install_start_timeout: Duration::from_secs(args.install_timeout),
        install_stall_timeout: Duration::from_secs(args.install_timeout),
        register_timeout: Duration::from_secs(args.register_timeout),
        bmc_away_timeout: Duration::from_secs(args.bmc_away_timeout),
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
        let (reporter, policy, rack, install, fleet, media, persist) = (
            &reporter, &policy, &rack, &install, &fleet, &media, &persist,
        );
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
                minter: fleet as &dyn TokenMinter,
                media: media as &dyn MediaStore,
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
    // The image server lives exactly as long as the provisioning.
    if let Some(server) = options.as_ref().and_then(|o| o.images.server.as_ref()) {
        server.stop().await;
    }
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
    fn redfish_servers_get_virtual_media_for_the_site_and_ipmi_ones_pxe() {
        let rack = rack();
        let p = plan_for(&rack.servers[0], BootChoice::Auto, Some("lab"), None).unwrap();
        assert_eq!(p.boot, BootMethod::VirtualMedia { site: "lab".into() });
        assert_eq!(p.boot_mac, "52:54:00:c4:00:01");
        let p = plan_for(&rack.servers[1], BootChoice::Auto, None, None).unwrap();
        assert_eq!(p.boot, BootMethod::Pxe);
        let e = plan_for(
            &rack.servers[1],
            BootChoice::VirtualMedia,
            Some("lab"),
            None,
        )
        .unwrap_err();
        assert!(e.contains("needs a Redfish BMC"), "{e}");
        let e = plan_for(&rack.servers[0], BootChoice::Auto, None, None).unwrap_err();
        assert!(e.contains("--site") && e.contains("srv1"), "{e}");
        let p = plan_for(&rack.servers[0], BootChoice::Pxe, None, None).unwrap();
        assert_eq!(p.boot, BootMethod::Pxe);
    }

    #[test]
    fn a_servers_own_boot_wins_over_the_runs_default() {
        let text = "servers:\n  - name: pxe\n    bmc: redfish://10.77.0.101\n    credentials: c.yaml\n    boot_mac: \"52:54:00:c4:00:01\"\n    boot: pxe\n  - name: media\n    bmc: idrac-virtualmedia://10.77.0.102/redfish/v1/Systems/System.Embedded.1\n    credentials: c.yaml\n    boot_mac: \"52:54:00:c4:00:02\"\n  - name: default\n    bmc: redfish://10.77.0.103\n    credentials: c.yaml\n    boot_mac: \"52:54:00:c4:00:03\"\n";
        let rack = Rack::parse(text, Path::new("/lab")).unwrap();
        let boots = |default| {
            rack.servers
                .iter()
                .map(|s| plan_for(s, default, Some("lab"), None).unwrap().boot)
                .collect::<Vec<_>>()
        };
        let media = BootMethod::VirtualMedia { site: "lab".into() };
        assert_eq!(
            boots(BootChoice::Auto),
            [BootMethod::Pxe, media.clone(), media.clone()]
        );
        assert_eq!(
            boots(BootChoice::Pxe),
            [BootMethod::Pxe, media.clone(), BootMethod::Pxe]
        );
        // A Metal3 virtual-media address still needs the site its token is minted for.
        let e = plan_for(&rack.servers[1], BootChoice::Pxe, None, None).unwrap_err();
        assert!(e.contains("--site") && e.contains("media"), "{e}");
    }

    #[test]
    fn an_unknown_firmware_profile_fails_planning_naming_the_server_and_the_known_ones() {
        let rack = Rack::parse(
            "servers:\n  - name: srv1\n    bmc: redfish://admin@10.77.0.101\n    credentials: c.yaml\n    firmware_profile: emulator\n  - name: srv2\n    bmc: redfish://admin@10.77.0.102\n    credentials: c.yaml\n    firmware_profile: emulatr\n  - name: srv3\n    bmc: redfish://admin@10.77.0.103\n    credentials: c.yaml\n",
            Path::new("/lab"),
        )
        .unwrap();
        let shipped = load_all(None).unwrap();
        let all: Vec<&Server> = rack.servers.iter().collect();
        let e = firmware_profiles(&all, &shipped).unwrap_err();
        assert!(
            e.contains("srv2")
                && e.contains("emulatr")
                && e.contains("emulator, ")
                && e.contains("--profiles"),
            "{e}"
        );
        let found = firmware_profiles(&all[..1], &shipped).unwrap();
        assert_eq!(found["srv1"].name, "emulator");
        assert!(firmware_profiles(&all[2..], &shipped).unwrap().is_empty());
    }
}
