//! `cairn-node net ...`: netplan YAML applied through netlink, with a safe `try`.

use std::path::PathBuf;
use std::time::Duration;

use cairn_api::cli::{Exit, OutputFormat};
use clap::{Args, Subcommand};

use crate::apply::{ApplyError, Report, Store, apply, diff};
use crate::netlink::{Netlink, RtNetlink};
use crate::overlay::Overlay;
use crate::plan::Op;
use crate::safe::{Probe, TryError, TryOutcome, confirm, recover, try_apply};
use crate::schema::{Config, LoadError, load_files, load_root};

/// Apply host networking from netplan YAML, safely.
///
/// Files are read like netplan does: every `*.yaml` under `lib/netplan`, `etc/netplan` and
/// `run/netplan` of the config root, merged in file-name order (later keys win), unless
/// `--file` names the files. Only what the YAML names, and what cairn created before, is
/// touched. Example: `cairn-node net try --timeout 120 --probe hub.example:443`, then
/// `cairn-node net confirm` from the new network.
#[derive(Debug, Args)]
pub struct NetArgs {
    /// Root under which lib/, etc/ and run/netplan are searched.
    #[arg(long, global = true, default_value = "/", value_name = "DIR")]
    config_dir: PathBuf,
    /// Use these files (in this order) instead of searching the config root.
    #[arg(long = "file", global = true, value_name = "F")]
    files: Vec<PathBuf>,
    /// Where cairn keeps what it created and a pending try's checkpoint: `host/` for the
    /// netplan configuration, `overlay/` for VPC overlays (the same layout `cairn-node run`
    /// uses under its state directory), DHCP leases at the top.
    #[arg(
        long,
        global = true,
        default_value = "/var/lib/cairn/netplan",
        value_name = "DIR"
    )]
    state_dir: PathBuf,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: NetCommand,
}

#[derive(Debug, Subcommand)]
enum NetCommand {
    /// Apply the configuration now, verify it, and restore the previous state on failure.
    Apply,
    /// Show the changes apply would make, in order, without making them.
    Diff,
    /// Apply, run probes, and roll back unless `net confirm` arrives within the timeout.
    Try {
        /// Seconds to wait for `net confirm` before rolling back.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Reachability check after applying: HOST:PORT (TCP connect) or an http(s) URL
        /// (GET, status < 400, certificate verified). Repeatable; any failure rolls back.
        #[arg(long = "probe", value_name = "URL|HOST:PORT")]
        probes: Vec<Probe>,
    },
    /// Keep the configuration applied by a pending `net try`.
    Confirm,
    /// Show what cairn manages and whether a try is pending.
    Status,
    /// Only parse and validate the configuration.
    Validate,
    /// Run the DHCPv4 client on an interface until stopped (SIGTERM/SIGINT), then release
    /// the lease. The lease is kept in the state directory across restarts.
    Dhcp {
        /// The interface (a `dhcp4: true` device).
        #[arg(long)]
        interface: String,
    },
    /// Realise a VPC overlay document (JSON, as the hub sends it): per VPC a VRF, a bridge
    /// with the gateway address and a VXLAN port with one FDB entry per peer. Links of VPCs
    /// no longer listed are removed; nothing else is touched.
    Overlay {
        /// The overlay document.
        #[arg(long, value_name = "FILE")]
        document: PathBuf,
        /// Only show the changes.
        #[arg(long)]
        diff: bool,
    },
}

/// A failure of the `net` command, printed by the caller.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Bad configuration.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Applying failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Try failed.
    #[error(transparent)]
    Try(#[from] TryError),
    /// Netlink could not be opened.
    #[error(transparent)]
    Netlink(#[from] crate::netlink::NetlinkError),
    /// The DHCP client failed.
    #[error(transparent)]
    Dhcp(#[from] crate::dhcp::DhcpError),
    /// The overlay document could not be read.
    #[error("reading overlay document {path}")]
    Document {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl NetArgs {
    /// Runs the command. Errors are printed here (with their cause chain) and become the
    /// exit code, so the caller's error type stays untouched.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(match self.run_inner().await {
            Ok(exit) => exit,
            Err(e) => {
                eprintln!("error: {}", cairn_api::error_chain(&e));
                match e {
                    NetError::Load(_)
                    | NetError::Document { .. }
                    | NetError::Apply(ApplyError::Config(_) | ApplyError::Unrealisable(_)) => {
                        Exit::InvalidInput
                    }
                    _ => Exit::Failed,
                }
            }
        })
    }

    fn config(&self) -> Result<Config, LoadError> {
        if self.files.is_empty() {
            load_root(&self.config_dir)
        } else {
            load_files(&self.files)
        }
    }

    async fn run_inner(&self) -> Result<Exit, NetError> {
        let store = Store::new(self.state_dir.join("host"));
        if let NetCommand::Validate = self.command {
            let config = self.config()?;
            self.print(
                &serde_json::json!({"valid": true, "devices": config.devices.len()}),
                &format!("valid: {} devices", config.devices.len()),
            );
            return Ok(Exit::Success);
        }
        if let NetCommand::Confirm = self.command {
            let was = confirm(&store)?;
            self.print(
                &serde_json::json!({"confirmed": was}),
                if was {
                    "confirmed: the tried configuration stays"
                } else {
                    "nothing to confirm: no try pending"
                },
            );
            return Ok(if was { Exit::Success } else { Exit::Failed });
        }
        let mut nl = RtNetlink::connect()?;
        if let Some(restored) = recover(&mut nl, &store).await? {
            eprintln!("warning: an unconfirmed `net try` was interrupted; {restored}");
        }
        match &self.command {
            NetCommand::Diff => {
                let config = self.config()?;
                let ops = diff(&mut nl, &config, &store).await?;
                self.print_ops(&ops, "no changes");
                Ok(Exit::Success)
            }
            NetCommand::Apply => {
                let config = self.config()?;
                let report = apply(&mut nl, &config, &store).await?;
                if self.output == OutputFormat::Json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    self.print_ops(&report.changes, "no changes");
                    println!("{} netlink writes", report.writes);
                }
                Ok(Exit::Success)
            }
            NetCommand::Try { timeout, probes } => {
                let config = self.config()?;
                let outcome = try_apply(
                    &mut nl,
                    &config,
                    &store,
                    probes,
                    Duration::from_secs(*timeout),
                )
                .await?;
                let (json, text, exit) = match &outcome {
                    TryOutcome::Confirmed => (
                        serde_json::json!({"outcome": "confirmed"}),
                        "confirmed".to_string(),
                        Exit::Success,
                    ),
                    TryOutcome::ProbeFailed {
                        probe,
                        reason,
                        restored,
                    } => (
                        serde_json::json!({"outcome": "rolled-back", "probe": probe, "reason": reason, "restored": restored.to_string()}),
                        format!("rolled back: probe {probe} failed: {reason}; {restored}"),
                        Exit::Failed,
                    ),
                    TryOutcome::TimedOut { restored } => (
                        serde_json::json!({"outcome": "rolled-back", "reason": "not confirmed in time", "restored": restored.to_string()}),
                        format!("rolled back: not confirmed in time; {restored}"),
                        Exit::Failed,
                    ),
                };
                self.print(&json, &text);
                Ok(exit)
            }
            NetCommand::Status => {
                let owned = store.owned()?;
                let pending = store.checkpoint()?;
                let kernel = nl.read().await?;
                let links: Vec<serde_json::Value> = owned
                    .links
                    .iter()
                    .map(|n| {
                        let l = kernel.link(n);
                        serde_json::json!({"name": n, "present": l.is_some(), "up": l.is_some_and(|l| l.up)})
                    })
                    .collect();
                let json = serde_json::json!({
                    "created_links": links,
                    "created_rules": owned.rules.len(),
                    "try_pending": pending.as_ref().map(|c| c.deadline_unix),
                });
                let mut text = String::from("LINK             PRESENT  UP\n");
                for l in &links {
                    text.push_str(&format!(
                        "{:<16} {:<8} {}\n",
                        l["name"].as_str().unwrap_or_default(),
                        l["present"],
                        l["up"]
                    ));
                }
                text.push_str(&match pending {
                    Some(c) => format!("try pending, rollback at unix time {}", c.deadline_unix),
                    None => "no try pending".into(),
                });
                self.print(&json, &text);
                Ok(Exit::Success)
            }
            NetCommand::Overlay {
                document,
                diff: only_diff,
            } => {
                let text = std::fs::read(document).map_err(|e| NetError::Document {
                    path: document.clone(),
                    source: Box::new(e),
                })?;
                let doc: cairn_api::OverlayDocument =
                    serde_json::from_slice(&text).map_err(|e| NetError::Document {
                        path: document.clone(),
                        source: Box::new(e),
                    })?;
                let overlay = Overlay::new(&doc)?;
                let store = Store::new(self.state_dir.join("overlay"));
                if *only_diff {
                    let ops = diff(&mut nl, &overlay, &store).await?;
                    self.print_ops(&ops, "no changes");
                } else {
                    let report = apply(&mut nl, &overlay, &store).await?;
                    self.print_report(&report);
                }
                Ok(Exit::Success)
            }
            NetCommand::Dhcp { interface } => {
                let client = crate::dhcp::Client::new(interface, nl, &self.state_dir).await?;
                let stop = async {
                    use tokio::signal::unix::{SignalKind, signal};
                    match (
                        signal(SignalKind::terminate()),
                        signal(SignalKind::interrupt()),
                    ) {
                        (Ok(mut term), Ok(mut int)) => {
                            tokio::select! {
                                _ = term.recv() => {}
                                _ = int.recv() => {}
                            }
                        }
                        _ => std::future::pending::<()>().await,
                    }
                };
                client.run(stop).await?;
                Ok(Exit::Success)
            }
            NetCommand::Confirm | NetCommand::Validate => Ok(Exit::Success),
        }
    }

    fn print(&self, json: &serde_json::Value, text: &str) {
        match self.output {
            OutputFormat::Json => println!("{json}"),
            OutputFormat::Table => println!("{text}"),
        }
    }

    fn print_report(&self, report: &Report) {
        if self.output == OutputFormat::Json {
            println!(
                "{}",
                serde_json::to_string_pretty(report).unwrap_or_default()
            );
        } else {
            self.print_ops(&report.changes, "no changes");
            println!("{} netlink writes", report.writes);
        }
    }

    fn print_ops(&self, ops: &[Op], empty: &str) {
        match self.output {
            OutputFormat::Json => {
                println!("{}", serde_json::to_string_pretty(ops).unwrap_or_default())
            }
            OutputFormat::Table => {
                if ops.is_empty() {
                    println!("{empty}");
                }
                for (i, op) in ops.iter().enumerate() {
                    println!("{:>3}  {op}", i + 1);
                }
            }
        }
    }
}
