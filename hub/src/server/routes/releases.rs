//! Signed releases: add by URL or upload, list, show, delete, and the bundle download.

use super::*;

/// Largest bundle accepted (a root image of a few GiB, compressed).
pub(super) const MAX_BUNDLE: u64 = 32 << 30;

pub(super) async fn add_release_from_url(
    State(state): State<AppState>,
    Operator(caller): Operator,
    ApiJson(req): ApiJson<AddReleaseFromUrl>,
) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    // A URL that cannot be fetched at all is the caller's mistake (400), not a failure of
    // the server behind it (502).
    if !reqwest::Url::parse(&req.url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::Invalid,
            format!("{:?} is not an http:// or https:// URL", req.url),
        ));
    }
    let incoming = state.fleet.incoming_bundle_path()?;
    if let Err(e) = crate::releases::fetch(&req.url, &incoming, MAX_BUNDLE).await {
        let _ = std::fs::remove_file(&incoming);
        let message = format!("fetching {}: {e}", req.url);
        state
            .fleet
            .audit(
                &caller,
                "release.add",
                &req.url,
                &format!("refused: {message}"),
                None,
            )
            .await?;
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            ErrorCode::FetchFailed,
            message,
        ));
    }
    let release = state
        .fleet
        .add_release(&caller, incoming, &req.sha256, Some(req.url))
        .await?;
    Ok((StatusCode::CREATED, Json((&release).into())))
}

pub(super) async fn upload_release(
    State(state): State<AppState>,
    Operator(caller): Operator,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<ReleaseView>), ApiError> {
    let Query(q) = query?;
    let incoming = state.fleet.incoming_bundle_path()?;
    if let Err(e) = crate::releases::receive(body, &incoming, MAX_BUNDLE).await {
        let _ = std::fs::remove_file(&incoming);
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::UploadFailed,
            format!("receiving the bundle: {e}"),
        ));
    }
    let release = state
        .fleet
        .add_release(&caller, incoming, &q.sha256, None)
        .await?;
    Ok((StatusCode::CREATED, Json((&release).into())))
}

pub(super) async fn list_releases(
    State(state): State<AppState>,
) -> Result<Json<Vec<ReleaseView>>, ApiError> {
    let releases = state.fleet.list_releases().await?;
    Ok(Json(views::all(&releases)))
}

pub(super) async fn show_release(
    State(state): State<AppState>,
    Path(version): Path<String>,
) -> Result<Json<ReleaseView>, ApiError> {
    Ok(Json((&state.fleet.release(&version).await?).into()))
}

pub(super) async fn delete_release(
    State(state): State<AppState>,
    Operator(caller): Operator,
    Path(version): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.fleet.delete_release(&caller, &version).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Appliances (by client certificate) and viewers download bundles; ranges are served by
/// tower-http's `ServeFile`, so an interrupted download resumes where it stopped.
pub(super) async fn release_bundle(
    State(state): State<AppState>,
    Path(version): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    // An operator was authenticated by the table's `MtlsOrBearer`; anyone else needs a
    // current certificate of a registered appliance.
    if parts.extensions.get::<Caller>().is_none() {
        let appliance = Appliance::from_request_parts(&mut parts, &state).await?;
        state.fleet.appliance_for_cert(&appliance.cert).await?;
    }
    let (_, path) = state.fleet.release_bundle(&version).await?;
    let req = Request::from_parts(parts, body);
    let response = tower_http::services::ServeFile::new_with_mime(
        path,
        &"application/octet-stream"
            .parse()
            .expect("a valid mime type"),
    )
    .oneshot(req)
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::BundleReadFailed,
            format!("reading the bundle: {e}"),
        )
    })?;
    Ok(response.map(axum::body::Body::new))
}
