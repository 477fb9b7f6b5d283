//! A Redfish reverse proxy that makes a well-behaved sushy-tools misbehave the way real BMCs
//! do, per a server's entry in the faults file ([`crate::lab::faults`]). It sits on the BMC's
//! address; sushy-tools moves behind it. It also plays the part of the server's firmware
//! for the fake and libvirt-test drivers, which boot nothing: at every power-on it records
//! what the server would boot (the override in effect then), so a test can tell whether the
//! installer would have started.
//!
//! Connections are served with hyper directly rather than a router, because a restarting
//! BMC (`bmc-reset`) must drop connections, not answer them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::lab::faults::{Budget, FaultKind, ServerFaults};

/// Headers passed through in both directions (everything else is the proxy's business).
const PASSED: [&str; 8] = [
    "authorization",
    "x-auth-token",
    "content-type",
    "if-match",
    "odata-version",
    "accept",
    "etag",
    "location",
];

/// Reset types that start the host (the override in effect then is what it boots).
const BOOTS: [&str; 6] = [
    "On",
    "ForceOn",
    "ForceRestart",
    "GracefulRestart",
    "PowerCycle",
    "Nmi",
];

/// What the proxy saw and did, for tests and the lab's log.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Observed {
    /// Requests received (connections dropped by `bmc-reset` included).
    pub requests: u64,
    /// Requests with credentials the BMC refused (the lockout counter).
    pub bad_logins: u32,
    /// How many times each fault acted.
    pub fired: BTreeMap<FaultKind, u32>,
    /// What the server booted at each power-on: the override target in effect (`Pxe`,
    /// `Cd`, `Hdd`, ...) or `None`.
    pub power_ons: Vec<String>,
}

#[derive(Debug)]
struct State {
    budget: Budget,
    observed: Observed,
    locked_until: Option<Instant>,
    reset_until: Option<Instant>,
    /// The virtual CD reads back NotConnected (a faulty insert) until the next real one.
    not_connected: bool,
    /// The ComputerSystem and its Manager, learnt from answers passing through.
    system: Option<String>,
    manager: Option<String>,
}

#[derive(Debug)]
struct Shared {
    name: String,
    upstream: String,
    faults: ServerFaults,
    http: reqwest::Client,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fault proxy state lock")
    }

    /// Spends one use of a fault of `kind` covering `path`, counting it as fired.
    fn take(&self, kind: FaultKind, path: &str) -> bool {
        let mut st = self.state();
        let hit = st.budget.take(&self.faults.faults, kind, path).is_some();
        if hit {
            *st.observed.fired.entry(kind).or_default() += 1;
            tracing::info!(server = %self.name, fault = %kind, %path, "fault injected");
        }
        hit
    }

    /// Whether a fault of `kind` covering `path` has uses left (for faults that shape every
    /// answer, such as where VirtualMedia lives, rather than act once).
    fn has(&self, kind: FaultKind, path: &str) -> bool {
        self.state()
            .budget
            .peek(&self.faults.faults, kind, path)
            .is_some()
    }

    /// Counts a fault that shapes answers (it has no uses to spend) as having acted.
    fn acted(&self, kind: FaultKind) {
        *self.state().observed.fired.entry(kind).or_default() += 1;
    }

    fn param(&self, kind: FaultKind) -> Option<crate::lab::faults::Fault> {
        self.faults.faults.iter().find(|f| f.kind == kind).cloned()
    }
}

/// A running fault proxy.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn error_body(status: StatusCode, id: &str, message: &str) -> Response<Full<Bytes>> {
    let body = json!({"error": {"code": id, "message": message,
        "@Message.ExtendedInfo": [{"MessageId": id, "Message": message}]}});
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response")
}

fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .body(Full::new(Bytes::new()))
        .expect("static response")
}

impl FaultProxy {
    /// Listens on `listen` and forwards to `upstream` (`http://host:port`), applying
    /// `faults`; `name` labels its log lines.
    pub async fn start(
        name: &str,
        listen: SocketAddr,
        upstream: &str,
        faults: ServerFaults,
    ) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        // Plain HTTP to sushy-tools on loopback; TLS is configured only so the client builds.
        let tls = cairn_hardware::tls::trust_nothing().map_err(std::io::Error::other)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(std::io::Error::other)?;
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            upstream: upstream.trim_end_matches('/').to_owned(),
            state: Mutex::new(State {
                budget: Budget::new(&faults.faults),
                observed: Observed::default(),
                locked_until: None,
                reset_until: None,
                not_connected: false,
                system: None,
                manager: None,
            }),
            faults,
            http,
        });
        let (stop, mut stopped) = watch::channel(false);
        let accept = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(e) => {
                            tracing::warn!(error = %e, "fault proxy accept");
                            continue;
                        }
                    },
                    _ = stopped.changed() => break,
                };
                // A restarting BMC: nothing answers.
                if accept
                    .state()
                    .reset_until
                    .is_some_and(|t| Instant::now() < t)
                {
                    drop(stream);
                    continue;
                }
                let shared = accept.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req| handle(shared.clone(), req));
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            stop,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it saw and did so far.
    pub fn observed(&self) -> Observed {
        self.shared.state().observed.clone()
    }

    /// Stops listening and closes every connection.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// One request. An `Err` makes hyper drop the connection without an answer.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let path = parts.uri.path().to_owned();
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let method = parts.method.clone();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let is_session_post =
        method == Method::POST && path.trim_end_matches('/').ends_with("/Sessions");
    let has_credentials = parts.headers.contains_key(AUTHORIZATION) || is_session_post;

    // The BMC restarting: every connection dropped, for a while.
    {
        let mut st = shared.state();
        st.observed.requests += 1;
        let now = Instant::now();
        if st.reset_until.is_some_and(|t| now < t) {
            return Err(std::io::Error::other("the BMC is restarting"));
        }
        let n = st.observed.requests;
        let due = st
            .budget
            .peek(&shared.faults.faults, FaultKind::BmcReset, &path)
            .filter(|f| n >= f.after_requests)
            .map(|f| f.seconds);
        if let Some(seconds) = due {
            st.budget
                .take(&shared.faults.faults, FaultKind::BmcReset, &path);
            *st.observed.fired.entry(FaultKind::BmcReset).or_default() += 1;
            st.reset_until = Some(now + Duration::from_secs_f64(seconds));
            tracing::info!(server = %shared.name, fault = "bmc-reset", %path, seconds, "fault injected");
            return Err(std::io::Error::other("the BMC is restarting"));
        }
        if has_credentials && st.locked_until.is_some_and(|t| now < t) {
            *st.observed
                .fired
                .entry(FaultKind::LockoutAfter)
                .or_default() += 1;
            return Ok(error_body(
                StatusCode::UNAUTHORIZED,
                "Base.1.8.AccountLocked",
                "the account is locked after too many failed logins",
            ));
        }
    }
    if let Some(f) = shared.param(FaultKind::Slow)
        && shared.take(FaultKind::Slow, &path)
    {
        tokio::time::sleep(Duration::from_millis(f.ms)).await;
    }
    if let Some(f) = shared.param(FaultKind::Timeout)
        && shared.take(FaultKind::Timeout, &path)
    {
        tokio::time::sleep(Duration::from_secs_f64(f.seconds)).await;
        return Ok(empty(StatusCode::GATEWAY_TIMEOUT));
    }
    if is_session_post && shared.take(FaultKind::RefuseSessions, &path) {
        return Ok(error_body(
            StatusCode::SERVICE_UNAVAILABLE,
            "Base.1.8.SessionLimitExceeded",
            "the session limit is reached",
        ));
    }
    if method == Method::PATCH
        && json
            .pointer("/Boot/BootSourceOverrideEnabled")
            .and_then(Value::as_str)
            == Some("Once")
        && shared.take(FaultKind::IgnoreBootOnce, &path)
    {
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let inserting = method == Method::POST && path.ends_with("VirtualMedia.InsertMedia");
    if inserting && shared.take(FaultKind::VirtualMediaBusy, &path) {
        return Ok(error_body(
            StatusCode::CONFLICT,
            "Base.1.8.ResourceInUse",
            "the virtual media device is in use",
        ));
    }
    if inserting && shared.take(FaultKind::VirtualMediaNotConnected, &path) {
        shared.state().not_connected = true;
        return Ok(empty(StatusCode::NO_CONTENT));
    }
    let upstream_path = match map_media_path(&shared, &path) {
        Some(p) => p,
        None => {
            return Ok(error_body(
                StatusCode::NOT_FOUND,
                "Base.1.8.ResourceMissingAtURI",
                &format!("{path} does not exist on this BMC"),
            ));
        }
    };

    let mut forward = shared
        .http
        .request(
            method.clone(),
            format!("{}{upstream_path}{query}", shared.upstream),
        )
        .body(body.clone());
    for name in PASSED {
        if let Some(v) = parts.headers.get(name) {
            forward = forward.header(name, v);
        }
    }
    let answer = forward
        .send()
        .await
        .map_err(|e| std::io::Error::other(format!("sushy-tools: {e}")))?;
    let status = answer.status();
    let headers: Vec<(HeaderName, hyper::header::HeaderValue)> = answer
        .headers()
        .iter()
        .filter(|(n, _)| PASSED.contains(&n.as_str()))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    let mut out = answer
        .bytes()
        .await
        .map_err(|e| std::io::Error::other(format!("sushy-tools: {e}")))?;

    if status == StatusCode::UNAUTHORIZED && has_credentials {
        let mut st = shared.state();
        st.observed.bad_logins += 1;
        let bad = st.observed.bad_logins;
        if let Some(f) = shared.param(FaultKind::LockoutAfter)
            && bad >= f.bad_logins
            && st.locked_until.is_none()
        {
            st.locked_until = Some(Instant::now() + Duration::from_secs_f64(f.seconds));
            *st.observed
                .fired
                .entry(FaultKind::LockoutAfter)
                .or_default() += 1;
            tracing::warn!(server = %shared.name, bad_logins = bad, "account locked");
        }
    }
    // A real insert, or an eject, ends a faulty insert's NotConnected.
    if (status.is_success() && inserting) || path.ends_with("VirtualMedia.EjectMedia") {
        shared.state().not_connected = false;
    }
    if status.is_success()
        && method == Method::POST
        && path.ends_with("ComputerSystem.Reset")
        && let Some(reset) = json.get("ResetType").and_then(Value::as_str)
        && BOOTS.contains(&reset)
    {
        power_on(&shared, &parts.headers, &path, reset).await;
    }
    if status.is_success() && method == Method::GET {
        if shared.take(FaultKind::GarbageJson, &path) {
            out = Bytes::from_static(b"{\"@odata.id\": \"/redfish/v1/Sys");
        } else if let Ok(mut doc) = serde_json::from_slice::<Value>(&out) {
            rewrite(&shared, &path, &mut doc);
            out = Bytes::from(doc.to_string());
        }
    }
    let mut resp = Response::builder().status(status);
    for (n, v) in headers {
        resp = resp.header(n, v);
    }
    Ok(resp.body(Full::new(out)).expect("valid response"))
}

/// The upstream path of a request, after moving VirtualMedia; `None`: not served here.
fn map_media_path(shared: &Shared, path: &str) -> Option<String> {
    let (system, manager) = {
        let st = shared.state();
        (st.system.clone(), st.manager.clone())
    };
    let under = |base: &Option<String>| {
        base.as_ref()
            .and_then(|b| path.strip_prefix(&format!("{b}/VirtualMedia")))
            .map(str::to_owned)
    };
    if shared.has(FaultKind::VirtualMediaUnderManagers, path) {
        if let (Some(rest), Some(system)) = (under(&manager), &system) {
            shared.acted(FaultKind::VirtualMediaUnderManagers);
            return Some(format!("{system}/VirtualMedia{rest}"));
        }
        if under(&system).is_some() {
            shared.acted(FaultKind::VirtualMediaUnderManagers);
            return None;
        }
    }
    if shared.has(FaultKind::VirtualMediaUnderSystems, path) && under(&manager).is_some() {
        shared.acted(FaultKind::VirtualMediaUnderSystems);
        return None;
    }
    Some(path.to_owned())
}

/// A power-on: drops the override first when the fault says so, then records what the
/// server boots.
async fn power_on(shared: &Shared, headers: &hyper::HeaderMap, path: &str, reset: &str) {
    let system = path
        .trim_end_matches("/Actions/ComputerSystem.Reset")
        .to_owned();
    let auth = headers.get(AUTHORIZATION).cloned();
    let request = |method: Method| {
        let mut r = shared
            .http
            .request(method, format!("{}{system}", shared.upstream));
        if let Some(a) = &auth {
            r = r.header(AUTHORIZATION, a);
        }
        r
    };
    if matches!(reset, "On" | "ForceOn")
        && shared.take(FaultKind::ResetBootOverrideAfterPowerOn, path)
    {
        // sushy-tools keeps every override Continuous and ignores Disabled: back to the
        // disk is what a dropped override boots.
        let body = json!({"Boot": {"BootSourceOverrideEnabled": "Disabled", "BootSourceOverrideTarget": "Hdd"}});
        if let Err(e) = request(Method::PATCH).json(&body).send().await {
            tracing::warn!(server = %shared.name, error = %e, "dropping the boot override");
        }
    }
    let boots = match request(Method::GET).send().await {
        Ok(r) => r.json::<Value>().await.ok().map(|s| {
            let enabled = s
                .pointer("/Boot/BootSourceOverrideEnabled")
                .and_then(Value::as_str);
            match s
                .pointer("/Boot/BootSourceOverrideTarget")
                .and_then(Value::as_str)
            {
                Some(t) if enabled != Some("Disabled") => t.to_owned(),
                _ => "None".to_owned(),
            }
        }),
        Err(_) => None,
    };
    let mut boots = boots.unwrap_or_else(|| "unknown".into());
    // A CD boot boots the installer only with an image connected.
    if boots == "Cd" {
        let slot = format!("{system}/VirtualMedia/Cd");
        let mut r = shared.http.get(format!("{}{slot}", shared.upstream));
        if let Some(a) = &auth {
            r = r.header(AUTHORIZATION, a);
        }
        let inserted = match r.send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .and_then(|v| v.get("Inserted").and_then(Value::as_bool))
                .unwrap_or(false),
            Err(_) => false,
        };
        if !inserted || shared.state().not_connected {
            boots = "Cd (empty)".into();
        }
    }
    tracing::info!(server = %shared.name, reset, %boots, "power-on");
    shared.state().observed.power_ons.push(boots);
}

/// Shapes an answer: the vendor identity, where VirtualMedia lives, a SessionService, a CD
/// slot that reads NotConnected.
fn rewrite(shared: &Shared, path: &str, doc: &mut Value) {
    let kind = doc
        .get("@odata.type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let id = &shared.faults.identity;
    if kind.contains("#ServiceRoot.") && shared.has(FaultKind::RefuseSessions, path) {
        doc["Links"]["Sessions"] = json!({"@odata.id": "/redfish/v1/SessionService/Sessions"});
    }
    if kind.contains("#ComputerSystem.") {
        let mut st = shared.state();
        st.system = doc
            .get("@odata.id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        st.manager = doc
            .pointer("/Links/ManagedBy/0/@odata.id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        drop(st);
        if let Some(m) = &id.manufacturer {
            doc["Manufacturer"] = m.as_str().into();
        }
        if let Some(m) = &id.model {
            doc["Model"] = m.as_str().into();
        }
        if shared.has(FaultKind::VirtualMediaUnderManagers, path)
            && let Some(o) = doc.as_object_mut()
            && o.remove("VirtualMedia").is_some()
        {
            shared.acted(FaultKind::VirtualMediaUnderManagers);
        }
    }
    if kind.contains("#Manager.") {
        if let Some(f) = &id.firmware {
            doc["FirmwareVersion"] = f.as_str().into();
        }
        let me = doc
            .get("@odata.id")
            .and_then(Value::as_str)
            .unwrap_or(path)
            .to_owned();
        if shared.has(FaultKind::VirtualMediaUnderManagers, path) {
            doc["VirtualMedia"] = json!({"@odata.id": format!("{me}/VirtualMedia")});
        } else if shared.has(FaultKind::VirtualMediaUnderSystems, path) {
            // Counted whether or not the emulator linked it there: the Manager never does.
            shared.acted(FaultKind::VirtualMediaUnderSystems);
            if let Some(o) = doc.as_object_mut() {
                o.remove("VirtualMedia");
            }
        }
    }
    if kind.contains("#VirtualMedia.")
        && doc.get("Id").and_then(Value::as_str) == Some("Cd")
        && shared.state().not_connected
    {
        doc["ConnectedVia"] = "NotConnected".into();
        doc["Inserted"] = false.into();
        doc["Image"] = "".into();
    }
    // Served from the Manager: every link says so.
    let (system, manager) = {
        let st = shared.state();
        (st.system.clone(), st.manager.clone())
    };
    if let (Some(system), Some(manager)) = (system, manager)
        && shared.has(FaultKind::VirtualMediaUnderManagers, path)
        && kind.contains("VirtualMedia")
    {
        let text = doc.to_string().replace(
            &format!("{system}/VirtualMedia"),
            &format!("{manager}/VirtualMedia"),
        );
        if let Ok(moved) = serde_json::from_str(&text) {
            *doc = moved;
        }
    }
}
