//! Operator identity and tokens: whoami, enrollment tokens, operator tokens.

use super::*;

pub(super) async fn whoami(Operator(caller): Operator) -> Result<Json<WhoAmI>, ApiError> {
    let op = caller.operator()?;
    Ok(Json(WhoAmI {
        name: op.name.clone(),
        id: op.id.clone(),
        role: op.role,
        site: op.site.clone(),
        tenant: caller.tenant().map(str::to_owned),
        expires_at: op.expires_at,
    }))
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<CreateEnrollmentToken>,
) -> Result<(StatusCode, Json<NewToken<EnrollmentTokenView>>), ApiError> {
    Ok((
        StatusCode::CREATED,
        Json(state.fleet.create_enrollment_token(&caller, req).await?),
    ))
}

pub(super) async fn list_tokens(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Result<Json<Vec<EnrollmentTokenView>>, ApiError> {
    let tokens = state.fleet.list_enrollment_tokens(&caller).await?;
    Ok(Json(views::all(&tokens)))
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<Json<EnrollmentTokenView>, ApiError> {
    let token = state.fleet.revoke_enrollment_token(&caller, &id).await?;
    Ok(Json((&token).into()))
}

pub(super) async fn create_operator_token(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<CreateOperatorToken>,
) -> Result<(StatusCode, Json<NewToken<OperatorTokenView>>), ApiError> {
    let token = state.fleet.create_operator_token(&caller, &req).await?;
    Ok((StatusCode::CREATED, Json(token)))
}

pub(super) async fn list_operator_tokens(
    State(state): State<AppState>,
    Operator(caller): Operator,
) -> Result<Json<Vec<OperatorTokenView>>, ApiError> {
    let tokens = state.fleet.list_operator_tokens(&caller).await?;
    Ok(Json(views::all(&tokens)))
}

pub(super) async fn delete_operator_token(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.fleet.delete_operator_token(&caller, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn revoke_operator_token(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(id): Path<String>,
) -> Result<Json<OperatorTokenView>, ApiError> {
    let token = state.fleet.revoke_operator_token(&caller, &id).await?;
    Ok(Json((&token).into()))
}
