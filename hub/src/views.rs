//! Stored records to the `cairn_api::hub` views operators get. Each view names the fields it
//! shows, so nothing secret in a record (token hashes, bootstrap tokens) reaches an answer
//! unless a view says so.

use std::collections::BTreeMap;

use cairn_api::hub::{
    ApplianceState, ApplianceView, AuditEntryView, BatchProgress, CampaignView, ControlPlaneView,
    DesiredView, EnrollmentTokenView, EventView, JoinView, OperatorTokenView, ReleaseView,
    StatusView, VpcView,
};

use crate::model::{
    Appliance, AuditEntry, Campaign, ControlPlane, EnrollmentToken, Event, OperatorToken, Pacing,
    Release, Status, Vpc,
};

impl From<&EnrollmentToken> for EnrollmentTokenView {
    fn from(t: &EnrollmentToken) -> Self {
        Self {
            id: t.id.clone(),
            site: t.site.clone(),
            labels: t.labels.clone(),
            kind: t.kind,
            mac: t.mac.clone(),
            serial: t.serial.clone(),
            appliance: t.appliance.clone(),
            max_uses: t.max_uses,
            uses: t.uses,
            expires_at: t.expires_at,
            revoked: t.revoked,
            created_at: t.created_at,
            created_by: t.created_by.clone(),
        }
    }
}

impl From<&OperatorToken> for OperatorTokenView {
    fn from(t: &OperatorToken) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            site: t.site.clone(),
            tenant: t.tenant.clone(),
            created_at: t.created_at,
            created_by: t.created_by.clone(),
            expires_at: t.expires_at,
            revoked: t.revoked,
        }
    }
}

/// Where an appliance is, by its latest status.
pub fn state_of(status: Option<&Status>) -> ApplianceState {
    match status {
        None => ApplianceState::Registered,
        Some(s) if s.online => ApplianceState::Online,
        Some(_) => ApplianceState::Offline,
    }
}

/// An appliance's latest status as operators see it.
pub fn status(s: &Status) -> StatusView {
    StatusView {
        last_seen: s.last_seen,
        interval_seconds: s.interval_seconds,
        applied_generation: s.applied_generation,
        online: s.online,
        status: s.status.clone(),
    }
}

/// An appliance and its latest status as operators see them.
pub fn appliance(a: &Appliance, status: Option<&Status>) -> ApplianceView {
    let state = state_of(status);
    ApplianceView {
        id: a.id.clone(),
        site: a.site.clone(),
        hostname: a.hostname.clone(),
        labels: a.labels.clone(),
        inventory: a.inventory.clone(),
        agent_version: a.agent_version.clone(),
        cert_sha256: a.cert_sha256.clone(),
        previous_cert_sha256: a.previous_cert_sha256.clone(),
        cert_not_after: a.cert_not_after,
        registered_at: a.registered_at,
        rekeys: a.rekeys,
        vtep_address: a.vtep_address.clone(),
        vtep_refused: a.vtep_refused.clone(),
        vpcs: a.vpcs.clone(),
        control_plane: a.control_plane.clone(),
        join: a.join.as_ref().map(JoinView::from),
        desired: DesiredView::from(&a.desired),
        quarantined: a.quarantined.clone(),
        upgrade_flag: a.upgrade_flag.clone(),
        state,
        status: status.map(self::status),
        config: cairn_api::hub::ConfigStateView::new(
            a.desired.config.as_ref(),
            status.and_then(|s| s.status.config.as_ref()),
        ),
    }
}

impl From<&ControlPlane> for ControlPlaneView {
    fn from(c: &ControlPlane) -> Self {
        Self {
            name: c.name.clone(),
            api_server_url: c.api_server_url.clone(),
            ca_bundle_pem: c.ca_bundle_pem.clone(),
            credentials_ref: c.credentials_ref.clone(),
            site: c.site.clone(),
            labels: c.labels.clone(),
            tenant: c.tenant.clone(),
        }
    }
}

impl From<&Vpc> for VpcView {
    fn from(v: &Vpc) -> Self {
        Self {
            name: v.name.clone(),
            subnet: v.subnet.clone(),
            vni: v.vni,
            members: v.members.clone(),
            tenant: v.tenant.clone(),
        }
    }
}

impl From<&Release> for ReleaseView {
    fn from(r: &Release) -> Self {
        Self {
            version: r.version.clone(),
            architecture: r.architecture.clone(),
            compatible_from: r.compatible_from.clone(),
            size_bytes: r.size_bytes,
            sha256: r.sha256.clone(),
            signing_key: r.signing_key.clone(),
            build_time: r.build_time.clone(),
            source_url: r.source_url.clone(),
            added_at: r.added_at,
            added_by: r.added_by.clone(),
        }
    }
}

impl From<&AuditEntry> for AuditEntryView {
    fn from(e: &AuditEntry) -> Self {
        Self {
            at: e.at,
            actor: e.actor.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            source: e.source.clone(),
            result: e.result.clone(),
            site: e.site.clone(),
            tenant: e.tenant.clone(),
        }
    }
}

/// An event as operators see it, with its sequence number (the version it was written at).
pub fn event(seq: u64, e: &Event) -> EventView {
    EventView {
        seq,
        at: e.at,
        appliance: e.appliance.clone(),
        site: e.site.clone(),
        kind: e.kind.clone(),
        message: e.message.clone(),
        hub: e.hub.clone(),
    }
}

/// A campaign with its progress per batch.
pub fn campaign(c: &Campaign) -> CampaignView {
    let mut batches: Vec<BatchProgress> = Vec::new();
    for m in &c.members {
        if batches.last().is_none_or(|b| b.index != m.batch) {
            let kind = if m.batch == 0 && c.canaries > 0 {
                "canary"
            } else if matches!(c.pacing, Pacing::MaxConcurrency(_)) {
                "rolling"
            } else {
                "batch"
            };
            batches.push(BatchProgress {
                index: m.batch,
                kind: kind.into(),
                counts: BTreeMap::new(),
            });
        }
        if let Some(b) = batches.last_mut() {
            *b.counts.entry(m.state.as_str().into()).or_default() += 1;
        }
    }
    CampaignView {
        name: c.name.clone(),
        release: c.release.clone(),
        selector: c.selector.clone(),
        canaries: c.canaries,
        pacing: c.pacing,
        max_failures: c.max_failures,
        window: c.window.clone(),
        prestage: c.prestage,
        allow_downgrade: c.allow_downgrade,
        deadline_seconds: c.deadline_seconds,
        state: c.state,
        state_reason: c.state_reason.clone(),
        members: c.members.clone(),
        created_at: c.created_at,
        created_by: c.created_by.clone(),
        site: c.site.clone(),
        batches,
        failures: c.failures(),
    }
}

/// Views of a list of records.
pub fn all<'a, R: 'a, V: From<&'a R>>(records: &'a [R]) -> Vec<V> {
    records.iter().map(V::from).collect()
}
