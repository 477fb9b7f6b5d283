//! The file server `cairn firmware apply --serve-address` runs while it applies: it lets a
//! BMC that can only download an image (SimpleUpdate's `ImageURI`) download the copy cairn
//! verified, instead of fetching the profile's `image_url` again.
//!
//! It serves only the images offered to it during this apply, each at
//! `/firmware/<random>/<sha256>`: no listing, no other path, GET and HEAD only, byte ranges
//! for BMCs that resume. A connection gets a limit for its request headers and one for the
//! whole transfer. Everything stops when the server is stopped or dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tower::ServiceExt;
use tower_http::services::fs::ServeFileSystemResponseBody;

use crate::image::{VerifiedImage, random_token};

/// How long a client may take, per connection.
#[derive(Debug, Clone, Copy)]
pub struct ServeLimits {
    /// From connecting to the end of the request headers.
    pub header_read: Duration,
    /// For everything on one connection, transfer included.
    pub connection: Duration,
}

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            header_read: Duration::from_secs(10),
            // BMCs download at a few MB/s at worst; large images take minutes.
            connection: Duration::from_secs(30 * 60),
        }
    }
}

/// Why the server does not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An address a BMC cannot be sent to.
    #[error(
        "--serve-address {0}: give an address of this machine that the BMCs reach (not 0.0.0.0 or ::), e.g. 10.0.0.5:8099"
    )]
    Unspecified(SocketAddr),
    /// Binding failed.
    #[error("listening on {address} for BMCs to download verified images")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

type Files = Arc<Mutex<HashMap<String, VerifiedImage>>>;

/// A running image server; it stops when [`ImageServer::stop`] is called or it is dropped.
#[derive(Debug)]
pub struct ImageServer {
    address: SocketAddr,
    files: Files,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ImageServer {
    /// Listens on `address` (port 0: any free port) and serves until stopped.
    pub async fn start(
        address: SocketAddr,
        limits: ServeLimits,
    ) -> Result<ImageServer, ServeError> {
        if address.ip().is_unspecified() {
            return Err(ServeError::Unspecified(address));
        }
        let listener = TcpListener::bind(address)
            .await
            .map_err(|source| ServeError::Bind { address, source })?;
        let address = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { address, source })?;
        let files = Files::default();
        let task = tokio::spawn(accept(listener, files.clone(), limits));
        tracing::info!(%address, "serving verified firmware images to BMCs");
        Ok(ImageServer {
            address,
            files,
            task: Mutex::new(Some(task)),
        })
    }

    /// The address it listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The URL at which the BMC downloads `image` (the same URL for the same image).
    pub fn offer(&self, image: &VerifiedImage) -> String {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let path = files
            .iter()
            .find(|(_, f)| f.path == image.path)
            .map(|(path, _)| path.clone())
            .unwrap_or_else(|| format!("/firmware/{}/{}", random_token(), image.sha256));
        // The latest check of the file decides: a copy downloaded again since the last offer
        // is served under the same URL.
        files.insert(path.clone(), image.clone());
        format!("http://{}{path}", self.address)
    }

    /// Stops listening and ends every connection; when it returns, the port is closed.
    pub async fn stop(&self) {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            // Cancelled: the listener and the connections are dropped by now.
            let _ = task.await;
            tracing::info!(address = %self.address, "image server stopped");
        }
    }
}

impl Drop for ImageServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

/// Accepts until aborted; aborting drops the listener and, with the `JoinSet`, every
/// connection.
async fn accept(listener: TcpListener, files: Files, limits: ServeLimits) {
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(false);
    loop {
        // Reap finished connections so the set does not grow over a long apply.
        while connections.try_join_next().is_some() {}
        let (tcp, peer) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let files = files.clone();
        let service = hyper::service::service_fn(move |req| {
            let files = files.clone();
            async move { Ok::<_, Infallible>(respond(&files, peer, req).await) }
        });
        let connection = http.serve_connection(TokioIo::new(tcp), service);
        connections.spawn(async move {
            match tokio::time::timeout(limits.connection, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "image download connection"),
                Err(_) => tracing::warn!(%peer, seconds = limits.connection.as_secs(),
                    "image download cut off at the connection time limit"),
            }
        });
    }
}

type Body = Either<ServeFileSystemResponseBody, Empty<Bytes>>;

fn status(code: StatusCode) -> Response<Body> {
    let mut r = Response::new(Either::Right(Empty::new()));
    *r.status_mut() = code;
    r
}

async fn respond<B>(files: &Files, peer: SocketAddr, req: Request<B>) -> Response<Body>
where
    B: Send + 'static,
{
    let image = files
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(req.uri().path())
        .cloned();
    let Some(image) = image else {
        tracing::warn!(%peer, path = req.uri().path(), "refused a download of a path not offered");
        return status(StatusCode::NOT_FOUND);
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED);
    }
    if let Err(e) = image.still_verified() {
        tracing::error!(%peer, error = %e, "refused to serve a firmware image");
        return status(StatusCode::GONE);
    }
    let range = req
        .headers()
        .get(hyper::header::RANGE)
        .and_then(|r| r.to_str().ok())
        .map(str::to_owned);
    let served = tower_http::services::ServeFile::new(&image.path)
        .oneshot(req)
        .await;
    match served {
        Ok(response) => {
            tracing::info!(%peer, sha256 = %image.sha256, status = %response.status(),
                range = range.as_deref().unwrap_or("all"), "serving firmware image");
            response.map(Either::Left)
        }
        Err(e) => {
            tracing::error!(%peer, error = %e, "reading firmware image");
            status(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}
