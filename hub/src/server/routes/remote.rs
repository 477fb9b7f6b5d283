//! Reaching appliances through their tunnels: the appliance's upgrade to a tunnel, and the
//! operator routes the hub forwards over it (logs, exec).

use axum::body::Body;
use axum::extract::RawQuery;
use bytes::Bytes;
use cairn_api::hub::remote::{
    EXEC_TIMEOUT_DEFAULT, EXEC_TIMEOUT_MAX, NODE_EXEC_PATH, NODE_LOGS_PATH, NODE_REBOOT_PATH,
    NODE_ROLLBACK_PATH, NODE_SUPPORT_BUNDLE_PATH, TUNNEL_PROTOCOL,
};
use cairn_api::hub::{ExecRequest, ExecResult, LogsQuery, RebootResult};
use http_body_util::{BodyExt, Full};

use axum::http::HeaderMap;

use crate::model::TunnelHolder;
use crate::tunnel::TunnelError;

use super::*;

impl From<TunnelError> for ApiError {
    fn from(e: TunnelError) -> Self {
        let (status, code) = match &e {
            TunnelError::NoTunnel { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::NoTunnel),
            TunnelError::Busy { .. } => (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited),
            TunnelError::Broken { .. } => (StatusCode::BAD_GATEWAY, ErrorCode::TunnelFailed),
            TunnelError::Timeout { .. } => (StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Timeout),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// `GET /v1/tunnel` with `Upgrade: cairn-tunnel/1`: an appliance opens its tunnel. Only a
/// current appliance certificate is upgraded; the connection then belongs to the tunnel
/// registry.
pub(super) async fn tunnel(
    State(state): State<AppState>,
    appliance: Appliance,
    mut req: Request,
) -> Result<Response, ApiError> {
    let wants = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if wants != Some(TUNNEL_PROTOCOL) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("this route upgrades to {TUNNEL_PROTOCOL} only (Upgrade header)"),
        ));
    }
    let record = state.fleet.appliance_for_cert(&appliance.cert).await?;
    let id = record.id.to_string();
    let reached_at = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| format!("https://{h}"));
    let upgrade = hyper::upgrade::on(&mut req);
    // The connection's place under the server's caps stays taken while the tunnel lives.
    let hold = req.extensions_mut().remove::<super::super::ConnHold>();
    let (tunnels, fleet) = (state.tunnels.clone(), state.fleet.clone());
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::info!(appliance = %id, error = %e, "tunnel upgrade failed");
                return;
            }
        };
        // Where the tunnel is, for the other replicas; a store failure costs only that.
        let held = fleet
            .tunnel_held(&id, reached_at)
            .await
            .inspect_err(|e| tracing::warn!(appliance = %id, error = %e, "recording the tunnel's replica failed"))
            .ok();
        tunnels
            .clone()
            .serve(id.clone(), hyper_util::rt::TokioIo::new(upgraded), hold)
            .await;
        if let Some(held) = held
            && let Err(e) = fleet.tunnel_released(&id, &held).await
        {
            tracing::warn!(appliance = %id, error = %e, "removing the tunnel's record failed");
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, TUNNEL_PROTOCOL)
        .body(Body::empty())
        .expect("a static response"))
}

/// Sends `request` through `id`'s tunnel; when this replica holds none but another does,
/// the refusal names that replica.
async fn through_tunnel(
    state: &AppState,
    id: &str,
    request: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ApiError> {
    match state.tunnels.request(id, request).await {
        Err(TunnelError::NoTunnel { .. }) => match state.fleet.tunnel_elsewhere(id).await? {
            Some(holder) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::NoTunnel,
                format!(
                    "appliance {id}'s tunnel is connected to hub replica {}{} since {}, not to \
                     this one: send the request to that replica",
                    holder.hub,
                    holder.url.map(|u| format!(" ({u})")).unwrap_or_default(),
                    holder
                        .since
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                ),
            )),
            None => Err(TunnelError::NoTunnel {
                appliance: id.to_owned(),
            }
            .into()),
        },
        other => other.map_err(ApiError::from),
    }
}

/// Set on a request a replica forwards to the replica holding the tunnel: the receiver
/// answers it itself and never forwards it again.
const FORWARDED_BY: &str = "x-cairn-forwarded-by";

/// The replica holding `id`'s tunnel when it is another one and the request was not already
/// forwarded here.
async fn holder_elsewhere(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
) -> Result<Option<TunnelHolder>, ApiError> {
    if state.tunnels.is_connected(id) || headers.contains_key(FORWARDED_BY) {
        return Ok(None);
    }
    Ok(state
        .fleet
        .tunnel_elsewhere(id)
        .await?
        .filter(|h| h.url.is_some()))
}

/// Sends the operator's request, with its bearer token, to the replica holding the tunnel
/// (trusted by the hub CA, like any hub), and relays its answer as it streams. That replica
/// authorizes, audits and serves it as its own.
async fn forward(
    state: &AppState,
    holder: &TunnelHolder,
    method: Method,
    path: &str,
    headers: &HeaderMap,
    body: Vec<u8>,
) -> Result<Response, ApiError> {
    let base = holder
        .url
        .as_deref()
        .unwrap_or_default()
        .trim_end_matches('/');
    let failed = |why: String| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::TunnelFailed,
            format!(
                "the tunnel is connected to hub replica {} ({base}), which could not be \
                 reached: {why}; retry (the appliance reconnects to a live replica)",
                holder.hub
            ),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(state.fleet.ca().cert_der.clone().into())
        .map_err(|e| failed(e.to_string()))?;
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| failed(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| failed(e.to_string()))?;
    let mut request = client
        .request(method, format!("{base}{path}"))
        .header(FORWARDED_BY, &state.fleet.settings().hub_name)
        .body(body);
    for name in [header::AUTHORIZATION, header::CONTENT_TYPE] {
        if let Some(v) = headers.get(&name) {
            request = request.header(name, v);
        }
    }
    tracing::debug!(replica = %holder.hub, %path, "forwarding to the replica holding the tunnel");
    let response = request
        .send()
        .await
        .map_err(|e| failed(cairn_api::error_chain(&e)))?;
    let mut out = Response::builder().status(response.status().as_u16());
    if let Some(ct) = response.headers().get(header::CONTENT_TYPE) {
        out = out.header(header::CONTENT_TYPE, ct.as_bytes());
    }
    let chunks = futures::stream::unfold(Some(response), |r| async move {
        let mut r = r?;
        match r.chunk().await {
            Ok(Some(bytes)) => Some((Ok(bytes), Some(r))),
            Ok(None) => None,
            Err(e) => Some((Err(e), None)),
        }
    });
    out.body(Body::from_stream(chunks))
        .map_err(|e| failed(e.to_string()))
}

/// The node's answer as the hub's: its status, content type and body (streamed).
fn relay(resp: hyper::Response<hyper::body::Incoming>) -> Response {
    let (parts, body) = resp.into_parts();
    let mut out = Response::new(Body::new(body));
    *out.status_mut() = parts.status;
    if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
        out.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
    }
    out
}

/// `GET /v1/appliances/{id}/logs`: the node's journal, streamed from `journalctl`.
pub(super) async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    // Read for its validation; the node reads the same query string.
    let Query(_) = query?;
    if let Some(holder) = holder_elsewhere(&state, &id, &headers).await? {
        let path = match &raw {
            Some(q) => format!("/v1/appliances/{id}/logs?{q}"),
            None => format!("/v1/appliances/{id}/logs"),
        };
        return forward(&state, &holder, Method::GET, &path, &headers, Vec::new()).await;
    }
    let uri = match raw {
        Some(q) => format!("{NODE_LOGS_PATH}?{q}"),
        None => NODE_LOGS_PATH.to_owned(),
    };
    let request = hyper::Request::get(uri)
        .header(header::HOST, "node")
        .body(Full::new(Bytes::new()))
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Invalid, e.to_string()))?;
    Ok(relay(through_tunnel(&state, &id, request).await?))
}

/// `POST /v1/appliances/{id}/exec`: runs a command on the node (no shell), audited before it
/// runs and with its exit code after.
pub(super) async fn exec(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ExecRequest>,
) -> Result<Response, ApiError> {
    if req.argv.first().is_none_or(String::is_empty) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            "argv: name the program to run (a non-empty first element)",
        ));
    }
    let timeout = req.timeout_seconds.unwrap_or(EXEC_TIMEOUT_DEFAULT);
    if timeout == 0 || timeout > EXEC_TIMEOUT_MAX {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("timeout_seconds: between 1 and {EXEC_TIMEOUT_MAX}"),
        ));
    }
    let (_, appliance) = state.fleet.appliance_in_scope(&caller, &id).await?;
    if let Some(holder) = holder_elsewhere(&state, &id, &headers).await? {
        // The replica holding the tunnel audits and runs it.
        let body = serde_json::to_vec(&req).expect("an exec request serializes");
        let path = format!("/v1/appliances/{id}/exec");
        return forward(&state, &holder, Method::POST, &path, &headers, body).await;
    }
    let site = Some(appliance.site.as_str());
    // The command is on record before it runs: one that cuts the node off (a reboot) is
    // audited all the same.
    let what = format!("{id}: {}", shell_words(&req.argv));
    state
        .fleet
        .audit(&caller, "appliance.exec", &what, "started", site)
        .await?;
    let body = serde_json::to_vec(&req).expect("an exec request serializes");
    let request = hyper::Request::post(NODE_EXEC_PATH)
        .header(header::HOST, "node")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a static request");
    let outcome = node_json::<ExecResult>(
        &state,
        &id,
        request,
        std::time::Duration::from_secs(timeout + 10),
    )
    .await;
    let result = match &outcome {
        Ok(r) => format!("exit {}", r.exit_code),
        Err(e) => format!("failed: {}", e.message),
    };
    state
        .fleet
        .audit(&caller, "appliance.exec", &what, &result, site)
        .await?;
    Ok(Json(outcome?).into_response())
}

/// Sends `request` through `id`'s tunnel and reads the node's JSON answer, waiting at most
/// `limit` for its body; a refusal of the node's is relayed in its words.
async fn node_json<T: serde::de::DeserializeOwned>(
    state: &AppState,
    id: &str,
    request: hyper::Request<Full<Bytes>>,
    limit: std::time::Duration,
) -> Result<T, ApiError> {
    let resp = through_tunnel(state, id, request).await?;
    let status = resp.status();
    let bytes = tokio::time::timeout(limit, resp.into_body().collect())
        .await
        .map_err(|_| TunnelError::Timeout {
            appliance: id.to_owned(),
            secs: limit.as_secs(),
        })?
        .map_err(|e| TunnelError::Broken {
            appliance: id.to_owned(),
            reason: e.to_string(),
        })?
        .to_bytes();
    if status == StatusCode::CONFLICT {
        // The node declines in the operator's words (a rollback with nothing to go back to).
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            ErrorCode::Conflict,
            String::from_utf8_lossy(&bytes).trim_end(),
        ));
    }
    if !status.is_success() {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::TunnelFailed,
            format!(
                "the node refused (HTTP {status}): {}",
                String::from_utf8_lossy(&bytes).trim_end()
            ),
        ));
    }
    serde_json::from_slice::<T>(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::TunnelFailed,
            format!("the node's answer is not what the hub expects: {e}; is its cairn-node older than the hub?"),
        )
    })
}

/// `GET /v1/appliances/{id}/support-bundle`: the node's support bundle (`tar.gz`), streamed
/// through the tunnel; audited when asked for.
pub(super) async fn support_bundle(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, appliance) = state.fleet.appliance_in_scope(&caller, &id).await?;
    if let Some(holder) = holder_elsewhere(&state, &id, &headers).await? {
        let path = format!("/v1/appliances/{id}/support-bundle");
        return forward(&state, &holder, Method::GET, &path, &headers, Vec::new()).await;
    }
    state
        .fleet
        .audit(
            &caller,
            "appliance.support-bundle",
            &id,
            "requested",
            Some(appliance.site.as_str()),
        )
        .await?;
    let request = hyper::Request::get(NODE_SUPPORT_BUNDLE_PATH)
        .header(header::HOST, "node")
        .body(Full::new(Bytes::new()))
        .expect("a static request");
    Ok(relay(through_tunnel(&state, &id, request).await?))
}

/// `GET /v1/metrics/appliances`: the last scrape of every appliance whose tunnel this
/// replica holds and the caller may see, labelled with appliance and site.
pub(super) async fn appliance_metrics(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Response {
    let mut exposition = crate::scrape::Exposition::default();
    for (id, scrape) in state.tunnels.scrapes() {
        if caller.sees(&scrape.site) {
            exposition.add(&scrape.text, &id, &scrape.site);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        exposition.render(),
    )
        .into_response()
}

/// `POST /v1/appliances/{id}/reboot`: the node runs its reboot command (`systemctl reboot`).
pub(super) async fn reboot(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    node_action(&state, &caller, &id, &headers, "reboot", NODE_REBOOT_PATH).await
}

/// `POST /v1/appliances/{id}/rollback`: the node makes its other slot the default and
/// reboots, when that slot holds a committed release (409 with why otherwise).
pub(super) async fn rollback(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    node_action(
        &state,
        &caller,
        &id,
        &headers,
        "rollback",
        NODE_ROLLBACK_PATH,
    )
    .await
}

/// A remote action without a body (`reboot`, `rollback`): audited as `appliance.<action>`
/// before the node is asked and with what it answered, forwarded to the replica holding the
/// tunnel when another one does.
async fn node_action(
    state: &AppState,
    caller: &Caller,
    id: &str,
    headers: &HeaderMap,
    action: &str,
    node_path: &str,
) -> Result<Response, ApiError> {
    let (_, appliance) = state.fleet.appliance_in_scope(caller, id).await?;
    if let Some(holder) = holder_elsewhere(state, id, headers).await? {
        let path = format!("/v1/appliances/{id}/{action}");
        return forward(state, &holder, Method::POST, &path, headers, Vec::new()).await;
    }
    let site = Some(appliance.site.as_str());
    let audited = format!("appliance.{action}");
    state
        .fleet
        .audit(caller, &audited, id, "started", site)
        .await?;
    let request = hyper::Request::post(node_path)
        .header(header::HOST, "node")
        .body(Full::new(Bytes::new()))
        .expect("a static request");
    // The node answers once the reboot is queued; its command runs at most 30 s.
    let outcome =
        node_json::<RebootResult>(state, id, request, std::time::Duration::from_secs(45)).await;
    let result = match &outcome {
        Ok(r) => r.message.clone(),
        Err(e) => format!("failed: {}", e.message),
    };
    state
        .fleet
        .audit(caller, &audited, id, &result, site)
        .await?;
    let node = outcome?;
    Ok((
        StatusCode::ACCEPTED,
        Json(RebootResult {
            appliance: id.to_owned(),
            message: node.message,
        }),
    )
        .into_response())
}

/// An argv as one line a person reads (and could paste into a shell): words quoted when
/// they hold anything but plain characters.
fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            let plain = !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::shell_words;

    #[test]
    fn argv_is_recorded_as_a_line_a_shell_reads_back() {
        let argv = |w: &[&str]| w.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(shell_words(&argv(&["ip", "-j", "addr"])), "ip -j addr");
        assert_eq!(
            shell_words(&argv(&["sh", "-c", "echo it's; rm x", ""])),
            r"sh -c 'echo it'\''s; rm x' ''"
        );
    }
}
