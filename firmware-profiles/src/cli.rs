//! `cairn firmware plan|apply|check`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::cli::{Exit, OutputFormat};
use cairn_hardware::bmc::{Bmc, BmcError};
use cairn_hardware::cli::{ConnectArgs, report};
use cairn_hardware::fleet::{Operation, OutcomeResult};
use clap::{Args, Subcommand};

use crate::apply::{ApplyOptions, Images, apply, read_plan};
use crate::image::{ImageCache, default_cache_dir};
use crate::plan::Plan;
use crate::profile::{Profile, by_name, load_all};
use crate::serve::{ImageServer, ServeLimits, tls_config};

/// Plan, apply and check BIOS and firmware baselines.
///
/// A profile (YAML, see firmware-profiles/profiles/) lists BIOS attributes with the vendor's
/// names, boot mode, secure boot and minimum firmware versions. Each server gets the
/// profile named by --profile, else its inventory's `firmware_profile`, else the one whose
/// manufacturer and model match. Values are checked against the BMC's AttributeRegistry
/// before anything is staged.
///
/// Examples:
///   cairn firmware plan --inventory rack.yaml
///   cairn firmware apply --bmc redfish://admin@10.0.0.11 --password-file bmc.pw --profile dell-poweredge-r650
///   cairn firmware apply --inventory rack.yaml --serve-address 10.0.0.5:8099
///   cairn firmware check --inventory rack.yaml --output json
#[derive(Debug, Args)]
pub struct FirmwareArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Profile to use for every server (default: by inventory or by model).
    #[arg(long, global = true)]
    profile: Option<String>,
    /// Extra profile directory; its files replace shipped profiles of the same name.
    #[arg(long, global = true, value_name = "DIR")]
    profiles: Option<PathBuf>,
    #[command(subcommand)]
    command: FirmwareCommand,
}

#[derive(Debug, Subcommand)]
enum FirmwareCommand {
    /// Show what would change; changes nothing.
    Plan,
    /// Stage BIOS settings, reset when needed, wait and verify; run firmware updates.
    ///
    /// Each firmware image is downloaded once from the profile's image_url into the image
    /// cache, named by its SHA-256, and checked against the profile's sha256 (a cached copy is
    /// hashed again, and downloaded anew when it no longer matches). The BMC then gets
    /// exactly that verified copy: pushed to it when its UpdateService has a
    /// MultipartHttpPushUri, else downloaded by it from --serve-address. With neither, the
    /// update is refused unless --bmc-fetches-upstream is given.
    Apply {
        /// Never reset a running server; staged settings then apply at its next boot.
        #[arg(long)]
        no_reset: bool,
        /// Seconds to wait for staged settings to take effect after a reset.
        #[arg(long, default_value_t = 900.0)]
        settle_timeout: f64,
        /// Serve verified images to BMCs that can only download them (SimpleUpdate), on
        /// this address of this machine: an IP the BMCs reach (their management network),
        /// and a port (0: any free one). The server runs only while `apply` runs, serves only
        /// this apply's images, at URLs holding the SHA-256 and a random part, over HTTP, or
        /// HTTPS with --serve-tls-cert (the BMC checks no digest: over plain HTTP, keep the
        /// path between them trusted).
        #[arg(long, value_name = "IP:PORT")]
        serve_address: Option<SocketAddr>,
        /// Serve over HTTPS with this certificate (PEM chain) instead of plain HTTP; the BMCs
        /// must trust it (e.g. issued by a CA installed on them). Needs --serve-tls-key.
        #[arg(long, value_name = "FILE", requires_all = ["serve_address", "serve_tls_key"])]
        serve_tls_cert: Option<PathBuf>,
        /// Private key (PEM) of --serve-tls-cert.
        #[arg(long, value_name = "FILE", requires = "serve_tls_cert")]
        serve_tls_key: Option<PathBuf>,
        /// Let a BMC that takes no pushed image download the profile's image_url itself
        /// when --serve-address is not given (what cairn did before). The SHA-256 that
        /// cairn checks then does NOT cover what the BMC flashes: the URL may serve other
        /// bytes by the time the BMC fetches them. A warning is logged for each such update.
        #[arg(long)]
        bmc_fetches_upstream: bool,
        /// Directory of verified firmware images, one file per SHA-256
        /// [default: $XDG_CACHE_HOME/cairn/firmware, else ~/.cache/cairn/firmware].
        #[arg(long, value_name = "DIR")]
        image_cache: Option<PathBuf>,
    },
    /// Report drift from the baseline across a rack (exit 1 when any server drifts).
    Check,
}

fn choose(
    profiles: &[Profile],
    fixed: Option<&Profile>,
    inv: &cairn_hardware::bmc::Inventory,
) -> Result<Profile, BmcError> {
    if let Some(p) = fixed {
        return Ok(p.clone());
    }
    let found: Vec<&Profile> = profiles.iter().filter(|p| p.matches(inv)).collect();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(BmcError::Invalid(format!(
            "no firmware profile matches {} {} (use --profile)",
            inv.manufacturer.as_deref().unwrap_or("?"),
            inv.model.as_deref().unwrap_or("?")
        ))),
        many => Err(BmcError::Invalid(format!(
            "several profiles match: {} (use --profile)",
            many.iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn plan_line(p: &Plan) -> String {
    if p.is_empty() {
        return format!("{}: in baseline", p.profile);
    }
    let mut s = format!(
        "{}: {} BIOS change(s), {} firmware update(s){}",
        p.profile,
        p.changes.len(),
        p.updates.len(),
        if p.registry_checked {
            ""
        } else {
            " (no AttributeRegistry: checked against reported attributes)"
        }
    );
    for c in &p.changes {
        s.push_str(&format!(
            "\n    {} {} -> {}{}",
            c.attribute,
            c.current
                .as_ref()
                .map(|v| v.to_string())
                .unwrap_or_else(|| "(unset)".into()),
            c.desired,
            if c.pending { " (already staged)" } else { "" }
        ));
    }
    for u in &p.updates {
        s.push_str(&format!(
            "\n    {:?} firmware {} -> >= {} from {}",
            u.component,
            u.current.as_deref().unwrap_or("?"),
            u.minimum,
            u.image_url
        ));
    }
    for i in &p.invalid {
        s.push_str(&format!("\n    INVALID {i}"));
    }
    s
}

/// Opens the image cache (`--image-cache`, else the default) and starts the file server
/// when an address is given (HTTPS with `tls` = (certificate, key)): how `cairn firmware
/// apply` and `cairn rack provision` get images to BMCs. The caller stops the server.
pub async fn start_images(
    image_cache: Option<PathBuf>,
    serve_address: Option<SocketAddr>,
    tls: Option<&(PathBuf, PathBuf)>,
    upstream_allowed: bool,
) -> anyhow::Result<Images> {
    let cache = ImageCache::open(&image_cache.unwrap_or_else(default_cache_dir))?;
    let tls = tls.map(|(cert, key)| tls_config(cert, key)).transpose()?;
    let server = match serve_address {
        Some(address) => Some(Arc::new(
            ImageServer::start(address, ServeLimits::default(), tls).await?,
        )),
        None => None,
    };
    Ok(Images {
        cache: Arc::new(cache),
        server,
        upstream_allowed,
    })
}

impl FirmwareArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        let profiles = match load_all(self.profiles.as_deref()) {
            Ok(p) => Arc::new(p),
            Err(e) => {
                eprintln!("error: {}", cairn_api::error_chain(&e));
                return Ok(Exit::InvalidInput);
            }
        };
        let fixed = match &self.profile {
            Some(name) => match by_name(&profiles, name) {
                Ok(p) => Some(p.clone()),
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(Exit::InvalidInput);
                }
            },
            None => None,
        };
        // Per-server profile names from the inventory.
        let mut per_server = std::collections::BTreeMap::new();
        if let Some(path) = &self.connect.inventory
            && let Ok(rack) = cairn_hardware::inventory::Rack::load(path)
        {
            for s in &rack.servers {
                if let Some(name) = &s.firmware_profile {
                    match by_name(&profiles, name) {
                        Ok(p) => {
                            per_server.insert(s.name.clone(), p.clone());
                        }
                        Err(e) => {
                            eprintln!("error: server {}: {e}", s.name);
                            return Ok(Exit::InvalidInput);
                        }
                    }
                }
            }
        }
        let output = self.connect.output;
        // --profile, else the server's inventory entry, else by manufacturer and model.
        let pick = Arc::new(move |server: &str, inv: &cairn_hardware::bmc::Inventory| {
            choose(&profiles, fixed.as_ref().or(per_server.get(server)), inv)
        });
        match self.command {
            FirmwareCommand::Plan | FirmwareCommand::Check => {
                let check = matches!(self.command, FirmwareCommand::Check);
                let op: Operation<Plan> = {
                    let pick = pick.clone();
                    Arc::new(move |b: Arc<dyn Bmc>, server: String| {
                        let pick = pick.clone();
                        Box::pin(async move {
                            let inv = b.inventory().await?;
                            let profile = pick(&server, &inv)?;
                            read_plan(b.as_ref(), &profile).await
                        })
                    })
                };
                let outcomes = match self.connect.run(op).await {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(Exit::InvalidInput);
                    }
                };
                let exit = report(output, &outcomes, plan_line);
                let drift = outcomes.iter().any(|o| match &o.result {
                    OutcomeResult::Ok { result } => !result.is_empty(),
                    OutcomeResult::Err { .. } => true,
                });
                if output == OutputFormat::Table && check {
                    eprintln!(
                        "{}",
                        if drift {
                            "drift found"
                        } else {
                            "every server is in its baseline"
                        }
                    );
                }
                Ok(if check && drift { Exit::Failed } else { exit })
            }
            FirmwareCommand::Apply {
                no_reset,
                settle_timeout,
                serve_address,
                serve_tls_cert,
                serve_tls_key,
                bmc_fetches_upstream,
                image_cache,
            } => {
                let tls = serve_tls_cert.zip(serve_tls_key);
                let images = match start_images(
                    image_cache,
                    serve_address,
                    tls.as_ref(),
                    bmc_fetches_upstream,
                )
                .await
                {
                    Ok(i) => i,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return Ok(Exit::InvalidInput);
                    }
                };
                let server = images.server.clone();
                let options = ApplyOptions {
                    reset: !no_reset,
                    power_on: false,
                    settle_timeout: Duration::from_secs_f64(settle_timeout.max(1.0)),
                    images,
                };
                let op: Operation<crate::apply::Applied> = {
                    let pick = pick.clone();
                    Arc::new(move |b: Arc<dyn Bmc>, server: String| {
                        let (pick, options) = (pick.clone(), options.clone());
                        Box::pin(async move {
                            let inv = b.inventory().await?;
                            let profile = pick(&server, &inv)?;
                            apply(b.as_ref(), &profile, &options).await
                        })
                    })
                };
                let outcomes = self.connect.run(op).await;
                // The server lives exactly as long as the apply.
                if let Some(server) = &server {
                    server.stop().await;
                }
                let outcomes = match outcomes {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return Ok(Exit::InvalidInput);
                    }
                };
                Ok(report(output, &outcomes, |a| a.to_string()))
            }
        }
    }
}
