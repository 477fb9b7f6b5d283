//! The hub's behaviour on top of a [`Store`]: tokens, registration, heartbeats, offline
//! detection, VPCs, audit. Everything here is backend-agnostic; the HTTP layer only maps
//! requests to these calls and [`FleetError`]s to status codes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

pub use appliances::ApplianceFilter;
pub use cairn_api::hub::TokenRefusal;
use cairn_api::hub::{
    ApplianceView, AssignResult, CreateEnrollmentToken, CreateOperatorToken, EnrollmentTokenView,
    NewToken, OperatorTokenView, Renewal, TokenCheck,
};
use cairn_api::{
    ApplianceId, DesiredState, Heartbeat, HeartbeatResponse, OverlayDocument, RegistrationRequest,
    RegistrationResponse,
};
pub use desired::Repair;
pub use events::{EventFeed, EventFilter, EventItem};
use rand::Rng;
pub use retention::Retention;
use rustls::pki_types::pem::PemObject;
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
pub use watch::WatchEvents;

use crate::controlplane::{BootstrapToken, BootstrapTokens, KubeBootstrapTokens};
use crate::model::{
    Appliance, AuditEntry, ControlPlane, DEFAULT_TENANT, EnrollmentToken, Event,
    MintedBootstrapToken, OperatorToken, Role, Site, Status, Tenant, TokenKind, Vpc, WebhookCursor,
    keys,
};
use crate::pki::{Ca, CsrError, Issued, PeerCert};
use crate::store::{Check, Fence, Fenced, Op, Store, StoreError, Versioned};

mod appliances;
mod audit;
mod config;
mod control_planes;
mod desired;
mod events;
mod heartbeats;
mod registration;
mod retention;
mod tenants;
mod tokens;
mod tunnels;
mod upgrade;
mod vpcs;
mod watch;

/// Everything that can go wrong in a hub operation, each mapped to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The store failed (503).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An enrollment token was refused (403).
    #[error("enrollment token refused: {0}")]
    TokenRefused(TokenRefusal),
    /// A CSR was refused (400).
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// No valid credentials (401).
    #[error("{0}")]
    Unauthenticated(String),
    /// The client certificate is no longer the appliance's (401).
    #[error("this client certificate was replaced by a later registration or renewal")]
    CertificateSuperseded,
    /// Not allowed for this role or site (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404), with its code.
    #[error("{message}")]
    NotFound {
        /// Error code.
        code: cairn_api::hub::ErrorCode,
        /// Human text.
        message: String,
    },
    /// Already exists or clashes (409).
    #[error("{0}")]
    Conflict(String),
    /// A registration presented a registered appliance's hardware without the right to
    /// re-key it (409). Says nothing of which appliance or site it is.
    #[error(
        "this hardware is registered; it re-keys only over mTLS with its certificate or with \
         a re-install token an operator mints for it (`cairn hub appliances reinstall ID`)"
    )]
    HardwareKnown,
    /// Revoking or deleting the last usable fleet-wide admin token would lock every admin
    /// out (409).
    #[error(
        "{0} is the last unexpired, unrevoked fleet-wide admin token; create another admin \
         token first (`cairn hub operators create NAME --role admin`)"
    )]
    LastAdmin(String),
    /// Invalid input (400), with the field at fault.
    #[error("{0}")]
    Invalid(String),
    /// A control plane's API server failed (502).
    #[error("control plane {name}: {message}")]
    ControlPlane {
        /// Control plane.
        name: String,
        /// What failed.
        message: String,
    },
    /// A release bundle was refused: bad signature, unknown key, damaged payload, wrong
    /// SHA-256 (400, `bundle_refused`).
    #[error("bundle refused: {0}")]
    BundleRefused(String),
    /// A watch from a resource version older than the changes the store keeps (410).
    #[error(
        "resource version {0} is too old: the hub no longer keeps the changes since; list \
         again and watch from the list's resource_version"
    )]
    TooOld(u64),
    /// A `continue` cursor that is not one the hub made (400).
    #[error("the continue cursor is not one this hub made; start the listing again")]
    BadCursor,
    /// Too much contention on one record (503); the client should retry.
    #[error("too many concurrent changes to {0}; retry")]
    Contended(String),
}

/// Tunables of the fleet logic.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// Validity of appliance client certificates.
    pub cert_ttl: Duration,
    /// Heartbeat interval handed to appliances, seconds.
    pub heartbeat_interval_seconds: u32,
    /// Missed intervals before an appliance is offline.
    pub offline_after_missed: u32,
    /// Name of this hub process in events (host:pid).
    pub hub_name: String,
    /// Where release bundles are kept (`<data>/releases`); `None`: releases cannot be added.
    pub releases_dir: Option<std::path::PathBuf>,
    /// The keys release bundles must be signed with.
    pub release_keys: cairn_formats::keys::TrustStore,
    /// `https://host:port` appliances download bundles from; `None`: the address each
    /// appliance reached the hub at.
    pub public_url: Option<String>,
    /// What the audit log keeps.
    pub audit_retention: Retention,
    /// What the events keep.
    pub event_retention: Retention,
}

impl Default for FleetSettings {
    fn default() -> Self {
        Self {
            cert_ttl: Duration::hours(24),
            heartbeat_interval_seconds: 30,
            offline_after_missed: 3,
            hub_name: format!("hub-{}", std::process::id()),
            releases_dir: None,
            release_keys: Default::default(),
            public_url: None,
            audit_retention: Retention::default(),
            event_retention: Retention::default(),
        }
    }
}

/// Who is asking, for authorization and audit.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// `operator:<name>`, `appliance:<id>` or `anonymous`.
    pub actor: String,
    /// Peer address.
    pub source: String,
    /// The operator's token, for operator calls.
    pub operator: Option<OperatorToken>,
    /// The claimed sites and their tenants when the call was authenticated: what a
    /// tenant-scoped token's sites are.
    pub(crate) site_tenants: Arc<BTreeMap<String, String>>,
}

/// What an operator token may see: the whole fleet, one tenant, or one site.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Everything.
    Fleet,
    /// The tenant's sites, VPCs and control planes.
    Tenant(&'a str),
    /// The site's appliances and tokens; its tenant's VPCs and control planes.
    Site(&'a str),
}

/// The tenant a site belongs to, given the claimed sites.
fn tenant_in<'a>(site_tenants: &'a BTreeMap<String, String>, site: &str) -> &'a str {
    site_tenants
        .get(site)
        .map_or(crate::model::DEFAULT_TENANT, String::as_str)
}

impl Caller {
    /// An unauthenticated caller at `source`.
    pub fn anonymous(source: impl Into<String>) -> Self {
        Self {
            actor: "anonymous".into(),
            source: source.into(),
            ..Default::default()
        }
    }

    /// The operator's token; refuses callers that are not operators.
    pub fn operator(&self) -> Result<&OperatorToken, FleetError> {
        self.operator
            .as_ref()
            .ok_or_else(|| FleetError::Unauthenticated("an operator token is required".into()))
    }

    /// Refuses callers below `role`.
    pub fn require(&self, role: Role) -> Result<&OperatorToken, FleetError> {
        let op = self.operator()?;
        if op.role < role {
            return Err(FleetError::Forbidden(format!(
                "this needs the {role} role; the token has {}",
                op.role
            )));
        }
        Ok(op)
    }

    /// The caller's scope; `None` for callers that are not operators (they see nothing).
    pub fn scope(&self) -> Option<Scope<'_>> {
        let op = self.operator.as_ref()?;
        Some(match (&op.site, &op.tenant) {
            (Some(s), _) => Scope::Site(s),
            (None, Some(t)) => Scope::Tenant(t),
            (None, None) => Scope::Fleet,
        })
    }

    /// Whether the caller is a fleet-wide operator.
    pub fn is_fleet_wide(&self) -> bool {
        self.scope() == Some(Scope::Fleet)
    }

    /// The tenant `site` belongs to, as of this call's authentication (decisions that
    /// change records read the store instead).
    fn tenant_of(&self, site: &str) -> &str {
        tenant_in(&self.site_tenants, site)
    }

    /// The caller's tenant; `None` for fleet-wide callers and non-operators.
    pub fn tenant(&self) -> Option<&str> {
        match self.scope()? {
            Scope::Fleet => None,
            Scope::Tenant(t) => Some(t),
            Scope::Site(s) => Some(self.tenant_of(s)),
        }
    }

    /// Whether this caller may see or change things of `site`.
    pub fn sees(&self, site: &str) -> bool {
        match self.scope() {
            Some(Scope::Fleet) => true,
            Some(Scope::Tenant(t)) => self.tenant_of(site) == t,
            Some(Scope::Site(s)) => s == site,
            None => false,
        }
    }

    /// Whether this caller may see the tenant-wide things (VPCs, control planes) of
    /// `tenant`: its tenant's, or every one for a fleet-wide caller.
    pub fn sees_tenant(&self, tenant: &str) -> bool {
        self.is_fleet_wide() || self.tenant() == Some(tenant)
    }

    /// Refuses callers that may not change tenant-wide things of `tenant` (create VPCs,
    /// assign by labels): fleet-wide callers and those scoped to that tenant may.
    fn check_tenant_wide(&self, tenant: &str) -> Result<(), FleetError> {
        match self.scope() {
            Some(Scope::Fleet) => Ok(()),
            Some(Scope::Tenant(t)) if t == tenant => Ok(()),
            _ => Err(FleetError::Forbidden(format!(
                "this needs a token scoped to tenant {tenant:?} or the whole fleet"
            ))),
        }
    }

    /// [`Self::check_site`] for a thing of a site; for a fleet-wide thing (`None`), refuses a
    /// scoped caller with `why`.
    fn check_scope(&self, site: Option<&str>, why: &str) -> Result<(), FleetError> {
        match site {
            Some(s) => self.check_site(s),
            None if !self.is_fleet_wide() => Err(FleetError::Forbidden(why.into())),
            None => Ok(()),
        }
    }

    fn check_site(&self, site: &str) -> Result<(), FleetError> {
        if self.sees(site) {
            Ok(())
        } else {
            Err(FleetError::Forbidden(format!(
                "this token is scoped to another site than {site:?}"
            )))
        }
    }
}

const MAX_RETRIES: usize = 16;

/// One attempt of a compare-and-set change, decided on what was just read.
enum Attempt<T> {
    /// Commit `ops` if every check still holds, then answer `then`.
    Write {
        checks: Vec<Check>,
        ops: Vec<Op>,
        then: T,
    },
    /// Nothing to write: answer now.
    Done(T),
}
const PAGE: usize = 1000;

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill(buf.as_mut_slice());
    hex::encode(buf)
}

/// Constant-time comparison of two hex digests.
fn same_digest(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// A time-ordered, unique key under `prefix`.
fn log_key(prefix: &str, at: OffsetDateTime) -> String {
    format!(
        "{prefix}{:020}-{}",
        at.unix_timestamp_nanos(),
        random_hex(4)
    )
}

/// The key from which entries at or after `since` are listed.
pub fn log_start(prefix: &str, since: OffsetDateTime) -> String {
    // Keys are "<nanos>-<rand>"; everything at `since` sorts after "<nanos>-" minus one.
    format!(
        "{prefix}{:020}",
        since.unix_timestamp_nanos().saturating_sub(1)
    )
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("hub records serialize")
}

fn decode<T: DeserializeOwned>(key: &str, v: &Versioned) -> Result<T, FleetError> {
    serde_json::from_slice(&v.value).map_err(|e| {
        FleetError::Store(StoreError::Embedded {
            op: "decoding a record",
            source: format!("{key}: {e}").into(),
        })
    })
}

/// The hardware identity key: serial plus the sorted MACs.
fn hardware_key(inventory: &cairn_api::HardwareInventory) -> Option<String> {
    let macs = inventory.normalized_macs();
    if inventory.serial.trim().is_empty() && macs.is_empty() {
        return None;
    }
    let id = format!("{}|{}", inventory.serial.trim(), macs.join(","));
    Some(format!("{}{}", keys::HARDWARE, sha256_hex(&id)))
}

fn validate_name(what: &str, name: &str) -> Result<(), FleetError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(FleetError::Invalid(format!(
            "{what} {name:?}: 1-63 characters of a-z, 0-9 and '-'"
        )))
    }
}

/// The hub's state machine over a store.
#[derive(Clone)]
pub struct Fleet {
    store: Arc<dyn Store>,
    ca: Arc<Ca>,
    settings: Arc<FleetSettings>,
    kube: Arc<dyn BootstrapTokens>,
    /// The same store as `store`, seen as the counter of log writes retention watches.
    log_writes: Arc<retention::LogWrites>,
    /// What this hub knows of the appliances it serves heartbeats to
    /// ([`heartbeats::Served`]): a known appliance's heartbeat is one conditional write.
    served: Arc<heartbeats::Served>,
    /// Whether this process led at its last election, and the jobs to wake when it starts to.
    leadership: Arc<Leadership>,
}

/// Whether this process leads the singleton jobs, as its last election said.
#[derive(Default)]
struct Leadership {
    leading: std::sync::atomic::AtomicBool,
    gained: tokio::sync::Notify,
}

impl Fleet {
    /// Wraps a store and the CA.
    pub fn new(store: Arc<dyn Store>, ca: Arc<Ca>, settings: FleetSettings) -> Self {
        let log_writes = Arc::new(retention::LogWrites::new(store, &settings));
        Self {
            store: log_writes.clone(),
            ca,
            settings: Arc::new(settings),
            kube: Arc::new(KubeBootstrapTokens),
            log_writes,
            served: Default::default(),
            leadership: Default::default(),
        }
    }

    /// Uses another way to reach control planes (tests script the API server's side).
    pub fn with_bootstrap_tokens(mut self, kube: Arc<dyn BootstrapTokens>) -> Self {
        self.kube = kube;
        self
    }

    /// This fleet as one pass of a singleton job sees it: every write also requires the
    /// leadership `fence` stands for ([`crate::store::Fenced`]), so a pass that outlives
    /// this process's leadership commits nothing more.
    pub fn as_leader(&self, fence: Fence) -> Fleet {
        Fleet {
            store: Arc::new(Fenced::new(self.store.clone(), fence)),
            ca: self.ca.clone(),
            settings: self.settings.clone(),
            kube: self.kube.clone(),
            log_writes: self.log_writes.clone(),
            served: self.served.clone(),
            leadership: self.leadership.clone(),
        }
    }

    /// Campaigns for (or renews) the leadership of the singleton jobs; when this process has
    /// just become the leader, wakes the jobs waiting in [`Self::took_leadership`].
    pub async fn lead(&self) -> Result<Option<Fence>, StoreError> {
        use std::sync::atomic::Ordering;
        let lead = self.store.lead().await;
        match &lead {
            Ok(Some(_)) => {
                if !self.leadership.leading.swap(true, Ordering::SeqCst) {
                    self.leadership.gained.notify_waiters();
                }
            }
            Ok(None) => self.leadership.leading.store(false, Ordering::SeqCst),
            // Unknown: the next election says.
            Err(_) => {}
        }
        lead
    }

    /// Resolves the next time this process becomes the leader (a takeover, or the start of
    /// a hub that leads at once).
    pub async fn took_leadership(&self) {
        self.leadership.gained.notified().await;
    }

    /// The store, for metrics and jobs.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The CA.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The settings.
    pub fn settings(&self) -> &FleetSettings {
        &self.settings
    }

    async fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(u64, T)>, FleetError> {
        match self.store.get(key).await? {
            Some(v) => Ok(Some((v.version, decode(key, &v)?))),
            None => Ok(None),
        }
    }

    async fn list<T: DeserializeOwned>(&self, prefix: &str) -> Result<Vec<(u64, T)>, FleetError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(prefix, after.as_deref(), PAGE).await?;
            let n = page.len();
            for (k, v) in &page {
                out.push((v.version, decode(k, v)?));
            }
            match page.into_iter().last() {
                Some((k, _)) if n == PAGE => after = Some(k),
                _ => return Ok(out),
            }
        }
    }

    fn audit_op(
        caller: &Caller,
        action: &str,
        target: &str,
        result: &str,
        site: Option<&str>,
    ) -> Op {
        Self::audit_entry_op(caller, action, target, result, site, None)
    }

    /// An audit entry about a tenant-wide thing (a VPC, a control plane, the tenant): seen
    /// by that tenant's and fleet-wide tokens, not by site-scoped ones.
    fn tenant_audit_op(
        caller: &Caller,
        action: &str,
        target: &str,
        result: &str,
        tenant: &str,
    ) -> Op {
        Self::audit_entry_op(caller, action, target, result, None, Some(tenant))
    }

    fn audit_entry_op(
        caller: &Caller,
        action: &str,
        target: &str,
        result: &str,
        site: Option<&str>,
        tenant: Option<&str>,
    ) -> Op {
        let entry = AuditEntry {
            at: now(),
            actor: caller.actor.clone(),
            action: action.into(),
            target: target.into(),
            source: caller.source.clone(),
            result: result.into(),
            site: site.map(str::to_owned),
            tenant: tenant.map(str::to_owned),
        };
        Op::put(log_key(keys::AUDIT, entry.at), encode(&entry))
    }

    /// Records an audit entry on its own (refusals, where nothing else is written).
    pub async fn audit(
        &self,
        caller: &Caller,
        action: &str,
        target: &str,
        result: &str,
        site: Option<&str>,
    ) -> Result<(), FleetError> {
        self.store
            .txn(
                vec![],
                vec![Self::audit_op(caller, action, target, result, site)],
            )
            .await?;
        Ok(())
    }

    fn event_op(&self, appliance: &Appliance, kind: &str, message: String) -> Op {
        let event = Event {
            at: now(),
            appliance: appliance.id.clone(),
            site: appliance.site.clone(),
            kind: kind.into(),
            message,
            hub: self.settings.hub_name.clone(),
        };
        Op::put(log_key(keys::EVENTS, event.at), encode(&event))
    }

    /// Runs `attempt` (read, decide, say what to write) until its write commits. A check that
    /// no longer holds means another writer got there first: read again and decide again,
    /// up to [`MAX_RETRIES`] times, then answer `Contended(what)`.
    ///
    /// `attempt` is a closure making a future rather than an async closure: the futures of
    /// async closures cannot yet be proven `Send` for axum's handlers. It captures only
    /// references, so each attempt reads afresh.
    async fn cas<T, F, A>(&self, what: &str, mut attempt: F) -> Result<T, FleetError>
    where
        F: FnMut() -> A,
        A: std::future::Future<Output = Result<Attempt<T>, FleetError>>,
    {
        for _ in 0..MAX_RETRIES {
            match attempt().await? {
                Attempt::Done(answer) => return Ok(answer),
                Attempt::Write { checks, ops, then } => {
                    if self.store.txn(checks, ops).await? {
                        return Ok(then);
                    }
                }
            }
        }
        Err(FleetError::Contended(what.into()))
    }

    /// The stored record of an appliance, secrets included: for tests that check what only
    /// the appliance itself is sent.
    #[cfg(test)]
    pub(crate) async fn record(&self, id: &ApplianceId) -> Option<Appliance> {
        self.get(&format!("{}{id}", keys::APPLIANCES))
            .await
            .unwrap()
            .map(|(_, a)| a)
    }
}

#[cfg(test)]
mod tests;
