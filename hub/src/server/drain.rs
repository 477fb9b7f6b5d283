//! Reading the rest of a request the hub answered without reading its body, so the client
//! gets the answer. hyper closes an HTTP/1 connection whose request body was left unread
//! (a 401 to a heartbeat from an appliance without its certificate, a 429, a 404 to a POST);
//! a client still sending that body then sees the connection reset instead of the answer.
//! A rest up to [`DRAIN_MAX`] that arrives within [`DRAIN_TIME`] is read and thrown away
//! before the answer goes out; a larger or slower one still closes the connection, then
//! announced by `Connection: close` so the client does not reuse it. HTTP/2 resets just the
//! stream and needs none of this.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Version, header};
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Bytes, Frame, SizeHint};

/// The most of an unread body read to keep its connection.
const DRAIN_MAX: u64 = 1024 * 1024;
/// How long the rest of an unread body may take to arrive.
const DRAIN_TIME: Duration = Duration::from_secs(5);

/// The request body, shared with this layer so that what the handler leaves stays here.
struct Shared(Arc<Mutex<Option<Body>>>);

impl HttpBody for Shared {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let mut body = self.0.lock().expect("request body lock");
        match body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0
            .lock()
            .expect("request body lock")
            .as_ref()
            .is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .lock()
            .expect("request body lock")
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint)
    }
}

/// Middleware: runs the request, then reads what is left of its body (HTTP/1 only).
pub(super) async fn drain_unread(req: Request, next: Next) -> Response {
    if req.version() >= Version::HTTP_2 {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let shared = Arc::new(Mutex::new(Some(body)));
    let req = Request::from_parts(parts, Body::new(Shared(shared.clone())));
    let mut response = next.run(req).await;
    let rest = shared.lock().expect("request body lock").take();
    if let Some(rest) = rest
        && !rest.is_end_stream()
        && !drain(rest).await
    {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `rest` to its end; false when it is over [`DRAIN_MAX`], slower than
/// [`DRAIN_TIME`] or broken.
async fn drain(mut rest: Body) -> bool {
    if rest.size_hint().lower() > DRAIN_MAX {
        return false;
    }
    let read = async {
        let mut left = DRAIN_MAX;
        while let Some(frame) = rest.frame().await {
            let Ok(frame) = frame else { return false };
            let len = frame.data_ref().map_or(0, |d| d.len() as u64);
            let Some(l) = left.checked_sub(len) else {
                return false;
            };
            left = l;
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, read)
        .await
        .unwrap_or(false)
}
