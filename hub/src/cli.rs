//! `cairn-hub ...`: the server's own command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_api::cli::{Exit, LogArgs, OutputFormat};
use clap::{Args, Parser, Subcommand};

use crate::fleet::{EventFilter, Fleet, FleetSettings, Retention};
use crate::metrics::{MeteredStore, Metrics};
use crate::pki::{self, Ca};
use crate::ratelimit::{RateLimiter, RefusalLog};
use crate::server::{self, AppState};
use crate::store::Store;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::{EtcdSettings, EtcdStore, EtcdTls};
use crate::webhooks::{Backoff, Secret, WebhookSettings};

/// The cairn hub: enrollment, fleet registry, hosted control planes, VPCs, audit.
///
/// Start with `cairn-hub init --data /var/lib/cairn-hub`, keep the printed CA fingerprint
/// (sites pin it) and admin token (operators log in with it), then run
/// `cairn-hub serve --data /var/lib/cairn-hub --listen 0.0.0.0:8443`.
#[derive(Debug, Parser)]
#[command(name = "cairn-hub", version, about, long_about)]
pub struct HubCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    command: HubCommand,
}

#[derive(Debug, Subcommand)]
// Boxed: the serve arguments outgrew the init ones by more than clippy's
// large_enum_variant allows; a command is parsed once, so the allocation costs nothing.
enum HubCommand {
    /// Create the hub CA, server certificate and first admin token in the data directory.
    ///
    /// Prints the CA fingerprint that sites pin and the first admin token, once.
    Init(Box<InitArgs>),
    /// Serve the API over HTTPS.
    Serve(Box<ServeArgs>),
}

/// Where state lives.
#[derive(Debug, Clone, Args)]
struct StoreArgs {
    /// Data directory: CA, server certificate, and the embedded store `hub.redb`.
    #[arg(long, value_name = "DIR")]
    data: PathBuf,
    /// Keep state in etcd instead of the embedded store (comma-separated client URLs,
    /// `http://host:2379`). Several hubs given the same endpoints and a copy of the same
    /// data directory serve one fleet.
    #[arg(
        long,
        value_name = "URLS",
        value_delimiter = ',',
        env = "CAIRN_HUB_ETCD_ENDPOINTS"
    )]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, value_name = "PREFIX", default_value = "/cairn/hub/")]
    etcd_prefix: String,
    /// Seconds a dead or paused hub keeps the singleton jobs (offline detection, campaigns,
    /// housekeeping, the reconciler) before another takes them over; the leader renews its
    /// lease every third of it.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    etcd_lease_ttl: u64,
    /// CA certificate (PEM) that etcd's server certificate must chain to; the endpoints are
    /// then `https://host:2379`.
    #[arg(long, value_name = "FILE", env = "CAIRN_HUB_ETCD_CACERT")]
    etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) presented to etcd (its `--client-cert-auth`); needs
    /// --etcd-key and --etcd-cacert.
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["etcd_key", "etcd_cacert"],
        env = "CAIRN_HUB_ETCD_CERT"
    )]
    etcd_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires = "etcd_cert",
        env = "CAIRN_HUB_ETCD_KEY"
    )]
    etcd_key: Option<PathBuf>,
    /// How often each hub compacts etcd's history, in seconds (0: never; then etcd's
    /// own --auto-compaction-* must do it, or its database grows until it hits its quota).
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    etcd_compact_every: u64,
    /// Revisions of history kept behind the current one at each compaction.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    etcd_compact_keep: u64,
}

#[derive(Debug, Args)]
struct InitArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// DNS name or IP address the hub is reached at (repeat). Default: localhost, 127.0.0.1
    /// and ::1; add every name appliances and operators use.
    #[arg(long = "name", value_name = "NAME")]
    names: Vec<String>,
    /// Use this CA certificate (PEM) instead of creating one; needs --ca-key.
    #[arg(long, value_name = "FILE", requires = "ca_key")]
    ca_cert: Option<PathBuf>,
    /// The given CA's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "ca_cert")]
    ca_key: Option<PathBuf>,
    /// Trust this Ed25519 public key (PEM, from `cairn image keygen`) for release bundles
    /// (repeat). Copied into DIR/release-keys/, which `serve` reads.
    #[arg(long = "trusted-release-key", value_name = "FILE")]
    trusted_release_keys: Vec<PathBuf>,
    /// Write the first admin token to this file (mode 0600) instead of printing it.
    #[arg(long, value_name = "FILE")]
    admin_token_file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8443")]
    listen: SocketAddr,
    /// Heartbeat interval handed to appliances, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    heartbeat_interval: u32,
    /// An appliance is offline after this many missed heartbeat intervals.
    #[arg(long, value_name = "N", default_value_t = 3)]
    offline_after: u32,
    /// Validity of appliance client certificates, in hours.
    #[arg(long, value_name = "HOURS", default_value_t = 24)]
    cert_ttl_hours: u32,
    /// Registration requests (and token checks) allowed per source address per minute.
    #[arg(long, value_name = "N", default_value_t = 60)]
    registration_rate: u32,
    /// Certificate renewals allowed per appliance per minute (an appliance renews about
    /// once per certificate lifetime, plus retries).
    #[arg(long, value_name = "N", default_value_t = 6)]
    renewal_rate: u32,
    /// Open connections allowed in total; more are closed at once. The hub raises its
    /// open-file limit to the hard limit at start; keep this below it.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    max_connections: usize,
    /// Open connections allowed per source (an IPv4 address or an IPv6 /64; a site behind
    /// NAT is one source); more are closed at once.
    #[arg(long, value_name = "N", default_value_t = 512)]
    max_connections_per_source: usize,
    /// Seconds a client has to complete the TLS handshake.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    tls_handshake_timeout: u64,
    /// Seconds a client has to send a request's headers (from their first byte), and its
    /// first request after the TLS handshake; a slower client is disconnected.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    header_read_timeout: u64,
    /// Seconds a kept-alive connection may stay without a request in flight before it is
    /// closed (keep it above --heartbeat-interval, so appliances keep their connection).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    idle_timeout: u64,
    /// Seconds a request may take before it is answered `503 timeout` (adding a release,
    /// which uploads or fetches a whole bundle, is exempt).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    request_timeout: u64,
    /// How often the offline detector runs, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    offline_check_every: u64,
    /// Also trust this Ed25519 public key (PEM) for release bundles (repeat); the keys in
    /// DIR/release-keys/*.pem are always trusted. A release signed by no trusted key is
    /// refused.
    #[arg(long = "trusted-release-key", value_name = "FILE")]
    trusted_release_keys: Vec<PathBuf>,
    /// The URL appliances download release bundles from, `https://host:port` (a name in
    /// the hub's certificate). Default: the address each appliance reached the hub at.
    #[arg(long, value_name = "URL")]
    public_url: Option<String>,
    /// How often the campaign driver looks at heartbeat reports and orders the next
    /// appliances, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 2000)]
    campaign_check_every_ms: u64,
    /// Audit entries older than this many days are deleted.
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    audit_retention_days: u32,
    /// At most this many audit entries are kept; the oldest beyond it are deleted.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    audit_retention_count: usize,
    /// Events older than this many days are deleted.
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    events_retention_days: u32,
    /// At most this many events are kept; the oldest beyond it are deleted.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    events_retention_count: usize,
    /// How often retention runs (and the revocations of deleted appliances' bootstrap tokens
    /// a control plane refused are retried), in seconds; it also runs as soon as a tenth of
    /// the smaller retention count was written since its last pass.
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    retention_check_every: u64,
    /// How often the reconciler (leader only) rewrites the appliances' desired states that
    /// no longer match the records they derive from (VPC membership, VTEPs, joins), in
    /// seconds; it also runs once as soon as the hub starts.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    reconcile_every: u64,
    /// How often the hub scrapes the metrics of every appliance whose tunnel it holds
    /// (served at `GET /v1/metrics/appliances`), in seconds; 0 scrapes none.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    node_metrics_interval: u64,
    /// Seconds one appliance's scrape may take; a slower one fails and its last scrape is
    /// dropped.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    node_metrics_timeout: u64,
    /// Scrapes in flight at once.
    #[arg(long, value_name = "N", default_value_t = 32)]
    node_metrics_concurrency: usize,
    #[command(flatten)]
    webhooks: WebhookArgs,
}

/// Event webhooks (docs/hub.md, "Event webhooks").
#[derive(Debug, Args)]
struct WebhookArgs {
    /// POST each fleet event, as JSON, to this `http(s)://` URL (repeat for several
    /// receivers): in order, signed (`X-Cairn-Signature: sha256=<HMAC>`), retried until the
    /// receiver answers 2xx, resumed after the last one delivered across restarts. Only
    /// the hub that leads the singleton jobs delivers.
    #[arg(long = "event-webhook", value_name = "URL")]
    urls: Vec<String>,
    /// Only events of these kinds go to the webhooks, comma-separated (e.g.
    /// `offline,upgrade-failed`); default: every kind.
    #[arg(long = "event-webhook-kinds", value_name = "K1,K2")]
    kinds: Option<String>,
    /// File holding the key of the webhooks' HMAC-SHA256 signatures (required with
    /// --event-webhook; never logged).
    #[arg(long = "event-webhook-secret-file", value_name = "FILE")]
    secret_file: Option<PathBuf>,
    /// Seconds one delivery attempt may take, connecting included.
    #[arg(
        long = "event-webhook-timeout",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    timeout: u64,
    /// Pause before retrying a failed delivery, in milliseconds; it doubles with each
    /// further failure, up to --event-webhook-retry-max.
    #[arg(
        long = "event-webhook-retry-first-ms",
        value_name = "MS",
        default_value_t = 1000
    )]
    retry_first_ms: u64,
    /// Longest pause between two attempts, in seconds.
    #[arg(
        long = "event-webhook-retry-max",
        value_name = "SECONDS",
        default_value_t = 300
    )]
    retry_max: u64,
    /// Attempts per event before it is given up (logged) and the next one delivered; 0:
    /// retry until it is delivered, holding the events behind it.
    #[arg(
        long = "event-webhook-max-attempts",
        value_name = "N",
        default_value_t = 0
    )]
    max_attempts: u32,
}

impl WebhookArgs {
    /// The settings, or `None` without receivers; an error says which flag is wrong.
    fn settings(&self, lead_check: Duration) -> anyhow::Result<Option<WebhookSettings>> {
        if self.urls.is_empty() {
            return Ok(None);
        }
        let urls = self
            .urls
            .iter()
            .map(|u| {
                let url = reqwest::Url::parse(u)
                    .ok()
                    .filter(|url| matches!(url.scheme(), "http" | "https") && url.has_host())
                    .ok_or_else(|| anyhow::anyhow!("--event-webhook: not an http(s) URL"))?;
                Ok(url)
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let file = self.secret_file.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "--event-webhook needs --event-webhook-secret-file, the key receivers check \
                 the signatures with"
            )
        })?;
        let secret = std::fs::read(file)
            .with_context(|| format!("reading --event-webhook-secret-file {}", file.display()))?;
        let secret = String::from_utf8_lossy(&secret).trim().as_bytes().to_vec();
        if secret.is_empty() {
            anyhow::bail!(
                "--event-webhook-secret-file {} is empty: put a random key in it, e.g. \
                 `openssl rand -hex 32`",
                file.display()
            );
        }
        Ok(Some(WebhookSettings {
            urls,
            kinds: EventFilter::kinds(self.kinds.as_deref()),
            secret: Secret::new(secret),
            timeout: Duration::from_secs(self.timeout.max(1)),
            backoff: Backoff {
                first: Duration::from_millis(self.retry_first_ms.max(1)),
                max: Duration::from_secs(self.retry_max.max(1)),
                max_attempts: self.max_attempts,
            },
            lead_check,
        }))
    }
}

/// The release keys of the data directory plus the ones given.
fn release_keys(
    dir: &std::path::Path,
    extra: &[PathBuf],
) -> anyhow::Result<cairn_formats::keys::TrustStore> {
    use cairn_formats::keys::PublicKey;
    let mut paths: Vec<PathBuf> = extra.to_vec();
    let keys_dir = dir.join(RELEASE_KEYS_DIR);
    if let Ok(entries) = std::fs::read_dir(&keys_dir) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "pem") {
                paths.push(e.path());
            }
        }
    }
    paths.sort();
    let mut keys = Vec::new();
    for p in &paths {
        let key = PublicKey::read(p)
            .with_context(|| format!("reading the release key {}", p.display()))?;
        tracing::info!(key = %key.fingerprint(), path = %p.display(), "trusting release key");
        keys.push(key);
    }
    if keys.is_empty() {
        tracing::warn!(
            "no trusted release keys: every release will be refused (see --trusted-release-key)"
        );
    }
    Ok(cairn_formats::keys::TrustStore::new(keys))
}

/// Trusted release keys inside the data directory.
const RELEASE_KEYS_DIR: &str = "release-keys";

impl StoreArgs {
    async fn open(&self, holder: &str) -> anyhow::Result<Arc<dyn Store>> {
        if !self.etcd_endpoints.is_empty() {
            let tls = match &self.etcd_cacert {
                Some(ca) => Some(EtcdTls::read(
                    ca,
                    self.etcd_cert.as_deref().zip(self.etcd_key.as_deref()),
                )?),
                None => None,
            };
            let store = EtcdStore::connect(
                &self.etcd_endpoints,
                &EtcdSettings {
                    prefix: self.etcd_prefix.clone(),
                    holder: holder.to_owned(),
                    lease_ttl: Duration::from_secs(self.etcd_lease_ttl),
                    tls,
                    compact_every: Duration::from_secs(self.etcd_compact_every),
                    compact_keep: self.etcd_compact_keep,
                },
            )
            .await
            .with_context(|| format!("connecting to etcd at {}", self.etcd_endpoints.join(",")))?;
            return Ok(Arc::new(store));
        }
        let path = self.data.join("hub.redb");
        let store =
            EmbeddedStore::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Arc::new(store))
    }
}

fn write_secret(path: &std::path::Path, contents: &str) -> anyhow::Result<()> {
    cairn_formats::fsio::atomic_write_mode(path, format!("{contents}\n").as_bytes(), 0o600)
        .with_context(|| format!("writing {}", path.display()))
}

impl HubCli {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        match self.command {
            HubCommand::Init(args) => init(*args).await,
            HubCommand::Serve(args) => serve(*args).await,
        }
    }
}

async fn init(args: InitArgs) -> anyhow::Result<Exit> {
    let dir = &args.store.data;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join(pki::CA_CERT).exists() {
        eprintln!(
            "error: {} already holds a hub (ca.pem exists); nothing was changed",
            dir.display()
        );
        return Ok(Exit::InvalidInput);
    }
    let names = if args.names.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        args.names.clone()
    };
    // Check the release keys before creating anything.
    let mut release_key_files = Vec::new();
    for p in &args.trusted_release_keys {
        let key = cairn_formats::keys::PublicKey::read(p)
            .with_context(|| format!("reading the release key {}", p.display()))?;
        release_key_files.push(key);
    }
    let given = args.ca_cert.as_deref().zip(args.ca_key.as_deref());
    let ca = pki::init(dir, &names, given)
        .with_context(|| format!("creating the CA in {}", dir.display()))?;
    let fingerprint = ca.fingerprint();
    if !release_key_files.is_empty() {
        let keys_dir = dir.join(RELEASE_KEYS_DIR);
        std::fs::create_dir_all(&keys_dir)
            .with_context(|| format!("creating {}", keys_dir.display()))?;
        for key in &release_key_files {
            let path = keys_dir.join(format!("{}.pem", key.fingerprint()));
            key.write(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let store = args.store.open("cairn-hub init").await?;
    let fleet = Fleet::new(store, Arc::new(ca), FleetSettings::default());
    let token = fleet
        .bootstrap_admin()
        .await?
        .context("an operator token already exists in this store")?;
    if let Some(path) = &args.admin_token_file {
        write_secret(path, &token)?;
    }
    let shown = if args.admin_token_file.is_some() {
        None
    } else {
        Some(token.as_str())
    };
    match args.output {
        OutputFormat::Json => println!(
            "{}",
            serde_json::to_string(&cairn_api::hub::InitSummary {
                data: dir.to_owned(),
                ca_fingerprint: fingerprint.to_string(),
                admin_token: shown.map(str::to_owned),
                admin_token_file: args.admin_token_file.clone(),
            })?
        ),
        OutputFormat::Table => {
            println!("hub initialised in {}", dir.display());
            println!("CA fingerprint (sites pin this): {fingerprint}");
            match shown {
                Some(t) => println!(
                    "first admin token (shown once; keep it in a file for `cairn hub login --token-file`):\n{t}"
                ),
                None => println!(
                    "first admin token written to {}",
                    args.admin_token_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                ),
            }
        }
    }
    Ok(Exit::Success)
}

async fn serve(args: ServeArgs) -> anyhow::Result<Exit> {
    let dir = &args.store.data;
    let ca = Ca::load(dir).with_context(|| {
        format!(
            "loading the CA from {} (run `cairn-hub init` first)",
            dir.display()
        )
    })?;
    let tls = server::tls::load(dir)
        .with_context(|| format!("loading TLS material from {}", dir.display()))?;
    let hub_name = format!("{}/{}", hostname(), std::process::id());
    let metrics = Arc::new(Metrics::default());
    let store: Arc<dyn Store> = Arc::new(MeteredStore::new(
        args.store.open(&hub_name).await?,
        metrics.clone(),
    ));
    let settings = FleetSettings {
        cert_ttl: time::Duration::hours(i64::from(args.cert_ttl_hours.max(1))),
        heartbeat_interval_seconds: args.heartbeat_interval.max(1),
        offline_after_missed: args.offline_after.max(1),
        hub_name,
        releases_dir: Some(dir.join("releases")),
        release_keys: release_keys(dir, &args.trusted_release_keys)?,
        public_url: args.public_url.clone(),
        audit_retention: Retention {
            max_age: time::Duration::days(i64::from(args.audit_retention_days.max(1))),
            max_count: args.audit_retention_count.max(1),
        },
        event_retention: Retention {
            max_age: time::Duration::days(i64::from(args.events_retention_days.max(1))),
            max_count: args.events_retention_count.max(1),
        },
    };
    let lead_check = Duration::from_secs(args.store.etcd_lease_ttl.max(2)) / 3;
    let webhooks = match args.webhooks.settings(lead_check) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(Exit::InvalidInput);
        }
    };
    let fleet = Arc::new(Fleet::new(store.clone(), Arc::new(ca), settings));
    if let Some(w) = &webhooks {
        crate::webhooks::start_cursors(&fleet, w)
            .await
            .context("reading the event webhooks' cursors from the store")?;
    }
    let state = AppState {
        fleet: fleet.clone(),
        metrics: metrics.clone(),
        limiter: Arc::new(RateLimiter::new(args.registration_rate.max(1))),
        renewals: Arc::new(RateLimiter::new(args.renewal_rate.max(1))),
        refusals: Arc::new(RefusalLog::default()),
        request_timeout: Duration::from_secs(args.request_timeout.max(1)),
        tunnels: Arc::new(crate::tunnel::Tunnels::new(
            crate::tunnel::TunnelLimits::default(),
        )),
    };
    let limits = server::Limits {
        max_connections: args.max_connections.max(1),
        max_connections_per_source: args.max_connections_per_source.max(1),
        tls_handshake_timeout: Duration::from_secs(args.tls_handshake_timeout.max(1)),
        header_read_timeout: Duration::from_secs(args.header_read_timeout.max(1)),
        idle_timeout: Duration::from_secs(args.idle_timeout.max(1)),
    };
    raise_open_file_limit(limits.max_connections);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = listener.local_addr().context("reading the bound address")?;
    // One line on standard output so scripts and tests learn the port when given `:0`.
    println!("listening on https://{local}");
    tracing::info!(listen = %local, store = store.backend(), fingerprint = %fleet.ca().fingerprint(), "cairn-hub serving");
    cairn_api::cli::service::ready(&format!("serving on https://{local}"));
    let detector = tokio::spawn(server::offline_detector(
        fleet.clone(),
        Duration::from_secs(args.offline_check_every.max(1)),
    ));
    let driver = tokio::spawn(server::campaign_driver(
        fleet.clone(),
        Duration::from_millis(args.campaign_check_every_ms.max(50)),
    ));
    let retention = tokio::spawn(server::housekeeping(
        fleet.clone(),
        Duration::from_secs(args.retention_check_every.max(1)),
    ));
    let leadership = tokio::spawn(server::keep_leadership(
        fleet.clone(),
        Duration::from_secs(args.store.etcd_lease_ttl.max(2)) / 3,
    ));
    let reconciler = tokio::spawn(server::reconciler(
        fleet.clone(),
        metrics.clone(),
        Duration::from_secs(args.reconcile_every.max(1)),
    ));
    let webhooks = webhooks.map(|w| tokio::spawn(crate::webhooks::run(fleet.clone(), Arc::new(w))));
    let scrapes = (args.node_metrics_interval > 0).then(|| {
        tokio::spawn(crate::scrape::run(
            state.tunnels.clone(),
            fleet.clone(),
            metrics.clone(),
            crate::scrape::ScrapeSettings {
                every: Duration::from_secs(args.node_metrics_interval),
                timeout: Duration::from_secs(args.node_metrics_timeout.max(1)),
                concurrency: args.node_metrics_concurrency.max(1),
                // cairn-node's metrics are a few kilobytes; this bounds a misbehaving one.
                max_bytes: 4 * 1024 * 1024,
            },
        ))
    });
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; }, None => std::future::pending().await } } => {},
        }
        tracing::info!("shutting down");
        cairn_api::cli::service::stopping();
    };
    server::serve(listener, tls, state, limits, shutdown)
        .await
        .context("serving")?;
    detector.abort();
    driver.abort();
    retention.abort();
    reconciler.abort();
    leadership.abort();
    if let Some(w) = webhooks {
        w.abort();
    }
    if let Some(s) = scrapes {
        s.abort();
    }
    Ok(Exit::Success)
}

/// Raises the soft open-file limit to the hard one: each connection is a descriptor, and
/// the usual soft limit (1024) would refuse connections long before `--max-connections`.
fn raise_open_file_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::warn!(error = %e, "could not raise the open-file limit");
        }
    }
    let current = getrlimit(Resource::Nofile).current;
    // Descriptors beyond connections: the store, etcd, logs, bundles being served.
    if current.is_some_and(|n| n < max_connections as u64 + 256) {
        tracing::warn!(
            open_file_limit = current,
            max_connections,
            "the open-file limit is below --max-connections; connections beyond it fail to be accepted"
        );
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "hub".into())
}
