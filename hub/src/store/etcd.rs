//! The etcd backend: several hub processes share one etcd cluster.
//!
//! Keys live under a prefix (default `/cairn/hub/`). Versions are etcd `mod_revision`s;
//! "absent" checks compare the key's `version` to 0. Singleton jobs run in the process that
//! holds the leader key, attached to a lease this process keeps alive: when a hub dies its
//! lease expires after the TTL and another hub takes over. Their writes are fenced by the
//! leader key's revision ([`super::Fence`]): a hub paused past its lease commits nothing
//! once another holds the key.
//!
//! etcd keeps every revision until it is compacted, and heartbeats write one revision each:
//! without compaction its database grows until it reaches its quota and refuses writes. So
//! every hub compacts periodically, keeping a window of recent revisions
//! ([`EtcdSettings::compact_keep`]); compacting to a revision another hub already compacted
//! is refused by etcd and ignored here.
//!
//! Over TLS ([`EtcdTls`]) the server's certificate must chain to the given CA, and a client
//! certificate is presented when given (etcd's `--client-cert-auth`).
//!
//! Writes are group-committed, as in the embedded store: every [`Store::txn`] joins a queue,
//! and a committer sends whatever has queued as one etcd transaction, each write a nested
//! transaction of its own (its checks, its ops), so each keeps its own compare-and-set
//! outcome and a caller is answered once the transaction holding its write has committed.
//! One Raft proposal then carries up to [`MAX_BATCH`] writes: at 3,333 heartbeats/s a write
//! each, one proposal per write was what held the etcd backend to ~1,300/s (BENCHMARKS.md).
//! etcd evaluates every compare of a transaction, nested ones included, before it applies any
//! op, so a write whose keys an earlier write of the same batch puts or deletes waits for the
//! next batch: each batch commits as if its writes had run one after another.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{Mutex, Semaphore, mpsc, oneshot};

use super::{Change, Changes, Check, Op, Store, StoreError, Versioned, prefix_end, watched};

/// The leader key, under the prefix: its holder's name, attached to the holder's lease.
const LEADER: &str = "leader";

/// Most writes one group commit carries. etcd (3.4, `--max-txn-ops` 128 by default) allows a
/// nested transaction only `128 - outer ops` compares and ops, so with at most 96 nested
/// writes each may hold up to [`MAX_NESTED`]; a larger write commits alone.
const MAX_BATCH: usize = 96;
/// Most checks, and most ops, of a write that joins a group commit.
const MAX_NESTED: usize = super::MAX_TXN_OPS - MAX_BATCH;
/// Most value bytes of one group commit, well under etcd's default request limit (1.5 MiB).
const MAX_BATCH_BYTES: usize = 512 * 1024;
/// Group commits in flight at once: while they travel through Raft the next batch fills.
const IN_FLIGHT: usize = 4;

/// Attempts of a call that fails before it reaches etcd (see [`never_sent`]).
const UNSENT_ATTEMPTS: usize = 8;

/// Whether a call failed while connecting, so etcd never saw it and sending it again is
/// safe, also for a write. The client spreads calls over every endpoint, a dead member's
/// too: measured with one of three members killed, one call in five failed this way.
fn never_sent(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        source = e.source();
    }
    status.message() == "tcp connect error"
}

/// Runs `call` again, up to [`UNSENT_ATTEMPTS`] times in all, while it fails before reaching
/// etcd: the balancer then picks among the members afresh.
async fn unsent_retried<T, F, Fut>(mut call: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
{
    let mut attempt = 1;
    loop {
        match call().await {
            Err(e) if attempt < UNSENT_ATTEMPTS && never_sent(&e) => attempt += 1,
            other => return other,
        }
    }
}

fn err(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| StoreError::Etcd {
        op,
        source: Box::new(e),
    }
}

/// TLS towards etcd: the CA its server certificate chains to, and this hub's client
/// certificate and key (PEM).
#[derive(Clone)]
pub struct EtcdTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl EtcdTls {
    /// Reads the CA and, when given, the client certificate and key files.
    pub fn read(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, StoreError> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| StoreError::Etcd {
                op: "reading TLS material",
                source: format!("{}: {e}", p.display()).into(),
            })
        };
        Ok(Self {
            ca_pem: read(ca)?,
            identity: match identity {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }

    fn options(&self) -> TlsOptions {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        tls
    }
}

/// How a hub uses its etcd cluster.
#[derive(Clone)]
pub struct EtcdSettings {
    /// Key prefix of the hub's records.
    pub prefix: String,
    /// This process's name in the leader key.
    pub holder: String,
    /// How long a dead leader blocks the others.
    pub lease_ttl: Duration,
    /// TLS, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// How often to compact (zero: never).
    pub compact_every: Duration,
    /// Revisions kept behind the current one.
    pub compact_keep: u64,
}

impl EtcdSettings {
    /// Plain connections, this prefix and holder, compaction every five minutes.
    pub fn new(prefix: &str, holder: &str, lease_ttl: Duration) -> Self {
        Self {
            prefix: prefix.to_owned(),
            holder: holder.to_owned(),
            lease_ttl,
            tls: None,
            compact_every: Duration::from_secs(300),
            compact_keep: 10_000,
        }
    }
}

/// A hub store in etcd.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    holder: String,
    lease_ttl: i64,
    lease: Mutex<Option<i64>>,
    compactor: Option<tokio::task::JoinHandle<()>>,
    writes: mpsc::UnboundedSender<Write>,
    committer: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdStore {
    fn drop(&mut self) {
        if let Some(task) = &self.compactor {
            task.abort();
        }
        // Batches already sent finish in their own tasks; queued writes are answered
        // `Closed` as their senders drop.
        self.committer.abort();
    }
}

/// One queued write and where its outcome goes.
struct Write {
    checks: Vec<Check>,
    ops: Vec<Op>,
    reply: oneshot::Sender<Result<bool, StoreError>>,
}

impl Write {
    fn value_bytes(&self) -> usize {
        self.ops
            .iter()
            .map(|op| match op {
                Op::Put { key, value } => key.len() + value.len(),
                Op::Delete { key } => key.len(),
            })
            .sum()
    }

    fn written_keys(&self) -> impl Iterator<Item = &str> {
        self.ops.iter().map(|op| match op {
            Op::Put { key, .. } | Op::Delete { key } => key.as_str(),
        })
    }
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://host:port`, or `https://` with
    /// [`EtcdSettings::tls`]) and starts the periodic compaction.
    pub async fn connect(
        endpoints: &[String],
        settings: &EtcdSettings,
    ) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some(tls) = &settings.tls {
            options = options.with_tls(tls.options());
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(err("connecting"))?;
        // The connection is lazy: a first request tells a wrong endpoint, CA or missing
        // client certificate now rather than at the first fleet operation.
        client
            .kv_client()
            .get(format!("{}{LEADER}", settings.prefix), None)
            .await
            .map_err(err("connecting"))?;
        let compactor = (!settings.compact_every.is_zero()).then(|| {
            tokio::spawn(compact_periodically(
                client.clone(),
                settings.compact_every,
                settings.compact_keep,
            ))
        });
        let (writes, queue) = mpsc::unbounded_channel();
        let committer = tokio::spawn(commit_loop(client.clone(), settings.prefix.clone(), queue));
        Ok(Self {
            client,
            prefix: settings.prefix.clone(),
            holder: settings.holder.clone(),
            lease_ttl: settings.lease_ttl.as_secs().max(2) as i64,
            lease: Mutex::new(None),
            compactor,
            writes,
            committer,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Renews our lease, or grants a new one when it lapsed.
    async fn live_lease(&self) -> Result<i64, StoreError> {
        let mut lease = self.lease.lock().await;
        if let Some(id) = *lease {
            // The client answers a lapsed lease with this error (etcd said TTL 0).
            match unsent_retried(|| {
                let mut client = self.client.clone();
                async move { client.lease_keep_alive(id).await }
            })
            .await
            {
                Ok(_) => return Ok(id),
                Err(etcd_client::Error::LeaseKeepAliveError(_)) => {}
                Err(e) => return Err(err("renewing the lease")(e)),
            }
            tracing::warn!(lease = id, "leader lease expired; taking a new one");
        }
        let granted = unsent_retried(|| {
            let (mut client, ttl) = (self.client.clone(), self.lease_ttl);
            async move { client.lease_grant(ttl, None).await }
        })
        .await
        .map_err(err("granting a lease"))?;
        *lease = Some(granted.id());
        Ok(granted.id())
    }
}

/// Sends queued writes to etcd in batches, [`IN_FLIGHT`] at a time, until the store drops.
async fn commit_loop(client: Client, prefix: String, mut queue: mpsc::UnboundedReceiver<Write>) {
    let slots = std::sync::Arc::new(Semaphore::new(IN_FLIGHT));
    let mut pending = std::collections::VecDeque::new();
    loop {
        if pending.is_empty() {
            match queue.recv().await {
                Some(w) => pending.push_back(w),
                None => return,
            }
        }
        // Wait for a free slot first: writes arriving meanwhile join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        while let Ok(w) = queue.try_recv() {
            pending.push_back(w);
        }
        let batch = take_batch(&mut pending);
        let (client, prefix) = (client.clone(), prefix.clone());
        tokio::spawn(async move {
            commit(&client, &prefix, batch).await;
            drop(slot);
        });
    }
}

/// The next batch from the front of `pending`: writes whose keys no earlier write of the
/// batch writes, within the batch limits. What is left keeps its order for the next batch.
fn take_batch(pending: &mut std::collections::VecDeque<Write>) -> Vec<Write> {
    let fits = |w: &Write| w.checks.len() <= MAX_NESTED && w.ops.len() <= MAX_NESTED;
    if pending.front().is_some_and(|w| !fits(w)) {
        return pending.pop_front().into_iter().collect();
    }
    let mut batch = Vec::new();
    let mut written = std::collections::HashSet::new();
    let mut bytes = 0;
    let mut rest = std::collections::VecDeque::new();
    while let Some(w) = pending.pop_front() {
        if batch.len() == MAX_BATCH {
            rest.push_back(w);
            break;
        }
        let touches_written = w
            .checks
            .iter()
            .map(|c| c.key.as_str())
            .chain(w.written_keys())
            .any(|k| written.contains(k));
        let size = w.value_bytes();
        if !fits(&w) || touches_written || (!batch.is_empty() && bytes + size > MAX_BATCH_BYTES) {
            rest.push_back(w);
            continue;
        }
        bytes += size;
        written.extend(w.written_keys().map(str::to_owned));
        batch.push(w);
    }
    rest.append(pending);
    *pending = rest;
    batch
}

fn compares(prefix: &str, checks: &[Check]) -> Vec<Compare> {
    checks
        .iter()
        .map(|c| {
            let key = format!("{prefix}{}", c.key);
            if c.version == 0 {
                Compare::version(key, CompareOp::Equal, 0)
            } else {
                Compare::mod_revision(key, CompareOp::Equal, c.version as i64)
            }
        })
        .collect()
}

fn txn_ops(prefix: &str, ops: Vec<Op>) -> Vec<TxnOp> {
    ops.into_iter()
        .map(|op| match op {
            Op::Put { key, value } => TxnOp::put(format!("{prefix}{key}"), value, None),
            Op::Delete { key } => TxnOp::delete(format!("{prefix}{key}"), None),
        })
        .collect()
}

/// Commits one batch and answers each of its writes. A batch of one is a plain
/// transaction (a write too large to nest commits this way).
async fn commit(client: &Client, prefix: &str, batch: Vec<Write>) {
    let kv = client.kv_client();
    if let [_] = batch.as_slice() {
        let w = batch.into_iter().next().expect("one write");
        let txn = Txn::new()
            .when(compares(prefix, &w.checks))
            .and_then(txn_ops(prefix, w.ops));
        let outcome = unsent_retried(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map(|r| r.succeeded());
        let _ = w.reply.send(outcome.map_err(err("txn")));
        return;
    }
    let mut replies = Vec::with_capacity(batch.len());
    let nested: Vec<TxnOp> = batch
        .into_iter()
        .map(|w| {
            replies.push(w.reply);
            TxnOp::txn(
                Txn::new()
                    .when(compares(prefix, &w.checks))
                    .and_then(txn_ops(prefix, w.ops)),
            )
        })
        .collect();
    let n = nested.len();
    let txn = Txn::new().and_then(nested);
    match unsent_retried(|| {
        let (mut kv, txn) = (kv.clone(), txn.clone());
        async move { kv.txn(txn).await }
    })
    .await
    {
        Ok(resp) => {
            let outcomes: Vec<bool> = resp
                .op_responses()
                .into_iter()
                .filter_map(|r| match r {
                    etcd_client::TxnOpResponse::Txn(t) => Some(t.succeeded()),
                    _ => None,
                })
                .collect();
            if outcomes.len() != n {
                let message = format!("{n} nested transactions, {} outcomes", outcomes.len());
                tracing::error!(%message, "etcd group commit answered out of shape");
                for reply in replies {
                    let _ = reply.send(Err(StoreError::Etcd {
                        op: "group commit",
                        source: message.clone().into(),
                    }));
                }
                return;
            }
            for (reply, ok) in replies.into_iter().zip(outcomes) {
                let _ = reply.send(Ok(ok));
            }
        }
        Err(e) => {
            let message = e.to_string();
            tracing::warn!(error = %message, writes = n, "etcd group commit failed");
            for reply in replies {
                let _ = reply.send(Err(StoreError::Etcd {
                    op: "group commit",
                    source: message.clone().into(),
                }));
            }
        }
    }
}

/// Every `every`, compacts etcd's history up to `keep` revisions behind the current one.
async fn compact_periodically(client: Client, every: Duration, keep: u64) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; a hub that just started has nothing to hurry for.
    tick.tick().await;
    let mut compacted = 0;
    loop {
        tick.tick().await;
        let mut kv = client.kv_client();
        let current = match kv.get("\0", None).await {
            Ok(resp) => resp.header().map_or(0, |h| h.revision()),
            Err(e) => {
                tracing::warn!(error = %e, "etcd compaction: reading the revision failed");
                continue;
            }
        };
        let target = current - keep.min(i64::MAX as u64) as i64;
        if target <= compacted {
            continue;
        }
        match kv.compact(target, None).await {
            Ok(_) => {
                tracing::info!(revision = target, "etcd history compacted");
                compacted = target;
            }
            // Another hub compacted this far already.
            Err(e) if e.to_string().contains("compacted") => compacted = target,
            Err(e) => tracing::warn!(error = %e, revision = target, "etcd compaction failed"),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let (kv, key) = (self.client.kv_client(), self.key(key));
        let resp = unsent_retried(|| {
            let (mut kv, key) = (kv.clone(), key.clone());
            async move { kv.get(key, None).await }
        })
        .await
        .map_err(err("get"))?;
        Ok(resp.kvs().first().map(|kv| Versioned {
            version: kv.mod_revision() as u64,
            value: kv.value().to_vec(),
        }))
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Versioned)>, StoreError> {
        let full = self.key(prefix);
        let start: Vec<u8> = match start_after {
            Some(after) if after.as_bytes() >= prefix.as_bytes() => {
                let mut s = self.key(after).into_bytes();
                s.push(0);
                s
            }
            _ => full.clone().into_bytes(),
        };
        let end = prefix_end(&full);
        if start >= end {
            return Ok(Vec::new());
        }
        let options = GetOptions::new()
            .with_range(end)
            .with_limit(limit.min(i64::MAX as usize) as i64)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let kv = self.client.kv_client();
        let resp = unsent_retried(|| {
            let (mut kv, start, options) = (kv.clone(), start.clone(), options.clone());
            async move { kv.get(start, Some(options)).await }
        })
        .await
        .map_err(err("list"))?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                (
                    key.strip_prefix(&self.prefix).unwrap_or(&key).to_owned(),
                    Versioned {
                        version: kv.mod_revision() as u64,
                        value: kv.value().to_vec(),
                    },
                )
            })
            .collect())
    }

    async fn txn(&self, checks: Vec<Check>, ops: Vec<Op>) -> Result<bool, StoreError> {
        super::within_txn_limit(&checks, &ops)?;
        let (reply, outcome) = oneshot::channel();
        self.writes
            .send(Write { checks, ops, reply })
            .map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    async fn revision(&self) -> Result<u64, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = kv
            .get(self.key(LEADER), Some(GetOptions::new().with_count_only()))
            .await
            .map_err(err("reading the revision"))?;
        Ok(resp.header().map_or(0, |h| h.revision()) as u64)
    }

    async fn watch(&self, prefixes: &[&str], after: u64) -> Result<Changes, StoreError> {
        let current = self.revision().await?;
        if after > current {
            return Err(StoreError::Future { after, current });
        }
        // Compacted history is refused by a read at that revision: tell it now, before the
        // watcher is answered, rather than as a cancelled watch.
        if after < current {
            let at = GetOptions::new()
                .with_revision(after as i64 + 1)
                .with_count_only();
            if let Err(e) = self
                .client
                .kv_client()
                .get(self.key(LEADER), Some(at))
                .await
            {
                return Err(if e.to_string().contains("compacted") {
                    StoreError::TooOld { after }
                } else {
                    err("checking the watch's start")(e)
                });
            }
        }
        // One watch over the whole prefix keeps the changes of every watched key in one
        // revision order; keys outside `prefixes` are dropped here.
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(after as i64 + 1);
        let mut stream = self
            .client
            .watch_client()
            .watch(self.prefix.clone(), Some(options))
            .await
            .map_err(err("starting a watch"))?;
        let prefixes: Vec<String> = prefixes.iter().map(|p| p.to_string()).collect();
        let strip = self.prefix.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    () = tx.closed() => return,
                };
                let resp = match message {
                    Ok(Some(resp)) => resp,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(err("watching")(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = tx.send(Err(StoreError::TooOld { after })).await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx
                        .send(Err(StoreError::Etcd {
                            op: "watching",
                            source: resp.cancel_reason().to_owned().into(),
                        }))
                        .await;
                    return;
                }
                for event in resp.events() {
                    let Some(kv) = event.kv() else { continue };
                    let full = String::from_utf8_lossy(kv.key());
                    let key = full.strip_prefix(&strip).unwrap_or(&full).to_owned();
                    if !watched(&prefixes, &key) {
                        continue;
                    }
                    let deleted = event.event_type() == EventType::Delete;
                    let change = Change {
                        key,
                        version: kv.mod_revision() as u64,
                        value: (!deleted).then(|| kv.value().to_vec()),
                        created: !deleted && kv.create_revision() == kv.mod_revision(),
                        previous: event
                            .prev_kv()
                            .filter(|_| deleted)
                            .map(|kv| kv.value().to_vec()),
                    };
                    if tx.send(Ok(change)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    async fn lead(&self) -> Result<Option<super::Fence>, StoreError> {
        let lease = self.live_lease().await?;
        let key = self.key(LEADER);
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.holder.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let kv = self.client.kv_client();
        let resp = unsent_retried(|| {
            let (mut kv, txn) = (kv.clone(), txn.clone());
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(err("leader election"))?;
        if resp.succeeded() {
            // The put is the transaction's only write: the key's revision is the header's.
            let revision = resp.header().map_or(0, |h| h.revision()) as u64;
            tracing::info!(holder = %self.holder, revision, "this hub now runs the singleton jobs");
            return Ok(Some(super::Fence::on(LEADER, revision)));
        }
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.lease(), kv.mod_revision() as u64)),
            _ => None,
        });
        // Keep-alives do not change the key's revision: a fence taken at any point of one
        // leadership stays valid until the lease lapses.
        Ok(holder.and_then(|(value, held_by, revision)| {
            (value == self.holder.as_bytes() && held_by == lease)
                .then(|| super::Fence::on(LEADER, revision))
        }))
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::store::Fenced;
    use crate::testutil::Etcd;

    fn write(checks: &[&str], puts: &[&str]) -> Write {
        Write {
            checks: checks.iter().map(|k| Check::version(*k, 0)).collect(),
            ops: puts.iter().map(|k| Op::put(*k, vec![0])).collect(),
            reply: oneshot::channel().0,
        }
    }

    /// What each group commit takes from the queue, by the keys of the writes' first ops.
    #[test]
    fn batches_keep_order_and_defer_writes_to_keys_already_written() {
        let big: Vec<String> = (0..=MAX_NESTED).map(|i| format!("big{i}")).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        // (what, the queue, the first keys of each batch taken)
        type Case<'a> = (&'a str, Vec<Write>, Vec<Vec<&'a str>>);
        let cases: Vec<Case> = vec![
            (
                "independent writes share one commit",
                vec![
                    write(&[], &["a"]),
                    write(&["b"], &["b"]),
                    write(&[], &["c"]),
                ],
                vec![vec!["a", "b", "c"]],
            ),
            (
                "a second put of a key waits; what follows still joins",
                vec![write(&[], &["a"]), write(&[], &["a"]), write(&[], &["c"])],
                vec![vec!["a", "c"], vec!["a"]],
            ),
            (
                "a check on a key the batch writes waits (etcd compares before applying)",
                vec![write(&[], &["a"]), write(&["a"], &["b"])],
                vec![vec!["a"], vec!["b"]],
            ),
            (
                "a put of a key an earlier write only checks joins",
                vec![write(&["a"], &["x"]), write(&[], &["a"])],
                vec![vec!["x", "a"]],
            ),
            (
                "a write too large to nest commits alone, in its turn",
                vec![write(&[], &["a"]), write(&[], &big), write(&[], &["c"])],
                vec![vec!["a", "c"], vec!["big0"]],
            ),
        ];
        for (name, writes, want) in cases {
            let mut pending: std::collections::VecDeque<Write> = writes.into();
            let mut got = Vec::new();
            while !pending.is_empty() {
                let batch = take_batch(&mut pending);
                got.push(
                    batch
                        .iter()
                        .map(|w| w.written_keys().next().unwrap().to_owned())
                        .collect::<Vec<_>>(),
                );
            }
            assert_eq!(got, want, "{name}");
        }
        let many: std::collections::VecDeque<Write> = (0..MAX_BATCH + 1)
            .map(|i| write(&[], &[&format!("k{i}")]))
            .collect();
        let mut many = many;
        assert_eq!(take_batch(&mut many).len(), MAX_BATCH);
        assert_eq!(many.len(), 1);
    }

    /// Many writers at once: each gets its own compare-and-set outcome from a shared commit.
    #[tokio::test]
    async fn concurrent_writes_share_commits_and_keep_their_outcomes() {
        let etcd = Etcd::start(1).await;
        let settings = EtcdSettings::new("/group/", "a", Duration::from_secs(3));
        let store = Arc::new(
            EtcdStore::connect(&etcd.endpoints(), &settings)
                .await
                .unwrap(),
        );
        // 400 writers: half create fresh keys, half try to create one key that is taken.
        assert!(
            store
                .txn(vec![], vec![Op::put("taken", vec![1])])
                .await
                .unwrap()
        );
        let mut set = tokio::task::JoinSet::new();
        for i in 0..400 {
            let store = store.clone();
            set.spawn(async move {
                let key = if i % 2 == 0 {
                    format!("fresh{i}")
                } else {
                    "taken".into()
                };
                let done = store
                    .txn(vec![Check::version(&key, 0)], vec![Op::put(&key, vec![2])])
                    .await
                    .unwrap();
                (i, done)
            });
        }
        let mut revisions = std::collections::BTreeSet::new();
        while let Some(r) = set.join_next().await {
            let (i, done) = r.unwrap();
            assert_eq!(done, i % 2 == 0, "writer {i}");
        }
        for i in (0..400).step_by(2) {
            let v = store.get(&format!("fresh{i}")).await.unwrap().unwrap();
            revisions.insert(v.version);
        }
        assert_eq!(store.get("taken").await.unwrap().unwrap().value, vec![1]);
        assert!(
            revisions.len() < 200,
            "200 fresh keys in {} commits: writes were not grouped",
            revisions.len()
        );
    }

    /// The client spreads calls over every endpoint, a killed member's too: once the others
    /// have a leader (the killed one may have been it), calls it could not even send there
    /// go to another member, so none fails.
    #[tokio::test]
    async fn a_killed_member_fails_no_call() {
        let mut etcd = Etcd::start(3).await;
        let settings = EtcdSettings::new("/dead/", "a", Duration::from_secs(3));
        let store = EtcdStore::connect(&etcd.endpoints(), &settings)
            .await
            .unwrap();
        etcd.kill(0);
        cairn_test_support::poll_async(
            "a leader among the others",
            crate::testutil::LIMIT,
            || async {
                store
                    .txn(vec![], vec![Op::put("settled", vec![1])])
                    .await
                    .ok()
            },
        )
        .await;
        for i in 0..100 {
            let key = format!("k{i}");
            assert!(
                store
                    .txn(vec![Check::version(&key, 0)], vec![Op::put(&key, vec![1])])
                    .await
                    .unwrap()
            );
            assert!(store.get(&key).await.unwrap().is_some());
        }
        assert_eq!(store.list("k", None, 1000).await.unwrap().len(), 100);
        assert!(store.lead().await.unwrap().is_some());
    }

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let etcd = Etcd::start(1).await;
        let settings = EtcdSettings::new("/suite/", "a", Duration::from_secs(3));
        let store = EtcdStore::connect(&etcd.endpoints(), &settings)
            .await
            .unwrap();
        super::super::suite::run(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn tls_needs_the_client_certificate_and_history_is_compacted() {
        let etcd = Etcd::start_tls().await;
        let certs = etcd.tls.as_ref().unwrap();
        let mut settings = EtcdSettings::new("/tls/", "a", Duration::from_secs(3));
        settings.tls = Some(EtcdTls::read(&certs.ca, None).unwrap());
        let refused = EtcdStore::connect(&etcd.endpoints(), &settings).await;
        assert!(
            refused.is_err(),
            "etcd runs with --client-cert-auth: no certificate, no store"
        );

        settings.tls = Some(EtcdTls::read(&certs.ca, Some((&certs.cert, &certs.key))).unwrap());
        settings.compact_every = Duration::from_secs(1);
        settings.compact_keep = 5;
        let store = EtcdStore::connect(&etcd.endpoints(), &settings)
            .await
            .unwrap();
        for i in 0..20 {
            let key = format!("k{i}");
            assert!(
                store
                    .txn(vec![], vec![Op::put(&key, vec![1])])
                    .await
                    .unwrap()
            );
        }
        let first = store.get("k0").await.unwrap().unwrap().version;
        // A read at the first write's revision fails once history up to it is compacted.
        let raw = Client::connect(
            etcd.endpoints(),
            Some(ConnectOptions::new().with_tls(certs.options())),
        )
        .await
        .unwrap();
        let error = cairn_test_support::poll_async(
            "etcd history to be compacted",
            crate::testutil::LIMIT,
            || async {
                let old = GetOptions::new().with_revision(first as i64);
                raw.clone().get("/tls/k0", Some(old)).await.err()
            },
        )
        .await;
        assert!(error.to_string().contains("compacted"), "{error}");
        // The current state is whole.
        assert_eq!(store.list("k", None, 100).await.unwrap().len(), 20);
    }

    /// A watch from a compacted revision is refused at once, as too old.
    #[tokio::test]
    async fn a_watch_from_compacted_history_is_too_old() {
        let etcd = Etcd::start(1).await;
        let settings = EtcdSettings::new("/compact/", "a", Duration::from_secs(3));
        let store = EtcdStore::connect(&etcd.endpoints(), &settings)
            .await
            .unwrap();
        let start = store.revision().await.unwrap();
        for i in 0..3 {
            assert!(
                store
                    .txn(vec![], vec![Op::put(format!("k{i}"), vec![i])])
                    .await
                    .unwrap()
            );
        }
        let current = store.revision().await.unwrap();
        let mut raw = Client::connect(etcd.endpoints(), None).await.unwrap();
        raw.compact(current as i64, None).await.unwrap();
        let old = store.watch(&["k"], start).await;
        assert!(
            matches!(old, Err(StoreError::TooOld { after }) if after == start),
            "{:?}",
            old.map(drop)
        );
        // From the compaction on, the history is whole.
        let mut now = store.watch(&["k"], current).await.unwrap();
        assert!(
            store
                .txn(vec![], vec![Op::put("k9", vec![9])])
                .await
                .unwrap()
        );
        let change = super::super::suite::next_change(&mut now).await;
        assert_eq!((change.key.as_str(), change.created), ("k9", true));
    }

    #[tokio::test]
    async fn one_process_leads_and_another_takes_over_when_its_lease_lapses() {
        let etcd = Etcd::start(1).await;
        let ttl = Duration::from_secs(2);
        let a = EtcdStore::connect(&etcd.endpoints(), &EtcdSettings::new("/lead/", "a", ttl))
            .await
            .unwrap();
        let b = EtcdStore::connect(&etcd.endpoints(), &EtcdSettings::new("/lead/", "b", ttl))
            .await
            .unwrap();
        let fence = a.lead().await.unwrap().expect("the first to ask leads");
        assert_eq!(b.lead().await.unwrap(), None);
        assert_eq!(
            a.lead().await.unwrap(),
            Some(fence.clone()),
            "the leader keeps its lease alive, and its fence with it"
        );
        // `a` stops renewing (as if it died): `b` takes over once the lease expires.
        drop(a);
        cairn_test_support::poll_async("b takes over", crate::testutil::LIMIT, || async {
            b.lead().await.unwrap()
        })
        .await;
    }

    /// A leader paused past its lease (GC pause, SIGSTOP) resumes with a write of its last
    /// pass pending: the write is refused, though no other check of it fails, and the new
    /// leader's writes go through.
    #[tokio::test]
    async fn a_leader_whose_lease_lapsed_cannot_commit() {
        let etcd = Etcd::start(1).await;
        let ttl = Duration::from_secs(2);
        let settings = |holder| EtcdSettings::new("/fence/", holder, ttl);
        let a: Arc<dyn Store> = Arc::new(
            EtcdStore::connect(&etcd.endpoints(), &settings("a"))
                .await
                .unwrap(),
        );
        let b: Arc<dyn Store> = Arc::new(
            EtcdStore::connect(&etcd.endpoints(), &settings("b"))
                .await
                .unwrap(),
        );
        let a_fence = a.lead().await.unwrap().unwrap();
        let a_pass = Fenced::new(a.clone(), a_fence.clone());
        assert!(
            a_pass
                .txn(vec![], vec![Op::put("job", b"a1".to_vec())])
                .await
                .unwrap()
        );

        // `a` stalls (it stops renewing); `b` takes over once the lease lapses.
        let b_fence =
            cairn_test_support::poll_async("b takes over", crate::testutil::LIMIT, || async {
                b.lead().await.unwrap()
            })
            .await;
        assert_ne!(a_fence, b_fence);
        let b_pass = Fenced::new(b.clone(), b_fence);
        assert!(
            b_pass
                .txn(vec![], vec![Op::put("job", b"b1".to_vec())])
                .await
                .unwrap()
        );

        // `a` resumes where it stopped: its pending writes, unconditional ones included,
        // are refused as a lost leadership, not as contention to retry.
        let pending = a_pass
            .txn(vec![], vec![Op::put("job", b"a2".to_vec())])
            .await;
        assert!(matches!(pending, Err(StoreError::NotLeader)), "{pending:?}");
        let fresh = a_pass
            .txn(
                vec![Check::version("other", 0)],
                vec![Op::put("other", vec![1])],
            )
            .await;
        assert!(matches!(fresh, Err(StoreError::NotLeader)), "{fresh:?}");
        assert_eq!(a.get("job").await.unwrap().unwrap().value, b"b1");
        assert_eq!(a.get("other").await.unwrap(), None);
        // Campaigning again, it finds `b` in place.
        assert_eq!(a.lead().await.unwrap(), None);
        // An ordinary failed check under a valid fence is still just `false`.
        assert!(
            !b_pass
                .txn(vec![Check::version("job", 1)], vec![Op::delete("job")])
                .await
                .unwrap()
        );
    }
}
