//! One row per transition of the node's upgrade machine: state, event, expected outcome.

use super::*;
use UpgradePhase as P;

const A: Slot = Slot::A;
const B: Slot = Slot::B;

fn rec(reason: &str) -> Action {
    record(reason)
}

fn done(phase: P, actions: Vec<Action>) -> Outcome {
    Outcome::Next(State::Done(phase), actions)
}

fn pass() -> Pass {
    Pass {
        already_running: false,
        refusal: None,
        window_open: true,
        prestage: false,
        bundle_present: false,
    }
}

fn started(booted: Option<Slot>, rolled_back: Option<Slot>) -> Event {
    Event::Started {
        booted,
        rolled_back,
    }
}

fn verifying(failed_rounds: u32) -> State {
    State::Verifying {
        slot: B,
        failed_rounds,
    }
}

fn health(failed: &[&str], overdue: bool) -> Event {
    Event::Health(Health {
        failed: failed.iter().map(|f| (*f).to_owned()).collect(),
        logs: vec!["check: out".into()],
        overdue,
    })
}

fn ignored(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Ignored(_))
}

#[test]
fn every_transition() {
    let downloading = State::Downloading { attempt: 1 };
    let writing = State::Writing { slot: B };
    let rebooting = State::Rebooting { slot: B };
    let refused = |m: &str| done(P::Refused, vec![Action::DiscardDownloads, rec(m)]);
    let failed = |m: &str| done(P::Failed, vec![rec(m)]);
    let cases: Vec<(&str, State, Event, Outcome)> = vec![
        // At start.
        (
            "interrupted write found at start",
            writing.clone(),
            started(Some(A), None),
            failed_interrupted(),
        ),
        (
            "the new slot booted: verify",
            rebooting.clone(),
            started(Some(B), None),
            Outcome::Next(verifying(0), vec![rec("")]),
        ),
        (
            "GRUB gave up on the new slot",
            rebooting.clone(),
            started(Some(A), Some(B)),
            done(
                P::RolledBack,
                vec![Action::ClearRollbackFlag, rec("new slot did not boot")],
            ),
        ),
        (
            "the old slot booted instead",
            rebooting.clone(),
            started(Some(A), None),
            done(
                P::RolledBack,
                vec![
                    Action::ClearRollbackFlag,
                    rec("the old slot booted instead of the new one"),
                ],
            ),
        ),
        (
            "the old slot booted while verifying",
            verifying(2),
            started(Some(A), None),
            done(
                P::RolledBack,
                vec![
                    Action::ClearRollbackFlag,
                    rec("the old slot booted before the new one passed its health checks"),
                ],
            ),
        ),
        // Orders.
        (
            "a first order",
            State::Idle,
            Event::NewOrder,
            Outcome::Next(State::Waiting, vec![Action::NewRecord]),
        ),
        (
            "another order replaces a staged one",
            State::Staged,
            Event::NewOrder,
            Outcome::Next(
                State::Waiting,
                vec![Action::DiscardDownloads, Action::NewRecord],
            ),
        ),
        (
            "another order after a final one",
            State::Done(P::Committed),
            Event::NewOrder,
            Outcome::Next(
                State::Waiting,
                vec![Action::DiscardDownloads, Action::NewRecord],
            ),
        ),
        (
            "withdrawn before the slots are touched",
            downloading.clone(),
            Event::Withdrawn,
            Outcome::Next(State::Idle, vec![Action::DiscardDownloads, Action::Forget]),
        ),
        // Decisions.
        (
            "already running the version",
            State::Waiting,
            Event::Pass(Pass {
                already_running: true,
                ..pass()
            }),
            done(P::Committed, vec![rec("already running this version")]),
        ),
        (
            "version rules refuse",
            State::Waiting,
            Event::Pass(Pass {
                refusal: Some("too old".into()),
                ..pass()
            }),
            refused("too old"),
        ),
        (
            "outside the window",
            State::Staged,
            Event::Pass(Pass {
                window_open: false,
                ..pass()
            }),
            Outcome::Next(State::Waiting, vec![rec("outside the maintenance window")]),
        ),
        (
            "still outside the window",
            State::Waiting,
            Event::Pass(Pass {
                window_open: false,
                ..pass()
            }),
            Outcome::Next(State::Waiting, vec![]),
        ),
        (
            "download starts",
            State::Waiting,
            Event::Pass(pass()),
            Outcome::Next(
                downloading.clone(),
                vec![rec(""), Action::Download { window_open: true }],
            ),
        ),
        (
            "prestage downloads outside the window",
            State::Waiting,
            Event::Pass(Pass {
                window_open: false,
                prestage: true,
                ..pass()
            }),
            Outcome::Next(
                downloading.clone(),
                vec![rec(""), Action::Download { window_open: false }],
            ),
        ),
        (
            "download resumes without a new phase",
            State::Downloading { attempt: 2 },
            Event::Pass(pass()),
            Outcome::Next(
                State::Downloading { attempt: 2 },
                vec![Action::Download { window_open: true }],
            ),
        ),
        (
            "a present bundle is verified without downloading",
            State::Staged,
            Event::Pass(Pass {
                bundle_present: true,
                ..pass()
            }),
            Outcome::Next(State::Staged, vec![Action::Verify { window_open: true }]),
        ),
        (
            "download fails: retry counts an attempt",
            State::Downloading { attempt: 2 },
            Event::StepFailed(StepError::Retry("reset".into())),
            Outcome::Next(
                State::Downloading { attempt: 3 },
                vec![Action::Reason("reset".into())],
            ),
        ),
        (
            "download refused (hash)",
            downloading.clone(),
            Event::StepFailed(StepError::Refused("bad hash".into())),
            refused("bad hash"),
        ),
        (
            "download fails for good",
            downloading.clone(),
            Event::StepFailed(StepError::Failed("disk full".into())),
            failed("disk full"),
        ),
        (
            "downloaded: verify",
            downloading.clone(),
            Event::Downloaded { window_open: true },
            Outcome::Next(
                downloading.clone(),
                vec![Action::Verify { window_open: true }],
            ),
        ),
        (
            "verify refuses",
            downloading.clone(),
            Event::StepFailed(StepError::Refused("signature".into())),
            refused("signature"),
        ),
        (
            "verified outside the window: staged",
            downloading.clone(),
            Event::Verified {
                window_open: false,
                signer: "k1".into(),
            },
            Outcome::Next(
                State::Staged,
                vec![rec("verified (key k1), waiting for the window")],
            ),
        ),
        (
            "verified inside the window: prepare the slot",
            State::Staged,
            Event::Verified {
                window_open: true,
                signer: "k1".into(),
            },
            Outcome::Next(State::Staged, vec![Action::PrepareSlot]),
        ),
        // Writing.
        (
            "slot ready: record first, then write",
            downloading.clone(),
            Event::SlotReady { slot: B },
            Outcome::Next(
                writing.clone(),
                vec![rec("slot b"), Action::WriteSlot { slot: B }],
            ),
        ),
        (
            "no slot to write",
            State::Staged,
            Event::StepFailed(StepError::Failed("no cairn.slot=".into())),
            failed("no cairn.slot="),
        ),
        (
            "persisting before the write fails: no write",
            writing.clone(),
            Event::PersistFailed("disk full".into()),
            failed("persisting the upgrade record: disk full"),
        ),
        (
            "write fails",
            writing.clone(),
            Event::WriteFailed("I/O error".into()),
            failed("writing slot b: I/O error (the slot is not activated)"),
        ),
        (
            "written: drain",
            writing.clone(),
            Event::Written,
            Outcome::Next(writing.clone(), vec![Action::Drain]),
        ),
        (
            "drain fails",
            writing.clone(),
            Event::StepFailed(StepError::Failed("the drain hook failed: x".into())),
            failed("the drain hook failed: x"),
        ),
        (
            "drained: record, arm, reboot",
            writing.clone(),
            Event::Drained,
            Outcome::Next(
                rebooting.clone(),
                vec![
                    rec("trying slot b once"),
                    Action::ArmBootLoader { slot: B },
                    Action::Reboot,
                ],
            ),
        ),
        (
            "persisting before arming fails: not armed",
            rebooting.clone(),
            Event::PersistFailed("disk full".into()),
            failed("persisting the upgrade record: disk full"),
        ),
        (
            "arming GRUB fails",
            rebooting.clone(),
            Event::BootLoaderFailed("read-only".into()),
            failed("arming GRUB: read-only"),
        ),
        // Verifying.
        (
            "health passes: commit GRUB first",
            verifying(1),
            health(&[], false),
            Outcome::Next(verifying(1), vec![Action::CommitBootLoader { slot: B }]),
        ),
        (
            "commit",
            verifying(1),
            Event::BootLoaderCommitted,
            done(P::Committed, vec![rec("slot b committed")]),
        ),
        (
            "health fails before the deadline: wait",
            verifying(1),
            health(&["kubelet"], false),
            Outcome::Next(
                verifying(2),
                vec![
                    Action::Reason("waiting for: kubelet".into()),
                    Action::Logs(vec!["check: out".into()]),
                ],
            ),
        ),
        (
            "health fails at the deadline: roll back",
            verifying(5),
            health(&["kubelet", "api"], true),
            done(
                P::RolledBack,
                vec![
                    Action::Logs(vec!["check: out".into()]),
                    Action::DisarmBootLoader,
                    rec("health checks failed: kubelet, api"),
                    Action::Reboot,
                ],
            ),
        ),
    ];
    for (name, state, event, want) in cases {
        assert_eq!(next(&state, event), want, "{name}");
    }
}

fn failed_interrupted() -> Outcome {
    done(
        P::Interrupted,
        vec![rec(
            "the node restarted while writing the new slot; it was not activated",
        )],
    )
}

#[test]
fn events_without_a_transition_are_ignored_never_a_panic() {
    let cases: Vec<(&str, State, Event)> = vec![
        ("idle at start", State::Idle, started(Some(A), None)),
        (
            "verifying the booted slot at start",
            verifying(0),
            started(Some(B), None),
        ),
        (
            "a new order while rebooting",
            State::Rebooting { slot: B },
            Event::NewOrder,
        ),
        ("a new order while verifying", verifying(0), Event::NewOrder),
        ("withdrawn while verifying", verifying(0), Event::Withdrawn),
        (
            "withdrawn with nothing recorded",
            State::Idle,
            Event::Withdrawn,
        ),
        (
            "a pass after the result",
            State::Done(P::Committed),
            Event::Pass(pass()),
        ),
        (
            "a pass while rebooting",
            State::Rebooting { slot: B },
            Event::Pass(pass()),
        ),
        (
            "verified again while staged",
            State::Staged,
            Event::Verified {
                window_open: false,
                signer: "k".into(),
            },
        ),
        (
            "commit fails: the next round tries again",
            verifying(0),
            Event::BootLoaderFailed("busy".into()),
        ),
        (
            "persisting while verifying fails",
            verifying(0),
            Event::PersistFailed("full".into()),
        ),
        (
            "persisting a result fails",
            State::Done(P::RolledBack),
            Event::PersistFailed("full".into()),
        ),
        (
            "disarming GRUB fails during rollback",
            State::Done(P::RolledBack),
            Event::BootLoaderFailed("ro".into()),
        ),
        (
            "the reboot command fails",
            State::Done(P::RolledBack),
            Event::RebootFailed("no".into()),
        ),
        (
            "health after the result",
            State::Done(P::Committed),
            health(&[], false),
        ),
        ("a stray write result", State::Waiting, Event::Written),
        (
            "a failure after the result",
            State::Done(P::Failed),
            Event::StepFailed(StepError::Failed("x".into())),
        ),
    ];
    for (name, state, event) in cases {
        assert!(ignored(&next(&state, event)), "{name}");
    }
}

#[test]
fn states_come_back_from_the_record() {
    assert_eq!(
        State::from_record(P::Writing, Some(B)),
        State::Writing { slot: B }
    );
    assert_eq!(State::from_record(P::Verifying, Some(A)).slot(), Some(A));
    assert_eq!(
        State::from_record(P::Rebooting, None),
        State::Done(P::Failed)
    );
    assert_eq!(
        State::from_record(P::RolledBack, Some(B)),
        State::Done(P::RolledBack)
    );
    for phase in [
        P::Waiting,
        P::Downloading,
        P::Staged,
        P::Committed,
        P::Refused,
    ] {
        assert_eq!(State::from_record(phase, None).phase(), Some(phase));
    }
    assert_eq!(State::Idle.phase(), None);
}
