//! The hub's behaviour on top of a [`Store`]: tokens, registration, heartbeats, offline
//! detection, VPCs, audit. Everything here is backend-agnostic; the HTTP layer only maps
//! requests to these calls and [`FleetError`]s to status codes.

use std::collections::BTreeMap;
use std::sync::Arc;

pub use cairn_api::hub::TokenRefusal;
use cairn_api::hub::{
    ApplianceView, AssignResult, CreateEnrollmentToken, EnrollmentTokenView, NewToken,
    OperatorTokenView, Renewal, TokenCheck,
};
use cairn_api::{
    ApplianceId, DesiredState, Heartbeat, HeartbeatResponse, OverlayDocument, RegistrationRequest,
    RegistrationResponse,
};
use rand::Rng;
use rustls::pki_types::pem::PemObject;
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};

use crate::controlplane::{BootstrapToken, BootstrapTokens, KubeBootstrapTokens};
use crate::model::{
    Appliance, AuditEntry, ControlPlane, EnrollmentToken, Event, OperatorToken, Role, Status, Vpc,
    keys,
};
use crate::pki::{Ca, CsrError, Issued, PeerCert};
use crate::store::{Check, Op, Store, StoreError, Versioned};

mod upgrade;

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
        }
    }
}

/// Who is asking, for authorization and audit.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `operator:<name>`, `appliance:<id>` or `anonymous`.
    pub actor: String,
    /// Peer address.
    pub source: String,
    /// The operator's token, for operator calls.
    pub operator: Option<OperatorToken>,
}

impl Caller {
    /// An unauthenticated caller at `source`.
    pub fn anonymous(source: impl Into<String>) -> Self {
        Self {
            actor: "anonymous".into(),
            source: source.into(),
            operator: None,
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
        let op = self
            .operator
            .as_ref()
            .ok_or_else(|| FleetError::Unauthenticated("an operator token is required".into()))?;
        if op.role < role {
            return Err(FleetError::Forbidden(format!(
                "this needs the {role} role; the token has {}",
                op.role
            )));
        }
        Ok(op)
    }

    /// Whether this caller may see or change things of `site`.
    pub fn sees(&self, site: &str) -> bool {
        match &self.operator {
            Some(op) => op.site.as_deref().is_none_or(|s| s == site),
            None => false,
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

/// Splits `prefix.id.secret`.
fn split_token<'a>(token: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let rest = token.strip_prefix(prefix)?.strip_prefix('.')?;
    let (id, secret) = rest.split_once('.')?;
    let ok = |s: &str| !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    (ok(id) && ok(secret)).then_some((id, secret))
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

/// Whether a control plane's assignment selects an appliance.
fn matches(cp: &ControlPlane, a: &Appliance) -> bool {
    (cp.site.is_some() || !cp.labels.is_empty())
        && cp.site.as_ref().is_none_or(|s| s == &a.site)
        && cp.labels.iter().all(|(k, v)| a.labels.get(k) == Some(v))
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

/// Lifetime of kubelet bootstrap tokens minted for appliances.
const BOOTSTRAP_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The hub's state machine over a store.
pub struct Fleet {
    store: Arc<dyn Store>,
    ca: Arc<Ca>,
    settings: FleetSettings,
    kube: Arc<dyn BootstrapTokens>,
}

impl Fleet {
    /// Wraps a store and the CA.
    pub fn new(store: Arc<dyn Store>, ca: Arc<Ca>, settings: FleetSettings) -> Self {
        Self {
            store,
            ca,
            settings,
            kube: Arc::new(KubeBootstrapTokens),
        }
    }

    /// Uses another way to reach control planes (tests script the API server's side).
    pub fn with_bootstrap_tokens(mut self, kube: Arc<dyn BootstrapTokens>) -> Self {
        self.kube = kube;
        self
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
        let entry = AuditEntry {
            at: now(),
            actor: caller.actor.clone(),
            action: action.into(),
            target: target.into(),
            source: caller.source.clone(),
            result: result.into(),
            site: site.map(str::to_owned),
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

    // ---- operator tokens -------------------------------------------------------------

    /// Creates the first admin token if there is no operator token yet (`cairn-hub init`).
    pub async fn bootstrap_admin(&self) -> Result<Option<String>, FleetError> {
        if !self
            .store
            .list(keys::OPERATOR_TOKENS, None, 1)
            .await?
            .is_empty()
        {
            return Ok(None);
        }
        let caller = Caller {
            actor: "cairn-hub init".into(),
            source: "local".into(),
            operator: None,
        };
        let token = self
            .create_operator_token_unchecked(&caller, "admin", Role::Admin, None)
            .await?;
        Ok(Some(token.token))
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

    /// Authenticates a bearer token.
    pub async fn authenticate(&self, bearer: &str, source: &str) -> Result<Caller, FleetError> {
        let refuse = || FleetError::Unauthenticated("the bearer token is not valid".into());
        let (id, secret) = split_token(bearer, "cairn-op").ok_or_else(refuse)?;
        let (_, token): (_, OperatorToken) = self
            .get(&format!("{}{id}", keys::OPERATOR_TOKENS))
            .await?
            .ok_or_else(refuse)?;
        if !same_digest(&token.secret_sha256, &sha256_hex(secret)) {
            return Err(refuse());
        }
        Ok(Caller {
            actor: format!("operator:{}", token.name),
            source: source.into(),
            operator: Some(token),
        })
    }

    async fn create_operator_token_unchecked(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        site: Option<String>,
    ) -> Result<NewToken<OperatorTokenView>, FleetError> {
        let id = random_hex(6);
        let secret = random_hex(20);
        let record = OperatorToken {
            id: id.clone(),
            name: name.into(),
            role,
            site,
            secret_sha256: sha256_hex(&secret),
            created_at: now(),
            created_by: caller.actor.clone(),
        };
        let key = format!("{}{id}", keys::OPERATOR_TOKENS);
        let audit = Self::audit_op(
            caller,
            "operator-token.create",
            &id,
            "ok",
            record.site.as_deref(),
        );
        self.store
            .txn(
                vec![Check::version(&key, 0)],
                vec![Op::put(&key, encode(&record)), audit],
            )
            .await?;
        Ok(NewToken {
            token: format!("cairn-op.{id}.{secret}"),
            view: (&record).into(),
        })
    }

    /// Creates an operator token (admin; a site-scoped admin only for its site).
    pub async fn create_operator_token(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        site: Option<String>,
    ) -> Result<NewToken<OperatorTokenView>, FleetError> {
        let me = caller.operator()?;
        if let Some(mine) = &me.site
            && site.as_ref() != Some(mine)
        {
            return Err(FleetError::Forbidden(format!(
                "a token scoped to site {mine:?} can only create tokens for that site"
            )));
        }
        if name.trim().is_empty() {
            return Err(FleetError::Invalid("name: must not be empty".into()));
        }
        self.create_operator_token_unchecked(caller, name, role, site)
            .await
    }

    /// Lists operator tokens (admin; without secrets).
    pub async fn list_operator_tokens(
        &self,
        caller: &Caller,
    ) -> Result<Vec<OperatorToken>, FleetError> {
        let all: Vec<(u64, OperatorToken)> = self.list(keys::OPERATOR_TOKENS).await?;
        Ok(all
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| t.site.as_deref().is_none_or(|s| caller.sees(s)))
            .collect())
    }

    /// Deletes an operator token (admin).
    pub async fn delete_operator_token(&self, caller: &Caller, id: &str) -> Result<(), FleetError> {
        let key = format!("{}{id}", keys::OPERATOR_TOKENS);
        let (version, token): (_, OperatorToken) =
            self.get(&key).await?.ok_or_else(|| FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::OperatorTokenUnknown,
                message: format!("no operator token {id:?}"),
            })?;
        if let Some(site) = &token.site {
            caller.check_site(site)?;
        } else if caller
            .operator
            .as_ref()
            .and_then(|o| o.site.as_ref())
            .is_some()
        {
            return Err(FleetError::Forbidden(
                "a site-scoped token cannot delete a fleet-wide one".into(),
            ));
        }
        let audit = Self::audit_op(
            caller,
            "operator-token.delete",
            id,
            "ok",
            token.site.as_deref(),
        );
        self.store
            .txn(
                vec![Check::version(&key, version)],
                vec![Op::delete(&key), audit],
            )
            .await?;
        Ok(())
    }

    // ---- enrollment tokens -------------------------------------------------------------

    /// Creates an enrollment token (operator, in scope).
    pub async fn create_enrollment_token(
        &self,
        caller: &Caller,
        req: CreateEnrollmentToken,
    ) -> Result<NewToken<EnrollmentTokenView>, FleetError> {
        validate_name("site", &req.site)?;
        caller.check_site(&req.site)?;
        if req.max_uses == 0 {
            return Err(FleetError::Invalid("max_uses: must be at least 1".into()));
        }
        if req.ttl_seconds == 0 || req.ttl_seconds > 365 * 24 * 3600 {
            return Err(FleetError::Invalid(
                "ttl_seconds: between 1 and one year".into(),
            ));
        }
        let id = random_hex(6);
        let secret = random_hex(20);
        let at = now();
        let record = EnrollmentToken {
            id: id.clone(),
            site: req.site,
            labels: req.labels,
            max_uses: req.max_uses,
            uses: 0,
            expires_at: at + Duration::seconds(req.ttl_seconds as i64),
            revoked: false,
            secret_sha256: sha256_hex(&secret),
            created_at: at,
            created_by: caller.actor.clone(),
        };
        let key = format!("{}{id}", keys::ENROLLMENT_TOKENS);
        let audit = Self::audit_op(caller, "token.create", &id, "ok", Some(&record.site));
        self.store
            .txn(
                vec![Check::version(&key, 0)],
                vec![Op::put(&key, encode(&record)), audit],
            )
            .await?;
        Ok(NewToken {
            token: format!("cairn-et.{id}.{secret}"),
            view: (&record).into(),
        })
    }

    /// Lists enrollment tokens in scope (viewer).
    pub async fn list_enrollment_tokens(
        &self,
        caller: &Caller,
    ) -> Result<Vec<EnrollmentToken>, FleetError> {
        let all: Vec<(u64, EnrollmentToken)> = self.list(keys::ENROLLMENT_TOKENS).await?;
        Ok(all
            .into_iter()
            .map(|(_, t)| t)
            .filter(|t| caller.sees(&t.site))
            .collect())
    }

    /// Revokes an enrollment token (operator, in scope).
    pub async fn revoke_enrollment_token(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<EnrollmentToken, FleetError> {
        let key = format!("{}{id}", keys::ENROLLMENT_TOKENS);
        let key = key.as_str();
        self.cas(key, move || async move {
            let (version, mut token): (_, EnrollmentToken) =
                self.get(key).await?.ok_or_else(|| FleetError::NotFound {
                    code: cairn_api::hub::ErrorCode::Token(cairn_api::hub::TokenRefusal::Unknown),
                    message: format!("no enrollment token {id:?}"),
                })?;
            caller.check_site(&token.site)?;
            token.revoked = true;
            let audit = Self::audit_op(caller, "token.revoke", id, "ok", Some(&token.site));
            Ok(Attempt::Write {
                checks: vec![Check::version(key, version)],
                ops: vec![Op::put(key, encode(&token)), audit],
                then: token,
            })
        })
        .await
    }

    /// Finds the token and says whether it would be accepted now, without using it.
    async fn lookup_enrollment_token(
        &self,
        token: &str,
    ) -> Result<Result<(u64, EnrollmentToken), (TokenRefusal, Option<EnrollmentToken>)>, FleetError>
    {
        let Some((id, secret)) = split_token(token.trim(), "cairn-et") else {
            return Ok(Err((TokenRefusal::Malformed, None)));
        };
        let key = format!("{}{id}", keys::ENROLLMENT_TOKENS);
        let Some((version, record)) = self.get::<EnrollmentToken>(&key).await? else {
            return Ok(Err((TokenRefusal::Unknown, None)));
        };
        let refusal = if !same_digest(&record.secret_sha256, &sha256_hex(secret)) {
            Some(TokenRefusal::Unknown)
        } else if record.revoked {
            Some(TokenRefusal::Revoked)
        } else if record.expires_at <= now() {
            Some(TokenRefusal::Expired)
        } else if record.uses >= record.max_uses {
            Some(TokenRefusal::UsedUp)
        } else {
            None
        };
        Ok(match refusal {
            None => Ok((version, record)),
            // An unknown secret must not reveal anything about the token it names.
            Some(TokenRefusal::Unknown) => Err((TokenRefusal::Unknown, None)),
            Some(r) => Err((r, Some(record))),
        })
    }

    /// `POST /v1/registrations/check`: would this token be accepted? Does not use it.
    pub async fn check_enrollment_token(&self, token: &str) -> Result<TokenCheck, FleetError> {
        Ok(match self.lookup_enrollment_token(token).await? {
            Ok((_, t)) => TokenCheck {
                valid: true,
                reason: None,
                site: Some(t.site),
            },
            Err((reason, _)) => TokenCheck {
                valid: false,
                reason: Some(reason),
                site: None,
            },
        })
    }

    // ---- registration ---------------------------------------------------------------

    /// Registers an appliance: checks the token and CSR, keeps the identity of known
    /// hardware, signs its certificate and records everything in one transaction.
    pub async fn register(
        &self,
        caller: &Caller,
        req: RegistrationRequest,
    ) -> Result<RegistrationResponse, FleetError> {
        if req.hostname.trim().is_empty() || req.hostname.len() > 253 {
            return Err(FleetError::Invalid("hostname: 1-253 characters".into()));
        }
        let req = &req;
        let (id, appliance, issued, action) = self
            .cas("registration", move || async move {
                let (token_version, mut token) = match self
                    .lookup_enrollment_token(&req.token)
                    .await?
                {
                    Ok(found) => found,
                    Err((reason, record)) => {
                        let target = record.as_ref().map(|t| t.id.clone()).unwrap_or_default();
                        self.audit(
                            caller,
                            "appliance.register",
                            &target,
                            &format!("refused: token_{reason}"),
                            record.as_ref().map(|t| t.site.as_str()),
                        )
                        .await?;
                        tracing::info!(source = %caller.source, %reason, "registration refused");
                        return Err(FleetError::TokenRefused(reason));
                    }
                };
                let hw_key = hardware_key(&req.inventory);
                let known: Option<(u64, ApplianceId)> = match &hw_key {
                    Some(k) => self.get(k).await?,
                    None => None,
                };
                let existing: Option<(u64, Appliance)> = match &known {
                    Some((_, id)) => self.get(&format!("{}{id}", keys::APPLIANCES)).await?,
                    None => None,
                };
                let id = match &existing {
                    Some((_, a)) => a.id.clone(),
                    None => ApplianceId::new(format!("ap-{}", random_hex(6)))
                        .expect("generated IDs are valid"),
                };
                let issued = match self.ca.sign_client(
                    &req.csr_pem,
                    req.hostname.trim(),
                    &id,
                    self.settings.cert_ttl,
                ) {
                    Ok(issued) => issued,
                    Err(e) => {
                        self.audit(
                            caller,
                            "appliance.register",
                            id.as_str(),
                            &format!("refused: {}", e.code()),
                            Some(&token.site),
                        )
                        .await?;
                        return Err(e.into());
                    }
                };
                let at = now();
                let (appliance, action) = match &existing {
                    Some((_, old)) => {
                        let mut a = old.clone();
                        a.hostname = req.hostname.trim().into();
                        a.site = token.site.clone();
                        a.labels.extend(token.labels.clone());
                        a.inventory = req.inventory.clone();
                        a.agent_version = req.agent_version.clone();
                        // A re-install has a new key: the old certificate must stop working.
                        a.previous_cert_sha256 = None;
                        a.cert_sha256 = issued.sha256.clone();
                        a.cert_not_after = issued.not_after;
                        a.rekeys += 1;
                        (a, "appliance.rekey")
                    }
                    None => (
                        Appliance {
                            id: id.clone(),
                            site: token.site.clone(),
                            hostname: req.hostname.trim().into(),
                            labels: token.labels.clone(),
                            inventory: req.inventory.clone(),
                            agent_version: req.agent_version.clone(),
                            cert_sha256: issued.sha256.clone(),
                            previous_cert_sha256: None,
                            cert_not_after: issued.not_after,
                            registered_at: at,
                            rekeys: 0,
                            vtep_address: None,
                            vpcs: Default::default(),
                            control_plane: None,
                            join: None,
                            desired: DesiredState {
                                generation: 1,
                                heartbeat_interval_seconds: self
                                    .settings
                                    .heartbeat_interval_seconds,
                                ..Default::default()
                            },
                            quarantined: BTreeMap::new(),
                            upgrade_flag: None,
                        },
                        "appliance.register",
                    ),
                };
                token.uses += 1;
                let token_key = format!("{}{}", keys::ENROLLMENT_TOKENS, token.id);
                let app_key = format!("{}{id}", keys::APPLIANCES);
                let mut checks = vec![
                    Check::version(&token_key, token_version),
                    Check::version(&app_key, existing.as_ref().map_or(0, |(v, _)| *v)),
                ];
                let mut ops = vec![
                    Op::put(&token_key, encode(&token)),
                    Op::put(&app_key, encode(&appliance)),
                    Self::audit_op(caller, action, id.as_str(), "ok", Some(&appliance.site)),
                    self.event_op(
                        &appliance,
                        if existing.is_some() {
                            "rekeyed"
                        } else {
                            "registered"
                        },
                        format!("{} registered with token {}", appliance.hostname, token.id),
                    ),
                ];
                if let Some(k) = &hw_key {
                    checks.push(Check::version(k, known.as_ref().map_or(0, |(v, _)| *v)));
                    if known.as_ref().map(|(_, known_id)| known_id) != Some(&id) {
                        ops.push(Op::put(k, encode(&id)));
                    }
                }
                Ok(Attempt::Write {
                    checks,
                    ops,
                    then: (id, appliance, issued, action),
                })
            })
            .await?;
        tracing::info!(appliance = %id, site = %appliance.site, action, "appliance registered");
        let desired = match self.join_matching_control_plane(caller, &appliance).await {
            Ok(Some(joined)) => joined.desired,
            Ok(None) => appliance.desired,
            Err(e) => {
                // Registration stands; the operator sees the failure and can re-assign.
                tracing::warn!(appliance = %id, error = %e, "joining a control plane failed");
                appliance.desired
            }
        };
        Ok(RegistrationResponse {
            appliance_id: id,
            site: appliance.site,
            certificate_pem: issued.pem,
            ca_bundle_pem: self.ca.cert_pem.clone(),
            desired,
        })
    }

    /// The appliance a verified client certificate belongs to, if it is still current.
    async fn appliance_for(&self, peer: Option<&PeerCert>) -> Result<(u64, Appliance), FleetError> {
        let peer = peer.ok_or_else(|| {
            FleetError::Unauthenticated("a client certificate is required".into())
        })?;
        let id = peer.appliance.as_ref().ok_or_else(|| {
            FleetError::Unauthenticated("the client certificate does not name an appliance".into())
        })?;
        let (version, appliance): (_, Appliance) = self
            .get(&format!("{}{id}", keys::APPLIANCES))
            .await?
            .ok_or_else(|| FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                message: format!("appliance {id} is not registered (deleted?); register again"),
            })?;
        let current = same_digest(&appliance.cert_sha256, &peer.sha256)
            || appliance
                .previous_cert_sha256
                .as_deref()
                .is_some_and(|p| same_digest(p, &peer.sha256));
        if !current {
            return Err(FleetError::CertificateSuperseded);
        }
        Ok((version, appliance))
    }

    /// The appliance a verified client certificate belongs to, if it is still current.
    pub async fn appliance_for_cert(&self, cert: &PeerCert) -> Result<Appliance, FleetError> {
        Ok(self.appliance_for(Some(cert)).await?.1)
    }

    /// `POST /v1/renewals`: a new certificate for the same identity, over mTLS.
    pub async fn renew(
        &self,
        caller: &Caller,
        peer: Option<&PeerCert>,
        csr_pem: &str,
    ) -> Result<Renewal, FleetError> {
        self.cas("renewal", move || async move {
            let (version, mut appliance) = self.appliance_for(peer).await?;
            let issued: Issued = self.ca.sign_client(
                csr_pem,
                appliance.id.as_str(),
                &appliance.id,
                self.settings.cert_ttl,
            )?;
            let presented = peer.map(|p| p.sha256.clone());
            appliance.previous_cert_sha256 = presented;
            appliance.cert_sha256 = issued.sha256.clone();
            appliance.cert_not_after = issued.not_after;
            let key = format!("{}{}", keys::APPLIANCES, appliance.id);
            let audit = Self::audit_op(
                caller,
                "appliance.renew",
                appliance.id.as_str(),
                "ok",
                Some(&appliance.site),
            );
            Ok(Attempt::Write {
                checks: vec![Check::version(&key, version)],
                ops: vec![Op::put(&key, encode(&appliance)), audit],
                then: Renewal {
                    certificate_pem: issued.pem,
                    ca_bundle_pem: self.ca.cert_pem.clone(),
                    not_after: issued.not_after,
                },
            })
        })
        .await
    }

    // ---- heartbeats --------------------------------------------------------------------

    /// `POST /v1/heartbeats`: records the status and answers with the desired state.
    pub async fn heartbeat(
        &self,
        peer: Option<&PeerCert>,
        hb: Heartbeat,
    ) -> Result<HeartbeatResponse, FleetError> {
        let (_, mut appliance) = self.appliance_for(peer).await?;
        let status_key = format!("{}{}", keys::STATUS, appliance.id);
        let previous: Option<(u64, Status)> = self.get(&status_key).await?;
        // A node that stops reporting a VTEP (its setting removed) leaves the overlays too:
        // peers must not keep tunnelling to the old address.
        if hb.status.vtep_address != appliance.vtep_address {
            appliance = self
                .update_vtep(&appliance.id, hb.status.vtep_address.clone())
                .await?;
        }
        let status = Status {
            last_seen: now(),
            interval_seconds: appliance.desired.heartbeat_interval_seconds,
            applied_generation: hb.applied_generation,
            online: true,
            status: hb.status,
        };
        let mut ops = vec![Op::put(&status_key, encode(&status))];
        match &previous {
            None => ops.push(self.event_op(&appliance, "online", "first heartbeat".into())),
            Some((_, p)) if !p.online => ops.push(self.event_op(
                &appliance,
                "online",
                format!(
                    "heartbeat after {}s of silence",
                    (status.last_seen - p.last_seen).whole_seconds()
                ),
            )),
            Some(_) => {}
        }
        // A status alone is rewritten by the next heartbeat: it need not wait for an fsync.
        // A transition event must be durable.
        if ops.len() == 1 {
            self.store.txn_relaxed(vec![], ops).await?;
        } else {
            self.store.txn(vec![], ops).await?;
        }
        Ok(HeartbeatResponse {
            desired: appliance.desired,
        })
    }

    async fn update_vtep(
        &self,
        id: &ApplianceId,
        vtep: Option<String>,
    ) -> Result<Appliance, FleetError> {
        let key = format!("{}{id}", keys::APPLIANCES);
        let key = key.as_str();
        let vtep = &vtep;
        let a = self
            .cas(key, move || async move {
                let (version, mut a): (_, Appliance) =
                    self.get(key).await?.ok_or_else(|| FleetError::NotFound {
                        code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                        message: format!("appliance {id} is not registered"),
                    })?;
                a.vtep_address = vtep.clone();
                Ok(Attempt::Write {
                    checks: vec![Check::version(key, version)],
                    ops: vec![Op::put(key, encode(&a))],
                    then: a,
                })
            })
            .await?;
        // Its own overlay and every peer's name this address.
        let mut affected = vec![id.clone()];
        for vpc in &a.vpcs {
            if let Some((_, v)) = self.get::<Vpc>(&format!("{}{vpc}", keys::VPCS)).await? {
                affected.extend(v.members.into_iter().filter(|m| m != id));
            }
        }
        let mut me = a;
        for member in affected {
            if let Some(updated) = self.refresh_desired(&member).await?
                && &updated.id == id
            {
                me = updated;
            }
        }
        Ok(me)
    }

    /// Recomputes an appliance's desired state from the records it depends on and stores it
    /// with the next generation when it changed. Returns the appliance as stored.
    pub async fn refresh_desired(&self, id: &ApplianceId) -> Result<Option<Appliance>, FleetError> {
        let key = format!("{}{id}", keys::APPLIANCES);
        let key = key.as_str();
        self.cas(key, move || async move {
            let Some((version, mut a)) = self.get::<Appliance>(key).await? else {
                return Ok(Attempt::Done(None));
            };
            let overlay = self.overlay_for(&a).await?;
            let mut next = a.desired.clone();
            next.overlay = overlay;
            next.join = a.join.clone();
            if next == a.desired {
                return Ok(Attempt::Done(Some(a)));
            }
            next.generation = a.desired.generation + 1;
            a.desired = next;
            Ok(Attempt::Write {
                checks: vec![Check::version(key, version)],
                ops: vec![Op::put(key, encode(&a))],
                then: Some(a),
            })
        })
        .await
    }

    async fn overlay_for(&self, a: &Appliance) -> Result<Option<OverlayDocument>, FleetError> {
        if a.vpcs.is_empty() {
            return Ok(None);
        }
        let mut vpcs = Vec::new();
        for name in &a.vpcs {
            let Some((_, vpc)) = self.get::<Vpc>(&format!("{}{name}", keys::VPCS)).await? else {
                continue;
            };
            let mut peers = Vec::new();
            for m in vpc.members.iter().filter(|m| *m != &a.id) {
                if let Some((_, p)) = self
                    .get::<Appliance>(&format!("{}{m}", keys::APPLIANCES))
                    .await?
                    && let Some(vtep) = p.vtep_address
                {
                    peers.push(vtep);
                }
            }
            peers.sort();
            peers.dedup();
            vpcs.push(crate::vpc::membership(&vpc, peers));
        }
        Ok(Some(OverlayDocument {
            local_vtep: a.vtep_address.clone().unwrap_or_default(),
            vpcs,
        }))
    }

    // ---- offline detection -----------------------------------------------------------

    /// One pass of the offline detector: marks appliances that missed too many heartbeats.
    /// Run by the leader only; each transition is a compare-and-set, so a heartbeat that
    /// lands meanwhile wins. Returns how many went offline.
    pub async fn sweep_offline(&self) -> Result<usize, FleetError> {
        let at = now();
        let mut marked = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .list(keys::STATUS, after.as_deref(), PAGE)
                .await?;
            let n = page.len();
            for (key, v) in &page {
                let mut status: Status = decode(key, v)?;
                let allowed = Duration::seconds(
                    i64::from(status.interval_seconds)
                        * i64::from(self.settings.offline_after_missed),
                );
                if !status.online || at - status.last_seen <= allowed {
                    continue;
                }
                let id = key.trim_start_matches(keys::STATUS);
                let Some((_, appliance)) = self
                    .get::<Appliance>(&format!("{}{id}", keys::APPLIANCES))
                    .await?
                else {
                    continue;
                };
                status.online = false;
                let event = self.event_op(
                    &appliance,
                    "offline",
                    format!(
                        "no heartbeat for {}s",
                        (at - status.last_seen).whole_seconds()
                    ),
                );
                if self
                    .store
                    .txn(
                        vec![Check::version(key, v.version)],
                        vec![Op::put(key, encode(&status)), event],
                    )
                    .await?
                {
                    tracing::warn!(appliance = %id, "appliance offline");
                    marked += 1;
                }
            }
            match page.into_iter().last() {
                Some((k, _)) if n == PAGE => after = Some(k),
                _ => return Ok(marked),
            }
        }
    }

    // ---- appliances -------------------------------------------------------------------

    /// Appliances in scope, optionally of one site (viewer).
    pub async fn list_appliances(
        &self,
        caller: &Caller,
        site: Option<&str>,
    ) -> Result<Vec<ApplianceView>, FleetError> {
        let appliances: Vec<(u64, Appliance)> = self.list(keys::APPLIANCES).await?;
        let mut statuses: BTreeMap<String, Status> = BTreeMap::new();
        for (k, v) in self.list_raw(keys::STATUS).await? {
            statuses.insert(
                k.trim_start_matches(keys::STATUS).to_owned(),
                decode(&k, &v)?,
            );
        }
        Ok(appliances
            .into_iter()
            .map(|(_, a)| a)
            .filter(|a| caller.sees(&a.site) && site.is_none_or(|s| s == a.site))
            .map(|a| {
                let status = statuses.remove(a.id.as_str());
                crate::views::appliance(&a, status.as_ref())
            })
            .collect())
    }

    async fn list_raw(&self, prefix: &str) -> Result<Vec<(String, Versioned)>, FleetError> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(prefix, after.as_deref(), PAGE).await?;
            let n = page.len();
            after = page.last().map(|(k, _)| k.clone());
            out.extend(page);
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    async fn appliance_in_scope(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<(u64, Appliance), FleetError> {
        let not_found = || FleetError::NotFound {
            code: cairn_api::hub::ErrorCode::ApplianceUnknown,
            message: format!("no appliance {id:?}"),
        };
        let (version, a): (_, Appliance) = self
            .get(&format!("{}{id}", keys::APPLIANCES))
            .await?
            .ok_or_else(not_found)?;
        // Out of scope looks the same as absent: a scoped token learns nothing of other sites.
        if !caller.sees(&a.site) {
            return Err(not_found());
        }
        Ok((version, a))
    }

    /// One appliance (viewer, in scope).
    pub async fn show_appliance(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<ApplianceView, FleetError> {
        let (_, a) = self.appliance_in_scope(caller, id).await?;
        let status = self
            .get::<Status>(&format!("{}{id}", keys::STATUS))
            .await?
            .map(|(_, s)| s);
        Ok(crate::views::appliance(&a, status.as_ref()))
    }

    /// Sets labels (operator, in scope): `Some(v)` sets, `None` removes.
    pub async fn label_appliance(
        &self,
        caller: &Caller,
        id: &str,
        changes: BTreeMap<String, Option<String>>,
    ) -> Result<Appliance, FleetError> {
        let changes = &changes;
        self.cas(id, move || async move {
            let (version, mut a) = self.appliance_in_scope(caller, id).await?;
            for (k, v) in changes {
                match v {
                    Some(v) => a.labels.insert(k.clone(), v.clone()),
                    None => a.labels.remove(k),
                };
            }
            let key = format!("{}{id}", keys::APPLIANCES);
            let audit = Self::audit_op(caller, "appliance.label", id, "ok", Some(&a.site));
            Ok(Attempt::Write {
                checks: vec![Check::version(&key, version)],
                ops: vec![Op::put(&key, encode(&a)), audit],
                then: a,
            })
        })
        .await
    }

    /// Deletes an appliance (operator, in scope): its certificate stops working at once.
    pub async fn delete_appliance(&self, caller: &Caller, id: &str) -> Result<(), FleetError> {
        let (_, a) = self.appliance_in_scope(caller, id).await?;
        for vpc in &a.vpcs {
            self.detach(caller, vpc, id).await?;
        }
        let (version, a) = self.appliance_in_scope(caller, id).await?;
        let key = format!("{}{id}", keys::APPLIANCES);
        let mut ops = vec![
            Op::delete(&key),
            Op::delete(format!("{}{id}", keys::STATUS)),
            Self::audit_op(caller, "appliance.delete", id, "ok", Some(&a.site)),
        ];
        if let Some(hw) = hardware_key(&a.inventory) {
            ops.push(Op::delete(hw));
        }
        if !self
            .store
            .txn(vec![Check::version(&key, version)], ops)
            .await?
        {
            return Err(FleetError::Contended(id.into()));
        }
        Ok(())
    }

    // ---- VPCs -----------------------------------------------------------------------------

    /// Creates a VPC with a fresh VNI (operator, fleet-wide tokens only: VPCs span sites).
    pub async fn create_vpc(
        &self,
        caller: &Caller,
        name: &str,
        subnet: &str,
    ) -> Result<Vpc, FleetError> {
        let op = caller.operator()?;
        if op.site.is_some() {
            return Err(FleetError::Forbidden(
                "VPCs span sites: a fleet-wide token is needed".into(),
            ));
        }
        validate_name("VPC name", name)?;
        crate::vpc::parse_subnet(subnet).map_err(FleetError::Invalid)?;
        let key = format!("{}{name}", keys::VPCS);
        let key = key.as_str();
        self.cas(key, move || async move {
            if self.store.get(key).await?.is_some() {
                return Err(FleetError::Conflict(format!("VPC {name:?} exists")));
            }
            let taken: Vec<u32> = self
                .list_raw(keys::VNIS)
                .await?
                .iter()
                .filter_map(|(k, _)| k.trim_start_matches(keys::VNIS).parse().ok())
                .collect();
            let vni = crate::vpc::next_vni(&taken)
                .ok_or_else(|| FleetError::Conflict("no VNI left".into()))?;
            let vpc = Vpc {
                name: name.into(),
                subnet: subnet.into(),
                vni,
                members: Default::default(),
            };
            let vni_key = format!("{}{vni:08}", keys::VNIS);
            let audit = Self::audit_op(caller, "vpc.create", name, "ok", None);
            Ok(Attempt::Write {
                checks: vec![Check::version(key, 0), Check::version(&vni_key, 0)],
                ops: vec![
                    Op::put(key, encode(&vpc)),
                    Op::put(&vni_key, name.as_bytes().to_vec()),
                    audit,
                ],
                then: vpc,
            })
        })
        .await
    }

    /// VPCs (viewer).
    pub async fn list_vpcs(&self) -> Result<Vec<Vpc>, FleetError> {
        Ok(self
            .list::<Vpc>(keys::VPCS)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect())
    }

    /// Attaches an appliance to a VPC and updates every member's overlay.
    pub async fn attach(&self, caller: &Caller, vpc: &str, id: &str) -> Result<Vpc, FleetError> {
        self.membership(caller, vpc, id, true).await
    }

    /// Detaches an appliance from a VPC and updates every member's overlay.
    pub async fn detach(&self, caller: &Caller, vpc: &str, id: &str) -> Result<Vpc, FleetError> {
        self.membership(caller, vpc, id, false).await
    }

    async fn membership(
        &self,
        caller: &Caller,
        vpc_name: &str,
        id: &str,
        attach: bool,
    ) -> Result<Vpc, FleetError> {
        let vpc_key = format!("{}{vpc_name}", keys::VPCS);
        let app_key = format!("{}{id}", keys::APPLIANCES);
        let (vpc_key, app_key) = (vpc_key.as_str(), app_key.as_str());
        let (vpc, a) = self
            .cas(vpc_key, move || async move {
                let (vpc_version, mut vpc): (_, Vpc) =
                    self.get(vpc_key)
                        .await?
                        .ok_or_else(|| FleetError::NotFound {
                            code: cairn_api::hub::ErrorCode::VpcUnknown,
                            message: format!("no VPC {vpc_name:?}"),
                        })?;
                let (app_version, mut a) = self.appliance_in_scope(caller, id).await?;
                if attach {
                    vpc.members.insert(a.id.clone());
                    a.vpcs.insert(vpc_name.into());
                } else {
                    vpc.members.remove(&a.id);
                    a.vpcs.remove(vpc_name);
                }
                let action = if attach { "vpc.attach" } else { "vpc.detach" };
                let audit = Self::audit_op(
                    caller,
                    action,
                    &format!("{vpc_name}/{id}"),
                    "ok",
                    Some(&a.site),
                );
                Ok(Attempt::Write {
                    checks: vec![
                        Check::version(vpc_key, vpc_version),
                        Check::version(app_key, app_version),
                    ],
                    ops: vec![
                        Op::put(vpc_key, encode(&vpc)),
                        Op::put(app_key, encode(&a)),
                        audit,
                    ],
                    then: (vpc, a),
                })
            })
            .await?;
        self.refresh_desired(&a.id).await?;
        for m in &vpc.members {
            self.refresh_desired(m).await?;
        }
        Ok(vpc)
    }

    // ---- control planes -------------------------------------------------------------------

    /// Registers a control plane (admin, fleet-wide).
    pub async fn add_control_plane(
        &self,
        caller: &Caller,
        mut cp: ControlPlane,
    ) -> Result<ControlPlane, FleetError> {
        let op = caller.operator()?;
        if op.site.is_some() {
            return Err(FleetError::Forbidden(
                "control planes are fleet-wide: a fleet-wide admin token is needed".into(),
            ));
        }
        validate_name("control plane name", &cp.name)?;
        if !cp.api_server_url.starts_with("https://") {
            return Err(FleetError::Invalid(
                "api_server_url: must be https://".into(),
            ));
        }
        let certs =
            rustls::pki_types::CertificateDer::pem_slice_iter(cp.ca_bundle_pem.as_bytes()).count();
        if certs == 0 {
            return Err(FleetError::Invalid(
                "ca_bundle_pem: no PEM certificate found".into(),
            ));
        }
        if cp.credentials_ref.trim().is_empty() {
            return Err(FleetError::Invalid(
                "credentials_ref: path of a bearer token file on the hub".into(),
            ));
        }
        cp.site = None;
        cp.labels.clear();
        let key = format!("{}{}", keys::CONTROL_PLANES, cp.name);
        let audit = Self::audit_op(caller, "control-plane.add", &cp.name, "ok", None);
        if !self
            .store
            .txn(
                vec![Check::version(&key, 0)],
                vec![Op::put(&key, encode(&cp)), audit],
            )
            .await?
        {
            return Err(FleetError::Conflict(format!(
                "control plane {:?} exists",
                cp.name
            )));
        }
        Ok(cp)
    }

    /// Control planes (viewer).
    pub async fn list_control_planes(&self) -> Result<Vec<ControlPlane>, FleetError> {
        Ok(self
            .list::<ControlPlane>(keys::CONTROL_PLANES)
            .await?
            .into_iter()
            .map(|(_, c)| c)
            .collect())
    }

    /// Assigns appliances of `site` and/or with `labels` to a control plane (operator), and
    /// joins every matching appliance in scope now; later registrations that match join at
    /// registration.
    pub async fn assign(
        &self,
        caller: &Caller,
        name: &str,
        site: Option<String>,
        labels: BTreeMap<String, String>,
    ) -> Result<AssignResult, FleetError> {
        if site.is_none() && labels.is_empty() {
            return Err(FleetError::Invalid("give a site, labels, or both".into()));
        }
        if let Some(s) = &site {
            caller.check_site(s)?;
        } else if caller
            .operator
            .as_ref()
            .and_then(|o| o.site.as_ref())
            .is_some()
        {
            return Err(FleetError::Forbidden(
                "a site-scoped token must name its site".into(),
            ));
        }
        let key = format!("{}{name}", keys::CONTROL_PLANES);
        let (version, mut cp): (_, ControlPlane) =
            self.get(&key).await?.ok_or_else(|| FleetError::NotFound {
                code: cairn_api::hub::ErrorCode::ControlPlaneUnknown,
                message: format!("no control plane {name:?}"),
            })?;
        cp.site = site;
        cp.labels = labels;
        let audit = Self::audit_op(
            caller,
            "control-plane.assign",
            name,
            "ok",
            cp.site.as_deref(),
        );
        if !self
            .store
            .txn(
                vec![Check::version(&key, version)],
                vec![Op::put(&key, encode(&cp)), audit],
            )
            .await?
        {
            return Err(FleetError::Contended(key));
        }
        let mut result = AssignResult::default();
        for (_, a) in self.list::<Appliance>(keys::APPLIANCES).await? {
            if !caller.sees(&a.site)
                || !matches(&cp, &a)
                || a.control_plane.as_deref() == Some(name)
            {
                continue;
            }
            match self.join(caller, &cp, &a.id).await {
                Ok(_) => result.assigned.push(a.id),
                Err(e) => result.failed.push((a.id, e.to_string())),
            }
        }
        Ok(result)
    }

    async fn join_matching_control_plane(
        &self,
        caller: &Caller,
        a: &Appliance,
    ) -> Result<Option<Appliance>, FleetError> {
        if a.control_plane.is_some() {
            return Ok(None);
        }
        for (_, cp) in self.list::<ControlPlane>(keys::CONTROL_PLANES).await? {
            if matches(&cp, a) {
                return self.join(caller, &cp, &a.id).await.map(Some);
            }
        }
        Ok(None)
    }

    /// Mints a bootstrap token in `cp` for the appliance and puts the join bundle in its
    /// desired state.
    async fn join(
        &self,
        caller: &Caller,
        cp: &ControlPlane,
        id: &ApplianceId,
    ) -> Result<Appliance, FleetError> {
        let token = BootstrapToken::generate(BOOTSTRAP_TOKEN_TTL);
        if let Err(e) = self.kube.create(cp, id, &token).await {
            let message = format!("{e}");
            self.audit(
                caller,
                "control-plane.join",
                &format!("{}/{id}", cp.name),
                &format!("failed: {message}"),
                None,
            )
            .await?;
            return Err(FleetError::ControlPlane {
                name: cp.name.clone(),
                message,
            });
        }
        let key = format!("{}{id}", keys::APPLIANCES);
        let key = key.as_str();
        let token = &token;
        let joined = self
            .cas(key, move || async move {
                let Some((version, mut a)) = self.get::<Appliance>(key).await? else {
                    return Err(FleetError::NotFound {
                        code: cairn_api::hub::ErrorCode::ApplianceUnknown,
                        message: format!("appliance {id} vanished"),
                    });
                };
                let revision = a.join.as_ref().map_or(0, |j| j.revision) + 1;
                a.control_plane = Some(cp.name.clone());
                a.join = Some(cairn_api::JoinBundle {
                    control_plane: cp.name.clone(),
                    api_server_url: cp.api_server_url.clone(),
                    ca_bundle_pem: cp.ca_bundle_pem.clone(),
                    bootstrap_token: token.token(),
                    revision,
                });
                let audit = Self::audit_op(
                    caller,
                    "control-plane.join",
                    &format!("{}/{id}", cp.name),
                    "ok",
                    Some(&a.site),
                );
                Ok(Attempt::Write {
                    checks: vec![Check::version(key, version)],
                    ops: vec![Op::put(key, encode(&a)), audit],
                    then: a,
                })
            })
            .await?;
        Ok(self.refresh_desired(id).await?.unwrap_or(joined))
    }

    // ---- audit and events ---------------------------------------------------------------

    /// Audit entries at or after `since`, in scope (viewer), at most `limit`.
    pub async fn audit_since(
        &self,
        caller: &Caller,
        since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, FleetError> {
        self.log_since(keys::AUDIT, since, limit, |e: &AuditEntry| match &e.site {
            Some(s) => caller.sees(s),
            None => caller.operator.as_ref().is_some_and(|o| o.site.is_none()),
        })
        .await
    }

    /// Events at or after `since`, in scope (viewer), at most `limit`.
    pub async fn events_since(
        &self,
        caller: &Caller,
        since: OffsetDateTime,
        limit: usize,
    ) -> Result<Vec<Event>, FleetError> {
        self.log_since(keys::EVENTS, since, limit, |e: &Event| caller.sees(&e.site))
            .await
    }

    async fn log_since<T: DeserializeOwned>(
        &self,
        prefix: &str,
        since: OffsetDateTime,
        limit: usize,
        keep: impl Fn(&T) -> bool,
    ) -> Result<Vec<T>, FleetError> {
        let mut out = Vec::new();
        let mut after = log_start(prefix, since);
        loop {
            let page = self.store.list(prefix, Some(&after), PAGE).await?;
            let n = page.len();
            for (k, v) in &page {
                let entry: T = decode(k, v)?;
                if keep(&entry) {
                    out.push(entry);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            match page.into_iter().last() {
                Some((k, _)) if n == PAGE => after = k,
                _ => return Ok(out),
            }
        }
    }

    /// Counts appliances by state, for metrics.
    pub async fn count_by_state(&self) -> Result<BTreeMap<String, u64>, FleetError> {
        let mut counts: BTreeMap<String, u64> = ["online", "offline", "registered"]
            .iter()
            .map(|s| (s.to_string(), 0))
            .collect();
        let total = self.list_raw(keys::APPLIANCES).await?.len() as u64;
        let mut seen = 0;
        for (k, v) in self.list_raw(keys::STATUS).await? {
            let s: Status = decode(&k, &v)?;
            *counts
                .entry(if s.online { "online" } else { "offline" }.into())
                .or_default() += 1;
            seen += 1;
        }
        counts.insert("registered".into(), total.saturating_sub(seen));
        Ok(counts)
    }
}

#[cfg(test)]
mod tests;
