//! The appliance routes: the hub CA, token checks, registration, renewal, heartbeats.

use super::*;

pub(super) async fn ca(State(state): State<AppState>) -> Json<CaInfo> {
    Json(CaInfo {
        ca_bundle_pem: state.fleet.ca().cert_pem.clone(),
        fingerprint: state.fleet.ca().fingerprint(),
    })
}

pub(super) async fn check_token(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CheckRequest>,
) -> Result<Json<TokenCheck>, ApiError> {
    Ok(Json(state.fleet.check_enrollment_token(&req.token).await?))
}

pub(super) async fn register(
    State(state): State<AppState>,
    axum::Extension(info): axum::Extension<ConnInfo>,
    ApiJson(req): ApiJson<RegistrationRequest>,
) -> Result<(StatusCode, Json<RegistrationResponse>), ApiError> {
    let caller = Caller::anonymous(info.remote.ip().to_string());
    let result = state.fleet.register(&caller, req).await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => registration_outcome(e),
    };
    state
        .metrics
        .registrations
        .get_or_create(&vec![("result", outcome)])
        .inc();
    Ok((StatusCode::CREATED, Json(result?)))
}

/// The `result` label of the registrations counter: a fixed, small set of values.
pub(super) fn registration_outcome(e: &crate::fleet::FleetError) -> String {
    use crate::fleet::FleetError as F;
    match e {
        F::TokenRefused(r) => r.code().into(),
        F::Csr(c) => c.code().to_string(),
        F::Invalid(_) => ErrorCode::Invalid.to_string(),
        F::HardwareKnown => ErrorCode::HardwareKnown.to_string(),
        _ => "error".into(),
    }
}

pub(super) async fn renew(
    State(state): State<AppState>,
    appliance: Appliance,
    ApiJson(req): ApiJson<RenewalRequest>,
) -> Result<Json<Renewal>, ApiError> {
    Ok(Json(
        state
            .fleet
            .renew(&appliance.caller, Some(&appliance.cert), &req.csr_pem)
            .await?,
    ))
}

pub(super) async fn heartbeat(
    State(state): State<AppState>,
    appliance: Appliance,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    ApiJson(hb): ApiJson<Heartbeat>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    let mut resp = state.fleet.heartbeat(Some(&appliance.cert), hb).await?;
    if let Some(order) = &mut resp.desired.upgrade {
        // Orders name the hub's own bundles by path; the node gets them as a URL on the
        // address it reached this hub at (HTTP/2 authority or HTTP/1.1 Host), unless the
        // hub was given a public URL.
        let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
            headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        state.fleet.absolute_bundle_url(order, authority.as_deref());
    }
    Ok(Json(resp))
}
