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
    /// A transaction over [`MAX_TXN_OPS`] checks or ops (a bug of the caller).
    #[error("transaction too large: {checks} checks, {ops} ops (at most {MAX_TXN_OPS} each)")]
    TxnTooLarge {
        /// Checks given.
        checks: usize,
        /// Ops given.
        ops: usize,
    },
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

    /// Whether this process should run singleton jobs (offline detection) now. Called
    /// periodically; the answer holds until the next call (at most the lease TTL).
    async fn lead(&self) -> Result<bool, StoreError>;

    /// Backend name for logs and metrics.
    fn backend(&self) -> &'static str;
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
