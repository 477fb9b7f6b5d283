//! Watches of appliances: the changes operators would see in their views, as events with
//! the store version they happened at, resumable from a version.
//!
//! A watch follows the store's change feed of appliance records and statuses. What counts as
//! a change is a change of the appliance's view other than what every heartbeat rewrites
//! (its clocks, uptime, load and counters, [`ApplianceView::without_heartbeat_noise`]): a
//! fleet of 100,000 heartbeating appliances sends a watcher the state changes, label edits,
//! upgrades and conditions, not 3,333 events a second. A heartbeat that changes nothing
//! visible costs the watch one status decode and hash, without reading the appliance.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use cairn_api::hub::{WatchEvent, WatchEventType};
use tokio::sync::mpsc;

use super::appliances::ApplianceFilter;
use super::*;

/// Events a watcher may be behind by before the watch waits for it.
const BACKLOG: usize = 256;

/// The events of one watch; an error ends it.
pub type WatchEvents = mpsc::Receiver<Result<WatchEvent, FleetError>>;

/// What a watch remembers of one appliance it has met.
struct Seen {
    /// Hash of the visible part of its latest status.
    status: u64,
    /// Hash of the view last sent; `None` while it does not pass the filter.
    shown: Option<u64>,
}

fn digest<T: Serialize>(value: &T) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_vec(value).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// The hash of what a watcher may see of a status.
fn status_digest(status: Option<&Status>) -> u64 {
    digest(&status.map(|s| crate::views::status(s).without_heartbeat_noise()))
}

/// The event to send when an appliance met before (`seen`) is now `shown` (the hash of its
/// view when it passes the filter); `created`: the change created it. A pure decision, so
/// the table test covers every case.
fn decide(seen: Option<Option<u64>>, shown: Option<u64>, created: bool) -> Option<WatchEventType> {
    match (seen, shown) {
        // First met: it exists already (the watcher listed it) unless this created it.
        (None, Some(_)) if created => Some(WatchEventType::Added),
        (None, Some(_)) => Some(WatchEventType::Modified),
        (None | Some(None), None) => None,
        (Some(None), Some(_)) => Some(WatchEventType::Added),
        (Some(Some(before)), Some(now)) if before == now => None,
        (Some(Some(_)), Some(_)) => Some(WatchEventType::Modified),
        (Some(Some(_)), None) => Some(WatchEventType::Deleted),
    }
}

impl Fleet {
    /// Watches the appliances in scope that pass `filter` (viewer), from after version
    /// `after` (`None`: from now). [`FleetError::TooOld`] when the changes since are no
    /// longer kept.
    pub async fn watch_appliances(
        &self,
        caller: &Caller,
        filter: ApplianceFilter,
        after: Option<u64>,
    ) -> Result<WatchEvents, FleetError> {
        caller.operator()?;
        if let Some(id) = &filter.id {
            // Absent or out of scope: 404, as for reading it.
            self.appliance_in_scope(caller, id).await?;
        }
        let after = match after {
            Some(v) => v,
            None => self.store.revision().await?,
        };
        let changes = self
            .store
            .watch(&[keys::APPLIANCES, keys::STATUS], after)
            .await
            .map_err(watch_error)?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let fleet = self.clone();
        let caller = caller.clone();
        tokio::spawn(async move {
            if let Err(e) = fleet.follow(&caller, &filter, changes, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    /// Turns store changes into watch events until the watcher goes or the feed fails.
    async fn follow(
        &self,
        caller: &Caller,
        filter: &ApplianceFilter,
        mut changes: crate::store::Changes,
        tx: &mpsc::Sender<Result<WatchEvent, FleetError>>,
    ) -> Result<(), FleetError> {
        let mut seen: HashMap<String, Seen> = HashMap::new();
        loop {
            let change = tokio::select! {
                change = changes.recv() => change,
                () = tx.closed() => return Ok(()),
            };
            let Some(change) = change else {
                return Ok(());
            };
            let change = change.map_err(watch_error)?;
            let (id, is_status) = match change.key.strip_prefix(keys::STATUS) {
                Some(id) => (id.to_owned(), true),
                None => (
                    change.key.trim_start_matches(keys::APPLIANCES).to_owned(),
                    false,
                ),
            };
            if filter.id.as_ref().is_some_and(|only| only != &id) {
                continue;
            }
            if !is_status && change.value.is_none() {
                // Deleted: told to those it was shown to, or, met for the first time, to
                // those its last record passed (its status is gone: any state passes).
                let was_shown = match seen.remove(&id) {
                    Some(s) => s.shown.is_some(),
                    None => match &change.previous {
                        Some(raw) => {
                            let a: Appliance = decode_raw(&change.key, raw)?;
                            let any_state = ApplianceFilter {
                                state: None,
                                ..filter.clone()
                            };
                            any_state.admits(caller, &a, None)
                        }
                        None => false,
                    },
                };
                if was_shown && let Ok(id) = ApplianceId::new(id) {
                    let event = WatchEvent {
                        kind: WatchEventType::Deleted,
                        resource_version: change.version,
                        id,
                        object: None,
                    };
                    if tx.send(Ok(event)).await.is_err() {
                        return Ok(());
                    }
                }
                continue;
            }
            // The appliance and its status after the change.
            let (appliance, status) = match &change.value {
                // Deleting an appliance deletes its status in the same write: the
                // appliance's own deletion tells it.
                None => continue,
                Some(raw) if is_status => {
                    let status: Status = decode_raw(&change.key, raw)?;
                    let digest = status_digest(Some(&status));
                    if seen.get(&id).is_some_and(|s| s.status == digest) {
                        continue;
                    }
                    let appliance = self
                        .get::<Appliance>(&format!("{}{id}", keys::APPLIANCES))
                        .await?
                        .map(|(_, a)| a);
                    (appliance, Some(status))
                }
                Some(raw) => {
                    let appliance: Appliance = decode_raw(&change.key, raw)?;
                    let status = self
                        .get::<Status>(&format!("{}{id}", keys::STATUS))
                        .await?
                        .map(|(_, s)| s);
                    (Some(appliance), status)
                }
            };
            let view = appliance
                .as_ref()
                .filter(|a| filter.admits(caller, a, status.as_ref()))
                .map(|a| crate::views::appliance(a, status.as_ref()));
            let shown = view.as_ref().map(|v| digest(&v.without_heartbeat_noise()));
            let before = seen.get(&id).map(|s| s.shown);
            let kind = decide(before, shown, change.created && !is_status);
            if appliance.is_none() {
                seen.remove(&id);
            } else {
                seen.insert(
                    id.clone(),
                    Seen {
                        status: status_digest(status.as_ref()),
                        shown,
                    },
                );
            }
            // Stored keys hold valid IDs: registration checked them.
            let (Some(kind), Ok(id)) = (kind, ApplianceId::new(id)) else {
                continue;
            };
            let event = WatchEvent {
                kind,
                resource_version: change.version,
                id,
                object: view,
            };
            if tx.send(Ok(event)).await.is_err() {
                return Ok(());
            }
        }
    }
}

fn decode_raw<T: DeserializeOwned>(key: &str, raw: &[u8]) -> Result<T, FleetError> {
    decode(
        key,
        &Versioned {
            version: 0,
            value: raw.to_vec(),
        },
    )
}

fn watch_error(e: StoreError) -> FleetError {
    match e {
        StoreError::TooOld { after } => FleetError::TooOld(after),
        StoreError::Future { .. } => FleetError::Invalid(format!("resourceVersion: {e}")),
        e => FleetError::Store(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WatchEventType::*;

    #[test]
    fn events_follow_what_the_watcher_was_shown() {
        // (met before: None = never, Some(None) = met but filtered out, Some(Some(h)) =
        // shown with hash h; shown now; created by this change; event)
        let cases = [
            (None, Some(1), true, Some(Added)),
            (None, Some(1), false, Some(Modified)),
            (None, None, false, None),
            (None, None, true, None),
            (Some(None), None, false, None),
            (Some(None), Some(1), false, Some(Added)),
            (Some(Some(1)), Some(1), false, None),
            (Some(Some(1)), Some(2), false, Some(Modified)),
            (Some(Some(1)), None, false, Some(Deleted)),
        ];
        for (before, now, created, want) in cases {
            assert_eq!(
                decide(before, now, created),
                want,
                "{before:?} -> {now:?}, created {created}"
            );
        }
    }
}
