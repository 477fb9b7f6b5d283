//! Fleet events as a list and as a stream, each with its sequence number.
//!
//! An event is written once, under `events/<nanos>-<rand>`, so the store version it was
//! written at never changes: that version is the event's sequence number. It increases in
//! commit order on both backends (the etcd revision, or the embedded store's persistent
//! commit counter), across hub restarts and replicas, with gaps (other writes take versions
//! too). A stream resumes after a sequence number without gaps or duplicates:
//!
//! 1. it reads the store's revision `R`, then sends the kept events with a version in
//!    `(after, R]` from a listing, in version order (every write at or below `R` committed
//!    before the listing read, so the listing holds it unless retention deleted it);
//! 2. it then follows the store's change feed of `events/` from `R`: later versions only.
//!
//! When the feed no longer keeps the changes after the last version handled (the embedded
//! store's window moved on, etcd compacted, or the watcher fell behind), it starts again at
//! step 1 from there, so a slow consumer or a long gap never ends the stream.

use tokio::sync::mpsc;

use super::*;

/// Events a watcher may be behind by before the stream waits for it.
const BACKLOG: usize = 256;

/// Which events a list or a stream holds, besides the caller's scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this appliance's.
    pub appliance: Option<String>,
    /// Only these kinds; empty: every kind.
    pub kinds: Vec<String>,
    /// Only those recorded at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only those with a sequence number above this.
    pub after: Option<u64>,
}

impl EventFilter {
    /// Kinds from a comma-separated list (`online,offline`); blanks ignored.
    pub fn kinds(list: Option<&str>) -> Vec<String> {
        list.unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// Whether `caller` is shown event `e` written at `seq`. The scope rule is the list's:
    /// an event is seen by whoever sees its site.
    pub fn admits(&self, caller: &Caller, seq: u64, e: &Event) -> bool {
        caller.sees(&e.site) && self.matches(seq, e)
    }

    /// Whether event `e` written at `seq` passes the filter, whoever asks.
    pub fn matches(&self, seq: u64, e: &Event) -> bool {
        self.after.is_none_or(|after| seq > after)
            && self.since.is_none_or(|since| e.at >= since)
            && self
                .appliance
                .as_ref()
                .is_none_or(|a| a == e.appliance.as_str())
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == &e.kind))
    }
}

/// One item of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventItem {
    /// An event and its sequence number.
    Event(u64, Event),
    /// Every kept event the stream started with (after `after`, since `since`) was sent;
    /// what follows is live.
    CaughtUp,
}

/// The items of one event stream; an error ends it.
pub type EventFeed = mpsc::Receiver<Result<EventItem, FleetError>>;

impl Fleet {
    /// Events in scope (viewer) that pass `filter`, oldest first, at most `limit`.
    pub async fn list_events(
        &self,
        caller: &Caller,
        filter: &EventFilter,
        limit: usize,
    ) -> Result<Vec<(u64, Event)>, FleetError> {
        caller.operator()?;
        let mut out = Vec::new();
        self.scan_events(filter, |seq, e| {
            if filter.admits(caller, seq, &e) {
                out.push((seq, e));
            }
            out.len() < limit
        })
        .await?;
        Ok(out)
    }

    /// The events at or after `since`, without their sequence numbers: for tests that
    /// only look at what was recorded.
    #[cfg(test)]
    pub(crate) async fn events_since(
        &self,
        caller: &Caller,
        since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Event>, FleetError> {
        let filter = EventFilter {
            since: Some(since),
            ..Default::default()
        };
        let events = self.list_events(caller, &filter, limit).await?;
        Ok(events.into_iter().map(|(_, e)| e).collect())
    }

    /// Calls `each` with every kept event recorded at or after `filter.since`, in key
    /// (time) order, until it answers `false`.
    async fn scan_events(
        &self,
        filter: &EventFilter,
        mut each: impl FnMut(u64, Event) -> bool,
    ) -> Result<(), FleetError> {
        let mut after = filter.since.map(|t| log_start(keys::EVENTS, t));
        loop {
            let page = self
                .store
                .list(keys::EVENTS, after.as_deref(), PAGE)
                .await?;
            let n = page.len();
            for (k, v) in &page {
                if !each(v.version, decode(k, v)?) {
                    return Ok(());
                }
            }
            match page.into_iter().last() {
                Some((k, _)) if n == PAGE => after = Some(k),
                _ => return Ok(()),
            }
        }
    }

    /// The events in scope (viewer) that pass `filter`, as a stream: first those already
    /// kept when `filter` names `after` or `since` (none otherwise), then
    /// [`EventItem::CaughtUp`], then each new one as it commits, until the receiver is
    /// dropped.
    pub async fn watch_events(
        &self,
        caller: &Caller,
        filter: EventFilter,
    ) -> Result<EventFeed, FleetError> {
        caller.operator()?;
        self.event_feed(Some(caller.clone()), filter).await
    }

    /// Every event that passes `filter`, whatever its site, as [`Fleet::watch_events`]
    /// streams them: for the hub's own consumers (the event webhooks).
    pub async fn follow_all_events(&self, filter: EventFilter) -> Result<EventFeed, FleetError> {
        self.event_feed(None, filter).await
    }

    /// The stream of the events `scope` sees (`None`: all) that pass `filter`.
    async fn event_feed(
        &self,
        scope: Option<Caller>,
        filter: EventFilter,
    ) -> Result<EventFeed, FleetError> {
        let now = self.store.revision().await?;
        if let Some(after) = filter.after
            && after > now
        {
            return Err(FleetError::Invalid(format!(
                "after: sequence number {after} is newer than the hub's latest ({now})"
            )));
        }
        let (tx, rx) = mpsc::channel(BACKLOG);
        let fleet = self.clone();
        tokio::spawn(async move {
            if let Err(e) = fleet.follow_events(scope.as_ref(), filter, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        });
        Ok(rx)
    }

    async fn follow_events(
        &self,
        scope: Option<&Caller>,
        mut filter: EventFilter,
        tx: &mpsc::Sender<Result<EventItem, FleetError>>,
    ) -> Result<(), FleetError> {
        let shown = |filter: &EventFilter, seq: u64, e: &Event| match scope {
            Some(caller) => filter.admits(caller, seq, e),
            None => filter.matches(seq, e),
        };
        let mut catch_up = filter.after.is_some() || filter.since.is_some();
        let mut caught_up = false;
        loop {
            // Step 1: what is kept up to `upto`, from a listing.
            let upto = self.store.revision().await?;
            if catch_up {
                let mut kept = Vec::new();
                self.scan_events(&filter, |seq, e| {
                    if seq <= upto && shown(&filter, seq, &e) {
                        kept.push((seq, e));
                    }
                    true
                })
                .await?;
                kept.sort_by_key(|(seq, _)| *seq);
                for (seq, e) in kept {
                    if tx.send(Ok(EventItem::Event(seq, e))).await.is_err() {
                        return Ok(());
                    }
                }
            }
            filter.after = Some(filter.after.map_or(upto, |a| a.max(upto)));
            if !caught_up {
                caught_up = true;
                if tx.send(Ok(EventItem::CaughtUp)).await.is_err() {
                    return Ok(());
                }
            }
            // Step 2: the change feed from `upto`.
            let mut changes = match self.store.watch(&[keys::EVENTS], upto).await {
                Ok(c) => c,
                Err(StoreError::TooOld { .. }) => {
                    catch_up = true;
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            loop {
                let change = tokio::select! {
                    change = changes.recv() => change,
                    () = tx.closed() => return Ok(()),
                };
                let change = match change {
                    None => return Ok(()),
                    Some(Err(StoreError::TooOld { .. })) => {
                        tracing::debug!(
                            after = ?filter.after,
                            "event stream fell behind the store's feed; listing from its last version"
                        );
                        catch_up = true;
                        break;
                    }
                    Some(Err(e)) => return Err(e.into()),
                    Some(Ok(c)) => c,
                };
                // Deletes are retention's: nothing to tell.
                let shown = match &change.value {
                    None => None,
                    Some(raw) => {
                        let e: Event = decode(
                            &change.key,
                            &Versioned {
                                version: change.version,
                                value: raw.clone(),
                            },
                        )?;
                        shown(&filter, change.version, &e).then_some(e)
                    }
                };
                filter.after = Some(change.version);
                if let Some(e) = shown
                    && tx
                        .send(Ok(EventItem::Event(change.version, e)))
                        .await
                        .is_err()
                {
                    return Ok(());
                }
            }
        }
    }
}

/// The store key of the cursor of the webhook at `url`.
fn cursor_key(url: &str) -> String {
    format!(
        "{}{}",
        keys::EVENT_WEBHOOKS,
        &hex::encode(Sha256::digest(url.as_bytes()))[..16]
    )
}

impl Fleet {
    /// The cursor of the webhook at `url` (shown as `origin`); a webhook seen for the first
    /// time starts at the store's revision (events from now on) and is saved so.
    pub async fn webhook_cursor(
        &self,
        url: &str,
        origin: &str,
    ) -> Result<WebhookCursor, FleetError> {
        let key = cursor_key(url);
        loop {
            if let Some((_, found)) = self.get::<WebhookCursor>(&key).await? {
                return Ok(found);
            }
            let start = WebhookCursor {
                url: origin.to_owned(),
                delivered: self.store.revision().await?,
            };
            // Lost to a concurrent first save: read theirs.
            self.store
                .txn(
                    vec![Check::version(&key, 0)],
                    vec![Op::put(&key, encode(&start))],
                )
                .await?;
        }
    }

    /// Records that the webhook at `url` (shown as `origin`) got every event up to `delivered`. Called on the
    /// leader's fenced fleet ([`Fleet::as_leader`]): a hub that lost the leadership meanwhile
    /// writes nothing ([`StoreError::NotLeader`]).
    pub async fn advance_webhook_cursor(
        &self,
        url: &str,
        origin: &str,
        delivered: u64,
    ) -> Result<(), FleetError> {
        let cursor = WebhookCursor {
            url: origin.to_owned(),
            delivered,
        };
        self.store
            .txn(vec![], vec![Op::put(cursor_key(url), encode(&cursor))])
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::embedded::EmbeddedStore;

    /// A stream whose reader stops reading while far more events are written than every
    /// buffer between the store and it holds (the stream's 256, the store watch's 1,024,
    /// the embedded store's live feed of 1,024 commits): the store's feed tells it it fell
    /// behind, and the stream lists what it missed and carries on. Every event arrives
    /// once, in order.
    #[tokio::test]
    async fn a_stream_that_falls_behind_the_feed_lists_what_it_missed_and_carries_on() {
        const N: usize = 4000;
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(EmbeddedStore::open(&dir.path().join("store")).unwrap());
        let ca = crate::pki::init(dir.path(), &["localhost".into()], None).unwrap();
        let fleet = Fleet::new(store.clone(), Arc::new(ca), FleetSettings::default());
        let mut feed = fleet
            .follow_all_events(EventFilter {
                after: Some(store.revision().await.unwrap()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(feed.recv().await.unwrap().unwrap(), EventItem::CaughtUp);
        for i in 0..N {
            let event = Event {
                at: now(),
                appliance: ApplianceId::new("ap-1").unwrap(),
                site: "lab".into(),
                kind: "online".into(),
                message: i.to_string(),
                hub: "test".into(),
            };
            // One commit each, without fsync: the live feed counts commits.
            let put = Op::put(log_key(keys::EVENTS, event.at), encode(&event));
            assert!(store.txn_relaxed(vec![], vec![put]).await.unwrap());
        }
        let mut last = 0;
        for i in 0..N {
            match feed.recv().await.unwrap().unwrap() {
                EventItem::Event(seq, e) => {
                    assert_eq!(e.message, i.to_string(), "event {i} in order, once");
                    assert!(seq > last);
                    last = seq;
                }
                EventItem::CaughtUp => panic!("caught up once only"),
            }
        }
    }
}
