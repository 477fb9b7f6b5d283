//! The per-server provisioning state machine of DESIGN.md:
//!
//! ```text
//! registered -> inspecting -> configuring-firmware -> booting-installer -> installing
//!            -> rebooting -> first-boot -> provisioned          (or failed(reason))
//! ```
//!
//! One method per transition ([`Machine::inspect`], [`Machine::configure_firmware`],
//! [`Machine::boot_installer`], [`Machine::install`], [`Machine::reboot_to_disk`],
//! [`Machine::first_boot`]); attempt counters live inside the state variants; every change is
//! handed to the caller to persist and report. The side effects are behind traits: the BMC
//! (`cairn_hardware::bmc::Bmc`), the boot server's install reports
//! ([`InstallProgressSource`]), the hub ([`FleetView`], and [`TokenMinter`] for the
//! per-server enrollment tokens of virtual media) and the seeded ISOs ([`MediaStore`]); the
//! firmware baseline is applied through the BMC by `cairn firmware apply`'s own code
//! ([`apply_firmware`]); this module is pure logic over them and is unit-tested with doubles of all of them.
//!
//! Virtual media: each `booting-installer` attempt mints one single-use enrollment token at
//! the hub, bound to the server's boot MAC (and to the serial its BMC reported during
//! inspection or, failing that, the one rack.yaml declares; a BMC reporting another serial
//! than rack.yaml fails the server at inspection), expiring with the install and
//! registration timeouts; builds the server's own
//! seeded ISO holding it, under an unguessable URL; and inserts that URL. An earlier
//! attempt's ISO is deleted and its token revoked first; when the server is provisioned or
//! failed, its ISO is deleted (and an unused token revoked). Neither the token nor the URL
//! is ever in the record, a note or a log line: only the token's public ID is.
//!
//! Retries: a step that fails with a retryable error is tried again after an exponential
//! backoff, up to `Policy::max_attempts`; a refused password is never retried (accounts lock
//! out). What the BMC needed worked around (a one-time boot override it ignored, a busy
//! virtual CD, ...: [`Bmc::take_notes`]) becomes a note of the phase it happened in. An install that fails or stalls is retried from `booting-installer`: the disk is
//! rewritten from the start, since a half-written image must never be booted.

use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use cairn_api::{InstallProgress, InstallStep};
use cairn_firmware_profiles::apply::{ApplyOptions, apply};
use cairn_firmware_profiles::profile::Profile;
use cairn_hardware::bmc::{Bmc, BmcError, BootDevice, BootOverride, PowerAction, PowerState};
use serde::{Deserialize, Serialize};

/// The phases that do work (every state but the start and the two ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Reading the BMC.
    Inspecting,
    /// Applying the firmware baseline.
    ConfiguringFirmware,
    /// One-time boot to PXE or virtual media, power on.
    BootingInstaller,
    /// The install agent writes the disk.
    Installing,
    /// Boot device back to disk, media ejected.
    Rebooting,
    /// Waiting for the appliance to register with the hub.
    FirstBoot,
}

impl Phase {
    /// All phases in order.
    pub const ALL: [Phase; 6] = [
        Phase::Inspecting,
        Phase::ConfiguringFirmware,
        Phase::BootingInstaller,
        Phase::Installing,
        Phase::Rebooting,
        Phase::FirstBoot,
    ];

    /// Kebab-case name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Inspecting => "inspecting",
            Phase::ConfiguringFirmware => "configuring-firmware",
            Phase::BootingInstaller => "booting-installer",
            Phase::Installing => "installing",
            Phase::Rebooting => "rebooting",
            Phase::FirstBoot => "first-boot",
        }
    }
}

/// Where one server is. Persisted as JSON beside the inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// Listed in the inventory, nothing done yet.
    Registered,
    /// Reading power, model, serial, NICs, disks.
    Inspecting {
        /// 1-based attempt.
        attempt: u32,
    },
    /// Diffing and applying the firmware profile.
    ConfiguringFirmware {
        /// 1-based attempt.
        attempt: u32,
    },
    /// Setting the one-time boot device and powering on.
    BootingInstaller {
        /// 1-based attempt; counts installs too, as a failed install comes back here.
        attempt: u32,
    },
    /// The agent is writing the disk.
    Installing {
        /// The booting-installer attempt this install belongs to.
        attempt: u32,
        /// The agent's latest step.
        step: Option<InstallStep>,
        /// Bytes written so far.
        bytes_written: u64,
        /// Bytes to write, when known.
        bytes_total: Option<u64>,
    },
    /// Boot device set back to disk, media ejected.
    Rebooting {
        /// 1-based attempt.
        attempt: u32,
        /// The boot device was already set back to disk while the installer ran.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        boot_on_disk: bool,
    },
    /// Waiting for the appliance's registration.
    FirstBoot {
        /// 1-based attempt.
        attempt: u32,
    },
    /// Done: the hub knows the appliance.
    Provisioned {
        /// The hub's appliance ID.
        appliance_id: String,
    },
    /// Gave up.
    Failed {
        /// The phase that failed.
        phase: Phase,
        /// Why, for people.
        reason: String,
    },
}

impl State {
    /// The working phase, or `None` for registered/provisioned/failed.
    pub fn phase(&self) -> Option<Phase> {
        Some(match self {
            State::Inspecting { .. } => Phase::Inspecting,
            State::ConfiguringFirmware { .. } => Phase::ConfiguringFirmware,
            State::BootingInstaller { .. } => Phase::BootingInstaller,
            State::Installing { .. } => Phase::Installing,
            State::Rebooting { .. } => Phase::Rebooting,
            State::FirstBoot { .. } => Phase::FirstBoot,
            _ => return None,
        })
    }

    /// The attempt counter of a working state.
    pub fn attempt(&self) -> u32 {
        match self {
            State::Inspecting { attempt }
            | State::ConfiguringFirmware { attempt }
            | State::BootingInstaller { attempt }
            | State::Installing { attempt, .. }
            | State::Rebooting { attempt, .. }
            | State::FirstBoot { attempt } => *attempt,
            _ => 0,
        }
    }

    /// Short name, as in JSON.
    pub fn name(&self) -> &'static str {
        match self {
            State::Registered => "registered",
            State::Provisioned { .. } => "provisioned",
            State::Failed { .. } => "failed",
            other => other.phase().map(Phase::as_str).unwrap_or("?"),
        }
    }

    /// Whether nothing more will happen in this run.
    pub fn is_final(&self) -> bool {
        matches!(self, State::Provisioned { .. } | State::Failed { .. })
    }

    /// The first state of `phase`, at `attempt`.
    pub fn start_of(phase: Phase, attempt: u32) -> State {
        match phase {
            Phase::Inspecting => State::Inspecting { attempt },
            Phase::ConfiguringFirmware => State::ConfiguringFirmware { attempt },
            // An install cannot continue where it stopped: the installer boots again and
            // rewrites the disk from the start.
            Phase::BootingInstaller | Phase::Installing => State::BootingInstaller { attempt },
            Phase::Rebooting => State::Rebooting {
                attempt,
                boot_on_disk: false,
            },
            Phase::FirstBoot => State::FirstBoot { attempt },
        }
    }

    /// Where a re-run starts from a persisted state: provisioned stays; a failure is tried
    /// again from the phase that failed, with fresh attempts; an install that was cut off
    /// starts over from booting the installer; anything else continues.
    pub fn resume(self) -> State {
        match self {
            State::Failed { phase, .. } => State::start_of(phase, 1),
            State::Installing { attempt, .. } => State::BootingInstaller { attempt },
            other => other,
        }
    }
}

/// How a server boots the installer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootMethod {
    /// One-time PXE boot from the boot MAC; the boot server answers it.
    Pxe,
    /// Its own seeded installer ISO, carrying a single-use enrollment token, in the BMC's
    /// virtual CD.
    VirtualMedia {
        /// The hub site the server enrolls into (its token is minted for it).
        site: String,
    },
}

/// A server's firmware baseline and how it is applied.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// The profile its inventory entry names, resolved when the rack was planned (so a
    /// misspelt name fails before any BMC is touched).
    pub profile: Profile,
    /// Settle timeout and image delivery, shared by the rack's servers.
    pub options: std::sync::Arc<ApplyOptions>,
}

/// What to do with one server.
#[derive(Debug, Clone)]
pub struct ServerPlan {
    /// Inventory name.
    pub name: String,
    /// The MAC it boots from (and reports install progress under).
    pub boot_mac: String,
    /// The serial rack.yaml declares, if it does.
    pub serial: Option<String>,
    /// PXE or virtual media.
    pub boot: BootMethod,
    /// The firmware baseline to apply, if its inventory entry names a profile.
    pub firmware: Option<Firmware>,
}

/// Limits and pacing.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Attempts per phase before giving up.
    pub max_attempts: u32,
    /// First backoff; doubled per attempt.
    pub backoff: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// How often the boot server and hub are polled.
    pub poll: Duration,
    /// Longest wait for the installer to start reporting after power-on.
    pub install_start_timeout: Duration,
    /// Longest time between two install reports.
    pub install_stall_timeout: Duration,
    /// Longest wait for registration after the install.
    pub register_timeout: Duration,
    /// Longest time a BMC that answered earlier in the run may stay silent (refusing
    /// connections, timing out, as while it restarts) before the server fails; tries in
    /// that time use up no attempts.
    pub bmc_away_timeout: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 3,
            backoff: Duration::from_secs(2),
            backoff_max: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            install_start_timeout: Duration::from_secs(300),
            install_stall_timeout: Duration::from_secs(300),
            register_timeout: Duration::from_secs(600),
            bmc_away_timeout: Duration::from_secs(300),
        }
    }
}

impl Policy {
    /// Wait before attempt `attempt + 1`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        (self.backoff * factor).min(self.backoff_max)
    }
}

/// A failure of a peer other than the BMC (boot server, hub).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PeerError(pub String);

/// The boot server's record of install reports. `seq` increases with every report the boot
/// server receives, so reports from an earlier attempt can be told apart from new ones.
#[async_trait]
pub trait InstallProgressSource: Send + Sync {
    /// The latest report for `mac` with its sequence number, if any.
    async fn latest(&self, mac: &str) -> Result<Option<(u64, InstallProgress)>, PeerError>;
}

/// The hub's fleet.
#[async_trait]
pub trait FleetView: Send + Sync {
    /// The ID of the appliance that is this server (matched by boot MAC, else hostname).
    async fn find(&self, name: &str, mac: &str) -> Result<Option<String>, PeerError>;
}

/// What one server's enrollment token is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBinding {
    /// The site it enrolls into.
    pub site: String,
    /// Its boot MAC (lowercase).
    pub mac: String,
    /// The serial number its BMC reported or, failing that, rack.yaml declares.
    pub serial: Option<String>,
    /// How long the token is valid.
    pub ttl: Duration,
}

/// A freshly minted enrollment token. `Debug` shows only its ID.
pub struct MintedToken {
    /// The token's public ID (what `cairn hub token list` shows).
    pub id: String,
    /// The secret, for the seed only.
    pub secret: String,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MintedToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why the hub minted no token.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The operator token may not mint enrollment tokens (a viewer, or scoped elsewhere).
    #[error("{0}")]
    Refused(String),
    /// Anything else (hub unreachable, overloaded): worth another attempt.
    #[error("{0}")]
    Other(String),
}

/// Mints and revokes the per-server enrollment tokens at the hub.
#[async_trait]
pub trait TokenMinter: Send + Sync {
    /// One single-use enrollment token bound to `binding`.
    async fn mint(&self, binding: &TokenBinding) -> Result<MintedToken, MintError>;
    /// Revokes token `id` (one that a failed attempt left unused).
    async fn revoke(&self, id: &str) -> Result<(), PeerError>;
}

/// Where the per-server seeded ISOs are built and served from.
#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Builds server `name`'s installer ISO seeded with enrollment token `token` and answers
    /// the URL the BMC fetches it from (unguessable: it holds the token).
    async fn publish(&self, name: &str, token: &str) -> Result<String, PeerError>;
    /// Deletes every ISO of server `name` (none: nothing to do).
    async fn remove(&self, name: &str) -> Result<(), PeerError>;
}

/// Why a step did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    /// What went wrong, for people.
    pub reason: String,
    /// Whether trying again may help.
    pub retryable: bool,
    /// The BMC did not answer at all (no connection, or no answer in time).
    pub bmc_away: bool,
}

impl StepError {
    fn retry(reason: impl Into<String>) -> Self {
        StepError {
            reason: reason.into(),
            retryable: true,
            bmc_away: false,
        }
    }

    fn fatal(reason: impl Into<String>) -> Self {
        StepError {
            reason: reason.into(),
            retryable: false,
            bmc_away: false,
        }
    }

    fn bmc(doing: &str, e: BmcError) -> Self {
        // The whole chain: a transport error's own text is only what cairn was doing.
        let reason = format!("BMC {doing}: {}", cairn_api::error_chain(&e));
        // Credentials and missing capabilities do not get better by asking again.
        if e.is_auth() || matches!(e, BmcError::Unsupported { .. } | BmcError::Invalid(_)) {
            StepError::fatal(reason)
        } else {
            StepError {
                bmc_away: matches!(e, BmcError::Transport { .. } | BmcError::Timeout { .. }),
                ..StepError::retry(reason)
            }
        }
    }
}

/// Something that wants to hear about every change (progress bars, JSON lines).
pub trait Observer: Send + Sync {
    /// `server` entered `state` (also called for install progress within `installing`).
    fn changed(&self, server: &str, state: &State);
    /// A note that is not a state change (a retry, a skipped step).
    fn note(&self, server: &str, message: &str);
}

/// One server's persisted record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Current state.
    pub state: State,
    /// Seconds spent per phase, summed over attempts and runs.
    #[serde(default)]
    pub seconds: std::collections::BTreeMap<Phase, f64>,
    /// Model and serial from inspection, when the BMC told.
    #[serde(default)]
    pub hardware: Option<String>,
    /// The serial number the BMC reported during inspection; a virtual-media server's
    /// enrollment token is bound to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// The public ID of the enrollment token in the server's current seeded ISO (never the
    /// token itself), so a later attempt or run can revoke it when it went unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_token: Option<String>,
    /// Notes (skipped steps, retries), latest last.
    #[serde(default)]
    pub notes: Vec<String>,
}

impl Default for Record {
    fn default() -> Self {
        Record {
            state: State::Registered,
            seconds: Default::default(),
            hardware: None,
            serial: None,
            media_token: None,
            notes: Vec::new(),
        }
    }
}

/// Drives one server through its states.
pub struct Machine<'a> {
    /// The server.
    pub plan: &'a ServerPlan,
    /// Its BMC.
    pub bmc: &'a dyn Bmc,
    /// The boot server's install reports.
    pub install: &'a dyn InstallProgressSource,
    /// The hub.
    pub fleet: &'a dyn FleetView,
    /// The hub again, for virtual media's enrollment tokens.
    pub minter: &'a dyn TokenMinter,
    /// The seeded ISOs of virtual media.
    pub media: &'a dyn MediaStore,
    /// Limits.
    pub policy: &'a Policy,
    /// Reporting.
    pub observer: &'a dyn Observer,
}

impl Machine<'_> {
    /// Runs from `record.state` until provisioned or failed, calling `persist` after every
    /// change. Never panics on a peer's behaviour; every failure ends in `Failed`.
    pub async fn run(&self, record: &mut Record, persist: &(dyn Fn(&Record) + Sync)) {
        let name = self.plan.name.as_str();
        if record.state == State::Registered {
            self.set(record, State::Inspecting { attempt: 1 }, persist);
        }
        // Since when the BMC has not answered, while it does not. Only a BMC that answered in
        // this run is waited for: one that never did is likelier a wrong address or a dead
        // BMC than a restart, and fails after its attempts.
        let mut away_since: Option<Instant> = None;
        let mut answered = false;
        while let Some(phase) = record.state.phase() {
            let attempt = record.state.attempt();
            let started = Instant::now();
            let result = match phase {
                Phase::Inspecting => self.inspect(record).await,
                Phase::ConfiguringFirmware => self.configure_firmware(record).await,
                Phase::BootingInstaller => self.boot_installer(record, attempt, persist).await,
                Phase::Installing => self.install(record, persist).await,
                Phase::Rebooting => {
                    let done = matches!(
                        record.state,
                        State::Rebooting {
                            boot_on_disk: true,
                            ..
                        }
                    );
                    self.reboot_to_disk(done).await
                }
                Phase::FirstBoot => self.first_boot().await,
            };
            *record.seconds.entry(phase).or_default() += started.elapsed().as_secs_f64();
            // The BMC's misbehaviour that cairn worked around is part of this server's report.
            for worked_around in self.bmc.take_notes() {
                let note = format!("{}: {worked_around}", phase.as_str());
                self.observer.note(name, &note);
                record.notes.push(note);
            }
            if let (
                Some(since),
                Ok(_)
                | Err(StepError {
                    bmc_away: false, ..
                }),
            ) = (away_since, &result)
            {
                let note = format!(
                    "{}: the BMC answers again after {:.0?}",
                    phase.as_str(),
                    since.elapsed()
                );
                self.observer.note(name, &note);
                record.notes.push(note);
                away_since = None;
            }
            if !matches!(result, Err(StepError { bmc_away: true, .. })) {
                answered = true;
            }
            let next = match result {
                Ok(next) => next,
                // A BMC that restarts is away for minutes: wait for it within its own limit
                // instead of spending the phase's attempts.
                Err(e)
                    if e.bmc_away
                        && answered
                        && away_since
                            .is_none_or(|t| t.elapsed() < self.policy.bmc_away_timeout) =>
                {
                    let wait = self.policy.backoff(1);
                    if away_since.is_none() {
                        // Silent since this try began.
                        away_since = Some(started);
                        let note = format!(
                            "{} attempt {attempt}: {}; the BMC is not answering (restarting?), \
                             waiting for it for up to {:.0?}",
                            phase.as_str(),
                            e.reason,
                            self.policy.bmc_away_timeout
                        );
                        self.observer.note(name, &note);
                        record.notes.push(note);
                    }
                    tokio::time::sleep(wait).await;
                    State::start_of(phase, attempt)
                }
                Err(e) if e.retryable && attempt < self.policy.max_attempts => {
                    let wait = self.policy.backoff(attempt);
                    let note = format!(
                        "{} attempt {attempt} failed: {}; retrying in {:.0?}",
                        phase.as_str(),
                        e.reason,
                        wait
                    );
                    self.observer.note(name, &note);
                    record.notes.push(note);
                    tokio::time::sleep(wait).await;
                    State::start_of(phase, attempt + 1)
                }
                Err(e) => State::Failed {
                    phase,
                    reason: if e.retryable {
                        format!("{} (after {attempt} attempts)", e.reason)
                    } else {
                        e.reason
                    },
                },
            };
            self.set(record, next, persist);
        }
        if let BootMethod::VirtualMedia { .. } = self.plan.boot {
            self.discard_media(record).await;
            persist(record);
        }
    }

    /// The server's seeded ISO is deleted, and its token revoked unless the server is
    /// provisioned (then the appliance has spent it). Failures are notes: the install's
    /// outcome stands, and an unused token expires with its TTL anyway.
    async fn discard_media(&self, record: &mut Record) {
        let name = self.plan.name.as_str();
        if let Err(e) = self.media.remove(name).await {
            let note = format!("deleting the seeded ISO: {e}");
            self.observer.note(name, &note);
            record.notes.push(note);
        }
        let Some(id) = record.media_token.take() else {
            return;
        };
        if matches!(record.state, State::Provisioned { .. }) {
            return;
        }
        match self.minter.revoke(&id).await {
            Ok(()) => {
                tracing::info!(server = %name, token = %id, "revoked the unused enrollment token")
            }
            Err(e) => {
                let note = format!("revoking enrollment token {id}: {e}");
                self.observer.note(name, &note);
                record.notes.push(note);
            }
        }
    }

    /// Mints this attempt's token, builds the ISO holding it and answers its URL. The token
    /// lives until the appliance has had the install and the registration timeouts to use it.
    async fn seed_media(
        &self,
        record: &mut Record,
        site: &str,
        persist: &(dyn Fn(&Record) + Sync),
    ) -> Result<String, StepError> {
        let name = self.plan.name.as_str();
        // An earlier attempt's (or run's) ISO and token are worthless now.
        self.discard_media(record).await;
        let binding = TokenBinding {
            site: site.to_owned(),
            mac: self.plan.boot_mac.clone(),
            serial: record.serial.clone().or_else(|| self.plan.serial.clone()),
            ttl: self.policy.install_start_timeout + self.policy.register_timeout,
        };
        let token = self.minter.mint(&binding).await.map_err(|e| match e {
            MintError::Refused(why) => StepError::fatal(format!(
                "the hub refused to mint this server's enrollment token ({why}): virtual media \
                 needs an operator or admin token for site {site:?} in --token-file"
            )),
            MintError::Other(why) => {
                StepError::retry(format!("minting this server's enrollment token: {why}"))
            }
        })?;
        tracing::info!(server = %name, token = %token.id, mac = %binding.mac, serial = ?binding.serial, "minted the seeded ISO's enrollment token");
        record.media_token = Some(token.id.clone());
        persist(record);
        self.media
            .publish(name, &token.secret)
            .await
            .map_err(|e| StepError::retry(format!("building the seeded installer ISO: {e}")))
    }

    fn set(&self, record: &mut Record, state: State, persist: &(dyn Fn(&Record) + Sync)) {
        record.state = state;
        persist(record);
        self.observer.changed(&self.plan.name, &record.state);
    }

    /// `inspecting`: the BMC answers and says what the machine is.
    pub async fn inspect(&self, record: &mut Record) -> Result<State, StepError> {
        let power = self
            .bmc
            .power_state()
            .await
            .map_err(|e| StepError::bmc("reading power state", e))?;
        match self.bmc.inventory().await {
            Ok(inv) => {
                let reported = inv
                    .serial
                    .as_deref()
                    .map(str::trim)
                    .filter(|s| !s.is_empty());
                if let (Some(bmc), Some(declared)) = (reported, self.plan.serial.as_deref())
                    && bmc != declared.trim()
                {
                    return Err(StepError::fatal(format!(
                        "its BMC reports serial {bmc:?} but rack.yaml declares {declared:?}: \
                         check this server's bmc address (another machine answers there) \
                         or correct its serial"
                    )));
                }
                record.serial = reported.map(str::to_owned);
                record.hardware = Some(format!(
                    "{} {} serial {} ({} NICs, {} disks), power {power}",
                    inv.manufacturer.as_deref().unwrap_or("?"),
                    inv.model.as_deref().unwrap_or("?"),
                    inv.serial.as_deref().unwrap_or("?"),
                    inv.nics.len(),
                    inv.disks.len()
                ));
            }
            // IPMI has little inventory; power state alone proves the BMC answers.
            Err(BmcError::Unsupported { .. }) => {
                record.hardware = Some(format!(
                    "power {power} (no inventory over {})",
                    self.bmc.protocol()
                ));
            }
            Err(e) => return Err(StepError::bmc("reading inventory", e)),
        }
        Ok(State::ConfiguringFirmware { attempt: 1 })
    }

    /// `configuring-firmware`: the server's profile, if it has one, is applied as `cairn
    /// firmware apply` does ([`apply_firmware`]); what was done is a note.
    pub async fn configure_firmware(&self, record: &mut Record) -> Result<State, StepError> {
        if let Some(Firmware { profile, options }) = &self.plan.firmware {
            let note = apply_firmware(self.bmc, profile, options).await?;
            tracing::info!(server = %self.plan.name, profile = %profile.name, outcome = %note, "firmware profile applied");
            self.observer.note(&self.plan.name, &note);
            record.notes.push(note);
        }
        Ok(State::BootingInstaller { attempt: 1 })
    }

    /// `booting-installer`: one-time boot to PXE or the inserted ISO, then power on (or
    /// cycle, when it was on, so the override takes effect now). The install that follows
    /// counts as part of this attempt.
    pub async fn boot_installer(
        &self,
        record: &mut Record,
        attempt: u32,
        persist: &(dyn Fn(&Record) + Sync),
    ) -> Result<State, StepError> {
        let device = match &self.plan.boot {
            BootMethod::Pxe => BootDevice::Pxe,
            BootMethod::VirtualMedia { site } => {
                let url = self.seed_media(record, site, persist).await?;
                self.bmc.media_insert(&url).await.map_err(|e| {
                    let mut e = StepError::bmc("inserting the installer ISO", e);
                    // The URL leads to the token: never in the record or a log.
                    e.reason = e.reason.replace(&url, "<the seeded ISO's URL>");
                    e
                })?;
                BootDevice::Cd
            }
        };
        self.bmc
            .set_boot_override(BootOverride {
                device,
                persistent: false,
                mode: None,
            })
            .await
            .map_err(|e| StepError::bmc(&format!("setting one-time boot to {device}"), e))?;
        let power = self
            .bmc
            .power_state()
            .await
            .map_err(|e| StepError::bmc("reading power state", e))?;
        let action = if power == PowerState::Off {
            PowerAction::On
        } else {
            PowerAction::Cycle
        };
        self.bmc
            .power(action)
            .await
            .map_err(|e| StepError::bmc(&format!("power {action:?}"), e))?;
        Ok(State::Installing {
            attempt,
            step: None,
            bytes_written: 0,
            bytes_total: None,
        })
    }

    /// `installing`: follows the agent's reports until it completes, fails or stalls.
    pub async fn install(
        &self,
        record: &mut Record,
        persist: &(dyn Fn(&Record) + Sync),
    ) -> Result<State, StepError> {
        if let BootMethod::VirtualMedia { .. } = self.plan.boot {
            return self.install_from_media().await;
        }
        let mac = &self.plan.boot_mac;
        let attempt = record.state.attempt();
        // Reports already there belong to an earlier install.
        let baseline = self
            .install
            .latest(mac)
            .await
            .map_err(|e| StepError::retry(format!("boot server: {e}")))?
            .map(|(seq, _)| seq);
        let mut last_seq = baseline;
        let mut last_change = Instant::now();
        let mut started = false;
        let mut boot_on_disk = false;
        // The boot-device call runs beside the polling: a BMC that takes its ~20 s timeout
        // must not hide the agent's reports (a whole write can pass in that time).
        let mut boot_call: Option<std::pin::Pin<Box<dyn Future<Output = bool> + Send + '_>>> = None;
        loop {
            let limit = if started {
                self.policy.install_stall_timeout
            } else {
                self.policy.install_start_timeout
            };
            if last_change.elapsed() > limit {
                let what = if started {
                    "the install agent stopped reporting"
                } else {
                    "the installer never started reporting (did the server boot it?)"
                };
                return Err(StepError::retry(format!("{what} within {limit:.0?}")));
            }
            match boot_call.as_mut() {
                Some(call) => tokio::select! {
                    done = call => {
                        boot_on_disk = done;
                        boot_call = None;
                    }
                    () = tokio::time::sleep(self.policy.poll) => {}
                },
                None => tokio::time::sleep(self.policy.poll).await,
            }
            let latest = match self.install.latest(mac).await {
                Ok(l) => l,
                // The boot server being briefly away is not the server's fault.
                Err(e) => {
                    tracing::debug!(server = %self.plan.name, error = %e, "boot server poll");
                    continue;
                }
            };
            let Some((seq, progress)) = latest else {
                continue;
            };
            if Some(seq) == last_seq {
                continue;
            }
            last_seq = Some(seq);
            last_change = Instant::now();
            if !started {
                // The installer runs, so the one-time PXE boot is spent: the boot device goes
                // back to disk now, while the BMC is idle. At the agent's reboot some BMCs
                // (ipmi_sim) drop requests while the machine resets, which cost a ~20 s
                // timeout and a retry. If this fails, `rebooting` does it.
                boot_call = Some(Box::pin(async { self.boot_disk().await.is_ok() }));
            }
            started = true;
            if matches!(progress.step, InstallStep::Failed | InstallStep::Completed) {
                // The installer ran, so its PXE boot is spent either way: finish the call.
                if let Some(call) = boot_call.take() {
                    boot_on_disk = call.await;
                }
            }
            if progress.step == InstallStep::Failed {
                return Err(StepError::retry(format!(
                    "install agent failed: {}",
                    progress.message
                )));
            }
            if progress.step == InstallStep::Completed {
                return Ok(State::Rebooting {
                    attempt: 1,
                    boot_on_disk,
                });
            }
            self.set(
                record,
                State::Installing {
                    attempt,
                    step: Some(progress.step),
                    bytes_written: progress.bytes_written,
                    bytes_total: progress.bytes_total,
                },
                persist,
            );
        }
    }

    /// `installing` from virtual media: the ISO's installer reports to nobody (its seed
    /// stands in for the boot server), so the install is seen to have finished when the
    /// appliance it wrote has booted from the disk and registered with the hub. The BMC
    /// consumes the one-time CD override at the installer's reboot. Bounded by the install
    /// and registration timeouts together; a failed install shows as that timeout.
    async fn install_from_media(&self) -> Result<State, StepError> {
        let limit = self.policy.install_start_timeout + self.policy.register_timeout;
        let start = Instant::now();
        loop {
            match self.fleet.find(&self.plan.name, &self.plan.boot_mac).await {
                Ok(Some(_)) => {
                    return Ok(State::Rebooting {
                        attempt: 1,
                        boot_on_disk: false,
                    });
                }
                Ok(None) => {}
                Err(e) => tracing::debug!(server = %self.plan.name, error = %e, "hub poll"),
            }
            if start.elapsed() > limit {
                return Err(StepError::retry(format!(
                    "the virtual-media install did not end in a registered appliance within {limit:.0?} (the ISO's installer reports only on the server's console)"
                )));
            }
            tokio::time::sleep(self.policy.poll).await;
        }
    }

    /// `rebooting`: the boot device goes back to disk and the media is ejected, so the
    /// server never boots the installer again; the agent reboots the machine itself.
    /// `done`: the boot device was already set while the installer ran.
    pub async fn reboot_to_disk(&self, done: bool) -> Result<State, StepError> {
        if !done {
            self.boot_disk().await?;
        }
        if let BootMethod::VirtualMedia { .. } = self.plan.boot {
            self.bmc
                .media_eject()
                .await
                .map_err(|e| StepError::bmc("ejecting the installer ISO", e))?;
        }
        Ok(State::FirstBoot { attempt: 1 })
    }

    /// The boot device back to disk, for good.
    async fn boot_disk(&self) -> Result<(), StepError> {
        self.bmc
            .set_boot_override(BootOverride {
                device: BootDevice::Disk,
                persistent: true,
                mode: None,
            })
            .await
            .map_err(|e| StepError::bmc("setting boot to disk", e))
    }

    /// `first-boot`: waits for the appliance to register with the hub. A server found off
    /// (a power cut after the install) is powered on; it boots its disk.
    pub async fn first_boot(&self) -> Result<State, StepError> {
        let start = Instant::now();
        let mut powered = false;
        loop {
            match self.fleet.find(&self.plan.name, &self.plan.boot_mac).await {
                Ok(Some(appliance_id)) => return Ok(State::Provisioned { appliance_id }),
                Ok(None) => {}
                Err(e) => tracing::debug!(server = %self.plan.name, error = %e, "hub poll"),
            }
            if start.elapsed() > self.policy.register_timeout {
                return Err(StepError::retry(format!(
                    "the appliance did not register with the hub within {:.0?}",
                    self.policy.register_timeout
                )));
            }
            if !powered && let Ok(PowerState::Off) = self.bmc.power_state().await {
                self.bmc
                    .power(PowerAction::On)
                    .await
                    .map_err(|e| StepError::bmc("powering on into the installed disk", e))?;
                powered = true;
            }
            tokio::time::sleep(self.policy.poll).await;
        }
    }
}

/// `configuring-firmware`'s work, the code of `cairn firmware apply`: plan; stage what
/// differs; boot the server (reset when on, power on when off, per `options`) and poll its
/// BIOS until the staged values are current, within the settle timeout; run and verify the
/// profile's firmware updates. Answers the line for the report. Values the BMC refuses and
/// settings not in effect after the boot fail the server at once, naming the attributes:
/// applying the same profile again would end the same way.
pub async fn apply_firmware(
    bmc: &dyn Bmc,
    profile: &Profile,
    options: &ApplyOptions,
) -> Result<String, StepError> {
    match apply(bmc, profile, options).await {
        Ok(applied) => Ok(format!("firmware profile {applied}")),
        Err(e @ BmcError::NotApplied { .. }) => Err(StepError::fatal(format!(
            "firmware profile {}: {e}; check the profile's values against this server's BIOS \
             with `cairn firmware plan`",
            profile.name
        ))),
        Err(e) => Err(StepError::bmc(
            &format!("applying firmware profile {}", profile.name),
            e,
        )),
    }
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
