//! A real `cairn-hub` process for tests: `init` in a temp dir, `serve` on port 0, killed and
//! reaped on drop; plus clients (operator by bearer token, appliance by client certificate).

#![allow(dead_code)] // each test binary uses a different part of this harness

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_api::{HardwareInventory, Nic, RegistrationRequest, RegistrationResponse};
use cairn_hub_client::tls::{Identity, Trust, client_config};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::{Value, json};

/// A running hub.
pub struct Hub {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub admin_token: String,
    pub fingerprint: String,
    pub ca_pem: String,
    child: Child,
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn hub_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn-hub")
}

/// Runs `cairn-hub init` in a fresh directory.
pub fn init() -> (tempfile::TempDir, String, String) {
    init_with(&[])
}

/// `cairn-hub init` with extra arguments (e.g. `--etcd-endpoints`).
pub fn init_with(extra: &[&str]) -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    let out = Command::new(hub_bin())
        .args(["init", "--output", "json", "--data"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-file")
        .arg(&token_file)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_owned();
    (dir, v["ca_fingerprint"].as_str().unwrap().to_owned(), token)
}

impl Hub {
    /// `init` then `serve` with fast heartbeat settings and the given extra arguments.
    pub fn start(extra: &[&str]) -> Hub {
        let (dir, fingerprint, admin_token) = init();
        Self::serve(dir, fingerprint, admin_token, extra)
    }

    pub fn serve(
        dir: tempfile::TempDir,
        fingerprint: String,
        admin_token: String,
        extra: &[&str],
    ) -> Hub {
        let data = dir.path().join("data");
        let mut child = Command::new(hub_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"))
            .to_owned();
        let ca_pem = std::fs::read_to_string(data.join("ca.pem")).unwrap();
        Hub {
            dir,
            url,
            admin_token,
            fingerprint,
            ca_pem,
            child,
        }
    }

    /// A second hub process on a copy of this one's data directory (same CA).
    pub fn replica(&self, extra: &[&str]) -> Hub {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        for f in ["ca.pem", "ca.key", "server.pem", "server.key"] {
            std::fs::copy(self.data().join(f), data.join(f)).unwrap();
        }
        Self::serve(
            dir,
            self.fingerprint.clone(),
            self.admin_token.clone(),
            extra,
        )
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A client without identity.
    pub fn anonymous(&self) -> reqwest::Client {
        client(&self.ca_pem, None)
    }

    /// An operator client with `token`.
    pub fn operator(&self, token: &str) -> Operator {
        Operator {
            http: self.anonymous(),
            url: self.url.clone(),
            token: token.to_owned(),
        }
    }

    pub fn admin(&self) -> Operator {
        self.operator(&self.admin_token)
    }

    /// An appliance client presenting `cert_pem`/`key_pem`.
    pub fn appliance(&self, cert_pem: &str, key_pem: &str) -> reqwest::Client {
        client(&self.ca_pem, Some((cert_pem, key_pem)))
    }
}

pub fn client(ca_pem: &str, identity: Option<(&str, &str)>) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(
            client_config(
                &Trust::CaBundle(ca_pem.into()),
                identity
                    .map(|(cert, key)| Identity {
                        certificate_pem: cert.into(),
                        key_pem: key.into(),
                    })
                    .as_ref(),
            )
            .unwrap()
            .0,
        )
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub struct Operator {
    pub http: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Operator {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates an enrollment token and returns it in clear.
    pub async fn enrollment_token(&self, site: &str, max_uses: u32) -> String {
        let (status, body) = self
            .post("/v1/tokens", json!({"site": site, "ttl_seconds": 3600, "max_uses": max_uses, "labels": {"rack": "r1"}}))
            .await;
        assert_eq!(status, 201, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }
}

/// An appliance's key and what it sends.
pub struct Device {
    pub key: KeyPair,
    pub hostname: String,
    pub inventory: HardwareInventory,
}

impl Device {
    pub fn new(hostname: &str, serial: &str, macs: &[&str]) -> Device {
        Device {
            key: KeyPair::generate().unwrap(),
            hostname: hostname.into(),
            inventory: HardwareInventory {
                manufacturer: "QEMU".into(),
                model: "Standard PC".into(),
                serial: serial.into(),
                nics: macs
                    .iter()
                    .enumerate()
                    .map(|(i, m)| Nic {
                        name: format!("eth{i}"),
                        mac: (*m).into(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        }
    }

    pub fn csr(&self, cn: &str) -> String {
        csr(cn, &self.key)
    }

    pub fn request(&self, token: &str) -> RegistrationRequest {
        RegistrationRequest {
            token: token.into(),
            csr_pem: self.csr(&self.hostname),
            hostname: self.hostname.clone(),
            inventory: self.inventory.clone(),
            agent_version: "0.1.0".into(),
        }
    }

    /// Registers and returns the answer; panics on refusal.
    pub async fn register(&self, hub: &Hub, token: &str) -> RegistrationResponse {
        let resp = hub
            .anonymous()
            .post(format!("{}/v1/registrations", hub.url))
            .json(&self.request(token))
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert_eq!(status, 201, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    pub fn client(&self, hub: &Hub, reg: &RegistrationResponse) -> reqwest::Client {
        hub.appliance(&reg.certificate_pem, &self.key.serialize_pem())
    }
}

pub fn csr(cn: &str, key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.serialize_request(key).unwrap().pem().unwrap()
}

/// A heartbeat body.
pub fn heartbeat(applied: u64, vtep: Option<&str>) -> Value {
    json!({
        "applied_generation": applied,
        "status": {
            "agent_version": "0.1.0",
            "os_version": "cairn-1",
            "uptime_seconds": 5,
            "conditions": [{"kind": "Registered", "status": "True"}],
            "counters": {"reconnects": 0},
            "vtep_address": vtep,
            "observed_at": "2026-01-01T00:00:00Z"
        }
    })
}

/// POSTs JSON, returns (status, body).
pub async fn post(http: &reqwest::Client, url: String, body: &Value) -> (u16, Value) {
    let resp = http.post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Polls every 50 ms for up to 30 s.
pub async fn poll<T, F: std::future::Future<Output = Option<T>>>(
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

pub fn exists(p: &Path) -> bool {
    p.exists()
}
