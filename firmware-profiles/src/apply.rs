//! Reading a server's state into a plan, and carrying a plan out through the `Bmc` trait:
//! stage BIOS settings, reset when the BMC needs it, wait until they take effect and verify,
//! then run firmware updates (image checked by SHA-256 first) and verify the new versions.

use std::time::{Duration, Instant};

use cairn_hardware::bmc::{Bmc, BmcError, BmcResult, PowerAction, PowerState};
use serde::Serialize;

use crate::plan::{Plan, plan, same_value};
use crate::profile::Profile;

/// Reads BIOS settings, the AttributeRegistry (when offered) and firmware versions, and plans.
pub async fn read_plan(bmc: &dyn Bmc, profile: &Profile) -> BmcResult<Plan> {
    let bios = bmc.bios().await?;
    let registry = match bmc.bios_registry().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "AttributeRegistry unreadable; validating against reported attributes");
            None
        }
    };
    let firmware = match bmc.firmware().await {
        Ok(f) => f,
        Err(BmcError::Unsupported { .. }) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(plan(profile, &bios, registry.as_deref(), &firmware))
}

/// Options of `apply`.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Reset a powered-on server when staged settings need it.
    pub reset: bool,
    /// How long to wait for staged settings to take effect.
    pub settle_timeout: Duration,
}

/// What `apply` did on one server.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    /// The plan it started from.
    pub plan: Plan,
    /// Attributes staged now.
    pub staged: usize,
    /// Whether it reset the server.
    pub reset: bool,
    /// BIOS settings verified in effect (false: staged, waiting for a reset).
    pub verified: bool,
    /// Firmware components updated (and verified).
    pub updated: Vec<String>,
}

/// Downloads `url` and checks its SHA-256; the BMC fetches the same URL afterwards.
pub async fn check_image(url: &str, sha256: &str) -> BmcResult<()> {
    let config = cairn_hardware::tls::client_config(&cairn_hardware::tls::Trust::System, "")
        .map_err(|e| BmcError::Invalid(e.to_string()))?;
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(600))
        .build()
        .map_err(|e| BmcError::Transport {
            doing: "building HTTP client".into(),
            source: Box::new(e),
        })?;
    let doing = format!("downloading firmware image {url}");
    let mut resp = http
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| BmcError::Transport {
            doing: doing.clone(),
            source: Box::new(e),
        })?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    while let Some(chunk) = resp.chunk().await.map_err(|e| BmcError::Transport {
        doing: doing.clone(),
        source: Box::new(e),
    })? {
        ctx.update(&chunk);
    }
    let got = hex::encode(ctx.finish());
    if !got.eq_ignore_ascii_case(sha256) {
        return Err(BmcError::NotApplied {
            what: format!("SHA-256 of {url}"),
            wanted: sha256.to_owned(),
            got,
        });
    }
    Ok(())
}

/// Applies a profile. A second run on an applied server changes nothing.
pub async fn apply(bmc: &dyn Bmc, profile: &Profile, options: &ApplyOptions) -> BmcResult<Applied> {
    let plan = read_plan(bmc, profile).await?;
    if !plan.invalid.is_empty() {
        return Err(BmcError::Invalid(format!(
            "profile {} has values this BMC refuses (nothing was changed): {}",
            profile.name,
            plan.invalid.join("; ")
        )));
    }
    let stage = plan.to_stage();
    let mut applied = Applied {
        staged: stage.len(),
        plan: plan.clone(),
        reset: false,
        verified: plan.changes.is_empty(),
        updated: Vec::new(),
    };
    if !stage.is_empty() {
        bmc.stage_bios(&stage).await?;
    }
    if !plan.changes.is_empty() {
        let in_effect = |b: &cairn_hardware::bmc::BiosSettings| {
            plan.changes.iter().all(|c| {
                b.current
                    .get(&c.attribute)
                    .is_some_and(|v| same_value(v, &c.desired))
            })
        };
        let now = bmc.bios().await?;
        if in_effect(&now) {
            applied.verified = true;
        } else if options.reset && bmc.power_state().await? == PowerState::On {
            tracing::info!(profile = %profile.name, "resetting to apply staged BIOS settings");
            bmc.power(PowerAction::Reset).await?;
            applied.reset = true;
            let start = Instant::now();
            loop {
                if in_effect(&bmc.bios().await?) {
                    applied.verified = true;
                    break;
                }
                if start.elapsed() > options.settle_timeout {
                    return Err(BmcError::Timeout {
                        doing: "waiting for staged BIOS settings to take effect after reset".into(),
                        seconds: start.elapsed().as_secs_f64(),
                    });
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        } else {
            tracing::info!(profile = %profile.name, "BIOS settings staged; they apply at the next boot");
        }
    }
    for u in &plan.updates {
        check_image(&u.image_url, &u.sha256).await?;
        bmc.update_firmware(&u.image_url, u.component).await?;
        let after = read_plan(bmc, profile).await?;
        if let Some(still) = after.updates.iter().find(|x| x.component == u.component) {
            return Err(BmcError::NotApplied {
                what: format!("{:?} firmware update", u.component),
                wanted: format!(">= {}", u.minimum),
                got: still.current.clone().unwrap_or_else(|| "unknown".into()),
            });
        }
        applied.updated.push(
            format!(
                "{:?} {} -> >= {}",
                u.component,
                u.current.as_deref().unwrap_or("?"),
                u.minimum
            )
            .to_lowercase(),
        );
    }
    Ok(applied)
}
