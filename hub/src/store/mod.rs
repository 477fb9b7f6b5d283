//! The hub's state, behind one small trait with two backends.
//!
//! The trait is a versioned key-value store with multi-key compare-and-set transactions, the
//! common ground of etcd and an embedded B-tree: every hub feature (tokens, appliances, VPCs,
//! audit) is written once on top of it in [`crate::fleet`], and both backends pass the same
//! suite (the `suite` module, run by each backend's tests).
//!
//! - [`embedded::EmbeddedStore`] (default): one redb file. redb was chosen over fjall and sled
//!   (measured in the project's CRATES.md): it is durable at every commit, ACID, and stable;
//!   fjall is faster but durable only at an explicit `persist()`, and both sled versions are
//!   beta (the alpha managed 1–1.7k durable writes/s). redb's weak spot, one fsync per commit,
//!   is hidden by group commit: one writer thread drains every queued write into a single
//!   transaction, so a burst of heartbeats costs one fsync.
//! - [`etcd::EtcdStore`]: several hub processes share one etcd cluster; singleton jobs run
//!   in the process holding an etcd lease ([`Store::lead`]).

pub mod embedded;
pub mod etcd;

#[cfg(test)]
pub(crate) mod suite;

use async_trait::async_trait;

/// Most checks, and most ops, one transaction may hold: etcd's default `--max-txn-ops`.
/// Both backends refuse more ([`StoreError::TxnTooLarge`]), so work that touches many
/// records is split into transactions of at most this size on either backend.
pub const MAX_TXN_OPS: usize = 128;

/// Refuses a transaction over [`MAX_TXN_OPS`].
fn within_txn_limit(checks: &[Check], ops: &[Op]) -> Result<(), StoreError> {
    if checks.len() > MAX_TXN_OPS || ops.len() > MAX_TXN_OPS {
        return Err(StoreError::TxnTooLarge {
            checks: checks.len(),
            ops: ops.len(),
        });
    }
    Ok(())
}

/// A value with the version it was written at. Versions grow with every write in the store
/// (the etcd revision, or the embedded store's commit counter); `0` means absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    /// Version of the last write to this key.
    pub version: u64,
    /// The bytes stored.
    pub value: Vec<u8>,
}

/// One write of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Set a key.
    Put {
        /// Key.
        key: String,
        /// Value.
        value: Vec<u8>,
    },
    /// Remove a key (absent is fine).
    Delete {
        /// Key.
        key: String,
    },
}

impl Op {
    /// A put.
    pub fn put(key: impl Into<String>, value: Vec<u8>) -> Self {
        Op::Put {
            key: key.into(),
            value,
        }
    }
    /// A delete.
    pub fn delete(key: impl Into<String>) -> Self {
        Op::Delete { key: key.into() }
    }
}

/// A precondition of a transaction: the key's current version must be `version` (`0`: the
/// key must be absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Key.
    pub key: String,
    /// Expected version.
    pub version: u64,
}

impl Check {
    /// The key must be at `version` (`0`: absent).
    pub fn version(key: impl Into<String>, version: u64) -> Self {
        Check {
            key: key.into(),
            version,
        }
    }
}

/// A store failure. The message names the backend operation; the source says why.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The embedded store file failed.
    #[error("embedded store: {op}")]
    Embedded {
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// etcd failed or could not be reached.
    #[error("etcd: {op}")]
    Etcd {
        /// What was being done.
        op: &'static str,
        /// Why it failed.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store is shutting down.
    #[error("store is closed")]
    Closed,
    /// A watch asked for changes after `after`, and the store no longer keeps them all (etcd
    /// compacted its history, the embedded store's window moved on, or the watcher fell
    /// behind): the watcher must read the current state again.
    #[error("changes after version {after} are no longer kept")]
    TooOld {
        /// The version asked for.
        after: u64,
    },
    /// A watch from a version the store has not reached.
    #[error("version {after} is newer than the store's ({current})")]
    Future {
        /// The version asked for.
        after: u64,
        /// The store's version.
        current: u64,
    },
    /// A leader job's write was refused because this process no longer holds the
    /// leadership it started the pass under (its lease expired, e.g. while the process was
    /// paused, and another hub took over). The pass stops; the job campaigns again.
    #[error(
        "this hub lost the leadership during a singleton job's pass: its write was refused, \
         and another hub runs the job now"
    )]
    NotLeader,
    /// A transaction over [`MAX_TXN_OPS`] checks or ops (a bug of the caller).
    #[error("transaction too large: {checks} checks, {ops} ops (at most {MAX_TXN_OPS} each)")]
    TxnTooLarge {
        /// Checks given.
        checks: usize,
        /// Ops given.
        ops: usize,
    },
}

/// One committed write to a watched key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Key.
    pub key: String,
    /// Version of the write.
    pub version: u64,
    /// The value written; `None`: deleted. A watch replaying history may give a value
    /// written later than `version` (never an earlier one).
    pub value: Option<Vec<u8>>,
    /// The write created the key.
    pub created: bool,
    /// For a delete, the value it removed, when the store still had it (a replayed delete
    /// of the embedded store's history does not).
    pub previous: Option<Vec<u8>>,
}

/// The changes a [`Store::watch`] delivers, in version order; an error ends it.
pub type Changes = tokio::sync::mpsc::Receiver<Result<Change, StoreError>>;

/// Whether `key` starts with one of `prefixes`.
fn watched(prefixes: &[String], key: &str) -> bool {
    prefixes.iter().any(|p| key.starts_with(p.as_str()))
}

/// The hub's storage: versioned keys, prefix listing, atomic checked transactions.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;

    /// Keys starting with `prefix`, in key order, after `start_after` when given, at most
    /// `limit`.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError>;

    /// Applies every op atomically when every check holds, and returns `true`; writes nothing
    /// and returns `false` when a check fails. Returns once the write is durable.
    async fn txn(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError>;

    /// Like [`Store::txn`], but may answer before the write is durable; it becomes durable
    /// within about a second (embedded store) or at once (etcd). Only for records the next
    /// heartbeat rewrites anyway (an appliance's latest status): after a crash the store
    /// holds an earlier but consistent state.
    async fn txn_relaxed(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.txn(checks, ops).await
    }

    /// The version of the latest write: a watch from it sees every later change.
    async fn revision(&self) -> Result<u64, StoreError>;

    /// Every change, after version `after`, to keys starting with one of `prefixes`, in
    /// version order, as it commits, until the receiver is dropped. Fails at once with
    /// [`StoreError::TooOld`] when the changes since `after` are no longer kept.
    async fn watch(&self, prefixes: &[&str], after: u64) -> Result<Changes, StoreError>;

    /// Whether this process should run singleton jobs (offline detection, campaigns,
    /// housekeeping, the reconciler) now: `Some` with the [`Fence`] the job's writes must
    /// go through ([`Fenced`]), so that none commits once the leadership is lost. Called
    /// periodically; the leadership holds until the next call (at most the lease TTL).
    async fn lead(&self) -> Result<Option<Fence>, StoreError>;

    /// Backend name for logs and metrics.
    fn backend(&self) -> &'static str;
}

/// What a leader's writes are conditional on: the leader record as it was when this process
/// took (or last confirmed) the leadership. On etcd, the leader key's revision, which changes
/// when the lease lapses (etcd deletes the key) and another hub takes it, as in etcd's own
/// election recipe; on the embedded store, nothing, since one process owns the file: the
/// fence is trivially satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence(Option<Check>);

impl Fence {
    /// No condition: the only process on its store.
    pub fn sole() -> Self {
        Fence(None)
    }

    /// Writes commit only while `key` is still at `version`.
    pub fn on(key: impl Into<String>, version: u64) -> Self {
        Fence(Some(Check::version(key, version)))
    }
}

/// A store seen by one pass of a leader job: every transaction also checks the [`Fence`],
/// and one refused because the fence no longer holds fails with [`StoreError::NotLeader`]
/// rather than reading as an ordinary lost compare-and-set, so the job stops instead of
/// retrying.
pub struct Fenced {
    inner: std::sync::Arc<dyn Store>,
    fence: Fence,
}

impl Fenced {
    /// `inner`, fenced by `fence`.
    pub fn new(inner: std::sync::Arc<dyn Store>, fence: Fence) -> Self {
        Self { inner, fence }
    }

    async fn fenced_txn(
        &self,
        mut checks: Vec<Check>,
        ops: Vec<Op>,
        relaxed: bool,
    ) -> Result<bool, StoreError> {
        crate::failpoint::hit(crate::failpoint::LEADER_COMMIT);
        if let Some(fence) = &self.fence.0 {
            checks.push(fence.clone());
        }
        let done = if relaxed {
            self.inner.txn_relaxed(checks, ops).await?
        } else {
            self.inner.txn(checks, ops).await?
        };
        // A refusal: by the fence, or by one of the caller's own checks?
        let Some(fence) = self.fence.0.as_ref().filter(|_| !done) else {
            return Ok(done);
        };
        let now = self.inner.get(&fence.key).await?.map_or(0, |v| v.version);
        if now != fence.version {
            tracing::warn!(
                fence = fence.version,
                leader_record = now,
                "leadership lost: a singleton job's write was refused"
            );
            return Err(StoreError::NotLeader);
        }
        Ok(false)
    }
}

#[async_trait]
impl Store for Fenced {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.inner.get(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        self.inner.list(prefix, start_after, limit).await
    }
    async fn txn(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.fenced_txn(checks, ops, false).await
    }
    async fn revision(&self) -> Result<u64, StoreError> {
        self.inner.revision().await
    }
    async fn watch(&self, prefixes: &[&str], after: u64) -> Result<Changes, StoreError> {
        self.inner.watch(prefixes, after).await
    }
    async fn txn_relaxed(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        self.fenced_txn(checks, ops, true).await
    }
    async fn lead(&self) -> Result<Option<Fence>, StoreError> {
        self.inner.lead().await
    }
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
}

/// The end of the key range that starts with `prefix` (exclusive), as etcd defines it.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
