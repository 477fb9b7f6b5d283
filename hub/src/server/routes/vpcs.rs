//! VPCs and their members.

use super::*;

pub(super) async fn create_vpc(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<CreateVpc>,
) -> Result<(StatusCode, Json<VpcView>), ApiError> {
    let vpc = state
        .fleet
        .create_vpc(&caller, &req.name, &req.subnet, req.tenant.as_deref())
        .await?;
    Ok((StatusCode::CREATED, Json((&vpc).into())))
}

pub(super) async fn list_vpcs(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Result<Json<Vec<VpcView>>, ApiError> {
    let vpcs = state.fleet.list_vpcs(&caller).await?;
    Ok(Json(views::all(&vpcs)))
}

pub(super) async fn attach(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<MembershipRequest>,
) -> Result<Json<VpcView>, ApiError> {
    let vpc = state
        .fleet
        .attach(&caller, &name, &req.appliance_id)
        .await?;
    Ok(Json((&vpc).into()))
}

pub(super) async fn detach(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<MembershipRequest>,
) -> Result<Json<VpcView>, ApiError> {
    let vpc = state
        .fleet
        .detach(&caller, &name, &req.appliance_id)
        .await?;
    Ok(Json((&vpc).into()))
}
