//! The campaign rules that need no store: layout, pacing, judging reports, parsing.

use cairn_api::{NodeStatus, UpgradeReport};
use time::OffsetDateTime;

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
    assert_eq!(judge(&c, &m, None), Verdict::Progress(None));
    assert_eq!(
        judge(
            &c,
            &m,
            Some(&status("1.0", Some(("c", UpgradePhase::Writing))))
        ),
        Verdict::Progress(Some(UpgradePhase::Writing))
    );
    assert_eq!(
        judge(
            &c,
            &m,
            Some(&status("2.0", Some(("c", UpgradePhase::Committed))))
        ),
        Verdict::Committed
    );
    match judge(
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
            judge(&c, &m, Some(&status("1.0", Some(("c", phase))))),
            Verdict::Failed {
                quarantine: true,
                ..
            }
        ));
    }
    assert!(matches!(
        judge(
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
        judge(
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
        judge(&c, &m, Some(&status("1.5", None))),
        Verdict::Unexpected(_)
    ));
    assert!(matches!(
        judge(
            &c,
            &m,
            Some(&status("1.5", Some(("c", UpgradePhase::Committed))))
        ),
        Verdict::Unexpected(_)
    ));
    assert!(matches!(
        judge(
            &c,
            &m,
            Some(&status("0.9", Some(("c", UpgradePhase::RolledBack))))
        ),
        Verdict::Unexpected(_)
    ));
    // Back on its previous version without a report yet: still in progress.
    assert_eq!(
        judge(&c, &m, Some(&status("1.0", None))),
        Verdict::Progress(None)
    );
}
