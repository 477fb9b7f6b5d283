//! Appliances as operators see and change them.

use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use cairn_api::hub::{
    ApplianceCounts, ApplianceList, ApplianceQuery, CountQuery, DEFAULT_PAGE, LabelSelector,
    ResumeQuery, SelectorError, WatchQuery,
};
use futures::StreamExt;

use crate::fleet::{ApplianceFilter, FleetError, WatchEvents};

use super::*;

pub(super) async fn list_appliances(
    State(state): State<AppState>,
    Operator(caller): Operator,
    query: Result<Query<ApplianceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApplianceList>, ApiError> {
    let Query(q) = query?;
    let filter = ApplianceFilter {
        site: q.site,
        state: q.state,
        selector: selector(q.selector.as_deref())?,
        id: None,
    };
    let page = state
        .fleet
        .list_appliance_page(
            &caller,
            &filter,
            q.limit.unwrap_or(DEFAULT_PAGE),
            q.cursor.as_deref(),
        )
        .await?;
    Ok(Json(page))
}

pub(super) async fn count_appliances(
    State(state): State<AppState>,
    Operator(caller): Operator,
    query: Result<Query<CountQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<ApplianceCounts>, ApiError> {
    let Query(q) = query?;
    let filter = ApplianceFilter {
        site: q.site,
        selector: selector(q.selector.as_deref())?,
        ..Default::default()
    };
    Ok(Json(
        state.fleet.count_appliances(&caller, &filter, q.by).await?,
    ))
}

pub(super) async fn watch_appliances(
    State(state): State<AppState>,
    Operator(caller): Operator,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let filter = ApplianceFilter {
        site: q.site,
        state: q.state,
        selector: selector(q.selector.as_deref())?,
        id: None,
    };
    let from = resume_from(q.resource_version, &headers)?;
    let events = state.fleet.watch_appliances(&caller, filter, from).await?;
    Ok(event_stream(events, q.timeout_seconds))
}

pub(super) async fn watch_appliance(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ResumeQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let filter = ApplianceFilter {
        id: Some(id),
        ..Default::default()
    };
    let from = resume_from(q.resource_version, &headers)?;
    let events = state.fleet.watch_appliances(&caller, filter, from).await?;
    Ok(event_stream(events, q.timeout_seconds))
}

/// Where a watch resumes: `resourceVersion` (an event stream's `after`), else the
/// `Last-Event-ID` of a reconnecting `EventSource`.
pub(super) fn resume_from(
    resource_version: Option<u64>,
    headers: &HeaderMap,
) -> Result<Option<u64>, ApiError> {
    if resource_version.is_some() {
        return Ok(resource_version);
    }
    headers
        .get("last-event-id")
        .map(|v| {
            v.to_str().ok().and_then(|v| v.parse().ok()).ok_or_else(|| {
                FleetError::Invalid(
                    "Last-Event-ID: expected the id of an event this hub sent (a number)".into(),
                )
                .into()
            })
        })
        .transpose()
}

/// The `selector` of a query, parsed; a malformed one is the caller's error (400), named
/// with its position.
fn selector(text: Option<&str>) -> Result<LabelSelector, ApiError> {
    text.unwrap_or_default()
        .parse()
        .map_err(|e: SelectorError| FleetError::Invalid(format!("selector: {e}")).into())
}

/// A watch as server-sent events: each event named by its type, its SSE `id` the resource
/// version (an `EventSource` that reconnects sends it back as `Last-Event-ID`, and the watch
/// resumes after it); a failure ends the stream with an `ERROR` event carrying the error
/// body (`resource_version_too_old`: list again). Ends after `timeout_seconds` when given.
fn event_stream(events: WatchEvents, timeout_seconds: Option<u64>) -> Response {
    let stream = futures::stream::unfold(events, |mut events| async move {
        let event = match events.recv().await? {
            Ok(e) => Event::default()
                .event(e.kind.as_str())
                .id(e.resource_version.to_string())
                .json_data(&e),
            Err(e) => {
                let e = ApiError::from(e);
                Event::default().event("ERROR").json_data(ErrorBody {
                    error: e.code,
                    message: e.message,
                })
            }
        };
        Some((event.map_err(axum::Error::new), events))
    });
    let end = async move {
        match timeout_seconds {
            Some(s) => tokio::time::sleep(std::time::Duration::from_secs(s)).await,
            None => std::future::pending().await,
        }
    };
    Sse::new(stream.take_until(Box::pin(end)))
        .keep_alive(KeepAlive::default())
        .into_response()
}

pub(super) async fn show_appliance(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<Json<ApplianceView>, ApiError> {
    Ok(Json(state.fleet.show_appliance(&caller, &id).await?))
}

pub(super) async fn delete_appliance(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.fleet.delete_appliance(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn label_appliance(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<LabelRequest>,
) -> Result<Json<ApplianceView>, ApiError> {
    state
        .fleet
        .label_appliance(&caller, &id, req.labels)
        .await?;
    Ok(Json(state.fleet.show_appliance(&caller, &id).await?))
}

pub(super) async fn clear_quarantine(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path((id, version)): Path<(String, String)>,
) -> Result<Json<ApplianceView>, ApiError> {
    state
        .fleet
        .clear_upgrade_protection(&caller, &id, Some(&version))
        .await?;
    Ok(Json(state.fleet.show_appliance(&caller, &id).await?))
}

pub(super) async fn clear_upgrade_flag(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<Json<ApplianceView>, ApiError> {
    state
        .fleet
        .clear_upgrade_protection(&caller, &id, None)
        .await?;
    Ok(Json(state.fleet.show_appliance(&caller, &id).await?))
}

pub(super) async fn reinstall_token(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<CreateReinstallToken>,
) -> Result<(StatusCode, Json<NewToken<EnrollmentTokenView>>), ApiError> {
    let token = state
        .fleet
        .create_reinstall_token(&caller, &id, req.ttl_seconds)
        .await?;
    Ok((StatusCode::CREATED, Json(token)))
}

pub(super) async fn join_bundle(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<Json<JoinSecretView>, ApiError> {
    Ok(Json(state.fleet.join_bundle_for_admin(&caller, &id).await?))
}
