//! `cairn hub ...`: the operator's client for the hub API, and the TLS set-up every hub
//! client shares (operator CLI, tests, the load generator).

use std::sync::Arc;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use cairn_api::cli::{Exit, OutputFormat};
use clap::{Args, Subcommand};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Errors building a client's TLS settings.
#[derive(Debug, thiserror::Error)]
pub enum ClientTlsError {
    /// A PEM block could not be parsed.
    #[error("{what}: {message}")]
    Pem {
        /// Which input.
        what: &'static str,
        /// Why.
        message: String,
    },
    /// rustls refused the settings.
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
}

/// A rustls client configuration trusting only `ca_pem`, presenting `identity`
/// (certificate PEM, private key PEM) when given.
pub fn tls_config(
    ca_pem: &str,
    identity: Option<(&str, &str)>,
) -> Result<rustls::ClientConfig, ClientTlsError> {
    let pem = |what: &'static str| {
        move |e: rustls::pki_types::pem::Error| ClientTlsError::Pem {
            what,
            message: e.to_string(),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(pem("hub CA"))?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let config = match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(pem("client certificate"))?;
            let key =
                PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(pem("client key"))?;
            builder.with_client_auth_cert(chain, key)?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(config)
}

/// Talk to a cairn hub: enrollment tokens, appliances, control planes, VPCs, audit.
///
/// First `cairn hub login --url https://hub:8443 --ca-fingerprint sha256:... --token-file
/// admin.token` (the fingerprint and token come from `cairn-hub init`); every other command
/// then uses the saved login.
#[derive(Debug, Args)]
pub struct HubArgs {
    /// Where the login is saved.
    #[arg(long, global = true, value_name = "FILE", env = "CAIRN_HUB_CONFIG")]
    config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
    #[command(subcommand)]
    command: HubClientCommand,
}

#[derive(Debug, Subcommand)]
enum HubClientCommand {
    /// Check the hub against its CA fingerprint and save its URL, CA and your token.
    Login {
        /// Hub URL, `https://host:port`.
        #[arg(long)]
        url: String,
        /// The CA fingerprint `cairn-hub init` printed (`sha256:<hex>`).
        #[arg(long, value_name = "FP")]
        ca_fingerprint: String,
        /// File holding your operator token (never pass tokens on the command line).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
    },
    /// Enrollment tokens appliances register with.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Appliances in the fleet.
    #[command(subcommand)]
    Appliances(ApplianceCommand),
    /// Hosted Kubernetes control planes appliances join.
    #[command(subcommand, name = "control-planes")]
    ControlPlanes(ControlPlaneCommand),
    /// VPC overlays.
    #[command(subcommand)]
    Vpcs(VpcCommand),
    /// Signed OS releases the hub can roll out.
    #[command(subcommand)]
    Releases(ReleaseCommand),
    /// Upgrade campaigns: canaries, batches, automatic pause on failures.
    #[command(subcommand)]
    Campaigns(CampaignCommand),
    /// The audit log: who did what, when, from where.
    Audit {
        /// Entries at or after this RFC 3339 time (default: the last 24 hours).
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token; it is shown once.
    Create {
        /// Site the appliances join.
        #[arg(long)]
        site: String,
        /// Validity in seconds.
        #[arg(long, default_value_t = 86400)]
        ttl_seconds: u64,
        /// How many appliances may register with it.
        #[arg(long, default_value_t = 1)]
        max_uses: u32,
        /// Label given to enrolled appliances, `key=value` (repeat).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
    /// List tokens (secrets are never shown again).
    List,
    /// Revoke a token by ID.
    Revoke {
        /// Token ID (the middle part of `cairn-et.<id>.<secret>`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ApplianceCommand {
    /// List appliances with their state.
    List {
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
    },
    /// Show one appliance in full.
    Show {
        /// Appliance ID.
        id: String,
    },
    /// Set (`key=value`) or remove (`key-`) labels.
    Label {
        /// Appliance ID.
        id: String,
        /// `key=value` or `key-`.
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Delete an appliance; its certificate stops working at once.
    Delete {
        /// Appliance ID.
        id: String,
    },
    /// Allow campaigns to order a version this appliance rolled back from (or refused, or
    /// was interrupted installing) again.
    Unquarantine {
        /// Appliance ID.
        id: String,
        /// The quarantined version.
        version: String,
    },
    /// Clear the flag set when the appliance came back on a version nobody ordered.
    ClearFlag {
        /// Appliance ID.
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ReleaseCommand {
    /// Add a release from a signed bundle (`cairn image sign`). The hub verifies the
    /// Ed25519 signature inside the bundle against its trusted release keys
    /// (`cairn-hub init/serve --trusted-release-key`) and every payload byte against the
    /// signed manifest, and refuses the release otherwise. It then serves the bundle to
    /// appliances itself.
    Add {
        /// A local bundle file (uploaded) or an `https://` URL the hub downloads once.
        #[arg(long, value_name = "FILE|URL")]
        bundle: String,
        /// SHA-256 of the bundle file (`sha256sum`), checked by the hub.
        #[arg(long, value_name = "HEX")]
        sha256: String,
    },
    /// List releases: version, size, compatible-from, signing key.
    List,
    /// Show one release.
    Show {
        /// Version.
        version: String,
    },
    /// Delete a release (refused while a campaign that is not over uses it).
    Delete {
        /// Version.
        version: String,
    },
}

#[derive(Debug, Subcommand)]
enum CampaignCommand {
    /// Create a campaign (not started): picks the appliances now, lays out canaries and
    /// batches. Quarantined and flagged appliances are listed as skipped.
    ///
    /// Example: `cairn hub campaigns create nov --release 2026.11.2 --selector site=dc1,role=edge
    /// --canaries 1 --batch-size 10 --max-failures 1 --window 22:00-04:00 --prestage`
    Create {
        /// Campaign name (a-z, 0-9, '-'); default: `rollout-<version>-<time>`.
        name: Option<String>,
        /// Release version to roll out.
        #[arg(long)]
        release: String,
        /// `site=X,key=value,...`: the site and labels appliances must have (default: every
        /// appliance in your scope).
        #[arg(long, value_name = "SELECTOR", default_value = "")]
        selector: String,
        /// Appliances upgraded first, alone; nothing else starts until they finished.
        #[arg(long, value_name = "N", default_value_t = 0)]
        canaries: u32,
        /// Fixed batches of N: the next starts when the current one finished.
        #[arg(long, value_name = "N", conflicts_with = "max_concurrency")]
        batch_size: Option<u32>,
        /// A rolling window: at most N appliances upgrading at any time.
        #[arg(long, value_name = "N")]
        max_concurrency: Option<u32>,
        /// Pause the campaign when more than N appliances failed.
        #[arg(long, value_name = "N", default_value_t = 0)]
        max_failures: u32,
        /// Install only between these times each day, in each appliance's local time.
        #[arg(long, value_name = "HH:MM-HH:MM")]
        window: Option<String>,
        /// Let appliances download and verify the bundle ahead of the window.
        #[arg(long)]
        prestage: bool,
        /// Allow installing a version older than the one running.
        #[arg(long)]
        allow_downgrade: bool,
        /// Count an appliance as failed when it has not finished this long after its order
        /// (default: an offline appliance keeps its order pending until it returns).
        #[arg(long, value_name = "SECONDS")]
        deadline_seconds: Option<u64>,
    },
    /// Start ordering: canaries first.
    Start {
        /// Campaign name.
        name: String,
    },
    /// Order no new appliance; those upgrading finish.
    Pause {
        /// Campaign name.
        name: String,
    },
    /// Continue a paused campaign.
    Resume {
        /// Campaign name.
        name: String,
    },
    /// Stop for good: withdraw orders nodes have not acted on.
    Abort {
        /// Campaign name.
        name: String,
    },
    /// Progress per batch and per appliance.
    Show {
        /// Campaign name.
        name: String,
    },
    /// List campaigns.
    List,
}

#[derive(Debug, Subcommand)]
enum ControlPlaneCommand {
    /// Register a control plane.
    Add {
        /// Unique name.
        #[arg(long)]
        name: String,
        /// API server URL, `https://...`.
        #[arg(long)]
        api_server: String,
        /// The API server's CA bundle (PEM file).
        #[arg(long, value_name = "FILE")]
        ca_file: PathBuf,
        /// Path, on the hub's machine, of a bearer token file allowed to create Secrets in
        /// kube-system.
        #[arg(long, value_name = "PATH")]
        credentials_ref: String,
    },
    /// List control planes.
    List,
    /// Assign appliances by site and/or labels; matching appliances join now.
    Assign {
        /// Control plane name.
        name: String,
        /// Appliances of this site.
        #[arg(long)]
        site: Option<String>,
        /// Appliances with this label, `key=value` (repeat).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
        labels: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
enum VpcCommand {
    /// Create a VPC; the hub picks a unique VNI.
    Create {
        /// Unique name.
        name: String,
        /// IPv4 subnet, CIDR.
        #[arg(long)]
        subnet: String,
    },
    /// List VPCs.
    List,
    /// Attach an appliance.
    Attach {
        /// VPC name.
        name: String,
        /// Appliance ID.
        appliance: String,
    },
    /// Detach an appliance.
    Detach {
        /// VPC name.
        name: String,
        /// Appliance ID.
        appliance: String,
    },
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected key=value"))?;
    if k.is_empty() {
        return Err(format!("{s:?}: empty key"));
    }
    Ok((k.to_owned(), v.to_owned()))
}

/// The saved login.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    url: String,
    ca_fingerprint: String,
    ca_pem: String,
    token: String,
}

fn config_path(given: &Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.clone());
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set; pass --config")?;
    Ok(base.join("cairn").join("hub.json"))
}

fn save_login(path: &Path, login: &Login) -> anyhow::Result<()> {
    // The login holds a bearer token: 0600 even over an older, looser file.
    cairn_formats::fsio::atomic_write_mode(
        path,
        serde_json::to_string_pretty(login)?.as_bytes(),
        0o600,
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// Accepts any server certificate: used only by `login` to fetch the CA bundle, which is
/// then checked against the fingerprint the operator typed. Nothing secret is sent on that
/// connection.
#[derive(Debug)]
struct FetchCaOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for FetchCaOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn http_client(config: rustls::ClientConfig) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .context("building the HTTP client")
}

/// The fingerprint of the first certificate in a PEM bundle.
fn pem_fingerprint(pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .context("the hub sent no CA certificate")?
        .context("the hub's CA certificate is not valid PEM")?;
    Ok(format!(
        "sha256:{}",
        hex::encode(Sha256::digest(der.as_ref()))
    ))
}

struct Session {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Session {
    fn open(config: &Option<PathBuf>) -> anyhow::Result<Self> {
        let path = config_path(config)?;
        let raw = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {} (run `cairn hub login` first)", path.display()))?;
        let login: Login =
            serde_json::from_str(&raw).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Self {
            http: http_client(tls_config(&login.ca_pem, None)?)?,
            url: login.url.trim_end_matches('/').to_owned(),
            token: login.token,
        })
    }

    /// Calls the API; `Err` for transport failures, `Ok(Err(message))` for refusals.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Result<Value, String>> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.url))?;
        Self::answer(resp).await
    }

    async fn answer(resp: reqwest::Response) -> anyhow::Result<Result<Value, String>> {
        let status = resp.status();
        let text = resp.text().await.context("reading the hub's answer")?;
        let value: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        if status.is_success() {
            Ok(Ok(value))
        } else {
            let message = value["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| value.to_string());
            Ok(Err(format!("hub answered {status}: {message}")))
        }
    }
}

/// `cairn hub campaigns show` as text: the campaign, its batches, its appliances.
fn show_campaign(v: &Value) {
    println!(
        "campaign {}: release {}, {}{}",
        s(&v["name"]),
        s(&v["release"]),
        s(&v["state"]),
        v["state_reason"]
            .as_str()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default()
    );
    println!(
        "failures {} (max {}), window {}, prestage {}",
        s(&v["failures"]),
        s(&v["max_failures"]),
        v["window"]
            .as_object()
            .map(|w| format!("{}-{}", s(&w["start"]), s(&w["end"])))
            .unwrap_or_else(|| "any time".into()),
        s(&v["prestage"])
    );
    println!();
    table(
        &["batch", "kind", "progress"],
        rows(&v["batches"], &["/index", "/kind", "/counts"]),
    );
    println!();
    table(
        &["appliance", "batch", "state", "phase", "from", "reason"],
        rows(
            &v["members"],
            &[
                "/appliance",
                "/batch",
                "/state",
                "/phase",
                "/from_version",
                "/reason",
            ],
        ),
    );
}

/// Parses `site=X,key=value,...`: `site` picks the site, every other key a label.
pub fn parse_selector(s: &str) -> Result<(Option<String>, BTreeMap<String, String>), String> {
    let (mut site, mut labels) = (None, BTreeMap::new());
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("selector part {part:?}: expected key=value"))?;
        let (k, v) = (k.trim(), v.trim());
        if k.is_empty() || v.is_empty() {
            return Err(format!("selector part {part:?}: empty key or value"));
        }
        if k == "site" {
            site = Some(v.to_owned());
        } else {
            labels.insert(k.to_owned(), v.to_owned());
        }
    }
    Ok((site, labels))
}

/// Parses a daily maintenance window `HH:MM-HH:MM` (may span midnight).
pub fn parse_window(s: &str) -> Result<cairn_api::MaintenanceWindow, String> {
    let (start, end) = s
        .split_once('-')
        .ok_or_else(|| format!("window {s:?}: expected HH:MM-HH:MM"))?;
    for t in [start, end] {
        let ok = t.len() == 5
            && t.as_bytes()[2] == b':'
            && t[..2]
                .bytes()
                .chain(t[3..].bytes())
                .all(|b| b.is_ascii_digit())
            && t[..2].parse::<u8>().is_ok_and(|h| h < 24)
            && t[3..].parse::<u8>().is_ok_and(|m| m < 60);
        if !ok {
            return Err(format!(
                "window {s:?}: {t:?} is not a time HH:MM (00:00 to 23:59)"
            ));
        }
    }
    Ok(cairn_api::MaintenanceWindow {
        start: start.into(),
        end: end.into(),
    })
}

impl Session {
    /// Uploads a file as the request body, streamed.
    async fn upload(&self, path_q: &str, file: &Path) -> anyhow::Result<Result<Value, String>> {
        let f = tokio::fs::File::open(file)
            .await
            .with_context(|| format!("opening {}", file.display()))?;
        let resp = self
            .http
            .post(format!("{}{path_q}", self.url))
            .bearer_auth(&self.token)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::from(f))
            .send()
            .await
            .with_context(|| format!("uploading {} to {}", file.display(), self.url))?;
        Self::answer(resp).await
    }
}

/// Prints rows as aligned columns.
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", s(v)))
            .collect::<Vec<_>>()
            .join(","),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

fn rows(v: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    v.as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    fields
                        .iter()
                        .map(|f| s(i.pointer(f).unwrap_or(&Value::Null)))
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default()
}

impl HubArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        let command = match self.command {
            HubClientCommand::Login {
                url,
                ca_fingerprint,
                token_file,
            } => {
                return login(
                    &self.config,
                    &url,
                    &ca_fingerprint,
                    &token_file,
                    self.output,
                )
                .await;
            }
            other => other,
        };
        let session = Session::open(&self.config)?;
        use reqwest::Method as M;
        let (result, show): (Result<Value, String>, fn(&Value)) = match command {
            HubClientCommand::Login { .. } => return Ok(Exit::Usage),
            HubClientCommand::Token(TokenCommand::Create {
                site,
                ttl_seconds,
                max_uses,
                labels,
            }) => {
                let labels: BTreeMap<String, String> = labels.into_iter().collect();
                let body = json!({"site": site, "ttl_seconds": ttl_seconds, "max_uses": max_uses, "labels": labels});
                (
                    session.call(M::POST, "/v1/tokens", Some(body)).await?,
                    |v| {
                        println!("token (shown once): {}", s(&v["token"]));
                        println!(
                            "site {}, {} uses, expires {}",
                            s(&v["site"]),
                            s(&v["max_uses"]),
                            s(&v["expires_at"])
                        );
                    },
                )
            }
            HubClientCommand::Token(TokenCommand::List) => {
                (session.call(M::GET, "/v1/tokens", None).await?, |v| {
                    table(
                        &["id", "site", "uses", "max", "expires", "revoked", "labels"],
                        rows(
                            v,
                            &[
                                "/id",
                                "/site",
                                "/uses",
                                "/max_uses",
                                "/expires_at",
                                "/revoked",
                                "/labels",
                            ],
                        ),
                    )
                })
            }
            HubClientCommand::Token(TokenCommand::Revoke { id }) => (
                session
                    .call(M::DELETE, &format!("/v1/tokens/{id}"), None)
                    .await?,
                |v| println!("revoked {}", s(&v["id"])),
            ),
            HubClientCommand::Appliances(ApplianceCommand::List { site }) => {
                let path = match site {
                    Some(site) => format!("/v1/appliances?site={site}"),
                    None => "/v1/appliances".into(),
                };
                (session.call(M::GET, &path, None).await?, |v| {
                    table(
                        &[
                            "id",
                            "hostname",
                            "site",
                            "state",
                            "last seen",
                            "generation",
                            "os",
                            "slot",
                            "last upgrade",
                            "flag",
                            "labels",
                        ],
                        rows(
                            v,
                            &[
                                "/id",
                                "/hostname",
                                "/site",
                                "/state",
                                "/status/last_seen",
                                "/desired/generation",
                                "/status/status/os_version",
                                "/status/status/booted_slot",
                                "/status/status/upgrade/phase",
                                "/upgrade_flag",
                                "/labels",
                            ],
                        ),
                    )
                })
            }
            HubClientCommand::Appliances(ApplianceCommand::Show { id }) => (
                session
                    .call(M::GET, &format!("/v1/appliances/{id}"), None)
                    .await?,
                |v| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            ),
            HubClientCommand::Appliances(ApplianceCommand::Label { id, changes }) => {
                let mut labels = serde_json::Map::new();
                for c in changes {
                    if let Some(k) = c.strip_suffix('-').filter(|_| !c.contains('=')) {
                        labels.insert(k.to_owned(), Value::Null);
                    } else {
                        let (k, v) = parse_label(&c).map_err(anyhow::Error::msg)?;
                        labels.insert(k, Value::String(v));
                    }
                }
                (
                    session
                        .call(
                            M::PUT,
                            &format!("/v1/appliances/{id}/labels"),
                            Some(json!({"labels": labels})),
                        )
                        .await?,
                    |v| println!("{} labels: {}", s(&v["id"]), s(&v["labels"])),
                )
            }
            HubClientCommand::Appliances(ApplianceCommand::Delete { id }) => (
                session
                    .call(M::DELETE, &format!("/v1/appliances/{id}"), None)
                    .await?,
                |_| println!("deleted"),
            ),
            HubClientCommand::ControlPlanes(ControlPlaneCommand::Add {
                name,
                api_server,
                ca_file,
                credentials_ref,
            }) => {
                let ca = std::fs::read_to_string(&ca_file)
                    .with_context(|| format!("reading {}", ca_file.display()))?;
                let body = json!({"name": name, "api_server_url": api_server, "ca_bundle_pem": ca, "credentials_ref": credentials_ref});
                (
                    session
                        .call(M::POST, "/v1/control-planes", Some(body))
                        .await?,
                    |v| println!("added control plane {}", s(&v["name"])),
                )
            }
            HubClientCommand::ControlPlanes(ControlPlaneCommand::List) => (
                session.call(M::GET, "/v1/control-planes", None).await?,
                |v| {
                    table(
                        &["name", "api server", "site", "labels"],
                        rows(v, &["/name", "/api_server_url", "/site", "/labels"]),
                    )
                },
            ),
            HubClientCommand::ControlPlanes(ControlPlaneCommand::Assign { name, site, labels }) => {
                let labels: BTreeMap<String, String> = labels.into_iter().collect();
                (
                    session
                        .call(
                            M::POST,
                            &format!("/v1/control-planes/{name}/assign"),
                            Some(json!({"site": site, "labels": labels})),
                        )
                        .await?,
                    |v| {
                        println!("joined: {}", s(&v["assigned"]));
                        for f in v["failed"].as_array().into_iter().flatten() {
                            println!("failed: {}: {}", s(&f[0]), s(&f[1]));
                        }
                    },
                )
            }
            HubClientCommand::Vpcs(VpcCommand::Create { name, subnet }) => (
                session
                    .call(
                        M::POST,
                        "/v1/vpcs",
                        Some(json!({"name": name, "subnet": subnet})),
                    )
                    .await?,
                |v| println!("created VPC {} (VNI {})", s(&v["name"]), s(&v["vni"])),
            ),
            HubClientCommand::Vpcs(VpcCommand::List) => {
                (session.call(M::GET, "/v1/vpcs", None).await?, |v| {
                    table(
                        &["name", "subnet", "vni", "members"],
                        rows(v, &["/name", "/subnet", "/vni", "/members"]),
                    )
                })
            }
            HubClientCommand::Vpcs(VpcCommand::Attach { name, appliance }) => (
                session
                    .call(
                        M::POST,
                        &format!("/v1/vpcs/{name}/attach"),
                        Some(json!({"appliance_id": appliance})),
                    )
                    .await?,
                |v| println!("{} members: {}", s(&v["name"]), s(&v["members"])),
            ),
            HubClientCommand::Vpcs(VpcCommand::Detach { name, appliance }) => (
                session
                    .call(
                        M::POST,
                        &format!("/v1/vpcs/{name}/detach"),
                        Some(json!({"appliance_id": appliance})),
                    )
                    .await?,
                |v| println!("{} members: {}", s(&v["name"]), s(&v["members"])),
            ),
            HubClientCommand::Appliances(ApplianceCommand::Unquarantine { id, version }) => (
                session
                    .call(
                        M::DELETE,
                        &format!("/v1/appliances/{id}/quarantine/{version}"),
                        None,
                    )
                    .await?,
                |v| println!("{} quarantined: {}", s(&v["id"]), s(&v["quarantined"])),
            ),
            HubClientCommand::Appliances(ApplianceCommand::ClearFlag { id }) => (
                session
                    .call(
                        M::DELETE,
                        &format!("/v1/appliances/{id}/upgrade-flag"),
                        None,
                    )
                    .await?,
                |v| println!("{} flag cleared", s(&v["id"])),
            ),
            HubClientCommand::Releases(ReleaseCommand::Add { bundle, sha256 }) => {
                let result = if bundle.starts_with("https://") || bundle.starts_with("http://") {
                    session
                        .call(
                            M::POST,
                            "/v1/releases",
                            Some(json!({"url": bundle, "sha256": sha256})),
                        )
                        .await?
                } else {
                    session
                        .upload(
                            &format!("/v1/releases/upload?sha256={sha256}"),
                            Path::new(&bundle),
                        )
                        .await?
                };
                (result, |v| {
                    println!(
                        "release {} added ({} bytes, signed by key {})",
                        s(&v["version"]),
                        s(&v["size_bytes"]),
                        s(&v["signing_key"])
                    )
                })
            }
            HubClientCommand::Releases(ReleaseCommand::List) => {
                (session.call(M::GET, "/v1/releases", None).await?, |v| {
                    table(
                        &[
                            "version",
                            "size",
                            "compatible from",
                            "signing key",
                            "arch",
                            "added",
                        ],
                        rows(
                            v,
                            &[
                                "/version",
                                "/size_bytes",
                                "/compatible_from",
                                "/signing_key",
                                "/architecture",
                                "/added_at",
                            ],
                        ),
                    )
                })
            }
            HubClientCommand::Releases(ReleaseCommand::Show { version }) => (
                session
                    .call(M::GET, &format!("/v1/releases/{version}"), None)
                    .await?,
                |v| println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
            ),
            HubClientCommand::Releases(ReleaseCommand::Delete { version }) => (
                session
                    .call(M::DELETE, &format!("/v1/releases/{version}"), None)
                    .await?,
                |_| println!("deleted"),
            ),
            HubClientCommand::Campaigns(CampaignCommand::Create {
                name,
                release,
                selector,
                canaries,
                batch_size,
                max_concurrency,
                max_failures,
                window,
                prestage,
                allow_downgrade,
                deadline_seconds,
            }) => {
                let (site, labels) = parse_selector(&selector).map_err(anyhow::Error::msg)?;
                let window = window
                    .map(|w| parse_window(&w))
                    .transpose()
                    .map_err(anyhow::Error::msg)?;
                let name = name.unwrap_or_else(|| {
                    let version: String = release
                        .to_ascii_lowercase()
                        .chars()
                        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                        .collect();
                    let at = time::OffsetDateTime::now_utc();
                    format!(
                        "rollout-{version}-{:04}{:02}{:02}{:02}{:02}{:02}",
                        at.year(),
                        u8::from(at.month()),
                        at.day(),
                        at.hour(),
                        at.minute(),
                        at.second()
                    )
                });
                let body = json!({
                    "name": name, "release": release,
                    "selector": {"site": site, "labels": labels},
                    "canaries": canaries, "batch_size": batch_size,
                    "max_concurrency": max_concurrency, "max_failures": max_failures,
                    "window": window, "prestage": prestage, "allow_downgrade": allow_downgrade,
                    "deadline_seconds": deadline_seconds,
                });
                (
                    session.call(M::POST, "/v1/campaigns", Some(body)).await?,
                    show_campaign,
                )
            }
            HubClientCommand::Campaigns(
                action @ (CampaignCommand::Start { .. }
                | CampaignCommand::Pause { .. }
                | CampaignCommand::Resume { .. }
                | CampaignCommand::Abort { .. }),
            ) => {
                let (verb, name) = match action {
                    CampaignCommand::Start { name } => ("start", name),
                    CampaignCommand::Pause { name } => ("pause", name),
                    CampaignCommand::Resume { name } => ("resume", name),
                    CampaignCommand::Abort { name } => ("abort", name),
                    _ => unreachable!("matched above"),
                };
                (
                    session
                        .call(M::POST, &format!("/v1/campaigns/{name}/{verb}"), None)
                        .await?,
                    show_campaign,
                )
            }
            HubClientCommand::Campaigns(CampaignCommand::Show { name }) => (
                session
                    .call(M::GET, &format!("/v1/campaigns/{name}"), None)
                    .await?,
                show_campaign,
            ),
            HubClientCommand::Campaigns(CampaignCommand::List) => {
                (session.call(M::GET, "/v1/campaigns", None).await?, |v| {
                    table(
                        &["name", "release", "state", "members", "failures", "reason"],
                        v.as_array()
                            .map(|cs| {
                                cs.iter()
                                    .map(|c| {
                                        vec![
                                            s(&c["name"]),
                                            s(&c["release"]),
                                            s(&c["state"]),
                                            c["members"].as_array().map_or(0, Vec::len).to_string(),
                                            s(&c["failures"]),
                                            s(&c["state_reason"]),
                                        ]
                                    })
                                    .collect()
                            })
                            .unwrap_or_default(),
                    )
                })
            }
            HubClientCommand::Audit { since } => {
                let path = match since {
                    Some(t) => {
                        time::OffsetDateTime::parse(
                            &t,
                            &time::format_description::well_known::Rfc3339,
                        )
                        .with_context(|| {
                            format!("--since {t:?}: expected RFC 3339, e.g. 2026-01-31T12:00:00Z")
                        })?;
                        format!("/v1/audit?since={}", t.replace('+', "%2B"))
                    }
                    None => "/v1/audit".into(),
                };
                (session.call(M::GET, &path, None).await?, |v| {
                    table(
                        &["at", "actor", "action", "target", "source", "result"],
                        rows(
                            v,
                            &["/at", "/actor", "/action", "/target", "/source", "/result"],
                        ),
                    )
                })
            }
        };
        match result {
            Ok(v) => {
                match self.output {
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&v)?),
                    OutputFormat::Table => show(&v),
                }
                Ok(Exit::Success)
            }
            Err(message) => {
                eprintln!("error: {message}");
                Ok(Exit::Failed)
            }
        }
    }
}

async fn login(
    config: &Option<PathBuf>,
    url: &str,
    fingerprint: &str,
    token_file: &Path,
    output: OutputFormat,
) -> anyhow::Result<Exit> {
    let url = url.trim_end_matches('/').to_owned();
    if !url.starts_with("https://") {
        eprintln!("error: --url must start with https://");
        return Ok(Exit::Usage);
    }
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("reading {}", token_file.display()))?
        .trim()
        .to_owned();
    let want = match cairn_api::CertFingerprint::parse(fingerprint) {
        Ok(fp) => fp.to_string(),
        Err(e) => {
            eprintln!("error: --ca-fingerprint: {e}; the hub prints it at `cairn-hub init`");
            return Ok(Exit::InvalidInput);
        }
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let fetch = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(FetchCaOnly(provider)))
        .with_no_client_auth();
    let ca: Value = http_client(fetch)?
        .get(format!("{url}/v1/ca"))
        .send()
        .await
        .with_context(|| format!("fetching the CA from {url}"))?
        .json()
        .await
        .context("reading the hub's CA answer")?;
    let ca_pem = ca["ca_bundle_pem"]
        .as_str()
        .context("the hub's CA answer has no ca_bundle_pem")?
        .to_owned();
    let got = pem_fingerprint(&ca_pem)?;
    if got != want {
        bail!(
            "the hub at {url} has CA fingerprint {got}, not {want}: not logging in (wrong hub, or someone in between)"
        );
    }
    // Now verified with the pinned CA: the token only ever travels on this connection.
    let session = Session {
        http: http_client(tls_config(&ca_pem, None)?)?,
        url: url.clone(),
        token: token.clone(),
    };
    let me = match session
        .call(reqwest::Method::GET, "/v1/whoami", None)
        .await?
    {
        Ok(me) => me,
        Err(message) => {
            eprintln!("error: {message}");
            return Ok(Exit::Failed);
        }
    };
    let path = config_path(config)?;
    save_login(
        &path,
        &Login {
            url,
            ca_fingerprint: want,
            ca_pem,
            token,
        },
    )?;
    match output {
        OutputFormat::Json => println!("{}", json!({"config": path, "whoami": me})),
        OutputFormat::Table => println!(
            "logged in as {} ({}{}); saved to {}",
            s(&me["name"]),
            s(&me["role"]),
            me["site"]
                .as_str()
                .map(|x| format!(", site {x}"))
                .unwrap_or_default(),
            path.display()
        ),
    }
    Ok(Exit::Success)
}
