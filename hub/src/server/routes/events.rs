//! Fleet events: a filtered list, and a stream of server-sent events that resumes from a
//! sequence number.

use axum::http::HeaderMap;
use axum::response::sse::{Event as Sse, KeepAlive};
use cairn_api::hub::{EventQuery, EventWatchQuery};
use tokio::time::Instant;

use crate::fleet::{EventFeed, EventFilter, EventItem};

use super::appliances::resume_from;
use super::*;

pub(super) async fn list_events(
    State(state): State<AppState>,
    Operator(caller): Operator,
    query: Result<Query<EventQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<EventView>>, ApiError> {
    let Query(q) = query?;
    let (since, limit) = audit::bounds(&SinceQuery {
        since: q.since,
        limit: q.limit,
    });
    let filter = EventFilter {
        appliance: q.appliance,
        kinds: EventFilter::kinds(q.kind.as_deref()),
        // Asked for what follows a sequence number: every kept event, unless told since.
        since: (q.since.is_some() || q.after.is_none()).then_some(since),
        after: q.after,
    };
    let events = state.fleet.list_events(&caller, &filter, limit).await?;
    Ok(Json(
        events
            .iter()
            .map(|(seq, e)| views::event(*seq, e))
            .collect(),
    ))
}

pub(super) async fn watch_events(
    State(state): State<AppState>,
    Operator(caller): Operator,
    headers: HeaderMap,
    query: Result<Query<EventWatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query?;
    let filter = EventFilter {
        appliance: q.appliance,
        kinds: EventFilter::kinds(q.kind.as_deref()),
        since: q.since,
        after: resume_from(q.after, &headers)?,
    };
    let feed = state.fleet.watch_events(&caller, filter).await?;
    Ok(event_stream(
        feed,
        q.timeout_seconds.map(std::time::Duration::from_secs),
    ))
}

/// The stream's state: the feed, and when it ends.
struct Stream {
    feed: EventFeed,
    timeout: Option<std::time::Duration>,
    /// Set once the events the stream started with are sent.
    deadline: Option<Instant>,
}

/// Events as server-sent events: each `data` an [`EventView`], its `id` the sequence number
/// (an `EventSource` that reconnects sends it back as `Last-Event-ID` and the stream
/// resumes after it); a failure ends the stream with an `ERROR` event carrying the error
/// body. Ends `timeout` after the events it started with were sent, when given.
fn event_stream(feed: EventFeed, timeout: Option<std::time::Duration>) -> Response {
    let start = Stream {
        feed,
        timeout,
        deadline: None,
    };
    let stream = futures::stream::unfold(start, |mut s| async move {
        loop {
            let item = match s.deadline {
                Some(deadline) => tokio::select! {
                    biased;
                    () = tokio::time::sleep_until(deadline) => return None,
                    item = s.feed.recv() => item,
                },
                None => s.feed.recv().await,
            }?;
            let sse = match item {
                Ok(EventItem::CaughtUp) => {
                    s.deadline = s.timeout.map(|t| Instant::now() + t);
                    continue;
                }
                Ok(EventItem::Event(seq, e)) => Sse::default()
                    .id(seq.to_string())
                    .json_data(views::event(seq, &e)),
                Err(e) => {
                    let e = ApiError::from(e);
                    Sse::default().event("ERROR").json_data(ErrorBody {
                        error: e.code,
                        message: e.message,
                    })
                }
            };
            return Some((sse.map_err(axum::Error::new), s));
        }
    });
    axum::response::sse::Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
