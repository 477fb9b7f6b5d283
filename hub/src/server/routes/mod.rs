//! Routes of the `/v1` API. Handlers only translate: extract, call [`crate::fleet`], answer.

use std::collections::BTreeMap;
use std::time::Instant;

use tower::ServiceExt;

use axum::extract::{
    DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Query, Request, State,
};
use axum::http::Method;
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Json, Router};
use cairn_api::hub::{
    AddControlPlane, AddReleaseFromUrl, ApplianceCounts, ApplianceList, ApplianceQuery,
    ApplianceView, AssignRequest, AssignResult, AuditEntryView, CaInfo, CampaignView, CheckRequest,
    ControlPlaneView, CountQuery, CreateCampaign, CreateEnrollmentToken, CreateOperatorToken,
    CreateReinstallToken, CreateTenant, CreateVpc, EnrollmentTokenView, ErrorBody, ErrorCode,
    EventView, ExecRequest, ExecResult, JoinSecretView, LabelRequest, LogsQuery, MembershipRequest,
    NewToken, OperatorTokenView, RebootResult, ReleaseView, Renewal, RenewalRequest, ResumeQuery,
    Role, SinceQuery, TenantView, TokenCheck, UploadQuery, VpcView, WatchQuery, WhoAmI,
};
use cairn_api::{Heartbeat, HeartbeatResponse, RegistrationRequest, RegistrationResponse};
use schemars::{JsonSchema, Schema, SchemaGenerator, generate::SchemaSettings};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use time::OffsetDateTime;

mod appliances;
mod audit;
#[cfg(test)]
mod authz;
mod campaigns;
mod config;
mod control_planes;
mod events;
mod registration;
mod releases;
mod remote;
mod tenants;
mod tokens;
mod vpcs;

use super::error::ApiError;
use super::{AppState, ConnInfo, MAX_BODY};
use crate::fleet::Caller;
use crate::model::ControlPlane;
use crate::pki::PeerCert;
use crate::views;

/// JSON body whose rejections answer in the API's error shape.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(ApiJson(Json::<T>::from_request(req, state).await?.0))
    }
}

/// An operator authenticated by bearer token.
pub(crate) struct Operator(pub Caller);

fn conn(parts: &Parts) -> ConnInfo {
    parts
        .extensions
        .get::<ConnInfo>()
        .cloned()
        .unwrap_or(ConnInfo {
            remote: ([0, 0, 0, 0], 0).into(),
            cert: None,
        })
}

impl<S: Send + Sync> FromRequestParts<S> for Operator {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        // Set by `authorize` for every route the table declares with a bearer token; a
        // handler that asks for an operator on any other route refuses everyone.
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .map(Operator)
            .ok_or_else(bearer_required)
    }
}

fn bearer_required() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthenticated,
        "an Authorization: Bearer token is required",
    )
}

/// Authenticates a bearer token and checks the role the route table asks for.
async fn operator(state: &AppState, parts: &Parts, role: Role) -> Result<Caller, ApiError> {
    let source = conn(parts).remote.ip().to_string();
    let bearer = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(bearer_required)?;
    let caller = state.fleet.authenticate(bearer.trim(), &source).await?;
    caller.require(role)?;
    Ok(caller)
}

fn rate_limited(state: &AppState, parts: &ConnInfo) -> Result<(), ApiError> {
    if state.limiter.allow(parts.remote.ip()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many registration requests from this address; retry in a minute",
        ))
    }
}

/// The per-appliance limit of [`Auth::MtlsRateLimited`]. A connection without a valid
/// certificate is not counted: the handler refuses it anyway.
fn appliance_rate_limited(state: &AppState, info: &ConnInfo) -> Result<(), ApiError> {
    let Some(Ok(cert)) = &info.cert else {
        return Ok(());
    };
    let caller = cert
        .appliance
        .as_ref()
        .map_or_else(|| info.remote.ip().to_string(), ToString::to_string);
    if state.renewals.allow(caller) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::RateLimited,
            "too many renewals for this appliance; retry in a minute",
        ))
    }
}

/// The route table's [`Auth`] and [`Scope`] of one route, enforced before its handler
/// runs: this is the only place a route's role, scope rule and rate limit are decided.
async fn authorize(
    State((state, auth, scope)): State<(AppState, Auth, Scope)>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let caller = match auth {
        Auth::None | Auth::Mtls => None,
        Auth::RateLimited => {
            rate_limited(&state, &conn(&parts))?;
            None
        }
        Auth::MtlsRateLimited => {
            appliance_rate_limited(&state, &conn(&parts))?;
            None
        }
        Auth::Bearer(role) => Some(operator(&state, &parts, role).await?),
        Auth::MtlsOrBearer(role) => {
            let has_cert = matches!(conn(&parts).cert, Some(Ok(_)));
            if !has_cert && parts.headers.contains_key(header::AUTHORIZATION) {
                Some(operator(&state, &parts, role).await?)
            } else {
                None
            }
        }
    };
    if let Some(caller) = caller {
        in_scope(&state, &caller, scope, &mut parts).await?;
        parts.extensions.insert(caller);
    }
    Ok(next.run(Request::from_parts(parts, body)).await)
}

/// The route's [`Scope`] rule for an operator: fleet-only routes refuse scoped tokens, and
/// a resource named by the path must be the caller's (else 404, as if absent). Filtered
/// lists and request bodies are checked by the fleet call itself.
async fn in_scope(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    parts: &mut Parts,
) -> Result<(), ApiError> {
    match scope {
        Scope::Fleet if !caller.is_fleet_wide() => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this route is for fleet-wide tokens; this one is scoped to a tenant or a site",
        )),
        Scope::Path(resource) => {
            let params = axum::extract::RawPathParams::from_request_parts(parts, state)
                .await
                .map_err(|e| {
                    ApiError::new(StatusCode::BAD_REQUEST, ErrorCode::Invalid, e.body_text())
                })?;
            let Some((_, id)) = params.iter().next() else {
                return Ok(());
            };
            let fleet = &state.fleet;
            match resource {
                Resource::Appliance => fleet.appliance_in_scope(caller, id).await.map(drop),
                Resource::Vpc => fleet.vpc_in_scope(caller, id).await.map(drop),
                Resource::ControlPlane => fleet.control_plane_in_scope(caller, id).await.map(drop),
                Resource::Campaign => fleet.campaign_in_scope(caller, id).await.map(drop),
                Resource::OperatorToken => {
                    fleet.operator_token_in_scope(caller, id).await.map(drop)
                }
                Resource::EnrollmentToken => {
                    fleet.enrollment_token_in_scope(caller, id).await.map(drop)
                }
                Resource::ConfigLayer => fleet.config_layer_in_scope(caller, id).await.map(drop),
            }
            .map_err(ApiError::from)
        }
        _ => Ok(()),
    }
}

/// An appliance connection: the caller and its verified certificate.
pub(crate) struct Appliance {
    caller: Caller,
    cert: PeerCert,
}

impl<S: Send + Sync> FromRequestParts<S> for Appliance {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let info = conn(parts);
        let unauth = |m: String| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::ClientCertificateRequired,
                m,
            )
        };
        match info.cert {
            None => Err(unauth(
                "this endpoint needs the appliance's client certificate".into(),
            )),
            Some(Err(reason)) => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                ErrorCode::ClientCertificateInvalid,
                format!("the client certificate was not accepted: {reason}"),
            )),
            Some(Ok(cert)) => {
                let actor = match &cert.appliance {
                    Some(id) => format!("appliance:{id}"),
                    None => "appliance:?".into(),
                };
                Ok(Appliance {
                    caller: Caller {
                        actor,
                        source: info.remote.ip().to_string(),
                        ..Default::default()
                    },
                    cert,
                })
            }
        }
    }
}

/// Who may call a route; also what the OpenAPI document says about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    /// Anyone.
    None,
    /// Anyone, rate-limited per source address.
    RateLimited,
    /// An appliance's client certificate.
    Mtls,
    /// An appliance's client certificate, rate-limited per appliance.
    MtlsRateLimited,
    /// An operator bearer token with at least this role.
    Bearer(Role),
    /// An appliance's client certificate, or an operator bearer token with this role.
    MtlsOrBearer(Role),
}

/// Whose data a route's answer holds, and so how an operator token's site or tenant scope
/// applies to it; also the OpenAPI document's `x-scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scope {
    /// The same for every caller the auth column admits: nothing in it is a tenant's, or
    /// it depends only on the credential presented (an enrollment token).
    Shared,
    /// The calling appliance's own (by its client certificate).
    Own,
    /// The calling operator token itself.
    Caller,
    /// Fleet-wide tokens only: a tenant- or site-scoped token is refused (403).
    Fleet,
    /// A list filtered to what the caller's scope holds.
    Filtered,
    /// The resource the path's first parameter names must be in the caller's scope; one
    /// that is not answers 404, as if absent.
    Path(Resource),
    /// The site or tenant the request body names must be in the caller's scope (403).
    Body,
}

/// What a [`Scope::Path`] route's first path parameter names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resource {
    /// An appliance ID: its site.
    Appliance,
    /// A VPC name: its tenant.
    Vpc,
    /// A control plane name: its tenant and assigned site.
    ControlPlane,
    /// A campaign name: its site.
    Campaign,
    /// An operator token ID: its site or tenant.
    OperatorToken,
    /// An enrollment token ID: its site.
    EnrollmentToken,
    /// A configuration layer (`kind:name`): its tenant, site or appliance.
    ConfigLayer,
}

impl Scope {
    /// The OpenAPI `x-scope` value.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Scope::Shared => "shared",
            Scope::Own => "own",
            Scope::Caller => "caller",
            Scope::Fleet => "fleet",
            Scope::Filtered => "filtered",
            Scope::Body => "body",
            Scope::Path(Resource::Appliance) => "path:appliance",
            Scope::Path(Resource::Vpc) => "path:vpc",
            Scope::Path(Resource::ControlPlane) => "path:control-plane",
            Scope::Path(Resource::Campaign) => "path:campaign",
            Scope::Path(Resource::OperatorToken) => "path:operator-token",
            Scope::Path(Resource::EnrollmentToken) => "path:enrollment-token",
            Scope::Path(Resource::ConfigLayer) => "path:config-layer",
        }
    }
}

/// A request or response body in the route table.
#[derive(Clone, Copy)]
pub(crate) enum Body {
    /// JSON of a wire type; the function adds its schema to the document's components.
    Json(fn(&mut SchemaGenerator) -> Schema),
    /// Another media type.
    Other {
        /// Content type.
        media: &'static str,
        /// What it is, for people.
        description: &'static str,
    },
    /// No body (204).
    Empty,
}

/// The JSON body of type `T`.
fn json<T: JsonSchema>() -> Body {
    Body::Json(SchemaGenerator::subschema_for::<T>)
}

/// A body that is not JSON.
fn other(media: &'static str, description: &'static str) -> Body {
    Body::Other { media, description }
}

/// One route: what serves it and what the API document says about it. The router and
/// `/v1/openapi.json` are both built from [`routes`], so they cannot drift apart.
pub(crate) struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path, axum syntax (`{id}`), which is also OpenAPI's.
    pub path: &'static str,
    /// Who may call it.
    pub auth: Auth,
    /// How a scoped operator token applies to it.
    pub scope: Scope,
    /// One line for people.
    pub summary: &'static str,
    /// Request body, when there is one.
    pub request: Option<Body>,
    /// The query string's type, when the route reads one: each field is a parameter.
    query: Option<fn() -> Schema>,
    /// Success status and body.
    pub response: (u16, Body),
    handler: MethodRouter<AppState>,
}

impl Route {
    /// The route reads its query string as `T`.
    fn query<T: JsonSchema>(mut self) -> Self {
        self.query = Some(|| {
            SchemaSettings::draft2020_12()
                .with(|s| s.inline_subschemas = true)
                .into_generator()
                .into_root_schema_for::<T>()
        });
        self
    }
}

/// The OpenAPI parameters of a query string of `schema` (an object's properties): optional
/// fields are simply left out, so their schema loses its `null`.
fn query_parameters(schema: &Schema) -> Vec<Value> {
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, prop)| {
            let mut prop = prop.clone();
            let description = prop.as_object_mut().and_then(|o| o.remove("description"));
            if let Some(types) = prop.get_mut("type").and_then(Value::as_array_mut) {
                types.retain(|t| t != "null");
                if let [only] = types.as_slice() {
                    prop["type"] = only.clone();
                }
            }
            if let Some(any) = prop.get_mut("anyOf").and_then(Value::as_array_mut) {
                any.retain(|s| s.get("type").is_none_or(|t| t != "null"));
                if let [only] = any.as_slice() {
                    prop = only.clone();
                }
            }
            let mut param = json!({"name": name, "in": "query",
                "required": required.contains(&name.as_str()), "schema": prop});
            if let Some(d) = description {
                param["description"] = d;
            }
            param
        })
        .collect()
}

fn r(
    method: Method,
    path: &'static str,
    (auth, scope): (Auth, Scope),
    summary: &'static str,
    request: Option<Body>,
    response: (u16, Body),
    handler: MethodRouter<AppState>,
) -> Route {
    Route {
        method,
        path,
        auth,
        scope,
        summary,
        request,
        query: None,
        response,
        handler,
    }
}

/// Every route of the hub.
pub(crate) fn routes() -> Vec<Route> {
    use Auth::{Bearer, Mtls, MtlsOrBearer, MtlsRateLimited, None as Open, RateLimited};
    use Method as M;
    use Resource::{
        Appliance as App, Campaign as Camp, ConfigLayer as Layer, ControlPlane as Cp,
        EnrollmentToken as Et, OperatorToken as Ot, Vpc as VpcR,
    };
    use Role::{Admin, Operator as Op, Viewer};
    use Scope::{Body as InBody, Caller as Me, Filtered, Fleet, Own, Path as P, Shared};
    vec![
        r(
            M::GET,
            "/healthz",
            (Open, Shared),
            "Liveness",
            None,
            (200, other("text/plain", "ok")),
            get(|| async { "ok" }),
        ),
        r(
            M::GET,
            "/metrics",
            (Bearer(Viewer), Fleet),
            "Prometheus metrics",
            None,
            (
                200,
                other(
                    "application/openmetrics-text",
                    "Prometheus metrics, OpenMetrics text format",
                ),
            ),
            get(metrics),
        ),
        r(
            M::GET,
            "/v1/openapi.json",
            (Open, Shared),
            "This document",
            None,
            (200, json::<Value>()),
            get(openapi),
        ),
        r(
            M::GET,
            "/v1/ca",
            (Open, Shared),
            "The hub CA and its fingerprint",
            None,
            (200, json::<CaInfo>()),
            get(registration::ca),
        ),
        r(
            M::POST,
            "/v1/registrations/check",
            (RateLimited, Shared),
            "Would this enrollment token be accepted? Does not use it",
            Some(json::<CheckRequest>()),
            (200, json::<TokenCheck>()),
            post(registration::check_token),
        ),
        r(
            M::POST,
            "/v1/registrations",
            (RateLimited, Shared),
            "Register an appliance: token + CSR + inventory -> certificate",
            Some(json::<RegistrationRequest>()),
            (201, json::<RegistrationResponse>()),
            post(registration::register),
        ),
        r(
            M::POST,
            "/v1/renewals",
            (MtlsRateLimited, Own),
            "Renew the client certificate",
            Some(json::<RenewalRequest>()),
            (200, json::<Renewal>()),
            post(registration::renew),
        ),
        r(
            M::POST,
            "/v1/heartbeats",
            (Mtls, Own),
            "Status up, desired state down",
            Some(json::<Heartbeat>()),
            (200, json::<HeartbeatResponse>()),
            post(registration::heartbeat),
        ),
        r(
            M::GET,
            "/v1/tunnel",
            (Mtls, Own),
            "The appliance's tunnel: HTTP/1.1 Upgrade to cairn-tunnel/1 (yamux), over which the hub reaches the node",
            None,
            (
                101,
                other(
                    "application/octet-stream",
                    "yamux frames; the hub opens streams and speaks HTTP/1.1 on each",
                ),
            ),
            get(remote::tunnel),
        ),
        r(
            M::GET,
            "/v1/whoami",
            (Bearer(Viewer), Me),
            "The calling operator token",
            None,
            (200, json::<WhoAmI>()),
            get(tokens::whoami),
        ),
        r(
            M::POST,
            "/v1/tokens",
            (Bearer(Op), InBody),
            "Create an enrollment token (shown once)",
            Some(json::<CreateEnrollmentToken>()),
            (201, json::<NewToken<EnrollmentTokenView>>()),
            post(tokens::create_token),
        ),
        r(
            M::GET,
            "/v1/tokens",
            (Bearer(Viewer), Filtered),
            "List enrollment tokens",
            None,
            (200, json::<Vec<EnrollmentTokenView>>()),
            get(tokens::list_tokens),
        ),
        r(
            M::DELETE,
            "/v1/tokens/{id}",
            (Bearer(Op), P(Et)),
            "Revoke an enrollment token",
            None,
            (200, json::<EnrollmentTokenView>()),
            delete(tokens::revoke_token),
        ),
        r(
            M::POST,
            "/v1/operator-tokens",
            (Bearer(Admin), InBody),
            "Create an operator token (shown once)",
            Some(json::<CreateOperatorToken>()),
            (201, json::<NewToken<OperatorTokenView>>()),
            post(tokens::create_operator_token),
        ),
        r(
            M::GET,
            "/v1/operator-tokens",
            (Bearer(Admin), Filtered),
            "List operator tokens",
            None,
            (200, json::<Vec<OperatorTokenView>>()),
            get(tokens::list_operator_tokens),
        ),
        r(
            M::DELETE,
            "/v1/operator-tokens/{id}",
            (Bearer(Admin), P(Ot)),
            "Delete an operator token",
            None,
            (204, Body::Empty),
            delete(tokens::delete_operator_token),
        ),
        r(
            M::POST,
            "/v1/operator-tokens/{id}/revoke",
            (Bearer(Admin), P(Ot)),
            "Revoke an operator token: refused from now on, kept in the list",
            None,
            (200, json::<OperatorTokenView>()),
            post(tokens::revoke_operator_token),
        ),
        r(
            M::GET,
            "/v1/appliances",
            (Bearer(Viewer), Filtered),
            "List appliances: one page (?limit=, ?continue=) of those in scope that match \
             ?site=, ?state= and ?selector= (`kubectl -l` syntax)",
            None,
            (200, json::<ApplianceList>()),
            get(appliances::list_appliances),
        )
        .query::<ApplianceQuery>(),
        r(
            M::GET,
            "/v1/appliance-counts",
            (Bearer(Viewer), Filtered),
            "Count the appliances in scope that match ?selector= and ?site=, by state, site or \
             version",
            None,
            (200, json::<ApplianceCounts>()),
            get(appliances::count_appliances),
        )
        .query::<CountQuery>(),
        r(
            M::GET,
            "/v1/watch/appliances",
            (Bearer(Viewer), Filtered),
            "Watch the appliances in scope that match ?site=, ?state= and ?selector=, after \
             ?resourceVersion= (or Last-Event-ID): server-sent events named ADDED, MODIFIED, \
             DELETED, each a WatchEvent with the resource version as its id; ERROR (an error \
             body) ends it, resource_version_too_old meaning list again",
            None,
            (
                200,
                other(
                    "text/event-stream",
                    "server-sent events, each `data` a WatchEvent (ERROR: an ErrorBody)",
                ),
            ),
            get(appliances::watch_appliances),
        )
        .query::<WatchQuery>(),
        r(
            M::GET,
            "/v1/watch/appliances/{id}",
            (Bearer(Viewer), P(App)),
            "Watch one appliance, after ?resourceVersion= (or Last-Event-ID), as \
             /v1/watch/appliances does",
            None,
            (
                200,
                other(
                    "text/event-stream",
                    "server-sent events, each `data` a WatchEvent (ERROR: an ErrorBody)",
                ),
            ),
            get(appliances::watch_appliance),
        )
        .query::<ResumeQuery>(),
        r(
            M::GET,
            "/v1/appliances/{id}",
            (Bearer(Viewer), P(App)),
            "One appliance with its status",
            None,
            (200, json::<ApplianceView>()),
            get(appliances::show_appliance),
        ),
        r(
            M::DELETE,
            "/v1/appliances/{id}",
            (Bearer(Op), P(App)),
            "Delete an appliance",
            None,
            (204, Body::Empty),
            delete(appliances::delete_appliance),
        ),
        r(
            M::PUT,
            "/v1/appliances/{id}/labels",
            (Bearer(Op), P(App)),
            "Set or remove labels",
            Some(json::<LabelRequest>()),
            (200, json::<ApplianceView>()),
            put(appliances::label_appliance),
        ),
        r(
            M::POST,
            "/v1/appliances/{id}/reinstall-token",
            (Bearer(Op), P(App)),
            "Mint a single-use token with which the appliance's own hardware re-registers (shown once)",
            Some(json::<CreateReinstallToken>()),
            (201, json::<NewToken<EnrollmentTokenView>>()),
            post(appliances::reinstall_token),
        ),
        r(
            M::GET,
            "/v1/appliances/{id}/logs",
            (Bearer(Op), P(App)),
            "The appliance's journal (journalctl -o short-iso), streamed through its tunnel",
            None,
            (
                200,
                other("text/plain", "journal lines; with follow, new ones as they come"),
            ),
            get(remote::logs),
        )
        .query::<LogsQuery>(),
        r(
            M::POST,
            "/v1/appliances/{id}/exec",
            (Bearer(Admin), P(App)),
            "Run a command (argv, no shell) on the appliance through its tunnel (audited)",
            Some(json::<ExecRequest>()),
            (200, json::<ExecResult>()),
            post(remote::exec),
        ),
        r(
            M::POST,
            "/v1/appliances/{id}/reboot",
            (Bearer(Admin), P(App)),
            "Reboot the appliance through its tunnel (systemctl reboot on the node; audited)",
            None,
            (202, json::<RebootResult>()),
            post(remote::reboot),
        ),
        r(
            M::GET,
            "/v1/metrics/appliances",
            (Bearer(Op), Filtered),
            "The metrics of every appliance whose tunnel this hub replica holds, as last scraped through it (every --node-metrics-interval), each sample labelled with appliance and site; only the caller's scope",
            None,
            (
                200,
                other(
                    "application/openmetrics-text",
                    "the nodes' metrics, OpenMetrics text format",
                ),
            ),
            get(remote::appliance_metrics),
        ),
        r(
            M::GET,
            "/v1/appliances/{id}/support-bundle",
            (Bearer(Op), P(App)),
            "The appliance's support bundle (tar.gz: journal of this boot, status, config with secrets redacted, ip -j addr/route/link, dmesg, versions, upgrade record), streamed through its tunnel (audited)",
            None,
            (200, other("application/gzip", "a tar.gz, every file under support-bundle/")),
            get(remote::support_bundle),
        ),
        r(
            M::POST,
            "/v1/appliances/{id}/rollback",
            (Bearer(Admin), P(App)),
            "Boot the appliance's other A/B slot from now on and reboot, when it holds a committed release (409 otherwise; audited)",
            None,
            (202, json::<RebootResult>()),
            post(remote::rollback),
        ),
        r(
            M::GET,
            "/v1/appliances/{id}/join-bundle",
            (Bearer(Admin), P(App)),
            "The join bundle with its bootstrap token, for an admin who asks (audited)",
            None,
            (200, json::<JoinSecretView>()),
            get(appliances::join_bundle),
        ),
        r(
            M::POST,
            "/v1/control-planes",
            (Bearer(Admin), Fleet),
            "Register a control plane",
            Some(json::<AddControlPlane>()),
            (201, json::<ControlPlaneView>()),
            post(control_planes::add_control_plane),
        ),
        r(
            M::GET,
            "/v1/control-planes",
            (Bearer(Viewer), Filtered),
            "List control planes",
            None,
            (200, json::<Vec<ControlPlaneView>>()),
            get(control_planes::list_control_planes),
        ),
        r(
            M::POST,
            "/v1/control-planes/{name}/assign",
            (Bearer(Op), P(Cp)),
            "Assign appliances by site/labels and join them",
            Some(json::<AssignRequest>()),
            (200, json::<AssignResult>()),
            post(control_planes::assign_control_plane),
        ),
        r(
            M::POST,
            "/v1/vpcs",
            (Bearer(Op), InBody),
            "Create a VPC (unique VNI)",
            Some(json::<CreateVpc>()),
            (201, json::<VpcView>()),
            post(vpcs::create_vpc),
        ),
        r(
            M::GET,
            "/v1/vpcs",
            (Bearer(Viewer), Filtered),
            "List VPCs",
            None,
            (200, json::<Vec<VpcView>>()),
            get(vpcs::list_vpcs),
        ),
        r(
            M::POST,
            "/v1/vpcs/{name}/attach",
            (Bearer(Op), P(VpcR)),
            "Attach an appliance",
            Some(json::<MembershipRequest>()),
            (200, json::<VpcView>()),
            post(vpcs::attach),
        ),
        r(
            M::POST,
            "/v1/vpcs/{name}/detach",
            (Bearer(Op), P(VpcR)),
            "Detach an appliance",
            Some(json::<MembershipRequest>()),
            (200, json::<VpcView>()),
            post(vpcs::detach),
        ),
        r(
            M::POST,
            "/v1/releases",
            (Bearer(Admin), Fleet),
            "Add a release the hub fetches from a URL (verified against the trusted release keys)",
            Some(json::<AddReleaseFromUrl>()),
            (201, json::<ReleaseView>()),
            post(releases::add_release_from_url),
        ),
        r(
            M::POST,
            "/v1/releases/upload",
            (Bearer(Admin), Fleet),
            "Add a release by uploading its bundle (?sha256=HEX; verified against the trusted release keys)",
            Some(other(
                "application/octet-stream",
                "the signed update bundle file",
            )),
            (201, json::<ReleaseView>()),
            post(releases::upload_release).layer(DefaultBodyLimit::disable()),
        )
        .query::<UploadQuery>(),
        r(
            M::GET,
            "/v1/releases",
            (Bearer(Viewer), Shared),
            "List releases",
            None,
            (200, json::<Vec<ReleaseView>>()),
            get(releases::list_releases),
        ),
        r(
            M::GET,
            "/v1/releases/{version}",
            (Bearer(Viewer), Shared),
            "One release",
            None,
            (200, json::<ReleaseView>()),
            get(releases::show_release),
        ),
        r(
            M::DELETE,
            "/v1/releases/{version}",
            (Bearer(Admin), Fleet),
            "Delete a release (refused while a campaign uses it)",
            None,
            (204, Body::Empty),
            delete(releases::delete_release),
        ),
        r(
            M::GET,
            "/v1/releases/{version}/bundle",
            (MtlsOrBearer(Viewer), Shared),
            "Download the bundle (HTTP Range supported, for resumable downloads)",
            None,
            (
                200,
                other("application/octet-stream", "the bundle (206 for a range)"),
            ),
            get(releases::release_bundle),
        ),
        r(
            M::POST,
            "/v1/campaigns",
            (Bearer(Op), InBody),
            "Create an upgrade campaign (selector evaluated now; not started)",
            Some(json::<CreateCampaign>()),
            (201, json::<CampaignView>()),
            post(campaigns::create_campaign),
        ),
        r(
            M::GET,
            "/v1/campaigns",
            (Bearer(Viewer), Filtered),
            "List campaigns with progress",
            None,
            (200, json::<Vec<CampaignView>>()),
            get(campaigns::list_campaigns),
        ),
        r(
            M::GET,
            "/v1/campaigns/{name}",
            (Bearer(Viewer), P(Camp)),
            "One campaign: progress per batch and per appliance",
            None,
            (200, json::<CampaignView>()),
            get(campaigns::show_campaign),
        ),
        r(
            M::POST,
            "/v1/campaigns/{name}/{action}",
            (Bearer(Op), P(Camp)),
            "start | pause | resume | abort",
            None,
            (200, json::<CampaignView>()),
            post(campaigns::campaign_action),
        ),
        r(
            M::DELETE,
            "/v1/appliances/{id}/quarantine/{version}",
            (Bearer(Op), P(App)),
            "Clear a quarantined version so campaigns may order it again",
            None,
            (200, json::<ApplianceView>()),
            delete(appliances::clear_quarantine),
        ),
        r(
            M::DELETE,
            "/v1/appliances/{id}/upgrade-flag",
            (Bearer(Op), P(App)),
            "Clear the unexpected-version flag",
            None,
            (200, json::<ApplianceView>()),
            delete(appliances::clear_upgrade_flag),
        ),
        r(
            M::GET,
            "/v1/audit",
            (Bearer(Viewer), Filtered),
            "Audit log (?since=RFC3339&limit=)",
            None,
            (200, json::<Vec<AuditEntryView>>()),
            get(audit::audit),
        )
        .query::<SinceQuery>(),
        r(
            M::GET,
            "/v1/events",
            (Bearer(Viewer), Filtered),
            "Appliance events in scope, oldest first, each with its sequence number \
             (?since=RFC3339, ?after=SEQ, ?appliance=, ?kind=K1,K2, ?limit=)",
            None,
            (200, json::<Vec<EventView>>()),
            get(events::list_events),
        )
        .query::<cairn_api::hub::EventQuery>(),
        r(
            M::GET,
            "/v1/watch/events",
            (Bearer(Viewer), Filtered),
            "Stream the appliance events in scope that match ?appliance= and ?kind=, as \
             server-sent events: first those after ?after=SEQ (or Last-Event-ID) or since \
             ?since=, in sequence order, then each new one; each `data` an EventView, its id \
             the sequence number; ERROR (an error body) ends it",
            None,
            (
                200,
                other(
                    "text/event-stream",
                    "server-sent events, each `data` an EventView (ERROR: an ErrorBody)",
                ),
            ),
            get(events::watch_events),
        )
        .query::<cairn_api::hub::EventWatchQuery>(),
        r(
            M::POST,
            "/v1/tenants",
            (Bearer(Admin), Fleet),
            "Create a tenant claiming sites",
            Some(json::<CreateTenant>()),
            (201, json::<TenantView>()),
            post(tenants::create_tenant),
        ),
        r(
            M::GET,
            "/v1/tenants",
            (Bearer(Viewer), Filtered),
            "List tenants with their sites",
            None,
            (200, json::<Vec<TenantView>>()),
            get(tenants::list_tenants),
        ),
        r(
            M::POST,
            "/v1/config/layers",
            (Bearer(Op), InBody),
            "Apply a configuration layer file (YAML): validated with the node's parsers, \
             stored as the layer's next generation unless dry_run, rendered into every \
             appliance it touches; answers the diff",
            Some(json::<cairn_api::hub::ApplyLayer>()),
            (200, json::<cairn_api::hub::LayerChange>()),
            post(config::apply_layer),
        ),
        r(
            M::GET,
            "/v1/config/layers",
            (Bearer(Viewer), Filtered),
            "List the configuration layers in scope",
            None,
            (200, json::<Vec<cairn_api::hub::LayerView>>()),
            get(config::list_layers),
        ),
        r(
            M::GET,
            "/v1/config/layers/{layer}",
            (Bearer(Viewer), P(Layer)),
            "One configuration layer (`kind:name`), current generation",
            None,
            (200, json::<cairn_api::hub::LayerView>()),
            get(config::show_layer),
        ),
        r(
            M::GET,
            "/v1/config/layers/{layer}/history",
            (Bearer(Viewer), P(Layer)),
            "Every kept generation of a configuration layer: who, when, what",
            None,
            (200, json::<Vec<cairn_api::hub::LayerView>>()),
            get(config::layer_history),
        ),
        r(
            M::POST,
            "/v1/config/layers/{layer}/rollback",
            (Bearer(Op), P(Layer)),
            "Make an earlier generation of a layer current again, as a new generation",
            Some(json::<cairn_api::hub::RollbackLayer>()),
            (200, json::<cairn_api::hub::LayerChange>()),
            post(config::rollback_layer),
        ),
        r(
            M::GET,
            "/v1/appliances/{id}/config",
            (Bearer(Viewer), P(App)),
            "An appliance's rendered configuration, the generation it applied, the last \
             good one and drift",
            None,
            (200, json::<cairn_api::hub::ApplianceConfigView>()),
            get(config::appliance_config),
        ),
    ]
}

/// The OpenAPI 3.1 document of [`routes`]: every JSON body refers to a schema in
/// `components/schemas`, generated from its `cairn_api` type.
pub(crate) fn openapi_document() -> Value {
    let mut schemas = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut content = |body: Body| match body {
        Body::Json(schema) => json!({"application/json": {"schema": schema(&mut schemas)}}),
        Body::Other { media, .. } => json!({media: {"schema": {"type": "string"}}}),
        Body::Empty => json!({}),
    };
    let error = content(json::<ErrorBody>());
    let mut paths = serde_json::Map::new();
    for route in routes() {
        let (status, body) = route.response;
        let mut success = json!({"description": describe(body)});
        if !matches!(body, Body::Empty) {
            success["content"] = content(body);
        }
        let mut op = json!({
            "summary": route.summary,
            "responses": {
                status.to_string(): success,
                "4XX": {"description": "the request was refused", "content": error},
            },
        });
        match route.auth {
            Auth::None => {}
            Auth::RateLimited => op["x-rate-limited"] = json!(true),
            Auth::Mtls => op["security"] = json!([{"applianceCertificate": []}]),
            Auth::MtlsRateLimited => {
                op["security"] = json!([{"applianceCertificate": []}]);
                op["x-rate-limited"] = json!(true);
            }
            Auth::Bearer(role) => {
                op["security"] = json!([{"operatorToken": []}]);
                op["x-least-role"] = json!(role.to_string());
            }
            Auth::MtlsOrBearer(role) => {
                op["security"] = json!([{"applianceCertificate": []}, {"operatorToken": []}]);
                op["x-least-role"] = json!(role.to_string());
            }
        }
        op["x-scope"] = json!(route.scope.name());
        if let Some(body) = route.request {
            op["requestBody"] = json!({"required": true, "description": describe(body),
                "content": content(body)});
        }
        let mut params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        if let Some(query) = route.query {
            params.extend(query_parameters(&query()));
        }
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        let item = paths.entry(route.path).or_insert_with(|| json!({}));
        item[route.method.as_str().to_ascii_lowercase()] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "cairn hub", "version": cairn_api::API_VERSION,
            "description": "See hub/API.md for the rules behind each route."},
        "paths": paths,
        "components": {
            "schemas": schemas.take_definitions(true),
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "cairn-op.<id>.<secret>"},
                "applianceCertificate": {"type": "mutualTLS", "description": "client certificate issued by the hub CA, CN = appliance ID"},
            },
        },
    })
}

/// The description of a body in the document.
fn describe(body: Body) -> &'static str {
    match body {
        Body::Json(_) => "JSON",
        Body::Other { description, .. } => description,
        Body::Empty => "no body",
    }
}

async fn openapi() -> Json<Value> {
    Json(openapi_document())
}

/// Builds the router with every route, limits and the metrics middleware.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in routes() {
        let layer =
            middleware::from_fn_with_state((state.clone(), route.auth, route.scope), authorize);
        let mut handler = route.handler.route_layer(layer);
        // Adding a release moves a whole bundle (uploaded at the client's pace, or fetched
        // from a URL by the hub) and is an administrator's, authorized before any of it is
        // read; every other request is bounded in time.
        let moves_a_bundle = route.method == Method::POST
            && matches!(route.path, "/v1/releases" | "/v1/releases/upload");
        // A command run through a tunnel is bounded by its own timeout (at most 10 min).
        let runs_a_command = route.path == "/v1/appliances/{id}/exec";
        if !moves_a_bundle && !runs_a_command {
            handler = handler.layer(middleware::from_fn_with_state(
                state.request_timeout,
                request_timeout,
            ));
        }
        router = router.route(route.path, handler);
    }
    router
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                ErrorCode::NoSuchRoute,
                "no such route; see /v1/openapi.json",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(super::drain::drain_unread))
        .with_state(state)
}

/// Answers `503 timeout` when the handler takes longer than `limit`.
async fn request_timeout(
    State(limit): State<std::time::Duration>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    tokio::time::timeout(limit, next.run(req))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Timeout,
                format!("the request took longer than {} s; retry", limit.as_secs()),
            )
        })
}

/// The method as a metrics label: the methods the API knows, anything else `other`, so a
/// client cannot grow the label set (and the hub's memory) with made-up methods.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Records an unauthenticated refusal in the audit log, at most once per source and minute
/// ([`RefusalLog`](crate::ratelimit::RefusalLog)), with the count of those not recorded.
async fn audit_refusal(state: &AppState, source: std::net::IpAddr, route: &str) {
    let Some(unrecorded) = state.refusals.refused(source) else {
        return;
    };
    let result = match unrecorded {
        0 => "refused: 401".to_owned(),
        n => format!("refused: 401 (and {n} more from this source in the minute before)"),
    };
    let caller = Caller::anonymous(source.to_string());
    if let Err(e) = state
        .fleet
        .audit(&caller, "request.unauthenticated", route, &result, None)
        .await
    {
        tracing::warn!(error = %e, "recording a refusal in the audit log failed");
    }
}

/// Counts and times every request by route.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method()).to_owned();
    let source = req
        .extensions()
        .get::<ConnInfo>()
        .map(|c| super::source_of(c.remote.ip()));
    let start = Instant::now();
    let response = next.run(req).await;
    if response.status() == StatusCode::UNAUTHORIZED
        && let Some(source) = source
    {
        audit_refusal(&state, source, &route).await;
    }
    let labels = vec![
        ("route", route.clone()),
        ("method", method),
        ("status", response.status().as_u16().to_string()),
    ];
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .request_seconds
        .get_or_create(&vec![("route", route)])
        .observe(start.elapsed().as_secs_f64());
    response
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    if let Ok((campaigns, members)) = state.fleet.campaign_counts().await {
        for (family, counts) in [
            (&state.metrics.campaigns, campaigns),
            (&state.metrics.campaign_members, members),
        ] {
            family.clear();
            for (s, n) in counts {
                family.get_or_create(&vec![("state", s)]).set(n as i64);
            }
        }
    }
    state
        .metrics
        .open_tunnels
        .set(i64::try_from(state.tunnels.count()).unwrap_or(i64::MAX));
    if let Ok(counts) = state.fleet.count_by_state().await {
        for (s, n) in counts {
            state
                .metrics
                .appliances
                .get_or_create(&vec![("state", s)])
                .set(n as i64);
        }
    }
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    /// The checked-in `hub/openapi.json` is what the code serves. On purpose change:
    /// `CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn-hub openapi` rewrites it, but never with
    /// `CI` set: there the test checks the committed copy, whatever the environment says.
    #[test]
    fn openapi_document_matches_the_checked_in_copy() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
        let generated = serde_json::to_string_pretty(&super::openapi_document()).unwrap() + "\n";
        let update = std::env::var("CAIRN_UPDATE_OPENAPI").as_deref() == Ok("1");
        let ci = std::env::var_os("CI").is_some();
        if update && !ci {
            std::fs::write(path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "hub/openapi.json is out of date with the routes; regenerate it outside CI with \
             `CAIRN_UPDATE_OPENAPI=1 cargo test -p cairn-hub openapi` and commit it{}",
            if update && ci {
                " (CAIRN_UPDATE_OPENAPI is ignored while CI is set)"
            } else {
                ""
            }
        );
    }

    /// Every query string a handler reads is in the document, with its optional fields
    /// optional and without `null` (a query parameter is absent, never null).
    #[test]
    fn query_strings_are_documented_parameters() {
        let doc = super::openapi_document();
        let params = |path: &str, method: &str| -> Vec<(String, bool, String)> {
            doc["paths"][path][method]["parameters"]
                .as_array()
                .unwrap_or_else(|| panic!("{method} {path}: no parameters"))
                .iter()
                .filter(|p| p["in"] == "query")
                .map(|p| {
                    (
                        p["name"].as_str().unwrap().to_owned(),
                        p["required"].as_bool().unwrap(),
                        // An enumeration of strings is a `oneOf` of constants.
                        p["schema"]["type"]
                            .as_str()
                            .or_else(|| p["schema"]["oneOf"][0]["type"].as_str())
                            .unwrap()
                            .to_owned(),
                    )
                })
                .collect()
        };
        let since_limit = vec![
            ("limit".to_owned(), false, "integer".to_owned()),
            ("since".to_owned(), false, "string".to_owned()),
        ];
        assert_eq!(params("/v1/audit", "get"), since_limit);
        let optional = |names: &[(&str, &str)]| -> Vec<(String, bool, String)> {
            names
                .iter()
                .map(|(n, t)| (n.to_string(), false, t.to_string()))
                .collect()
        };
        assert_eq!(
            params("/v1/events", "get"),
            optional(&[
                ("after", "integer"),
                ("appliance", "string"),
                ("kind", "string"),
                ("limit", "integer"),
                ("since", "string"),
            ])
        );
        assert_eq!(
            params("/v1/watch/events", "get"),
            optional(&[
                ("after", "integer"),
                ("appliance", "string"),
                ("kind", "string"),
                ("since", "string"),
                ("timeoutSeconds", "integer"),
            ])
        );
        assert_eq!(
            params("/v1/appliances", "get"),
            optional(&[
                ("continue", "string"),
                ("limit", "integer"),
                ("selector", "string"),
                ("site", "string"),
                ("state", "string"),
            ])
        );
        assert_eq!(
            params("/v1/watch/appliances", "get"),
            optional(&[
                ("resourceVersion", "integer"),
                ("selector", "string"),
                ("site", "string"),
                ("state", "string"),
                ("timeoutSeconds", "integer"),
            ])
        );
        assert_eq!(
            params("/v1/releases/upload", "post"),
            vec![("sha256".to_owned(), true, "string".to_owned())]
        );
    }
}
