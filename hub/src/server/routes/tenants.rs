//! Tenants and the sites they own.

use super::*;

pub(super) async fn create_tenant(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<CreateTenant>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    let tenant = state
        .fleet
        .create_tenant(&caller, &req.name, &req.sites)
        .await?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

pub(super) async fn list_tenants(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Result<Json<Vec<TenantView>>, ApiError> {
    Ok(Json(state.fleet.list_tenants(&caller).await?))
}
