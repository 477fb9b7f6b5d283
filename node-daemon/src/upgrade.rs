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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_api::{MaintenanceWindow, UpgradeOrder, UpgradePhase, UpgradeReport};
use cairn_formats::bundle::{self, Header};
use cairn_formats::fsio::atomic_write;
use cairn_formats::keys::{PublicKey, TrustStore};
use cairn_formats::{gpt, grubenv};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::{HealthProbe, SlotSource, UpgradeSettings};

/// Most log lines kept in a report.
const MAX_LOG_LINES: usize = 40;
/// How long one operator health check may run.
const CHECK_TIMEOUT: Duration = Duration::from_secs(30);

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
#[derive(Debug, thiserror::Error)]
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
    upgrader.at_start();
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

/// The upgrade engine for one node.
pub struct Upgrader {
    settings: UpgradeSettings,
    running_version: String,
    record: Option<Record>,
    /// The report as others see it (heartbeats, local API), updated as work progresses.
    view: SharedReport,
    /// TLS for bundle downloads (the hub's CA, the node's client certificate).
    tls: Option<rustls::ClientConfig>,
}

impl Upgrader {
    /// Loads the record of the current order, if any; `running_version` is the version of
    /// the running system.
    pub fn new(settings: UpgradeSettings, running_version: String) -> Self {
        let record = std::fs::read(settings.data_dir.join("state.json"))
            .ok()
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "the upgrade record is unreadable; ignoring it");
                    None
                }
            });
        let view = SharedReport::default();
        view.set(record.as_ref().map(|r: &Record| r.report.clone()));
        Self {
            settings,
            running_version,
            record,
            view,
            tls: None,
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
        self.record
            .as_ref()
            .is_some_and(|r| r.report.phase == UpgradePhase::Verifying)
    }

    fn persist(&self) {
        self.publish();
        let Some(record) = &self.record else { return };
        let dir = &self.settings.data_dir;
        let result = serde_json::to_vec_pretty(record)
            .map_err(std::io::Error::other)
            .and_then(|bytes| atomic_write(&dir.join("state.json"), &bytes));
        if let Err(e) = result {
            tracing::error!(error = %e, dir = %dir.display(), "persisting the upgrade record failed");
        }
    }

    fn enter(&mut self, phase: UpgradePhase, reason: impl Into<String>) {
        if let Some(r) = &mut self.record {
            let reason = reason.into();
            tracing::info!(version = %r.order.version, phase = ?phase, %reason, "upgrade");
            r.report.phase = phase;
            r.report.reason = reason;
            r.report.bytes_done = 0;
            r.report.bytes_total = 0;
            r.report.at = OffsetDateTime::now_utc();
        }
        self.persist();
    }

    fn grubenv_read(&self) -> Result<(Vec<u8>, BTreeMap<String, String>), String> {
        let path = &self.settings.grubenv;
        let block = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vars = grubenv::parse(&block).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok((block, vars))
    }

    /// Rewrites the GRUB environment in place, same size: GRUB's `save_env` writes into the
    /// blocks the file already has on the ESP.
    fn grubenv_set(&self, set: &[(&str, &str)]) -> Result<(), String> {
        let path = &self.settings.grubenv;
        let (block, _) = self.grubenv_read()?;
        let edited = grubenv::edit(&block, set).map_err(|e| e.to_string())?;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        file.write_all_at(&edited, 0)
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }

    /// Classifies the boot against the record; call once at start, before anything else.
    pub fn at_start(&mut self) {
        let Some(record) = self.record.clone() else {
            return;
        };
        let booted = self.booted();
        match record.report.phase {
            UpgradePhase::Writing => {
                self.enter(
                    UpgradePhase::Interrupted,
                    "the node restarted while writing the new slot; it was not activated",
                );
            }
            UpgradePhase::Rebooting | UpgradePhase::Verifying => {
                let target = record.target;
                if booted.is_some() && booted == target {
                    if record.report.phase == UpgradePhase::Rebooting {
                        self.enter(UpgradePhase::Verifying, "");
                    }
                    return;
                }
                let rolled_back = self
                    .grubenv_read()
                    .ok()
                    .and_then(|(_, v)| v.get("cairn_rolled_back").cloned())
                    .unwrap_or_default();
                let reason = if target.is_some_and(|t| t.letter() == rolled_back) {
                    "new slot did not boot"
                } else if record.report.phase == UpgradePhase::Verifying {
                    "the old slot booted before the new one passed its health checks"
                } else {
                    "the old slot booted instead of the new one"
                };
                if let Err(e) = self.grubenv_set(&[("cairn_rolled_back", ""), ("cairn_try", "")]) {
                    tracing::error!(error = %e, "clearing the GRUB rollback flag failed");
                }
                self.enter(UpgradePhase::RolledBack, reason);
            }
            _ => {}
        }
    }

    /// Works on `order` as far as possible now: returns when the order waits (window,
    /// retry), is final, or the node is rebooting.
    pub async fn drive(&mut self, order: Option<&UpgradeOrder>) -> Result<(), StepError> {
        let Some(order) = order else {
            // Withdrawn before it touched the slots: forget it and its download.
            if let Some(r) = &self.record
                && matches!(
                    r.report.phase,
                    UpgradePhase::Waiting | UpgradePhase::Downloading | UpgradePhase::Staged
                )
            {
                self.discard_downloads();
                self.record = None;
                let _ = std::fs::remove_file(self.settings.data_dir.join("state.json"));
            }
            return Ok(());
        };
        if let Some(r) = &self.record {
            let busy = matches!(
                r.report.phase,
                UpgradePhase::Rebooting | UpgradePhase::Verifying
            );
            if same_order(&r.order, order) && (r.report.phase.is_final() || busy) {
                return Ok(());
            }
            if busy {
                tracing::warn!(
                    "a new upgrade order waits until the current one is committed or rolled back"
                );
                return Ok(());
            }
            if !same_order(&r.order, order) {
                self.discard_downloads();
                self.record = None;
            }
        }
        if self.record.is_none() {
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
                    at: OffsetDateTime::now_utc(),
                },
                target: None,
                from_version: self.running_version.clone(),
            });
            self.persist();
        }
        let result = self.advance(order).await;
        match &result {
            Ok(()) => {}
            Err(StepError::Refused(m)) => {
                self.discard_downloads();
                self.enter(UpgradePhase::Refused, m.clone());
            }
            Err(StepError::Failed(m)) => self.enter(UpgradePhase::Failed, m.clone()),
            Err(StepError::Retry(m)) => {
                tracing::warn!(reason = %m, "upgrade step will be retried");
                if let Some(r) = &mut self.record {
                    r.report.reason = m.clone();
                }
            }
        }
        result
    }

    async fn advance(&mut self, order: &UpgradeOrder) -> Result<(), StepError> {
        if order.version == self.running_version {
            self.enter(UpgradePhase::Committed, "already running this version");
            return Ok(());
        }
        self.check_version(order, &order.version)?;
        let open = match &order.window {
            None => true,
            Some(w) => {
                let now = OffsetDateTime::now_utc()
                    .to_offset(local_offset(self.settings.utc_offset).await);
                in_window(w, u32::from(now.hour()) * 60 + u32::from(now.minute()))
                    .map_err(StepError::Refused)?
            }
        };
        let phase = self.record.as_ref().map(|r| r.report.phase);
        if !open && !order.prestage {
            if phase != Some(UpgradePhase::Waiting) {
                self.enter(UpgradePhase::Waiting, "outside the maintenance window");
            }
            return Ok(());
        }
        let bundle = self.download(order).await?;
        let trust = self.trust_store()?;
        let checked = {
            let path = bundle.clone();
            let trust = trust.clone();
            tokio::task::spawn_blocking(move || bundle::verify(&path, &trust))
                .await
                .map_err(|e| StepError::Failed(e.to_string()))?
        };
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
        if !open {
            if phase != Some(UpgradePhase::Staged) {
                self.enter(
                    UpgradePhase::Staged,
                    format!(
                        "verified (key {}), waiting for the window",
                        verified.signer.fingerprint()
                    ),
                );
            }
            return Ok(());
        }
        self.install(&bundle, trust).await
    }

    fn check_version(&self, order: &UpgradeOrder, version: &str) -> Result<(), StepError> {
        if !order.compatible_from.is_empty()
            && !order.compatible_from.contains(&self.running_version)
        {
            return Err(StepError::Refused(format!(
                "the release installs only over {:?}; this node runs {:?}",
                order.compatible_from, self.running_version
            )));
        }
        if !order.allow_downgrade
            && cairn_api::version::compare(version, &self.running_version).is_lt()
        {
            return Err(StepError::Refused(format!(
                "{version} is older than the running {}; the order does not allow a downgrade",
                self.running_version
            )));
        }
        Ok(())
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

    fn discard_downloads(&self) {
        if let Some(r) = &self.record {
            for ext in ["partial", "bundle"] {
                let _ = std::fs::remove_file(
                    self.settings
                        .data_dir
                        .join(format!("{}.{ext}", r.order.sha256)),
                );
            }
        }
    }

    fn progress(&mut self, done: u64, total: u64) {
        if let Some(r) = &mut self.record {
            r.report.bytes_done = done;
            r.report.bytes_total = total;
        }
        self.publish();
    }

    /// Downloads the bundle into the data directory, resuming a partial file with Range.
    async fn download(&mut self, order: &UpgradeOrder) -> Result<PathBuf, StepError> {
        let sha = order.sha256.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StepError::Refused(format!(
                "the order's sha256 {:?} is not 64 hex digits",
                order.sha256
            )));
        }
        let dir = self.settings.data_dir.clone();
        let done = dir.join(format!("{sha}.bundle"));
        if std::fs::metadata(&done).is_ok_and(|m| m.len() == order.size_bytes) {
            return Ok(done);
        }
        if !order.bundle_url.starts_with("https://") {
            return Err(StepError::Refused(format!(
                "bundle URL {:?} is not https://",
                order.bundle_url
            )));
        }
        let Some(tls) = self.tls.clone() else {
            return Err(StepError::Retry(
                "no TLS identity to download with yet (not registered)".into(),
            ));
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| StepError::Failed(e.to_string()))?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| StepError::Failed(format!("{}: {e}", dir.display())))?;
        let partial = dir.join(format!("{sha}.partial"));
        let mut have = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        if have > order.size_bytes {
            have = 0;
        }
        if self.record.as_ref().map(|r| r.report.phase) != Some(UpgradePhase::Downloading) {
            self.enter(UpgradePhase::Downloading, "");
        }
        let resumed = have > 0;
        let mut request = client.get(&order.bundle_url);
        if resumed && have < order.size_bytes {
            request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let retry = |e: &dyn std::error::Error| {
            StepError::Retry(format!(
                "downloading {}: {}",
                order.bundle_url,
                cairn_api::error_chain(e)
            ))
        };
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&partial)
            .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?;
        if have < order.size_bytes {
            let mut response = request.send().await.map_err(|e| retry(&e))?;
            match response.status().as_u16() {
                206 => tracing::info!(from = have, "download resumed"),
                200 => {
                    file.set_len(0)
                        .map_err(|e| StepError::Failed(e.to_string()))?;
                    have = 0;
                }
                code => {
                    return Err(StepError::Retry(format!(
                        "downloading {}: HTTP {code}",
                        order.bundle_url
                    )));
                }
            }
            let mut out = BufWriter::with_capacity(64 << 10, &mut file);
            let started = Instant::now();
            let first = have;
            while let Some(chunk) = response.chunk().await.map_err(|e| retry(&e))? {
                have += chunk.len() as u64;
                if have > order.size_bytes {
                    drop(out);
                    let _ = std::fs::remove_file(&partial);
                    return Err(StepError::Refused(format!(
                        "the bundle is larger than the order's {} bytes",
                        order.size_bytes
                    )));
                }
                out.write_all(&chunk)
                    .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?;
                self.progress(have, order.size_bytes);
                if let Some(rate) = order.max_bytes_per_second.filter(|r| *r > 0) {
                    let due = Duration::from_secs_f64((have - first) as f64 / rate as f64);
                    let elapsed = started.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
            }
            out.flush()
                .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?;
            let seconds = started.elapsed().as_secs_f64();
            tracing::info!(
                bytes = have - first,
                seconds = format!("{seconds:.1}"),
                mib_per_s = format!(
                    "{:.1}",
                    (have - first) as f64 / seconds.max(1e-3) / 1048576.0
                ),
                "bundle downloaded"
            );
        }
        file.sync_all()
            .map_err(|e| StepError::Failed(e.to_string()))?;
        drop(file);
        if have != order.size_bytes {
            return Err(StepError::Retry(format!(
                "the download ended after {have} of {} bytes",
                order.size_bytes
            )));
        }
        let digest = {
            let p = partial.clone();
            tokio::task::spawn_blocking(move || cairn_formats::stream::Digest::of_file(&p))
                .await
                .map_err(|e| StepError::Failed(e.to_string()))?
                .map_err(|e| StepError::Failed(format!("{}: {e}", partial.display())))?
        };
        if digest.sha256 != sha {
            let _ = std::fs::remove_file(&partial);
            let message = format!(
                "the downloaded bundle has SHA-256 {}, the order says {sha}",
                digest.sha256
            );
            // A resumed file may carry a damaged tail from a power cut: fetch it whole once more.
            return Err(if resumed {
                StepError::Retry(message)
            } else {
                StepError::Refused(message)
            });
        }
        std::fs::rename(&partial, &done).map_err(|e| StepError::Failed(e.to_string()))?;
        Ok(done)
    }

    /// Writes the inactive slot, runs the drain hook, arms GRUB and reboots.
    async fn install(&mut self, bundle: &Path, trust: TrustStore) -> Result<(), StepError> {
        let Some(booted) = self.booted() else {
            return Err(StepError::Failed(format!(
                "cannot tell the booted slot: no cairn.slot= in {}",
                self.settings.cmdline.display()
            )));
        };
        let target = booted.other();
        // Fail before touching the slot when GRUB's environment cannot be edited later.
        self.grubenv_read().map_err(StepError::Failed)?;
        let (slot_path, offset, limit) =
            open_slot(&self.settings.slots, target).map_err(StepError::Failed)?;
        if let Some(r) = &mut self.record {
            r.target = Some(target);
        }
        self.enter(UpgradePhase::Writing, format!("slot {}", target.letter()));
        let path = bundle.to_owned();
        let started = Instant::now();
        let written = tokio::task::spawn_blocking(move || {
            write_slot(&path, &trust, &slot_path, offset, limit)
        })
        .await
        .map_err(|e| StepError::Failed(e.to_string()))?;
        let size = match written {
            Ok(size) => size,
            Err(e) => {
                return Err(StepError::Failed(format!(
                    "writing slot {}: {e} (the slot is not activated)",
                    target.letter()
                )));
            }
        };
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            slot = target.letter(),
            bytes = size,
            seconds = format!("{seconds:.1}"),
            mib_per_s = format!("{:.1}", size as f64 / seconds.max(1e-3) / 1048576.0),
            "slot written and verified"
        );
        self.progress(size, size);
        if let Some(drain) = self.settings.drain_command.clone() {
            let version = self
                .record
                .as_ref()
                .map(|r| r.order.version.clone())
                .unwrap_or_default();
            let out = run_command(&drain, &[("CAIRN_UPGRADE_VERSION", &version)]).await;
            if !out.0 {
                return Err(StepError::Failed(format!(
                    "the drain hook failed: {}",
                    out.1.join(" | ")
                )));
            }
        }
        self.enter(
            UpgradePhase::Rebooting,
            format!("trying slot {} once", target.letter()),
        );
        let tries = self.settings.tries.to_string();
        if let Err(e) = self.grubenv_set(&[
            ("cairn_try", target.letter()),
            ("cairn_tries", &tries),
            ("cairn_rolled_back", ""),
        ]) {
            return Err(StepError::Failed(format!("arming GRUB: {e}")));
        }
        self.reboot().await;
        Ok(())
    }

    async fn reboot(&self) {
        let (ok, lines) = run_command(&self.settings.reboot_command, &[]).await;
        if ok {
            tracing::info!("reboot requested");
        } else {
            tracing::error!(output = %lines.join(" | "), "the reboot command failed");
        }
    }

    /// One round of health checks on the new slot: commit when all pass, roll back when the
    /// deadline passed without that. Returns whether the upgrade is still verifying.
    pub async fn health_round(&mut self, inputs: &HealthInputs) -> bool {
        let Some(record) = self.record.clone() else {
            return false;
        };
        if record.report.phase != UpgradePhase::Verifying {
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
            let (ok, lines) = match &check.probe {
                HealthProbe::Command(argv) => run_command(argv, &[]).await,
                HealthProbe::Http(url) => http_probe(url).await,
            };
            for l in &lines {
                logs.push(format!("{}: {l}", check.name));
            }
            if !ok {
                failed.push(check.name.clone());
            }
        }
        if failed.is_empty() {
            let slot = record.target.map(Slot::letter).unwrap_or_default();
            if let Err(e) = self.grubenv_set(&[
                ("cairn_slot", slot),
                ("cairn_try", ""),
                ("cairn_rolled_back", ""),
            ]) {
                tracing::error!(error = %e, "committing the slot in GRUB failed; will retry");
                return true;
            }
            self.enter(UpgradePhase::Committed, format!("slot {slot} committed"));
            return false;
        }
        let keep = logs.len().saturating_sub(MAX_LOG_LINES);
        let logs: Vec<String> = logs.into_iter().skip(keep).collect();
        let since = (OffsetDateTime::now_utc() - record.report.at).unsigned_abs();
        if since < self.settings.health_deadline {
            if let Some(r) = &mut self.record {
                r.report.reason = format!("waiting for: {}", failed.join(", "));
                r.report.logs = logs;
            }
            return true;
        }
        let reason = format!("health checks failed: {}", failed.join(", "));
        if let Some(r) = &mut self.record {
            r.report.logs = logs;
        }
        if let Err(e) = self.grubenv_set(&[("cairn_try", "")]) {
            tracing::error!(error = %e, "pointing GRUB back at the old slot failed");
        }
        self.enter(UpgradePhase::RolledBack, reason);
        self.reboot().await;
        false
    }
}

/// The slot's device (or disk image) with the byte range it may write.
fn open_slot(source: &SlotSource, slot: Slot) -> Result<(PathBuf, u64, u64), String> {
    let name = format!("root-{}", slot.letter());
    match source {
        SlotSource::Dir(dir) => {
            let path = dir.join(&name);
            let mut f = File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            // A block device reports its size only by seeking to its end.
            let size = f
                .seek(SeekFrom::End(0))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            Ok((path, 0, size))
        }
        SlotSource::Disk(disk) => {
            let located = |e: &dyn std::error::Error| {
                format!("{}: {}", disk.display(), cairn_api::error_chain(e))
            };
            let mut f = File::open(disk).map_err(|e| located(&e))?;
            let table = gpt::read(&mut f).map_err(|e| located(&e))?;
            let part = table
                .get(&name)
                .ok_or_else(|| format!("{}: no partition named {name}", disk.display()))?;
            Ok((disk.clone(), part.offset(), part.size()))
        }
    }
}

/// Streams the root image of `bundle` (signature checked against `trust` first) into
/// `slot_path` at `offset`, at most `limit` bytes, checking its SHA-256 on the way, and syncs
/// it. Returns the image size. Blocking; also what `examples/slot_write.rs` measures.
pub fn write_slot(
    bundle: &Path,
    trust: &TrustStore,
    slot_path: &Path,
    offset: u64,
    limit: u64,
) -> Result<u64, String> {
    let mut reader =
        BufReader::with_capacity(1 << 20, File::open(bundle).map_err(|e| e.to_string())?);
    let header = Header::read(&mut reader).map_err(|e| e.to_string())?;
    let verified = header.verify(trust).map_err(|e| e.to_string())?;
    let file = OpenOptions::new()
        .write(true)
        .open(slot_path)
        .map_err(|e| format!("{}: {e}", slot_path.display()))?;
    let mut dest = SlotWriter {
        file: &file,
        offset,
        pos: 0,
    };
    let digest = verified
        .write_root_image(&mut reader, &mut dest, limit, |_| {})
        .map_err(|e| cairn_api::error_chain(&e))?;
    file.sync_all().map_err(|e| e.to_string())?;
    Ok(digest.size)
}

/// Writes at `offset` onward with positional writes (the disk image or the partition device).
struct SlotWriter<'a> {
    file: &'a File,
    offset: u64,
    pos: u64,
}

impl Write for SlotWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all_at(buf, self.offset + self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn last_lines(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(MAX_LOG_LINES)..]
        .iter()
        .map(|l| (*l).to_owned())
        .collect()
}

/// Runs argv with a timeout; returns success and the last lines of its output.
async fn run_command(argv: &[String], env: &[(&str, &str)]) -> (bool, Vec<String>) {
    let mut cmd = tokio::process::Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(CHECK_TIMEOUT, cmd.output()).await {
        Err(_) => (
            false,
            vec![format!("{} timed out after {CHECK_TIMEOUT:?}", argv[0])],
        ),
        Ok(Err(e)) => (false, vec![format!("{}: {e}", argv[0])]),
        Ok(Ok(out)) => {
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            let mut lines = last_lines(&text);
            if !out.status.success() {
                lines.push(format!("{} exited with {}", argv[0], out.status));
            }
            (out.status.success(), lines)
        }
    }
}

/// GETs a plain-HTTP local probe; 2xx passes.
async fn http_probe(url: &str) -> (bool, Vec<String>) {
    let client = match reqwest::Client::builder().timeout(CHECK_TIMEOUT).build() {
        Ok(c) => c,
        Err(e) => return (false, vec![e.to_string()]),
    };
    match client.get(url).send().await {
        Err(e) => (
            false,
            vec![format!("GET {url}: {}", cairn_api::error_chain(&e))],
        ),
        Ok(r) => {
            let status = r.status();
            let body = r.text().await.unwrap_or_default();
            let mut lines = last_lines(&body);
            lines.push(format!("GET {url}: HTTP {status}"));
            (status.is_success(), lines)
        }
    }
}

#[cfg(test)]
mod tests {
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
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let lines = last_lines(&text);
        assert_eq!(lines.len(), MAX_LOG_LINES);
        assert_eq!(lines.last().unwrap(), "line 99");
    }
}
