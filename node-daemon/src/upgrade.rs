//! A/B upgrades on the node (issue 9), driven by `DesiredState.upgrade`.
//!
//! One order at a time moves through the phases of [`UpgradePhase`]; the record of where it
//! is lives in `<data_dir>/state.json` (replaced atomically), so every step survives a
//! restart or a power cut:
//!
//! 1. download the bundle with HTTP Range into `<sha256>.partial` (resumable, rate-capped),
//!    check size and SHA-256, keep it as `<sha256>.bundle`;
//! 2. verify it completely against the node's own trust store (signature, then every payload
//!    byte) and check version rules — before a single byte reaches the slot;
//! 3. inside the window: stream the root image into the inactive slot (verified again on the
//!    way), run the drain hook, record "rebooting", set GRUB to try the new slot once
//!    (`cairn_try`, `cairn_tries`) and reboot;
//! 4. after boot ([`Upgrader::at_start`]): on the new slot, health checks must pass within
//!    the deadline ([`Upgrader::health_round`]) to commit (`cairn_slot`); otherwise GRUB is
//!    told to boot the old slot and the node reboots. On the old slot, `cairn_rolled_back`
//!    says the new one did not boot; a record still in "writing" means the write was
//!    interrupted, and the half-written slot was never activated.
//!
//! A final report (committed, rolled back, refused, ...) stays until another order arrives:
//! the same order is never retried by the node itself.
//!
//! The decisions are the pure state machine of [`machine`] (diagram:
//! `docs/dev/upgrade-state-machine.md`); the [`Upgrader`] feeds it what it observes and runs
//! the actions it returns through the small traits of [`effects`] (boot loader, slots,
//! fetcher, health probes, clock). The record is persisted before every step that writes the
//! slot or arms GRUB, and a failure to persist it fails the upgrade before that step.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_api::{MaintenanceWindow, UpgradeOrder, UpgradePhase, UpgradeReport};
use cairn_formats::bundle;
use cairn_formats::fsio::atomic_write;
use cairn_formats::keys::{PublicKey, TrustStore};
use serde::{Deserialize, Serialize};

use crate::config::UpgradeSettings;

pub mod effects;
pub mod machine;

pub use effects::write_slot;
use effects::{
    BootLoader, Clock, Fetcher, Grub, HealthProbes, Https, Probes, SlotDevice, Slots, SystemClock,
    run_command,
};
use machine::{Action, Event, Health, Outcome, Pass, State};

/// Most log lines kept in a report.
const MAX_LOG_LINES: usize = 40;

/// An A/B slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// `root-a`.
    A,
    /// `root-b`.
    B,
}

impl Slot {
    /// The letter GRUB and the kernel command line use.
    pub fn letter(self) -> &'static str {
        match self {
            Self::A => "a",
            Self::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Self {
        match self {
            Self::A => Self::B,
            Self::B => Self::A,
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "a" => Some(Self::A),
            "b" => Some(Self::B),
            _ => None,
        }
    }
}

/// The slot the running system booted from: `cairn.slot=` on the kernel command line.
pub fn booted_slot(cmdline: &str) -> Option<Slot> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix("cairn.slot="))
        .and_then(Slot::parse)
}

/// The slot an operator's rollback boots: the other one, when the upgrade record shows it
/// holds a committed release. Only a committed upgrade says so (the slot it came from ran
/// the release before, and the booted one committed); with no record the other slot was
/// never written, and after a rollback, a failure or an interrupted write it holds a release
/// that never committed. An upgrade under way is left to finish. The error says why, for
/// the operator.
pub fn rollback_target(
    booted: Option<Slot>,
    report: Option<&UpgradeReport>,
) -> Result<Slot, String> {
    use UpgradePhase as P;
    let Some(booted) = booted else {
        return Err(
            "the booted slot is unknown (no cairn.slot= on the kernel command line): \
                    this appliance does not boot from A/B slots"
                .into(),
        );
    };
    let other = booted.other();
    let Some(report) = report else {
        return Err(format!(
            "slot {} was never written by an upgrade: there is no release to roll back to",
            other.letter()
        ));
    };
    match report.phase {
        P::Committed => Ok(other),
        P::Waiting | P::Downloading | P::Staged | P::Writing | P::Rebooting | P::Verifying => {
            Err(format!(
                "an upgrade to {} is under way ({:?}): let it finish (or stop its campaign), \
                 then roll back",
                report.version, report.phase
            ))
        }
        P::RolledBack | P::Interrupted | P::Refused | P::Failed => Err(format!(
            "the last upgrade (to {}) ended {:?}, so slot {} holds no committed release: \
             nothing to roll back to",
            report.version,
            report.phase,
            other.letter()
        )),
    }
}

fn minutes(text: &str) -> Option<u32> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// Whether local time `now` (minutes after midnight) is inside `window`; a window whose end
/// is before its start spans midnight. An unreadable window is never open (and says why).
pub fn in_window(window: &MaintenanceWindow, now_minutes: u32) -> Result<bool, String> {
    let (Some(start), Some(end)) = (minutes(&window.start), minutes(&window.end)) else {
        return Err(format!(
            "maintenance window {:?}-{:?} is not HH:MM-HH:MM",
            window.start, window.end
        ));
    };
    Ok(if start <= end {
        start <= now_minutes && now_minutes < end
    } else {
        now_minutes >= start || now_minutes < end
    })
}

/// The appliance's UTC offset now: configured, else the local time zone as libc sees it
/// (`date +%z` reads /etc/localtime with its daylight-saving rules; the time crate refuses
/// to ask libc once the process has more than one thread).
async fn local_offset(fixed: Option<time::UtcOffset>) -> time::UtcOffset {
    if let Some(o) = fixed {
        return o;
    }
    let out = tokio::process::Command::new("date")
        .arg("+%z")
        .output()
        .await
        .ok();
    out.and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).trim().to_owned();
        time::UtcOffset::parse(
            &text,
            time::macros::format_description!("[offset_hour][offset_minute]"),
        )
        .ok()
    })
    .unwrap_or(time::UtcOffset::UTC)
}

/// What is kept on disk about the current order.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    order: UpgradeOrder,
    report: UpgradeReport,
    /// The slot being written or tried.
    #[serde(default)]
    target: Option<Slot>,
    /// The version that ran when the order arrived.
    #[serde(default)]
    from_version: String,
}

fn same_order(a: &UpgradeOrder, b: &UpgradeOrder) -> bool {
    a.campaign == b.campaign && a.version == b.version && a.sha256 == b.sha256
}

/// Why a step stopped; decides the phase reported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The bundle or order is not acceptable; nothing was written.
    #[error("{0}")]
    Refused(String),
    /// Something failed; the running system is unchanged.
    #[error("{0}")]
    Failed(String),
    /// Worth retrying later as is (network, hub down).
    #[error("{0}")]
    Retry(String),
}

/// The current report, shared between the upgrade task and whoever reports it.
#[derive(Debug, Clone, Default)]
pub struct SharedReport(std::sync::Arc<std::sync::Mutex<Option<UpgradeReport>>>);

impl SharedReport {
    fn set(&self, report: Option<UpgradeReport>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = report;
    }

    /// The latest report.
    pub fn get(&self) -> Option<UpgradeReport> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What the upgrade task is given by the daemon: the order, the TLS identity to download
/// with, and what the health checks need.
#[derive(Debug, Clone, Default)]
pub struct UpgradeInput {
    /// The desired state's order.
    pub order: Option<UpgradeOrder>,
    /// TLS for downloads.
    pub tls: Option<rustls::ClientConfig>,
    /// Health inputs.
    pub health: HealthInputs,
}

/// The upgrade task of `cairn-node run`: classifies the boot, then follows the daemon's input,
/// re-checking every `period` (health checks more often).
pub async fn run_task(
    mut upgrader: Upgrader,
    mut input: tokio::sync::watch::Receiver<UpgradeInput>,
) {
    upgrader.at_start().await;
    loop {
        let current = input.borrow_and_update().clone();
        if let Some(tls) = current.tls {
            upgrader.set_tls(tls);
        }
        let wait = if upgrader.verifying() {
            upgrader.health_round(&current.health).await;
            Duration::from_secs(2)
        } else {
            match upgrader.drive(current.order.as_ref()).await {
                Err(StepError::Retry(_)) => Duration::from_secs(30),
                _ => Duration::from_secs(60),
            }
        };
        if upgrader.verifying() {
            // Verification just started: check right away.
            continue_soon(&mut input, Duration::from_secs(1)).await;
            continue;
        }
        continue_soon(&mut input, wait).await;
    }
}

async fn continue_soon(input: &mut tokio::sync::watch::Receiver<UpgradeInput>, wait: Duration) {
    tokio::select! {
        changed = input.changed() => {
            if changed.is_err() {
                // The daemon is gone; nothing more to do.
                std::future::pending::<()>().await;
            }
        }
        () = tokio::time::sleep(wait) => {}
    }
}

/// What the daemon knows that the health checks need.
#[derive(Debug, Clone, Default)]
pub struct HealthInputs {
    /// The host network was applied.
    pub network_applied: bool,
    /// A heartbeat reached the hub since start.
    pub hub_reached: bool,
    /// The kubelet unit's state, when the node runs one: `Some(true)` active.
    pub kubelet_active: Option<bool>,
}

/// The effects an [`Upgrader`] acts through.
struct Effects {
    boot: Arc<dyn BootLoader>,
    slots: Arc<dyn SlotDevice>,
    fetcher: Arc<dyn Fetcher>,
    probes: Arc<dyn HealthProbes>,
    clock: Arc<dyn Clock>,
}

/// The upgrade engine for one node: holds the record and the [`State`] it stands for, feeds
/// events to [`machine::next`] and runs the actions it returns.
pub struct Upgrader {
    settings: UpgradeSettings,
    running_version: String,
    record: Option<Record>,
    state: State,
    /// The report as others see it (heartbeats, local API), updated as work progresses.
    view: SharedReport,
    /// TLS for bundle downloads (the hub's CA, the node's client certificate).
    tls: Option<rustls::ClientConfig>,
    effects: Effects,
}

impl Upgrader {
    /// Loads the record of the current order, if any; `running_version` is the version of
    /// the running system.
    pub fn new(settings: UpgradeSettings, running_version: String) -> Self {
        let mut record: Option<Record> = std::fs::read(settings.data_dir.join("state.json"))
            .ok()
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "the upgrade record is unreadable; ignoring it");
                    None
                }
            });
        let state = record.as_mut().map_or(State::Idle, |r| {
            let state = State::from_record(r.report.phase, r.target);
            if state.phase() != Some(r.report.phase) {
                // A slot-bound phase without its slot: nothing can be known about the slots.
                r.report.phase = UpgradePhase::Failed;
                r.report.reason = "the upgrade record names no target slot".into();
            }
            state
        });
        let view = SharedReport::default();
        view.set(record.as_ref().map(|r| r.report.clone()));
        let effects = Effects {
            boot: Arc::new(Grub::new(settings.grubenv.clone())),
            slots: Arc::new(Slots(settings.slots.clone())),
            fetcher: Arc::new(Https {
                dir: settings.data_dir.clone(),
            }),
            probes: Arc::new(Probes),
            clock: Arc::new(SystemClock),
        };
        Self {
            settings,
            running_version,
            record,
            state,
            view,
            tls: None,
            effects,
        }
    }

    /// A handle on the report that follows the work as it happens.
    pub fn shared_report(&self) -> SharedReport {
        self.view.clone()
    }

    fn publish(&self) {
        self.view.set(self.report());
    }

    /// Sets the TLS configuration bundle downloads use.
    pub fn set_tls(&mut self, tls: rustls::ClientConfig) {
        self.tls = Some(tls);
    }

    /// The report to put in heartbeats.
    pub fn report(&self) -> Option<UpgradeReport> {
        self.record.as_ref().map(|r| r.report.clone())
    }

    /// The booted slot, from the kernel command line.
    pub fn booted(&self) -> Option<Slot> {
        std::fs::read_to_string(&self.settings.cmdline)
            .ok()
            .and_then(|c| booted_slot(&c))
    }

    /// Whether health checks are due (the new slot was booted and is not committed yet).
    pub fn verifying(&self) -> bool {
        matches!(self.state, State::Verifying { .. })
    }

    /// Classifies the boot against the record; call once at start, before anything else.
    pub async fn at_start(&mut self) {
        let event = Event::Started {
            booted: self.booted(),
            rolled_back: self.effects.boot.rolled_back(),
        };
        // What the boot shows (a rollback, an interrupted write) is reported, not returned.
        let _ = self.step(None, event).await;
    }

    /// Works on `order` as far as possible now: returns when the order waits (window,
    /// retry), is final, or the node is rebooting.
    pub async fn drive(&mut self, order: Option<&UpgradeOrder>) -> Result<(), StepError> {
        let Some(order) = order else {
            return self.step(None, Event::Withdrawn).await;
        };
        let recorded = self
            .record
            .as_ref()
            .is_some_and(|r| same_order(&r.order, order));
        if !recorded {
            self.step(Some(order), Event::NewOrder).await?;
            if !self
                .record
                .as_ref()
                .is_some_and(|r| same_order(&r.order, order))
            {
                // The current order keeps the slots busy.
                return Ok(());
            }
        }
        let pass = self.look_at(order).await;
        self.step(Some(order), Event::Pass(pass)).await
    }

    /// What [`machine::next`] needs to decide about `order` now.
    async fn look_at(&self, order: &UpgradeOrder) -> Pass {
        let window = match &order.window {
            None => Ok(true),
            Some(w) => {
                let now = self
                    .effects
                    .clock
                    .now_utc()
                    .to_offset(local_offset(self.settings.utc_offset).await);
                in_window(w, u32::from(now.hour()) * 60 + u32::from(now.minute()))
            }
        };
        let refusal = self
            .check_version(order)
            .err()
            .or_else(|| window.as_ref().err().cloned());
        Pass {
            already_running: order.version == self.running_version,
            refusal,
            window_open: window.unwrap_or(false),
            prestage: order.prestage,
            bundle_present: self.effects.fetcher.present(order).is_some(),
        }
    }

    fn check_version(&self, order: &UpgradeOrder) -> Result<(), String> {
        let version = &order.version;
        if !order.compatible_from.is_empty()
            && !order.compatible_from.contains(&self.running_version)
        {
            return Err(format!(
                "the release installs only over {:?}; this node runs {:?}",
                order.compatible_from, self.running_version
            ));
        }
        if !order.allow_downgrade
            && cairn_api::version::compare(version, &self.running_version).is_lt()
        {
            return Err(format!(
                "{version} is older than the running {}; the order does not allow a downgrade",
                self.running_version
            ));
        }
        Ok(())
    }

    /// Feeds `event` to the machine and runs the actions it returns, feeding each result
    /// back, until none is left. `order` is the order a new record is made for. Returns the
    /// failure the upgrade ended in (refused, failed) or will retry after.
    async fn step(&mut self, order: Option<&UpgradeOrder>, event: Event) -> Result<(), StepError> {
        let before = self.state.clone();
        let mut retry = None;
        let mut queue = VecDeque::new();
        let mut event = Some(event);
        loop {
            if let Some(event) = event.take() {
                if let Event::StepFailed(StepError::Retry(m)) = &event {
                    tracing::warn!(reason = %m, "upgrade step will be retried");
                    retry = Some(m.clone());
                }
                match machine::next(&self.state, event) {
                    Outcome::Next(state, actions) => {
                        self.state = state;
                        queue = actions.into();
                    }
                    Outcome::Ignored(why) => {
                        tracing::debug!(state = ?self.state, why, "upgrade event ignored")
                    }
                }
            }
            let Some(action) = queue.pop_front() else {
                break;
            };
            event = self.run(order, action).await;
        }
        let reason = || {
            self.record
                .as_ref()
                .map(|r| r.report.reason.clone())
                .unwrap_or_default()
        };
        let entered = self.state != before;
        match (&self.state, retry) {
            (State::Done(UpgradePhase::Refused), _) if entered => Err(StepError::Refused(reason())),
            (State::Done(UpgradePhase::Failed), _) if entered => Err(StepError::Failed(reason())),
            (_, Some(m)) => Err(StepError::Retry(m)),
            _ => Ok(()),
        }
    }

    /// Runs one action; returns the event it ends in, `None` when it simply succeeded.
    async fn run(&mut self, order: Option<&UpgradeOrder>, action: Action) -> Option<Event> {
        let current = self.record.as_ref().map(|r| r.order.clone());
        match action {
            Action::NewRecord => {
                let order = order?;
                self.record = Some(Record {
                    order: order.clone(),
                    report: UpgradeReport {
                        campaign: order.campaign.clone(),
                        version: order.version.clone(),
                        phase: UpgradePhase::Waiting,
                        reason: String::new(),
                        bytes_done: 0,
                        bytes_total: 0,
                        logs: Vec::new(),
                        at: self.effects.clock.now_utc(),
                    },
                    target: None,
                    from_version: self.running_version.clone(),
                });
                self.persist().err().map(Event::PersistFailed)
            }
            Action::Record { reason } => {
                let phase = self.state.phase()?;
                let slot = self.state.slot();
                let at = self.effects.clock.now_utc();
                let r = self.record.as_mut()?;
                tracing::info!(version = %r.order.version, ?phase, %reason, "upgrade");
                r.report.phase = phase;
                r.report.reason = reason;
                r.report.bytes_done = 0;
                r.report.bytes_total = 0;
                r.report.at = at;
                if slot.is_some() {
                    r.target = slot;
                }
                self.persist().err().map(Event::PersistFailed)
            }
            Action::Reason(reason) => {
                if let Some(r) = &mut self.record {
                    r.report.reason = reason;
                }
                None
            }
            Action::Logs(logs) => {
                if let Some(r) = &mut self.record {
                    r.report.logs = logs;
                }
                None
            }
            Action::DiscardDownloads => {
                if let Some(order) = &current {
                    self.effects.fetcher.discard(order);
                }
                None
            }
            Action::Forget => {
                self.record = None;
                let _ = std::fs::remove_file(self.settings.data_dir.join("state.json"));
                None
            }
            Action::Download { window_open } => {
                let order = current?;
                let fetcher = self.effects.fetcher.clone();
                let tls = self.tls.clone();
                let mut progress = |done, total| self.progress(done, total);
                Some(match fetcher.fetch(&order, tls, &mut progress).await {
                    Ok(_) => Event::Downloaded { window_open },
                    Err(e) => Event::StepFailed(e),
                })
            }
            Action::Verify { window_open } => Some(match self.verify(&current?).await {
                Ok(signer) => Event::Verified {
                    window_open,
                    signer,
                },
                Err(e) => Event::StepFailed(e),
            }),
            Action::PrepareSlot => Some(match self.prepare_slot() {
                Ok(slot) => Event::SlotReady { slot },
                Err(e) => Event::StepFailed(StepError::Failed(e)),
            }),
            Action::WriteSlot { slot } => Some(match self.write(&current?, slot).await {
                Ok(()) => Event::Written,
                Err(e) => Event::WriteFailed(e),
            }),
            Action::Drain => {
                let Some(drain) = self.settings.drain_command.clone() else {
                    return Some(Event::Drained);
                };
                let version = current.map(|o| o.version).unwrap_or_default();
                let (ok, lines) = run_command(&drain, &[("CAIRN_UPGRADE_VERSION", &version)]).await;
                Some(if ok {
                    Event::Drained
                } else {
                    Event::StepFailed(StepError::Failed(format!(
                        "the drain hook failed: {}",
                        lines.join(" | ")
                    )))
                })
            }
            Action::ArmBootLoader { slot } => self
                .effects
                .boot
                .arm(slot, self.settings.tries)
                .err()
                .map(Event::BootLoaderFailed),
            Action::CommitBootLoader { slot } => Some(match self.effects.boot.commit(slot) {
                Ok(()) => Event::BootLoaderCommitted,
                Err(e) => {
                    tracing::error!(error = %e, "committing the slot in GRUB failed; will retry");
                    Event::BootLoaderFailed(e)
                }
            }),
            Action::DisarmBootLoader => self.effects.boot.disarm().err().map(|e| {
                tracing::error!(error = %e, "pointing GRUB back at the old slot failed");
                Event::BootLoaderFailed(e)
            }),
            Action::ClearRollbackFlag => self.effects.boot.clear_rollback_flag().err().map(|e| {
                tracing::error!(error = %e, "clearing the GRUB rollback flag failed");
                Event::BootLoaderFailed(e)
            }),
            Action::Reboot => {
                let (ok, lines) = run_command(&self.settings.reboot_command, &[]).await;
                if ok {
                    tracing::info!("reboot requested");
                    None
                } else {
                    let output = lines.join(" | ");
                    tracing::error!(%output, "the reboot command failed");
                    Some(Event::RebootFailed(output))
                }
            }
        }
    }

    /// Writes the record atomically; the report follows it.
    fn persist(&self) -> Result<(), String> {
        self.publish();
        let Some(record) = &self.record else {
            return Ok(());
        };
        let dir = &self.settings.data_dir;
        serde_json::to_vec_pretty(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| atomic_write(&dir.join("state.json"), &bytes))
            .map_err(|e| {
                tracing::error!(error = %e, dir = %dir.display(), "persisting the upgrade record failed");
                format!("{}: {e}", dir.join("state.json").display())
            })
    }

    fn progress(&mut self, done: u64, total: u64) {
        if let Some(r) = &mut self.record {
            r.report.bytes_done = done;
            r.report.bytes_total = total;
        }
        self.publish();
    }

    fn trust_store(&self) -> Result<TrustStore, StepError> {
        if self.settings.trusted_keys.is_empty() {
            return Err(StepError::Refused(
                "no release keys configured (upgrade.trusted_keys in node.yaml)".into(),
            ));
        }
        let keys = self
            .settings
            .trusted_keys
            .iter()
            .map(|p| PublicKey::read(p).map_err(|e| StepError::Failed(cairn_api::error_chain(&e))))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustStore::new(keys))
    }

    fn bundle(&self, order: &UpgradeOrder) -> Result<PathBuf, StepError> {
        self.effects
            .fetcher
            .present(order)
            .ok_or_else(|| StepError::Retry("the downloaded bundle is gone".into()))
    }

    /// Verifies the bundle completely (signature, every payload byte) and checks it is the
    /// ordered version and installs over the running one; returns the signer's fingerprint.
    async fn verify(&self, order: &UpgradeOrder) -> Result<String, StepError> {
        let path = self.bundle(order)?;
        let trust = self.trust_store()?;
        let checked = tokio::task::spawn_blocking(move || bundle::verify(&path, &trust))
            .await
            .map_err(|e| StepError::Failed(e.to_string()))?;
        let verified = checked.map_err(|e| StepError::Refused(cairn_api::error_chain(&e)))?;
        let manifest = &verified.manifest;
        if manifest.version != order.version {
            return Err(StepError::Refused(format!(
                "the bundle is version {}, the order says {}",
                manifest.version, order.version
            )));
        }
        if !manifest.accepts_upgrade_from(&self.running_version) {
            return Err(StepError::Refused(format!(
                "the bundle installs only over {:?}; this node runs {:?}",
                manifest.compatible_from, self.running_version
            )));
        }
        Ok(verified.signer.fingerprint())
    }

    /// The inactive slot, when it and GRUB's environment are usable: fails before the slot
    /// is touched when GRUB could not be armed later.
    fn prepare_slot(&self) -> Result<Slot, String> {
        let Some(booted) = self.booted() else {
            return Err(format!(
                "cannot tell the booted slot: no cairn.slot= in {}",
                self.settings.cmdline.display()
            ));
        };
        let target = booted.other();
        self.effects.boot.check()?;
        self.effects.slots.open(target)?;
        Ok(target)
    }

    /// Streams the root image into `slot` (verified again on the way).
    async fn write(&mut self, order: &UpgradeOrder, slot: Slot) -> Result<(), String> {
        let bundle = self.bundle(order).map_err(|e| e.to_string())?;
        let trust = self.trust_store().map_err(|e| e.to_string())?;
        let range = self.effects.slots.open(slot)?;
        let slots = self.effects.slots.clone();
        let started = Instant::now();
        let size = tokio::task::spawn_blocking(move || slots.write(&bundle, &trust, &range))
            .await
            .map_err(|e| e.to_string())??;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            slot = slot.letter(),
            bytes = size,
            seconds = format!("{seconds:.1}"),
            mib_per_s = format!("{:.1}", size as f64 / seconds.max(1e-3) / 1048576.0),
            "slot written and verified"
        );
        self.progress(size, size);
        Ok(())
    }

    /// One round of health checks on the new slot: commit when all pass, roll back when the
    /// deadline passed without that. Returns whether the upgrade is still verifying.
    pub async fn health_round(&mut self, inputs: &HealthInputs) -> bool {
        let Some(since) = self.record.as_ref().map(|r| r.report.at) else {
            return false;
        };
        if !self.verifying() {
            return false;
        }
        let mut failed = Vec::new();
        let mut logs = Vec::new();
        if !inputs.network_applied {
            failed.push("network not applied".to_owned());
        }
        if !inputs.hub_reached {
            failed.push("hub not reached".to_owned());
        }
        if inputs.kubelet_active == Some(false) {
            failed.push("kubelet unit not active".to_owned());
        }
        for check in &self.settings.health_checks {
            let (ok, lines) = self.effects.probes.probe(&check.probe).await;
            for l in &lines {
                logs.push(format!("{}: {l}", check.name));
            }
            if !ok {
                failed.push(check.name.clone());
            }
        }
        let keep = logs.len().saturating_sub(MAX_LOG_LINES);
        let logs: Vec<String> = logs.into_iter().skip(keep).collect();
        let overdue =
            (self.effects.clock.now_utc() - since).unsigned_abs() >= self.settings.health_deadline;
        let health = Health {
            failed,
            logs,
            overdue,
        };
        let _ = self.step(None, Event::Health(health)).await;
        self.verifying()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_rollback_boots_the_other_slot_only_after_a_committed_upgrade() {
        use super::{Slot, UpgradePhase as P, UpgradeReport, rollback_target};
        let report = |phase| UpgradeReport {
            campaign: "c".into(),
            version: "1.2.0".into(),
            phase,
            reason: String::new(),
            bytes_done: 0,
            bytes_total: 0,
            logs: Vec::new(),
            at: time::OffsetDateTime::UNIX_EPOCH,
        };
        assert!(rollback_target(None, Some(&report(P::Committed))).is_err());
        let never = rollback_target(Some(Slot::A), None).unwrap_err();
        assert!(never.contains("slot b was never written"), "{never}");
        for (phase, expected) in [
            (P::Committed, Ok(Slot::B)),
            (P::Waiting, Err("under way")),
            (P::Downloading, Err("under way")),
            (P::Staged, Err("under way")),
            (P::Writing, Err("under way")),
            (P::Rebooting, Err("under way")),
            (P::Verifying, Err("under way")),
            (P::RolledBack, Err("holds no committed release")),
            (P::Interrupted, Err("holds no committed release")),
            (P::Refused, Err("holds no committed release")),
            (P::Failed, Err("holds no committed release")),
        ] {
            let got = rollback_target(Some(Slot::A), Some(&report(phase)));
            match (&got, expected) {
                (Ok(slot), Ok(want)) => assert_eq!(*slot, want, "{phase:?}"),
                (Err(why), Err(want)) => assert!(why.contains(want), "{phase:?}: {why}"),
                _ => panic!("{phase:?}: {got:?}"),
            }
        }
    }

    use super::*;

    #[test]
    fn the_booted_slot_comes_from_the_kernel_command_line() {
        assert_eq!(
            booted_slot("root=PARTLABEL=root-b cairn.slot=b ro quiet"),
            Some(Slot::B)
        );
        assert_eq!(booted_slot("root=/dev/sda2 ro"), None);
        assert_eq!(booted_slot("cairn.slot=c"), None);
        assert_eq!(Slot::A.other(), Slot::B);
    }

    #[test]
    fn windows_include_their_start_and_may_span_midnight() {
        let w = |s: &str, e: &str| MaintenanceWindow {
            start: s.into(),
            end: e.into(),
        };
        assert_eq!(in_window(&w("02:00", "04:00"), 120), Ok(true));
        assert_eq!(in_window(&w("02:00", "04:00"), 240), Ok(false));
        assert_eq!(in_window(&w("22:00", "04:00"), 23 * 60), Ok(true));
        assert_eq!(in_window(&w("22:00", "04:00"), 60), Ok(true));
        assert_eq!(in_window(&w("22:00", "04:00"), 12 * 60), Ok(false));
        assert!(in_window(&w("25:00", "04:00"), 0).is_err());
    }

    #[test]
    fn command_output_is_bounded_to_the_last_lines() {
        use effects::last_lines;
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let lines = last_lines(&text);
        assert_eq!(lines.len(), MAX_LOG_LINES);
        assert_eq!(lines.last().unwrap(), "line 99");
    }
}

#[cfg(test)]
mod driver_tests;
