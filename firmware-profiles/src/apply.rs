//! Reading a server's state into a plan, and carrying a plan out through the `Bmc` trait:
//! stage BIOS settings, reset when the BMC needs it, wait until they take effect and verify,
//! then run firmware updates and verify the new versions. Each image is verified by SHA-256
//! into the local cache and the BMC gets exactly that copy (see [`delivery`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use cairn_hardware::bmc::{Bmc, BmcError, BmcResult, FirmwareTarget, PowerAction, PowerState};
use serde::Serialize;

use crate::image::{ImageCache, ImageError};
use crate::plan::{Plan, Update, plan, same_value, shown};
use crate::profile::Profile;
use crate::serve::ImageServer;

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
    /// Power on a server found off when staged settings need a boot, and verify them, rather
    /// than leave them pending until its next boot. Rack provisioning does: it boots the
    /// server next anyway, and a baseline it cannot verify must fail that server now.
    pub power_on: bool,
    /// How long to wait for staged settings to take effect.
    pub settle_timeout: Duration,
    /// Where firmware images come from and how they reach the BMC.
    pub images: Images,
}

/// How firmware images reach BMCs.
#[derive(Debug, Clone)]
pub struct Images {
    /// The verified copies.
    pub cache: Arc<ImageCache>,
    /// The file server for BMCs that must download (`--serve-address`).
    pub server: Option<Arc<ImageServer>>,
    /// Let such a BMC download the profile's `image_url` itself when there is no server
    /// (`--bmc-fetches-upstream`).
    pub upstream_allowed: bool,
}

/// How one image reaches one BMC, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// The verified bytes are pushed to the BMC's `MultipartHttpPushUri`.
    Pushed,
    /// The BMC downloads the verified copy from cairn's file server.
    Served,
    /// The BMC downloads the profile's `image_url` itself: the digest cairn checked does
    /// not cover what it flashes.
    Upstream,
}

/// Picks the delivery: a push when the BMC takes one, else cairn's server when it runs,
/// else the upstream URL only when the operator allowed it.
pub fn delivery(push_offered: bool, serving: bool, upstream_allowed: bool) -> BmcResult<Delivery> {
    match (push_offered, serving, upstream_allowed) {
        (true, _, _) => Ok(Delivery::Pushed),
        (false, true, _) => Ok(Delivery::Served),
        (false, false, true) => Ok(Delivery::Upstream),
        (false, false, false) => Err(BmcError::Invalid(
            "this BMC takes no pushed firmware image (no MultipartHttpPushUri), so it must download it: \
             pass --serve-address IP:PORT (`cairn rack provision`: --firmware-serve-address; an address of this machine the BMC reaches) to serve it the \
             verified copy, or --bmc-fetches-upstream to let it download the profile's image_url \
             unverified; nothing was updated"
                .into(),
        )),
    }
}

/// One firmware update done (and verified by version).
#[derive(Debug, Clone, Serialize)]
pub struct Updated {
    /// Which firmware.
    pub component: FirmwareTarget,
    /// Version before.
    pub from: Option<String>,
    /// The profile's minimum, now reached.
    pub minimum: String,
    /// SHA-256 of the image.
    pub sha256: String,
    /// How the image reached the BMC.
    pub delivery: Delivery,
}

impl std::fmt::Display for Updated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.delivery {
            Delivery::Pushed => "pushed verified image",
            Delivery::Served => "BMC downloaded the verified image from cairn",
            Delivery::Upstream => "BMC downloaded image_url itself, unverified",
        };
        write!(
            f,
            "{} {} -> >= {} ({how})",
            serde_json::to_value(self.component)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            self.from.as_deref().unwrap_or("?"),
            self.minimum
        )
    }
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
    pub updated: Vec<Updated>,
}

/// One line for people: what was staged, whether it was verified, what was updated.
impl std::fmt::Display for Applied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.plan.is_empty() {
            return write!(
                f,
                "{}: already in baseline, nothing changed",
                self.plan.profile
            );
        }
        write!(
            f,
            "{}: staged {} attribute(s){}{}",
            self.plan.profile,
            self.staged,
            if self.reset { ", reset" } else { "" },
            if self.verified {
                ", verified"
            } else {
                ", pending until next boot"
            }
        )?;
        if !self.updated.is_empty() {
            let done: Vec<String> = self.updated.iter().map(|u| u.to_string()).collect();
            write!(f, ", updated {}", done.join(", "))?;
        }
        Ok(())
    }
}

fn image_error(e: ImageError) -> BmcError {
    BmcError::Transport {
        doing: "preparing the firmware image".into(),
        source: Box::new(e),
    }
}

/// Gets the update's image verified into the cache and has the BMC flash exactly it.
async fn update(bmc: &dyn Bmc, u: &Update, images: &Images) -> BmcResult<Delivery> {
    let image = images
        .cache
        .get(&u.image_url, &u.sha256)
        .await
        .map_err(image_error)?;
    let how = delivery(
        bmc.accepts_firmware_push().await?,
        images.server.is_some(),
        images.upstream_allowed,
    )?;
    tracing::info!(component = ?u.component, sha256 = %image.sha256, delivery = ?how, "updating firmware");
    match (how, &images.server) {
        (Delivery::Pushed, _) => {
            image.still_verified().map_err(image_error)?;
            bmc.push_firmware(&image.path, u.component).await?;
        }
        (Delivery::Served, Some(server)) => {
            bmc.update_firmware(&server.offer(&image), u.component)
                .await?;
        }
        (Delivery::Served, None) => {
            return Err(BmcError::Invalid(
                "no image server is running to serve the verified image".into(),
            ));
        }
        (Delivery::Upstream, _) => {
            tracing::warn!(url = %crate::image::shown(&u.image_url), sha256 = %u.sha256,
                "the BMC downloads image_url itself: the SHA-256 checked by cairn does not cover what it flashes");
            bmc.update_firmware(&u.image_url, u.component).await?;
        }
    }
    Ok(how)
}

/// How the server boots so staged settings take effect: a reset when it runs, power on when
/// it is off and the caller asked for that; `None`: they wait for its next boot.
fn settle_action(options: &ApplyOptions, power: PowerState) -> Option<PowerAction> {
    match power {
        PowerState::On if options.reset => Some(PowerAction::Reset),
        PowerState::Off if options.power_on => Some(PowerAction::On),
        _ => None,
    }
}

/// The verify failure, naming each attribute still not in effect with both values, so the
/// operator knows which setting the firmware did not take.
fn not_in_effect(
    plan: &Plan,
    now: &cairn_hardware::bmc::BiosSettings,
    waited: Duration,
) -> BmcError {
    let (mut wanted, mut got) = (Vec::new(), Vec::new());
    for c in &plan.changes {
        let is = now.current.get(&c.attribute);
        if !is.is_some_and(|v| same_value(v, &c.desired)) {
            wanted.push(format!("{}={}", c.attribute, shown(&c.desired)));
            got.push(format!(
                "{}={}",
                c.attribute,
                is.map(shown).unwrap_or_else(|| "(unset)".into())
            ));
        }
    }
    BmcError::NotApplied {
        what: format!(
            "BIOS attributes not in effect {:.0}s after the boot that should apply them",
            waited.as_secs_f64()
        ),
        wanted: wanted.join(", "),
        got: got.join(", "),
    }
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
        } else if let Some(action) = settle_action(options, bmc.power_state().await?) {
            tracing::info!(profile = %profile.name, ?action, "booting to apply staged BIOS settings");
            bmc.power(action).await?;
            applied.reset = true;
            let start = Instant::now();
            loop {
                let now = bmc.bios().await?;
                if in_effect(&now) {
                    applied.verified = true;
                    break;
                }
                if start.elapsed() > options.settle_timeout {
                    return Err(not_in_effect(&plan, &now, start.elapsed()));
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        } else {
            tracing::info!(profile = %profile.name, "BIOS settings staged; they apply at the next boot");
        }
    }
    for u in &plan.updates {
        let how = update(bmc, u, &options.images).await?;
        let after = read_plan(bmc, profile).await?;
        if let Some(still) = after.updates.iter().find(|x| x.component == u.component) {
            return Err(BmcError::NotApplied {
                what: format!("{:?} firmware update", u.component),
                wanted: format!(">= {}", u.minimum),
                got: still.current.clone().unwrap_or_else(|| "unknown".into()),
            });
        }
        applied.updated.push(Updated {
            component: u.component,
            from: u.current.clone(),
            minimum: u.minimum.clone(),
            sha256: u.sha256.to_ascii_lowercase(),
            delivery: how,
        });
    }
    Ok(applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_settings_boot_a_running_server_and_an_off_one_only_when_asked() {
        let options = |reset, power_on| ApplyOptions {
            reset,
            power_on,
            settle_timeout: Duration::from_secs(1),
            images: Images {
                cache: Arc::new(ImageCache::open(&std::env::temp_dir()).unwrap()),
                server: None,
                upstream_allowed: false,
            },
        };
        use PowerAction::*;
        // (reset, power_on, power) -> action
        let table = [
            ((true, false, PowerState::On), Some(Reset)),
            ((false, true, PowerState::On), None),
            ((true, false, PowerState::Off), None),
            ((true, true, PowerState::Off), Some(On)),
            ((true, true, PowerState::Unknown), None),
        ];
        for ((reset, power_on, power), want) in table {
            assert_eq!(
                settle_action(&options(reset, power_on), power),
                want,
                "reset {reset}, power_on {power_on}, {power}"
            );
        }
    }

    #[test]
    fn a_verify_failure_names_each_attribute_not_in_effect_with_both_values() {
        let plan = Plan {
            profile: "p".into(),
            changes: ["ProcTurboMode", "NicBoot1"]
                .map(|a| crate::plan::Change {
                    attribute: a.into(),
                    current: None,
                    desired: "Disabled".into(),
                    pending: false,
                })
                .to_vec(),
            ..Plan::default()
        };
        let now = cairn_hardware::bmc::BiosSettings {
            current: [
                ("ProcTurboMode".to_owned(), "Enabled".into()),
                ("NicBoot1".to_owned(), "Disabled".into()),
            ]
            .into(),
            pending: Default::default(),
        };
        let e = not_in_effect(&plan, &now, Duration::from_secs(30)).to_string();
        assert_eq!(
            e,
            "BIOS attributes not in effect 30s after the boot that should apply them: \
             set ProcTurboMode=Disabled, BMC reads back ProcTurboMode=Enabled"
        );
    }

    #[test]
    fn delivery_prefers_push_then_served_then_upstream_only_when_allowed() {
        use Delivery::*;
        // (push offered, serving, upstream allowed) -> delivery
        let table = [
            ((true, true, true), Some(Pushed)),
            ((true, false, false), Some(Pushed)),
            ((false, true, true), Some(Served)),
            ((false, true, false), Some(Served)),
            ((false, false, true), Some(Upstream)),
            ((false, false, false), None),
        ];
        for ((push, serving, upstream), want) in table {
            let got = delivery(push, serving, upstream).ok();
            assert_eq!(
                got, want,
                "push {push}, serving {serving}, upstream {upstream}"
            );
        }
        let e = delivery(false, false, false).unwrap_err().to_string();
        assert!(
            e.contains("--serve-address") && e.contains("--bmc-fetches-upstream"),
            "{e}"
        );
    }
}
