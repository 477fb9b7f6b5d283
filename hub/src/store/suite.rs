//! The behaviour every [`Store`] backend must show; each backend's tests call [`run`].

use std::sync::Arc;

use super::{Check, MAX_TXN_OPS, Op, Store, StoreError};

/// Runs every check against a fresh, empty store.
pub(crate) async fn run(shared: Arc<dyn Store>) {
    let store = shared.as_ref();
    absent_keys_read_as_none(store).await;
    versions_grow_and_checks_guard_writes(store).await;
    failed_check_writes_nothing(store).await;
    list_is_ordered_paged_and_bounded_by_prefix(store).await;
    deletes(store).await;
    relaxed_writes_read_back_and_honour_checks(store).await;
    concurrent_increments_lose_nothing(shared.clone()).await;
    transactions_up_to_the_limit_apply_and_larger_ones_are_refused(store).await;
    watches_deliver_changes_in_order_and_resume(store).await;
}

/// The next change of a watch, failing the test when none comes.
pub(crate) async fn next_change(changes: &mut super::Changes) -> super::Change {
    tokio::time::timeout(crate::testutil::LIMIT, changes.recv())
        .await
        .expect("a change within the limit")
        .expect("the watch goes on")
        .expect("no watch error")
}

async fn watches_deliver_changes_in_order_and_resume(store: &dyn Store) {
    let start = store.revision().await.unwrap();
    let watched = ["suite/w/a/", "suite/w/b/"];
    let mut changes = store.watch(&watched, start).await.unwrap();
    let put = |key: &'static str, value: &'static [u8]| async move {
        assert!(
            store
                .txn(vec![], vec![Op::put(key, value.to_vec())])
                .await
                .unwrap()
        );
        store.get(key).await.unwrap().unwrap().version
    };
    let v1 = put("suite/w/a/1", b"one").await;
    put("suite/w/c/1", b"not watched").await;
    let v2 = put("suite/w/b/1", b"two").await;
    let v3 = put("suite/w/a/1", b"three").await;
    assert!(
        store
            .txn(vec![], vec![Op::delete("suite/w/b/1")])
            .await
            .unwrap()
    );
    assert!(
        store
            .txn_relaxed(vec![], vec![Op::put("suite/w/a/2", b"four".to_vec())])
            .await
            .unwrap()
    );
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next_change(&mut changes).await);
    }
    let summary: Vec<(&str, Option<&[u8]>, bool)> = seen
        .iter()
        .map(|c| (c.key.as_str(), c.value.as_deref(), c.created))
        .collect();
    assert_eq!(
        summary,
        vec![
            ("suite/w/a/1", Some(&b"one"[..]), true),
            ("suite/w/b/1", Some(&b"two"[..]), true),
            ("suite/w/a/1", Some(&b"three"[..]), false),
            ("suite/w/b/1", None, false),
            ("suite/w/a/2", Some(&b"four"[..]), true),
        ]
    );
    assert_eq!(
        [seen[0].version, seen[1].version, seen[2].version],
        [v1, v2, v3],
        "a change carries the version the key was written at"
    );
    assert!(seen.windows(2).all(|w| w[0].version < w[1].version));
    let last = seen[4].version;
    assert!(store.revision().await.unwrap() >= last);

    // Resuming after the second change replays the rest, in order, ending on the latest
    // values.
    let mut resumed = store.watch(&watched, v2).await.unwrap();
    let mut replay = Vec::new();
    for _ in 0..3 {
        replay.push(next_change(&mut resumed).await);
    }
    // (key, version, deleted, created)
    let keys: Vec<(&str, u64, bool, bool)> = replay
        .iter()
        .map(|c| (c.key.as_str(), c.version, c.value.is_none(), c.created))
        .collect();
    assert_eq!(
        keys,
        vec![
            ("suite/w/a/1", v3, false, false),
            ("suite/w/b/1", seen[3].version, true, false),
            ("suite/w/a/2", last, false, true),
        ]
    );
    // And carries on live.
    let v5 = put("suite/w/b/2", b"five").await;
    let live = next_change(&mut resumed).await;
    assert_eq!((live.key.as_str(), live.version), ("suite/w/b/2", v5));

    let current = store.revision().await.unwrap();
    let future = store.watch(&watched, current + 1000).await;
    assert!(
        matches!(future, Err(StoreError::Future { .. })),
        "{:?}",
        future.map(drop)
    );
}

/// etcd's `--max-txn-ops` (128 by default) holds on both backends, so a caller that builds
/// oversized transactions fails in the embedded store's tests too, not only in production.
async fn transactions_up_to_the_limit_apply_and_larger_ones_are_refused(store: &dyn Store) {
    let keys = |n: usize| {
        (0..n)
            .map(|i| format!("suite/txn/{i:03}"))
            .collect::<Vec<_>>()
    };
    let full = keys(MAX_TXN_OPS);
    assert!(
        store
            .txn(
                full.iter().map(|k| Check::version(k, 0)).collect(),
                full.iter().map(|k| Op::put(k, b"x".to_vec())).collect(),
            )
            .await
            .unwrap()
    );
    assert_eq!(
        store.list("suite/txn/", None, 1000).await.unwrap().len(),
        MAX_TXN_OPS
    );
    let over = keys(MAX_TXN_OPS + 1);
    let refused = store
        .txn(
            vec![],
            over.iter().map(|k| Op::put(k, b"y".to_vec())).collect(),
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::TxnTooLarge { .. })),
        "{refused:?}"
    );
    let last = store.get(&over[MAX_TXN_OPS]).await.unwrap();
    assert_eq!(last, None, "a refused transaction writes nothing");
}

async fn absent_keys_read_as_none(store: &dyn Store) {
    assert_eq!(store.get("suite/absent").await.unwrap(), None);
}

async fn versions_grow_and_checks_guard_writes(store: &dyn Store) {
    // Create only if absent.
    assert!(
        store
            .txn(
                vec![Check::version("suite/v", 0)],
                vec![Op::put("suite/v", b"one".to_vec())]
            )
            .await
            .unwrap()
    );
    let first = store.get("suite/v").await.unwrap().unwrap();
    assert_eq!(first.value, b"one");
    assert!(first.version > 0);
    // A second create loses.
    assert!(
        !store
            .txn(
                vec![Check::version("suite/v", 0)],
                vec![Op::put("suite/v", b"two".to_vec())]
            )
            .await
            .unwrap()
    );
    // Compare-and-set on the version read.
    assert!(
        store
            .txn(
                vec![Check::version("suite/v", first.version)],
                vec![Op::put("suite/v", b"two".to_vec())]
            )
            .await
            .unwrap()
    );
    let second = store.get("suite/v").await.unwrap().unwrap();
    assert!(second.version > first.version);
    assert_eq!(second.value, b"two");
    // A stale version loses.
    assert!(
        !store
            .txn(
                vec![Check::version("suite/v", first.version)],
                vec![Op::put("suite/v", b"three".to_vec())]
            )
            .await
            .unwrap()
    );
    assert_eq!(store.get("suite/v").await.unwrap().unwrap().value, b"two");
}

async fn failed_check_writes_nothing(store: &dyn Store) {
    store
        .txn(vec![], vec![Op::put("suite/held", b"x".to_vec())])
        .await
        .unwrap();
    let ok = store
        .txn(
            vec![
                Check::version("suite/fresh", 0),
                Check::version("suite/held", 0),
            ],
            vec![
                Op::put("suite/fresh", b"a".to_vec()),
                Op::put("suite/other", b"b".to_vec()),
            ],
        )
        .await
        .unwrap();
    assert!(!ok, "a transaction with one failing check must not apply");
    assert_eq!(store.get("suite/fresh").await.unwrap(), None);
    assert_eq!(store.get("suite/other").await.unwrap(), None);
}

async fn list_is_ordered_paged_and_bounded_by_prefix(store: &dyn Store) {
    let ops = ["suite/l/c", "suite/l/a", "suite/l/b", "suite/lz", "suite/k"]
        .iter()
        .map(|k| Op::put(*k, k.as_bytes().to_vec()))
        .collect();
    store.txn(vec![], ops).await.unwrap();
    let keys =
        |v: Vec<(String, super::Versioned)>| v.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
    assert_eq!(
        keys(store.list("suite/l/", None, 100).await.unwrap()),
        ["suite/l/a", "suite/l/b", "suite/l/c"]
    );
    assert_eq!(
        keys(store.list("suite/l/", None, 2).await.unwrap()),
        ["suite/l/a", "suite/l/b"]
    );
    assert_eq!(
        keys(
            store
                .list("suite/l/", Some("suite/l/a"), 100)
                .await
                .unwrap()
        ),
        ["suite/l/b", "suite/l/c"]
    );
    assert!(
        store
            .list("suite/nothing/", None, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn deletes(store: &dyn Store) {
    store
        .txn(vec![], vec![Op::put("suite/d", b"x".to_vec())])
        .await
        .unwrap();
    assert!(
        store
            .txn(vec![], vec![Op::delete("suite/d")])
            .await
            .unwrap()
    );
    assert_eq!(store.get("suite/d").await.unwrap(), None);
    // Deleting an absent key is not an error.
    assert!(
        store
            .txn(vec![], vec![Op::delete("suite/d")])
            .await
            .unwrap()
    );
}

/// Optimistic increments from many tasks at once: every acknowledged one counts.
async fn concurrent_increments_lose_nothing(store: Arc<dyn Store>) {
    const TASKS: u64 = 8;
    const EACH: u64 = 10;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            for _ in 0..EACH {
                loop {
                    let (version, n) = match store.get("suite/counter").await.unwrap() {
                        Some(v) => (v.version, parse(&v.value)),
                        None => (0, 0),
                    };
                    let next = (n + 1).to_string().into_bytes();
                    let won = store
                        .txn(
                            vec![Check::version("suite/counter", version)],
                            vec![Op::put("suite/counter", next)],
                        )
                        .await
                        .unwrap();
                    if won {
                        break;
                    }
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let v = store.get("suite/counter").await.unwrap().unwrap();
    assert_eq!(parse(&v.value), TASKS * EACH);
}

fn parse(raw: &[u8]) -> u64 {
    std::str::from_utf8(raw).unwrap().parse().unwrap()
}

async fn relaxed_writes_read_back_and_honour_checks(store: &dyn Store) {
    assert!(
        store
            .txn_relaxed(vec![], vec![Op::put("suite/r", b"one".to_vec())])
            .await
            .unwrap()
    );
    let v = store.get("suite/r").await.unwrap().unwrap();
    assert_eq!(v.value, b"one");
    assert!(
        !store
            .txn_relaxed(
                vec![Check::version("suite/r", v.version + 1000)],
                vec![Op::put("suite/r", b"two".to_vec())]
            )
            .await
            .unwrap(),
        "a stale check fails a relaxed write too"
    );
    assert_eq!(store.get("suite/r").await.unwrap().unwrap().value, b"one");
}
