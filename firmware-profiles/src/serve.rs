//! The file server `cairn firmware apply --serve-address` runs while it applies: it lets a
//! BMC that can only download an image (SimpleUpdate's `ImageURI`) download the copy cairn
//! verified, instead of fetching the profile's `image_url` again.
//!
//! It serves only the images offered to it during this apply, each at
//! `/firmware/<random>/<sha256>`: no listing, no other path, GET and HEAD only, byte ranges
//! for BMCs that resume. It speaks HTTPS when given a certificate and key (the BMC must trust
//! the certificate), else HTTP. A connection gets a limit for its TLS handshake and request
//! headers and one for the whole transfer. Everything stops when the server is stopped or
//! dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Empty};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
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
    /// The certificate or key cannot be used.
    #[error("{path}: {message}")]
    Tls {
        /// The file (or both files).
        path: String,
        /// What is wrong.
        message: String,
    },
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

/// The TLS set-up of `--serve-tls-cert` and `--serve-tls-key` (PEM: the certificate chain,
/// then the private key).
pub fn tls_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, ServeError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let fail = |path: &Path, message: String| ServeError::Tls {
        path: path.display().to_string(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| fail(cert, e.to_string()))?;
    if certs.is_empty() {
        return Err(fail(cert, "no PEM certificate in it".into()));
    }
    // The key's own text never reaches an error message.
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|_| fail(key, "no readable PEM private key in it".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key_der)
    .map_err(|e| fail(cert, format!("with {}: {e}", key.display())))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A running image server; it stops when [`ImageServer::stop`] is called or it is dropped.
#[derive(Debug)]
pub struct ImageServer {
    address: SocketAddr,
    scheme: &'static str,
    files: Files,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ImageServer {
    /// Listens on `address` (port 0: any free port) and serves until stopped, over HTTPS when
    /// given a TLS configuration ([`tls_config`]).
    pub async fn start(
        address: SocketAddr,
        limits: ServeLimits,
        tls: Option<Arc<rustls::ServerConfig>>,
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
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(accept(listener, files.clone(), limits, tls));
        tracing::info!(%address, scheme, "serving verified firmware images to BMCs");
        Ok(ImageServer {
            address,
            scheme,
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
        format!("{}://{}{path}", self.scheme, self.address)
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
async fn accept(
    listener: TcpListener,
    files: Files,
    limits: ServeLimits,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let mut connections = JoinSet::new();
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
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
        let (files, tls) = (files.clone(), tls.clone());
        connections.spawn(async move {
            let served = tokio::time::timeout(limits.connection, async {
                match tls {
                    Some(tls) => {
                        // The handshake gets the header-read limit: a silent client holds
                        // its connection no longer with TLS than without.
                        match tokio::time::timeout(limits.header_read, tls.accept(tcp)).await {
                            Ok(Ok(stream)) => serve(stream, files, peer, limits).await,
                            Ok(Err(e)) => tracing::warn!(%peer, error = %e, "TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                    None => serve(tcp, files, peer, limits).await,
                }
            })
            .await;
            if served.is_err() {
                tracing::warn!(%peer, seconds = limits.connection.as_secs(),
                    "image download cut off at the connection time limit");
            }
        });
    }
}

/// Serves one connection: HTTP/1.1, one request (no keep-alive).
async fn serve<IO>(io: IO, files: Files, peer: SocketAddr, limits: ServeLimits)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let files = files.clone();
        async move { Ok::<_, Infallible>(respond(&files, peer, req).await) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .keep_alive(false)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "image download connection");
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
