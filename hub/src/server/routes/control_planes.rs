//! Hosted control planes: registration and assignment.

use super::*;

pub(super) async fn add_control_plane(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<AddControlPlane>,
) -> Result<(StatusCode, Json<ControlPlaneView>), ApiError> {
    let cp = ControlPlane {
        name: req.name,
        api_server_url: req.api_server_url,
        ca_bundle_pem: req.ca_bundle_pem,
        credentials_ref: req.credentials_ref,
        site: None,
        labels: BTreeMap::new(),
        tenant: req
            .tenant
            .unwrap_or_else(|| crate::model::DEFAULT_TENANT.into()),
    };
    let cp = state.fleet.add_control_plane(&caller, cp).await?;
    Ok((StatusCode::CREATED, Json((&cp).into())))
}

pub(super) async fn list_control_planes(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Result<Json<Vec<ControlPlaneView>>, ApiError> {
    let cps = state.fleet.list_control_planes(&caller).await?;
    Ok(Json(views::all(&cps)))
}

pub(super) async fn assign_control_plane(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<AssignRequest>,
) -> Result<Json<AssignResult>, ApiError> {
    Ok(Json(
        state
            .fleet
            .assign(&caller, &name, req.site, req.labels)
            .await?,
    ))
}
