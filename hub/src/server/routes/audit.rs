//! The audit log.

use super::*;

/// The window and count an audit or event query asks for: by default the last 24 hours,
/// at most 1000 (never more than 10000).
pub(super) fn bounds(q: &SinceQuery) -> (OffsetDateTime, usize) {
    (
        q.since
            .unwrap_or_else(|| OffsetDateTime::now_utc() - time::Duration::days(1)),
        q.limit.unwrap_or(1000).clamp(1, 10_000),
    )
}

pub(super) async fn audit(
    State(state): State<AppState>,
    Operator(caller): Operator,
    query: Result<Query<SinceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditEntryView>>, ApiError> {
    let Query(q) = query?;
    let (since, limit) = bounds(&q);
    let entries = state.fleet.audit_since(&caller, since, limit).await?;
    Ok(Json(views::all(&entries)))
}
