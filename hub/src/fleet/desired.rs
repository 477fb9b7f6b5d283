//! The desired state each appliance is owed, and the reconciler that keeps it so.
//!
//! Part of an appliance's desired state is derived from other records: its VPC overlays
//! from the VPCs it is a member of and the VTEP addresses its peers report, its join bundle
//! from the control plane it joined. The primary change (a membership, a VTEP, a join) and
//! the rewrite of every dependent desired state are separate transactions, one per
//! appliance: a VPC's members are many records, more than one transaction may hold, and on
//! several hubs they are written concurrently. A crash between the two leaves stale
//! overlays. So the derivation is one pure function, [`derive_desired`], used both right
//! after each change ([`Fleet::refresh_desired`]) and by the reconciler
//! ([`Fleet::reconcile`]), a leader job that recomputes every appliance's desired state
//! from the primary records at the hub's start and periodically, and rewrites (with the
//! next generation, so the node applies it) only those that differ.

use cairn_api::RenderedConfig;

use super::*;

/// What one reconcile pass found stale and rewrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The appliance whose desired state was rewritten.
    pub appliance: ApplianceId,
    /// The parts that were stale (`overlay`, `join`).
    pub parts: Vec<&'static str>,
    /// The generation written.
    pub generation: u64,
}

/// What an appliance's fleet configuration derives from: the configuration layers, the
/// appliance's tenant, and the heartbeat interval when no layer sets one.
pub(crate) struct ConfigInputs<'a> {
    /// Every configuration layer.
    pub layers: &'a [crate::model::ConfigLayer],
    /// The appliance's tenant.
    pub tenant: &'a str,
    /// The hub's default heartbeat interval.
    pub default_interval: u32,
}

/// The desired state `a` is owed, given the VPCs it names (`vpcs`, by name; those absent
/// are skipped), the VTEP address of every appliance that has one (`vteps`) and its
/// configuration layers: its stored desired state with the overlay, the join bundle and the
/// rendered configuration derived afresh, and the next generation when that changed
/// anything. The rendered configuration keeps its own generation while it stays the same.
pub(crate) fn derive_desired(
    a: &Appliance,
    vpcs: &BTreeMap<String, Vpc>,
    vteps: &BTreeMap<ApplianceId, String>,
    config: &ConfigInputs<'_>,
) -> DesiredState {
    let mut next = a.desired.clone();
    next.overlay = overlay(a, vpcs, vteps);
    next.join = a.join.clone();
    let stored = a.desired.config.as_ref();
    next.config = super::config::render(config.layers, a, config.tenant).map(|mut r| {
        let same = stored.is_some_and(|s| {
            RenderedConfig {
                generation: 0,
                ..s.clone()
            } == r
        });
        r.generation = stored.map_or(0, |s| s.generation) + u64::from(!same);
        r
    });
    // A layer's interval wins; once no layer sets one, the hub's default again.
    let set = |c: Option<&RenderedConfig>| c.and_then(|c| c.settings.heartbeat_interval_seconds);
    if let Some(s) = set(next.config.as_ref()) {
        next.heartbeat_interval_seconds = s;
    } else if set(stored).is_some() {
        next.heartbeat_interval_seconds = config.default_interval;
    }
    if next != a.desired {
        next.generation = a.desired.generation + 1;
    }
    next
}

/// `a`'s overlays: one per VPC it is a member of, each listing the other members' VTEPs.
fn overlay(
    a: &Appliance,
    vpcs: &BTreeMap<String, Vpc>,
    vteps: &BTreeMap<ApplianceId, String>,
) -> Option<OverlayDocument> {
    if a.vpcs.is_empty() {
        return None;
    }
    let vpcs = a
        .vpcs
        .iter()
        .filter_map(|name| vpcs.get(name))
        .map(|vpc| {
            let peers: BTreeSet<String> = vpc
                .members
                .iter()
                .filter(|m| *m != &a.id)
                .filter_map(|m| vteps.get(m).cloned())
                .collect();
            crate::vpc::membership(vpc, peers.into_iter().collect())
        })
        .collect();
    Some(OverlayDocument {
        local_vtep: a.vtep_address.clone().unwrap_or_default(),
        vpcs,
    })
}

/// The derived parts (`overlay`, `join`) that differ between two desired states.
fn stale_parts(stored: &DesiredState, owed: &DesiredState) -> Vec<&'static str> {
    let mut parts = Vec::new();
    if stored.overlay != owed.overlay {
        parts.push("overlay");
    }
    if stored.join != owed.join {
        parts.push("join");
    }
    if stored.config != owed.config {
        parts.push("config");
    }
    parts
}

impl Fleet {
    /// Recomputes an appliance's desired state from the records it depends on and stores it
    /// with the next generation when it changed. Returns the appliance as stored.
    pub async fn refresh_desired(&self, id: &ApplianceId) -> Result<Option<Appliance>, FleetError> {
        Ok(self.rewrite_desired(id, false).await?.0)
    }

    /// [`Fleet::refresh_desired`]; with `repair`, a rewrite is a repair of the reconciler
    /// and records an event in the same transaction. Also answers the parts rewritten.
    async fn rewrite_desired(
        &self,
        id: &ApplianceId,
        repair: bool,
    ) -> Result<(Option<Appliance>, Vec<&'static str>), FleetError> {
        let key = format!("{}{id}", keys::APPLIANCES);
        let key = key.as_str();
        self.cas(key, move || async move {
            let Some((version, mut a)) = self.get::<Appliance>(key).await? else {
                return Ok(Attempt::Done((None, Vec::new())));
            };
            let (vpcs, vteps) = self.overlay_inputs(&a).await?;
            let layers = self.config_layers().await?;
            let tenant = self.tenant_of(&a.site).await?;
            let inputs = ConfigInputs {
                layers: &layers,
                tenant: &tenant,
                default_interval: self.settings.heartbeat_interval_seconds,
            };
            let owed = derive_desired(&a, &vpcs, &vteps, &inputs);
            let parts = stale_parts(&a.desired, &owed);
            if parts.is_empty() {
                return Ok(Attempt::Done((Some(a), parts)));
            }
            a.desired = owed;
            let mut ops = vec![Op::put(key, encode(&a))];
            if repair {
                ops.push(self.event_op(
                    &a,
                    "desired-state-repaired",
                    format!(
                        "reconciler rewrote the stale {} (generation {})",
                        parts.join(" and "),
                        a.desired.generation
                    ),
                ));
            }
            Ok(Attempt::Write {
                checks: vec![Check::version(key, version)],
                ops,
                then: (Some(a), parts),
            })
        })
        .await
    }

    /// The records `a`'s overlay derives from: its VPCs, and their members' VTEPs.
    async fn overlay_inputs(
        &self,
        a: &Appliance,
    ) -> Result<(BTreeMap<String, Vpc>, BTreeMap<ApplianceId, String>), FleetError> {
        let mut vpcs = BTreeMap::new();
        let mut vteps = BTreeMap::new();
        for name in &a.vpcs {
            let Some((_, vpc)) = self.get::<Vpc>(&format!("{}{name}", keys::VPCS)).await? else {
                continue;
            };
            for m in vpc.members.iter().filter(|m| *m != &a.id) {
                if vteps.contains_key(m) {
                    continue;
                }
                if let Some((_, p)) = self
                    .get::<Appliance>(&format!("{}{m}", keys::APPLIANCES))
                    .await?
                    && let Some(vtep) = p.vtep_address
                {
                    vteps.insert(m.clone(), vtep);
                }
            }
            vpcs.insert(name.clone(), vpc);
        }
        Ok((vpcs, vteps))
    }

    /// One reconciler pass (leader only): derives every appliance's desired state from the
    /// primary records and rewrites those that differ, each with the next generation and a
    /// `desired-state-repaired` event. A consistent store is only read. Answers what it
    /// repaired.
    ///
    /// The listing finds candidates; each is re-derived from fresh reads and written with a
    /// compare-and-set, so a change landing during the pass is never overwritten with what
    /// the listing saw.
    pub async fn reconcile(&self) -> Result<Vec<Repair>, FleetError> {
        let vpcs: BTreeMap<String, Vpc> = self
            .list::<Vpc>(keys::VPCS)
            .await?
            .into_iter()
            .map(|(_, v)| (v.name.clone(), v))
            .collect();
        let appliances = self.list::<Appliance>(keys::APPLIANCES).await?;
        let vteps: BTreeMap<ApplianceId, String> = appliances
            .iter()
            .filter_map(|(_, a)| Some((a.id.clone(), a.vtep_address.clone()?)))
            .collect();
        let layers = self.config_layers().await?;
        let site_tenants = self.site_tenants().await?;
        let mut repairs = Vec::new();
        for (_, a) in &appliances {
            let inputs = ConfigInputs {
                layers: &layers,
                tenant: tenant_in(&site_tenants, &a.site),
                default_interval: self.settings.heartbeat_interval_seconds,
            };
            if derive_desired(a, &vpcs, &vteps, &inputs) == a.desired {
                continue;
            }
            let (Some(fixed), parts) = self.rewrite_desired(&a.id, true).await? else {
                continue;
            };
            if parts.is_empty() {
                continue;
            }
            tracing::warn!(
                appliance = %fixed.id,
                parts = %parts.join(","),
                generation = fixed.desired.generation,
                "reconciler repaired a stale desired state"
            );
            repairs.push(Repair {
                appliance: fixed.id,
                parts,
                generation: fixed.desired.generation,
            });
        }
        Ok(repairs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::JoinBundle;
    use serde_json::json;

    use crate::model::ConfigLayer;

    /// No configuration layer.
    const NONE: ConfigInputs<'static> = ConfigInputs {
        layers: &[],
        tenant: DEFAULT_TENANT,
        default_interval: 30,
    };

    fn layer(name: &str, selector: Option<&str>, value: serde_json::Value) -> ConfigLayer {
        ConfigLayer {
            layer: name.into(),
            tenant: DEFAULT_TENANT.into(),
            selector: selector.map(str::to_owned),
            generation: 1,
            author: "operator:t".into(),
            at: time::OffsetDateTime::UNIX_EPOCH,
            document: String::new(),
            file: String::new(),
            value,
        }
    }

    /// Layers merge tenant, site, groups by name, appliance, whatever order they are
    /// stored in; groups apply by selector; the rendered config keeps its generation while
    /// it stays the same; the heartbeat interval follows the layers and returns to the
    /// default once none sets it.
    #[test]
    fn layers_render_in_order_with_their_own_generation() {
        let mut a = appliance("a", None, &[]);
        a.labels.insert("role".into(), "gpu".into());
        let layers = vec![
            layer("appliance:a", None, json!({"settings": {"ntp": ["ntp.a"]}})),
            layer(
                "group:gpu",
                Some("role=gpu"),
                json!({"settings": {"dns": ["192.0.2.3"], "ntp": ["ntp.gpu"]}}),
            ),
            layer(
                "group:cpu",
                Some("role=cpu"),
                json!({"settings": {"dns": ["192.0.2.9"]}}),
            ),
            layer(
                "site:s",
                None,
                json!({"settings": {"dns": ["192.0.2.2"], "heartbeat_interval_seconds": 5}}),
            ),
            layer(
                "tenant:default",
                None,
                json!({"settings": {"dns": ["192.0.2.1"], "drain_command": ["true"]}}),
            ),
            layer(
                "site:other",
                None,
                json!({"settings": {"dns": ["192.0.2.8"]}}),
            ),
        ];
        let inputs = ConfigInputs {
            layers: &layers,
            ..NONE
        };
        let owed = derive_desired(&a, &BTreeMap::new(), &BTreeMap::new(), &inputs);
        let config = owed.config.clone().unwrap();
        assert_eq!(
            config.layers,
            [
                "tenant:default@1",
                "site:s@1",
                "group:gpu@1",
                "appliance:a@1"
            ]
        );
        assert_eq!(config.settings.dns.unwrap(), ["192.0.2.3"]);
        assert_eq!(config.settings.ntp.unwrap(), ["ntp.a"]);
        assert_eq!(config.settings.drain_command.unwrap(), ["true"]);
        assert_eq!(config.generation, 1);
        assert_eq!(owed.heartbeat_interval_seconds, 5);
        assert_eq!(owed.generation, 2);

        a.desired = owed.clone();
        assert_eq!(
            derive_desired(&a, &BTreeMap::new(), &BTreeMap::new(), &inputs),
            owed,
            "the same layers: nothing owed"
        );
        let gone = derive_desired(&a, &BTreeMap::new(), &BTreeMap::new(), &NONE);
        assert_eq!(gone.config, None);
        assert_eq!(gone.heartbeat_interval_seconds, 30, "back to the default");
        assert_eq!(stale_parts(&a.desired, &gone), ["config"]);
    }

    fn appliance(id: &str, vtep: Option<&str>, vpcs: &[&str]) -> Appliance {
        serde_json::from_value(serde_json::json!({
            "id": id, "site": "s", "hostname": id, "labels": {},
            "inventory": {"serial": id, "nics": []}, "agent_version": "0",
            "cert_sha256": "", "previous_cert_sha256": null,
            "cert_not_after": "2030-01-01T00:00:00Z", "registered_at": "2030-01-01T00:00:00Z",
            "rekeys": 0, "vtep_address": vtep, "vpcs": vpcs, "control_plane": null,
            "join": null, "desired": {"generation": 1}
        }))
        .unwrap()
    }

    fn vpc(name: &str, vni: u32, members: &[&str]) -> (String, Vpc) {
        let vpc = Vpc {
            name: name.into(),
            subnet: "10.1.0.0/24".into(),
            vni,
            members: members
                .iter()
                .map(|m| ApplianceId::new(*m).unwrap())
                .collect(),
            tenant: DEFAULT_TENANT.into(),
        };
        (name.into(), vpc)
    }

    fn vteps(pairs: &[(&str, &str)]) -> BTreeMap<ApplianceId, String> {
        pairs
            .iter()
            .map(|(id, v)| (ApplianceId::new(*id).unwrap(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn the_overlay_lists_the_other_members_vteps() {
        let a = appliance("a", Some("192.0.2.1"), &["blue", "gone"]);
        let vpcs = BTreeMap::from([vpc("blue", 4096, &["a", "b", "c", "d"])]);
        // `c` reports no VTEP, `d` the same as `b`: one tunnel each distinct address.
        let owed = derive_desired(
            &a,
            &vpcs,
            &vteps(&[("a", "192.0.2.1"), ("b", "192.0.2.2"), ("d", "192.0.2.2")]),
            &NONE,
        );
        assert_eq!(owed.generation, 2, "a change takes the next generation");
        let overlay = owed.overlay.unwrap();
        assert_eq!(overlay.local_vtep, "192.0.2.1");
        assert_eq!(overlay.vpcs.len(), 1, "a VPC without a record is skipped");
        assert_eq!(overlay.vpcs[0].vni, 4096);
        assert_eq!(overlay.vpcs[0].peer_vteps, ["192.0.2.2"]);
    }

    #[test]
    fn consistent_state_derives_to_itself() {
        let mut a = appliance("a", None, &[]);
        let none = derive_desired(&a, &BTreeMap::new(), &BTreeMap::new(), &NONE);
        assert_eq!(none, a.desired, "no VPCs, no join: nothing owed");

        a.join = Some(JoinBundle {
            control_plane: "cp".into(),
            api_server_url: "https://cp".into(),
            ca_bundle_pem: String::new(),
            bootstrap_token: "abcdef.0123456789abcdef".into(),
            revision: 1,
        });
        let joined = derive_desired(&a, &BTreeMap::new(), &BTreeMap::new(), &NONE);
        assert_eq!(joined.join, a.join);
        assert_eq!(stale_parts(&a.desired, &joined), ["join"]);
        a.desired = joined.clone();
        assert_eq!(
            derive_desired(&a, &BTreeMap::new(), &BTreeMap::new(), &NONE),
            joined,
            "derived again: the same, same generation"
        );
    }

    #[test]
    fn stale_parts_name_what_differs() {
        let a = appliance("a", Some("192.0.2.1"), &["blue"]);
        let vpcs = BTreeMap::from([vpc("blue", 4096, &["a", "b"])]);
        let owed = derive_desired(&a, &vpcs, &vteps(&[("b", "192.0.2.2")]), &NONE);
        assert_eq!(stale_parts(&a.desired, &owed), ["overlay"]);
        assert!(stale_parts(&owed, &owed).is_empty());
    }
}
