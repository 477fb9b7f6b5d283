//! Test helpers of the hub's own: a real etcd cluster. Polling, ports and process guards
//! come from `cairn-test-support`.

#![allow(unreachable_pub)] // shared with the integration tests, which reach it with `#[path]`

use std::time::Duration;

use cairn_test_support::{ChildGuard, Poll, ports::free_tcp_ports};

/// How long a hub test waits for a condition.
pub(crate) const LIMIT: Duration = Duration::from_secs(30);

/// A real etcd cluster of Debian's `etcd-server`, members as direct children, killed and
/// reaped on drop. Ports are picked free on loopback (etcd cannot listen on port 0).
pub struct Etcd {
    /// Members in start order (declared first: dropped, so killed, before their directory).
    pub members: Vec<EtcdMember>,
    dir: tempfile::TempDir,
}

/// One etcd process.
pub struct EtcdMember {
    /// `http://127.0.0.1:port`.
    pub client_url: String,
    child: Option<ChildGuard>,
}

impl Etcd {
    /// Starts an `n`-member cluster and waits until it answers.
    pub async fn start(n: usize) -> Etcd {
        let bin = std::env::var("CAIRN_ETCD").unwrap_or_else(|_| "etcd".into());
        assert!(
            std::process::Command::new(&bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "`{bin}` not found: install Debian's etcd-server (scripts/setup does) to run the etcd backend tests"
        );
        let dir = tempfile::tempdir().unwrap();
        let ports = free_tcp_ports(2 * n);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let cluster = (0..n)
            .map(|i| format!("m{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("cairn-test-{}-{}", std::process::id(), ports[0]);
        let members = (0..n)
            .map(|i| {
                let client_url = format!("http://127.0.0.1:{}", ports[2 * i]);
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                let child = ChildGuard::spawn(
                    std::process::Command::new(&bin)
                        .args(["--name", &format!("m{i}")])
                        .arg("--data-dir")
                        .arg(dir.path().join(format!("m{i}")))
                        .args([
                            "--listen-client-urls",
                            &client_url,
                            "--advertise-client-urls",
                            &client_url,
                        ])
                        .args([
                            "--listen-peer-urls",
                            &peer(i),
                            "--initial-advertise-peer-urls",
                            &peer(i),
                        ])
                        .args([
                            "--initial-cluster",
                            &cluster,
                            "--initial-cluster-state",
                            "new",
                        ])
                        .args(["--initial-cluster-token", &token])
                        .stdout(std::process::Stdio::null())
                        .stderr(log),
                )
                .expect("starting etcd");
                EtcdMember {
                    client_url,
                    child: Some(child),
                }
            })
            .collect();
        let etcd = Etcd { dir, members };
        for m in &etcd.members {
            let url = m.client_url.clone();
            let what = format!(
                "etcd at {url} to become ready; logs in {}",
                etcd.dir.path().display()
            );
            Poll::new(&what, Duration::from_secs(60))
                .until_async(|| async {
                    let ok = async {
                        let mut c = etcd_client::Client::connect([url.as_str()], None)
                            .await
                            .ok()?;
                        c.put("health", "ok", None).await.ok()
                    };
                    tokio::time::timeout(Duration::from_secs(5), ok)
                        .await
                        .ok()
                        .flatten()
                })
                .await;
        }
        etcd
    }

    /// Client URLs of the members still running.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .filter(|m| m.child.is_some())
            .map(|m| m.client_url.clone())
            .collect()
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        drop(self.members[i].child.take());
    }
}
