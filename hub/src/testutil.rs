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
    /// The certificates of a cluster started with [`Etcd::start_tls`].
    pub tls: Option<EtcdCerts>,
    dir: tempfile::TempDir,
}

/// PEM files of a TLS cluster: the CA both sides trust and a client certificate signed by
/// it (etcd runs with `--client-cert-auth`).
pub struct EtcdCerts {
    /// CA certificate.
    pub ca: std::path::PathBuf,
    /// Client certificate.
    pub cert: std::path::PathBuf,
    /// Client key.
    pub key: std::path::PathBuf,
}

impl EtcdCerts {
    /// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`; returns
    /// the client's files and the server's certificate and key paths.
    fn generate(dir: &std::path::Path) -> (EtcdCerts, std::path::PathBuf, std::path::PathBuf) {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, SanType,
        };
        let write = |name: &str, pem: String| {
            let p = dir.join(name);
            std::fs::write(&p, pem).unwrap();
            p
        };
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::default();
        ca.distinguished_name
            .push(DnType::CommonName, "etcd test CA");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let ca_path = write("ca.pem", ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);
        let leaf = |cn: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::default();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.subject_alt_names = vec![
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
                SanType::DnsName("localhost".try_into().unwrap()),
            ];
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &issuer).unwrap();
            (
                write(&format!("{cn}.pem"), cert.pem()),
                write(&format!("{cn}.key"), key.serialize_pem()),
            )
        };
        let (server_cert, server_key) = leaf("server", ExtendedKeyUsagePurpose::ServerAuth);
        let (cert, key) = leaf("client", ExtendedKeyUsagePurpose::ClientAuth);
        (
            EtcdCerts {
                ca: ca_path,
                cert,
                key,
            },
            server_cert,
            server_key,
        )
    }

    /// The client's TLS options.
    pub fn options(&self) -> etcd_client::TlsOptions {
        etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(
                std::fs::read(&self.ca).unwrap(),
            ))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&self.cert).unwrap(),
                std::fs::read(&self.key).unwrap(),
            ))
    }
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
        Self::start_with(n, false).await
    }

    /// Starts one member serving clients over TLS with client-certificate authentication
    /// (certificates generated in its directory, see [`Etcd::tls`]).
    pub async fn start_tls() -> Etcd {
        Self::start_with(1, true).await
    }

    async fn start_with(n: usize, tls: bool) -> Etcd {
        let bin = std::env::var("CAIRN_ETCD").unwrap_or_else(|_| "etcd".into());
        assert!(
            std::process::Command::new(&bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "`{bin}` not found: install Debian's etcd-server (scripts/setup does) to run the etcd backend tests"
        );
        let dir = tempfile::tempdir().unwrap();
        let (certs, server_files) = if tls {
            let (certs, cert, key) = EtcdCerts::generate(dir.path());
            (Some(certs), Some((cert, key)))
        } else {
            (None, None)
        };
        let scheme = if tls { "https" } else { "http" };
        let ports = free_tcp_ports(2 * n);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let cluster = (0..n)
            .map(|i| format!("m{i}={}", peer(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("cairn-test-{}-{}", std::process::id(), ports[0]);
        let members = (0..n)
            .map(|i| {
                let client_url = format!("{scheme}://127.0.0.1:{}", ports[2 * i]);
                let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).unwrap();
                let mut cmd = std::process::Command::new(&bin);
                if let (Some(certs), Some((cert, key))) = (&certs, &server_files) {
                    cmd.arg("--cert-file")
                        .arg(cert)
                        .arg("--key-file")
                        .arg(key)
                        .arg("--trusted-ca-file")
                        .arg(&certs.ca)
                        .arg("--client-cert-auth");
                }
                let child = ChildGuard::spawn(
                    cmd.args(["--name", &format!("m{i}")])
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
        let etcd = Etcd {
            dir,
            members,
            tls: certs,
        };
        for m in &etcd.members {
            let url = m.client_url.clone();
            let what = format!(
                "etcd at {url} to become ready; logs in {}",
                etcd.dir.path().display()
            );
            Poll::new(&what, Duration::from_secs(60))
                .until_async(|| async {
                    let options = etcd
                        .tls
                        .as_ref()
                        .map(|t| etcd_client::ConnectOptions::new().with_tls(t.options()));
                    let ok = async {
                        let mut c = etcd_client::Client::connect([url.as_str()], options)
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

    /// The process ID of member `i`, while it runs.
    #[allow(dead_code)] // used by the integration tests, which include this file
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(ChildGuard::id)
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        drop(self.members[i].child.take());
    }
}
