//! Apply with verification and rollback, and cairn's small on-disk state.
//!
//! Apply = read the kernel, plan, checkpoint what the plan touches, perform the changes,
//! read again and re-plan: a non-empty second plan is a verification failure (an empty first
//! plan needs no second read). Any failure
//! restores the checkpoint by planning towards it (the same planner, so rollback touches only
//! what the apply touched). Because verification requires an empty re-plan, a second apply of
//! the same configuration performs zero writes.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::netlink::{Netlink, NetlinkError};
use crate::plan::{Op, Wanted, observed, plan, wanted};
use crate::schema::{Config, ConfigError};
use crate::state::Kernel;
use crate::state::{NetState, Owned, RuleSpec};

/// Errors of apply and rollback.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The configuration does not fit this machine (a NIC is missing).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The target cannot be realised on this machine (e.g. an overlay's underlay MTU).
    #[error("{0}")]
    Unrealisable(String),
    /// Reading the kernel failed before anything changed.
    #[error("reading kernel state")]
    Read(#[source] NetlinkError),
    /// A change failed; the prior state was restored (or restoring failed too).
    #[error("{op} failed ({restored})")]
    Write {
        /// The failed change.
        op: String,
        /// Whether the rollback succeeded.
        restored: Restored,
        /// The kernel's answer.
        #[source]
        source: NetlinkError,
    },
    /// After applying, the kernel still differs from the configuration.
    #[error("verification failed, still to do: {remaining} ({restored})")]
    Verify {
        /// Changes the re-plan still wants.
        remaining: String,
        /// Whether the rollback succeeded.
        restored: Restored,
    },
    /// The state directory could not be read or written.
    #[error("{what} {}", path.display())]
    Store {
        /// What was attempted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Outcome of a rollback after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restored {
    /// The prior state is back.
    Yes,
    /// Rolling back failed as well.
    No(String),
}

impl std::fmt::Display for Restored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Restored::Yes => write!(f, "previous state restored"),
            Restored::No(e) => write!(f, "ROLLBACK FAILED: {e}"),
        }
    }
}

/// A pending `net try`: the state to go back to and the deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Last-known-good state of everything the try touches.
    pub state: NetState,
    /// Ownership before the try.
    pub owned: Owned,
    /// Unix time (seconds) after which the try is rolled back.
    pub deadline_unix: u64,
    /// The process waiting for confirmation; when it is gone, the try was interrupted.
    pub pid: u32,
}

/// cairn's state directory (`/var/lib/cairn/net` on an appliance).
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn read<T: for<'de> Deserialize<'de>>(&self, name: &str) -> Result<Option<T>, ApplyError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| ApplyError::Store {
                    what: "parsing",
                    path,
                    source: std::io::Error::other(e),
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ApplyError::Store {
                what: "reading",
                path,
                source,
            }),
        }
    }

    /// Writes atomically (temp file, fsync, rename, fsync the directory) so a crash leaves old or new, never half.
    fn write<T: Serialize>(&self, name: &str, value: &T) -> Result<(), ApplyError> {
        let path = self.dir.join(name);
        let err = |what, source| ApplyError::Store {
            what,
            path: path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| err("serializing", std::io::Error::other(e)))?;
        cairn_formats::fsio::atomic_write(&path, &bytes).map_err(|e| err("writing", e))
    }

    /// Links and rules cairn created.
    pub fn owned(&self) -> Result<Owned, ApplyError> {
        Ok(self.read("owned.json")?.unwrap_or_default())
    }

    /// Records ownership.
    pub fn set_owned(&self, owned: &Owned) -> Result<(), ApplyError> {
        self.write("owned.json", owned)
    }

    /// The pending try, if any.
    pub fn checkpoint(&self) -> Result<Option<Checkpoint>, ApplyError> {
        self.read("checkpoint.json")
    }

    /// Persists a pending try.
    pub fn set_checkpoint(&self, c: &Checkpoint) -> Result<(), ApplyError> {
        self.write("checkpoint.json", c)
    }

    /// Ends a pending try.
    pub fn clear_checkpoint(&self) -> Result<(), ApplyError> {
        let path = self.dir.join("checkpoint.json");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(ApplyError::Store {
                what: "removing",
                path,
                source,
            }),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Something that says what the kernel should look like: a netplan [`Config`], a VPC
/// overlay ([`crate::overlay::Overlay`]).
pub trait Target {
    /// The wanted state, resolved against the current kernel.
    fn wanted(&self, kernel: &Kernel) -> Result<Wanted, ApplyError>;
}

impl Target for Config {
    fn wanted(&self, kernel: &Kernel) -> Result<Wanted, ApplyError> {
        Ok(wanted(self, kernel)?)
    }
}

/// What an apply did.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Changes made, in order.
    pub changes: Vec<Op>,
    /// Netlink writes performed (equals `changes.len()` on success).
    pub writes: u64,
}

/// The plan for a configuration against the current kernel (for `net diff`).
pub async fn diff<N: Netlink, T: Target>(
    nl: &mut N,
    config: &T,
    store: &Store,
) -> Result<Vec<Op>, ApplyError> {
    let kernel = nl.read().await.map_err(ApplyError::Read)?;
    let want = config.wanted(&kernel)?;
    let owned = store.owned()?;
    Ok(plan(&want, &kernel, &owned))
}

/// The names and rules a plan may touch: what a checkpoint must capture.
fn scope(want: &Wanted, owned: &Owned) -> (BTreeSet<String>, BTreeSet<RuleSpec>) {
    let mut names: BTreeSet<String> = want.state.links.keys().cloned().collect();
    names.extend(owned.links.iter().cloned());
    names.extend(want.renames.keys().cloned());
    let mut rules: BTreeSet<RuleSpec> = want.state.rules.clone();
    rules.extend(owned.rules.iter().cloned());
    (names, rules)
}

/// Reads the kernel state a configuration's apply would touch: a checkpoint to restore.
pub async fn checkpoint<N: Netlink, T: Target>(
    nl: &mut N,
    config: &T,
    store: &Store,
) -> Result<NetState, ApplyError> {
    let kernel = nl.read().await.map_err(ApplyError::Read)?;
    let want = config.wanted(&kernel)?;
    let (names, rules) = scope(&want, &store.owned()?);
    Ok(observed(&kernel, &names, &rules))
}

/// Applies a configuration: plan, perform, verify; restore on failure. Updates ownership.
pub async fn apply<N: Netlink, T: Target>(
    nl: &mut N,
    config: &T,
    store: &Store,
) -> Result<Report, ApplyError> {
    let started = Instant::now();
    let kernel = nl.read().await.map_err(ApplyError::Read)?;
    let read = started.elapsed();
    let want = config.wanted(&kernel)?;
    let owned = store.owned()?;
    let (names, rules) = scope(&want, &owned);
    let before = observed(&kernel, &names, &rules);
    let ops = plan(&want, &kernel, &owned);
    tracing::debug!(?read, planned = ?started.elapsed(), changes = ops.len(), "planned");
    let start = nl.writes();
    if ops.is_empty() {
        // The kernel already matches: the read just done is the verification.
        return Ok(Report {
            changes: ops,
            writes: 0,
        });
    }
    let mut new_owned = owned.clone();
    let result = perform(nl, &ops, &mut new_owned).await;
    tracing::debug!(performed = ?started.elapsed(), "changes made");
    // Recorded even on failure: a half-created link must be deletable by the rollback.
    store.set_owned(&new_owned)?;
    if let Err((op, source)) = result {
        let restored = restore(nl, &before, store).await;
        return Err(ApplyError::Write {
            op,
            restored,
            source,
        });
    }
    let kernel = nl.read().await.map_err(ApplyError::Read)?;
    let again = config.wanted(&kernel)?;
    let remaining = plan(&again, &kernel, &new_owned);
    tracing::debug!(verified = ?started.elapsed(), "verified");
    if !remaining.is_empty() {
        let restored = restore(nl, &before, store).await;
        return Err(ApplyError::Verify {
            remaining: remaining
                .iter()
                .map(Op::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            restored,
        });
    }
    Ok(Report {
        changes: ops,
        writes: nl.writes() - start,
    })
}

/// Performs `ops` and records in `owned` what the successful ones created or deleted (also
/// when a later one failed: a rollback must be able to delete a link created before it).
async fn perform<N: Netlink>(
    nl: &mut N,
    ops: &[Op],
    owned: &mut Owned,
) -> Result<(), (String, NetlinkError)> {
    let mut first_error = None;
    for (op, result) in ops.iter().zip(nl.write_all(ops).await) {
        if let Err(e) = result {
            first_error.get_or_insert((op.to_string(), e));
            continue;
        }
        match op {
            Op::AddLink { name, .. } => {
                owned.links.insert(name.clone());
            }
            Op::DelLink { name } => {
                owned.links.remove(name);
            }
            Op::AddRule { rule } => {
                owned.rules.insert(rule.clone());
            }
            Op::DelRule { rule } => {
                owned.rules.remove(rule);
            }
            Op::AddRoute { route, .. } if route.kind != 1 => {
                owned.routes.insert(route.clone());
            }
            Op::DelRoute { route, .. } if route.kind != 1 => {
                owned.routes.remove(route);
            }
            _ => {}
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Brings the kernel back to `state` (a checkpoint) and fixes ownership accordingly.
pub async fn restore<N: Netlink>(nl: &mut N, state: &NetState, store: &Store) -> Restored {
    match restore_inner(nl, state, store).await {
        Ok(()) => Restored::Yes,
        Err(e) => {
            tracing::error!(error = %e, "rollback failed");
            Restored::No(cairn_api::error_chain(&e))
        }
    }
}

async fn restore_inner<N: Netlink>(
    nl: &mut N,
    state: &NetState,
    store: &Store,
) -> Result<(), ApplyError> {
    let mut owned = store.owned()?;
    // Several passes: a link recreated on the way back may need its members again.
    for _ in 0..3 {
        let kernel = nl.read().await.map_err(ApplyError::Read)?;
        let want = Wanted {
            state: state.clone(),
            renames: Default::default(),
        };
        // Rollback may delete what the failed apply created (owned), and names the
        // checkpoint says did not exist.
        let ops = plan(&want, &kernel, &owned);
        if ops.is_empty() {
            store.set_owned(&owned)?;
            return Ok(());
        }
        tracing::warn!(changes = ops.len(), "restoring previous network state");
        if let Err((op, source)) = perform(nl, &ops, &mut owned).await {
            store.set_owned(&owned)?;
            return Err(ApplyError::Write {
                op,
                restored: Restored::No("see cause".into()),
                source,
            });
        }
    }
    store.set_owned(&owned)?;
    let kernel = nl.read().await.map_err(ApplyError::Read)?;
    let want = Wanted {
        state: state.clone(),
        renames: Default::default(),
    };
    let left = plan(&want, &kernel, &owned);
    if left.is_empty() {
        Ok(())
    } else {
        Err(ApplyError::Verify {
            remaining: left
                .iter()
                .map(Op::to_string)
                .collect::<Vec<_>>()
                .join("; "),
            restored: Restored::No("kernel does not converge".into()),
        })
    }
}
