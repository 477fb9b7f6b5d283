//! Clients of a real `cairn-hub` (started by `cairn-test-support`'s launcher): operator by
//! bearer token, appliance by client certificate.

#![allow(unreachable_pub)] // a helper module of test binaries: `pub` is how they share it
#![allow(dead_code)] // each test binary uses a different part of this harness

use std::path::Path;
use std::time::Duration;

use cairn_api::{HardwareInventory, Nic, RegistrationRequest, RegistrationResponse};
use cairn_hub_client::tls::{ClientKey, Identity, Trust, client_config};
pub use cairn_test_support::hub::Hub;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use serde_json::{Value, json};

/// How long a hub test waits for a condition.
pub const LIMIT: Duration = Duration::from_secs(30);

pub fn hub_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn-hub")
}

/// A hub in a fresh directory, served with the given extra `serve` arguments.
pub fn start_hub(serve_args: &[&str]) -> Hub {
    Hub::builder(hub_bin()).serve_args(serve_args).start()
}

/// The hub's clients.
pub trait HubClients {
    /// A client without identity.
    fn anonymous(&self) -> reqwest::Client;
    /// An operator client with `token`.
    fn operator(&self, token: &str) -> Operator;
    /// An operator client with the first admin token.
    fn admin(&self) -> Operator;
    /// An appliance client presenting `cert_pem`/`key_pem`.
    fn appliance(&self, cert_pem: &str, key_pem: &str) -> reqwest::Client;
}

impl HubClients for Hub {
    fn anonymous(&self) -> reqwest::Client {
        client(&self.ca_pem, None)
    }

    fn operator(&self, token: &str) -> Operator {
        Operator {
            http: self.anonymous(),
            url: self.url.clone(),
            token: token.to_owned(),
        }
    }

    fn admin(&self) -> Operator {
        self.operator(&self.admin_token)
    }

    fn appliance(&self, cert_pem: &str, key_pem: &str) -> reqwest::Client {
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
                        key: ClientKey::Pem(key.into()),
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

    /// The `/metrics` text, read with this operator's token.
    pub async fn metrics(&self) -> String {
        let r = self
            .http
            .get(format!("{}/metrics", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "reading /metrics");
        r.text().await.unwrap()
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

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// The ID of `cairn-op.<id>.<secret>`.
pub fn token_id(token: &str) -> &str {
    token.split('.').nth(1).unwrap()
}

/// Revoking or deleting the last usable fleet-wide admin token is refused `409 last_admin`
/// whatever other tokens exist (scoped admins, fleet viewers, an expired admin, a revoked
/// one); with a second fleet admin, the first goes.
pub async fn the_last_admin_is_kept(hub: &Hub) {
    let admin = hub.admin();
    let me = token_id(&hub.admin_token).to_owned();
    let create = |body: Value| {
        let admin = &admin;
        async move {
            let (s, body) = admin.post("/v1/operator-tokens", body).await;
            assert_eq!(s, 201, "{body}");
            body["token"].as_str().unwrap().to_owned()
        }
    };
    // Tokens that do not open every admin route do not count.
    create(json!({"name": "site-admin", "role": "admin", "site": "north"})).await;
    create(json!({"name": "fleet-viewer", "role": "viewer"})).await;
    create(json!({"name": "brief", "role": "admin", "ttl_seconds": 1})).await;
    let revoked = create(json!({"name": "gone", "role": "admin"})).await;
    let (s, body) = admin
        .post(
            &format!("/v1/operator-tokens/{}/revoke", token_id(&revoked)),
            json!({}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let refused = |(s, body): (u16, Value)| {
        assert_eq!(
            (s, body["error"].as_str()),
            (409, Some("last_admin")),
            "{body}"
        );
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains("create another admin token first"),
            "{message}"
        );
    };
    refused(
        admin
            .post(&format!("/v1/operator-tokens/{me}/revoke"), json!({}))
            .await,
    );
    refused(
        admin
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/operator-tokens/{me}"),
                None,
            )
            .await,
    );
    // Still works: nothing was changed.
    assert_eq!(admin.get("/v1/operator-tokens").await.0, 200);

    // With a second fleet admin the first may go; then the second is the last.
    let second = hub.operator(&create(json!({"name": "second", "role": "admin"})).await);
    let (s, body) = second
        .post(&format!("/v1/operator-tokens/{me}/revoke"), json!({}))
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(admin.get("/v1/operator-tokens").await.0, 401);
    let other = token_id(&second.token).to_owned();
    refused(
        second
            .call(
                reqwest::Method::DELETE,
                &format!("/v1/operator-tokens/{other}"),
                None,
            )
            .await,
    );
    // A revoked admin token is no admin: deleting it is fine.
    let (s, body) = second
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/operator-tokens/{me}"),
            None,
        )
        .await;
    assert!(s < 300, "{s} {body}");
    assert_eq!(second.get("/v1/operator-tokens").await.0, 200);
}

/// The state letter of a process (`/proc/PID/stat`): `Z` once it died unreaped, `T` stopped.
pub fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE ...": the command may hold spaces, the last ')' ends it.
    stat.rsplit_once(") ")?.1.chars().next()
}

/// Appliances registered with one token, each reporting its VTEP: the members of the VPC
/// overlay tests.
pub struct Overlay {
    /// Each member's key, registration and VTEP address.
    pub members: Vec<(Device, RegistrationResponse, String)>,
}

impl Overlay {
    /// Registers `n` appliances on `hub`, `{name}{i}` with MAC `{mac_prefix}:{i}` and VTEP
    /// `{vtep_net}.{i}` (i from 1), and sends a first heartbeat for each.
    pub async fn register(
        hub: &Hub,
        n: usize,
        name: &str,
        mac_prefix: &str,
        vtep_net: &str,
    ) -> Overlay {
        let token = hub.admin().enrollment_token("lab", n as u32).await;
        let mut members = Vec::new();
        for i in 1..=n {
            let d = Device::new(
                &format!("{name}{i}"),
                &format!("{}-{i}", name.to_ascii_uppercase()),
                &[&format!("{mac_prefix}:{i:02x}")],
            );
            let reg = d.register(hub, &token).await;
            members.push((d, reg, format!("{vtep_net}.{i}")));
        }
        let overlay = Overlay { members };
        for i in 0..n {
            overlay.beat(hub, i).await;
        }
        overlay
    }

    /// Member `i`'s heartbeat through `hub`; the desired state it is answered.
    pub async fn beat(&self, hub: &Hub, i: usize) -> Value {
        let (d, reg, vtep) = &self.members[i];
        let (s, answer) = post(
            &d.client(hub, reg),
            format!("{}/v1/heartbeats", hub.url),
            &heartbeat(0, Some(vtep)),
        )
        .await;
        assert_eq!(s, 200, "{answer}");
        answer["desired"].clone()
    }

    /// Attaches member `i` to VPC `vpc` as `op`: the transport's result (a hub that dies
    /// answers nothing).
    pub async fn attach(
        &self,
        op: &Operator,
        vpc: &str,
        i: usize,
    ) -> reqwest::Result<reqwest::Response> {
        op.http
            .post(format!("{}/v1/vpcs/{vpc}/attach", op.url))
            .bearer_auth(&op.token)
            .json(&json!({"appliance_id": self.members[i].1.appliance_id}))
            .send()
            .await
    }
}

/// `cairn hub ...` as an operator runs it: the client's own CLI, its configuration in a
/// temporary directory, logged in to a hub with the hub's first admin token.
pub struct OperatorCli {
    dir: tempfile::TempDir,
}

#[derive(clap::Parser)]
struct CliArgs {
    #[command(flatten)]
    hub: cairn_hub_client::cli::HubArgs,
}

impl OperatorCli {
    /// `cairn hub login` with the hub's pinned CA fingerprint; panics unless it succeeds.
    pub async fn login(hub: &Hub) -> OperatorCli {
        let cli = OperatorCli {
            dir: tempfile::tempdir().unwrap(),
        };
        let token_file = cli.dir.path().join("admin.token");
        std::fs::write(&token_file, &hub.admin_token).unwrap();
        let login = [
            "login",
            "--url",
            &hub.url,
            "--ca-fingerprint",
            &hub.fingerprint,
            "--token-file",
            token_file.to_str().unwrap(),
        ];
        assert_eq!(
            cli.run(&login).await.unwrap(),
            cairn_api::cli::Exit::Success
        );
        cli
    }

    /// A directory for the files a test hands to the CLI; it lives as long as `self`.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// One `cairn hub ARGS...` command.
    pub async fn run(&self, args: &[&str]) -> anyhow::Result<cairn_api::cli::Exit> {
        use clap::Parser;
        let config = self.dir.path().join("hub.json");
        let mut full = vec!["cairn-hub-test", "--config", config.to_str().unwrap()];
        full.extend(args);
        CliArgs::parse_from(full).hub.run().await
    }
}
