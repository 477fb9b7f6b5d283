//! `cairn bmc ...`: one BMC (`--bmc URL --password-file F`) or a rack (`--inventory
//! rack.yaml`), every server in parallel with its own time limit and its own result line.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::cli::{Exit, OutputFormat, Progress};
use clap::{Args, Subcommand};
use serde::Serialize;

use crate::address::{BmcAddress, Credentials};
use crate::bmc::{Bmc, BmcError, BootDevice, BootMode, BootOverride, PowerAction};
use crate::connect::ConnectOptions;
use crate::fleet::{self, Outcome, OutcomeResult, Target};
use crate::inventory::Rack;
use crate::ipmi::SuiteChoice;
use crate::tls::{Trust, normalize_fingerprint};

/// Which BMCs to reach and how: shared by `cairn bmc` and `cairn firmware`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// One BMC: `redfish://[user@]host[:port][/redfish/v1/Systems/ID]`, `redfish+http://...`
    /// (emulators; needs --allow-insecure-redfish) or `ipmi://[user@]host[:port]`. Needs
    /// --password-file.
    #[arg(long, global = true, conflicts_with = "inventory", value_name = "URL")]
    pub bmc: Option<String>,
    /// File holding the BMC password (or YAML `username:`/`password:`); never pass passwords
    /// on the command line.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Rack inventory (rack.yaml) listing servers, BMC URLs and credentials files.
    #[arg(long, global = true, value_name = "FILE")]
    pub inventory: Option<PathBuf>,
    /// Only these servers of the inventory (repeat or comma-separate).
    #[arg(long, global = true, value_delimiter = ',', value_name = "NAME")]
    pub only: Vec<String>,
    /// How many BMCs to work on at once.
    #[arg(long, global = true, default_value_t = 32)]
    pub parallel: usize,
    /// Time limit per BMC for the whole command, in seconds.
    #[arg(long, global = true, default_value_t = 60.0)]
    pub timeout: f64,
    /// Time limit for one request or IPMI exchange, in seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub request_timeout: f64,
    /// Trust BMC certificates issued by this CA bundle (PEM).
    #[arg(long, global = true, value_name = "FILE", group = "trust")]
    pub ca_bundle: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint (hex, colons allowed).
    #[arg(long, global = true, value_name = "SHA256", group = "trust")]
    pub tls_fingerprint: Option<String>,
    /// Trust on first use: record each BMC's certificate in this file, refuse a changed one.
    #[arg(long, global = true, value_name = "FILE", group = "trust")]
    pub known_hosts: Option<PathBuf>,
    /// Accept any BMC certificate. Only for labs: anyone on the path can read the password.
    #[arg(long, global = true, group = "trust")]
    pub insecure: bool,
    /// Allow IPMI cipher suite 0 (no authentication, integrity or encryption).
    #[arg(long, global = true)]
    pub allow_insecure_ipmi: bool,
    #[command(flatten)]
    redfish_http: RedfishHttpArgs,
    /// IPMI cipher suite: auto (17, then 3), 17, 3, or 0 (needs --allow-insecure-ipmi).
    #[arg(long, global = true, default_value = "auto", value_parser = parse_suite)]
    pub ipmi_cipher_suite: SuiteChoice,
    /// Output: table for people, json for scripts.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

/// Whether plain-HTTP Redfish is accepted: the one flag every command reaching BMCs shares
/// (`cairn bmc`, `cairn firmware`, `cairn rack provision`).
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct RedfishHttpArgs {
    /// Accept `redfish+http://` BMCs (emulators, labs). Each is warned about: the BMC
    /// password crosses the network in clear. Without it such an address is refused.
    #[arg(long, global = true)]
    pub allow_insecure_redfish: bool,
}

impl RedfishHttpArgs {
    /// Default connection options with this choice.
    pub fn options(self) -> ConnectOptions {
        ConnectOptions {
            allow_insecure_redfish: self.allow_insecure_redfish,
            ..ConnectOptions::default()
        }
    }
}

fn parse_suite(s: &str) -> Result<SuiteChoice, String> {
    match s {
        "auto" => Ok(SuiteChoice::Auto),
        n => n
            .parse()
            .map(SuiteChoice::Only)
            .map_err(|_| format!("{s:?} is not auto or a cipher suite number")),
    }
}

/// Bad command-line input (exit code 3).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

impl ConnectArgs {
    /// Connection options from the flags.
    pub fn options(&self) -> Result<ConnectOptions, InputError> {
        let trust = if let Some(ca) = &self.ca_bundle {
            Trust::CaBundle(ca.clone())
        } else if let Some(fp) = &self.tls_fingerprint {
            Trust::Fingerprint(normalize_fingerprint(fp).map_err(|e| InputError(e.to_string()))?)
        } else if let Some(k) = &self.known_hosts {
            Trust::KnownHosts(k.clone())
        } else if self.insecure {
            tracing::warn!("--insecure: BMC certificates are not verified");
            Trust::Insecure
        } else {
            Trust::System
        };
        if !(self.request_timeout > 0.0 && self.timeout > 0.0) {
            return Err(InputError(
                "--timeout and --request-timeout must be positive".into(),
            ));
        }
        Ok(ConnectOptions {
            trust,
            request_timeout: Duration::from_secs_f64(self.request_timeout),
            allow_insecure_ipmi: self.allow_insecure_ipmi,
            ipmi_suites: self.ipmi_cipher_suite,
            ..self.redfish_http.options()
        })
    }

    /// The BMCs to work on, in order. Unreadable credentials become that server's failure.
    pub fn targets(&self) -> Result<Vec<Target>, InputError> {
        match (&self.bmc, &self.inventory) {
            (Some(url), None) => {
                let address = BmcAddress::parse(url).map_err(|e| InputError(e.to_string()))?;
                let file = self.password_file.as_ref().ok_or_else(|| {
                    InputError("--bmc needs --password-file (passwords are never taken from the command line)".into())
                })?;
                let credentials = Credentials::from_file(file, address.user.as_deref())
                    .map_err(|e| InputError(cairn_api::error_chain(&e)))?;
                Ok(vec![Target {
                    name: address.host.clone(),
                    address,
                    credentials: Ok(credentials),
                    fingerprint: None,
                }])
            }
            (None, Some(path)) => {
                let rack = Rack::load(path).map_err(|e| InputError(cairn_api::error_chain(&e)))?;
                let servers = rack
                    .select(&self.only)
                    .map_err(|e| InputError(e.to_string()))?;
                Ok(servers
                    .into_iter()
                    .map(|s| Target {
                        name: s.name.clone(),
                        address: s.bmc.clone(),
                        credentials: rack.credentials(s).map_err(|e| cairn_api::error_chain(&e)),
                        fingerprint: s.tls_fingerprint.clone(),
                    })
                    .collect())
            }
            _ => Err(InputError(
                "give either --bmc URL (with --password-file) or --inventory rack.yaml".into(),
            )),
        }
    }

    /// Runs `op` across the targets, with a progress bar over the servers on a terminal.
    pub async fn run<T: Send + 'static>(
        &self,
        op: fleet::Operation<T>,
    ) -> Result<Vec<Outcome<T>>, InputError> {
        let targets = self.targets()?;
        let options = self.options()?;
        let progress = Progress::items("BMCs", targets.len() as u64);
        Ok(fleet::run(
            targets,
            self.parallel,
            Duration::from_secs_f64(self.timeout),
            options,
            op,
            |server, ok| {
                progress.inc(1);
                tracing::debug!(server, ok, "done");
            },
        )
        .await)
    }
}

/// Drive server BMCs over Redfish and IPMI: power, boot device, inventory, media, logs.
///
/// Examples:
///   cairn bmc status --bmc redfish://admin@10.0.0.11 --password-file bmc.pw --known-hosts ~/.cairn/bmc_hosts
///   cairn bmc power on --inventory rack.yaml --only r1s1,r1s2
///   cairn bmc boot pxe --once --uefi --inventory rack.yaml --output json
#[derive(Debug, Args)]
pub struct BmcArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    #[command(subcommand)]
    command: BmcCommand,
}

#[derive(Debug, Subcommand)]
enum BmcCommand {
    /// Power state of each BMC (and that it answers with these credentials).
    Status,
    /// Power on, off, soft-off (ACPI shutdown), cycle or reset.
    Power {
        /// The action.
        #[arg(value_enum)]
        action: PowerAction,
    },
    /// Set the next (default) or every boot device, and read it back.
    Boot {
        /// pxe, cd, disk, http (UEFI HTTP boot), bios-setup, or none to clear.
        #[arg(value_enum)]
        device: BootDevice,
        /// Only the next boot (default).
        #[arg(long, conflicts_with = "persistent")]
        once: bool,
        /// Every boot from now on.
        #[arg(long)]
        persistent: bool,
        /// Boot in UEFI mode.
        #[arg(long, conflicts_with = "legacy")]
        uefi: bool,
        /// Boot in legacy BIOS mode.
        #[arg(long)]
        legacy: bool,
    },
    /// Manufacturer, model, serial, firmware versions, CPUs, memory, NICs, disks.
    Inventory,
    /// Virtual CD: insert an ISO by URL, eject, or show status.
    Media {
        #[command(subcommand)]
        action: MediaAction,
    },
    /// Event log entries (Redfish LogServices, IPMI SEL).
    Logs,
    /// Temperatures, fans, voltages, power supplies.
    Sensors,
    /// Walk what provisioning needs and print pass/fail per check: run it against a new
    /// server model before it enters a rack.
    Conformance {
        /// Also change state: set a one-time boot override (then restore it) and insert and
        /// eject --media-url.
        #[arg(long)]
        destructive: bool,
        /// ISO URL for the virtual media check (with --destructive).
        #[arg(long, value_name = "URL")]
        media_url: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum MediaAction {
    /// Insert an ISO (HTTP/HTTPS URL the BMC can reach).
    Insert {
        /// Image URL.
        url: String,
    },
    /// Eject the virtual CD.
    Eject,
    /// Show what is inserted.
    Status,
}

/// One check of `conformance`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// What was checked.
    pub check: String,
    /// pass, fail or skip.
    pub result: &'static str,
    /// Detail or error.
    pub detail: String,
}

fn op<T, F, Fut>(f: F) -> fleet::Operation<T>
where
    F: Fn(Arc<dyn Bmc>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, BmcError>> + Send + 'static,
{
    Arc::new(move |b, _server| Box::pin(f(b)) as Pin<Box<dyn Future<Output = _> + Send>>)
}

impl BmcArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        let c = &self.connect;
        let result = match &self.command {
            BmcCommand::Status => {
                let out = c
                    .run(op(
                        |b| async move { Ok(b.power_state().await?.to_string()) },
                    ))
                    .await;
                out.map(|o| report(c.output, &o, |s| s.clone()))
            }
            BmcCommand::Power { action } => {
                let action = *action;
                let out = c
                    .run(op(move |b| async move {
                        b.power(action).await?;
                        Ok(format!("{action:?} requested").to_lowercase())
                    }))
                    .await;
                out.map(|o| report(c.output, &o, |s| s.clone()))
            }
            BmcCommand::Boot {
                device,
                persistent,
                uefi,
                legacy,
                ..
            } => {
                let boot = BootOverride {
                    device: *device,
                    persistent: *persistent,
                    mode: match (uefi, legacy) {
                        (true, _) => Some(BootMode::Uefi),
                        (_, true) => Some(BootMode::Legacy),
                        _ => None,
                    },
                };
                let out = c
                    .run(op(move |b| async move {
                        b.set_boot_override(boot).await?;
                        let got = b.boot_override().await?;
                        Ok(format!(
                            "{} ({})",
                            got.device,
                            if got.persistent { "persistent" } else { "once" }
                        ))
                    }))
                    .await;
                out.map(|o| report(c.output, &o, |s| s.clone()))
            }
            BmcCommand::Inventory => {
                let out = c.run(op(|b| async move { b.inventory().await })).await;
                out.map(|o| {
                    report(c.output, &o, |i| {
                        format!(
                            "{} {} serial {} bios {} bmc {} cpus {} mem {} GiB nics {} disks {}",
                            i.manufacturer.as_deref().unwrap_or("?"),
                            i.model.as_deref().unwrap_or("?"),
                            i.serial.as_deref().unwrap_or("?"),
                            i.bios_version.as_deref().unwrap_or("?"),
                            i.bmc_version.as_deref().unwrap_or("?"),
                            i.cpus.map(|c| c.to_string()).unwrap_or("?".into()),
                            i.memory_gib.map(|m| m.to_string()).unwrap_or("?".into()),
                            i.nics
                                .iter()
                                .map(|n| n.mac.clone().unwrap_or_else(|| n.name.clone()))
                                .collect::<Vec<_>>()
                                .join(","),
                            i.disks.len()
                        )
                    })
                })
            }
            BmcCommand::Media { action } => match action {
                MediaAction::Insert { url } => {
                    let url = url.clone();
                    let out = c
                        .run(op(move |b| {
                            let url = url.clone();
                            async move {
                                b.media_insert(&url).await?;
                                b.media_status().await
                            }
                        }))
                        .await;
                    out.map(|o| report(c.output, &o, media_line))
                }
                MediaAction::Eject => {
                    let out = c
                        .run(op(|b| async move {
                            b.media_eject().await?;
                            b.media_status().await
                        }))
                        .await;
                    out.map(|o| report(c.output, &o, media_line))
                }
                MediaAction::Status => {
                    let out = c.run(op(|b| async move { b.media_status().await })).await;
                    out.map(|o| report(c.output, &o, media_line))
                }
            },
            BmcCommand::Logs => {
                let out = c.run(op(|b| async move { b.logs().await })).await;
                out.map(|o| {
                    report(c.output, &o, |entries| {
                        let mut s = format!("{} entries", entries.len());
                        for e in entries.iter().rev().take(20).rev() {
                            s.push_str(&format!(
                                "\n    {} {} {}",
                                e.created.as_deref().unwrap_or("-"),
                                e.severity.as_deref().unwrap_or("-"),
                                e.message
                            ));
                        }
                        s
                    })
                })
            }
            BmcCommand::Sensors => {
                let out = c.run(op(|b| async move { b.sensors().await })).await;
                out.map(|o| {
                    report(c.output, &o, |sensors| {
                        let mut s = format!("{} sensors", sensors.len());
                        for x in sensors {
                            s.push_str(&format!(
                                "\n    {:<24} {:<12} {:>8} {:<4} {}",
                                x.name,
                                x.kind,
                                x.reading.map(|r| format!("{r}")).unwrap_or("-".into()),
                                x.unit,
                                x.status.as_deref().unwrap_or("")
                            ));
                        }
                        s
                    })
                })
            }
            BmcCommand::Conformance {
                destructive,
                media_url,
            } => {
                let (destructive, media_url) = (*destructive, media_url.clone());
                let out = c
                    .run(op(move |b| {
                        let media_url = media_url.clone();
                        async move {
                            Ok(conformance(b.as_ref(), destructive, media_url.as_deref()).await)
                        }
                    }))
                    .await;
                out.map(|o| {
                    let checks_failed = o.iter().any(|x| match &x.result {
                        OutcomeResult::Ok { result } => result.iter().any(|c| c.result == "fail"),
                        OutcomeResult::Err { .. } => true,
                    });
                    let exit = report(c.output, &o, |checks| {
                        let mut s = String::new();
                        for ch in checks {
                            s.push_str(&format!(
                                "\n    {:<28} {:<5} {}",
                                ch.check, ch.result, ch.detail
                            ));
                        }
                        s
                    });
                    if checks_failed { Exit::Failed } else { exit }
                })
            }
        };
        match result {
            Ok(exit) => Ok(exit),
            Err(e) => {
                eprintln!("error: {e}");
                Ok(Exit::InvalidInput)
            }
        }
    }
}

fn media_line(m: &crate::bmc::MediaStatus) -> String {
    format!(
        "{} {} ({})",
        if m.inserted { "inserted" } else { "empty" },
        m.image.as_deref().unwrap_or(""),
        m.location
    )
}

/// Prints per-server results (table or JSON) and returns the exit: failed if any failed.
pub fn report<T: Serialize>(
    output: OutputFormat,
    outcomes: &[Outcome<T>],
    line: impl Fn(&T) -> String,
) -> Exit {
    match output {
        OutputFormat::Json => {
            // Serialising plain data cannot fail.
            println!(
                "{}",
                serde_json::to_string_pretty(outcomes).unwrap_or_default()
            );
        }
        OutputFormat::Table => {
            print!(
                "{}",
                cairn_api::cli::table(
                    &["server", "result", "detail"],
                    outcomes.iter().map(|o| match &o.result {
                        OutcomeResult::Ok { result } => {
                            vec![o.server.clone(), "ok".into(), line(result)]
                        }
                        OutcomeResult::Err { error } => {
                            vec![o.server.clone(), "FAILED".into(), error.clone()]
                        }
                    }),
                )
            );
            let failed = outcomes.iter().filter(|o| !o.ok()).count();
            eprintln!(
                "{} servers, {} ok, {} failed",
                outcomes.len(),
                outcomes.len() - failed,
                failed
            );
        }
    }
    if outcomes.iter().all(Outcome::ok) {
        Exit::Success
    } else {
        Exit::Failed
    }
}

fn check(name: &str, r: Result<String, BmcError>) -> Check {
    match r {
        Ok(detail) => Check {
            check: name.into(),
            result: "pass",
            detail,
        },
        Err(e @ BmcError::Unsupported { .. }) => Check {
            check: name.into(),
            result: "skip",
            detail: e.to_string(),
        },
        Err(e) => Check {
            check: name.into(),
            result: "fail",
            detail: cairn_api::error_chain(&e),
        },
    }
}

/// The conformance walk: what a provisioning flow needs from a BMC.
pub async fn conformance(b: &dyn Bmc, destructive: bool, media_url: Option<&str>) -> Vec<Check> {
    let mut checks = Vec::new();
    let login = b.power_state().await.map(|p| format!("power {p}"));
    let logged_in = login.is_ok();
    checks.push(check("login + power state", login));
    if !logged_in {
        return checks;
    }
    checks.push(check(
        "inventory",
        b.inventory().await.map(|i| {
            format!(
                "{} {} ({} NICs)",
                i.manufacturer.unwrap_or_default(),
                i.model.unwrap_or_default(),
                i.nics.len()
            )
        }),
    ));
    let current = b.boot_override().await;
    checks.push(check(
        "boot override read",
        current
            .as_ref()
            .map(|c| format!("{c:?}"))
            .map_err(clone_err),
    ));
    if destructive {
        let r = async {
            let want = BootOverride {
                device: BootDevice::Pxe,
                persistent: false,
                mode: None,
            };
            b.set_boot_override(want).await?;
            let got = b.boot_override().await?;
            if let Ok(before) = &current {
                b.set_boot_override(*before).await?;
            }
            Ok(format!("set pxe once, read back {} (restored)", got.device))
        }
        .await;
        checks.push(check("boot override read-back", r));
    } else {
        checks.push(Check {
            check: "boot override read-back".into(),
            result: "skip",
            detail: "needs --destructive".into(),
        });
    }
    checks.push(check(
        "virtual media status",
        b.media_status().await.map(|m| media_line(&m)),
    ));
    match (destructive, media_url) {
        (true, Some(url)) => {
            let r = async {
                b.media_insert(url).await?;
                b.media_eject().await?;
                Ok(format!("inserted and ejected {url}"))
            }
            .await;
            checks.push(check("virtual media insert/eject", r));
        }
        _ => checks.push(Check {
            check: "virtual media insert/eject".into(),
            result: "skip",
            detail: "needs --destructive --media-url".into(),
        }),
    }
    checks.push(check(
        "BIOS attributes read",
        b.bios()
            .await
            .map(|s| format!("{} attributes", s.current.len())),
    ));
    checks.push(check(
        "sensors",
        b.sensors().await.map(|s| format!("{} sensors", s.len())),
    ));
    checks.push(check(
        "logs",
        b.logs().await.map(|l| format!("{} entries", l.len())),
    ));
    checks
}

fn clone_err(e: &BmcError) -> BmcError {
    BmcError::Invalid(cairn_api::error_chain(e))
}
