//! The driver over doubles of the boot loader and the slots: what runs, and what does not,
//! when persisting the record fails.

use std::path::Path;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::effects::SlotRange;
use super::*;

/// The calls the doubles saw, in order.
#[derive(Default)]
struct Calls(Mutex<Vec<String>>);

impl Calls {
    fn push(&self, call: String) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(call);
    }

    fn seen(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

struct FakeBoot(Arc<Calls>);

impl BootLoader for FakeBoot {
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    fn rolled_back(&self) -> Option<Slot> {
        None
    }
    fn arm(&self, slot: Slot, tries: u8) -> Result<(), String> {
        self.0.push(format!("arm {} {tries}", slot.letter()));
        Ok(())
    }
    fn commit(&self, slot: Slot) -> Result<(), String> {
        self.0.push(format!("commit {}", slot.letter()));
        Ok(())
    }
    fn disarm(&self) -> Result<(), String> {
        self.0.push("disarm".into());
        Ok(())
    }
    fn clear_rollback_flag(&self) -> Result<(), String> {
        self.0.push("clear".into());
        Ok(())
    }
}

struct FakeSlots(Arc<Calls>);

impl SlotDevice for FakeSlots {
    fn open(&self, slot: Slot) -> Result<SlotRange, String> {
        Ok(SlotRange {
            path: format!("root-{}", slot.letter()).into(),
            offset: 0,
            limit: 1 << 20,
        })
    }
    fn write(&self, _: &Path, _: &TrustStore, range: &SlotRange) -> Result<u64, String> {
        self.0.push(format!("write {}", range.path.display()));
        Ok(1)
    }
}

struct FixedClock(OffsetDateTime);

impl Clock for FixedClock {
    fn now_utc(&self) -> OffsetDateTime {
        self.0
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    data: PathBuf,
    rebooted: PathBuf,
    calls: Arc<Calls>,
    upgrader: Upgrader,
}

fn order() -> UpgradeOrder {
    UpgradeOrder {
        campaign: "c".into(),
        version: "2.0".into(),
        bundle_url: "https://hub.invalid/v1/releases/2.0/bundle".into(),
        sha256: "ab".repeat(32),
        size_bytes: 10,
        compatible_from: vec![],
        allow_downgrade: false,
        window: None,
        prestage: false,
        max_bytes_per_second: None,
    }
}

/// An upgrader with a recorded order, over the doubles.
async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let data = dir.path().join("data");
    let rebooted = dir.path().join("rebooted");
    let settings = UpgradeSettings {
        trusted_keys: vec![],
        data_dir: data.clone(),
        slots: crate::config::SlotSource::Dir(dir.path().into()),
        grubenv: dir.path().join("grubenv"),
        cmdline: dir.path().join("cmdline"),
        tries: 3,
        drain_command: None,
        reboot_command: vec![
            "sh".into(),
            "-c".into(),
            format!("touch {}", rebooted.display()),
        ],
        health_deadline: Duration::from_secs(60),
        health_checks: vec![],
        utc_offset: None,
    };
    std::fs::create_dir(&data).unwrap_or_else(|e| panic!("{}: {e}", data.display()));
    let calls = Arc::new(Calls::default());
    let mut upgrader = Upgrader::new(settings, "1.0".into());
    upgrader.effects.boot = Arc::new(FakeBoot(calls.clone()));
    upgrader.effects.slots = Arc::new(FakeSlots(calls.clone()));
    upgrader.effects.clock = Arc::new(FixedClock(OffsetDateTime::now_utc()));
    let first = upgrader.step(Some(&order()), Event::NewOrder).await;
    assert_eq!(first, Ok(()));
    assert_eq!(upgrader.state, State::Waiting);
    Fixture {
        _dir: dir,
        data,
        rebooted,
        calls,
        upgrader,
    }
}

/// From here on the record cannot be written: a file stands where its directory was.
fn break_persistence(f: &Fixture) {
    std::fs::remove_dir_all(&f.data).unwrap_or_else(|e| panic!("{}: {e}", f.data.display()));
    std::fs::write(&f.data, b"").unwrap_or_else(|e| panic!("{}: {e}", f.data.display()));
}

fn phase(f: &Fixture) -> Option<UpgradePhase> {
    f.upgrader.report().map(|r| r.phase)
}

#[tokio::test]
async fn when_the_record_cannot_be_persisted_the_slot_is_never_written() {
    let mut f = fixture().await;
    f.upgrader.state = State::Staged;
    break_persistence(&f);
    let result = f
        .upgrader
        .step(None, Event::SlotReady { slot: Slot::B })
        .await;
    match result {
        Err(StepError::Failed(m)) => assert!(m.contains("persisting the upgrade record"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(f.upgrader.state, State::Done(UpgradePhase::Failed));
    assert_eq!(phase(&f), Some(UpgradePhase::Failed));
    assert!(f.calls.seen().is_empty(), "{:?}", f.calls.seen());
}

#[tokio::test]
async fn a_new_order_that_cannot_be_recorded_fails_before_any_download() {
    let mut f = fixture().await;
    break_persistence(&f);
    let other = UpgradeOrder {
        version: "3.0".into(),
        ..order()
    };
    let result = f.upgrader.drive(Some(&other)).await;
    assert!(matches!(result, Err(StepError::Failed(_))), "{result:?}");
    assert_eq!(f.upgrader.report().map(|r| r.version), Some("3.0".into()));
    assert_eq!(phase(&f), Some(UpgradePhase::Failed));
}

#[tokio::test]
async fn a_rollback_reboots_even_when_its_result_cannot_be_persisted() {
    let mut f = fixture().await;
    f.upgrader.state = State::Verifying {
        slot: Slot::B,
        failed_rounds: 3,
    };
    break_persistence(&f);
    let health = Health {
        failed: vec!["kubelet".into()],
        logs: vec![],
        overdue: true,
    };
    let result = f.upgrader.step(None, Event::Health(health)).await;
    assert_eq!(result, Ok(()));
    assert_eq!(f.calls.seen(), ["disarm"]);
    assert!(f.rebooted.exists(), "the reboot command ran");
    assert_eq!(phase(&f), Some(UpgradePhase::RolledBack));
}

#[tokio::test]
async fn passing_health_checks_commit_grub_then_the_record() {
    let mut f = fixture().await;
    f.upgrader.state = State::Verifying {
        slot: Slot::B,
        failed_rounds: 0,
    };
    let still = f.upgrader.health_round(&HealthInputs {
        network_applied: true,
        hub_reached: true,
        kubelet_active: None,
    });
    assert!(!still.await);
    assert_eq!(f.calls.seen(), ["commit b"]);
    assert_eq!(phase(&f), Some(UpgradePhase::Committed));
    let on_disk = std::fs::read_to_string(f.data.join("state.json"))
        .unwrap_or_else(|e| panic!("state.json: {e}"));
    assert!(on_disk.contains("\"committed\""), "{on_disk}");
}

#[tokio::test]
async fn a_record_in_a_slot_bound_phase_without_its_slot_is_failed_not_trusted() {
    let f = fixture().await;
    let path = f.data.join("state.json");
    let mut record: Record = serde_json::from_slice(
        &std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .unwrap_or_else(|e| panic!("state.json: {e}"));
    record.report.phase = UpgradePhase::Rebooting;
    record.target = None;
    let bytes = serde_json::to_vec(&record).unwrap_or_else(|e| panic!("encoding: {e}"));
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let reloaded = Upgrader::new(f.upgrader.settings.clone(), "1.0".into());
    assert_eq!(reloaded.state, State::Done(UpgradePhase::Failed));
    assert_eq!(
        reloaded.shared_report().get().map(|r| r.phase),
        Some(UpgradePhase::Failed)
    );
}
