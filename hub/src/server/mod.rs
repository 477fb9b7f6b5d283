//! The HTTPS server: accept loop with connection caps and timeouts, deferred
//! client-certificate checks, the router, and the background singleton jobs.
//!
//! Every resource an unauthenticated peer can hold is bounded: connections (in total and per
//! source address, refused by closing them at once), the TLS handshake, the time to send a
//! request's headers (a slowloris client is cut off), idle connections, and the time a
//! request may take (see [`Limits`]).

mod drain;
pub mod error;
mod routes;
pub mod tls;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::fleet::{Fleet, FleetError};
use crate::metrics::Metrics;
use crate::pki::PeerCert;
use crate::ratelimit::{RateLimiter, RefusalLog};
use crate::store::StoreError;

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
    /// Unauthenticated refusals per source, for their rate-limited audit entries.
    pub refusals: Arc<RefusalLog>,
    /// Longest a request may take (streamed uploads excepted).
    pub request_timeout: Duration,
    /// The appliances' tunnels held by this process.
    pub tunnels: Arc<crate::tunnel::Tunnels>,
}

/// A connection's place under the caps, carried by each of its requests: a request that
/// takes the connection over (the tunnel's upgrade) keeps it taken while it lives.
#[derive(Clone)]
pub(crate) struct ConnHold {
    _slot: Arc<ConnSlot>,
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
    /// Longest a client may take to send a request's headers (HTTP/1.1, from their first
    /// byte), and to send its first request after the handshake.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (kept-alive HTTP/1.1
    /// and HTTP/2 alike).
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

/// The source a connection counts against: its IPv4 address, or the /64 of an IPv6 one (a
/// single host is usually given a whole /64, so counting its addresses one by one would
/// not cap it).
fn source_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

impl Connections {
    /// A slot for a connection from `source`, or the cap that refuses it.
    fn admit(self: &Arc<Self>, source: IpAddr) -> Result<ConnSlot, &'static str> {
        let source = source_of(source);
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

/// What a connection is doing, for its timeouts: requests in flight, when the last one
/// ended, and whether the client has started sending the next request's headers.
struct Activity {
    in_flight: AtomicUsize,
    served: AtomicUsize,
    /// When the last request ended (the connection's start before the first).
    last: Mutex<Instant>,
    /// When the first byte arrived with no request in flight and none dispatched since:
    /// the start of a request's headers (HTTP/1.1).
    head_since: Mutex<Option<Instant>>,
}

/// Why a connection is closed by its watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry {
    /// Headers not complete within the header-read timeout: cut off at once.
    SlowHeaders,
    /// Nothing asked for too long: closed gracefully.
    Idle,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Activity {
    fn new() -> Self {
        Self {
            in_flight: AtomicUsize::new(0),
            served: AtomicUsize::new(0),
            last: Mutex::new(Instant::now()),
            head_since: Mutex::new(None),
        }
    }

    /// Bytes arrived from the client.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 {
            lock(&self.head_since).get_or_insert_with(Instant::now);
        }
    }

    /// A request's headers are complete and its handler starts.
    fn dispatched(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.served.fetch_add(1, Ordering::AcqRel);
        *lock(&self.head_since) = None;
    }

    /// When the connection expires and why, or `None` while a request runs (the request
    /// timeout bounds it). HTTP/1.1 headers get the header-read timeout from their first
    /// byte, so a kept-alive connection waits for its next request as long as the idle
    /// timeout, while a slowloris client is cut off. Until its first request a connection
    /// also gets only the header-read timeout: one that completes the handshake and sends
    /// nothing (or the HTTP/2 preface byte by byte) holds its slot no longer. HTTP/2 reads
    /// frames (pings, settings) between requests, so only the idle rule applies to it.
    fn deadline(&self, limits: &Limits, h2: bool) -> Option<(Instant, Expiry)> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle = if self.served.load(Ordering::Acquire) == 0 {
            limits.header_read_timeout
        } else {
            limits.idle_timeout
        };
        let idle = (*lock(&self.last) + idle, Expiry::Idle);
        let head = (*lock(&self.head_since))
            .filter(|_| !h2)
            .map(|since| (since + limits.header_read_timeout, Expiry::SlowHeaders));
        // A client half-way through its headers is cut off whichever limit it reaches: a
        // graceful close would still read and serve the request.
        Some(match head {
            Some(head) => (head.0.min(idle.0), Expiry::SlowHeaders),
            None => idle,
        })
    }
}

/// Ends a request's part in [`Activity`] when its response is ready, or it is dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        *lock(&self.0.last) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

/// The decrypted stream of a connection, telling its [`Activity`] when bytes arrive.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
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
    // hyper's own header-read timeout also runs while a kept-alive connection waits for its
    // next request, which would close appliances' connections between heartbeats: the
    // connection's watchdog below applies it from the first byte of the headers instead.
    http.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
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
            let slot = Arc::new(slot);
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
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let info = ConnInfo { remote, cert };
            let hold = ConnHold { _slot: slot };
            let activity = Arc::new(Activity::new());
            let tracked = activity.clone();
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(info.clone());
                    req.extensions_mut().insert(hold.clone());
                    tracked.dispatched();
                    let in_flight = InFlight(tracked.clone());
                    let answer = app.clone().oneshot(req);
                    async move {
                        let response = answer.await;
                        drop(in_flight);
                        response
                    }
                },
            );
            let io = Watched {
                inner: stream,
                activity: activity.clone(),
            };
            // Upgrades: an appliance's tunnel (`GET /v1/tunnel`) takes its connection over.
            let conn = http.serve_connection_with_upgrades(TokioIo::new(io), service);
            tokio::pin!(conn);
            let mut closing = false;
            let outcome = loop {
                // While a request runs, look again after the idle timeout.
                let wake = activity
                    .deadline(&limits, h2)
                    .map_or_else(|| Instant::now() + limits.idle_timeout, |(at, _)| at);
                tokio::select! {
                    outcome = conn.as_mut() => break outcome,
                    () = tokio::time::sleep_until(wake.into()), if !closing => {
                        match activity.deadline(&limits, h2) {
                            Some((at, Expiry::SlowHeaders)) if at <= Instant::now() => {
                                tracing::debug!(%remote, "headers too slow: connection cut off");
                                return;
                            }
                            Some((at, Expiry::Idle)) if at <= Instant::now() => {
                                tracing::debug!(%remote, "closing an idle connection");
                                conn.as_mut().graceful_shutdown();
                                closing = true;
                            }
                            _ => {}
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
    while_leading(fleet, every, "offline detection", never, |f| async move {
        f.sweep_offline().await
    })
    .await
}

/// Runs the upgrade campaign driver every `every` while this process leads.
pub async fn campaign_driver(fleet: Arc<Fleet>, every: Duration) {
    while_leading(fleet, every, "campaign driver", never, |f| async move {
        f.drive_campaigns().await
    })
    .await
}

/// Runs audit and event retention, and the sweep of tracked bootstrap tokens, every
/// `every` and after each burst of log writes, while this process leads.
pub async fn housekeeping(fleet: Arc<Fleet>, every: Duration) {
    while_leading(
        fleet,
        every,
        "housekeeping",
        |f| async move { f.log_burst().await },
        |f| async move { Ok(f.prune_logs().await? + f.sweep_bootstrap_tokens().await?) },
    )
    .await
}

/// Runs the reconciler every `every` while this process leads, the first time as soon as
/// the hub starts and again as soon as this process takes the leadership over (what a dead
/// leader left half-done is repaired at the takeover, not a period later): rewrites the desired states that went stale (a crash between a primary
/// change and the rewrite of what derives from it) and counts what it repaired in
/// `cairn_hub_reconciler_repairs_total`.
pub async fn reconciler(fleet: Arc<Fleet>, metrics: Arc<Metrics>, every: Duration) {
    let takeover = |f: Arc<Fleet>| async move { f.took_leadership().await };
    while_leading(fleet, every, "reconciler", takeover, move |f| {
        let metrics = metrics.clone();
        async move {
            let repairs = f.reconcile().await?;
            for part in repairs.iter().flat_map(|r| &r.parts) {
                metrics
                    .reconciler_repairs
                    .get_or_create(&vec![("part", (*part).to_owned())])
                    .inc();
            }
            if !repairs.is_empty() {
                tracing::warn!(
                    appliances = repairs.len(),
                    "reconciler pass repaired stale desired states"
                );
            }
            Ok(repairs.len())
        }
    })
    .await
}

/// Campaigns for the leadership, and renews it, every `every` (a third of the lease's TTL),
/// whatever the jobs' own periods: a leader whose jobs all run less often than its TTL
/// would otherwise lose its lease between their passes and the leadership would flap.
pub async fn keep_leadership(fleet: Arc<Fleet>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = fleet.lead().await {
            tracing::warn!(error = %e, "leadership check failed");
        }
    }
}

/// A job woken by its period only.
async fn never(_: Arc<Fleet>) {
    std::future::pending().await
}

/// A singleton job: runs `pass` every `every`, and when `wake` completes, but only while
/// this process holds the store's leadership (always, on the embedded store; through a
/// lease on etcd). Each pass writes through the fence of the leadership it started under:
/// when the lease lapsed meanwhile (a long pause), its writes are refused, the pass stops,
/// and the job campaigns again at once.
async fn while_leading<W, WakeFut, F, Fut>(
    fleet: Arc<Fleet>,
    every: Duration,
    job: &str,
    wake: W,
    pass: F,
) where
    W: Fn(Arc<Fleet>) -> WakeFut,
    WakeFut: std::future::Future<Output = ()>,
    F: Fn(Arc<Fleet>) -> Fut,
    Fut: std::future::Future<Output = Result<usize, crate::fleet::FleetError>>,
{
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = wake(fleet.clone()) => {}
        }
        match fleet.lead().await {
            Ok(Some(fence)) => match pass(Arc::new(fleet.as_leader(fence))).await {
                Ok(_) => {}
                Err(FleetError::Store(StoreError::NotLeader)) => {
                    tracing::warn!(
                        job,
                        "leadership lost during the pass: its writes were refused; campaigning again"
                    );
                    tick.reset_immediately();
                }
                Err(e) => tracing::warn!(error = %e, job, "singleton job pass failed"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, job, "leadership check failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_sources_count_by_64_and_mapped_ipv4_as_ipv4() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(source_of(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(source_of(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            source_of(ip("2001:db8:1:2::1")),
            source_of(ip("2001:db8:1:3::1"))
        );
    }
}
