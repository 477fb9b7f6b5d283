//! The embedded backend: one redb file under the data directory.
//!
//! Reads open a read transaction directly. Every write goes through one writer thread that
//! drains all queued writes into a single redb transaction and commits it once (group
//! commit): under a heartbeat burst, one fsync covers hundreds of writes, and a caller is
//! answered only after the commit that holds its write is durable. The exception is
//! [`Store::txn_relaxed`] (heartbeat status): a batch of only such writes commits without
//! fsync (`Durability::None`) and the writer makes it durable with the next durable commit,
//! at the latest `FLUSH_AFTER` after the first commit it did not make durable, busy or
//! quiet: a crash loses at most a second of statuses, which the appliances' next
//! heartbeats rewrite. Measured: on a disk shared with builds the fsync
//! was ~96 ms of a 99 ms heartbeat (BENCHMARKS.md).

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use super::{Change, Changes, Check, Op, Store, StoreError, Versioned, prefix_end, watched};

/// Key -> (version u64 little-endian, value).
const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
/// "version" -> last version handed out.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Most writes folded into one commit; bounds the latency one commit adds.
const MAX_BATCH: usize = 4096;

/// How long a non-durable commit may wait for a durable one. Half a second, so that with the
/// durable commit's own fsync a relaxed write is durable within a second.
const FLUSH_AFTER: Duration = Duration::from_millis(500);

/// Changes kept for watches that resume from a version, about 80 bytes each, 5 MiB at
/// most. Values are not kept; a replayed change carries the key's
/// current value.
const HISTORY: usize = 65_536;

/// Commits a live watcher may fall behind by before it is told to list again.
const LIVE_BACKLOG: usize = 1024;

type Reply = oneshot::Sender<Result<bool, StoreError>>;

/// What watches read: the recent history and the live feed of commits. Both are updated
/// under the history lock, and a watch subscribes under it, so it sees each change once.
struct Feed {
    history: std::sync::Mutex<std::collections::VecDeque<Past>>,
    live: tokio::sync::broadcast::Sender<Arc<Vec<Change>>>,
}

/// A change as the history keeps it: without its value.
#[derive(Clone)]
struct Past {
    version: u64,
    key: String,
    deleted: bool,
    created: bool,
}

impl Feed {
    fn publish(&self, changes: Vec<Change>) {
        if changes.is_empty() {
            return;
        }
        let mut history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        for c in &changes {
            if history.len() == HISTORY {
                history.pop_front();
            }
            history.push_back(Past {
                version: c.version,
                key: c.key.clone(),
                deleted: c.value.is_none(),
                created: c.created,
            });
        }
        // No receiver is fine: nobody watches.
        let _ = self.live.send(Arc::new(changes));
    }
}

struct Write {
    checks: Vec<Check>,
    ops: Vec<Op>,
    durable: bool,
    reply: Reply,
}

/// The embedded store. Cloning shares the database and its writer thread.
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    writes: mpsc::Sender<Write>,
    feed: Arc<Feed>,
    /// The version the store was at when opened: history before it is not kept.
    opened_at: u64,
}

fn err<E: std::error::Error + Send + Sync + 'static>(
    op: &'static str,
) -> impl FnOnce(E) -> StoreError {
    move |e| StoreError::Embedded {
        op,
        source: Box::new(e),
    }
}

fn decode(raw: &[u8]) -> Versioned {
    let (version, value) = raw.split_at(8.min(raw.len()));
    let mut v = [0u8; 8];
    v[..version.len()].copy_from_slice(version);
    Versioned {
        version: u64::from_le_bytes(v),
        value: value.to_vec(),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store file and starts its writer thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // The store holds token hashes and bootstrap tokens: owner-only, also when an
        // existing file was wider (redb itself creates files with the umask's mode).
        crate::pki::open_secret(path, true).map_err(err("securing the store file"))?;
        let db = Database::create(path).map_err(err("opening the store file"))?;
        {
            let txn = db.begin_write().map_err(err("starting a write"))?;
            txn.open_table(DATA).map_err(err("creating tables"))?;
            txn.open_table(META).map_err(err("creating tables"))?;
            txn.commit().map_err(err("committing"))?;
        }
        let db = Arc::new(db);
        let opened_at = current_version(&db)?;
        let feed = Arc::new(Feed {
            history: Default::default(),
            live: tokio::sync::broadcast::channel(LIVE_BACKLOG).0,
        });
        let (tx, rx) = mpsc::channel::<Write>();
        let writer_db = db.clone();
        let writer_feed = feed.clone();
        std::thread::Builder::new()
            .name("hub-store-writer".into())
            .spawn(move || writer(&writer_db, &rx, &writer_feed))
            .map_err(err("starting the writer thread"))?;
        Ok(Self {
            db,
            writes: tx,
            feed,
            opened_at,
        })
    }
}

/// The writer thread: one batch per commit until every sender is gone.
fn writer(db: &Database, rx: &mpsc::Receiver<Write>, feed: &Feed) {
    // When the oldest non-durable commit not yet covered by a durable one was made: it must
    // become durable by `FLUSH_AFTER` later, however busy the store is.
    let mut dirty_since: Option<Instant> = None;
    loop {
        let next = match dirty_since {
            Some(since) => {
                rx.recv_timeout((since + FLUSH_AFTER).saturating_duration_since(Instant::now()))
            }
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        let first = match next {
            Ok(w) => w,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if commit_batch(db, &[], true).is_ok() {
                    dirty_since = None;
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if dirty_since.is_some() {
                    let _ = commit_batch(db, &[], true);
                }
                return;
            }
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        // Under steady relaxed load the channel is never quiet: the flush deadline makes
        // this batch's commit the durable one.
        let durable = batch.iter().any(|w| w.durable)
            || dirty_since.is_some_and(|since| since.elapsed() >= FLUSH_AFTER);
        match commit_batch(db, &batch, durable) {
            Ok((outcomes, changes)) => {
                feed.publish(changes);
                if durable {
                    dirty_since = None;
                } else {
                    dirty_since.get_or_insert_with(Instant::now);
                }
                for (w, ok) in batch.into_iter().zip(outcomes) {
                    let _ = w.reply.send(Ok(ok));
                }
            }
            Err(e) => {
                let message = e.to_string();
                tracing::error!(error = %message, "embedded store commit failed");
                for w in batch {
                    let _ = w.reply.send(Err(StoreError::Embedded {
                        op: "committing",
                        source: message.clone().into(),
                    }));
                }
            }
        }
    }
}

/// Commits a batch: whether each write's checks held, and the changes made.
fn commit_batch(
    db: &Database,
    batch: &[Write],
    durable: bool,
) -> Result<(Vec<bool>, Vec<Change>), redb::Error> {
    let mut txn = db.begin_write()?;
    if !durable {
        txn.set_durability(redb::Durability::None)?;
    }
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut changes = Vec::new();
    {
        let mut data = txn.open_table(DATA)?;
        let mut meta = txn.open_table(META)?;
        let mut version = meta.get("version")?.map(|g| g.value()).unwrap_or(0);
        for w in batch {
            let mut holds = true;
            for check in &w.checks {
                let current = data
                    .get(check.key.as_bytes())?
                    .map(|g| decode(g.value()).version)
                    .unwrap_or(0);
                if current != check.version {
                    holds = false;
                    break;
                }
            }
            if holds {
                for op in &w.ops {
                    version += 1;
                    match op {
                        Op::Put { key, value } => {
                            let mut raw = Vec::with_capacity(8 + value.len());
                            raw.extend_from_slice(&version.to_le_bytes());
                            raw.extend_from_slice(value);
                            let created = data.insert(key.as_bytes(), raw.as_slice())?.is_none();
                            changes.push(Change {
                                key: key.clone(),
                                version,
                                value: Some(value.clone()),
                                created,
                                previous: None,
                            });
                        }
                        Op::Delete { key } => {
                            if let Some(old) = data.remove(key.as_bytes())? {
                                changes.push(Change {
                                    key: key.clone(),
                                    version,
                                    value: None,
                                    created: false,
                                    previous: Some(decode(old.value()).value),
                                });
                            }
                        }
                    }
                }
            }
            outcomes.push(holds);
        }
        meta.insert("version", version)?;
    }
    txn.commit()?;
    Ok((outcomes, changes))
}

fn current_version(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_read().map_err(err("starting a read"))?;
    let meta = txn.open_table(META).map_err(err("opening the table"))?;
    Ok(meta
        .get("version")
        .map_err(err("reading the version"))?
        .map_or(0, |g| g.value()))
}

impl EmbeddedStore {
    async fn submit(
        &self,
        checks: Vec<Check>,
        ops: Vec<Op>,
        durable: bool,
    ) -> Result<bool, StoreError> {
        super::within_txn_limit(&checks, &ops)?;
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(Write {
                checks,
                ops,
                durable,
                reply,
            })
            .map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let txn = self.db.begin_read().map_err(err("starting a read"))?;
        let table = txn.open_table(DATA).map_err(err("opening the table"))?;
        let value = table
            .get(key.as_bytes())
            .map_err(err("reading a key"))?
            .map(|g| decode(g.value()));
        Ok(value)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let txn = self.db.begin_read().map_err(err("starting a read"))?;
        let table = txn.open_table(DATA).map_err(err("opening the table"))?;
        let end = prefix_end(prefix);
        let start: Vec<u8> = match start_after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                let mut s = after.as_bytes().to_vec();
                s.push(0);
                s
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        let range = table
            .range::<&[u8]>(start.as_slice()..end.as_slice())
            .map_err(err("listing keys"))?;
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(err("listing keys"))?;
            out.push((
                String::from_utf8_lossy(k.value()).into_owned(),
                decode(v.value()),
            ));
        }
        Ok(out)
    }

    async fn txn(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.submit(checks, ops, true).await
    }

    async fn txn_relaxed(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.submit(checks, ops, false).await
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        current_version(&self.db)
    }

    async fn watch(&self, prefixes: &[&str], after: u64) -> Result<Changes, StoreError> {
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        let (replay, mut live) = {
            let history = self.feed.history.lock().unwrap_or_else(|e| e.into_inner());
            let current = current_version(&self.db)?;
            if after > current {
                return Err(StoreError::Future { after, current });
            }
            // Kept: every change after the oldest one in the history, or after the opening
            // when the history has not filled up yet.
            let kept_after = match history.front() {
                Some(oldest) if history.len() == HISTORY => oldest.version - 1,
                _ => self.opened_at,
            };
            if after < kept_after {
                return Err(StoreError::TooOld { after });
            }
            let replay: Vec<Past> = history
                .iter()
                .filter(|p| p.version > after && watched(&prefixes, &p.key))
                .cloned()
                .collect();
            (replay, self.feed.live.subscribe())
        };
        let (tx, rx) = tokio::sync::mpsc::channel(LIVE_BACKLOG);
        let store = self.clone();
        tokio::spawn(async move {
            let mut last = after;
            for past in replay {
                // The current value stands for the one written then: a later write of the
                // key replays after this one, so a watcher ends on the latest state.
                let value = if past.deleted {
                    None
                } else {
                    match store.get(&past.key).await {
                        Ok(Some(v)) => Some(v.value),
                        Ok(None) => continue,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    }
                };
                let change = Change {
                    key: past.key,
                    version: past.version,
                    value,
                    created: past.created,
                    previous: None,
                };
                if tx.send(Ok(change)).await.is_err() {
                    return;
                }
                last = past.version;
            }
            loop {
                let batch = tokio::select! {
                    batch = live.recv() => batch,
                    () = tx.closed() => return,
                };
                let batch = match batch {
                    Ok(batch) => batch,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let _ = tx.send(Err(StoreError::TooOld { after: last })).await;
                        return;
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                for c in batch.iter() {
                    if c.version <= last || !watched(&prefixes, &c.key) {
                        continue;
                    }
                    if tx.send(Ok(c.clone())).await.is_err() {
                        return;
                    }
                    last = c.version;
                }
            }
        });
        Ok(rx)
    }

    async fn lead(&self) -> Result<Option<super::Fence>, StoreError> {
        // redb locks its file: only this process can have it open, so it always leads, and
        // its leader jobs need no fence (no other process can write meanwhile).
        Ok(Some(super::Fence::sole()))
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(&dir.path().join("hub.redb")).unwrap();
        super::super::suite::run(Arc::new(store)).await;
    }

    /// Changes from before the store was opened are not kept: a watch from then is told to
    /// read the current state again, not given a partial history.
    #[tokio::test]
    async fn a_watch_from_before_the_opening_is_too_old() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        let before = {
            let store = EmbeddedStore::open(&path).unwrap();
            assert!(
                store
                    .txn(vec![], vec![Op::put("k", vec![1])])
                    .await
                    .unwrap()
            );
            store.revision().await.unwrap()
        };
        let store = cairn_test_support::poll("store reopens", crate::testutil::LIMIT, || {
            EmbeddedStore::open(&path).ok()
        });
        let old = store.watch(&["k"], before - 1).await;
        assert!(
            matches!(old, Err(StoreError::TooOld { after }) if after == before - 1),
            "{:?}",
            old.map(drop)
        );
        let mut now = store.watch(&["k"], before).await.unwrap();
        assert!(
            store
                .txn(vec![], vec![Op::put("k", vec![2])])
                .await
                .unwrap()
        );
        let change = super::super::suite::next_change(&mut now).await;
        assert_eq!(change.value, Some(vec![2]));
    }

    #[tokio::test]
    async fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.redb");
        {
            let store = EmbeddedStore::open(&path).unwrap();
            assert!(
                store
                    .txn(vec![], vec![Op::put("a", b"1".to_vec())])
                    .await
                    .unwrap()
            );
            // A relaxed write is made durable when the store closes (or after a second).
            assert!(
                store
                    .txn_relaxed(vec![], vec![Op::put("b", b"2".to_vec())])
                    .await
                    .unwrap()
            );
        }
        // The writer thread holds the database until its channel closes; wait for the lock.
        let store = cairn_test_support::poll("store reopens", crate::testutil::LIMIT, || {
            EmbeddedStore::open(&path).ok()
        });
        assert_eq!(store.get("a").await.unwrap().unwrap().value, b"1");
        assert_eq!(store.get("b").await.unwrap().unwrap().value, b"2");
    }
}
