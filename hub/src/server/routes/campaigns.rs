//! Upgrade campaigns and their actions.

use super::*;

pub(super) async fn create_campaign(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<CreateCampaign>,
) -> Result<(StatusCode, Json<CampaignView>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.fleet.create_campaign(&caller, req).await?),
    ))
}

pub(super) async fn list_campaigns(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Result<Json<Vec<CampaignView>>, ApiError> {
    Ok(Json(state.fleet.list_campaigns(&caller).await?))
}

pub(super) async fn show_campaign(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(name): Path<String>,
) -> Result<Json<CampaignView>, ApiError> {
    Ok(Json(state.fleet.show_campaign(&caller, &name).await?))
}

pub(super) async fn campaign_action(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path((name, action)): Path<(String, String)>,
) -> Result<Json<CampaignView>, ApiError> {
    Ok(Json(
        state.fleet.campaign_action(&caller, &name, &action).await?,
    ))
}
