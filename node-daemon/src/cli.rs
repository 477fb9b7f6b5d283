//! `cairn-node ...`.

use std::path::PathBuf;

use anyhow::Context;
use cairn_api::cli::{Exit, LogArgs, OutputFormat};
use cairn_netplan::cli::NetArgs;
use clap::{Args, Parser, Subcommand};

use crate::config;
use crate::daemon::{Daemon, StartError};
use crate::inventory::Roots;
use crate::local_api;
use crate::network::Netplan;
use crate::seed::{self, Origin};
use crate::store::Store;
use crate::wizard;

/// The cairn appliance daemon: registration, heartbeats, kubelet bootstrap, networking.
///
/// Configuration: /etc/cairn/node.yaml plus drop-ins /etc/cairn/node.d/*.yaml (see
/// docs/node-daemon.md). Run `cairn-node run` as cairn-node.service; ask it how it is doing
/// with `cairn-node status`.
#[derive(Debug, Parser)]
#[command(name = "cairn-node", version, about, long_about)]
pub struct NodeCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    /// Treat this directory as `/`: configuration, state, kubelet files and the socket are
    /// found below it (for tests and image builds).
    #[arg(long, global = true, default_value = "/", env = "CAIRN_NODE_ROOT")]
    pub root: PathBuf,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run the daemon (as cairn-node.service).
    ///
    /// Applies the host network and brings back the kubelet from local state, registers with
    /// the hub when the node has no identity yet, then heartbeats and applies the hub's
    /// desired state. Keeps running on its last state when the hub is unreachable.
    Run(RunArgs),
    /// Show the running daemon's state (asks it over the local socket).
    Status(StatusArgs),
    /// Operate on the node's state store.
    State(StateArgs),
    /// Host networking from netplan YAML.
    Net(NetArgs),
    /// A/B upgrades by hand (the daemon does the same from the hub's desired state).
    Upgrade(UpgradeArgs),
}

#[derive(Debug, Args)]
struct UpgradeArgs {
    #[command(subcommand)]
    command: UpgradeCommand,
}

#[derive(Debug, Subcommand)]
enum UpgradeCommand {
    /// Carry out an upgrade order (JSON, as the hub sends it in the desired state) as far as
    /// it goes now: download, verify, write the inactive slot, arm GRUB, drain and reboot.
    /// Do not run it while `cairn-node run` works on an order. Prints the report; exit 1
    /// when the order was refused or failed.
    Apply {
        /// The order, a JSON `UpgradeOrder` file.
        #[arg(long)]
        order: PathBuf,
        /// Trust this CA (PEM) for the bundle URL instead of the hub CA of the node's
        /// identity (no client certificate is presented then).
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Show the recorded report of the last order (from the data directory; works without
    /// the daemon).
    Status {
        /// `table` for people, `json` for scripts.
        #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// A directory holding a seed (`node.yaml` and its files), checked before the
    /// CAIRN-SEED labelled filesystem.
    #[arg(long)]
    seed_dir: Vec<PathBuf>,
    /// sysfs to read the hardware inventory from.
    #[arg(long, default_value = "/sys")]
    sys_root: PathBuf,
    /// procfs to read CPUs, memory, uptime and load from.
    #[arg(long, default_value = "/proc")]
    proc_root: PathBuf,
    /// The journal directory the hub's `logs` read (journalctl --directory); the system's
    /// journal when not given.
    #[arg(long)]
    journal_dir: Option<PathBuf>,
    /// The `chronyc` that makes chrony re-read the fleet's NTP sources (default: `chronyc`
    /// from PATH).
    #[arg(long)]
    chronyc: Option<PathBuf>,
    /// Where the first-boot wizard listens when nothing configures the node.
    #[arg(long, default_value = "0.0.0.0:8443")]
    wizard_listen: String,
    /// Devices the wizard writes its certificate fingerprint and PIN to (repeat).
    #[arg(long, default_values = ["/dev/console", "/dev/ttyS0"])]
    console: Vec<PathBuf>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// `table` for people, `json` for scripts.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    /// The daemon's socket (default: api.socket from the configuration, else
    /// /run/cairn/node.sock).
    #[arg(long)]
    socket: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct StateArgs {
    #[command(subcommand)]
    command: StateCommand,
}

#[derive(Debug, Subcommand)]
enum StateCommand {
    /// Move the state store aside (kept as node.redb.corrupt-<time>) so the node starts
    /// fresh. The node then needs the re-install token an operator mints for it (`cairn hub
    /// appliances reinstall ID`); the hub recognises the hardware and keeps its appliance ID.
    /// Stop cairn-node first.
    Reset,
}

impl NodeCli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        match self.command {
            NodeCommand::Net(net) => Ok(net.run().await.unwrap_or(Exit::Failed)),
            NodeCommand::Run(args) => run(&self.root, args).await,
            NodeCommand::Upgrade(args) => upgrade(&self.root, args.command).await,
            NodeCommand::Status(args) => status(&self.root, args).await,
            NodeCommand::State(StateArgs {
                command: StateCommand::Reset,
            }) => reset(&self.root),
        }
    }
}

fn load_settings(root: &std::path::Path) -> Result<config::Settings, Exit> {
    config::load(root).map_err(|e| {
        eprintln!("error: invalid configuration: {e}");
        Exit::InvalidInput
    })
}

async fn run(root: &std::path::Path, args: RunArgs) -> anyhow::Result<Exit> {
    match seed::ensure_config(root, &args.seed_dir)? {
        Origin::Installed => {}
        Origin::Seed(from) => tracing::info!(from = %from.display(), "configuration seeded"),
        Origin::Nothing => {
            tracing::info!(
                "nothing configures this node ({} missing, no {} seed): starting the first-boot wizard",
                root.join(config::MAIN_FILE).display(),
                seed::SEED_LABEL
            );
            let network = Netplan {
                state_dir: config::rooted(root, std::path::Path::new("/var/lib/cairn/netplan")),
            };
            // Up for systemd: the wizard waits for a person, longer than any start timeout.
            cairn_api::cli::service::ready(&format!(
                "first-boot wizard on {} (PIN on the console)",
                args.wizard_listen
            ));
            wizard::run(
                &args.wizard_listen,
                root.to_path_buf(),
                &args.sys_root,
                network,
                args.console.clone(),
            )
            .await?;
        }
    }
    let settings = match load_settings(root) {
        Ok(s) => s,
        Err(exit) => return Ok(exit),
    };
    let network = Netplan {
        state_dir: settings.state_dir.join("netplan"),
    };
    let roots = Roots {
        sys: args.sys_root,
        proc: args.proc_root,
    };
    let socket = settings.api_socket.clone();
    let daemon = match Daemon::new(settings, network, roots) {
        Ok(d) => d
            .with_journal_dir(args.journal_dir)
            .with_chronyc(args.chronyc),
        Err(StartError::Store(e)) => {
            eprintln!("error: {e}");
            return Ok(Exit::Failed);
        }
        Err(StartError::Key(e)) => {
            eprintln!("error: {}", cairn_api::error_chain(&e));
            return Ok(Exit::Failed);
        }
    };
    let api = local_api::serve(&socket, daemon.status_handle(), daemon.metrics_handle())?;
    let api = tokio::spawn(api);
    tracing::info!(socket = %socket.display(), "cairn-node running");
    daemon.run(shutdown_signal()).await;
    api.abort();
    let _ = std::fs::remove_file(&socket);
    Ok(Exit::Success)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "no SIGTERM handler; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn status(root: &std::path::Path, args: StatusArgs) -> anyhow::Result<Exit> {
    let socket = match args.socket {
        Some(s) => s,
        None => config::load(root)
            .map(|s| s.api_socket)
            .unwrap_or_else(|_| config::rooted(root, std::path::Path::new("/run/cairn/node.sock"))),
    };
    let status = local_api::fetch_status(&socket).await?;
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&status).context("encoding the status")?
        ),
        OutputFormat::Table => print!("{}", status.render_text()),
    }
    Ok(Exit::Success)
}

async fn upgrade(root: &std::path::Path, command: UpgradeCommand) -> anyhow::Result<Exit> {
    use crate::upgrade::{StepError, Upgrader};
    let settings = match load_settings(root) {
        Ok(s) => s,
        Err(exit) => return Ok(exit),
    };
    let mut upgrader = Upgrader::new(
        settings.upgrade.clone(),
        crate::daemon::os_version(&settings.root),
    );
    let print = |report: Option<cairn_api::UpgradeReport>, output: OutputFormat| match output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        ),
        OutputFormat::Table => match report {
            Some(r) => println!(
                "{} {:?} {} ({}/{} bytes)",
                r.version, r.phase, r.reason, r.bytes_done, r.bytes_total
            ),
            None => println!("no upgrade order recorded"),
        },
    };
    match command {
        UpgradeCommand::Status { output } => {
            print(upgrader.report(), output);
            Ok(Exit::Success)
        }
        UpgradeCommand::Apply { order, ca_file } => {
            let text =
                std::fs::read(&order).with_context(|| format!("reading {}", order.display()))?;
            let order: cairn_api::UpgradeOrder = match serde_json::from_slice(&text) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("error: {}: not an upgrade order: {e}", order.display());
                    return Ok(Exit::InvalidInput);
                }
            };
            let (trust, identity) = match ca_file {
                Some(path) => (
                    crate::hub::Trust::CaBundle(
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("reading {}", path.display()))?,
                    ),
                    None,
                ),
                None => {
                    let identity = Store::open(&settings.state_dir)?
                        .identity()?
                        .context("the node is not registered: pass --ca-file")?;
                    let keys = crate::identity_key::open(
                        settings.tpm_policy,
                        settings.tpm_tcti.as_deref(),
                    )?;
                    (
                        crate::hub::Trust::CaBundle(identity.ca_bundle_pem.clone()),
                        Some(crate::hub::ClientIdentity {
                            certificate_pem: identity.certificate_pem,
                            key: crate::hub::ClientKey::Signer(
                                keys.signing_key(&identity.key_pem)?,
                            ),
                        }),
                    )
                }
            };
            let (tls, _) = cairn_hub_client::tls::client_config(&trust, identity.as_ref())?;
            upgrader.set_tls(tls);
            upgrader.at_start().await;
            let result = upgrader.drive(Some(&order)).await;
            print(upgrader.report(), OutputFormat::Json);
            Ok(match result {
                Ok(()) => Exit::Success,
                Err(StepError::Retry(m)) => {
                    eprintln!("error: {m} (run again to resume)");
                    Exit::Failed
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Exit::Failed
                }
            })
        }
    }
}

fn reset(root: &std::path::Path) -> anyhow::Result<Exit> {
    let dir = match config::load(root) {
        Ok(s) => s.state_dir,
        Err(_) => config::rooted(root, std::path::Path::new("/var/lib/cairn")),
    };
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    match Store::quarantine(&dir, now)
        .with_context(|| format!("moving the store in {} aside", dir.display()))?
    {
        Some(aside) => {
            println!(
                "state store moved to {}; write the appliance's re-install token (`cairn hub appliances reinstall ID`) to the token file and start cairn-node",
                aside.display()
            );
            Ok(Exit::Success)
        }
        None => {
            println!("no state store in {}: nothing to reset", dir.display());
            Ok(Exit::Success)
        }
    }
}
