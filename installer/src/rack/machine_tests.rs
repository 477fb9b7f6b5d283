//! Logic tests of the state machine with doubles of the BMC, boot server and hub. The real
//! peers (ipmi_sim, QEMU, the boot server, the hub) are exercised by qemu-tests' scenarios.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use cairn_firmware_profiles::apply::Images;
use cairn_firmware_profiles::image::ImageCache;
use cairn_hardware::bmc::{BiosSettings, Capability, Inventory};

use super::*;

#[derive(Default)]
struct FakeBmc {
    power: Mutex<Option<PowerState>>,
    calls: Mutex<Vec<String>>,
    /// Errors returned by the next `power_state` calls.
    power_state_errors: Mutex<VecDeque<BmcError>>,
    /// How long a boot-device change takes (a BMC timing out and retrying).
    boot_delay: Duration,
    /// The serial its inventory reports (`None`: no inventory, as over IPMI).
    serial: Option<String>,
    /// BIOS attributes: staged ones become current at the next boot (power on, reset,
    /// cycle), except `sticky` ones, which the firmware never takes.
    bios: Mutex<BiosSettings>,
    sticky: Vec<String>,
    /// Errors returned by the next `bios` calls.
    bios_errors: Mutex<VecDeque<BmcError>>,
}

impl FakeBmc {
    fn off() -> Self {
        let b = FakeBmc::default();
        *b.power.lock().unwrap() = Some(PowerState::Off);
        b
    }
    /// Off, with these current BIOS attributes.
    fn with_bios(attributes: &[(&str, &str)]) -> Self {
        let b = FakeBmc::off();
        b.bios.lock().unwrap().current = attributes
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        b
    }
    fn log(&self, s: String) {
        self.calls.lock().unwrap().push(s);
    }
    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Bmc for FakeBmc {
    fn protocol(&self) -> &'static str {
        "ipmi"
    }
    fn capabilities(&self) -> &'static [Capability] {
        &[Capability::Power, Capability::Boot]
    }
    async fn power_state(&self) -> cairn_hardware::bmc::BmcResult<PowerState> {
        if let Some(e) = self.power_state_errors.lock().unwrap().pop_front() {
            return Err(e);
        }
        Ok(self.power.lock().unwrap().unwrap_or(PowerState::Off))
    }
    async fn power(&self, action: PowerAction) -> cairn_hardware::bmc::BmcResult<()> {
        self.log(format!("power {action:?}"));
        let state = match action {
            PowerAction::Off | PowerAction::SoftOff => PowerState::Off,
            _ => PowerState::On,
        };
        *self.power.lock().unwrap() = Some(state);
        if state == PowerState::On {
            let mut bios = self.bios.lock().unwrap();
            let staged = std::mem::take(&mut bios.pending);
            for (k, v) in staged {
                if self.sticky.contains(&k) {
                    bios.pending.insert(k, v);
                } else {
                    bios.current.insert(k, v);
                }
            }
        }
        Ok(())
    }
    async fn bios(&self) -> cairn_hardware::bmc::BmcResult<BiosSettings> {
        if let Some(e) = self.bios_errors.lock().unwrap().pop_front() {
            return Err(e);
        }
        Ok(self.bios.lock().unwrap().clone())
    }
    async fn bios_registry(
        &self,
    ) -> cairn_hardware::bmc::BmcResult<Option<Vec<cairn_hardware::bmc::AttributeSpec>>> {
        Ok(None)
    }
    async fn stage_bios(
        &self,
        changes: &BTreeMap<String, serde_json::Value>,
    ) -> cairn_hardware::bmc::BmcResult<bool> {
        for (k, v) in changes {
            self.log(format!("stage {k}={}", v.as_str().unwrap_or_default()));
        }
        self.bios.lock().unwrap().pending.extend(changes.clone());
        Ok(true)
    }
    async fn boot_override(&self) -> cairn_hardware::bmc::BmcResult<BootOverride> {
        Err(self.unsupported(Capability::Boot))
    }
    async fn set_boot_override(&self, boot: BootOverride) -> cairn_hardware::bmc::BmcResult<()> {
        tokio::time::sleep(self.boot_delay).await;
        self.log(format!(
            "boot {} {}",
            boot.device,
            if boot.persistent {
                "persistent"
            } else {
                "once"
            }
        ));
        Ok(())
    }
    async fn inventory(&self) -> cairn_hardware::bmc::BmcResult<Inventory> {
        match &self.serial {
            Some(serial) => Ok(Inventory {
                serial: Some(serial.clone()),
                ..Inventory::default()
            }),
            None => Err(self.unsupported(Capability::Inventory)),
        }
    }
    async fn media_insert(&self, url: &str) -> cairn_hardware::bmc::BmcResult<()> {
        self.log(format!("media insert {url}"));
        Ok(())
    }
    async fn media_eject(&self) -> cairn_hardware::bmc::BmcResult<()> {
        self.log("media eject".into());
        Ok(())
    }
}

/// Reports: `current` is what the boot server holds; each poll reveals the next queued one.
struct FakeInstall {
    current: Mutex<Option<(u64, InstallProgress)>>,
    queue: Mutex<VecDeque<InstallStep>>,
    /// Instead of a step per poll, the queued steps come one per period from this start,
    /// whether anyone polls or not (an agent does not wait for the rack).
    timed: Option<(Instant, Duration)>,
}

impl FakeInstall {
    fn new(stale: Option<InstallStep>, steps: &[InstallStep]) -> Self {
        FakeInstall {
            current: Mutex::new(stale.map(|s| (7, report(s)))),
            queue: Mutex::new(steps.iter().copied().collect()),
            timed: None,
        }
    }

    fn timed(steps: &[InstallStep], every: Duration) -> Self {
        FakeInstall {
            timed: Some((Instant::now(), every)),
            ..FakeInstall::new(None, steps)
        }
    }
}

fn report(step: InstallStep) -> InstallProgress {
    InstallProgress {
        mac: "52:54:00:00:00:01".into(),
        step,
        bytes_written: 10,
        bytes_total: Some(100),
        message: if step == InstallStep::Failed {
            "no disk matches /dev/vda".into()
        } else {
            String::new()
        },
    }
}

#[async_trait]
impl InstallProgressSource for FakeInstall {
    async fn latest(&self, _mac: &str) -> Result<Option<(u64, InstallProgress)>, PeerError> {
        if let Some((start, every)) = self.timed {
            let queue = self.queue.lock().unwrap();
            let due = (start.elapsed().as_millis() / every.as_millis()) as usize;
            return Ok(due.checked_sub(1).map(|i| {
                let step = queue[i.min(queue.len() - 1)];
                (due.min(queue.len()) as u64, report(step))
            }));
        }
        let mut current = self.current.lock().unwrap();
        let out = current.clone();
        if let Some(step) = self.queue.lock().unwrap().pop_front() {
            let seq = current.as_ref().map(|(s, _)| s + 1).unwrap_or(1);
            *current = Some((seq, report(step)));
        }
        Ok(out)
    }
}

struct FakeFleet {
    /// Polls before the appliance shows up (`None`: never).
    after: Option<u32>,
    polls: Mutex<u32>,
}

impl FakeFleet {
    /// A hub where the appliance shows up after `after` polls (`None`: never).
    fn after(after: Option<u32>) -> Self {
        FakeFleet {
            after,
            polls: Mutex::new(0),
        }
    }
}

#[async_trait]
impl FleetView for FakeFleet {
    async fn find(&self, name: &str, _mac: &str) -> Result<Option<String>, PeerError> {
        let mut polls = self.polls.lock().unwrap();
        *polls += 1;
        Ok(match self.after {
            Some(n) if *polls > n => Some(format!("app-{name}")),
            _ => None,
        })
    }
}

/// The hub's token minting: records what each token was bound to and which were revoked.
#[derive(Default)]
struct FakeMinter {
    minted: Mutex<Vec<TokenBinding>>,
    revoked: Mutex<Vec<String>>,
    /// Answers every mint with this refusal (a viewer's token).
    refuse: Option<String>,
}

#[async_trait]
impl TokenMinter for FakeMinter {
    async fn mint(&self, binding: &TokenBinding) -> Result<MintedToken, MintError> {
        if let Some(why) = &self.refuse {
            return Err(MintError::Refused(why.clone()));
        }
        let mut minted = self.minted.lock().unwrap();
        minted.push(binding.clone());
        let n = minted.len();
        Ok(MintedToken {
            id: format!("tok{n}"),
            secret: format!("cairn-et.tok{n}.SECRET{n}"),
        })
    }
    async fn revoke(&self, id: &str) -> Result<(), PeerError> {
        self.revoked.lock().unwrap().push(id.to_string());
        Ok(())
    }
}

/// The seeded ISOs: what is published now (URL and the token it holds), and every URL ever.
#[derive(Default)]
struct FakeMedia {
    live: Mutex<BTreeMap<String, (String, String)>>,
    urls: Mutex<Vec<String>>,
}

#[async_trait]
impl MediaStore for FakeMedia {
    async fn publish(&self, name: &str, token: &str) -> Result<String, PeerError> {
        let mut urls = self.urls.lock().unwrap();
        let url = format!(
            "http://10.77.0.1:8080/media/{:032x}/{name}.iso",
            urls.len() + 1
        );
        urls.push(url.clone());
        let old = self
            .live
            .lock()
            .unwrap()
            .insert(name.to_string(), (url.clone(), token.to_string()));
        assert!(
            old.is_none(),
            "an earlier ISO was not removed first: {old:?}"
        );
        Ok(url)
    }
    async fn remove(&self, name: &str) -> Result<(), PeerError> {
        self.live.lock().unwrap().remove(name);
        Ok(())
    }
}

#[derive(Default)]
struct Seen {
    states: Mutex<Vec<String>>,
    notes: Mutex<Vec<String>>,
}

impl Observer for Seen {
    fn changed(&self, _server: &str, state: &State) {
        self.states.lock().unwrap().push(state.name().to_string());
    }
    fn note(&self, _server: &str, message: &str) {
        self.notes.lock().unwrap().push(message.to_string());
    }
}

fn plan(boot: BootMethod) -> ServerPlan {
    ServerPlan {
        name: "srv1".into(),
        boot_mac: "52:54:00:00:00:01".into(),
        serial: None,
        boot,
        firmware: None,
    }
}

/// As `cairn rack provision` applies profiles, with a 30 s settle timeout and no image server.
fn firmware_options(cache: &std::path::Path) -> ApplyOptions {
    ApplyOptions {
        reset: true,
        power_on: true,
        settle_timeout: Duration::from_secs(30),
        images: Images {
            cache: std::sync::Arc::new(ImageCache::open(cache).unwrap()),
            server: None,
            upstream_allowed: false,
        },
    }
}

fn policy() -> Policy {
    Policy {
        max_attempts: 3,
        backoff: Duration::from_secs(1),
        backoff_max: Duration::from_secs(8),
        poll: Duration::from_secs(1),
        install_start_timeout: Duration::from_secs(60),
        install_stall_timeout: Duration::from_secs(60),
        register_timeout: Duration::from_secs(120),
        bmc_away_timeout: Duration::from_secs(60),
    }
}

const FULL: &[InstallStep] = &[
    InstallStep::Started,
    InstallStep::DiskSelected,
    InstallStep::Partitioned,
    InstallStep::Writing,
    InstallStep::Verified,
    InstallStep::SeedWritten,
    InstallStep::BootloaderInstalled,
    InstallStep::Completed,
];

struct Run {
    record: Record,
    /// Every persisted record, as the state file would hold it.
    persisted: Vec<String>,
    seen: Seen,
}

impl Run {
    /// The phase the server failed in and why; panics when it did not fail.
    fn failure(&self) -> (&Phase, &str) {
        match &self.record.state {
            State::Failed { phase, reason } => (phase, reason),
            other => panic!("expected failed, got {other:?}"),
        }
    }
}

async fn run(
    plan: &ServerPlan,
    bmc: &FakeBmc,
    install: &FakeInstall,
    fleet: &FakeFleet,
    start: State,
) -> Run {
    let (minter, media) = (FakeMinter::default(), FakeMedia::default());
    run_with(plan, bmc, install, fleet, &minter, &media, start).await
}

async fn run_with(
    plan: &ServerPlan,
    bmc: &FakeBmc,
    install: &FakeInstall,
    fleet: &FakeFleet,
    minter: &FakeMinter,
    media: &FakeMedia,
    start: State,
) -> Run {
    let seen = Seen::default();
    let persisted = Mutex::new(Vec::new());
    let policy = policy();
    let m = Machine {
        plan,
        bmc,
        install,
        fleet,
        minter,
        media,
        policy: &policy,
        observer: &seen,
    };
    let mut record = Record {
        state: start,
        ..Record::default()
    };
    let persist = |r: &Record| {
        persisted
            .lock()
            .unwrap()
            .push(serde_json::to_string(r).unwrap())
    };
    m.run(&mut record, &persist).await;
    Run {
        record,
        persisted: persisted.into_inner().unwrap(),
        seen,
    }
}

#[tokio::test(start_paused = true)]
async fn pxe_server_goes_through_every_phase_and_ends_booting_its_disk() {
    let bmc = FakeBmc::off();
    let install = FakeInstall::new(None, FULL);
    let fleet = FakeFleet::after(Some(3));
    let r = run(
        &plan(BootMethod::Pxe),
        &bmc,
        &install,
        &fleet,
        State::Registered,
    )
    .await;
    assert_eq!(
        r.record.state,
        State::Provisioned {
            appliance_id: "app-srv1".into()
        }
    );
    let mut phases: Vec<String> = r.seen.states.lock().unwrap().clone();
    phases.dedup();
    assert_eq!(
        phases,
        [
            "inspecting",
            "configuring-firmware",
            "booting-installer",
            "installing",
            "rebooting",
            "first-boot",
            "provisioned"
        ]
    );
    // One-time PXE, power on from off, then disk for good.
    assert_eq!(
        bmc.calls(),
        ["boot pxe once", "power On", "boot disk persistent"]
    );
    // Every change was persisted, including install steps.
    assert!(
        r.persisted.iter().any(|s| s.contains("\"writing\"")),
        "{:?}",
        r.persisted
    );
    assert!(r.record.seconds.contains_key(&Phase::Installing));
    assert!(
        r.record
            .hardware
            .as_deref()
            .unwrap()
            .contains("no inventory over ipmi")
    );
}

#[tokio::test(start_paused = true)]
async fn wrong_password_fails_at_once_without_retrying() {
    let bmc = FakeBmc::off();
    bmc.power_state_errors
        .lock()
        .unwrap()
        .push_back(BmcError::Auth {
            user: "admin".into(),
            detail: "RAKP 2: unauthorized name".into(),
        });
    let install = FakeInstall::new(None, FULL);
    let fleet = FakeFleet::after(Some(0));
    let r = run(
        &plan(BootMethod::Pxe),
        &bmc,
        &install,
        &fleet,
        State::Registered,
    )
    .await;
    let (phase, reason) = r.failure();
    assert_eq!(*phase, Phase::Inspecting);
    assert!(reason.contains("authentication failed"), "{reason}");
    assert!(
        bmc.calls().is_empty(),
        "nothing was attempted: {:?}",
        bmc.calls()
    );
    assert!(r.seen.notes.lock().unwrap().is_empty(), "no retries");
}

/// A BMC that stops answering after it answered (restarting: timeouts, refused connections)
/// is waited for up to `bmc_away_timeout` without spending attempts; past that, attempts
/// count as for any error. One silent from the start is not waited for.
#[tokio::test(start_paused = true)]
async fn a_silent_bmc_is_waited_for_without_spending_attempts_until_its_limit() {
    let timeout = || BmcError::Timeout {
        doing: "GET Bios".into(),
        seconds: 5.0,
    };
    let refused = || BmcError::Transport {
        doing: "GET Bios".into(),
        source: "connection refused".into(),
    };
    struct Case {
        name: &'static str,
        /// Errors of the first `power_state` calls (inspection: the first contact).
        first_contact: usize,
        /// Errors of the `bios` calls (configuring-firmware, after inspection answered).
        later: Vec<BmcError>,
        provisioned: bool,
        /// Notes that must appear, in this order (others may come between).
        notes: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "a short silence is waited out",
            first_contact: 0,
            later: vec![timeout(), timeout()],
            provisioned: true,
            notes: &[
                "configuring-firmware attempt 1: BMC applying firmware profile baseline: no answer within 5.0 s while GET Bios; the BMC is not answering (restarting?), waiting for it for up to 60s",
                "configuring-firmware: the BMC answers again after 2s",
            ],
        },
        Case {
            // 60 one-second waits fill the limit: then attempts 1 and 2 fail too.
            name: "past the limit attempts count",
            first_contact: 0,
            later: (0..62).map(|_| refused()).collect(),
            provisioned: true,
            notes: &[
                "waiting for it for up to 60s",
                "configuring-firmware attempt 1 failed: BMC applying firmware profile baseline: GET Bios: connection refused",
                "configuring-firmware attempt 2 failed",
                "configuring-firmware: the BMC answers again after 63s",
            ],
        },
        Case {
            name: "and run out",
            first_contact: 0,
            later: (0..63).map(|_| refused()).collect(),
            provisioned: false,
            notes: &[
                "waiting for it",
                "configuring-firmware attempt 1 failed",
                "configuring-firmware attempt 2 failed",
            ],
        },
        Case {
            name: "silent from the start: attempts only",
            first_contact: 3,
            later: vec![],
            provisioned: false,
            notes: &["inspecting attempt 1 failed", "inspecting attempt 2 failed"],
        },
    ];
    let cache = tempfile::tempdir().unwrap();
    for case in cases {
        let name = case.name;
        let bmc = FakeBmc::with_bios(&[("ProcTurboMode", "Enabled")]);
        bmc.power_state_errors
            .lock()
            .unwrap()
            .extend((0..case.first_contact).map(|_| refused()));
        bmc.bios_errors.lock().unwrap().extend(case.later);
        let install = FakeInstall::new(None, FULL);
        let fleet = FakeFleet::after(Some(0));
        let r = run(
            &firmware_plan(&[("ProcTurboMode", "Disabled")], cache.path()),
            &bmc,
            &install,
            &fleet,
            State::Registered,
        )
        .await;
        let notes = r.seen.notes.lock().unwrap().clone();
        assert_eq!(
            matches!(r.record.state, State::Provisioned { .. }),
            case.provisioned,
            "{name}: {:?} {notes:?}",
            r.record.state
        );
        let mut rest = notes.iter();
        for want in case.notes {
            assert!(
                rest.any(|n| n.contains(want)),
                "{name}: no {want:?} (in order) in {notes:?}"
            );
        }
        if case.first_contact > 0 {
            assert!(
                !notes.iter().any(|n| n.contains("waiting for it")),
                "{name}: {notes:?}"
            );
        }
        if !case.provisioned {
            let (_, reason) = r.failure();
            assert!(reason.contains("after 3 attempts"), "{name}: {reason}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_failed_install_boots_the_installer_again_and_gives_up_after_the_limit() {
    let bmc = FakeBmc::off();
    let steps = [
        InstallStep::Started,
        InstallStep::Failed,
        InstallStep::Started,
        InstallStep::Failed,
        InstallStep::Started,
        InstallStep::Failed,
    ];
    let install = FakeInstall::new(None, &steps);
    let fleet = FakeFleet::after(Some(0));
    let r = run(
        &plan(BootMethod::Pxe),
        &bmc,
        &install,
        &fleet,
        State::Registered,
    )
    .await;
    let (phase, reason) = r.failure();
    assert_eq!(*phase, Phase::Installing);
    assert!(
        reason.contains("no disk matches /dev/vda") && reason.contains("after 3 attempts"),
        "{reason}"
    );
    // First boot powers on; the retries cycle the running machine into the installer again.
    // Once an installer reports, its PXE boot is spent and the boot device goes back to disk
    // (while the BMC is idle rather than at the agent's reboot).
    assert_eq!(
        bmc.calls(),
        [
            "boot pxe once",
            "power On",
            "boot disk persistent",
            "boot pxe once",
            "power Cycle",
            "boot disk persistent",
            "boot pxe once",
            "power Cycle",
            "boot disk persistent"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn reports_from_an_earlier_install_are_not_taken_for_this_one() {
    let bmc = FakeBmc::off();
    // The boot server still holds "completed" from a previous run, and no new install
    // ever reports: the step must time out rather than succeed.
    let install = FakeInstall::new(Some(InstallStep::Completed), &[]);
    let fleet = FakeFleet::after(Some(0));
    let r = run(
        &plan(BootMethod::Pxe),
        &bmc,
        &install,
        &fleet,
        State::BootingInstaller { attempt: 3 },
    )
    .await;
    let (phase, reason) = r.failure();
    assert_eq!(*phase, Phase::Installing);
    assert!(reason.contains("never started reporting"), "{reason}");
}

/// A plan whose inventory entry names a profile setting these BIOS attributes; images would
/// be cached in `cache`.
fn firmware_plan(attributes: &[(&str, &str)], cache: &std::path::Path) -> ServerPlan {
    let mut yaml = "name: baseline\nmatch: {manufacturer: Test}\nbios:\n  attributes:\n".to_owned();
    for (k, v) in attributes {
        yaml.push_str(&format!("    {k}: {v}\n"));
    }
    ServerPlan {
        firmware: Some(Firmware {
            profile: cairn_firmware_profiles::profile::Profile::parse(
                &yaml,
                std::path::Path::new("t.yaml"),
            )
            .unwrap(),
            options: std::sync::Arc::new(firmware_options(cache)),
        }),
        ..plan(BootMethod::Pxe)
    }
}

/// What `configuring-firmware` ends in.
#[derive(Debug)]
enum FirmwareOutcome {
    /// The server goes on, with a note holding this.
    GoesOn(&'static str),
    /// The server fails in `configuring-firmware` with a reason holding all of these.
    Fails(&'static [&'static str]),
}

#[tokio::test(start_paused = true)]
async fn configuring_firmware_applies_and_verifies_the_profile_or_fails_naming_attributes() {
    use FirmwareOutcome::*;
    let timeout = || BmcError::Timeout {
        doing: "GET Bios".into(),
        seconds: 20.0,
    };
    struct Case {
        name: &'static str,
        bios: &'static [(&'static str, &'static str)],
        profile: &'static [(&'static str, &'static str)],
        sticky: &'static [&'static str],
        bios_errors: usize,
        want: FirmwareOutcome,
        /// The BMC calls of the phase (what follows it is the PXE boot).
        calls: &'static [&'static str],
    }
    let cases = [
        Case {
            name: "in baseline: nothing staged, no boot",
            bios: &[("ProcTurboMode", "Disabled")],
            profile: &[("ProcTurboMode", "Disabled")],
            sticky: &[],
            bios_errors: 0,
            want: GoesOn("firmware profile baseline: already in baseline, nothing changed"),
            calls: &[],
        },
        Case {
            name: "staged, powered on from off, verified",
            bios: &[("ProcTurboMode", "Enabled"), ("NicBoot1", "NetworkBoot")],
            profile: &[("ProcTurboMode", "Disabled"), ("NicBoot1", "NetworkBoot")],
            sticky: &[],
            bios_errors: 0,
            want: GoesOn("firmware profile baseline: staged 1 attribute(s), reset, verified"),
            calls: &["stage ProcTurboMode=Disabled", "power On"],
        },
        Case {
            name: "not in effect after the boot: fails at once naming the attribute",
            bios: &[("ProcTurboMode", "Enabled"), ("NicBoot1", "PXE")],
            profile: &[("ProcTurboMode", "Disabled"), ("NicBoot1", "NetworkBoot")],
            sticky: &["ProcTurboMode"],
            bios_errors: 0,
            want: Fails(&[
                "BIOS attributes not in effect",
                "set ProcTurboMode=Disabled, BMC reads back ProcTurboMode=Enabled",
            ]),
            calls: &[
                "stage NicBoot1=NetworkBoot",
                "stage ProcTurboMode=Disabled",
                "power On",
            ],
        },
        Case {
            name: "a value the BMC refuses: fails at once, nothing staged",
            bios: &[("ProcTurboMode", "Enabled")],
            profile: &[("ProcTurboMode", "Disabled"), ("TurboBoots", "On")],
            sticky: &[],
            bios_errors: 0,
            want: Fails(&[
                "TurboBoots: the BMC reports no such BIOS attribute",
                "nothing was changed",
            ]),
            calls: &[],
        },
        Case {
            name: "a BMC timeout is retried like any other phase's",
            bios: &[("ProcTurboMode", "Enabled")],
            profile: &[("ProcTurboMode", "Disabled")],
            sticky: &[],
            bios_errors: 1,
            want: GoesOn("firmware profile baseline: staged 1 attribute(s), reset, verified"),
            calls: &["stage ProcTurboMode=Disabled", "power On"],
        },
        Case {
            name: "a BMC that keeps timing out fails the server after the attempts",
            bios: &[("ProcTurboMode", "Enabled")],
            profile: &[("ProcTurboMode", "Disabled")],
            sticky: &[],
            // Resumed here, the BMC has not answered in this run: not waited for.
            bios_errors: 3,
            want: Fails(&[
                "BMC applying firmware profile baseline",
                "GET Bios",
                "after 3 attempts",
            ]),
            calls: &[],
        },
    ];
    let cache = tempfile::tempdir().unwrap();
    for case in cases {
        let mut bmc = FakeBmc::with_bios(case.bios);
        bmc.sticky = case.sticky.iter().map(|s| s.to_string()).collect();
        bmc.bios_errors
            .lock()
            .unwrap()
            .extend((0..case.bios_errors).map(|_| timeout()));
        let install = FakeInstall::new(None, FULL);
        let fleet = FakeFleet::after(Some(0));
        let r = run(
            &firmware_plan(case.profile, cache.path()),
            &bmc,
            &install,
            &fleet,
            State::ConfiguringFirmware { attempt: 1 },
        )
        .await;
        let name = case.name;
        let calls = bmc.calls();
        let phase_calls: Vec<&str> = calls
            .iter()
            .map(String::as_str)
            .take_while(|c| !c.starts_with("boot "))
            .collect();
        assert_eq!(phase_calls, case.calls, "{name}");
        match case.want {
            GoesOn(note) => {
                assert!(
                    matches!(r.record.state, State::Provisioned { .. }),
                    "{name}: {:?}",
                    r.record.state
                );
                assert!(
                    r.record.notes.iter().any(|n| n == note),
                    "{name}: {:?}",
                    r.record.notes
                );
                assert_eq!(
                    calls.get(case.calls.len()).map(String::as_str),
                    Some("boot pxe once"),
                    "{name}"
                );
            }
            Fails(words) => {
                let (phase, reason) = r.failure();
                assert_eq!(*phase, Phase::ConfiguringFirmware, "{name}");
                for w in words {
                    assert!(reason.contains(w), "{name}: {reason:?} lacks {w:?}");
                }
                assert_eq!(calls, case.calls, "{name}: nothing after the failure");
            }
        }
    }
}

fn media_plan() -> ServerPlan {
    plan(BootMethod::VirtualMedia { site: "lab".into() })
}

/// Whether `text` (a persisted record, a note, a reason) holds any token or ISO URL.
fn leaks(text: &str, media: &FakeMedia) -> bool {
    text.contains("SECRET") || media.urls.lock().unwrap().iter().any(|u| text.contains(u))
}

#[tokio::test(start_paused = true)]
async fn virtual_media_gets_its_own_bound_token_and_iso_which_is_deleted_after() {
    // (BMC serial, rack.yaml serial, serial the token is bound to): a serial the BMC
    // reports is bound; where it reports none (IPMI, or an empty field) rack.yaml's is.
    let cases: [(Option<&str>, Option<&str>, Option<&str>); 5] = [
        (Some("QPX12345"), None, Some("QPX12345")),
        (Some("QPX12345"), Some("QPX12345"), Some("QPX12345")),
        (Some("  "), None, None),
        (None, None, None),
        (Some(""), Some("LAB-1"), Some("LAB-1")),
    ];
    for (bmc_serial, declared, bound) in cases {
        let bmc = FakeBmc {
            serial: bmc_serial.map(str::to_owned),
            ..FakeBmc::off()
        };
        let plan = ServerPlan {
            serial: declared.map(str::to_owned),
            ..media_plan()
        };
        let install = FakeInstall::new(None, &[]);
        let fleet = FakeFleet::after(Some(0));
        let (minter, media) = (FakeMinter::default(), FakeMedia::default());
        let r = run_with(
            &plan,
            &bmc,
            &install,
            &fleet,
            &minter,
            &media,
            State::Registered,
        )
        .await;
        assert!(
            matches!(r.record.state, State::Provisioned { .. }),
            "{:?}",
            r.record
        );
        // One token, bound to the boot MAC (and serial), for the install and registration
        // timeouts together, for the plan's site.
        let minted = minter.minted.lock().unwrap().clone();
        assert_eq!(
            minted,
            [TokenBinding {
                site: "lab".into(),
                mac: "52:54:00:00:00:01".into(),
                serial: bound.map(str::to_owned),
                ttl: Duration::from_secs(60 + 120),
            }],
            "BMC serial {bmc_serial:?}, rack.yaml {declared:?}"
        );
        // The BMC got that ISO's URL; the ISO held that token.
        let url = media.urls.lock().unwrap()[0].clone();
        assert!(
            url.split('/')
                .any(|seg| seg.len() == 32 && seg.chars().all(|c| c.is_ascii_hexdigit())),
            "{url}"
        );
        assert_eq!(
            bmc.calls(),
            [
                format!("media insert {url}"),
                "boot cd once".into(),
                "power On".into(),
                "boot disk persistent".into(),
                "media eject".into()
            ]
        );
        // Provisioned: the ISO is gone; the token was spent, not revoked.
        assert!(media.live.lock().unwrap().is_empty());
        assert!(minter.revoked.lock().unwrap().is_empty());
        assert_eq!(r.record.media_token, None);
        // Neither the token nor the URL ever reached the state file.
        let last = r.persisted.last().unwrap();
        assert!(r.persisted.iter().all(|p| !leaks(p, &media)), "{last}");
        assert!(
            r.persisted
                .iter()
                .any(|p| p.contains("\"media_token\":\"tok1\"")),
            "the token's public ID is kept while it is live: {:?}",
            r.persisted
        );
    }
}

#[tokio::test(start_paused = true)]
async fn every_virtual_media_attempt_has_a_fresh_token_and_unused_ones_are_revoked() {
    let bmc = FakeBmc {
        serial: Some("S1".into()),
        ..FakeBmc::off()
    };
    // The ISO's installer reports to no boot server, and no appliance ever registers.
    let install = FakeInstall::new(None, &[]);
    let never = FakeFleet::after(None);
    let (minter, media) = (FakeMinter::default(), FakeMedia::default());
    let r = run_with(
        &media_plan(),
        &bmc,
        &install,
        &never,
        &minter,
        &media,
        State::Registered,
    )
    .await;
    let (phase, reason) = r.failure();
    assert_eq!(*phase, Phase::Installing);
    assert!(
        reason.contains("did not end in a registered appliance"),
        "{reason}"
    );
    // Three attempts, three tokens and ISOs; each ISO replaced the one before.
    assert_eq!(minter.minted.lock().unwrap().len(), 3);
    let urls = media.urls.lock().unwrap().clone();
    let inserts: Vec<String> = bmc
        .calls()
        .into_iter()
        .filter_map(|c| c.strip_prefix("media insert ").map(str::to_owned))
        .collect();
    assert_eq!(inserts, urls, "one insert per attempt, each of its own ISO");
    // Every unused token is revoked (the earlier ones at the retry, the last at the failure)
    // and no ISO is left.
    assert_eq!(*minter.revoked.lock().unwrap(), ["tok1", "tok2", "tok3"]);
    assert!(media.live.lock().unwrap().is_empty());
    assert_eq!(r.record.media_token, None);
    assert!(r.persisted.iter().all(|p| !leaks(p, &media)));
}

#[tokio::test(start_paused = true)]
async fn a_token_the_hub_refuses_to_mint_fails_the_server_at_once_naming_the_role() {
    let bmc = FakeBmc::off();
    let install = FakeInstall::new(None, &[]);
    let fleet = FakeFleet::after(Some(0));
    let minter = FakeMinter {
        refuse: Some("HTTP 403 forbidden: needs role operator".into()),
        ..FakeMinter::default()
    };
    let media = FakeMedia::default();
    let r = run_with(
        &media_plan(),
        &bmc,
        &install,
        &fleet,
        &minter,
        &media,
        State::Registered,
    )
    .await;
    let (phase, reason) = r.failure();
    assert_eq!(*phase, Phase::BootingInstaller);
    assert!(
        reason.contains("operator or admin token") && reason.contains("403"),
        "{reason}"
    );
    assert!(r.seen.notes.lock().unwrap().is_empty(), "not retried");
    assert!(
        bmc.calls().is_empty(),
        "nothing inserted: {:?}",
        bmc.calls()
    );
    assert!(media.urls.lock().unwrap().is_empty());
}

/// A BMC that reports another serial than rack.yaml declares is another machine (a wrong
/// `bmc` address, a swapped cable): the server fails at inspection, before any token is
/// minted or anything is powered on or written.
#[tokio::test(start_paused = true)]
async fn a_bmc_reporting_another_serial_than_the_inventory_fails_at_inspection() {
    let bmc = FakeBmc {
        serial: Some("QPX99999".into()),
        ..FakeBmc::off()
    };
    let install = FakeInstall::new(None, &[]);
    let fleet = FakeFleet::after(Some(0));
    let (minter, media) = (FakeMinter::default(), FakeMedia::default());
    let plan = ServerPlan {
        serial: Some("QPX12345".into()),
        ..media_plan()
    };
    let r = run_with(
        &plan,
        &bmc,
        &install,
        &fleet,
        &minter,
        &media,
        State::Registered,
    )
    .await;
    let (phase, reason) = r.failure();
    assert_eq!(*phase, Phase::Inspecting);
    assert!(
        reason.contains("QPX99999")
            && reason.contains("QPX12345")
            && reason.contains("bmc address"),
        "{reason}"
    );
    assert!(r.seen.notes.lock().unwrap().is_empty(), "not retried");
    assert!(minter.minted.lock().unwrap().is_empty(), "no token minted");
    assert!(bmc.calls().is_empty(), "nothing done: {:?}", bmc.calls());
}

#[tokio::test(start_paused = true)]
async fn a_rerun_revokes_the_token_an_interrupted_run_left_and_seeds_a_new_iso() {
    let bmc = FakeBmc::off();
    let install = FakeInstall::new(None, &[]);
    let fleet = FakeFleet::after(Some(0));
    let (minter, media) = (FakeMinter::default(), FakeMedia::default());
    // The previous run was cut off while its installer ran: its record names its token.
    let seen = Seen::default();
    let policy = policy();
    let plan = media_plan();
    let m = Machine {
        plan: &plan,
        bmc: &bmc,
        install: &install,
        fleet: &fleet,
        minter: &minter,
        media: &media,
        policy: &policy,
        observer: &seen,
    };
    let mut record = Record {
        state: State::Installing {
            attempt: 1,
            step: None,
            bytes_written: 0,
            bytes_total: None,
        }
        .resume(),
        media_token: Some("old".into()),
        ..Record::default()
    };
    m.run(&mut record, &|_| {}).await;
    assert!(
        matches!(record.state, State::Provisioned { .. }),
        "{record:?}"
    );
    assert_eq!(*minter.revoked.lock().unwrap(), ["old"]);
    assert_eq!(minter.minted.lock().unwrap().len(), 1);
    assert!(media.live.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn first_boot_powers_on_a_server_found_off_and_fails_when_it_never_registers() {
    let bmc = FakeBmc::off();
    let install = FakeInstall::new(None, &[]);
    let fleet = FakeFleet::after(None);
    let r = run(
        &plan(BootMethod::Pxe),
        &bmc,
        &install,
        &fleet,
        State::FirstBoot { attempt: 1 },
    )
    .await;
    let (phase, reason) = r.failure();
    assert_eq!(*phase, Phase::FirstBoot);
    assert!(reason.contains("did not register"), "{reason}");
    assert_eq!(bmc.calls()[0], "power On");
}

#[test]
fn a_rerun_resumes_at_the_right_state() {
    let installing = State::Installing {
        attempt: 2,
        step: Some(InstallStep::Writing),
        bytes_written: 5,
        bytes_total: None,
    };
    // Cut off mid-write: the installer boots again, the half-written disk is rewritten.
    assert_eq!(installing.resume(), State::BootingInstaller { attempt: 2 });
    let failed = State::Failed {
        phase: Phase::FirstBoot,
        reason: "x".into(),
    };
    assert_eq!(failed.resume(), State::FirstBoot { attempt: 1 });
    let done = State::Provisioned {
        appliance_id: "a".into(),
    };
    assert_eq!(done.clone().resume(), done);
    // The persisted form is stable, kebab-case JSON.
    let text = serde_json::to_string(&State::BootingInstaller { attempt: 1 }).unwrap();
    assert_eq!(text, r#"{"state":"booting-installer","attempt":1}"#);
}

#[test]
fn backoff_doubles_up_to_the_ceiling() {
    let p = policy();
    assert_eq!(p.backoff(1), Duration::from_secs(1));
    assert_eq!(p.backoff(2), Duration::from_secs(2));
    assert_eq!(p.backoff(3), Duration::from_secs(4));
    assert_eq!(p.backoff(10), Duration::from_secs(8));
}

#[tokio::test(start_paused = true)]
async fn a_slow_boot_device_change_does_not_hide_the_install_progress() {
    let bmc = FakeBmc {
        boot_delay: Duration::from_secs(20),
        ..FakeBmc::off()
    };
    // The agent reports a step every 2 s; the whole install is over within the BMC's 20 s.
    let install = FakeInstall::timed(FULL, Duration::from_secs(2));
    let fleet = FakeFleet::after(Some(0));
    let r = run(
        &plan(BootMethod::Pxe),
        &bmc,
        &install,
        &fleet,
        State::Installing {
            attempt: 1,
            step: None,
            bytes_written: 0,
            bytes_total: None,
        },
    )
    .await;
    assert!(
        matches!(r.record.state, State::Provisioned { .. }),
        "{r:?}",
        r = r.record
    );
    // Every step the agent reported in the 20 s the BMC took is on record, writing included.
    assert!(
        r.persisted
            .iter()
            .any(|s| s.contains("\"step\":\"writing\"")),
        "{:?}",
        r.persisted
    );
    // The call still ended before the reboot: the boot device was set once, while installing.
    let disk = bmc
        .calls()
        .iter()
        .filter(|c| *c == "boot disk persistent")
        .count();
    assert_eq!(disk, 1, "{:?}", bmc.calls());
}
