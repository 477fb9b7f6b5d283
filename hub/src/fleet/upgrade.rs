//! Releases and upgrade campaigns (issue 9, hub side).
//!
//! A release is a signed update bundle (the `cairn-formats` format, verified here with
//! that crate against the hub's trusted release keys) kept in the hub's data directory and
//! served to appliances with HTTP Range. A campaign orders the appliances a selector picked
//! onto a release, canaries first, then batch after batch (or a rolling window), through the
//! `upgrade` field of their desired state; the nodes' heartbeat reports move it forward.
//!
//! The campaign driver ([`Fleet::drive_campaigns`]) is a singleton job: it runs in the hub
//! that holds the store's lease, so two hubs on one etcd never order twice. Every change it
//! makes is a compare-and-set on the campaign or appliance record, so an operator's pause or
//! a label change racing it simply makes it retry on its next pass.
//!
//! The decisions (the campaign's state, each member's verdict, who is ordered next, what an
//! abort withdraws) are pure functions in [`machine`]; this module reads and writes the
//! store around them. Diagram: `docs/dev/campaign-state-machine.md`.
//!
//! Fleet protection: a version an appliance rolled back from (or was interrupted writing,
//! or refused) is quarantined for that appliance and never ordered again automatically; an
//! appliance found on a version neither its order nor its previous version is flagged and
//! left alone. Both need an operator to clear them.
//!
//! Large batches: one pass writes the campaign and the appliance records it changes in one
//! transaction, and a transaction holds at most [`MAX_TXN_OPS`] ops (etcd's limit). So a
//! pass touches at most [`MEMBERS_PER_PASS`] appliances; the driver runs passes back to back
//! until a campaign needs no more, and an abort withdraws what is over the limit in the
//! driver's next passes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_api::hub::{CampaignAction, CampaignView, CreateCampaign};
use cairn_api::{ApplianceId, MaintenanceWindow, UpgradeOrder, UpgradePhase};
use sha2::{Digest, Sha256};

use super::{Attempt, Caller, Fleet, FleetError, Scope, encode, now, validate_name};
use crate::model::{
    Appliance, Campaign, CampaignMember, CampaignState, MemberState, Pacing, Release, Status, keys,
};
use crate::store::{Check, MAX_TXN_OPS, Op, StoreError};

mod machine;

use machine::{Action, Admission, Event, OnAbort, Outcome, Verdict};

/// Actor name of the campaign driver in the audit log and events.
const DRIVER: &str = "hub:campaign-driver";

/// Appliances one campaign transaction changes at most. Each costs up to three ops (its
/// record, an event, an audit entry); the campaign record and the driver's own audit
/// entries take the rest of [`MAX_TXN_OPS`].
const MEMBERS_PER_PASS: usize = (MAX_TXN_OPS - 8) / 3;

/// What one driver pass did.
#[derive(Debug, PartialEq, Eq)]
enum Pass {
    /// Nothing to write, or a racing change: the next pass starts again.
    Unchanged,
    /// Written; `more` when it stopped at [`MEMBERS_PER_PASS`] with work left.
    Wrote { more: bool },
}

/// Lays out members: the first `canaries` in batch 0, the rest by pacing.
fn batches(ids: Vec<ApplianceId>, canaries: u32, pacing: Pacing) -> Vec<CampaignMember> {
    let canaries = canaries as usize;
    let first = u32::from(canaries > 0);
    ids.into_iter()
        .enumerate()
        .map(|(i, appliance)| {
            let batch = if i < canaries {
                0
            } else {
                match pacing {
                    Pacing::BatchSize(n) => first + ((i - canaries) / n.max(1) as usize) as u32,
                    Pacing::MaxConcurrency(_) => first,
                }
            };
            CampaignMember {
                appliance,
                batch,
                state: MemberState::Pending,
                phase: None,
                reason: String::new(),
                from_version: String::new(),
                ordered_at: None,
                finished_at: None,
            }
        })
        .collect()
}

fn bundle_path(dir: &Path, version: &str) -> PathBuf {
    dir.join(format!("{version}.bundle"))
}

/// Release versions become file names and URL segments: keep them plain.
fn validate_version(v: &str) -> Result<(), FleetError> {
    let ok = !v.is_empty()
        && v.len() <= 64
        && !v.starts_with('.')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "release version {v:?}: 1-64 characters of a-z, A-Z, 0-9 and . - _ +, not starting with ."
        )))
    }
}

impl Fleet {
    // ---- releases ------------------------------------------------------------------

    /// The directory bundles live in.
    fn releases_dir(&self) -> Result<&Path, FleetError> {
        self.settings.releases_dir.as_deref().ok_or_else(|| {
            FleetError::Invalid("this hub has no releases directory configured".into())
        })
    }

    /// A fresh temporary path in the releases directory for an incoming bundle (same file
    /// system, so adding it is a rename).
    pub fn incoming_bundle_path(&self) -> Result<PathBuf, FleetError> {
        let dir = self.releases_dir()?;
        std::fs::create_dir_all(dir)
            .map_err(|e| FleetError::Invalid(format!("creating {}: {e}", dir.display())))?;
        Ok(dir.join(format!(".incoming-{}", super::random_hex(8))))
    }

    /// Adds a release from a bundle file already on the hub's disk (uploaded or fetched to
    /// `incoming`, which this consumes): checks the SHA-256 the operator gave, verifies the
    /// signature against the trusted release keys and every payload byte against the signed
    /// manifest, then records it. Refusals are audited with the reason.
    pub async fn add_release(
        &self,
        caller: &Caller,
        incoming: PathBuf,
        sha256: &str,
        source_url: Option<String>,
    ) -> Result<Release, FleetError> {
        let result = self
            .add_release_inner(caller, &incoming, sha256, source_url.clone())
            .await;
        let _ = std::fs::remove_file(&incoming);
        if let Err(e) = &result {
            let target = source_url.as_deref().unwrap_or("upload");
            self.audit(
                caller,
                "release.add",
                target,
                &format!("refused: {e}"),
                None,
            )
            .await?;
        }
        result
    }

    async fn add_release_inner(
        &self,
        caller: &Caller,
        incoming: &Path,
        sha256: &str,
        source_url: Option<String>,
    ) -> Result<Release, FleetError> {
        let want = sha256.trim().to_ascii_lowercase();
        if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(FleetError::Invalid(format!(
                "sha256 {sha256:?}: expected 64 hex digits"
            )));
        }
        let trust = self.settings.release_keys.clone();
        let path = incoming.to_owned();
        let (digest, size, verified) = tokio::task::spawn_blocking(move || {
            let mut file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            let size = file.metadata().map_err(|e| e.to_string())?.len();
            let mut hasher = Sha256::new();
            std::io::copy(&mut file, &mut hasher).map_err(|e| e.to_string())?;
            let digest = hex::encode(hasher.finalize());
            let verified = cairn_formats::bundle::verify(&path, &trust)
                .map_err(|e| cairn_api::error_chain(&e))?;
            Ok::<_, String>((digest, size, verified))
        })
        .await
        .map_err(|e| FleetError::Invalid(format!("verifying the bundle: {e}")))?
        .map_err(FleetError::BundleRefused)?;
        if digest != want {
            return Err(FleetError::BundleRefused(format!(
                "its SHA-256 is {digest}, not the {want} given"
            )));
        }
        let manifest = verified.manifest;
        validate_version(&manifest.version)?;
        let release = Release {
            version: manifest.version.clone(),
            architecture: manifest.architecture,
            compatible_from: manifest.compatible_from,
            size_bytes: size,
            sha256: digest,
            signing_key: verified.signer.fingerprint(),
            build_time: manifest.build_time,
            source_url,
            added_at: now(),
            added_by: caller.actor.clone(),
        };
        let key = format!("{}{}", keys::RELEASES, release.version);
        let dest = bundle_path(self.releases_dir()?, &release.version);
        if self.store.get(&key).await?.is_some() {
            return Err(FleetError::Conflict(format!(
                "release {} already exists; delete it first",
                release.version
            )));
        }
        std::fs::rename(incoming, &dest)
            .map_err(|e| FleetError::Invalid(format!("storing the bundle: {e}")))?;
        let audit = Self::audit_op(caller, "release.add", &release.version, "ok", None);
        if !self
            .store
            .txn(
                vec![Check::version(&key, 0)],
                vec![Op::put(&key, encode(&release)), audit],
            )
            .await?
        {
            return Err(FleetError::Conflict(format!(
                "release {} already exists",
                release.version
            )));
        }
        tracing::info!(version = %release.version, key = %release.signing_key, "release added");
        Ok(release)
    }

    /// Every release (viewer).
    pub async fn list_releases(&self) -> Result<Vec<Release>, FleetError> {
        Ok(self
            .list::<Release>(keys::RELEASES)
            .await?
            .into_iter()
            .map(|(_, r)| r)
            .collect())
    }

    /// One release (viewer, or an appliance fetching its bundle).
    pub async fn release(&self, version: &str) -> Result<Release, FleetError> {
        self.get::<Release>(&format!("{}{version}", keys::RELEASES))
            .await?
            .map(|(_, r)| r)
            .ok_or_else(|| FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::ReleaseUnknown,
                message: format!("no release {version:?}"),
            })
    }

    /// The bundle file of a release on this hub's disk.
    pub async fn release_bundle(&self, version: &str) -> Result<(Release, PathBuf), FleetError> {
        let release = self.release(version).await?;
        let path = bundle_path(self.releases_dir()?, version);
        if !path.exists() {
            return Err(FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::BundleNotOnThisHub,
                message: format!(
                    "the bundle of {version} is not on this hub's disk (added through another hub?)"
                ),
            });
        }
        Ok((release, path))
    }

    /// Deletes a release (admin); refused while a campaign that is not over uses it.
    pub async fn delete_release(&self, caller: &Caller, version: &str) -> Result<(), FleetError> {
        let key = format!("{}{version}", keys::RELEASES);
        let Some(v) = self.store.get(&key).await? else {
            return Err(FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::ReleaseUnknown,
                message: format!("no release {version:?}"),
            });
        };
        for (_, c) in self.list::<Campaign>(keys::CAMPAIGNS).await? {
            if c.release == version
                && !matches!(c.state, CampaignState::Completed | CampaignState::Aborted)
            {
                return Err(FleetError::Conflict(format!(
                    "campaign {} ({}) uses release {version}; abort it first",
                    c.name,
                    c.state.as_str()
                )));
            }
        }
        let audit = Self::audit_op(caller, "release.delete", version, "ok", None);
        if !self
            .store
            .txn(
                vec![Check::version(&key, v.version)],
                vec![Op::delete(&key), audit],
            )
            .await?
        {
            return Err(FleetError::Contended(key));
        }
        if let Ok(dir) = self.releases_dir() {
            let _ = std::fs::remove_file(bundle_path(dir, version));
        }
        Ok(())
    }

    /// Turns an order's hub-relative bundle path into the URL the node downloads from:
    /// under `--public-url` when set, else under `https://<authority>` (the address the
    /// node reached this hub at).
    pub fn absolute_bundle_url(&self, order: &mut UpgradeOrder, authority: Option<&str>) {
        if !order.bundle_url.starts_with('/') {
            return;
        }
        let base = match (&self.settings.public_url, authority) {
            (Some(url), _) => url.trim_end_matches('/').to_owned(),
            (None, Some(a)) => format!("https://{a}"),
            (None, None) => return,
        };
        order.bundle_url = format!("{base}{}", order.bundle_url);
    }

    // ---- campaigns -----------------------------------------------------------------

    /// Creates a campaign (operator): the selector is evaluated now; quarantined and flagged
    /// appliances are listed as skipped with the reason.
    pub async fn create_campaign(
        &self,
        caller: &Caller,
        req: CreateCampaign,
    ) -> Result<CampaignView, FleetError> {
        validate_name("campaign", &req.name)?;
        if let Some(w) = &req.window {
            MaintenanceWindow::parse(&format!("{}-{}", w.start, w.end))
                .map_err(FleetError::Invalid)?;
        }
        let pacing = match (req.batch_size, req.max_concurrency) {
            (Some(_), Some(_)) => {
                return Err(FleetError::Invalid(
                    "batch_size and max_concurrency exclude each other".into(),
                ));
            }
            (Some(0), _) | (_, Some(0)) => {
                return Err(FleetError::Invalid(
                    "batch_size / max_concurrency must be at least 1".into(),
                ));
            }
            (Some(n), None) => Pacing::BatchSize(n),
            (None, Some(n)) => Pacing::MaxConcurrency(n),
            (None, None) => Pacing::BatchSize(1),
        };
        // A scoped operator may only roll out to a site of its own.
        let mut selector = req.selector.clone();
        match (caller.scope(), &selector.site) {
            (Some(Scope::Site(scope)), None) => selector.site = Some(scope.to_owned()),
            (Some(Scope::Fleet), _) => {}
            (_, Some(s)) => caller.check_site(s)?,
            (_, None) => {
                return Err(FleetError::Forbidden(
                    "a tenant-scoped token's campaign names one of its sites".into(),
                ));
            }
        }
        let release = self.release(&req.release).await.map_err(|_| {
            FleetError::Invalid(format!("release {:?} does not exist", req.release))
        })?;
        let mut ids: Vec<Appliance> = self
            .list::<Appliance>(keys::APPLIANCES)
            .await?
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| crate::model::selects(&selector, a) && caller.sees(&a.site))
            .collect();
        if ids.is_empty() {
            return Err(FleetError::Invalid(
                "the selector matches no appliance".into(),
            ));
        }
        ids.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
        let sites: std::collections::BTreeSet<&str> = ids.iter().map(|a| a.site.as_str()).collect();
        let site =
            (sites.len() == 1).then(|| sites.into_iter().next().unwrap_or_default().to_owned());
        let mut members = batches(
            ids.iter().map(|a| a.id.clone()).collect(),
            req.canaries,
            pacing,
        );
        for (m, a) in members.iter_mut().zip(&ids) {
            if let Some(why) = a.quarantined.get(&release.version) {
                m.state = MemberState::Skipped;
                m.reason = format!(
                    "{} is quarantined on this appliance: {why}",
                    release.version
                );
            } else if let Some(flag) = &a.upgrade_flag {
                m.state = MemberState::Skipped;
                m.reason = format!("flagged: {flag}");
            }
        }
        let campaign = Campaign {
            name: req.name.clone(),
            release: release.version,
            selector,
            canaries: req.canaries,
            pacing,
            max_failures: req.max_failures,
            window: req.window,
            prestage: req.prestage,
            allow_downgrade: req.allow_downgrade,
            deadline_seconds: req.deadline_seconds,
            state: CampaignState::Created,
            state_reason: String::new(),
            members,
            created_at: now(),
            created_by: caller.actor.clone(),
            site,
        };
        let key = format!("{}{}", keys::CAMPAIGNS, campaign.name);
        let audit = Self::audit_op(
            caller,
            "campaign.create",
            &campaign.name,
            "ok",
            campaign.site.as_deref(),
        );
        if !self
            .store
            .txn(
                vec![Check::version(&key, 0)],
                vec![Op::put(&key, encode(&campaign)), audit],
            )
            .await?
        {
            return Err(FleetError::Conflict(format!(
                "campaign {} already exists",
                campaign.name
            )));
        }
        Ok(crate::views::campaign(&campaign))
    }

    fn campaign_visible(caller: &Caller, c: &Campaign) -> bool {
        match &c.site {
            Some(s) => caller.sees(s),
            None => caller.is_fleet_wide(),
        }
    }

    /// Every campaign in scope (viewer).
    pub async fn list_campaigns(&self, caller: &Caller) -> Result<Vec<CampaignView>, FleetError> {
        Ok(self
            .list::<Campaign>(keys::CAMPAIGNS)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .filter(|c| Self::campaign_visible(caller, c))
            .map(|c| crate::views::campaign(&c))
            .collect())
    }

    pub(crate) async fn campaign_in_scope(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<(u64, Campaign), FleetError> {
        let not_found = || FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::CampaignUnknown,
            message: format!("no campaign {name:?}"),
        };
        let (v, c): (_, Campaign) = self
            .get(&format!("{}{name}", keys::CAMPAIGNS))
            .await?
            .ok_or_else(not_found)?;
        if !Self::campaign_visible(caller, &c) {
            return Err(not_found());
        }
        Ok((v, c))
    }

    /// One campaign with progress (viewer).
    pub async fn show_campaign(
        &self,
        caller: &Caller,
        name: &str,
    ) -> Result<CampaignView, FleetError> {
        Ok(crate::views::campaign(
            &self.campaign_in_scope(caller, name).await?.1,
        ))
    }

    /// `start`, `pause`, `resume` or `abort` (operator).
    pub async fn campaign_action(
        &self,
        caller: &Caller,
        name: &str,
        action: &str,
    ) -> Result<CampaignView, FleetError> {
        self.cas(name, move || async move {
            let (version, mut c) = self.campaign_in_scope(caller, name).await?;
            let command = match action {
                "start" => CampaignAction::Start,
                "pause" => CampaignAction::Pause,
                "resume" => CampaignAction::Resume,
                "abort" => CampaignAction::Abort,
                _ => {
                    return Err(FleetError::Invalid(format!(
                        "unknown action {action:?} (start, pause, resume, abort)"
                    )));
                }
            };
            let event = Event::Operator {
                action: command,
                actor: &caller.actor,
            };
            let Outcome::Next {
                state,
                reason,
                actions,
            } = machine::next(c.state, c.max_failures, event)
                .map_err(|e| FleetError::Conflict(format!("campaign {name} {e}")))?
            else {
                return Ok(Attempt::Done(crate::views::campaign(&c)));
            };
            c.state = state;
            c.state_reason = reason;
            let mut ops = vec![];
            let mut checks = vec![];
            if actions.contains(&Action::WithdrawUntouched) {
                let mut withdrawn = 0;
                for m in c.members.iter_mut() {
                    match machine::on_abort(m) {
                        OnAbort::SkipPending => {
                            m.state = MemberState::Skipped;
                            m.reason = "campaign aborted".into();
                        }
                        // Over one transaction's worth: the driver withdraws the rest.
                        OnAbort::Withdraw if withdrawn >= MEMBERS_PER_PASS => {}
                        OnAbort::Withdraw => {
                            withdrawn += 1;
                            let (ak, av, a) = self.withdraw_order(&m.appliance, &c.name).await?;
                            if let Some(a) = a {
                                checks.push(Check::version(&ak, av));
                                ops.push(Op::put(&ak, encode(&a)));
                            }
                            m.state = MemberState::Skipped;
                            m.reason = "campaign aborted before the node started writing".into();
                            m.finished_at = Some(now());
                        }
                        OnAbort::Keep => {}
                    }
                }
            }
            let key = format!("{}{name}", keys::CAMPAIGNS);
            checks.push(Check::version(&key, version));
            ops.push(Op::put(&key, encode(&c)));
            ops.push(Self::audit_op(
                caller,
                &format!("campaign.{action}"),
                name,
                "ok",
                c.site.as_deref(),
            ));
            Ok(Attempt::Write {
                checks,
                ops,
                then: crate::views::campaign(&c),
            })
        })
        .await
    }

    /// The appliance record with this campaign's order removed (and a new generation), or
    /// `None` when it carries no order of this campaign.
    async fn withdraw_order(
        &self,
        id: &ApplianceId,
        campaign: &str,
    ) -> Result<(String, u64, Option<Appliance>), FleetError> {
        let key = format!("{}{id}", keys::APPLIANCES);
        let Some((v, mut a)) = self.get::<Appliance>(&key).await? else {
            return Ok((key, 0, None));
        };
        if a.desired
            .upgrade
            .as_ref()
            .is_none_or(|o| o.campaign != campaign)
        {
            return Ok((key, v, None));
        }
        a.desired.upgrade = None;
        a.desired.generation += 1;
        Ok((key, v, Some(a)))
    }

    /// Clears a quarantined version (`Some`) or the unexpected-version flag (`None`) of an
    /// appliance (operator, in scope).
    pub async fn clear_upgrade_protection(
        &self,
        caller: &Caller,
        id: &str,
        version: Option<&str>,
    ) -> Result<Appliance, FleetError> {
        self.cas(id, move || async move {
            let (v, mut a) = self.appliance_in_scope(caller, id).await?;
            let (action, target) = match version {
                Some(ver) => {
                    if a.quarantined.remove(ver).is_none() {
                        return Err(FleetError::NotFound {
                            code: cairn_api::hub::ErrorCode::NotQuarantined,
                            message: format!("{ver} is not quarantined on {id}"),
                        });
                    }
                    ("appliance.quarantine.clear", format!("{id}/{ver}"))
                }
                None => {
                    if a.upgrade_flag.take().is_none() {
                        return Err(FleetError::NotFound {
                            code: cairn_api::hub::ErrorCode::NotFlagged,
                            message: format!("{id} carries no upgrade flag"),
                        });
                    }
                    ("appliance.upgrade-flag.clear", id.to_owned())
                }
            };
            let key = format!("{}{id}", keys::APPLIANCES);
            let audit = Self::audit_op(caller, action, &target, "ok", Some(&a.site));
            Ok(Attempt::Write {
                checks: vec![Check::version(&key, v)],
                ops: vec![Op::put(&key, encode(&a)), audit],
                then: a,
            })
        })
        .await
    }

    // ---- the driver ----------------------------------------------------------------

    /// One pass of the campaign driver (leader only): records what ordered members
    /// reported, quarantines and flags, pauses on too many failures, orders the next
    /// members, completes. Returns how many campaigns changed.
    pub async fn drive_campaigns(&self) -> Result<usize, FleetError> {
        let mut changed = 0;
        for (version, c) in self.list::<Campaign>(keys::CAMPAIGNS).await? {
            if matches!(c.state, CampaignState::Created | CampaignState::Completed) {
                continue;
            }
            if c.state == CampaignState::Aborted
                && !c.members.iter().any(|m| m.state == MemberState::Ordered)
            {
                continue;
            }
            let key = format!("{}{}", keys::CAMPAIGNS, c.name);
            let (mut version, mut c) = (version, c);
            // Passes back to back while one stopped at the transaction limit.
            loop {
                match self.drive_one(version, c).await {
                    Ok(Pass::Wrote { more }) => {
                        changed += 1;
                        if !more {
                            break;
                        }
                        match self.get::<Campaign>(&key).await? {
                            Some(next) => (version, c) = next,
                            None => break,
                        }
                    }
                    Ok(Pass::Unchanged) => break,
                    // The rest of the pass would be refused too: stop it.
                    Err(e @ FleetError::Store(StoreError::NotLeader)) => return Err(e),
                    Err(e) => {
                        tracing::warn!(error = %e, "campaign pass failed");
                        break;
                    }
                }
            }
        }
        Ok(changed)
    }

    async fn drive_one(&self, version: u64, mut c: Campaign) -> Result<Pass, FleetError> {
        let driver = Caller {
            actor: DRIVER.into(),
            source: self.settings.hub_name.clone(),
            ..Default::default()
        };
        let before = c.clone();
        let at = now();
        // Appliance records to write with the campaign, keyed by appliance key.
        let mut writes: BTreeMap<String, (u64, Appliance)> = BTreeMap::new();
        let mut ops: Vec<Op> = Vec::new();
        let release = self.release(&c.release).await.ok();
        // Appliances this pass changes, against MEMBERS_PER_PASS; `more` once it is reached.
        let mut touched = 0;
        let mut more = false;

        // 1. Record what ordered members reported (and withdraw the orders an abort left
        // over the transaction limit).
        for i in 0..c.members.len() {
            if c.members[i].state != MemberState::Ordered {
                continue;
            }
            let id = c.members[i].appliance.clone();
            let akey = format!("{}{id}", keys::APPLIANCES);
            let Some((av, a)) = self.get::<Appliance>(&akey).await? else {
                let m = &mut c.members[i];
                m.state = MemberState::Failed;
                m.reason = "appliance deleted".into();
                m.finished_at = Some(at);
                continue;
            };
            let status = self
                .get::<Status>(&format!("{}{id}", keys::STATUS))
                .await?
                .map(|(_, s)| s);
            let withdraw = c.state == CampaignState::Aborted
                && machine::on_abort(&c.members[i]) == OnAbort::Withdraw;
            let verdict = machine::judge(&c, &c.members[i], status.as_ref(), at);
            let first_seen = machine::first_seen_version(&c, &c.members[i], status.as_ref());
            if withdraw || !matches!(verdict, Verdict::Progress(_)) {
                if touched >= MEMBERS_PER_PASS {
                    more = true;
                    continue;
                }
                touched += 1;
            }
            let entry = writes.entry(akey).or_insert((av, a));
            let a = &mut entry.1;
            let m = &mut c.members[i];
            let finish = |m: &mut CampaignMember, a: &mut Appliance, state, reason: String| {
                m.state = state;
                m.reason = reason;
                m.finished_at = Some(at);
                if a.desired
                    .upgrade
                    .as_ref()
                    .is_some_and(|o| o.campaign == c.name)
                {
                    a.desired.upgrade = None;
                    a.desired.generation += 1;
                }
            };
            if withdraw {
                finish(
                    m,
                    a,
                    MemberState::Skipped,
                    "campaign aborted before the node started writing".into(),
                );
                continue;
            }
            match verdict {
                Verdict::Progress(phase) => {
                    m.phase = phase;
                    if let Some(v) = first_seen {
                        m.from_version = v;
                    }
                }
                Verdict::Overdue { phase, limit } => {
                    m.phase = phase;
                    if let Some(v) = first_seen {
                        m.from_version = v;
                    }
                    finish(
                        m,
                        a,
                        MemberState::Failed,
                        format!("no result within the {limit}s deadline"),
                    );
                    ops.push(self.event_op(
                        a,
                        "upgrade-failed",
                        format!("{}: {}", c.name, m.reason),
                    ));
                }
                Verdict::Committed => {
                    m.phase = Some(UpgradePhase::Committed);
                    finish(m, a, MemberState::Committed, String::new());
                    ops.push(self.event_op(
                        a,
                        "upgrade-committed",
                        format!("{} committed {}", c.name, c.release),
                    ));
                }
                Verdict::Failed { reason, quarantine } => {
                    m.phase = status
                        .as_ref()
                        .and_then(|s| s.status.upgrade.as_ref())
                        .map(|r| r.phase);
                    finish(m, a, MemberState::Failed, reason.clone());
                    ops.push(self.event_op(a, "upgrade-failed", format!("{}: {reason}", c.name)));
                    if quarantine {
                        a.quarantined.insert(
                            c.release.clone(),
                            format!("{} (campaign {})", reason, c.name),
                        );
                        ops.push(Self::audit_op(
                            &driver,
                            "appliance.quarantine",
                            &format!("{}/{}", a.id, c.release),
                            &reason,
                            Some(&a.site),
                        ));
                        tracing::warn!(appliance = %a.id, version = %c.release, %reason, "version quarantined");
                    }
                }
                Verdict::Unexpected(why) => {
                    finish(
                        m,
                        a,
                        MemberState::Failed,
                        format!("unexpected version: {why}"),
                    );
                    a.upgrade_flag = Some(why.clone());
                    ops.push(self.event_op(a, "unexpected-version", why.clone()));
                    ops.push(Self::audit_op(
                        &driver,
                        "appliance.upgrade-flag",
                        a.id.as_str(),
                        &why,
                        Some(&a.site),
                    ));
                    tracing::warn!(appliance = %a.id, %why, "appliance on an unexpected version");
                }
            }
        }

        // 2. Pause on too many failures, or order the next members.
        let event = Event::Judged {
            failures: c.failures(),
        };
        let order_next = Self::driver_event(&driver, &mut c, event, &mut ops);

        // 3. Order the next members.
        if order_next {
            for i in machine::to_order(&c) {
                if touched >= MEMBERS_PER_PASS {
                    more = true;
                    break;
                }
                touched += 1;
                let id = c.members[i].appliance.clone();
                let akey = format!("{}{id}", keys::APPLIANCES);
                if !writes.contains_key(&akey)
                    && let Some(found) = self.get::<Appliance>(&akey).await?
                {
                    writes.insert(akey.clone(), found);
                }
                let status = self
                    .get::<Status>(&format!("{}{id}", keys::STATUS))
                    .await?
                    .map(|(_, s)| s);
                let running = status
                    .as_ref()
                    .map(|s| s.status.os_version.clone())
                    .unwrap_or_default();
                let appliance = writes.get_mut(&akey).map(|(_, a)| a);
                let admission =
                    machine::admit(&c, appliance.as_deref(), &running, release.as_ref());
                let m = &mut c.members[i];
                match admission {
                    Admission::Skip(reason) => {
                        m.state = MemberState::Skipped;
                        m.reason = reason;
                    }
                    Admission::Order(order) => {
                        let Some(a) = appliance else { continue };
                        ops.push(self.event_op(
                            a,
                            "upgrade-ordered",
                            format!("{}: {running} -> {}", c.name, order.version),
                        ));
                        a.desired.upgrade = Some(*order);
                        a.desired.generation += 1;
                        m.state = MemberState::Ordered;
                        m.phase = None;
                        m.from_version = running;
                        m.ordered_at = Some(at);
                    }
                }
            }
        }

        // 4. Complete.
        let event = Event::Ordered {
            all_final: c.members.iter().all(|m| m.state.is_final()),
            failures: c.failures(),
        };
        Self::driver_event(&driver, &mut c, event, &mut ops);

        if c == before && ops.is_empty() {
            return Ok(Pass::Unchanged);
        }
        let key = format!("{}{}", keys::CAMPAIGNS, c.name);
        let mut checks = vec![Check::version(&key, version)];
        ops.push(Op::put(&key, encode(&c)));
        for (akey, (av, a)) in writes {
            let original: Option<Appliance> = self.get::<Appliance>(&akey).await?.map(|(_, a)| a);
            if original.as_ref() == Some(&a) {
                continue;
            }
            checks.push(Check::version(&akey, av));
            ops.push(Op::put(&akey, encode(&a)));
        }
        // A failed check (an operator paused, a heartbeat changed a VTEP) writes nothing;
        // the next pass starts again from the stored records.
        Ok(if self.store.txn(checks, ops).await? {
            Pass::Wrote { more }
        } else {
            Pass::Unchanged
        })
    }

    /// Feeds a driver event to the campaign's machine: takes the new state and audits the
    /// change as the driver. Returns whether the next members are to be ordered.
    fn driver_event(
        driver: &Caller,
        c: &mut Campaign,
        event: Event<'_>,
        ops: &mut Vec<Op>,
    ) -> bool {
        let Ok(Outcome::Next {
            state,
            reason,
            actions,
        }) = machine::next(c.state, c.max_failures, event)
        else {
            return false;
        };
        c.state = state;
        c.state_reason = reason;
        let mut order_next = false;
        for action in actions {
            match action {
                Action::OrderNext => order_next = true,
                Action::Audit { action, outcome } => {
                    if c.state == CampaignState::Paused {
                        tracing::warn!(campaign = %c.name, %outcome, "campaign paused itself");
                    }
                    ops.push(Self::audit_op(
                        driver,
                        action,
                        &c.name,
                        &outcome,
                        c.site.as_deref(),
                    ));
                }
                // Only an operator aborts.
                Action::WithdrawUntouched => {}
            }
        }
        order_next
    }

    /// Campaigns by state and campaign members by state, for metrics.
    pub async fn campaign_counts(
        &self,
    ) -> Result<(BTreeMap<String, u64>, BTreeMap<String, u64>), FleetError> {
        let mut campaigns = BTreeMap::new();
        let mut members = BTreeMap::new();
        for (_, c) in self.list::<Campaign>(keys::CAMPAIGNS).await? {
            *campaigns.entry(c.state.as_str().to_owned()).or_insert(0) += 1;
            if matches!(c.state, CampaignState::Running | CampaignState::Paused) {
                for m in &c.members {
                    *members.entry(m.state.as_str().to_owned()).or_insert(0) += 1;
                }
            }
        }
        Ok((campaigns, members))
    }
}

#[cfg(test)]
mod tests;
