//! Test helpers: polling instead of sleeping.

use std::time::{Duration, Instant};

/// Polls `f` every 20 ms for up to 30 s until it returns `Some`.
pub fn poll<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Async [`poll`].
pub async fn poll_async<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A real etcd cluster of Debian's `etcd-server`, members as direct children, killed and
/// reaped on drop. Ports are picked free on loopback (etcd cannot listen on port 0).
pub struct Etcd {
    dir: tempfile::TempDir,
    /// Members in start order.
    pub members: Vec<EtcdMember>,
}

/// One etcd process.
pub struct EtcdMember {
    /// `http://127.0.0.1:port`.
    pub client_url: String,
    child: Option<std::process::Child>,
}

fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all are chosen so the same port is not handed out twice.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
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
        let ports = free_ports(2 * n);
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
                let child = std::process::Command::new(&bin)
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
                    .stderr(log)
                    .spawn()
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
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let ok = async {
                    let mut c = etcd_client::Client::connect([url.as_str()], None)
                        .await
                        .ok()?;
                    c.put("health", "ok", None).await.ok()
                };
                if tokio::time::timeout(Duration::from_secs(5), ok)
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd at {url} did not become ready; logs in {}",
                    etcd.dir.path().display()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
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
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
