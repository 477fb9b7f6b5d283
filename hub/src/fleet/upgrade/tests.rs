//! The campaign rules that need no store: layout, pacing, judging reports, parsing.

use cairn_api::{NodeStatus, UpgradeReport};
use time::OffsetDateTime;

use super::machine::{judge, to_order};
use super::*;

fn ids(n: usize) -> Vec<ApplianceId> {
    (0..n)
        .map(|i| ApplianceId::new(format!("a{i}")).unwrap())
        .collect()
}

fn campaign(n: usize, canaries: u32, pacing: Pacing) -> Campaign {
    Campaign {
        name: "c".into(),
        release: "2.0".into(),
        selector: cairn_api::hub::Selector::default(),
        canaries,
        pacing,
        max_failures: 0,
        window: None,
        prestage: false,
        allow_downgrade: false,
        deadline_seconds: None,
        state: CampaignState::Running,
        state_reason: String::new(),
        members: batches(ids(n), canaries, pacing),
        created_at: OffsetDateTime::UNIX_EPOCH,
        created_by: "t".into(),
        site: None,
    }
}

fn status(os: &str, report: Option<(&str, UpgradePhase)>) -> Status {
    Status {
        last_seen: OffsetDateTime::now_utc(),
        interval_seconds: 1,
        applied_generation: 1,
        online: true,
        status: NodeStatus {
            agent_version: String::new(),
            os_version: os.into(),
            booted_slot: None,
            uptime_seconds: 0,
            load1: 0.0,
            conditions: vec![],
            counters: Default::default(),
            vtep_address: None,
            hub_link: None,
            config: None,
            upgrade: report.map(|(campaign, phase)| UpgradeReport {
                campaign: campaign.into(),
                version: "2.0".into(),
                phase,
                reason: "health check kubelet failed".into(),
                bytes_done: 0,
                bytes_total: 0,
                logs: vec![],
                at: OffsetDateTime::now_utc(),
            }),
            observed_at: OffsetDateTime::now_utc(),
        },
    }
}

/// The verdict on a report now.
fn judge_now(c: &Campaign, m: &CampaignMember, status: Option<&Status>) -> Verdict {
    judge(c, m, status, OffsetDateTime::now_utc())
}

fn ordered(c: &Campaign, i: usize) -> CampaignMember {
    CampaignMember {
        state: MemberState::Ordered,
        from_version: "1.0".into(),
        ordered_at: Some(OffsetDateTime::now_utc() - time::Duration::seconds(5)),
        ..c.members[i].clone()
    }
}

#[test]
fn canaries_take_batch_zero_and_the_rest_is_cut_into_batches() {
    let c = campaign(6, 1, Pacing::BatchSize(2));
    let layout: Vec<u32> = c.members.iter().map(|m| m.batch).collect();
    assert_eq!(layout, [0, 1, 1, 2, 2, 3]);
    let c = campaign(4, 0, Pacing::BatchSize(3));
    let layout: Vec<u32> = c.members.iter().map(|m| m.batch).collect();
    assert_eq!(layout, [0, 0, 0, 1]);
}

#[test]
fn the_next_batch_waits_until_the_current_one_finished() {
    let mut c = campaign(5, 1, Pacing::BatchSize(2));
    assert_eq!(to_order(&c), [0], "the canary goes first, alone");
    c.members[0].state = MemberState::Ordered;
    assert!(
        to_order(&c).is_empty(),
        "nothing else while the canary runs"
    );
    c.members[0].state = MemberState::Committed;
    assert_eq!(to_order(&c), [1, 2]);
    c.members[1].state = MemberState::Ordered;
    c.members[2].state = MemberState::Committed;
    assert!(
        to_order(&c).is_empty(),
        "batch 1 still has a member in flight"
    );
    c.members[1].state = MemberState::Failed;
    assert_eq!(to_order(&c), [3, 4]);
}

#[test]
fn a_rolling_window_keeps_at_most_n_in_flight_after_the_canaries() {
    let mut c = campaign(6, 2, Pacing::MaxConcurrency(2));
    assert_eq!(to_order(&c), [0, 1], "both canaries at once");
    c.members[0].state = MemberState::Committed;
    c.members[1].state = MemberState::Ordered;
    assert!(to_order(&c).is_empty());
    c.members[1].state = MemberState::Committed;
    assert_eq!(to_order(&c), [2, 3]);
    c.members[2].state = MemberState::Ordered;
    c.members[3].state = MemberState::Committed;
    assert_eq!(to_order(&c), [4], "one slot free");
}

#[test]
fn reports_move_a_member_and_failures_quarantine_only_when_the_node_ran_the_version() {
    let c = campaign(1, 0, Pacing::BatchSize(1));
    let m = ordered(&c, 0);
    assert_eq!(judge_now(&c, &m, None), Verdict::Progress(None));
    assert_eq!(
        judge_now(
            &c,
            &m,
            Some(&status("1.0", Some(("c", UpgradePhase::Writing))))
        ),
        Verdict::Progress(Some(UpgradePhase::Writing))
    );
    assert_eq!(
        judge_now(
            &c,
            &m,
            Some(&status("2.0", Some(("c", UpgradePhase::Committed))))
        ),
        Verdict::Committed
    );
    match judge_now(
        &c,
        &m,
        Some(&status("1.0", Some(("c", UpgradePhase::RolledBack)))),
    ) {
        Verdict::Failed { reason, quarantine } => {
            assert!(quarantine);
            assert!(reason.contains("rolled-back: health check"), "{reason}");
        }
        v => panic!("{v:?}"),
    }
    for phase in [UpgradePhase::Interrupted, UpgradePhase::Refused] {
        assert!(matches!(
            judge_now(&c, &m, Some(&status("1.0", Some(("c", phase))))),
            Verdict::Failed {
                quarantine: true,
                ..
            }
        ));
    }
    assert!(matches!(
        judge_now(
            &c,
            &m,
            Some(&status("1.0", Some(("c", UpgradePhase::Failed))))
        ),
        Verdict::Failed {
            quarantine: false,
            ..
        }
    ));
    // A report about another campaign's order says nothing about this one.
    assert_eq!(
        judge_now(
            &c,
            &m,
            Some(&status("1.0", Some(("other", UpgradePhase::RolledBack))))
        ),
        Verdict::Progress(None)
    );
}

#[test]
fn an_appliance_on_neither_version_is_unexpected() {
    let c = campaign(1, 0, Pacing::BatchSize(1));
    let m = ordered(&c, 0);
    assert!(matches!(
        judge_now(&c, &m, Some(&status("1.5", None))),
        Verdict::Unexpected(_)
    ));
    assert!(matches!(
        judge_now(
            &c,
            &m,
            Some(&status("1.5", Some(("c", UpgradePhase::Committed))))
        ),
        Verdict::Unexpected(_)
    ));
    assert!(matches!(
        judge_now(
            &c,
            &m,
            Some(&status("0.9", Some(("c", UpgradePhase::RolledBack))))
        ),
        Verdict::Unexpected(_)
    ));
    // Back on its previous version without a report yet: still in progress.
    assert_eq!(
        judge_now(&c, &m, Some(&status("1.0", None))),
        Verdict::Progress(None)
    );
}

#[test]
fn every_campaign_transition() {
    use super::machine::{Action, Event, Outcome, next};
    use CampaignAction as A;
    use CampaignState as S;
    let op = |action| Event::Operator {
        action,
        actor: "ops",
    };
    let go = |state, reason: &str, actions| {
        Ok(Outcome::Next {
            state,
            reason: reason.into(),
            actions,
        })
    };
    let pause = "paused by the hub: 2 failed, more than the 1 allowed";
    let complete = vec![Action::Audit {
        action: "campaign.complete",
        outcome: "ok".into(),
    }];
    let cases = vec![
        (
            "start",
            S::Created,
            op(A::Start),
            go(S::Running, "", vec![]),
        ),
        (
            "pause",
            S::Running,
            op(A::Pause),
            go(S::Paused, "paused by ops", vec![]),
        ),
        (
            "resume",
            S::Paused,
            op(A::Resume),
            go(S::Running, "", vec![]),
        ),
        (
            "abort withdraws untouched orders",
            S::Running,
            op(A::Abort),
            go(
                S::Aborted,
                "aborted by ops",
                vec![Action::WithdrawUntouched],
            ),
        ),
        (
            "abort before the start",
            S::Created,
            op(A::Abort),
            go(
                S::Aborted,
                "aborted by ops",
                vec![Action::WithdrawUntouched],
            ),
        ),
        (
            "a batch completes: order the next",
            S::Running,
            Event::Judged { failures: 1 },
            go(S::Running, "", vec![Action::OrderNext]),
        ),
        (
            "max_failures exceeded: self-pause",
            S::Running,
            Event::Judged { failures: 2 },
            go(
                S::Paused,
                pause,
                vec![Action::Audit {
                    action: "campaign.pause",
                    outcome: pause.into(),
                }],
            ),
        ),
        (
            "paused orders nobody",
            S::Paused,
            Event::Judged { failures: 0 },
            Ok(Outcome::Ignored),
        ),
        (
            "an aborted campaign only records",
            S::Aborted,
            Event::Judged { failures: 0 },
            Ok(Outcome::Ignored),
        ),
        (
            "every member final: complete",
            S::Running,
            Event::Ordered {
                all_final: true,
                failures: 1,
            },
            go(S::Completed, "", complete.clone()),
        ),
        (
            "a paused campaign completes when its last member finishes",
            S::Paused,
            Event::Ordered {
                all_final: true,
                failures: 0,
            },
            go(S::Completed, "", complete),
        ),
        (
            "members still running",
            S::Running,
            Event::Ordered {
                all_final: false,
                failures: 0,
            },
            Ok(Outcome::Ignored),
        ),
        (
            "a self-paused campaign with too many failures never completes",
            S::Paused,
            Event::Ordered {
                all_final: true,
                failures: 2,
            },
            Ok(Outcome::Ignored),
        ),
        (
            "an aborted campaign never completes",
            S::Aborted,
            Event::Ordered {
                all_final: true,
                failures: 0,
            },
            Ok(Outcome::Ignored),
        ),
    ];
    for (name, state, event, want) in cases {
        assert_eq!(next(state, 1, event), want, "{name}");
    }
    // Commands the state does not allow are refused, never a panic.
    for (state, action) in [
        (S::Running, A::Start),
        (S::Paused, A::Pause),
        (S::Running, A::Resume),
        (S::Completed, A::Abort),
        (S::Aborted, A::Resume),
    ] {
        let e = next(state, 1, op(action)).unwrap_err();
        assert_eq!((e.state, e.action), (state, action));
        assert!(e.to_string().starts_with("is "), "{e}");
    }
}

#[test]
fn a_failed_canary_pauses_the_campaign_before_any_batch() {
    use super::machine::{Event, Outcome, next};
    let mut c = campaign(3, 1, Pacing::BatchSize(2));
    let m = ordered(&c, 0);
    let verdict = judge_now(
        &c,
        &m,
        Some(&status("1.0", Some(("c", UpgradePhase::RolledBack)))),
    );
    assert!(matches!(
        verdict,
        Verdict::Failed {
            quarantine: true,
            ..
        }
    ));
    c.members[0].state = MemberState::Failed;
    let event = Event::Judged {
        failures: c.failures(),
    };
    assert!(matches!(
        next(c.state, c.max_failures, event),
        Ok(Outcome::Next {
            state: CampaignState::Paused,
            ..
        })
    ));
}

#[test]
fn the_deadline_fails_a_member_that_has_not_started_writing() {
    let mut c = campaign(1, 0, Pacing::BatchSize(1));
    c.deadline_seconds = Some(60);
    let m = ordered(&c, 0);
    let later = OffsetDateTime::now_utc() + time::Duration::seconds(120);
    let waiting = status("1.0", Some(("c", UpgradePhase::Downloading)));
    assert_eq!(
        judge(&c, &m, Some(&waiting), later),
        Verdict::Overdue {
            phase: Some(UpgradePhase::Downloading),
            limit: 60
        }
    );
    assert_eq!(
        judge(&c, &m, None, later),
        Verdict::Overdue {
            phase: None,
            limit: 60
        }
    );
    let writing = status("1.0", Some(("c", UpgradePhase::Writing)));
    assert_eq!(
        judge(&c, &m, Some(&writing), later),
        Verdict::Progress(Some(UpgradePhase::Writing)),
        "past the point of no return the node finishes"
    );
    assert_eq!(
        judge_now(&c, &m, Some(&waiting)),
        Verdict::Progress(Some(UpgradePhase::Downloading)),
        "within the deadline"
    );
}

#[test]
fn the_first_version_seen_is_the_one_upgraded_from() {
    use super::machine::first_seen_version;
    let c = campaign(1, 0, Pacing::BatchSize(1));
    let unknown = CampaignMember {
        from_version: String::new(),
        ..ordered(&c, 0)
    };
    let seen = status("1.1", None);
    assert_eq!(
        first_seen_version(&c, &unknown, Some(&seen)).as_deref(),
        Some("1.1")
    );
    assert_eq!(first_seen_version(&c, &ordered(&c, 0), Some(&seen)), None);
    assert_eq!(
        first_seen_version(&c, &unknown, Some(&status("2.0", None))),
        None
    );
    assert_eq!(first_seen_version(&c, &unknown, None), None);
}

#[test]
fn abort_withdraws_orders_the_node_has_not_acted_on() {
    use super::machine::{OnAbort, on_abort};
    let c = campaign(1, 0, Pacing::BatchSize(1));
    let with = |state, phase| CampaignMember {
        state,
        phase,
        ..c.members[0].clone()
    };
    use MemberState as M;
    use UpgradePhase as P;
    let cases = [
        (M::Pending, None, OnAbort::SkipPending),
        (M::Ordered, None, OnAbort::Withdraw),
        (M::Ordered, Some(P::Waiting), OnAbort::Withdraw),
        (M::Ordered, Some(P::Downloading), OnAbort::Withdraw),
        (M::Ordered, Some(P::Staged), OnAbort::Withdraw),
        (M::Ordered, Some(P::Writing), OnAbort::Keep),
        (M::Ordered, Some(P::Verifying), OnAbort::Keep),
        (M::Committed, Some(P::Committed), OnAbort::Keep),
        (M::Failed, None, OnAbort::Keep),
    ];
    for (state, phase, want) in cases {
        assert_eq!(on_abort(&with(state, phase)), want, "{state:?} {phase:?}");
    }
}

#[test]
fn members_due_are_ordered_unless_protected_busy_or_done() {
    use super::machine::{Admission, admit};
    let c = campaign(1, 0, Pacing::BatchSize(1));
    let release = Release {
        version: "2.0".into(),
        architecture: "x86_64".into(),
        compatible_from: vec![],
        size_bytes: 10,
        sha256: "ab".repeat(32),
        signing_key: "k".into(),
        build_time: String::new(),
        source_url: None,
        added_at: OffsetDateTime::UNIX_EPOCH,
        added_by: "t".into(),
    };
    let appliance = Appliance {
        id: ids(1).remove(0),
        site: "s".into(),
        hostname: "a0".into(),
        labels: BTreeMap::new(),
        inventory: Default::default(),
        agent_version: String::new(),
        cert_sha256: String::new(),
        previous_cert_sha256: None,
        cert_not_after: OffsetDateTime::UNIX_EPOCH,
        registered_at: OffsetDateTime::UNIX_EPOCH,
        rekeys: 0,
        vtep_address: None,
        vtep_refused: None,
        vpcs: Default::default(),
        control_plane: None,
        join: None,
        desired: Default::default(),
        quarantined: BTreeMap::new(),
        upgrade_flag: None,
    };
    match admit(&c, Some(&appliance), "1.0", Some(&release)) {
        Admission::Order(o) => {
            assert_eq!((o.campaign.as_str(), o.version.as_str()), ("c", "2.0"));
            assert_eq!(o.bundle_url, "/v1/releases/2.0/bundle");
        }
        other => panic!("{other:?}"),
    }
    let skip = |a: Option<&Appliance>, running: &str, r: Option<&Release>| match admit(
        &c, a, running, r,
    ) {
        Admission::Skip(why) => why,
        other => panic!("{other:?}"),
    };
    assert_eq!(skip(None, "1.0", Some(&release)), "appliance deleted");
    assert_eq!(
        skip(Some(&appliance), "2.0", Some(&release)),
        "already runs 2.0"
    );
    assert_eq!(
        skip(Some(&appliance), "1.0", None),
        "release 2.0 was deleted"
    );
    let mut quarantined = appliance.clone();
    quarantined
        .quarantined
        .insert("2.0".into(), "rolled back".into());
    assert!(skip(Some(&quarantined), "1.0", Some(&release)).contains("quarantined"));
    let mut busy = appliance.clone();
    busy.desired.upgrade = Some(UpgradeOrder {
        campaign: "other".into(),
        ..*match admit(&c, Some(&appliance), "1.0", Some(&release)) {
            Admission::Order(o) => o,
            other => panic!("{other:?}"),
        }
    });
    assert_eq!(
        skip(Some(&busy), "1.0", Some(&release)),
        "busy with campaign other"
    );
    let mut flagged = appliance.clone();
    flagged.upgrade_flag = Some("runs 1.5".into());
    assert_eq!(
        skip(Some(&flagged), "1.0", Some(&release)),
        "flagged: runs 1.5"
    );
}
