//! The HTTPS server: accept loop with connection caps and timeouts, deferred
//! client-certificate checks, the router, and the background singleton jobs.
//!
//! Every resource an unauthenticated peer can hold is bounded: connections (in total and per
//! source address, refused by closing them at once), the TLS handshake, the time to send a
//! request's headers (a slowloris client is cut off), idle connections, and the time a
//! request may take (see [`Limits`]).

pub mod error;
mod routes;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
    /// Registration rate limit, per source address.
    pub limiter: Arc<RateLimiter>,
    /// Renewal rate limit, per appliance.
    pub renewals: Arc<RateLimiter<String>>,
    /// Longest a request may take (streamed uploads excepted).
    pub request_timeout: Duration,
}

/// Facts about the connection a request came on, set by the accept loop.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Peer address.
    pub remote: SocketAddr,
    /// The client certificate: `Ok` when it chains to the hub CA, `Err(reason)` when not.
    pub cert: Option<Result<PeerCert, String>>,
}

/// What one peer may hold of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections in total; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Open connections per source address; more are closed as soon as they are accepted.
    pub max_connections_per_source: usize,
    /// Longest a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
    /// Longest a client may take to send a request's headers, and (HTTP/1.1) to start the
    /// next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/2; HTTP/1.1
    /// ones are closed by the header-read timeout first, as is a connection that has not
    /// sent its first request).
    pub idle_timeout: Duration,
}

/// Open connections, in total and per source. A [`ConnSlot`] gives its place back on drop.
struct Connections {
    limits: Limits,
    total: AtomicUsize,
    per_source: Mutex<HashMap<IpAddr, usize>>,
    metrics: Arc<Metrics>,
}

/// One admitted connection.
struct ConnSlot {
    conns: Arc<Connections>,
    source: IpAddr,
}

impl Connections {
    /// A slot for a connection from `source`, or the cap that refuses it.
    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<ConnSlot, &'static str> {
        let mut per_source = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
        let here = per_source.get(&source).copied().unwrap_or(0);
        let refused = if self.total.load(Ordering::Relaxed) >= self.limits.max_connections {
            Some("total")
        } else if here >= self.limits.max_connections_per_source {
            Some("per_source")
        } else {
            None
        };
        if let Some(cap) = refused {
            self.metrics
                .refused_connections
                .get_or_create(&vec![("cap", cap.to_owned())])
                .inc();
            return Err(cap);
        }
        per_source.insert(source, here + 1);
        self.total.fetch_add(1, Ordering::Relaxed);
        self.metrics.open_connections.inc();
        Ok(ConnSlot {
            conns: self.clone(),
            source,
        })
    }
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        let mut per_source = self
            .conns
            .per_source
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                per_source.remove(&self.source);
            }
        }
        self.conns.total.fetch_sub(1, Ordering::Relaxed);
        self.conns.metrics.open_connections.dec();
    }
}

/// Requests in flight on one connection and when the last one ended, for the idle timeout.
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicUsize,
    last: Mutex<Instant>,
}

impl Activity {
    /// When the connection will have been idle too long, or `None` while a request runs.
    /// Until its first request, a connection gets the header-read timeout: a client that
    /// completes the handshake and then sends nothing (or the HTTP/2 preface byte by byte)
    /// holds its slot no longer than one sending headers slowly.
    fn idle_deadline(&self, limits: &Limits) -> Option<Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let limit = if self.served.load(Ordering::Acquire) == 0 {
            limits.header_read_timeout
        } else {
            limits.idle_timeout
        };
        Some(*self.last.lock().unwrap_or_else(|p| p.into_inner()) + limit)
    }
}

/// Ends a request's part in [`Activity`] when its response is ready, or it is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *self.0.last.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// Serves until `shutdown` resolves. Each connection: admission under the caps, the TLS
/// handshake, the deferred chain check, then HTTP/1.1 or HTTP/2 under the timeouts.
pub async fn serve(
    listener: TcpListener,
    tls: tls::Tls,
    state: AppState,
    limits: Limits,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::io::Result<()> {
    let acceptor = TlsAcceptor::from(tls.config.clone());
    let chain = tls.chain.clone();
    let conns = Arc::new(Connections {
        limits,
        total: AtomicUsize::new(0),
        per_source: Mutex::new(HashMap::new()),
        metrics: state.metrics.clone(),
    });
    let app = router(state);
    let mut http = auto::Builder::new(TokioExecutor::new());
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    http.http2()
        .timer(TokioTimer::new())
        // Dead peers of long-lived HTTP/2 connections are noticed by pings.
        .keep_alive_interval(limits.idle_timeout / 2)
        .keep_alive_timeout(Duration::from_secs(20));
    let http = Arc::new(http);
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
        let slot = match conns.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                // Closed at once: a flood from one source (or in total) cannot hold more.
                tracing::debug!(%remote, cap, "connection refused: over the connection cap");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let chain = chain.clone();
        let app = app.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let stream = match tokio::time::timeout(
                limits.tls_handshake_timeout,
                acceptor.accept(tcp),
            )
            .await
            {
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
            let activity = Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                served: AtomicUsize::new(0),
                last: Mutex::new(Instant::now()),
            });
            let tracked = activity.clone();
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    tracked.in_flight.fetch_add(1, Ordering::AcqRel);
                    tracked.served.fetch_add(1, Ordering::AcqRel);
                    let in_flight = InFlight(tracked.clone());
                    let answer = app.clone().oneshot(req);
                    async move {
                        let response = answer.await;
                        drop(in_flight);
                        response
                    }
                },
            );
            let conn = http.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let mut closing = false;
            let outcome = loop {
                let deadline = activity
                    .idle_deadline(&limits)
                    .unwrap_or_else(|| Instant::now() + limits.idle_timeout);
                tokio::select! {
                    outcome = conn.as_mut() => break outcome,
                    () = tokio::time::sleep_until(deadline.into()), if !closing => {
                        if activity
                            .idle_deadline(&limits)
                            .is_some_and(|d| d <= Instant::now())
                        {
                            tracing::debug!(%remote, "closing an idle connection");
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        }
                    }
                }
            };
            if let Err(e) = outcome {
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
