//! The campaign's decisions as pure functions, apart from the store: the campaign's own
//! state machine ([`next`]: operator commands and driver passes), the verdict on one ordered
//! member ([`judge`]: its appliance's report at a time), who is ordered next ([`to_order`],
//! [`admit`]) and what an abort does to a member ([`on_abort`]). [`super::Fleet`] reads the
//! records, asks these, and writes the changes in one compare-and-set transaction. The
//! diagram is `docs/dev/campaign-state-machine.md`.

use cairn_api::hub::CampaignAction;
use cairn_api::{UpgradeOrder, UpgradePhase};
use time::OffsetDateTime;

use crate::model::{
    Appliance, Campaign, CampaignMember, CampaignState, MemberState, Pacing, Release, Status,
};

/// What moves a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event<'a> {
    /// An operator's command.
    Operator {
        /// start, pause, resume or abort.
        action: CampaignAction,
        /// Who.
        actor: &'a str,
    },
    /// The driver recorded what ordered members reported; `failures` members failed so far.
    Judged {
        /// Members that failed.
        failures: usize,
    },
    /// The driver ordered whom it could; every member is final when `all_final`.
    Ordered {
        /// No member is pending or ordered.
        all_final: bool,
        /// Members that failed.
        failures: usize,
    },
}

/// A change for the driver (or the operator's request) to make with the new state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Action {
    /// Skip pending members and withdraw the orders nodes have not acted on ([`on_abort`]).
    WithdrawUntouched,
    /// Order the next members ([`to_order`], [`admit`]).
    OrderNext,
    /// Record the change in the audit log as the driver, with this action name and outcome.
    Audit {
        /// `campaign.pause`, `campaign.complete`.
        action: &'static str,
        /// For people.
        outcome: String,
    },
}

/// The answer of [`next`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Go to `state` with `reason` (shown with the campaign) and take the actions.
    Next {
        /// The new state (may be the same).
        state: CampaignState,
        /// Why it is paused or aborted; empty otherwise.
        reason: String,
        /// What to change with it.
        actions: Vec<Action>,
    },
    /// Nothing changes.
    Ignored,
}

/// An operator command the state does not allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("is {}; cannot {} it", state.as_str(), action.as_str())]
pub(super) struct Refused {
    /// Where the campaign is.
    pub state: CampaignState,
    /// What was asked.
    pub action: CampaignAction,
}

/// The campaign's transition function (pure). `max_failures` is the campaign's limit.
pub(super) fn next(
    state: CampaignState,
    max_failures: u32,
    event: Event<'_>,
) -> Result<Outcome, Refused> {
    use CampaignAction as A;
    use CampaignState as S;
    let go = |state, reason: String, actions| Outcome::Next {
        state,
        reason,
        actions,
    };
    Ok(match event {
        Event::Operator { action, actor } => match (action, state) {
            (A::Start, S::Created) => go(S::Running, String::new(), vec![]),
            (A::Pause, S::Running) => go(S::Paused, format!("paused by {actor}"), vec![]),
            (A::Resume, S::Paused) => go(S::Running, String::new(), vec![]),
            (A::Abort, S::Created | S::Running | S::Paused) => go(
                S::Aborted,
                format!("aborted by {actor}"),
                vec![Action::WithdrawUntouched],
            ),
            (action, state) => return Err(Refused { state, action }),
        },
        Event::Judged { failures } => match state {
            S::Running if failures > max_failures as usize => {
                let reason = format!(
                    "paused by the hub: {failures} failed, more than the {max_failures} allowed"
                );
                go(
                    S::Paused,
                    reason.clone(),
                    vec![Action::Audit {
                        action: "campaign.pause",
                        outcome: reason,
                    }],
                )
            }
            S::Running => go(S::Running, String::new(), vec![Action::OrderNext]),
            _ => Outcome::Ignored,
        },
        Event::Ordered {
            all_final,
            failures,
        } => match state {
            S::Running | S::Paused if all_final && failures <= max_failures as usize => go(
                S::Completed,
                String::new(),
                vec![Action::Audit {
                    action: "campaign.complete",
                    outcome: "ok".into(),
                }],
            ),
            _ => Outcome::Ignored,
        },
    })
}

/// What the driver should do with one ordered member, given the appliance's latest report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Still going (maybe with a newer phase).
    Progress(Option<UpgradePhase>),
    /// No result within the campaign's deadline, and the node is not past the point of no
    /// return (writing, rebooting, verifying): failed, without quarantine.
    Overdue {
        /// The node's latest phase for this order.
        phase: Option<UpgradePhase>,
        /// The deadline, in seconds.
        limit: u64,
    },
    /// Committed on the release.
    Committed,
    /// Failed; quarantine the version when `quarantine`.
    Failed {
        /// For people.
        reason: String,
        /// Never order this version to this appliance again automatically.
        quarantine: bool,
    },
    /// Running a version nobody ordered: flag the appliance.
    Unexpected(String),
}

/// Judges an ordered member from the appliance's status at `now` (pure).
pub(super) fn judge(
    campaign: &Campaign,
    member: &CampaignMember,
    status: Option<&Status>,
    now: OffsetDateTime,
) -> Verdict {
    let verdict = report_verdict(campaign, member, status);
    let Verdict::Progress(phase) = verdict else {
        return verdict;
    };
    // A node past the point of no return finishes whatever the deadline says.
    let writing = phase.is_some_and(|p| {
        matches!(
            p,
            UpgradePhase::Writing | UpgradePhase::Rebooting | UpgradePhase::Verifying
        )
    });
    match (campaign.deadline_seconds, member.ordered_at) {
        (Some(limit), Some(ordered))
            if !writing
                && now - ordered > time::Duration::seconds(limit.min(i64::MAX as u64) as i64) =>
        {
            Verdict::Overdue { phase, limit }
        }
        _ => verdict,
    }
}

/// The version a member runs as first seen after its order, when the order did not know
/// it (no heartbeat before): taken as the version it upgrades from, never judged.
pub(super) fn first_seen_version(
    campaign: &Campaign,
    member: &CampaignMember,
    status: Option<&Status>,
) -> Option<String> {
    status
        .map(|s| s.status.os_version.clone())
        .filter(|v| member.from_version.is_empty() && *v != campaign.release)
}

/// The verdict of the report alone, without the deadline.
fn report_verdict(
    campaign: &Campaign,
    member: &CampaignMember,
    status: Option<&Status>,
) -> Verdict {
    let progress = Verdict::Progress;
    let Some(status) = status else {
        return progress(member.phase);
    };
    // Reports from before the order say nothing about it.
    if member
        .ordered_at
        .is_some_and(|t| status.status.observed_at < t && status.last_seen < t)
    {
        return progress(member.phase);
    }
    let running = status.status.os_version.as_str();
    let ours = status
        .status
        .upgrade
        .as_ref()
        .filter(|r| r.version == campaign.release && r.campaign == campaign.name);
    // Unknown (no heartbeat before the order): the first version seen is taken as the
    // previous one by the driver, never judged.
    let unexpected = |running: &str| {
        !running.is_empty()
            && !member.from_version.is_empty()
            && running != campaign.release
            && running != member.from_version
    };
    match ours {
        Some(r) if r.phase == UpgradePhase::Committed => {
            if running == campaign.release || running.is_empty() {
                Verdict::Committed
            } else {
                Verdict::Unexpected(format!(
                    "reported committed {} but runs {running}",
                    campaign.release
                ))
            }
        }
        Some(r) if r.phase.is_final() => {
            if unexpected(running) {
                return Verdict::Unexpected(format!(
                    "reported {} of {} but runs {running} (was {})",
                    phase_name(r.phase),
                    campaign.release,
                    member.from_version
                ));
            }
            let reason = if r.reason.is_empty() {
                phase_name(r.phase).to_owned()
            } else {
                format!("{}: {}", phase_name(r.phase), r.reason)
            };
            Verdict::Failed {
                reason,
                quarantine: matches!(
                    r.phase,
                    UpgradePhase::RolledBack | UpgradePhase::Interrupted | UpgradePhase::Refused
                ),
            }
        }
        Some(r) => {
            if unexpected(running) {
                Verdict::Unexpected(format!(
                    "runs {running} while upgrading from {} to {}",
                    member.from_version, campaign.release
                ))
            } else {
                progress(Some(r.phase))
            }
        }
        None if unexpected(running) => Verdict::Unexpected(format!(
            "runs {running}; was ordered from {} to {}",
            member.from_version, campaign.release
        )),
        None if running == campaign.release && !running.is_empty() => Verdict::Committed,
        None => progress(member.phase),
    }
}

fn phase_name(p: UpgradePhase) -> &'static str {
    match p {
        UpgradePhase::Waiting => "waiting",
        UpgradePhase::Downloading => "downloading",
        UpgradePhase::Staged => "staged",
        UpgradePhase::Writing => "writing",
        UpgradePhase::Rebooting => "rebooting",
        UpgradePhase::Verifying => "verifying",
        UpgradePhase::Committed => "committed",
        UpgradePhase::RolledBack => "rolled-back",
        UpgradePhase::Interrupted => "interrupted",
        UpgradePhase::Refused => "refused",
        UpgradePhase::Failed => "failed",
    }
}

/// Which pending members to order now (indices), given the campaign (pure).
pub(super) fn to_order(c: &Campaign) -> Vec<usize> {
    let unfinished = |batch: u32| {
        c.members
            .iter()
            .any(|m| m.batch == batch && !m.state.is_final())
    };
    // The lowest batch with an unfinished member is the active one; canaries (batch 0)
    // gate everything after them.
    let Some(active) = c
        .members
        .iter()
        .filter(|m| !m.state.is_final())
        .map(|m| m.batch)
        .min()
    else {
        return Vec::new();
    };
    if c.canaries > 0 && active > 0 && unfinished(0) {
        return Vec::new();
    }
    let pending = c
        .members
        .iter()
        .enumerate()
        .filter(|(_, m)| m.batch == active && m.state == MemberState::Pending)
        .map(|(i, _)| i);
    match c.pacing {
        Pacing::MaxConcurrency(n) if !(active == 0 && c.canaries > 0) => {
            let in_flight = c
                .members
                .iter()
                .filter(|m| m.state == MemberState::Ordered)
                .count();
            pending
                .take((n.max(1) as usize).saturating_sub(in_flight))
                .collect()
        }
        _ => pending.collect(),
    }
}

/// Whether a member due now gets the order, or is skipped and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Admission {
    /// Put this order in the appliance's desired state.
    Order(Box<UpgradeOrder>),
    /// Never ordered.
    Skip(String),
}

/// Decides about a member due now (pure): `appliance` is its record (`None`: deleted),
/// `running` the version it last reported, `release` the campaign's release (`None`:
/// deleted).
pub(super) fn admit(
    c: &Campaign,
    appliance: Option<&Appliance>,
    running: &str,
    release: Option<&Release>,
) -> Admission {
    let Some(a) = appliance else {
        return Admission::Skip("appliance deleted".into());
    };
    if let Some(why) = a.quarantined.get(&c.release) {
        return Admission::Skip(format!(
            "{} is quarantined on this appliance: {why}",
            c.release
        ));
    }
    if let Some(flag) = &a.upgrade_flag {
        return Admission::Skip(format!("flagged: {flag}"));
    }
    if running == c.release {
        return Admission::Skip(format!("already runs {running}"));
    }
    if let Some(other) = a.desired.upgrade.as_ref().filter(|o| o.campaign != c.name) {
        return Admission::Skip(format!("busy with campaign {}", other.campaign));
    }
    let Some(release) = release else {
        return Admission::Skip(format!("release {} was deleted", c.release));
    };
    Admission::Order(Box::new(UpgradeOrder {
        campaign: c.name.clone(),
        version: release.version.clone(),
        bundle_url: format!("/v1/releases/{}/bundle", release.version),
        sha256: release.sha256.clone(),
        size_bytes: release.size_bytes,
        compatible_from: release.compatible_from.clone(),
        allow_downgrade: c.allow_downgrade,
        window: c.window.clone(),
        prestage: c.prestage,
        max_bytes_per_second: None,
    }))
}

/// What an abort does to one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnAbort {
    /// Never ordered: skipped.
    SkipPending,
    /// Ordered, and the node has not started writing: withdraw the order, skipped.
    Withdraw,
    /// Final already, or the node is writing or verifying: it finishes (stopping it half-way
    /// helps nobody) and is still recorded.
    Keep,
}

/// Decides what an abort does to `m` (pure).
pub(super) fn on_abort(m: &CampaignMember) -> OnAbort {
    let untouched = m.phase.is_none_or(|p| {
        matches!(
            p,
            UpgradePhase::Waiting | UpgradePhase::Downloading | UpgradePhase::Staged
        )
    });
    match m.state {
        MemberState::Pending => OnAbort::SkipPending,
        MemberState::Ordered if untouched => OnAbort::Withdraw,
        _ => OnAbort::Keep,
    }
}
