//! Heartbeats (status up, desired state down), VTEP changes, and offline detection. The
//! desired state each appliance is owed is derived in [`super::desired`].

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// The appliances this hub served a heartbeat to, as of that heartbeat. A heartbeat of a
/// known appliance skips both reads (its record, its previous status) and writes its status
/// on condition that the appliance record is still at the version it was known at: that one
/// check stands for the certificate check and the desired state answered, which come from
/// that record, so the answer is exactly as fresh as after reading it. On etcd this turns
/// three round trips (two reads, one write) into one group-committed write.
#[derive(Default)]
pub(crate) struct Served(Mutex<HashMap<ApplianceId, Known>>);

/// One appliance as its last heartbeat on this hub left it.
#[derive(Clone)]
struct Known {
    /// Version of its record, and the record.
    version: u64,
    appliance: Appliance,
    /// The client certificate it presented.
    cert_sha256: String,
    /// When this hub last wrote its status (online).
    written: OffsetDateTime,
}

impl Served {
    fn get(&self, id: &ApplianceId) -> Option<Known> {
        self.lock().get(id).cloned()
    }
    fn put(&self, id: ApplianceId, known: Known) {
        self.lock().insert(id, known);
    }
    fn forget(&self, id: &ApplianceId) {
        self.lock().remove(id);
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ApplianceId, Known>> {
        // A panic while holding the map leaves it consistent (one insert or remove).
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Fleet {
    /// `POST /v1/heartbeats`: records the status and answers with the desired state.
    pub async fn heartbeat(
        &self,
        peer: Option<&PeerCert>,
        hb: Heartbeat,
    ) -> Result<HeartbeatResponse, FleetError> {
        if let Some(answer) = self.heartbeat_known(peer, &hb).await? {
            return Ok(answer);
        }
        self.heartbeat_read(peer, hb).await
    }

    /// A heartbeat of an appliance whose last heartbeat this hub served, when nothing but
    /// its liveness can have changed: `None` when it must take the reading path, because the
    /// appliance is unknown here, presents another certificate, reports another VTEP, or
    /// its record changed since (the conditional write failed).
    ///
    /// The previous status is not read: this hub wrote it, online, less than half the
    /// offline allowance ago, so the offline detector cannot have marked the appliance
    /// offline since (it would need the whole allowance without a heartbeat), and no online
    /// event is owed. Past half the allowance the reading path checks.
    async fn heartbeat_known(
        &self,
        peer: Option<&PeerCert>,
        hb: &Heartbeat,
    ) -> Result<Option<HeartbeatResponse>, FleetError> {
        let Some((id, cert)) = peer.and_then(|p| Some((p.appliance.as_ref()?, &p.sha256))) else {
            return Ok(None);
        };
        let Some(known) = self.served.get(id) else {
            return Ok(None);
        };
        let at = now();
        let allowance = Duration::seconds(
            i64::from(known.appliance.desired.heartbeat_interval_seconds)
                * i64::from(self.settings.offline_after_missed),
        );
        if known.cert_sha256 != *cert
            || hb.status.vtep_address != known.appliance.vtep_address
            || at - known.written >= allowance / 2
        {
            return Ok(None);
        }
        let status = Status {
            last_seen: at,
            interval_seconds: known.appliance.desired.heartbeat_interval_seconds,
            applied_generation: hb.applied_generation,
            online: true,
            status: hb.status.clone(),
        };
        let record = format!("{}{id}", keys::APPLIANCES);
        let written = self
            .store
            .txn_relaxed(
                vec![Check::version(record, known.version)],
                vec![Op::put(format!("{}{id}", keys::STATUS), encode(&status))],
            )
            .await?;
        if !written {
            self.served.forget(id);
            return Ok(None);
        }
        let desired = known.appliance.desired.clone();
        self.served.put(
            id.clone(),
            Known {
                written: at,
                ..known
            },
        );
        Ok(Some(HeartbeatResponse { desired }))
    }

    /// A heartbeat that reads the appliance and its previous status first: the first one
    /// this hub serves, and any that may change more than the status.
    async fn heartbeat_read(
        &self,
        peer: Option<&PeerCert>,
        hb: Heartbeat,
    ) -> Result<HeartbeatResponse, FleetError> {
        let (version, mut appliance) = self.appliance_for(peer).await?;
        let mut changed = false;
        let status_key = format!("{}{}", keys::STATUS, appliance.id);
        let previous: Option<(u64, Status)> = self.get(&status_key).await?;
        // A node that stops reporting a VTEP (its setting removed) leaves the overlays too:
        // peers must not keep tunnelling to the old address. A refused address is left out
        // the same way: one bad VTEP must not reach, and break, every peer's overlay.
        let reported = hb.status.vtep_address.clone();
        if reported != appliance.vtep_address {
            let refusal = match &reported {
                Some(v) => self
                    .vtep_problem(&appliance, v)
                    .await?
                    .map(|why| (v.clone(), why)),
                None => None,
            };
            changed = true;
            match refusal {
                None => appliance = self.update_vtep(&appliance.id, reported, None).await?,
                // Refused before for the same reason: nothing new to record.
                Some(r) if appliance.vtep_refused.as_ref() == Some(&r) => {}
                Some((v, why)) => {
                    tracing::warn!(appliance = %appliance.id, vtep = %v, reason = %why, "VTEP address refused");
                    let event = self.event_op(
                        &appliance,
                        "vtep-refused",
                        format!("VTEP address {v} refused: {why}"),
                    );
                    self.store.txn(vec![], vec![event]).await?;
                    appliance = self
                        .update_vtep(&appliance.id, None, Some((v, why)))
                        .await?;
                }
            }
        }
        let status = Status {
            last_seen: now(),
            interval_seconds: appliance.desired.heartbeat_interval_seconds,
            applied_generation: hb.applied_generation,
            online: true,
            status: hb.status,
        };
        let mut ops = vec![Op::put(&status_key, encode(&status))];
        match &previous {
            None => ops.push(self.event_op(&appliance, "online", "first heartbeat".into())),
            Some((_, p)) if !p.online => ops.push(self.event_op(
                &appliance,
                "online",
                format!(
                    "heartbeat after {}s of silence",
                    (status.last_seen - p.last_seen).whole_seconds()
                ),
            )),
            Some(_) => {}
        }
        // A status alone is rewritten by the next heartbeat: it need not wait for an fsync.
        // A transition event must be durable.
        if ops.len() == 1 {
            self.store.txn_relaxed(vec![], ops).await?;
        } else {
            self.store.txn(vec![], ops).await?;
        }
        // The record's version is known only when this heartbeat did not change it.
        if let Some(cert) = peer.filter(|_| !changed) {
            self.served.put(
                appliance.id.clone(),
                Known {
                    version,
                    appliance: appliance.clone(),
                    cert_sha256: cert.sha256.clone(),
                    written: status.last_seen,
                },
            );
        }
        Ok(HeartbeatResponse {
            desired: appliance.desired,
        })
    }

    /// Why `vtep` cannot be `a`'s VTEP address: it must be a unicast address peers can
    /// reach (not loopback, multicast, unspecified, broadcast or link-local) that no other
    /// member of its VPCs has.
    async fn vtep_problem(&self, a: &Appliance, vtep: &str) -> Result<Option<String>, FleetError> {
        use std::net::IpAddr;
        let Ok(ip) = vtep.parse::<IpAddr>() else {
            return Ok(Some("not an IP address".into()));
        };
        let kind = match ip {
            _ if ip.is_unspecified() => Some("unspecified"),
            _ if ip.is_loopback() => Some("loopback"),
            _ if ip.is_multicast() => Some("multicast"),
            IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast"),
            IpAddr::V4(v4) if v4.is_link_local() => Some("link-local"),
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("link-local"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Ok(Some(format!(
                "a {kind} address, not a unicast one peers reach"
            )));
        }
        for name in &a.vpcs {
            if let Some((_, vpc)) = self.get::<Vpc>(&format!("{}{name}", keys::VPCS)).await?
                && self.vtep_taken(&vpc, &a.id, vtep).await?
            {
                return Ok(Some(format!(
                    "another member of VPC {name:?} has the same address"
                )));
            }
        }
        Ok(None)
    }

    pub(super) async fn update_vtep(
        &self,
        id: &ApplianceId,
        vtep: Option<String>,
        refused: Option<(String, String)>,
    ) -> Result<Appliance, FleetError> {
        let key = format!("{}{id}", keys::APPLIANCES);
        let key = key.as_str();
        let (vtep, refused) = (&vtep, &refused);
        let a = self
            .cas(key, move || async move {
                let (version, mut a): (_, Appliance) =
                    self.get(key).await?.ok_or_else(|| FleetError::NotFound {
                        code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                        message: format!("appliance {id} is not registered"),
                    })?;
                a.vtep_address = vtep.clone();
                a.vtep_refused = refused.clone();
                Ok(Attempt::Write {
                    checks: vec![Check::version(key, version)],
                    ops: vec![Op::put(key, encode(&a))],
                    then: a,
                })
            })
            .await?;
        // Its own overlay and every peer's name this address.
        let mut affected = vec![id.clone()];
        for vpc in &a.vpcs {
            if let Some((_, v)) = self.get::<Vpc>(&format!("{}{vpc}", keys::VPCS)).await? {
                affected.extend(v.members.into_iter().filter(|m| m != id));
            }
        }
        let mut me = a;
        for member in affected {
            if let Some(updated) = self.refresh_desired(&member).await?
                && &updated.id == id
            {
                me = updated;
            }
        }
        Ok(me)
    }

    // ---- offline detection -----------------------------------------------------------

    /// One pass of the offline detector: marks appliances that missed too many heartbeats.
    /// Run by the leader only; each transition is a compare-and-set, so a heartbeat that
    /// lands meanwhile wins. Returns how many went offline.
    pub async fn sweep_offline(&self) -> Result<usize, FleetError> {
        let at = now();
        let mut marked = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(keys::STATUS, after.as_deref(), PAGE)
                .await?;
            let n = page.len();
            for (key, v) in &page {
                let mut status: Status = decode(key, v)?;
                let allowed = Duration::seconds(
                    i64::from(status.interval_seconds)
                        * i64::from(self.settings.offline_after_missed),
                );
                if !status.online || at - status.last_seen <= allowed {
                    continue;
                }
                let id = key.trim_start_matches(keys::STATUS);
                let Some((_, appliance)) = self
                    .get::<Appliance>(&format!("{}{id}", keys::APPLIANCES))
                    .await?
                else {
                    continue;
                };
                status.online = false;
                let event = self.event_op(
                    &appliance,
                    "offline",
                    format!(
                        "no heartbeat for {}s",
                        (at - status.last_seen).whole_seconds()
                    ),
                );
                if self
                    .store
                    .txn(
                        vec![Check::version(key, v.version)],
                        vec![Op::put(key, encode(&status)), event],
                    )
                    .await?
                {
                    tracing::warn!(appliance = %id, "appliance offline");
                    marked += 1;
                }
            }
            match page.into_iter().last() {
                Some((k, _)) if n == PAGE => after = Some(k),
                _ => return Ok(marked),
            }
        }
    }
}
