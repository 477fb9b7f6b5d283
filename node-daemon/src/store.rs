//! The node's state store: one redb file, `<state dir>/node.redb`.
//!
//! It holds the identity (private key, certificate, hub CA, appliance ID), the registration
//! in progress until its answer is saved (key and CSR, so that every attempt and every
//! restart sends the same request), the last desired state and the generation applied,
//! counters, and the bounded queue of reports waiting for the hub. The file holds private
//! keys: it is made readable by its owner only. Everything the node needs to come back after a restart with the hub down is here.
//!
//! A store that cannot be read is never replaced silently: replacing it would throw away the
//! identity and make the node register as a new appliance. [`StoreError::Corrupt`] says what
//! to do instead (docs/node-daemon.md, "Corrupt state store").

use std::path::{Path, PathBuf};

use cairn_api::{DesiredState, Heartbeat};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

const IDENTITY: TableDefinition<&str, &str> = TableDefinition::new("identity");
const DOCS: TableDefinition<&str, &[u8]> = TableDefinition::new("documents");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const QUEUE: TableDefinition<u64, &[u8]> = TableDefinition::new("report_queue");

const CACHE_BYTES: usize = 4 << 20;

/// File name of the store inside the state directory.
pub const STORE_FILE: &str = "node.redb";

/// Counter: reports dropped from a full queue.
pub const REPORTS_DROPPED: &str = "reports_dropped";
/// Counter: successful hub exchanges after a failure.
pub const RECONNECTS: &str = "reconnects";
/// Counter: kubelet restarts the node made after a failure.
pub const KUBELET_RESTARTS: &str = "kubelet_restarts";

const APPLIED_GENERATION: &str = "applied_generation";
const PENDING_REGISTRATION: &str = "pending_registration";
const NEXT_SEQ: &str = "next_report_seq";

/// What the node is, as issued by the hub at registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Appliance ID.
    pub appliance_id: cairn_api::ApplianceId,
    /// Site the appliance belongs to.
    pub site: String,
    /// Hub URL the identity was issued by.
    pub hub_url: String,
    /// The private key as kept here: PEM (a file key) or, for a TPM key, its public area and
    /// the private area only that TPM can unwrap (`crate::tpm`). Never sent anywhere.
    pub key_pem: String,
    /// Client certificate, PEM.
    pub certificate_pem: String,
    /// Hub CA bundle, PEM.
    pub ca_bundle_pem: String,
}

/// A registration sent (or about to be) whose answer is not saved yet. Kept before the first
/// attempt so that a lost answer or a restart resends the same CSR: the hub recognises the
/// repeat by its key and answers with the same appliance (docs/node-daemon.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PendingRegistration {
    /// Private key, PEM: the identity's key from the first attempt on. Never sent anywhere.
    pub key_pem: String,
    /// The CSR every attempt sends.
    pub csr_pem: String,
    /// The hostname the CSR names.
    pub hostname: String,
    /// Public ID of the enrollment token it is sent with (never the secret).
    pub token_id: String,
}

/// State store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file exists but cannot be read as a store.
    #[error(
        "state store {path} is corrupt ({detail}); the node will not start on it and will not \
         replace it on its own, because that would discard its identity. Way out: stop \
         cairn-node, run `cairn-node state reset` (moves the file aside, keeping it for \
         inspection), then provide the re-install token an operator mints for this appliance \
         (`cairn hub appliances reinstall ID`): the hub recognises the hardware and keeps its \
         appliance ID and site"
    )]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
    /// Another process holds the store.
    #[error("state store {path} is in use by another cairn-node process")]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// An identity exists and a different one was about to replace it.
    #[error(
        "refusing to replace identity of appliance {existing} with {new}: the node never \
         re-registers as a new appliance on its own (see `cairn-node state reset`)"
    )]
    IdentityExists {
        /// The stored appliance.
        existing: String,
        /// The one offered.
        new: String,
    },
    /// A stored document does not parse.
    #[error("state store entry {key} is unreadable")]
    Document {
        /// The entry.
        key: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Reading or writing failed.
    #[error("state store {path}")]
    Io {
        /// The store file.
        path: PathBuf,
        /// redb's error.
        #[source]
        source: redb::Error,
    },
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

/// A queued report with its sequence number.
#[derive(Debug, Clone, PartialEq)]
pub struct Queued {
    /// Monotonic sequence number; delivery order.
    pub seq: u64,
    /// The report.
    pub report: Heartbeat,
}

impl Store {
    /// Opens (creating when missing) the store in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Io {
            path: dir.to_path_buf(),
            source: redb::Error::Io(e),
        })?;
        let path = dir.join(STORE_FILE);
        // redb turns a few impossible states into debug assertions; a corrupt file on disk is
        // input, not a bug, so a panic while opening is reported as corruption too.
        // The store is small (identity, one document, a bounded queue): a 4 MiB page cache
        // instead of redb's default keeps the daemon's memory footprint small.
        let opened = std::panic::catch_unwind(|| {
            Database::builder()
                .set_cache_size(CACHE_BYTES)
                .create(&path)
        });
        let db = match opened {
            Ok(Ok(db)) => db,
            Ok(Err(redb::DatabaseError::DatabaseAlreadyOpen)) => {
                return Err(StoreError::Locked { path });
            }
            Ok(Err(redb::DatabaseError::Storage(redb::StorageError::Io(e))))
                if e.kind() != std::io::ErrorKind::InvalidData =>
            {
                return Err(StoreError::Io {
                    path,
                    source: redb::Error::Io(e),
                });
            }
            Ok(Err(e)) => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: e.to_string(),
                });
            }
            Err(_) => {
                return Err(StoreError::Corrupt {
                    path,
                    detail: "the store's structure is inconsistent".into(),
                });
            }
        };
        // The identity's private key lives here.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(
                |e| StoreError::Io {
                    path: path.clone(),
                    source: redb::Error::Io(e),
                },
            )?;
        }
        let store = Self { db, path };
        store.write(|tx| {
            tx.open_table(IDENTITY)?;
            tx.open_table(DOCS)?;
            tx.open_table(COUNTERS)?;
            tx.open_table(QUEUE)?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Moves a store aside (`node.redb.corrupt-<unix time>`), the documented way out of a
    /// corrupt store. Returns where it went.
    pub fn quarantine(dir: &Path, now_unix: i64) -> std::io::Result<Option<PathBuf>> {
        let path = dir.join(STORE_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let aside = dir.join(format!("{STORE_FILE}.corrupt-{now_unix}"));
        std::fs::rename(&path, &aside)?;
        Ok(Some(aside))
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        let source = e.into();
        match source {
            redb::Error::Corrupted(detail) => StoreError::Corrupt {
                path: self.path.clone(),
                detail,
            },
            source => StoreError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        let value = f(&tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(value)
    }

    fn read<T>(
        &self,
        f: impl FnOnce(&redb::ReadTransaction) -> Result<T, redb::Error>,
    ) -> Result<T, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        f(&tx).map_err(|e| self.err(e))
    }

    /// The stored identity, if the node has registered.
    pub fn identity(&self) -> Result<Option<Identity>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(IDENTITY)?;
            let get = |k: &str| -> Result<Option<String>, redb::Error> {
                Ok(t.get(k)?.map(|v| v.value().to_owned()))
            };
            let Some(id) = get("appliance_id")? else {
                return Ok(None);
            };
            let Ok(appliance_id) = cairn_api::ApplianceId::new(id.clone()) else {
                return Err(redb::Error::Corrupted(format!(
                    "stored appliance id {id:?} is invalid"
                )));
            };
            Ok(Some(Identity {
                appliance_id,
                site: get("site")?.unwrap_or_default(),
                hub_url: get("hub_url")?.unwrap_or_default(),
                key_pem: get("key_pem")?.unwrap_or_default(),
                certificate_pem: get("certificate_pem")?.unwrap_or_default(),
                ca_bundle_pem: get("ca_bundle_pem")?.unwrap_or_default(),
            }))
        })
    }

    /// The registration in progress, if any.
    pub fn pending_registration(&self) -> Result<Option<PendingRegistration>, StoreError> {
        self.get_doc(PENDING_REGISTRATION)
    }

    /// Keeps the registration about to be sent (durable when this returns).
    pub fn set_pending_registration(
        &self,
        pending: &PendingRegistration,
    ) -> Result<(), StoreError> {
        self.put_doc(PENDING_REGISTRATION, pending)
    }

    /// Stores the identity from a registration, and drops the pending registration in the
    /// same transaction. Refuses to replace an identity with another appliance ID; the same
    /// ID (a renewed certificate) is accepted.
    pub fn save_identity(&self, identity: &Identity) -> Result<(), StoreError> {
        if let Some(existing) = self.identity()?
            && existing.appliance_id != identity.appliance_id
        {
            return Err(StoreError::IdentityExists {
                existing: existing.appliance_id.to_string(),
                new: identity.appliance_id.to_string(),
            });
        }
        self.write(|tx| {
            let mut t = tx.open_table(IDENTITY)?;
            t.insert("appliance_id", identity.appliance_id.as_str())?;
            t.insert("site", identity.site.as_str())?;
            t.insert("hub_url", identity.hub_url.as_str())?;
            t.insert("key_pem", identity.key_pem.as_str())?;
            t.insert("certificate_pem", identity.certificate_pem.as_str())?;
            t.insert("ca_bundle_pem", identity.ca_bundle_pem.as_str())?;
            tx.open_table(DOCS)?.remove(PENDING_REGISTRATION)?;
            Ok(())
        })
    }

    fn put_doc<T: serde::Serialize>(&self, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Document {
            key: key.into(),
            source,
        })?;
        self.write(|tx| {
            tx.open_table(DOCS)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
    }

    fn get_doc<T: serde::de::DeserializeOwned>(&self, key: &str) -> Result<Option<T>, StoreError> {
        let bytes = self.read(|tx| {
            let t = tx.open_table(DOCS)?;
            Ok(t.get(key)?.map(|v| v.value().to_vec()))
        })?;
        bytes
            .map(|b| serde_json::from_slice(&b))
            .transpose()
            .map_err(|source| StoreError::Document {
                key: key.into(),
                source,
            })
    }

    /// The last desired state received from the hub.
    pub fn desired(&self) -> Result<Option<DesiredState>, StoreError> {
        self.get_doc("desired")
    }

    /// Keeps the desired state received from the hub.
    pub fn set_desired(&self, desired: &DesiredState) -> Result<(), StoreError> {
        self.put_doc("desired", desired)
    }

    /// The desired-state generation fully applied.
    pub fn applied_generation(&self) -> Result<u64, StoreError> {
        self.counter(APPLIED_GENERATION)
    }

    /// Records the generation fully applied.
    pub fn set_applied_generation(&self, generation: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(COUNTERS)?
                .insert(APPLIED_GENERATION, generation)?;
            Ok(())
        })
    }

    /// A counter's value (0 when never incremented).
    pub fn counter(&self, name: &str) -> Result<u64, StoreError> {
        self.read(|tx| {
            Ok(tx
                .open_table(COUNTERS)?
                .get(name)?
                .map(|v| v.value())
                .unwrap_or(0))
        })
    }

    /// Every counter reported to the hub.
    pub fn counters(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        self.read(|tx| {
            let t = tx.open_table(COUNTERS)?;
            let mut out = std::collections::BTreeMap::new();
            for entry in t.iter()? {
                let (k, v) = entry?;
                if k.value() != APPLIED_GENERATION && k.value() != NEXT_SEQ {
                    out.insert(k.value().to_owned(), v.value());
                }
            }
            Ok(out)
        })
    }

    /// Adds one to a counter.
    pub fn increment(&self, name: &str) -> Result<u64, StoreError> {
        self.write(|tx| {
            let mut t = tx.open_table(COUNTERS)?;
            let next = t.get(name)?.map(|v| v.value()).unwrap_or(0) + 1;
            t.insert(name, next)?;
            Ok(next)
        })
    }

    /// Appends a report to the queue, dropping the oldest when it already holds `limit`
    /// reports (counted in [`REPORTS_DROPPED`]). Returns how many were dropped.
    pub fn enqueue(&self, report: &Heartbeat, limit: u64) -> Result<u64, StoreError> {
        let bytes = serde_json::to_vec(report).map_err(|source| StoreError::Document {
            key: "report".into(),
            source,
        })?;
        self.write(|tx| {
            let mut counters = tx.open_table(COUNTERS)?;
            let seq = counters.get(NEXT_SEQ)?.map(|v| v.value()).unwrap_or(0);
            counters.insert(NEXT_SEQ, seq + 1)?;
            let mut queue = tx.open_table(QUEUE)?;
            queue.insert(seq, bytes.as_slice())?;
            let mut dropped = 0;
            while queue.len()? > limit {
                queue.pop_first()?;
                dropped += 1;
            }
            if dropped > 0 {
                let total = counters
                    .get(REPORTS_DROPPED)?
                    .map(|v| v.value())
                    .unwrap_or(0);
                counters.insert(REPORTS_DROPPED, total + dropped)?;
            }
            Ok(dropped)
        })
    }

    /// The oldest queued report.
    pub fn oldest_report(&self) -> Result<Option<Queued>, StoreError> {
        let entry = self.read(|tx| {
            Ok(tx
                .open_table(QUEUE)?
                .first()?
                .map(|(k, v)| (k.value(), v.value().to_vec())))
        })?;
        entry
            .map(|(seq, bytes)| {
                serde_json::from_slice(&bytes)
                    .map(|report| Queued { seq, report })
                    .map_err(|source| StoreError::Document {
                        key: format!("report {seq}"),
                        source,
                    })
            })
            .transpose()
    }

    /// Removes a delivered report.
    pub fn remove_report(&self, seq: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(QUEUE)?.remove(seq)?;
            Ok(())
        })
    }

    /// Reports waiting for the hub.
    pub fn queue_len(&self) -> Result<u64, StoreError> {
        self.read(|tx| Ok(tx.open_table(QUEUE)?.len()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_api::NodeStatus;

    fn report(generation: u64) -> Heartbeat {
        Heartbeat {
            applied_generation: generation,
            status: NodeStatus {
                agent_version: "t".into(),
                os_version: String::new(),
                booted_slot: None,
                uptime_seconds: generation,
                load1: 0.0,
                conditions: vec![],
                counters: Default::default(),
                vtep_address: None,
                hub_link: None,
                upgrade: None,
                config: None,
                observed_at: time::OffsetDateTime::UNIX_EPOCH,
            },
        }
    }

    fn identity(id: &str) -> Identity {
        Identity {
            appliance_id: cairn_api::ApplianceId::new(id).unwrap(),
            site: "s".into(),
            hub_url: "https://h".into(),
            key_pem: "k".into(),
            certificate_pem: "c".into(),
            ca_bundle_pem: "ca".into(),
        }
    }

    #[test]
    fn full_queue_drops_oldest_counts_them_and_keeps_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for g in 0..5 {
            store.enqueue(&report(g), 3).unwrap();
        }
        assert_eq!(store.queue_len().unwrap(), 3);
        assert_eq!(store.counter(REPORTS_DROPPED).unwrap(), 2);
        let mut seen = vec![];
        while let Some(q) = store.oldest_report().unwrap() {
            seen.push(q.report.applied_generation);
            store.remove_report(q.seq).unwrap();
        }
        assert_eq!(seen, [2, 3, 4]);
    }

    #[test]
    fn state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.save_identity(&identity("a-1")).unwrap();
            store.set_applied_generation(4).unwrap();
            store.enqueue(&report(9), 10).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.identity().unwrap(), Some(identity("a-1")));
        assert_eq!(store.applied_generation().unwrap(), 4);
        assert_eq!(store.queue_len().unwrap(), 1);
    }

    #[test]
    fn the_pending_registration_survives_a_restart_and_goes_with_the_saved_identity() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingRegistration {
            key_pem: "k".into(),
            csr_pem: "csr".into(),
            hostname: "edge".into(),
            token_id: "abc".into(),
        };
        {
            let store = Store::open(dir.path()).unwrap();
            assert_eq!(store.pending_registration().unwrap(), None);
            store.set_pending_registration(&pending).unwrap();
        }
        let mode = std::fs::metadata(dir.path().join(STORE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the store holds private keys");
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.pending_registration().unwrap(), Some(pending));
        store.save_identity(&identity("a-1")).unwrap();
        assert_eq!(store.pending_registration().unwrap(), None);
    }

    #[test]
    fn identity_is_never_replaced_by_another_appliance() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.save_identity(&identity("a-1")).unwrap();
        let mut renewed = identity("a-1");
        renewed.certificate_pem = "c2".into();
        store.save_identity(&renewed).unwrap();
        let err = store.save_identity(&identity("b-2")).unwrap_err();
        assert!(matches!(err, StoreError::IdentityExists { .. }), "{err}");
        assert_eq!(store.identity().unwrap().unwrap().certificate_pem, "c2");
    }

    #[test]
    fn garbage_file_is_reported_as_corrupt_with_the_way_out_and_can_be_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STORE_FILE), vec![0x5a; 64 * 1024]).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("cairn-node state reset"), "{err}");
        let aside = Store::quarantine(dir.path(), 42).unwrap().unwrap();
        assert!(aside.ends_with("node.redb.corrupt-42"));
        assert!(
            Store::open(dir.path())
                .unwrap()
                .identity()
                .unwrap()
                .is_none()
        );
    }
}
