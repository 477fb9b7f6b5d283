//! The node's A/B upgrade as a pure state machine: [`next`] maps a [`State`] and an
//! [`Event`] to the next state and the [`Action`]s to take, and does no I/O. The driver
//! ([`super::Upgrader`]) runs the actions in order through the effect traits of
//! [`super::effects`] and feeds each result back as the next event. The diagram is
//! `docs/dev/upgrade-state-machine.md`.
//!
//! Two rules make a power cut at any point safe:
//! - a step that changes the disk or the boot (writing the slot, arming GRUB) is preceded by
//!   [`Action::Record`], which persists the record; when persisting fails
//!   ([`Event::PersistFailed`]) the step is not taken and the upgrade fails;
//! - a result (committed, rolled back) is recorded after the boot loader was told, so the
//!   record never claims more than GRUB will do.
//!
//! When an action fails, its failure event goes to [`next`]; a [`Outcome::Next`] answer
//! replaces the actions still queued, an [`Outcome::Ignored`] one lets them run on (a
//! best-effort step such as clearing GRUB's rollback flag).

use cairn_api::UpgradePhase;

use super::{Slot, StepError};

/// Where the current order is. Derived from the persisted record at start
/// ([`State::from_record`]); the counters count within one run of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// No order recorded.
    Idle,
    /// An order is recorded; outside its maintenance window (or not looked at yet).
    Waiting,
    /// Fetching the bundle.
    Downloading {
        /// 1-based download attempt in this run.
        attempt: u32,
    },
    /// Downloaded and verified ahead of the window (prestage).
    Staged,
    /// Streaming the root image into the inactive slot.
    Writing {
        /// The slot being written.
        slot: Slot,
    },
    /// GRUB set to try `slot` once; the node reboots.
    Rebooting {
        /// The slot GRUB tries.
        slot: Slot,
    },
    /// Booted `slot`; health checks run until they pass or the deadline passes.
    Verifying {
        /// The slot on trial.
        slot: Slot,
        /// Health rounds that failed so far in this run.
        failed_rounds: u32,
    },
    /// Over: committed, rolled back, interrupted, refused or failed. Stays until another
    /// order arrives; the node never retries an order on its own.
    Done(UpgradePhase),
}

impl State {
    /// The state a persisted phase and target slot stand for. A record that names a
    /// slot-bound phase without its slot cannot be trusted and counts as failed.
    pub fn from_record(phase: UpgradePhase, target: Option<Slot>) -> State {
        use UpgradePhase as P;
        match (phase, target) {
            (P::Waiting, _) => State::Waiting,
            (P::Downloading, _) => State::Downloading { attempt: 1 },
            (P::Staged, _) => State::Staged,
            (P::Writing, Some(slot)) => State::Writing { slot },
            (P::Rebooting, Some(slot)) => State::Rebooting { slot },
            (P::Verifying, Some(slot)) => State::Verifying {
                slot,
                failed_rounds: 0,
            },
            (P::Writing | P::Rebooting | P::Verifying, None) => State::Done(P::Failed),
            (final_phase, _) => State::Done(final_phase),
        }
    }

    /// The phase reported for this state; `None` for [`State::Idle`].
    pub fn phase(&self) -> Option<UpgradePhase> {
        Some(match self {
            State::Idle => return None,
            State::Waiting => UpgradePhase::Waiting,
            State::Downloading { .. } => UpgradePhase::Downloading,
            State::Staged => UpgradePhase::Staged,
            State::Writing { .. } => UpgradePhase::Writing,
            State::Rebooting { .. } => UpgradePhase::Rebooting,
            State::Verifying { .. } => UpgradePhase::Verifying,
            State::Done(phase) => *phase,
        })
    }

    /// The slot being written or tried.
    pub fn slot(&self) -> Option<Slot> {
        match self {
            State::Writing { slot } | State::Rebooting { slot } | State::Verifying { slot, .. } => {
                Some(*slot)
            }
            _ => None,
        }
    }

    /// Before the slots are touched: the order may still be withdrawn or replaced.
    fn untouched(&self) -> bool {
        matches!(
            self,
            State::Waiting | State::Downloading { .. } | State::Staged
        )
    }
}

/// What the driver observed when it looked at the current order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// The running system already is the ordered version.
    pub already_running: bool,
    /// Why the order cannot be installed here (version rules, an unreadable window, a bad
    /// digest), found before anything is downloaded.
    pub refusal: Option<String>,
    /// The maintenance window is open now (or the order has none).
    pub window_open: bool,
    /// The order asks to download and verify ahead of the window.
    pub prestage: bool,
    /// The complete bundle is already in the data directory.
    pub bundle_present: bool,
}

/// The results of one round of health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// The checks that failed, by name; empty when all passed.
    pub failed: Vec<String>,
    /// Their last output lines.
    pub logs: Vec<String>,
    /// The health deadline has passed since verification began.
    pub overdue: bool,
}

/// What happened: observations of the driver and results of actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The daemon started: the slot it booted and the slot GRUB gave up on, if any.
    Started {
        /// From the kernel command line.
        booted: Option<Slot>,
        /// GRUB's `cairn_rolled_back`.
        rolled_back: Option<Slot>,
    },
    /// The hub no longer orders an upgrade.
    Withdrawn,
    /// An order other than the recorded one (or the first) arrived.
    NewOrder,
    /// The current order was looked at.
    Pass(Pass),
    /// [`Action::Download`] finished.
    Downloaded {
        /// Echoes the action: install right after verifying.
        window_open: bool,
    },
    /// [`Action::Verify`] accepted the bundle for this node.
    Verified {
        /// Echoes the action: install now rather than stage.
        window_open: bool,
        /// The fingerprint of the key that signed it.
        signer: String,
    },
    /// [`Action::PrepareSlot`] found the inactive slot, and GRUB's environment editable.
    SlotReady {
        /// The inactive slot.
        slot: Slot,
    },
    /// [`Action::WriteSlot`] wrote and verified the image.
    Written,
    /// [`Action::WriteSlot`] failed; the slot was not activated.
    WriteFailed(String),
    /// [`Action::Drain`] succeeded (or there is no drain hook).
    Drained,
    /// A round of health checks on the new slot ran.
    Health(Health),
    /// [`Action::CommitBootLoader`] made the new slot the default.
    BootLoaderCommitted,
    /// A step failed; the error's kind decides the phase.
    StepFailed(StepError),
    /// [`Action::Record`] or [`Action::NewRecord`] could not persist the record.
    PersistFailed(String),
    /// A boot-loader action failed.
    BootLoaderFailed(String),
    /// The reboot command failed.
    RebootFailed(String),
}

/// A side effect for the driver to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Start a record of the order in phase `waiting` and persist it.
    NewRecord,
    /// Set the record to the new state's phase and slot with `reason`, and persist it.
    Record {
        /// For people.
        reason: String,
    },
    /// Set the report's reason in memory only (a retry, what health checks wait for).
    Reason(String),
    /// Set the report's log lines in memory only.
    Logs(Vec<String>),
    /// Delete the order's downloaded or partial bundle.
    DiscardDownloads,
    /// Drop the record and its file.
    Forget,
    /// Download the bundle, resuming a partial file.
    Download {
        /// Install right after verifying.
        window_open: bool,
    },
    /// Verify the bundle against the trust store and the version rules.
    Verify {
        /// Install right after.
        window_open: bool,
    },
    /// Find the inactive slot and check that GRUB's environment can be edited.
    PrepareSlot,
    /// Stream the root image into `slot`, verifying it on the way.
    WriteSlot {
        /// The inactive slot.
        slot: Slot,
    },
    /// Run the drain hook.
    Drain,
    /// Set GRUB to try `slot` once (`cairn_try`, `cairn_tries`).
    ArmBootLoader {
        /// The new slot.
        slot: Slot,
    },
    /// Make `slot` GRUB's default (`cairn_slot`).
    CommitBootLoader {
        /// The new slot.
        slot: Slot,
    },
    /// Stop GRUB from trying the new slot: the old one boots next.
    DisarmBootLoader,
    /// Clear GRUB's rollback flag (and any try) once the rollback is recorded.
    ClearRollbackFlag,
    /// Reboot the node.
    Reboot,
}

/// The answer of [`next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Go to the state and take the actions (they replace any still queued).
    Next(State, Vec<Action>),
    /// The event changes nothing in this state; queued actions run on.
    Ignored(&'static str),
}

fn go(state: State, actions: Vec<Action>) -> Outcome {
    Outcome::Next(state, actions)
}

fn record(reason: impl Into<String>) -> Action {
    Action::Record {
        reason: reason.into(),
    }
}

/// A failed step: refused bundles are deleted; a retry keeps the state (a download counts
/// one attempt more) and only notes why.
fn step_failed(state: &State, error: StepError) -> Outcome {
    match error {
        StepError::Refused(m) => go(
            State::Done(UpgradePhase::Refused),
            vec![Action::DiscardDownloads, record(m)],
        ),
        StepError::Failed(m) => go(State::Done(UpgradePhase::Failed), vec![record(m)]),
        StepError::Retry(m) => {
            let state = match state {
                State::Downloading { attempt } => State::Downloading {
                    attempt: attempt + 1,
                },
                other => other.clone(),
            };
            go(state, vec![Action::Reason(m)])
        }
    }
}

/// The transition function (pure).
pub fn next(state: &State, event: Event) -> Outcome {
    use UpgradePhase as P;
    match (state, event) {
        // ---- at start: classify the boot against the record --------------------------
        (State::Writing { .. }, Event::Started { .. }) => go(
            State::Done(P::Interrupted),
            vec![record(
                "the node restarted while writing the new slot; it was not activated",
            )],
        ),
        (State::Rebooting { slot }, Event::Started { booted, .. }) if booted == Some(*slot) => go(
            State::Verifying {
                slot: *slot,
                failed_rounds: 0,
            },
            vec![record("")],
        ),
        (State::Verifying { slot, .. }, Event::Started { booted, .. }) if booted == Some(*slot) => {
            Outcome::Ignored("still verifying the booted new slot")
        }
        (
            State::Rebooting { slot } | State::Verifying { slot, .. },
            Event::Started { rolled_back, .. },
        ) => {
            let reason = if rolled_back == Some(*slot) {
                "new slot did not boot"
            } else if matches!(state, State::Verifying { .. }) {
                "the old slot booted before the new one passed its health checks"
            } else {
                "the old slot booted instead of the new one"
            };
            go(
                State::Done(P::RolledBack),
                vec![Action::ClearRollbackFlag, record(reason)],
            )
        }
        (_, Event::Started { .. }) => Outcome::Ignored("nothing in flight at start"),

        // ---- orders --------------------------------------------------------------------
        (s, Event::Withdrawn) if s.untouched() => {
            go(State::Idle, vec![Action::DiscardDownloads, Action::Forget])
        }
        (_, Event::Withdrawn) => Outcome::Ignored("the slots are touched; the order runs out"),
        (State::Idle, Event::NewOrder) => go(State::Waiting, vec![Action::NewRecord]),
        (
            State::Rebooting { .. } | State::Verifying { .. } | State::Writing { .. },
            Event::NewOrder,
        ) => Outcome::Ignored(
            "a new upgrade order waits until the current one is committed or rolled back",
        ),
        (_, Event::NewOrder) => go(
            State::Waiting,
            vec![Action::DiscardDownloads, Action::NewRecord],
        ),

        // ---- before the window: decide, download, verify -------------------------------
        (s, Event::Pass(pass)) if s.untouched() => {
            if pass.already_running {
                return go(
                    State::Done(P::Committed),
                    vec![record("already running this version")],
                );
            }
            if let Some(why) = pass.refusal {
                return step_failed(s, StepError::Refused(why));
            }
            if !pass.window_open && !pass.prestage {
                let note = (*s != State::Waiting).then(|| record("outside the maintenance window"));
                return go(State::Waiting, note.into_iter().collect());
            }
            let window_open = pass.window_open;
            if pass.bundle_present {
                return go(s.clone(), vec![Action::Verify { window_open }]);
            }
            match s {
                State::Downloading { .. } => go(s.clone(), vec![Action::Download { window_open }]),
                _ => go(
                    State::Downloading { attempt: 1 },
                    vec![record(""), Action::Download { window_open }],
                ),
            }
        }
        (_, Event::Pass(_)) => Outcome::Ignored("the order is past its decisions"),
        (s, Event::Downloaded { window_open }) if s.untouched() => {
            go(s.clone(), vec![Action::Verify { window_open }])
        }
        (
            s,
            Event::Verified {
                window_open,
                signer,
            },
        ) if s.untouched() => {
            if window_open {
                go(s.clone(), vec![Action::PrepareSlot])
            } else if *s == State::Staged {
                Outcome::Ignored("already staged")
            } else {
                go(
                    State::Staged,
                    vec![record(format!(
                        "verified (key {signer}), waiting for the window"
                    ))],
                )
            }
        }

        // ---- inside the window: write, drain, arm, reboot ------------------------------
        (s, Event::SlotReady { slot }) if s.untouched() => go(
            State::Writing { slot },
            vec![
                record(format!("slot {}", slot.letter())),
                Action::WriteSlot { slot },
            ],
        ),
        (State::Writing { .. }, Event::Written) => go(state.clone(), vec![Action::Drain]),
        (State::Writing { slot }, Event::Drained) => go(
            State::Rebooting { slot: *slot },
            vec![
                record(format!("trying slot {} once", slot.letter())),
                Action::ArmBootLoader { slot: *slot },
                Action::Reboot,
            ],
        ),
        (State::Rebooting { .. }, Event::BootLoaderFailed(e)) => {
            step_failed(state, StepError::Failed(format!("arming GRUB: {e}")))
        }

        // ---- on the new slot: health, commit or roll back ------------------------------
        (
            State::Verifying {
                slot,
                failed_rounds,
            },
            Event::Health(health),
        ) => {
            if health.failed.is_empty() {
                return go(
                    state.clone(),
                    vec![Action::CommitBootLoader { slot: *slot }],
                );
            }
            if !health.overdue {
                return go(
                    State::Verifying {
                        slot: *slot,
                        failed_rounds: failed_rounds + 1,
                    },
                    vec![
                        Action::Reason(format!("waiting for: {}", health.failed.join(", "))),
                        Action::Logs(health.logs),
                    ],
                );
            }
            go(
                State::Done(P::RolledBack),
                vec![
                    Action::Logs(health.logs),
                    Action::DisarmBootLoader,
                    record(format!(
                        "health checks failed: {}",
                        health.failed.join(", ")
                    )),
                    Action::Reboot,
                ],
            )
        }
        (State::Verifying { slot, .. }, Event::BootLoaderCommitted) => go(
            State::Done(P::Committed),
            vec![record(format!("slot {} committed", slot.letter()))],
        ),
        (State::Verifying { .. }, Event::BootLoaderFailed(_)) => {
            Outcome::Ignored("committing the slot in GRUB failed; the next round tries again")
        }

        // ---- failures ------------------------------------------------------------------
        (State::Done(_), Event::PersistFailed(_)) => {
            Outcome::Ignored("the result stays in memory and is reported")
        }
        (State::Idle, Event::PersistFailed(_)) => Outcome::Ignored("no record"),
        (State::Verifying { .. }, Event::PersistFailed(_)) => {
            Outcome::Ignored("verification goes on; its result is persisted when it comes")
        }
        (s, Event::PersistFailed(e)) => step_failed(
            s,
            StepError::Failed(format!("persisting the upgrade record: {e}")),
        ),
        (State::Done(_), Event::BootLoaderFailed(_)) => {
            Outcome::Ignored("the result stands; the boot loader's fallback covers it")
        }
        (_, Event::RebootFailed(_)) => Outcome::Ignored("logged; the operator reboots"),
        (State::Writing { slot }, Event::WriteFailed(m)) => step_failed(
            state,
            StepError::Failed(format!(
                "writing slot {}: {m} (the slot is not activated)",
                slot.letter()
            )),
        ),
        (s, Event::StepFailed(e)) if s.untouched() || matches!(s, State::Writing { .. }) => {
            step_failed(s, e)
        }
        _ => Outcome::Ignored("no transition for this event in this state"),
    }
}

#[cfg(test)]
#[path = "machine/tests.rs"]
mod tests;
