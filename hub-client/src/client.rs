//! [`HubClient`]: one method per `/v1` route, typed with `cairn_api`'s requests and views.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cairn_api::hub::{
    AddControlPlane, AddReleaseFromUrl, ApplianceCounts, ApplianceList, ApplianceQuery,
    ApplianceView, AssignRequest, AssignResult, AuditEntryView, CaInfo, CampaignAction,
    CampaignView, CheckRequest, ControlPlaneView, CountQuery, CreateCampaign,
    CreateEnrollmentToken, CreateOperatorToken, CreateReinstallToken, CreateTenant, CreateVpc,
    EnrollmentTokenView, ErrorBody, ErrorCode, EventQuery, EventView, EventWatchQuery, ExecRequest,
    ExecResult, LabelRequest, LogsQuery, MembershipRequest, NewToken, OperatorTokenView,
    RebootResult, ReleaseView, Renewal, RenewalRequest, ResumeQuery, SinceQuery, TenantView,
    TokenCheck, UploadQuery, VpcView, WatchEvent, WatchQuery, WhoAmI,
};
use cairn_api::{
    CertFingerprint, Heartbeat, HeartbeatResponse, RegistrationRequest, RegistrationResponse,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::tls::{self, Identity, PinMismatch, TlsError, Trust};

/// What went wrong calling the hub.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No answer: network down, hub down, timeout. Worth retrying later.
    #[error("hub {url} unreachable")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The hub's chain does not contain the pinned CA.
    #[error(
        "the hub's certificate chain does not hold the pinned CA {expected} (it presented {presented})"
    )]
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: CertFingerprint,
        /// What the chain held.
        presented: String,
    },
    /// The hub answered with an error body.
    #[error("hub refused {endpoint}: HTTP {status} {}: {}", body.error, body.message)]
    Refused {
        /// Which call, `POST /v1/...`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// The hub's error body.
        body: ErrorBody,
    },
    /// The hub answered, but not with what the API promises.
    #[error("hub answered {endpoint} with something that is not the cairn API ({detail})")]
    Garbage {
        /// Which call.
        endpoint: String,
        /// HTTP status and what failed to parse.
        detail: String,
    },
    /// The TLS settings could not be built.
    #[error("setting up TLS to the hub")]
    Tls(#[from] TlsError),
    /// The HTTP client could not be built.
    #[error("building the HTTP client")]
    Client(#[source] reqwest::Error),
    /// The hub URL is not one.
    #[error("hub URL {url:?}: {reason}")]
    Url {
        /// As given.
        url: String,
        /// Why.
        reason: String,
    },
    /// A local file to upload could not be opened.
    #[error("opening {path}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether retrying later may help (as opposed to needing an operator).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Garbage { .. } => true,
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// The hub's error body, when it refused.
    pub fn refusal(&self) -> Option<&ErrorBody> {
        match self {
            Self::Refused { body, .. } => Some(body),
            _ => None,
        }
    }
}

/// A client of one hub, or of several hub processes serving one fleet (on etcd): calls go
/// to the current one, and a call that cannot connect to it tries the next at once. A call
/// that failed after it may have reached its hub is not sent again (the hub may have acted
/// on it), but the next call goes to the next hub. Clones share the current hub.
#[derive(Debug, Clone)]
pub struct HubClient {
    http: reqwest::Client,
    /// Every hub URL, in the configured order; never empty.
    bases: Arc<[url::Url]>,
    /// Index into `bases` of the hub calls go to.
    current: Arc<AtomicUsize>,
    bearer: Option<String>,
    pinned: Option<CertFingerprint>,
    mismatch: PinMismatch,
}

/// Every call gives up after this long; a heartbeat or a list is small, and a bundle upload
/// is bounded by [`UPLOAD_TIMEOUT`].
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Uploading a release bundle of a few GiB.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest a watch stays open.
const WATCH_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl HubClient {
    /// A client for the hub at `base_url` (`https://host:port`), trusting it as `trust`
    /// says and presenting `identity` when given.
    pub fn new(base_url: &str, trust: &Trust, identity: Option<&Identity>) -> Result<Self, Error> {
        Self::failover(&[base_url], trust, identity)
    }

    /// A client for several URLs of one fleet's hubs (each `https://host:port`), tried in
    /// this order: the first until it cannot be reached, then the next.
    pub fn failover(
        base_urls: &[impl AsRef<str>],
        trust: &Trust,
        identity: Option<&Identity>,
    ) -> Result<Self, Error> {
        let bases = base_urls
            .iter()
            .map(|u| parse_base(u.as_ref()))
            .collect::<Result<Arc<[_]>, _>>()?;
        if bases.is_empty() {
            return Err(Error::Url {
                url: String::new(),
                reason: "no hub URL given".into(),
            });
        }
        let (config, mismatch) = tls::client_config(trust, identity)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(TIMEOUT)
            .build()
            .map_err(Error::Client)?;
        let pinned = match trust {
            Trust::Fingerprint(fp) => Some(fp.clone()),
            _ => None,
        };
        Ok(Self {
            http,
            bases,
            current: Arc::new(AtomicUsize::new(0)),
            bearer: None,
            pinned,
            mismatch,
        })
    }

    /// The same client, sending `token` as the operator bearer token.
    pub fn with_bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// The URL of the hub calls go to now.
    pub fn base_url(&self) -> &str {
        self.base().as_str().trim_end_matches('/')
    }

    fn base(&self) -> &url::Url {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Moves on from the hub at `failed` (unless another call did already); returns the
    /// index now current.
    fn next_hub(&self, failed: usize) -> usize {
        let next = (failed + 1) % self.bases.len();
        match self
            .current
            .compare_exchange(failed, next, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => next,
            Err(now) => now,
        }
    }

    /// With only a fingerprint: fetches `GET /v1/ca` over a pinned connection and checks the
    /// fingerprint of what it returns. The answer's bundle is the CA to trust from now on.
    pub async fn fetch_pinned_ca(
        base_url: &str,
        fingerprint: &CertFingerprint,
    ) -> Result<CaInfo, Error> {
        let hub = Self::new(base_url, &Trust::Fingerprint(fingerprint.clone()), None)?;
        let answer = hub.ca().await?;
        let ders =
            tls::pem_certificates(&answer.ca_bundle_pem, "hub CA").map_err(|e| Error::Garbage {
                endpoint: "GET /v1/ca".into(),
                detail: e.to_string(),
            })?;
        if !ders.iter().any(|d| &tls::fingerprint(d) == fingerprint) {
            return Err(Error::FingerprintMismatch {
                expected: fingerprint.clone(),
                presented: ders
                    .iter()
                    .map(|d| tls::fingerprint(d).to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(answer)
    }

    fn url(&self, segments: &[&str]) -> url::Url {
        let mut url = self.base().clone();
        url.path_segments_mut()
            .expect("checked in new: the base can be a base")
            .extend(segments);
        url
    }

    fn request(
        &self,
        method: Method,
        segments: &[&str],
    ) -> (String, url::Url, reqwest::RequestBuilder) {
        let url = self.url(segments);
        let endpoint = format!("{method} {}", url.path());
        let mut req = self.http.request(method, url.clone());
        if let Some(token) = &self.bearer {
            req = req.bearer_auth(token);
        }
        (endpoint, url, req)
    }

    async fn send(
        &self,
        endpoint: String,
        url: url::Url,
        req: reqwest::RequestBuilder,
    ) -> Result<Answer, Error> {
        let unreachable = |url: &url::Url, source| Error::Unreachable {
            url: url.to_string(),
            source,
        };
        let mut request = req.build().map_err(|e| unreachable(&url, e))?;
        let first = self.current.load(Ordering::Relaxed) % self.bases.len();
        let mut at = first;
        let response = loop {
            // A body that cannot be sent twice (an upload) is sent once.
            let retry = request.try_clone();
            let url = request.url().clone();
            let source = match self.http.execute(request).await {
                Ok(response) => break response,
                Err(source) => source,
            };
            if let (Some(expected), Some(presented)) = (&self.pinned, self.mismatch.take()) {
                return Err(Error::FingerprintMismatch {
                    expected: expected.clone(),
                    presented,
                });
            }
            if self.bases.len() == 1 {
                return Err(unreachable(&url, source));
            }
            let next = self.next_hub(at);
            tracing::warn!(hub = %self.bases[at], next = %self.bases[next], error = %source, "hub unreachable; calls go to the next hub URL");
            // Only a request that never reached its hub is safe to send to another.
            match retry {
                Some(mut again) if source.is_connect() && next != first => {
                    *again.url_mut() = rebase(&url, &self.bases[at], &self.bases[next]);
                    request = again;
                    at = next;
                }
                _ => return Err(unreachable(&url, source)),
            }
        };
        let url = response.url().clone();
        let status = response.status().as_u16();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| Error::Unreachable {
                url: url.to_string(),
                source,
            })?;
        if (200..300).contains(&status) {
            return Ok(Answer {
                endpoint,
                status,
                bytes: bytes.to_vec(),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(Error::Refused {
                endpoint,
                status,
                body,
            }),
            Err(_) => Err(Error::Garbage {
                endpoint,
                detail: format!("HTTP {status}, body starts {:?}", preview(&bytes)),
            }),
        }
    }

    async fn call<B: Serialize + ?Sized, Q: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        method: Method,
        segments: &[&str],
        query: Option<&Q>,
        body: Option<&B>,
    ) -> Result<T, Error> {
        let (endpoint, url, mut req) = self.request(method, segments);
        if let Some(q) = query {
            req = req.query(q);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        self.send(endpoint, url, req).await?.decode()
    }

    async fn get<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, Error> {
        self.call::<(), (), T>(Method::GET, segments, None, None)
            .await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &B,
    ) -> Result<T, Error> {
        self.call::<B, (), T>(Method::POST, segments, None, Some(body))
            .await
    }

    async fn delete<T: DeserializeOwned>(&self, segments: &[&str]) -> Result<T, Error> {
        self.call::<(), (), T>(Method::DELETE, segments, None, None)
            .await
    }

    async fn delete_empty(&self, segments: &[&str]) -> Result<(), Error> {
        let (endpoint, url, req) = self.request(Method::DELETE, segments);
        self.send(endpoint, url, req).await.map(drop)
    }

    // ---- appliance endpoints (token or mTLS) --------------------------------------------

    /// `GET /v1/ca`: the hub CA (no authentication).
    pub async fn ca(&self) -> Result<CaInfo, Error> {
        self.get(&["v1", "ca"]).await
    }

    /// `POST /v1/registrations/check`: would this enrollment token be accepted? Does not
    /// use it up.
    pub async fn check_token(&self, token: &str) -> Result<TokenCheck, Error> {
        let body = CheckRequest {
            token: token.into(),
        };
        self.post(&["v1", "registrations", "check"], &body).await
    }

    /// `POST /v1/registrations`: token + CSR + inventory -> certificate.
    pub async fn register(
        &self,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, Error> {
        self.post(&["v1", "registrations"], request).await
    }

    /// `POST /v1/renewals` (mTLS): a new client certificate.
    pub async fn renew(&self, csr_pem: &str) -> Result<Renewal, Error> {
        let body = RenewalRequest {
            csr_pem: csr_pem.into(),
        };
        self.post(&["v1", "renewals"], &body).await
    }

    /// `POST /v1/heartbeats` (mTLS): status up, desired state down.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatResponse, Error> {
        self.post(&["v1", "heartbeats"], heartbeat).await
    }

    // ---- operator endpoints (bearer token) -----------------------------------------------

    /// `GET /v1/whoami`.
    pub async fn whoami(&self) -> Result<WhoAmI, Error> {
        self.get(&["v1", "whoami"]).await
    }

    /// `POST /v1/tokens`: an enrollment token, shown once.
    pub async fn create_token(
        &self,
        request: &CreateEnrollmentToken,
    ) -> Result<NewToken<EnrollmentTokenView>, Error> {
        self.post(&["v1", "tokens"], request).await
    }

    /// `GET /v1/tokens`.
    pub async fn list_tokens(&self) -> Result<Vec<EnrollmentTokenView>, Error> {
        self.get(&["v1", "tokens"]).await
    }

    /// `DELETE /v1/tokens/{id}`: revoke.
    pub async fn revoke_token(&self, id: &str) -> Result<EnrollmentTokenView, Error> {
        self.delete(&["v1", "tokens", id]).await
    }

    /// `POST /v1/operator-tokens`: an operator token, shown once.
    pub async fn create_operator_token(
        &self,
        request: &CreateOperatorToken,
    ) -> Result<NewToken<OperatorTokenView>, Error> {
        self.post(&["v1", "operator-tokens"], request).await
    }

    /// `GET /v1/operator-tokens`.
    pub async fn list_operator_tokens(&self) -> Result<Vec<OperatorTokenView>, Error> {
        self.get(&["v1", "operator-tokens"]).await
    }

    /// `DELETE /v1/operator-tokens/{id}`.
    pub async fn delete_operator_token(&self, id: &str) -> Result<(), Error> {
        self.delete_empty(&["v1", "operator-tokens", id]).await
    }

    /// `POST /v1/operator-tokens/{id}/revoke`: refused from now on, kept in the list.
    pub async fn revoke_operator_token(&self, id: &str) -> Result<OperatorTokenView, Error> {
        self.call::<(), (), _>(
            Method::POST,
            &["v1", "operator-tokens", id, "revoke"],
            None,
            None,
        )
        .await
    }

    /// `POST /v1/tenants`.
    pub async fn create_tenant(&self, request: &CreateTenant) -> Result<TenantView, Error> {
        self.post(&["v1", "tenants"], request).await
    }

    /// `GET /v1/tenants`.
    pub async fn list_tenants(&self) -> Result<Vec<TenantView>, Error> {
        self.get(&["v1", "tenants"]).await
    }

    /// `GET /v1/appliances`: one page; pass its `continue` as the next query's to go on.
    pub async fn list_appliances_page(
        &self,
        query: &ApplianceQuery,
    ) -> Result<ApplianceList, Error> {
        self.call::<(), _, _>(Method::GET, &["v1", "appliances"], Some(query), None)
            .await
    }

    /// `GET /v1/appliances`, every page: all the appliances the query matches.
    pub async fn list_appliances(
        &self,
        query: &ApplianceQuery,
    ) -> Result<Vec<ApplianceView>, Error> {
        let mut query = query.clone();
        let mut all = Vec::new();
        loop {
            let page = self.list_appliances_page(&query).await?;
            all.extend(page.items);
            match page.cursor {
                Some(next) => query.cursor = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// `GET /v1/appliance-counts`.
    pub async fn count_appliances(&self, query: &CountQuery) -> Result<ApplianceCounts, Error> {
        self.call::<(), _, _>(Method::GET, &["v1", "appliance-counts"], Some(query), None)
            .await
    }

    /// `GET /v1/watch/appliances`: the changes of the appliances the query matches, after
    /// its `resourceVersion` (from now without one). Read them with [`Watch::next`].
    pub async fn watch_appliances(&self, query: &WatchQuery) -> Result<Watch, Error> {
        self.watch(&["v1", "watch", "appliances"], query).await
    }

    /// `GET /v1/watch/appliances/{id}`: the changes of one appliance.
    pub async fn watch_appliance(&self, id: &str, query: &ResumeQuery) -> Result<Watch, Error> {
        self.watch(&["v1", "watch", "appliances", id], query).await
    }

    async fn watch<Q: Serialize + ?Sized, T>(
        &self,
        segments: &[&str],
        query: &Q,
    ) -> Result<Watch<T>, Error> {
        let (endpoint, url, response) = self.open_stream(segments, query).await?;
        Ok(Watch {
            endpoint,
            url,
            response,
            buffer: Vec::new(),
            item: std::marker::PhantomData,
        })
    }

    /// `GET /v1/appliances/{id}/logs`: the appliance's journal through its tunnel, read
    /// chunk by chunk as it comes ([`LogStream::next_chunk`]); with `follow`, until the
    /// caller stops.
    pub async fn appliance_logs(&self, id: &str, query: &LogsQuery) -> Result<LogStream, Error> {
        let (_, url, response) = self
            .open_stream(&["v1", "appliances", id, "logs"], query)
            .await?;
        Ok(LogStream { url, response })
    }

    /// `POST /v1/appliances/{id}/exec`: runs a command on the appliance through its tunnel
    /// (admin only, audited), waiting as long as its timeout.
    pub async fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, Error> {
        let (endpoint, url, req) = self.request(Method::POST, &["v1", "appliances", id, "exec"]);
        let runs = request
            .timeout_seconds
            .unwrap_or(cairn_api::hub::remote::EXEC_TIMEOUT_DEFAULT);
        let req = req
            .json(request)
            .timeout(Duration::from_secs(runs.saturating_add(30)));
        self.send(endpoint, url, req).await?.decode()
    }

    /// `POST /v1/appliances/{id}/reboot`: the node reboots (admin only, audited); answers
    /// once the node has queued the reboot.
    pub async fn reboot(&self, id: &str) -> Result<RebootResult, Error> {
        let (endpoint, url, req) = self.request(Method::POST, &["v1", "appliances", id, "reboot"]);
        self.send(endpoint, url, req).await?.decode()
    }

    /// `GET /v1/appliances/{id}/support-bundle`: the appliance's support bundle (`tar.gz`),
    /// read as it streams (operator role, audited).
    pub async fn support_bundle(&self, id: &str) -> Result<LogStream, Error> {
        let (_, url, response) = self
            .open_stream(
                &["v1", "appliances", id, "support-bundle"],
                &[] as &[(&str, &str)],
            )
            .await?;
        Ok(LogStream { url, response })
    }

    /// `GET /v1/metrics/appliances`: the nodes' metrics as this hub replica last scraped
    /// them through their tunnels, those in the token's scope, each sample labelled with
    /// `appliance` and `site` (OpenMetrics text).
    pub async fn appliance_metrics(&self) -> Result<String, Error> {
        let (_, url, response) = self
            .open_stream(&["v1", "metrics", "appliances"], &[] as &[(&str, &str)])
            .await?;
        response.text().await.map_err(|source| Error::Unreachable {
            url: url.to_string(),
            source,
        })
    }

    /// `POST /v1/appliances/{id}/rollback`: the node makes its other slot the default and
    /// reboots into it (admin only, audited); 409 when that slot holds no committed release.
    pub async fn rollback(&self, id: &str) -> Result<RebootResult, Error> {
        let (endpoint, url, req) =
            self.request(Method::POST, &["v1", "appliances", id, "rollback"]);
        self.send(endpoint, url, req).await?.decode()
    }

    /// A GET whose answer is read as it streams: the status is checked, the body left to
    /// the caller.
    async fn open_stream<Q: Serialize + ?Sized>(
        &self,
        segments: &[&str],
        query: &Q,
    ) -> Result<(String, url::Url, reqwest::Response), Error> {
        let (endpoint, url, req) = self.request(Method::GET, segments);
        // A watch lasts; the client-wide timeout would cut it. It still ends some day: the
        // caller resumes from the last event's resource version.
        let req = req.query(query).timeout(WATCH_TIMEOUT);
        let response = match req.send().await {
            Ok(r) => r,
            Err(source) => {
                return Err(Error::Unreachable {
                    url: url.to_string(),
                    source,
                });
            }
        };
        if !response.status().is_success() {
            let status = response.status().as_u16();
            let bytes = response.bytes().await.unwrap_or_default();
            return Err(match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => Error::Refused {
                    endpoint,
                    status,
                    body,
                },
                Err(_) => Error::Garbage {
                    endpoint,
                    detail: format!("HTTP {status}, body starts {:?}", preview(&bytes)),
                },
            });
        }
        Ok((endpoint, url, response))
    }

    /// `GET /v1/appliances/{id}`.
    pub async fn appliance(&self, id: &str) -> Result<ApplianceView, Error> {
        self.get(&["v1", "appliances", id]).await
    }

    /// `DELETE /v1/appliances/{id}`: its certificate stops working at once.
    pub async fn delete_appliance(&self, id: &str) -> Result<(), Error> {
        self.delete_empty(&["v1", "appliances", id]).await
    }

    /// `POST /v1/appliances/{id}/reinstall-token`: a single-use token with which that
    /// appliance's own hardware registers again (same ID, same site), shown once.
    pub async fn reinstall_token(
        &self,
        id: &str,
        request: &CreateReinstallToken,
    ) -> Result<NewToken<EnrollmentTokenView>, Error> {
        self.post(&["v1", "appliances", id, "reinstall-token"], request)
            .await
    }

    /// `PUT /v1/appliances/{id}/labels`.
    pub async fn label_appliance(
        &self,
        id: &str,
        request: &LabelRequest,
    ) -> Result<ApplianceView, Error> {
        self.call::<_, (), _>(
            Method::PUT,
            &["v1", "appliances", id, "labels"],
            None,
            Some(request),
        )
        .await
    }

    /// `DELETE /v1/appliances/{id}/quarantine/{version}`.
    pub async fn clear_quarantine(&self, id: &str, version: &str) -> Result<ApplianceView, Error> {
        self.delete(&["v1", "appliances", id, "quarantine", version])
            .await
    }

    /// `DELETE /v1/appliances/{id}/upgrade-flag`.
    pub async fn clear_upgrade_flag(&self, id: &str) -> Result<ApplianceView, Error> {
        self.delete(&["v1", "appliances", id, "upgrade-flag"]).await
    }

    /// `POST /v1/control-planes`.
    pub async fn add_control_plane(
        &self,
        request: &AddControlPlane,
    ) -> Result<ControlPlaneView, Error> {
        self.post(&["v1", "control-planes"], request).await
    }

    /// `GET /v1/control-planes`.
    pub async fn list_control_planes(&self) -> Result<Vec<ControlPlaneView>, Error> {
        self.get(&["v1", "control-planes"]).await
    }

    /// `POST /v1/control-planes/{name}/assign`.
    pub async fn assign_control_plane(
        &self,
        name: &str,
        request: &AssignRequest,
    ) -> Result<AssignResult, Error> {
        self.post(&["v1", "control-planes", name, "assign"], request)
            .await
    }

    /// `POST /v1/vpcs`.
    pub async fn create_vpc(&self, request: &CreateVpc) -> Result<VpcView, Error> {
        self.post(&["v1", "vpcs"], request).await
    }

    /// `GET /v1/vpcs`.
    pub async fn list_vpcs(&self) -> Result<Vec<VpcView>, Error> {
        self.get(&["v1", "vpcs"]).await
    }

    /// `POST /v1/vpcs/{name}/attach`.
    pub async fn attach(&self, vpc: &str, appliance: &str) -> Result<VpcView, Error> {
        let body = MembershipRequest {
            appliance_id: appliance.into(),
        };
        self.post(&["v1", "vpcs", vpc, "attach"], &body).await
    }

    /// `POST /v1/vpcs/{name}/detach`.
    pub async fn detach(&self, vpc: &str, appliance: &str) -> Result<VpcView, Error> {
        let body = MembershipRequest {
            appliance_id: appliance.into(),
        };
        self.post(&["v1", "vpcs", vpc, "detach"], &body).await
    }

    /// `POST /v1/releases`: the hub downloads the bundle from a URL once.
    pub async fn add_release_from_url(
        &self,
        request: &AddReleaseFromUrl,
    ) -> Result<ReleaseView, Error> {
        self.post(&["v1", "releases"], request).await
    }

    /// `POST /v1/releases/upload`: streams a local bundle file to the hub.
    pub async fn upload_release(&self, bundle: &Path, sha256: &str) -> Result<ReleaseView, Error> {
        let file = tokio::fs::File::open(bundle)
            .await
            .map_err(|source| Error::Io {
                path: bundle.display().to_string(),
                source,
            })?;
        let (endpoint, url, req) = self.request(Method::POST, &["v1", "releases", "upload"]);
        let req = req
            .query(&UploadQuery {
                sha256: sha256.into(),
            })
            .timeout(UPLOAD_TIMEOUT)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::from(file));
        self.send(endpoint, url, req).await?.decode()
    }

    /// `GET /v1/releases`.
    pub async fn list_releases(&self) -> Result<Vec<ReleaseView>, Error> {
        self.get(&["v1", "releases"]).await
    }

    /// `GET /v1/releases/{version}`.
    pub async fn release(&self, version: &str) -> Result<ReleaseView, Error> {
        self.get(&["v1", "releases", version]).await
    }

    /// `DELETE /v1/releases/{version}`.
    pub async fn delete_release(&self, version: &str) -> Result<(), Error> {
        self.delete_empty(&["v1", "releases", version]).await
    }

    /// `POST /v1/campaigns`: created, not started.
    pub async fn create_campaign(&self, request: &CreateCampaign) -> Result<CampaignView, Error> {
        self.post(&["v1", "campaigns"], request).await
    }

    /// `GET /v1/campaigns`.
    pub async fn list_campaigns(&self) -> Result<Vec<CampaignView>, Error> {
        self.get(&["v1", "campaigns"]).await
    }

    /// `GET /v1/campaigns/{name}`.
    pub async fn campaign(&self, name: &str) -> Result<CampaignView, Error> {
        self.get(&["v1", "campaigns", name]).await
    }

    /// `POST /v1/campaigns/{name}/{action}`.
    pub async fn campaign_action(
        &self,
        name: &str,
        action: CampaignAction,
    ) -> Result<CampaignView, Error> {
        self.call::<(), (), _>(
            Method::POST,
            &["v1", "campaigns", name, action.as_str()],
            None,
            None,
        )
        .await
    }

    /// `GET /v1/audit`.
    pub async fn audit(&self, query: &SinceQuery) -> Result<Vec<AuditEntryView>, Error> {
        self.call::<(), _, _>(Method::GET, &["v1", "audit"], Some(query), None)
            .await
    }

    /// `GET /v1/events`: the events the query matches, oldest first, each with its
    /// sequence number.
    pub async fn events(&self, query: &EventQuery) -> Result<Vec<EventView>, Error> {
        self.call::<(), _, _>(Method::GET, &["v1", "events"], Some(query), None)
            .await
    }

    /// `POST /v1/config/layers`: apply a layer file (or, with `dry_run`, answer its diff).
    pub async fn apply_config_layer(
        &self,
        request: &cairn_api::hub::ApplyLayer,
    ) -> Result<cairn_api::hub::LayerChange, Error> {
        self.post(&["v1", "config", "layers"], request).await
    }

    /// `GET /v1/config/layers`.
    pub async fn list_config_layers(&self) -> Result<Vec<cairn_api::hub::LayerView>, Error> {
        self.get(&["v1", "config", "layers"]).await
    }

    /// `GET /v1/config/layers/{layer}/history`.
    pub async fn config_layer_history(
        &self,
        layer: &str,
    ) -> Result<Vec<cairn_api::hub::LayerView>, Error> {
        self.get(&["v1", "config", "layers", layer, "history"])
            .await
    }

    /// `POST /v1/config/layers/{layer}/rollback`.
    pub async fn rollback_config_layer(
        &self,
        layer: &str,
        to: u64,
    ) -> Result<cairn_api::hub::LayerChange, Error> {
        let body = cairn_api::hub::RollbackLayer { to };
        self.post(&["v1", "config", "layers", layer, "rollback"], &body)
            .await
    }

    /// `GET /v1/appliances/{id}/config`.
    pub async fn appliance_config(
        &self,
        id: &str,
    ) -> Result<cairn_api::hub::ApplianceConfigView, Error> {
        self.get(&["v1", "appliances", id, "config"]).await
    }

    /// `GET /v1/watch/events`: the events the query matches as they are recorded, after
    /// its `after` (or since its `since`; from now without either). Resume after the last
    /// event's `seq`. Read them with [`Watch::next`].
    pub async fn watch_events(&self, query: &EventWatchQuery) -> Result<Watch<EventView>, Error> {
        self.watch(&["v1", "watch", "events"], query).await
    }
}

/// An appliance's journal as the hub streams it ([`HubClient::appliance_logs`]).
pub struct LogStream {
    url: url::Url,
    response: reqwest::Response,
}

impl LogStream {
    /// The next bytes of the journal; `Ok(None)` at its end.
    pub async fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, Error> {
        match self.response.chunk().await {
            Ok(chunk) => Ok(chunk.map(|b| b.to_vec())),
            Err(source) => Err(Error::Unreachable {
                url: self.url.to_string(),
                source,
            }),
        }
    }
}

/// An open watch: server-sent events, each `data` a `T`, read one by one.
pub struct Watch<T = WatchEvent> {
    endpoint: String,
    url: url::Url,
    response: reqwest::Response,
    buffer: Vec<u8>,
    item: std::marker::PhantomData<fn() -> T>,
}

impl<T: DeserializeOwned> Watch<T> {
    /// The next event; `Ok(None)` when the hub ended the watch. An `ERROR` event is an
    /// [`Error::Refused`] (`resource_version_too_old`, HTTP 410: list again).
    pub async fn next(&mut self) -> Result<Option<T>, Error> {
        loop {
            while let Some(frame) = take_frame(&mut self.buffer) {
                match parse_frame(&frame) {
                    Frame::KeepAlive => continue,
                    Frame::Event(data) => {
                        return serde_json::from_str(&data)
                            .map(Some)
                            .map_err(|e| Error::Garbage {
                                endpoint: self.endpoint.clone(),
                                detail: format!(
                                    "watch event: {e}; data {:?}",
                                    preview(data.as_bytes())
                                ),
                            });
                    }
                    Frame::Error(data) => {
                        let body: ErrorBody =
                            serde_json::from_str(&data).map_err(|e| Error::Garbage {
                                endpoint: self.endpoint.clone(),
                                detail: format!("watch error event: {e}"),
                            })?;
                        let status = if body.error == ErrorCode::ResourceVersionTooOld {
                            410
                        } else {
                            503
                        };
                        return Err(Error::Refused {
                            endpoint: self.endpoint.clone(),
                            status,
                            body,
                        });
                    }
                }
            }
            match self.response.chunk().await {
                Ok(Some(bytes)) => self.buffer.extend_from_slice(&bytes),
                Ok(None) => return Ok(None),
                Err(source) => {
                    return Err(Error::Unreachable {
                        url: self.url.to_string(),
                        source,
                    });
                }
            }
        }
    }
}

/// The first complete server-sent event in `buffer` (up to its blank line), taken out.
fn take_frame(buffer: &mut Vec<u8>) -> Option<String> {
    let end = buffer.windows(2).position(|w| w == b"\n\n")?;
    let frame: Vec<u8> = buffer.drain(..end + 2).collect();
    Some(String::from_utf8_lossy(&frame[..end]).into_owned())
}

/// What one server-sent event of a watch is.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A comment or an event without data (the hub's keep-alive).
    KeepAlive,
    /// A watch event's JSON.
    Event(String),
    /// An `ERROR` event's JSON error body.
    Error(String),
}

fn parse_frame(frame: &str) -> Frame {
    let mut name = "";
    let mut data: Vec<&str> = Vec::new();
    for line in frame.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => name = value,
            "data" => data.push(value),
            _ => {}
        }
    }
    if data.is_empty() {
        return Frame::KeepAlive;
    }
    let data = data.join("\n");
    if name == "ERROR" {
        Frame::Error(data)
    } else {
        Frame::Event(data)
    }
}

struct Answer {
    endpoint: String,
    status: u16,
    bytes: Vec<u8>,
}

impl Answer {
    /// Decodes the body; an empty body (204) reads as JSON `null`, which `()` accepts.
    fn decode<T: DeserializeOwned>(self) -> Result<T, Error> {
        let bytes: &[u8] = if self.bytes.is_empty() {
            b"null"
        } else {
            &self.bytes
        };
        serde_json::from_slice(bytes).map_err(|e| Error::Garbage {
            endpoint: self.endpoint,
            detail: format!(
                "HTTP {}, {e}; body starts {:?}",
                self.status,
                preview(&self.bytes)
            ),
        })
    }
}

/// The first bytes of an unexpected body, printable, for error messages.
/// A base URL: absolute, without a trailing empty path segment (paths are joined segment by
/// segment, and one would double the '/').
fn parse_base(base_url: &str) -> Result<url::Url, Error> {
    let mut base = url::Url::parse(base_url.trim_end_matches('/')).map_err(|e| Error::Url {
        url: base_url.into(),
        reason: e.to_string(),
    })?;
    if base.cannot_be_a_base() {
        return Err(Error::Url {
            url: base_url.into(),
            reason: "not an http(s) URL".into(),
        });
    }
    if base.path() == "/" {
        base.set_path("");
    }
    Ok(base)
}

/// `url`, made for the hub at `from`, for the hub at `to`: same path below the base, same
/// query.
fn rebase(url: &url::Url, from: &url::Url, to: &url::Url) -> url::Url {
    // A base without a path still reads "/" here.
    let base = |u: &url::Url| u.path().trim_end_matches('/').to_owned();
    let below = url.path().strip_prefix(&base(from)).unwrap_or(url.path());
    let mut moved = to.clone();
    moved.set_path(&format!("{}{below}", base(to)));
    moved.set_query(url.query());
    moved
}

fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_split_and_parse() {
        let mut buffer =
            b": keep-alive\n\nevent: ADDED\nid: 7\ndata: {\"a\":1}\n\nevent: ERROR\ndata: {}\n\nevent: MOD"
                .to_vec();
        let frames: Vec<Frame> = std::iter::from_fn(|| take_frame(&mut buffer))
            .map(|f| parse_frame(&f))
            .collect();
        assert_eq!(
            frames,
            vec![
                Frame::KeepAlive,
                Frame::Event(r#"{"a":1}"#.into()),
                Frame::Error("{}".into()),
            ]
        );
        assert_eq!(
            buffer, b"event: MOD",
            "an incomplete event waits for the rest"
        );
    }

    #[test]
    fn preview_keeps_garbage_printable_and_short() {
        assert_eq!(preview(b"<html>\n\x00hi"), "<html>..hi");
        assert_eq!(preview(&[b'a'; 200]).len(), 80);
    }

    #[test]
    fn path_segments_are_escaped_and_joined_to_the_base() {
        let hub = HubClient::new("https://hub.example:8443/", &Trust::Nothing, None).unwrap();
        assert_eq!(
            hub.url(&["v1", "appliances", "a/b?c"]).as_str(),
            "https://hub.example:8443/v1/appliances/a%2Fb%3Fc"
        );
        assert_eq!(hub.base_url(), "https://hub.example:8443");
        let prefixed = HubClient::new("https://hub.example/cairn", &Trust::Nothing, None).unwrap();
        assert_eq!(
            prefixed.url(&["v1", "ca"]).as_str(),
            "https://hub.example/cairn/v1/ca"
        );
        assert!(matches!(
            HubClient::new("not a url", &Trust::Nothing, None),
            Err(Error::Url { .. })
        ));
    }

    #[test]
    fn a_call_moved_to_another_hub_keeps_its_path_and_query() {
        let parse = |u| parse_base(u).unwrap();
        let url = url::Url::parse("https://a.example/cairn/v1/appliances/x%2Fy?site=s1").unwrap();
        assert_eq!(
            rebase(
                &url,
                &parse("https://a.example/cairn/"),
                &parse("https://b.example:8443")
            )
            .as_str(),
            "https://b.example:8443/v1/appliances/x%2Fy?site=s1"
        );
        assert!(matches!(
            HubClient::failover(&[] as &[&str], &Trust::Nothing, None),
            Err(Error::Url { .. })
        ));
    }

    /// Two hub URLs, the first refusing connections: calls go to the second at once, and
    /// stay there.
    #[tokio::test]
    async fn a_call_that_cannot_connect_goes_to_the_next_hub() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let alive = format!("http://{}", live.local_addr().unwrap());
        let served = tokio::spawn(async move {
            let mut paths = Vec::new();
            for _ in 0..2 {
                let (mut conn, _) = live.accept().await.unwrap();
                let mut buf = vec![0; 4096];
                let n = conn.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                paths.push(head.split(' ').nth(1).unwrap().to_owned());
                let body = r#"{"ca_bundle_pem":"","fingerprint":""}"#;
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(answer.as_bytes()).await.unwrap();
            }
            paths
        });
        let hub = HubClient::failover(&[&dead, &alive], &Trust::Nothing, None).unwrap();
        hub.ca().await.unwrap();
        assert_eq!(hub.base_url(), alive);
        hub.ca().await.unwrap();
        assert_eq!(served.await.unwrap(), ["/v1/ca", "/v1/ca"]);
    }
}
