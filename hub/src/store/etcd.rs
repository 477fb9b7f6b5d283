//! The etcd backend: several hub processes share one etcd cluster.
//!
//! Keys live under a prefix (default `/cairn/hub/`). Versions are etcd `mod_revision`s;
//! "absent" checks compare the key's `version` to 0. Singleton jobs run in the process that
//! holds the leader key, attached to a lease this process keeps alive: when a hub dies its
//! lease expires after the TTL and another hub takes over.

use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, SortOrder, SortTarget, Txn,
    TxnOp,
};
use tokio::sync::Mutex;

use super::{Check, Op, Store, StoreError, Versioned, prefix_end};

fn err(op: &'static str) -> impl FnOnce(etcd_client::Error) -> StoreError {
    move |e| StoreError::Etcd {
        op,
        source: Box::new(e),
    }
}

/// A hub store in etcd.
pub struct EtcdStore {
    client: Client,
    prefix: String,
    holder: String,
    lease_ttl: i64,
    lease: Mutex<Option<i64>>,
}

impl EtcdStore {
    /// Connects to `endpoints` (`http://host:port`). `holder` names this process in the
    /// leader key; `lease_ttl` is how long a dead leader blocks the others.
    pub async fn connect(
        endpoints: &[String],
        prefix: &str,
        holder: &str,
        lease_ttl: Duration,
    ) -> Result<Self, StoreError> {
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        let client = Client::connect(endpoints, Some(options))
            .await
            .map_err(err("connecting"))?;
        Ok(Self {
            client,
            prefix: prefix.to_owned(),
            holder: holder.to_owned(),
            lease_ttl: lease_ttl.as_secs().max(2) as i64,
            lease: Mutex::new(None),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Renews our lease, or grants a new one when it lapsed.
    async fn live_lease(&self) -> Result<i64, StoreError> {
        let mut lease = self.lease.lock().await;
        if let Some(id) = *lease {
            let mut client = self.client.clone();
            let (mut keeper, mut stream) = client
                .lease_keep_alive(id)
                .await
                .map_err(err("renewing the lease"))?;
            keeper
                .keep_alive()
                .await
                .map_err(err("renewing the lease"))?;
            let answer = stream.message().await.map_err(err("renewing the lease"))?;
            if answer.is_some_and(|a| a.ttl() > 0) {
                return Ok(id);
            }
            tracing::warn!(lease = id, "leader lease expired; taking a new one");
        }
        let mut client = self.client.clone();
        let granted = client
            .lease_grant(self.lease_ttl, None)
            .await
            .map_err(err("granting a lease"))?;
        *lease = Some(granted.id());
        Ok(granted.id())
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let mut kv = self.client.kv_client();
        let resp = kv.get(self.key(key), None).await.map_err(err("get"))?;
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
        let mut kv = self.client.kv_client();
        let resp = kv.get(start, Some(options)).await.map_err(err("list"))?;
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
        let compares: Vec<Compare> = checks
            .iter()
            .map(|c| {
                if c.version == 0 {
                    Compare::version(self.key(&c.key), CompareOp::Equal, 0)
                } else {
                    Compare::mod_revision(self.key(&c.key), CompareOp::Equal, c.version as i64)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = ops
            .into_iter()
            .map(|op| match op {
                Op::Put { key, value } => TxnOp::put(self.key(&key), value, None),
                Op::Delete { key } => TxnOp::delete(self.key(&key), None),
            })
            .collect();
        let mut kv = self.client.kv_client();
        let resp = kv
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .map_err(err("txn"))?;
        Ok(resp.succeeded())
    }

    async fn lead(&self) -> Result<bool, StoreError> {
        let lease = self.live_lease().await?;
        let key = self.key("leader");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                self.holder.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut kv = self.client.kv_client();
        let resp = kv.txn(txn).await.map_err(err("leader election"))?;
        if resp.succeeded() {
            tracing::info!(holder = %self.holder, "this hub now runs the singleton jobs");
            return Ok(true);
        }
        let holder = resp.op_responses().into_iter().find_map(|r| match r {
            etcd_client::TxnOpResponse::Get(get) => get
                .kvs()
                .first()
                .map(|kv| (kv.value().to_vec(), kv.lease())),
            _ => None,
        });
        Ok(holder
            .is_some_and(|(value, held_by)| value == self.holder.as_bytes() && held_by == lease))
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
    use crate::testutil::Etcd;

    #[tokio::test]
    async fn passes_the_shared_suite() {
        let etcd = Etcd::start(1).await;
        let store = EtcdStore::connect(&etcd.endpoints(), "/suite/", "a", Duration::from_secs(3))
            .await
            .unwrap();
        super::super::suite::run(Arc::new(store)).await;
    }

    #[tokio::test]
    async fn one_process_leads_and_another_takes_over_when_its_lease_lapses() {
        let etcd = Etcd::start(1).await;
        let ttl = Duration::from_secs(2);
        let a = EtcdStore::connect(&etcd.endpoints(), "/lead/", "a", ttl)
            .await
            .unwrap();
        let b = EtcdStore::connect(&etcd.endpoints(), "/lead/", "b", ttl)
            .await
            .unwrap();
        assert!(a.lead().await.unwrap());
        assert!(!b.lead().await.unwrap());
        assert!(a.lead().await.unwrap(), "the leader keeps its lease alive");
        // `a` stops renewing (as if it died): `b` takes over once the lease expires.
        drop(a);
        cairn_test_support::poll_async("b takes over", crate::testutil::LIMIT, || async {
            b.lead().await.unwrap().then_some(())
        })
        .await;
    }
}
