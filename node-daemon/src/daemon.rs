//! `cairn-node run`: the daemon's loop.
//!
//! At start the node restores what it can from local state alone (network from the netplan
//! files, kubelet files and unit from the last desired state), so a restart with the hub down
//! changes nothing on the box. Then one loop does, in turn: registration (only while no
//! identity exists), certificate renewal, heartbeats (each report is queued on disk first and
//! the queue is delivered oldest first), desired-state application by generation, and kubelet
//! supervision. One request to the hub is in flight at a time.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use cairn_api::{
    Condition, ConditionStatus, DesiredState, Heartbeat, HeartbeatResponse, NodeStatus,
    OverlayDocument, RegistrationRequest,
};

use crate::config::Settings;
use crate::hub::{ClientIdentity, ClientKey, HttpsHub, HubApi, HubError, Trust};
use crate::identity_key::{self, IdentityKeys, KeyError};
use crate::inventory::{self, Roots};
use crate::kubelet::{self, Action, Layout, Supervisor};
use crate::network::{FleetTry, Network, NetworkError};
use crate::pki;
use crate::status::LocalStatus;
use crate::store::{self, Identity, PendingRegistration, Store, StoreError};
use crate::systemd::{DbusSystemd, UnitManager};
use crate::tunnel;
use crate::upgrade::{self, HealthInputs, SharedReport, UpgradeInput, Upgrader};

/// Longest wait between attempts to reach the hub.
pub const BACKOFF_CAP: Duration = Duration::from_secs(300);
/// Least time between two certificate renewals.
pub const RENEW_SPACING: Duration = Duration::from_secs(3600);
/// How often the kubelet unit is looked at.
pub const KUBELET_POLL: Duration = Duration::from_secs(10);

/// The next heartbeat: the interval ±10 %, so a site's appliances do not heartbeat in step.
pub fn jittered(interval: Duration, unit: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * unit.clamp(0.0, 1.0))
}

/// Wait before retry `attempt` (1-based) after failures: 1 s doubling per attempt, capped at
/// five minutes, then scaled into [50 %, 100 %] ("equal jitter") so that appliances that lost
/// the hub together do not come back together.
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    let full = Duration::from_secs(1)
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    full.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

/// Errors that stop the daemon from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state store cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Site policy asks for a key home there is not (`tpm.policy: required`, no TPM).
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// A registration attempt failed.
#[derive(Debug, thiserror::Error)]
enum RegisterError {
    #[error("reading the enrollment token from {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error("reading the hub CA bundle {path}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl RegisterError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Hub(e) if e.is_transient())
    }
}

/// The daemon.
pub struct Daemon<N: Network> {
    settings: Settings,
    store: Store,
    network: N,
    roots: Roots,
    status: Arc<RwLock<LocalStatus>>,
    metrics: Arc<crate::metrics::NodeMetrics>,
    supervisor: Supervisor,
    units: Option<DbusSystemd>,
    hub: Option<HttpsHub>,
    failures: u32,
    files_changed: bool,
    reload_pending: bool,
    interval: Duration,
    network_condition: Condition,
    /// How the last VPC overlay apply went (none before the first).
    overlay_condition: Option<Condition>,
    /// Whether the resolver and the time daemon re-read the fleet's DNS and NTP servers
    /// (none before the first change).
    host_condition: Option<Condition>,
    /// The `chronyc` program that makes chrony re-read its sources.
    chronyc: std::path::PathBuf,
    /// What this node did with the latest fleet configuration.
    config_report: Option<cairn_api::ConfigReport>,
    kubelet_condition: Option<Condition>,
    /// Feeds the upgrade task (started by `run`).
    upgrade_input: tokio::sync::watch::Sender<UpgradeInput>,
    upgrade_task: Option<(Upgrader, tokio::sync::watch::Receiver<UpgradeInput>)>,
    /// Where the tunnel connects, and as whom (set once the node has an identity).
    tunnel_target: tokio::sync::watch::Sender<Option<tunnel::Target>>,
    /// The tunnel task's end and what it serves (started by `run`).
    tunnel_task: Option<(
        tokio::sync::watch::Receiver<Option<tunnel::Target>>,
        tunnel::Local,
    )>,
    upgrade_report: SharedReport,
    booted_slot: Option<String>,
    hub_reached: bool,
    renewed_at: Option<Instant>,
    /// Where identity keys are made and used: the TPM or a file (`tpm.policy`).
    keys: Arc<dyn IdentityKeys>,
}

fn condition(kind: &str, ok: bool, reason: &str, message: impl Into<String>) -> Condition {
    Condition {
        kind: kind.into(),
        status: if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        },
        reason: reason.into(),
        message: message.into(),
    }
}

fn rfc3339(t: SystemTime) -> Option<String> {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl<N: Network> Daemon<N> {
    /// Opens the state store; nothing else happens until [`Daemon::run`].
    pub fn new(settings: Settings, network: N, roots: Roots) -> Result<Self, StartError> {
        let store = Store::open(&settings.state_dir)?;
        let keys = identity_key::open(settings.tpm_policy, settings.tpm_tcti.as_deref())?;
        let status = LocalStatus {
            hostname: settings.hostname.clone(),
            hub_url: settings.hub_url.clone(),
            phase: "starting".into(),
            ..Default::default()
        };
        let upgrader = Upgrader::new(settings.upgrade.clone(), os_version(&settings.root));
        let upgrade_report = upgrader.shared_report();
        let booted_slot = upgrader.booted().map(|s| s.letter().to_owned());
        let (upgrade_input, input_rx) = tokio::sync::watch::channel(UpgradeInput::default());
        let (tunnel_target, tunnel_rx) = tokio::sync::watch::channel(None);
        let status = Arc::new(RwLock::new(status));
        let metrics = Arc::<crate::metrics::NodeMetrics>::default();
        let local = tunnel::Local {
            metrics: metrics.clone(),
            journal_dir: None,
            reboot_command: settings.upgrade.reboot_command.clone(),
            grubenv: settings.upgrade.grubenv.clone(),
            cmdline: settings.upgrade.cmdline.clone(),
            upgrade: upgrade_report.clone(),
            support: crate::support::Sources {
                root: settings.root.clone(),
                status: status.clone(),
                upgrade_record: settings.upgrade.data_dir.join("state.json"),
            },
        };
        Ok(Self {
            tunnel_target,
            tunnel_task: Some((tunnel_rx, local)),
            upgrade_input,
            upgrade_task: Some((upgrader, input_rx)),
            upgrade_report,
            booted_slot,
            hub_reached: false,
            renewed_at: None,
            keys,
            store,
            network,
            roots,
            status,
            metrics,
            supervisor: Supervisor::new(),
            units: None,
            hub: None,
            failures: 0,
            files_changed: false,
            reload_pending: false,
            interval: Duration::from_secs(30),
            network_condition: condition("NetworkApplied", false, "NotYet", ""),
            overlay_condition: None,
            host_condition: None,
            chronyc: "chronyc".into(),
            config_report: None,
            kubelet_condition: None,
            settings,
        })
    }

    /// Runs `chronyc` from `path` (tests: a stand-in) to have chrony re-read its sources.
    pub fn with_chronyc(mut self, path: Option<std::path::PathBuf>) -> Self {
        if let Some(p) = path {
            self.chronyc = p;
        }
        self
    }

    /// Reads the journal the hub asks for through the tunnel from `dir` instead of the
    /// system's.
    pub fn with_journal_dir(mut self, dir: Option<std::path::PathBuf>) -> Self {
        if let Some((_, local)) = &mut self.tunnel_task {
            local.journal_dir = dir;
        }
        self
    }

    /// The status the local API serves.
    pub fn status_handle(&self) -> Arc<RwLock<LocalStatus>> {
        self.status.clone()
    }

    /// The metrics the local API serves.
    pub fn metrics_handle(&self) -> Arc<crate::metrics::NodeMetrics> {
        self.metrics.clone()
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        // First, so that the boot is classified (interrupted write, rollback) before any
        // order is looked at.
        if let Some((upgrader, input)) = self.upgrade_task.take() {
            tokio::spawn(upgrade::run_task(upgrader, input));
        }
        if let Some((target, local)) = self.tunnel_task.take() {
            tokio::spawn(tunnel::run(target, local));
        }
        self.restore_local().await;
        // Ready once the host network is back: the unit orders network.target after it.
        cairn_api::cli::service::ready("running");
        let mut next_hub = Instant::now();
        let mut next_kubelet = Instant::now();
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            if now >= next_hub {
                next_hub = Instant::now() + self.hub_round().await;
            }
            if now >= next_kubelet {
                self.supervise().await;
                next_kubelet = Instant::now() + KUBELET_POLL;
            }
            self.publish();
            self.feed_upgrade();
            let wake = next_hub.min(next_kubelet);
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                () = &mut shutdown => break,
            }
        }
        tracing::info!("stopping");
        cairn_api::cli::service::stopping();
    }

    /// Brings back network and kubelet from local state, before the hub is asked anything.
    async fn restore_local(&mut self) {
        if self.settings.manage_network {
            let applied = self.network.apply_host(&self.settings.netplan_dir).await;
            self.metrics.network_applied("host", applied.is_ok());
            match applied {
                Ok(changes) => {
                    tracing::info!(changes, dir = %self.settings.netplan_dir.display(), "host network applied");
                    self.network_condition = condition("NetworkApplied", true, "Applied", "");
                }
                Err(e) => {
                    tracing::error!(error = %e, "applying the host network failed; the previous state was kept");
                    self.network_condition =
                        condition("NetworkApplied", false, "ApplyFailed", e.to_string());
                }
            }
        } else {
            self.network_condition = condition(
                "NetworkApplied",
                true,
                "NotManaged",
                "network.manage is false",
            );
        }
        match self.store.desired() {
            Ok(Some(desired)) => {
                tracing::info!(
                    generation = desired.generation,
                    "restoring the last desired state"
                );
                self.apply_desired(&desired, true).await;
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "the stored desired state is unreadable"),
        }
    }

    fn set_error(&self, message: Option<String>) {
        if let Ok(mut s) = self.status.write() {
            s.last_error = message;
        }
    }

    fn set_phase(&self, phase: &str) {
        if let Ok(mut s) = self.status.write() {
            s.phase = phase.into();
        }
    }

    /// One exchange with the hub; returns how long to wait before the next.
    async fn hub_round(&mut self) -> Duration {
        let identity = match self.store.identity() {
            Ok(identity) => identity,
            Err(e) => {
                tracing::error!(error = %e, "reading the identity failed");
                self.set_error(Some(e.to_string()));
                return BACKOFF_CAP;
            }
        };
        let Some(identity) = identity else {
            self.set_phase("registering");
            return match self.register().await {
                Ok(identity) => {
                    tracing::info!(appliance = %identity.appliance_id, site = %identity.site, "registered");
                    self.failures = 0;
                    self.set_error(None);
                    Duration::ZERO
                }
                Err(e) => {
                    self.set_error(Some(cairn_api::error_chain(&e)));
                    let wait = self.retry_after(e.is_transient());
                    if e.is_transient() {
                        tracing::warn!(error = %cairn_api::error_chain(&e), retry_in = ?wait, "registration failed");
                    } else {
                        tracing::error!(error = %e, "registration refused; fix the cause, the node retries every 5 minutes");
                    }
                    wait
                }
            };
        };
        let identity = if self.maybe_renew(&identity).await {
            // Heartbeat with the new certificate: the hub accepts the old one only as the
            // previous, and the next renewal would supersede it.
            match self.store.identity() {
                Ok(Some(renewed)) => renewed,
                _ => identity,
            }
        } else {
            identity
        };
        match self.heartbeat(&identity).await {
            Ok(()) => {
                if self.failures > 0 {
                    let _ = self.store.increment(store::RECONNECTS);
                }
                self.failures = 0;
                self.hub_reached = true;
                // With several hub URLs, the one that answered.
                if let (Some(hub), Ok(mut s)) = (&self.hub, self.status.write()) {
                    s.hub_url = hub.current_url().to_owned();
                }
                self.set_error(None);
                self.set_phase("running");
                jittered(self.interval, fastrand::f64())
            }
            Err(e) => {
                if let Ok(mut s) = self.status.write() {
                    s.hub_reachable = false;
                    s.last_error = Some(cairn_api::error_chain(&e));
                    if matches!(e, HubError::IdentityRevoked { .. }) {
                        s.phase = "identity-rejected".into();
                    }
                }
                let wait = self.retry_after(e.is_transient());
                if e.is_transient() {
                    tracing::warn!(error = %cairn_api::error_chain(&e), retry_in = ?wait, "hub unreachable; running on the last desired state");
                } else {
                    tracing::error!(error = %e, "hub refused the heartbeat");
                }
                wait
            }
        }
    }

    /// The wait after a failed exchange with the hub: a growing backoff while the cause may
    /// pass by itself (the hub unreachable), the cap while it needs an operator.
    fn retry_after(&mut self, transient: bool) -> Duration {
        if transient {
            self.failures += 1;
            backoff(self.failures, fastrand::f64())
        } else {
            BACKOFF_CAP
        }
    }

    async fn trust(&self) -> Result<String, RegisterError> {
        if let Some(path) = &self.settings.hub_ca_file {
            let pem = std::fs::read_to_string(path).map_err(|source| RegisterError::CaFile {
                path: path.display().to_string(),
                source,
            })?;
            if let Some(fp) = &self.settings.hub_ca_fingerprint {
                let ders = pki::pem_certificates(&pem, "hub CA file")?;
                if !ders.iter().any(|d| &pki::fingerprint(d) == fp) {
                    return Err(HubError::FingerprintMismatch {
                        expected: fp.clone(),
                        presented: format!(
                            "{} (in {})",
                            ders.iter()
                                .map(|d| format!("sha256:{}", pki::fingerprint(d)))
                                .collect::<Vec<_>>()
                                .join(", "),
                            path.display()
                        ),
                    }
                    .into());
                }
            }
            return Ok(pem);
        }
        let fp = self.settings.hub_ca_fingerprint.clone().unwrap_or_default();
        Ok(HttpsHub::fetch_pinned_ca(&self.settings.hub_url, &fp).await?)
    }

    async fn register(&mut self) -> Result<Identity, RegisterError> {
        let token_path = &self.settings.token_file;
        let token = std::fs::read_to_string(token_path)
            .map_err(|source| RegisterError::Token {
                path: token_path.display().to_string(),
                source,
            })?
            .trim()
            .to_owned();
        let ca = self.trust().await?;
        // Kept before the first send: a lost answer or a restart sends the same CSR again,
        // which the hub answers with the same appliance instead of refusing the spent token.
        let pending = self.pending_registration(&token)?;
        let request = RegistrationRequest {
            token,
            csr_pem: pending.csr_pem,
            hostname: pending.hostname,
            inventory: inventory::collect(&self.roots),
            agent_version: env!("CARGO_PKG_VERSION").into(),
        };
        let hub = HttpsHub::failover(&self.settings.hub_urls, &Trust::CaBundle(ca), None)?;
        let answer = hub.register(&request).await?;
        let identity = Identity {
            appliance_id: answer.appliance_id,
            site: answer.site,
            hub_url: hub.current_url().to_owned(),
            key_pem: pending.key_pem,
            certificate_pem: answer.certificate_pem,
            ca_bundle_pem: answer.ca_bundle_pem,
        };
        // Drops the pending registration in the same transaction.
        self.store.save_identity(&identity)?;
        // The token is spent; a secret that is no longer needed should not stay on disk.
        if let Err(e) = std::fs::remove_file(token_path) {
            tracing::warn!(error = %e, path = %token_path.display(), "could not remove the used enrollment token");
        }
        self.apply_desired(&answer.desired, false).await;
        Ok(identity)
    }

    /// The registration to send ([`pending_step`] decides): the one kept from an earlier
    /// attempt, else a new key and CSR; what changed is kept before it is used.
    fn pending_registration(&self, token: &str) -> Result<PendingRegistration, RegisterError> {
        let hostname = &self.settings.hostname;
        let token_id = public_token_id(token);
        let kept = self.store.pending_registration()?;
        let step = pending_step(kept.as_ref(), hostname, &token_id);
        let pending = match (step, kept) {
            (PendingStep::Resend, Some(p)) => {
                tracing::info!(token = %token_id, "sending the pending registration again (same key and CSR)");
                return Ok(p);
            }
            (PendingStep::NewToken, Some(p)) => {
                tracing::info!(token = %token_id, previous_token = %p.token_id, "the token file changed; the pending registration keeps its key and CSR");
                PendingRegistration { token_id, ..p }
            }
            (PendingStep::NewCsr, Some(p)) => {
                tracing::info!(%hostname, previous = %p.hostname, "the hostname changed; a new CSR for the pending registration's key");
                PendingRegistration {
                    csr_pem: self.csr(&p.key_pem, hostname)?,
                    hostname: hostname.clone(),
                    token_id,
                    key_pem: p.key_pem,
                }
            }
            _ => {
                let key_pem = self.keys.generate()?;
                tracing::info!(token = %token_id, home = self.keys.kind(), "new identity key; kept with the registration before it is sent");
                PendingRegistration {
                    csr_pem: self.csr(&key_pem, hostname)?,
                    hostname: hostname.clone(),
                    token_id,
                    key_pem,
                }
            }
        };
        self.store.set_pending_registration(&pending)?;
        Ok(pending)
    }

    /// A CSR for `common_name` signed by the stored key, wherever it lives.
    fn csr(&self, stored_key: &str, common_name: &str) -> Result<String, KeyError> {
        identity_key::csr(self.keys.signing_key(stored_key)?.as_ref(), common_name)
    }

    fn hub_for(&mut self, identity: &Identity) -> Result<HttpsHub, HubError> {
        if let Some(hub) = &self.hub {
            return Ok(hub.clone());
        }
        // The hub it registered with first, then the configured ones.
        let mut urls = vec![identity.hub_url.clone()];
        urls.extend(
            (self.settings.hub_urls.iter())
                .filter(|u| **u != identity.hub_url)
                .cloned(),
        );
        let key = (self.keys.signing_key(&identity.key_pem))
            .map_err(|e| HubError::Tls(cairn_api::error_chain(&e)))?;
        let client_identity = ClientIdentity {
            certificate_pem: identity.certificate_pem.clone(),
            key: ClientKey::Signer(key),
        };
        let hub = HttpsHub::failover(
            &urls,
            &Trust::CaBundle(identity.ca_bundle_pem.clone()),
            Some(&client_identity),
        )?;
        self.hub = Some(hub.clone());
        let (tls, _) = cairn_hub_client::tls::client_config(
            &Trust::CaBundle(identity.ca_bundle_pem.clone()),
            Some(&client_identity),
        )
        .map_err(|e| HubError::Tls(cairn_api::error_chain(&e)))?;
        // The tunnel follows the heartbeats' identity and hubs: a new client (a renewed
        // certificate) reconnects it.
        self.tunnel_target.send_replace(Some(tunnel::Target {
            urls,
            tls: Arc::new(tls.clone()),
        }));
        self.upgrade_input.send_modify(|i| i.tls = Some(tls));
        Ok(hub)
    }

    /// Hands the upgrade task what it needs for health checks.
    fn feed_upgrade(&self) {
        let ok = |c: &Condition| c.status == ConditionStatus::True;
        let has_join = matches!(
            self.store.desired(),
            Ok(Some(DesiredState { join: Some(_), .. }))
        );
        let health = HealthInputs {
            network_applied: ok(&self.network_condition),
            hub_reached: self.hub_reached,
            kubelet_active: has_join.then(|| self.kubelet_condition.as_ref().is_some_and(ok)),
        };
        self.upgrade_input.send_if_modified(|i| {
            let changed = i.health.network_applied != health.network_applied
                || i.health.hub_reached != health.hub_reached
                || i.health.kubelet_active != health.kubelet_active;
            i.health = health;
            changed
        });
    }

    /// Renews the client certificate once a third of its validity is left, with a fresh key;
    /// returns whether it did. At most once per [`RENEW_SPACING`]: with the node's clock far
    /// ahead of the hub's, a fresh certificate still looks due, and renewing on every
    /// heartbeat would churn the hub's certificates.
    async fn maybe_renew(&mut self, identity: &Identity) -> bool {
        let Ok((from, until)) = pki::validity(&identity.certificate_pem, "client certificate")
        else {
            return false;
        };
        if let Ok(mut s) = self.status.write() {
            s.certificate_not_after = rfc3339(until);
        }
        if SystemTime::now() < pki::renew_at(from, until)
            || self.renewed_at.is_some_and(|t| t.elapsed() < RENEW_SPACING)
        {
            return false;
        }
        let result = async {
            let hub = self.hub_for(identity).map_err(RegisterError::from)?;
            let key_pem = self.keys.generate()?;
            let csr = self.csr(&key_pem, identity.appliance_id.as_str())?;
            let renewal = hub.renew(&csr).await?;
            let renewed = Identity {
                key_pem,
                certificate_pem: renewal.certificate_pem,
                ca_bundle_pem: renewal.ca_bundle_pem,
                ..identity.clone()
            };
            self.store.save_identity(&renewed)?;
            Ok::<_, RegisterError>(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!("client certificate renewed");
                self.hub = None;
                self.renewed_at = Some(Instant::now());
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "certificate renewal failed; will retry");
                false
            }
        }
    }

    fn node_status(&self) -> NodeStatus {
        let read = |p: &str| std::fs::read_to_string(self.roots.proc.join(p)).unwrap_or_default();
        let first = |text: String| -> f64 {
            text.split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let conditions = self.conditions(true);
        NodeStatus {
            agent_version: env!("CARGO_PKG_VERSION").into(),
            os_version: os_version(&self.settings.root),
            booted_slot: self.booted_slot.clone(),
            uptime_seconds: first(read("uptime")) as u64,
            load1: first(read("loadavg")),
            conditions,
            counters: self.store.counters().unwrap_or_default(),
            // The node's own setting: the hub learns it from here and names it to the peers.
            vtep_address: self.settings.vtep_address.map(|ip| ip.to_string()),
            upgrade: self.upgrade_report.get(),
            config: self.config_report.clone(),
            // Filled in by the heartbeat, which resolves the hub's name.
            hub_link: None,
            observed_at: time::OffsetDateTime::now_utc(),
        }
    }

    /// Queues this round's report, then delivers the queue oldest first; applies the desired
    /// state of the last answer.
    async fn heartbeat(&mut self, identity: &Identity) -> Result<(), HubError> {
        let mut status = self.node_status();
        status.hub_link = crate::hub_link::discover(&identity.hub_url).await;
        let report = Heartbeat {
            applied_generation: self.store.applied_generation().unwrap_or(0),
            status,
        };
        match self.store.enqueue(&report, self.settings.queue_limit) {
            Ok(0) => {}
            Ok(dropped) => tracing::warn!(dropped, "report queue full: oldest reports dropped"),
            Err(e) => tracing::error!(error = %e, "queueing the report failed"),
        }
        let hub = self.hub_for(identity)?;
        let mut last: Option<HeartbeatResponse> = None;
        let outcome = loop {
            let queued = match self.store.oldest_report() {
                Ok(Some(q)) => q,
                Ok(None) => break Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, "reading the report queue failed");
                    break Ok(());
                }
            };
            let sent = Instant::now();
            match hub.heartbeat(&queued.report).await {
                Ok(answer) => {
                    self.metrics.heartbeat(sent.elapsed());
                    if let Err(e) = self.store.remove_report(queued.seq) {
                        tracing::error!(error = %e, "removing a delivered report failed");
                        break Ok(());
                    }
                    last = Some(answer);
                }
                Err(e) => break Err(e),
            }
        };
        if let Some(answer) = last {
            if let Ok(mut s) = self.status.write() {
                s.hub_reachable = true;
                s.last_hub_contact = rfc3339(SystemTime::now());
            }
            self.apply_desired(&answer.desired, false).await;
        }
        outcome
    }

    /// Applies a desired state once per generation (`force` re-applies the stored one at
    /// start). Files are rewritten only when they change.
    async fn apply_desired(&mut self, desired: &DesiredState, force: bool) {
        self.interval = Duration::from_secs(u64::from(desired.heartbeat_interval_seconds.max(1)));
        self.upgrade_input.send_if_modified(|i| {
            let changed = i.order != desired.upgrade;
            i.order = desired.upgrade.clone();
            changed
        });
        let applied = self.store.applied_generation().unwrap_or(0);
        if !force && desired.generation <= applied && applied != 0 {
            return;
        }
        if let Err(e) = self.store.set_desired(desired) {
            tracing::error!(error = %e, "keeping the desired state failed");
        }
        let mut complete = true;
        if let Some(join) = &desired.join {
            complete &= self.write_kubelet_files(join).await;
        }
        if self.settings.manage_network {
            // Also without a document: the hub sends none once the appliance has left its
            // last VPC, and the overlay links must go then.
            let vtep = self.settings.vtep_address;
            let result = match desired.overlay.as_ref().map(|doc| with_own_vtep(doc, vtep)) {
                Some(Err(e)) => Err(e),
                Some(Ok(doc)) => self.network.apply_overlay(Some(&doc)).await,
                None => self.network.apply_overlay(None).await,
            };
            self.metrics.network_applied("overlay", result.is_ok());
            let vpcs = desired.overlay.as_ref().map_or(0, |o| o.vpcs.len());
            self.overlay_condition = Some(match result {
                Ok(changes) => {
                    tracing::info!(changes, vpcs, "overlay applied");
                    condition(
                        "OverlayApplied",
                        true,
                        "Applied",
                        format!("generation {}: {vpcs} VPCs", desired.generation),
                    )
                }
                Err(e) => {
                    tracing::error!(error = %e, "applying the VPC overlay failed");
                    complete = false;
                    condition("OverlayApplied", false, "ApplyFailed", e.to_string())
                }
            });
        } else {
            // Said, so that the hub does not take the applied generation for a working VPC.
            self.overlay_condition =
                desired
                    .overlay
                    .as_ref()
                    .filter(|o| !o.vpcs.is_empty())
                    .map(|_| {
                        condition(
                            "OverlayApplied",
                            false,
                            "NotManaged",
                            "network.manage is false: this node does not realise VPC overlays",
                        )
                    });
        }
        if let Some(config) = &desired.config {
            let last_good = self
                .config_report
                .as_ref()
                .and_then(|r| r.last_good_generation);
            let outcome = match config.settings.validate() {
                Err(reason) => cairn_api::ConfigOutcome::Refused { reason },
                Ok(()) => match self.apply_fleet_network(config).await {
                    cairn_api::ConfigOutcome::Applied => self.apply_host_settings(config).await,
                    other => other,
                },
            };
            let report = config_report(config, last_good, outcome);
            match &report.outcome {
                cairn_api::ConfigOutcome::Applied => {
                    tracing::info!(
                        generation = config.generation,
                        "fleet configuration applied"
                    )
                }
                outcome => {
                    tracing::warn!(
                        generation = config.generation,
                        ?outcome,
                        "fleet configuration refused"
                    )
                }
            }
            self.config_report = Some(report);
        }
        if complete && desired.generation != applied {
            tracing::info!(generation = desired.generation, "desired state applied");
            if let Err(e) = self.store.set_applied_generation(desired.generation) {
                tracing::error!(error = %e, "recording the applied generation failed");
            }
        }
    }

    /// The network part of a fleet configuration, through the safe apply: the host netplan
    /// files with the hub's patch merged last, probed by reaching the hub through the new
    /// network, kept or rolled back. Without a patch, one kept from before is removed the
    /// same way.
    async fn apply_fleet_network(
        &mut self,
        config: &cairn_api::RenderedConfig,
    ) -> cairn_api::ConfigOutcome {
        use cairn_api::ConfigOutcome;
        if !self.settings.manage_network {
            return match config.netplan {
                Some(_) => ConfigOutcome::Refused {
                    reason: "network.manage is false: this node does not apply netplan; \
                             remove the layer's `netplan:` for it"
                        .into(),
                },
                None => ConfigOutcome::Applied,
            };
        }
        let patch = match config.netplan.as_ref().map(serde_yaml_ng::to_string) {
            None => None,
            Some(Ok(text)) => Some(text),
            Some(Err(e)) => {
                return ConfigOutcome::Refused {
                    reason: format!("the netplan patch cannot be written as YAML: {e}"),
                };
            }
        };
        let probes: Vec<cairn_netplan::safe::Probe> =
            hub_probe(&self.settings.hub_url).into_iter().collect();
        match self
            .network
            .try_fleet(&self.settings.netplan_dir, patch.as_deref(), &probes)
            .await
        {
            Ok(FleetTry::Kept) => ConfigOutcome::Applied,
            Ok(FleetTry::RolledBack(reason)) => ConfigOutcome::RolledBack { reason },
            Err(e) => ConfigOutcome::Refused {
                reason: format!("applying the netplan patch failed and was undone: {e}"),
            },
        }
    }

    /// The DNS and NTP servers of a fleet configuration: their files written (or removed),
    /// then systemd-resolved restarted and chrony told to re-read its sources for what
    /// changed. A file that cannot be written refuses the generation; a daemon that does
    /// not re-read is the `HostSettingsApplied` condition, since the file is in place for
    /// its next start.
    async fn apply_host_settings(
        &mut self,
        config: &cairn_api::RenderedConfig,
    ) -> cairn_api::ConfigOutcome {
        let files = crate::host_settings::HostFiles::under(&self.settings.root);
        let changed = match crate::host_settings::write(&files, &config.settings) {
            Ok(c) => c,
            Err(e) => {
                return cairn_api::ConfigOutcome::Refused {
                    reason: format!(
                        "writing {} or {} failed: {e}; check that the node's root is writable",
                        files.resolved.display(),
                        files.chrony.display()
                    ),
                };
            }
        };
        let mut failed = Vec::new();
        if changed.dns {
            let restarted = match DbusSystemd::connect(&self.settings.system_bus).await {
                Ok(units) => units.restart("systemd-resolved.service").await,
                Err(e) => Err(e),
            };
            if let Err(e) = restarted {
                failed.push(format!(
                    "restarting systemd-resolved: {}",
                    cairn_api::error_chain(&e)
                ));
            }
        }
        if changed.ntp {
            let reloaded = tokio::process::Command::new(&self.chronyc)
                .args(["reload", "sources"])
                .output()
                .await;
            match reloaded {
                Ok(out) if out.status.success() => {}
                Ok(out) => failed.push(format!(
                    "chronyc reload sources: {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => failed.push(format!(
                    "running {}: {e} (is chrony installed?)",
                    self.chronyc.display()
                )),
            }
        }
        if changed.dns || changed.ntp {
            tracing::info!(
                dns = changed.dns,
                ntp = changed.ntp,
                "DNS/NTP files written"
            );
            self.host_condition = Some(if failed.is_empty() {
                condition(
                    "HostSettingsApplied",
                    true,
                    "Applied",
                    format!("generation {}", config.generation),
                )
            } else {
                let message = format!(
                    "generation {}: files written, in force at the daemons' next start: {}",
                    config.generation,
                    failed.join("; ")
                );
                tracing::warn!(%message, "DNS/NTP not re-read");
                condition("HostSettingsApplied", false, "ReloadFailed", message)
            });
        }
        cairn_api::ConfigOutcome::Applied
    }

    fn layout(&self) -> Layout {
        let dir_in_host = self
            .settings
            .kubelet_dir
            .strip_prefix(&self.settings.root)
            .map(|p| Path::new("/").join(p))
            .unwrap_or_else(|_| self.settings.kubelet_dir.clone());
        Layout {
            dir: self.settings.kubelet_dir.clone(),
            dir_in_host,
            dropin_dir: self.settings.kubelet_dropin_dir.clone(),
            exec_start: self.settings.kubelet_exec_start.clone(),
        }
    }

    async fn write_kubelet_files(&mut self, join: &cairn_api::JoinBundle) -> bool {
        let id = match self.store.identity() {
            Ok(Some(i)) => i.appliance_id.to_string(),
            _ => self.settings.hostname.clone(),
        };
        let written = kubelet::render(join, &self.layout(), &id)
            .and_then(|files| kubelet::write_changed(&files));
        match written {
            Ok(w) => {
                if w.any {
                    tracing::info!(revision = join.revision, "kubelet files written");
                }
                self.files_changed |= w.any;
                self.reload_pending |= w.unit_files;
                // systemd may not be up yet this early in boot: supervise() retries.
                self.reload_if_pending().await;
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "writing kubelet files failed");
                false
            }
        }
    }

    async fn reload_if_pending(&mut self) {
        if !self.reload_pending {
            return;
        }
        let Some(units) = self.units().await else {
            return;
        };
        match units.daemon_reload().await {
            Ok(()) => self.reload_pending = false,
            Err(e) => {
                tracing::error!(error = %cairn_api::error_chain(&e), "daemon-reload failed");
                self.units = None;
            }
        }
    }

    async fn units(&mut self) -> Option<DbusSystemd> {
        if self.units.is_none() {
            match DbusSystemd::connect(&self.settings.system_bus).await {
                Ok(u) => self.units = Some(u),
                Err(e) => {
                    tracing::warn!(error = %e, "systemd unreachable");
                    self.kubelet_condition = Some(condition(
                        "KubeletActive",
                        false,
                        "SystemdUnreachable",
                        e.to_string(),
                    ));
                }
            }
        }
        self.units.clone()
    }

    /// Looks at the kubelet unit and starts or restarts it as the supervisor decides.
    async fn supervise(&mut self) {
        let has_join = matches!(
            self.store.desired(),
            Ok(Some(DesiredState { join: Some(_), .. }))
        );
        if !has_join {
            return;
        }
        self.reload_if_pending().await;
        if self.reload_pending {
            return;
        }
        let Some(units) = self.units().await else {
            return;
        };
        let unit = self.settings.kubelet_unit.clone();
        let state = match units.state(&unit).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "reading the kubelet unit failed");
                self.units = None;
                return;
            }
        };
        let changed = std::mem::take(&mut self.files_changed);
        let action = self.supervisor.decide(&state, changed, Instant::now());
        let result = match action {
            Action::None => Ok(()),
            Action::Start => {
                tracing::info!(%unit, "starting");
                units.start(&unit).await
            }
            Action::Restart => {
                tracing::info!(%unit, state = %state.active, "restarting");
                if state.active == "failed" {
                    let _ = self.store.increment(store::KUBELET_RESTARTS);
                }
                units.restart(&unit).await
            }
        };
        let shown = format!("{}/{}", state.active, state.sub);
        self.kubelet_condition = Some(match &result {
            Err(e) => condition("KubeletActive", false, "StartFailed", e.to_string()),
            Ok(()) if state.active == "active" => {
                condition("KubeletActive", true, "Running", shown.clone())
            }
            Ok(()) => condition("KubeletActive", false, "NotRunning", shown.clone()),
        });
        if let Err(e) = result {
            tracing::error!(error = %e, "kubelet unit action failed");
            // Try the files' change again next time.
            self.files_changed |= changed;
        }
        if let Ok(mut s) = self.status.write() {
            s.kubelet_unit = Some(shown);
        }
    }

    /// The conditions reported to the hub and shown locally.
    fn conditions(&self, registered: bool) -> Vec<Condition> {
        let reason = if registered {
            "Registered"
        } else {
            "NotRegistered"
        };
        let mut conditions = vec![
            self.network_condition.clone(),
            condition("Registered", registered, reason, ""),
        ];
        conditions.extend(self.overlay_condition.clone());
        conditions.extend(self.host_condition.clone());
        conditions.extend(self.kubelet_condition.clone());
        conditions
    }

    /// Copies the store's view into the status the local API serves.
    fn publish(&self) {
        let identity = self.store.identity().ok().flatten();
        let desired = self.store.desired().ok().flatten();
        let conditions = self.conditions(identity.is_some());
        if let Ok(mut s) = self.status.write() {
            s.appliance_id = identity.as_ref().map(|i| i.appliance_id.to_string());
            s.site = identity.map(|i| i.site);
            s.desired_generation = desired.map(|d| d.generation);
            s.applied_generation = self.store.applied_generation().unwrap_or(0);
            s.heartbeat_interval_seconds = self.interval.as_secs() as u32;
            s.queued_reports = self.store.queue_len().unwrap_or(0);
            s.counters = self.store.counters().unwrap_or_default();
            s.conditions = conditions;
            s.booted_slot = self.booted_slot.clone();
            s.upgrade = self.upgrade_report.get();
        }
    }
}

/// The overlay with this node's configured VTEP address: the node owns its underlay, and the
/// hub's copy lags a heartbeat behind a change of `network.vtep_address`.
pub fn with_own_vtep(
    doc: &OverlayDocument,
    vtep: Option<std::net::IpAddr>,
) -> Result<OverlayDocument, NetworkError> {
    match vtep {
        Some(ip) => Ok(OverlayDocument {
            local_vtep: ip.to_string(),
            ..doc.clone()
        }),
        None if doc.vpcs.is_empty() || !doc.local_vtep.is_empty() => Ok(doc.clone()),
        None => Err(NetworkError(format!(
            "the hub put this appliance in VPC {:?}, but it has no VTEP address: set network.vtep_address in node.yaml to an underlay address of this appliance",
            doc.vpcs[0].name
        ))),
    }
}

/// What to do with the registration kept from an earlier attempt before sending it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PendingStep {
    /// Send it as it is: same key, same CSR (the hub answers a repeat with the same
    /// appliance).
    Resend,
    /// Same key and CSR with the token now in the token file.
    NewToken,
    /// The hostname changed: a CSR naming it, for the same key.
    NewCsr,
    /// Nothing kept: a new key and CSR.
    NewKey,
}

/// The step for `kept` when the node is now `hostname` with the token `token_id`. The key
/// never changes once kept: only a saved identity (or `cairn-node state reset`) ends it.
fn pending_step(kept: Option<&PendingRegistration>, hostname: &str, token_id: &str) -> PendingStep {
    match kept {
        None => PendingStep::NewKey,
        Some(p) if p.hostname != hostname => PendingStep::NewCsr,
        Some(p) if p.token_id != token_id => PendingStep::NewToken,
        Some(_) => PendingStep::Resend,
    }
}

/// The public ID of an enrollment token (`cairn-et.ID.SECRET`), safe to log and keep; the
/// secret never is. Text of another form has none.
fn public_token_id(token: &str) -> String {
    token
        .strip_prefix("cairn-et.")
        .and_then(|rest| rest.split_once('.'))
        .map(|(id, _)| id.to_owned())
        .unwrap_or_default()
}

/// `CAIRN_VERSION` (or `PRETTY_NAME`) from os-release under the root: the running OS version.
pub fn os_version(root: &Path) -> String {
    let text = std::fs::read_to_string(root.join("etc/os-release")).unwrap_or_default();
    let field = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)
                .and_then(|v| v.strip_prefix('='))
                .map(|v| v.trim_matches('"').to_owned())
        })
    };
    field("CAIRN_VERSION")
        .or_else(|| field("PRETTY_NAME"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_jitter_stays_within_ten_percent() {
        let base = Duration::from_secs(30);
        assert_eq!(jittered(base, 0.0), Duration::from_secs(27));
        assert_eq!(jittered(base, 1.0), Duration::from_secs(33));
        assert_eq!(jittered(base, 0.5), base);
    }

    #[test]
    fn the_configured_vtep_wins_and_a_missing_one_is_named() {
        let doc = OverlayDocument {
            local_vtep: "192.0.2.9".into(),
            vpcs: vec![cairn_api::VpcMembership {
                name: "blue".into(),
                vni: 4096,
                vrf_table: 104_096,
                subnet: "10.1.0.0/24".into(),
                gateway: "10.1.0.1/24".into(),
                peer_vteps: vec!["192.0.2.2".into()],
            }],
        };
        let own = with_own_vtep(&doc, Some("192.0.2.1".parse().unwrap())).unwrap();
        assert_eq!(own.local_vtep, "192.0.2.1");
        assert_eq!(own.vpcs, doc.vpcs);
        // Without a setting the hub's copy stands; without either, the error says what to set.
        assert_eq!(with_own_vtep(&doc, None).unwrap(), doc);
        let unknown = OverlayDocument {
            local_vtep: String::new(),
            ..doc.clone()
        };
        let e = with_own_vtep(&unknown, None).unwrap_err().to_string();
        assert!(
            e.contains("VPC \"blue\"") && e.contains("network.vtep_address"),
            "{e}"
        );
        let empty = OverlayDocument {
            local_vtep: String::new(),
            vpcs: vec![],
        };
        assert_eq!(with_own_vtep(&empty, None).unwrap(), empty);
    }

    #[test]
    fn a_kept_registration_keeps_its_key() {
        let kept = PendingRegistration {
            key_pem: "k".into(),
            csr_pem: "c".into(),
            hostname: "edge-1".into(),
            token_id: "t1".into(),
        };
        let cases = [
            (None, "edge-1", "t1", PendingStep::NewKey),
            (Some(&kept), "edge-1", "t1", PendingStep::Resend),
            (Some(&kept), "edge-1", "t2", PendingStep::NewToken),
            (Some(&kept), "edge-2", "t1", PendingStep::NewCsr),
            (Some(&kept), "edge-2", "t2", PendingStep::NewCsr),
        ];
        for (kept, hostname, token, step) in cases {
            assert_eq!(
                pending_step(kept, hostname, token),
                step,
                "{hostname} {token}"
            );
        }
    }

    #[test]
    fn only_the_public_part_of_a_token_is_kept() {
        assert_eq!(public_token_id("cairn-et.0a1b2c.deadbeef"), "0a1b2c");
        assert_eq!(public_token_id("no-token-here"), "");
        assert_eq!(public_token_id("cairn-et.secretonly"), "");
    }

    #[test]
    fn backoff_doubles_with_jitter_and_caps_at_five_minutes() {
        assert_eq!(backoff(1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff(4, 1.0), Duration::from_secs(8));
        assert_eq!(backoff(4, 0.0), Duration::from_secs(4));
        assert_eq!(backoff(30, 1.0), BACKOFF_CAP);
        assert_eq!(backoff(30, 0.0), BACKOFF_CAP / 2);
        assert!(backoff(u32::MAX, 0.7) <= BACKOFF_CAP);
    }
}

/// A TCP probe of the hub at `url` (`https://host[:port]`): a fleet network change is kept
/// only when the hub is still reachable through it.
fn hub_probe(url: &str) -> Option<cairn_netplan::safe::Probe> {
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split('/').next()?;
    let target = if authority.ends_with(']') || !authority.contains(':') {
        format!("{authority}:443")
    } else {
        authority.to_owned()
    };
    target.parse().ok()
}

/// The report of a rendered fleet configuration whose settings were checked (with the same
/// function the hub validated them with) and whose network part ended in `outcome`; the
/// heartbeat interval is in force already (the hub renders it into the desired state's own
/// field), DNS and NTP servers are written by `apply_host_settings`. The other settings are
/// kept with the desired state and named in `not_applied`:
/// this node does not act on them yet. `last_good` is the generation kept before.
fn config_report(
    config: &cairn_api::RenderedConfig,
    last_good: Option<u64>,
    outcome: cairn_api::ConfigOutcome,
) -> cairn_api::ConfigReport {
    use cairn_api::ConfigOutcome;
    let last_good_generation = match outcome {
        ConfigOutcome::Applied => Some(config.generation),
        _ => last_good,
    };
    let s = &config.settings;
    let not_applied = [
        ("settings.health_checks", s.health_checks.is_some()),
        ("settings.drain_command", s.drain_command.is_some()),
        ("settings.kubelet", s.kubelet.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(key, _)| key.to_owned())
    .collect();
    cairn_api::ConfigReport {
        generation: config.generation,
        outcome,
        last_good_generation,
        not_applied,
    }
}

#[cfg(test)]
mod config_tests {
    use cairn_api::node_config::FleetConfig;
    use cairn_api::{ConfigOutcome, RenderedConfig};

    use super::{config_report, hub_probe};

    #[test]
    fn an_applied_generation_becomes_the_last_good_a_rolled_back_one_does_not() {
        let good = RenderedConfig {
            generation: 4,
            settings: FleetConfig {
                heartbeat_interval_seconds: Some(5),
                dns: Some(vec!["192.0.2.53".into()]),
                drain_command: Some(vec!["/usr/bin/true".into()]),
                ..Default::default()
            },
            ..Default::default()
        };
        let r = config_report(&good, Some(2), ConfigOutcome::Applied);
        assert_eq!(
            (r.outcome, r.last_good_generation),
            (ConfigOutcome::Applied, Some(4))
        );
        assert_eq!(
            r.not_applied,
            ["settings.drain_command"],
            "kept, not acted on; DNS is applied"
        );

        let cut = RenderedConfig {
            generation: 5,
            ..good.clone()
        };
        let rolled_back = ConfigOutcome::RolledBack {
            reason: "probe hub:8443 failed".into(),
        };
        let r = config_report(&cut, Some(4), rolled_back.clone());
        assert_eq!(
            (r.generation, r.outcome, r.last_good_generation),
            (5, rolled_back, Some(4))
        );
    }

    #[test]
    fn the_hub_probe_is_its_host_and_port() {
        let probe = |url| hub_probe(url).map(|p| p.to_string());
        assert_eq!(
            probe("https://10.2.0.1:8443").as_deref(),
            Some("10.2.0.1:8443")
        );
        assert_eq!(
            probe("https://hub.example/").as_deref(),
            Some("hub.example:443")
        );
        assert_eq!(
            probe("https://[2001:db8::1]").as_deref(),
            Some("[2001:db8::1]:443")
        );
    }
}
