//! The HTTPS server: accept loop with deferred client-certificate checks, the router, and
//! the background offline detector.

pub mod error;
mod routes;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::fleet::Fleet;
use crate::metrics::Metrics;
use crate::pki::PeerCert;
use crate::ratelimit::RateLimiter;

pub use routes::router;

/// Largest request body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The fleet logic.
    pub fleet: Arc<Fleet>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// Registration rate limit.
    pub limiter: Arc<RateLimiter>,
}

/// Facts about the connection a request came on, set by the accept loop.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Peer address.
    pub remote: SocketAddr,
    /// The client certificate: `Ok` when it chains to the hub CA, `Err(reason)` when not.
    pub cert: Option<Result<PeerCert, String>>,
}

/// Serves until `shutdown` resolves. Each connection: TLS handshake (10 s limit), the
/// deferred chain check, then HTTP/1.1 or HTTP/2 with keep-alive.
pub async fn serve(
    listener: TcpListener,
    tls: tls::Tls,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls.config.clone());
    let chain = tls.chain.clone();
    let app = router(state);
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let chain = chain.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let stream =
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let cert = stream.get_ref().1.peer_certificates().map(|certs| {
                tls::verify_chain(chain.as_ref(), certs).map(|()| PeerCert::from_der(&certs[0]))
            });
            let info = ConnInfo { remote, cert };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    app.clone().oneshot(req)
                },
            );
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Runs the offline detector every `every` while this process leads.
pub async fn offline_detector(fleet: Arc<Fleet>, every: Duration) {
    while_leading(fleet, every, "offline detection", |f| async move {
        f.sweep_offline().await
    })
    .await
}

/// Runs the upgrade campaign driver every `every` while this process leads.
pub async fn campaign_driver(fleet: Arc<Fleet>, every: Duration) {
    while_leading(fleet, every, "campaign driver", |f| async move {
        f.drive_campaigns().await
    })
    .await
}

/// A singleton job: runs `pass` every `every`, but only while this process holds the
/// store's leadership (always, on the embedded store; through a lease on etcd).
async fn while_leading<F, Fut>(fleet: Arc<Fleet>, every: Duration, job: &str, pass: F)
where
    F: Fn(Arc<Fleet>) -> Fut,
    Fut: std::future::Future<Output = Result<usize, crate::fleet::FleetError>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match fleet.store().lead().await {
            Ok(true) => {
                if let Err(e) = pass(fleet.clone()).await {
                    tracing::warn!(error = %e, job, "singleton job pass failed");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, job, "leadership check failed"),
        }
    }
}
