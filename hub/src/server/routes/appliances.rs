//! Appliances as operators see and change them.

use super::*;

pub(super) async fn list_appliances(
    State(state): State<AppState>,
    Operator(caller): Operator,
    query: Result<Query<ApplianceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<ApplianceView>>, ApiError> {
    let Query(q) = query?;
    Ok(Json(
        state
            .fleet
            .list_appliances(&caller, q.site.as_deref())
            .await?,
    ))
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
