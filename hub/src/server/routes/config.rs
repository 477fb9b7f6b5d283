//! Configuration layers and each appliance's rendered configuration.

use cairn_api::hub::{ApplianceConfigView, ApplyLayer, LayerChange, LayerView, RollbackLayer};

use super::*;

pub(super) async fn apply_layer(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<ApplyLayer>,
) -> Result<Json<LayerChange>, ApiError> {
    let change = state
        .fleet
        .apply_config_layer(&caller, &req.file, &req.document, req.dry_run, req.force)
        .await?;
    Ok(Json(change))
}

pub(super) async fn list_layers(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Result<Json<Vec<LayerView>>, ApiError> {
    Ok(Json(state.fleet.list_config_layers(&caller).await?))
}

pub(super) async fn show_layer(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(layer): Path<String>,
) -> Result<Json<LayerView>, ApiError> {
    Ok(Json(state.fleet.show_config_layer(&caller, &layer).await?))
}

pub(super) async fn layer_history(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(layer): Path<String>,
) -> Result<Json<Vec<LayerView>>, ApiError> {
    Ok(Json(
        state.fleet.config_layer_history(&caller, &layer).await?,
    ))
}

pub(super) async fn rollback_layer(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(layer): Path<String>,
    ApiJson(req): ApiJson<RollbackLayer>,
) -> Result<Json<LayerChange>, ApiError> {
    let change = state
        .fleet
        .rollback_config_layer(&caller, &layer, req.to)
        .await?;
    Ok(Json(change))
}

pub(super) async fn appliance_config(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<Json<ApplianceConfigView>, ApiError> {
    Ok(Json(state.fleet.appliance_config(&caller, &id).await?))
}
