//! The local API: HTTP over the Unix socket `/run/cairn/node.sock` (mode 0600, root only).
//! `GET /v1/status` returns [`LocalStatus`]; `cairn-node status` is its client. `GET /metrics`
//! returns the node's Prometheus metrics ([`NodeMetrics`]) as OpenMetrics text.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Json;
use axum::extract::State;
use axum::routing::get;

use crate::metrics::NodeMetrics;
use crate::status::LocalStatus;

/// Local API failures.
#[derive(Debug, thiserror::Error)]
pub enum LocalApiError {
    /// The socket could not be created.
    #[error("binding the local API socket {path}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The daemon did not answer.
    #[error(
        "no answer from cairn-node on {path}: is `cairn-node run` (cairn-node.service) running?"
    )]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The answer did not parse.
    #[error("unexpected answer from cairn-node on {path}")]
    Answer {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
}

/// What the local API reads.
#[derive(Clone)]
struct Shared {
    status: Arc<RwLock<LocalStatus>>,
    metrics: Arc<NodeMetrics>,
}

fn snapshot(status: &RwLock<LocalStatus>) -> LocalStatus {
    status.read().map(|s| s.clone()).unwrap_or_default()
}

async fn get_status(State(shared): State<Shared>) -> Json<LocalStatus> {
    Json(snapshot(&shared.status))
}

async fn get_metrics(State(shared): State<Shared>) -> axum::response::Response {
    metrics_response(&shared.status, &shared.metrics)
}

/// The node's metrics as of now, as the local API and the tunnel (the hub's scrapes) serve
/// them.
pub(crate) fn metrics_response(
    status: &RwLock<LocalStatus>,
    metrics: &NodeMetrics,
) -> axum::response::Response {
    axum::response::IntoResponse::into_response((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics.render(&snapshot(status)),
    ))
}

/// Binds the socket (replacing a stale one) and serves until the task is dropped.
pub fn serve(
    path: &Path,
    status: Arc<RwLock<LocalStatus>>,
    metrics: Arc<NodeMetrics>,
) -> Result<impl Future<Output = ()> + Send + use<>, LocalApiError> {
    let bind = |source| LocalApiError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind(e)),
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(bind)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind)?;
    let app = axum::Router::new()
        .route("/v1/status", get(get_status))
        .route("/metrics", get(get_metrics))
        .with_state(Shared { status, metrics });
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "local API stopped");
        }
    })
}

/// Asks a running daemon for its status.
pub async fn fetch_status(path: &Path) -> Result<LocalStatus, LocalApiError> {
    // Plain HTTP over the socket; reqwest still wants a TLS backend, so it gets an empty one
    // with the workspace's crypto provider.
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map(|b| {
        b.with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth()
    });
    let mut builder = reqwest::Client::builder().unix_socket(path);
    if let Ok(tls) = tls {
        builder = builder.tls_backend_preconfigured(tls);
    }
    let client = builder.build().map_err(|source| LocalApiError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let response = client
        .get("http://node/v1/status")
        .send()
        .await
        .map_err(|source| LocalApiError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
    response
        .error_for_status()
        .map_err(|source| LocalApiError::Answer {
            path: path.to_path_buf(),
            source,
        })?
        .json()
        .await
        .map_err(|source| LocalApiError::Answer {
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// That another user is refused is shown with a real one, in
    /// `tests/hub.rs::the_local_api_answers_root_and_refuses_any_other_user`.
    #[tokio::test]
    async fn status_round_trips_over_a_socket_of_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("run/cairn/node.sock");
        let shared = Arc::new(RwLock::new(LocalStatus {
            hostname: "edge-1".into(),
            queued_reports: 3,
            ..Default::default()
        }));
        let server = tokio::spawn(serve(&sock, shared.clone(), Arc::default()).unwrap());
        let got = fetch_status(&sock).await.unwrap();
        assert_eq!(got.hostname, "edge-1");
        assert_eq!(got.queued_reports, 3);
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        server.abort();
        let err = fetch_status(&dir.path().join("nope.sock"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is `cairn-node run`"), "{err}");
    }
}
