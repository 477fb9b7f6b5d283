//! Getting a release bundle onto the hub's disk: from an upload's request body or from a
//! URL. Thin I/O only; what the bundle must be is checked by [`crate::fleet::Fleet::add_release`].

use std::path::Path;
use std::sync::Arc;

use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

/// Debian's CA bundle: the roots a bundle URL's server is checked against.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why a bundle could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Larger than allowed.
    #[error("larger than {0} bytes")]
    TooLarge(u64),
    /// The request body or download broke off.
    #[error("{0}")]
    Transfer(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ReceiveError + '_ {
    move |source| ReceiveError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Streams a request body into `dest` (at most `max` bytes).
pub async fn receive(body: axum::body::Body, dest: &Path, max: u64) -> Result<u64, ReceiveError> {
    let mut file = tokio::fs::File::create(dest).await.map_err(io(dest))?;
    let mut body = body;
    let mut written = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ReceiveError::Transfer(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            written += data.len() as u64;
            if written > max {
                return Err(ReceiveError::TooLarge(max));
            }
            file.write_all(&data).await.map_err(io(dest))?;
        }
    }
    file.sync_all().await.map_err(io(dest))?;
    Ok(written)
}

/// TLS for the hub's outbound HTTPS (release URLs, event webhooks): the system's CA roots,
/// no client certificate.
pub fn system_roots_tls() -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read(SYSTEM_ROOTS) {
        use rustls::pki_types::{CertificateDer, pem::PemObject};
        for cert in CertificateDer::pem_slice_iter(&pem).flatten() {
            let _ = roots.add(cert);
        }
    }
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth())
}

/// Downloads `url` into `dest` (at most `max` bytes), checking an `https` server against
/// the system's CA roots.
pub async fn fetch(url: &str, dest: &Path, max: u64) -> Result<u64, ReceiveError> {
    let transfer = |e: &dyn std::fmt::Display| ReceiveError::Transfer(e.to_string());
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(ReceiveError::Transfer(
            "the URL must be http:// or https://".into(),
        ));
    }
    let tls = system_roots_tls().map_err(|e| transfer(&e))?;
    let client = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(std::time::Duration::from_secs(30))
        .build()
        .map_err(|e| transfer(&e))?;
    let mut resp = client
        .get(url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| transfer(&e))?;
    let mut file = tokio::fs::File::create(dest).await.map_err(io(dest))?;
    let mut written = 0u64;
    while let Some(chunk) = resp.chunk().await.map_err(|e| transfer(&e))? {
        written += chunk.len() as u64;
        if written > max {
            return Err(ReceiveError::TooLarge(max));
        }
        file.write_all(&chunk).await.map_err(io(dest))?;
    }
    file.sync_all().await.map_err(io(dest))?;
    Ok(written)
}
