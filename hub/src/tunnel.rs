//! The appliances' tunnels (issue 17): each appliance keeps one connection open to the hub,
//! upgraded from `GET /v1/tunnel` and carrying yamux; the hub opens a stream on it for each
//! request it forwards to the node (logs, exec), and speaks HTTP/1.1 on that stream.
//!
//! The registry holds at most one session per appliance: a newer connection of the same
//! appliance replaces the older one (closed at once), and a session leaves the registry when
//! its connection ends (the node closed it, or stopped answering the keep-alive pings).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_yamux::{Config, Control, Session};

/// What the hub allows one tunnel.
#[derive(Debug, Clone, Copy)]
pub struct TunnelLimits {
    /// Streams open at once on one tunnel; a request beyond them is refused (429).
    pub max_streams: usize,
    /// How often the hub pings an idle tunnel; a tunnel whose pings go unanswered for 30 s
    /// (yamux's limit) is closed.
    pub keepalive: Duration,
    /// Longest the node may take to accept a stream and answer a request's headers.
    pub response_timeout: Duration,
}

impl Default for TunnelLimits {
    fn default() -> Self {
        Self {
            max_streams: 16,
            keepalive: Duration::from_secs(15),
            response_timeout: Duration::from_secs(15),
        }
    }
}

/// Why a request could not be forwarded to an appliance.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The appliance holds no tunnel to this hub replica.
    #[error(
        "appliance {appliance} has no tunnel to this hub: it is offline, cannot reach the \
         hub, or runs a cairn-node without tunnel support; check `cairn hub appliances show \
         {appliance}` and the node's log"
    )]
    NoTunnel {
        /// The appliance.
        appliance: String,
    },
    /// Every stream the tunnel may carry is in use.
    #[error("appliance {appliance} already has {max} requests in flight; retry when one ends")]
    Busy {
        /// The appliance.
        appliance: String,
        /// The limit.
        max: usize,
    },
    /// The tunnel broke while the stream was opened or the request sent.
    #[error("the tunnel to appliance {appliance} failed: {reason}; retry (the node reconnects)")]
    Broken {
        /// The appliance.
        appliance: String,
        /// What failed.
        reason: String,
    },
    /// The node did not answer in time.
    #[error("appliance {appliance} did not answer through its tunnel within {secs} s")]
    Timeout {
        /// The appliance.
        appliance: String,
        /// The limit.
        secs: u64,
    },
}

/// One appliance's session: the handle that opens streams, and the streams left to open.
struct Entry {
    generation: u64,
    control: Control,
    streams: Arc<Semaphore>,
    /// The node's metrics as last scraped: kept here so they go with the tunnel.
    scrape: Option<Arc<crate::scrape::Scrape>>,
}

/// The tunnels this hub replica holds, by appliance ID.
pub struct Tunnels {
    limits: TunnelLimits,
    sessions: Mutex<HashMap<String, Entry>>,
    generations: AtomicU64,
}

impl Tunnels {
    /// An empty registry.
    pub fn new(limits: TunnelLimits) -> Self {
        Self {
            limits,
            sessions: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // One insert or remove at a time: a panic leaves the map consistent.
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `appliance` holds a tunnel to this replica.
    pub fn is_connected(&self, appliance: &str) -> bool {
        self.lock().contains_key(appliance)
    }

    /// The appliances holding a tunnel to this replica.
    pub fn connected(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// How many tunnels this replica holds.
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// Keeps `scrape` as the last scrape of `appliance`'s tunnel (none: forget it); nothing
    /// when the tunnel went meanwhile.
    pub fn keep_scrape(&self, appliance: &str, scrape: Option<Arc<crate::scrape::Scrape>>) {
        if let Some(entry) = self.lock().get_mut(appliance) {
            entry.scrape = scrape;
        }
    }

    /// The last scrape of every tunnel that has one, by appliance ID.
    pub fn scrapes(&self) -> Vec<(String, Arc<crate::scrape::Scrape>)> {
        let mut all: Vec<_> = self
            .lock()
            .iter()
            .filter_map(|(id, e)| Some((id.clone(), e.scrape.clone()?)))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Runs the tunnel of `appliance` over `io` (the upgraded connection) until it ends,
    /// replacing any older one. `hold` is kept as long as the tunnel lives (the
    /// connection's place under the server's caps).
    pub async fn serve<T>(self: Arc<Self>, appliance: String, io: T, hold: impl Send)
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let config = Config {
            enable_keepalive: true,
            keepalive_interval: self.limits.keepalive,
            max_stream_count: self.limits.max_streams,
            ..Config::default()
        };
        let mut session = Session::new_server(io, config);
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            generation,
            control: session.control(),
            streams: Arc::new(Semaphore::new(self.limits.max_streams)),
            scrape: None,
        };
        if let Some(mut older) = self.lock().insert(appliance.clone(), entry) {
            tracing::info!(%appliance, "tunnel replaced by a newer connection of the appliance");
            tokio::spawn(async move { older.control.close().await });
        }
        tracing::info!(%appliance, "tunnel open");
        // The node opens no streams of its own: any it tries is dropped (reset).
        while let Some(inbound) = session.next().await {
            if let Err(e) = inbound {
                tracing::info!(%appliance, error = %e, "tunnel connection failed");
                break;
            }
        }
        drop(hold);
        let mut sessions = self.lock();
        if sessions
            .get(&appliance)
            .is_some_and(|e| e.generation == generation)
        {
            sessions.remove(&appliance);
            tracing::info!(%appliance, "tunnel closed");
        }
    }

    /// Sends `request` to the node of `appliance` on a new stream of its tunnel, and gives
    /// its response once the node answered the headers; the body streams on.
    pub async fn request(
        &self,
        appliance: &str,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, TunnelError> {
        let (mut control, streams) = {
            let sessions = self.lock();
            let entry = sessions
                .get(appliance)
                .ok_or_else(|| TunnelError::NoTunnel {
                    appliance: appliance.to_owned(),
                })?;
            (entry.control.clone(), entry.streams.clone())
        };
        let permit: OwnedSemaphorePermit =
            streams.try_acquire_owned().map_err(|_| TunnelError::Busy {
                appliance: appliance.to_owned(),
                max: self.limits.max_streams,
            })?;
        let broken = |reason: String| TunnelError::Broken {
            appliance: appliance.to_owned(),
            reason,
        };
        let limit = self.limits.response_timeout;
        let exchange = async {
            let stream = control
                .open_stream()
                .await
                .map_err(|e| broken(e.to_string()))?;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .map_err(|e| broken(e.to_string()))?;
            // The stream (and its place under the limit) lasts as long as the response body
            // is read: the connection ends when both are done.
            tokio::spawn(async move {
                let _permit = permit;
                let _ = conn.await;
            });
            sender
                .send_request(request)
                .await
                .map_err(|e| broken(e.to_string()))
        };
        tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| TunnelError::Timeout {
                appliance: appliance.to_owned(),
                secs: limit.as_secs(),
            })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A node's end of a tunnel over `io`: answers every stream's request with `name`.
    async fn node(name: &'static str, io: tokio::io::DuplexStream) {
        let mut session = Session::new_client(io, Config::default());
        while let Some(Ok(stream)) = session.next().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(name.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    fn get() -> hyper::Request<Full<Bytes>> {
        hyper::Request::get("/").body(Full::default()).unwrap()
    }

    async fn answer(tunnels: &Tunnels, id: &str) -> Result<String, TunnelError> {
        let resp = tunnels.request(id, get()).await?;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Ok(String::from_utf8(body.to_vec()).unwrap())
    }

    async fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_reconnecting_appliance_replaces_its_tunnel_and_a_dead_tunnel_leaves() {
        let tunnels = Arc::new(Tunnels::new(TunnelLimits::default()));
        assert!(matches!(
            answer(&tunnels, "ap-1").await,
            Err(TunnelError::NoTunnel { .. })
        ));
        let (hub_end, node_end) = tokio::io::duplex(64 * 1024);
        tokio::spawn(tunnels.clone().serve("ap-1".into(), hub_end, ()));
        let first = tokio::spawn(node("first", node_end));
        until("the first tunnel", || tunnels.is_connected("ap-1")).await;
        assert_eq!(answer(&tunnels, "ap-1").await.unwrap(), "first");

        // The same appliance connects again: the newer tunnel serves, the older is closed.
        let (hub_end, node_end) = tokio::io::duplex(64 * 1024);
        tokio::spawn(tunnels.clone().serve("ap-1".into(), hub_end, ()));
        let second = tokio::spawn(node("second", node_end));
        tokio::time::timeout(Duration::from_secs(10), first)
            .await
            .expect("the older tunnel is closed by the hub")
            .unwrap();
        assert_eq!(answer(&tunnels, "ap-1").await.unwrap(), "second");
        assert!(
            tunnels.is_connected("ap-1"),
            "the older tunnel's end removed the newer"
        );

        // Its connection dies: the appliance has no tunnel any more.
        second.abort();
        until("the dead tunnel to leave", || !tunnels.is_connected("ap-1")).await;
        assert!(matches!(
            answer(&tunnels, "ap-1").await,
            Err(TunnelError::NoTunnel { .. })
        ));
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_are_refused_until_one_ends() {
        let tunnels = Arc::new(Tunnels::new(TunnelLimits {
            max_streams: 1,
            ..TunnelLimits::default()
        }));
        let (hub_end, node_end) = tokio::io::duplex(64 * 1024);
        tokio::spawn(tunnels.clone().serve("ap-1".into(), hub_end, ()));
        tokio::spawn(node("n", node_end));
        until("the tunnel", || tunnels.is_connected("ap-1")).await;
        // A response whose body is not read yet holds its stream.
        let held = tunnels.request("ap-1", get()).await.unwrap();
        assert!(matches!(
            tunnels.request("ap-1", get()).await,
            Err(TunnelError::Busy { max: 1, .. })
        ));
        held.into_body().collect().await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match answer(&tunnels, "ap-1").await {
                Ok(body) => break assert_eq!(body, "n"),
                Err(TunnelError::Busy { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    type BenchBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

    /// A node answering `GET /` with "ok" and `GET /bytes` with [`BENCH_BYTES`] bytes.
    async fn bench_answer(
        req: hyper::Request<Incoming>,
    ) -> Result<hyper::Response<BenchBody>, std::convert::Infallible> {
        let chunk = Bytes::from(vec![7u8; 64 * 1024]);
        let n = if req.uri().path() == "/bytes" {
            BENCH_BYTES / chunk.len()
        } else {
            0
        };
        let mut frames: Vec<_> = (0..n)
            .map(|_| Ok(hyper::body::Frame::data(chunk.clone())))
            .collect();
        if n == 0 {
            frames.push(Ok(hyper::body::Frame::data(Bytes::from_static(b"ok"))));
        }
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        Ok(hyper::Response::new(BodyExt::boxed(body)))
    }

    const BENCH_BYTES: usize = 256 * 1024 * 1024;
    const BENCH_REQUESTS: u32 = 500;

    async fn drain(resp: hyper::Response<Incoming>) -> usize {
        let mut body = resp.into_body();
        let mut n = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                n += data.len();
            }
        }
        n
    }

    /// Figures for BENCHMARKS.md: throughput of one response through the tunnel against the
    /// same HTTP/1.1 server over a direct TCP connection on loopback, and the time per small
    /// request (a new stream each) against a new TCP connection each and one kept alive.
    /// TLS is left out on both sides (the tunnel's own connection is TLS in service), so
    /// this is yamux's cost. `cargo test -p cairn-hub --release --lib tunnel::tests::bench
    /// -- --ignored --nocapture`
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a benchmark: run by hand or by scripts/bench"]
    async fn bench_tunnel_against_direct_tcp() {
        use std::time::Instant;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                tcp.set_nodelay(true).unwrap();
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new().serve_connection(
                        TokioIo::new(tcp),
                        hyper::service::service_fn(bench_answer),
                    ),
                );
            }
        });
        let connect = || async {
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            tcp.set_nodelay(true).unwrap();
            let (sender, conn) =
                hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
                    .await
                    .unwrap();
            tokio::spawn(conn);
            sender
        };
        // The tunnel over its own loopback TCP connection.
        let tunnels = Arc::new(Tunnels::new(TunnelLimits::default()));
        let tl = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let taddr = tl.local_addr().unwrap();
        let node_tcp = tokio::net::TcpStream::connect(taddr).await.unwrap();
        let (hub_tcp, _) = tl.accept().await.unwrap();
        hub_tcp.set_nodelay(true).unwrap();
        node_tcp.set_nodelay(true).unwrap();
        tokio::spawn(tunnels.clone().serve("ap-b".into(), hub_tcp, ()));
        tokio::spawn(async move {
            let mut session = Session::new_client(node_tcp, Config::default());
            while let Some(Ok(stream)) = session.next().await {
                tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                    TokioIo::new(stream),
                    hyper::service::service_fn(bench_answer),
                ));
            }
        });
        until("the bench tunnel", || tunnels.is_connected("ap-b")).await;
        let get = |path: &str| {
            hyper::Request::get(path)
                .header("host", "node")
                .body(Full::default())
                .unwrap()
        };

        let mut direct = connect().await;
        let t = Instant::now();
        assert_eq!(
            drain(direct.send_request(get("/bytes")).await.unwrap()).await,
            BENCH_BYTES
        );
        let direct_rate = BENCH_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6;
        let t = Instant::now();
        assert_eq!(
            drain(tunnels.request("ap-b", get("/bytes")).await.unwrap()).await,
            BENCH_BYTES
        );
        let tunnel_rate = BENCH_BYTES as f64 / t.elapsed().as_secs_f64() / 1e6;

        let t = Instant::now();
        for _ in 0..BENCH_REQUESTS {
            direct.ready().await.unwrap();
            drain(direct.send_request(get("/")).await.unwrap()).await;
        }
        let kept = t.elapsed() / BENCH_REQUESTS;
        let t = Instant::now();
        for _ in 0..BENCH_REQUESTS {
            let mut fresh = connect().await;
            drain(fresh.send_request(get("/")).await.unwrap()).await;
        }
        let fresh = t.elapsed() / BENCH_REQUESTS;
        let t = Instant::now();
        for _ in 0..BENCH_REQUESTS {
            drain(tunnels.request("ap-b", get("/")).await.unwrap()).await;
        }
        let tunneled = t.elapsed() / BENCH_REQUESTS;
        println!(
            "tunnel bench: {} MiB response: direct TCP {direct_rate:.0} MB/s, tunnel {tunnel_rate:.0} MB/s (ratio {:.2}); \
             per small request: direct kept-alive {kept:?}, direct new connection {fresh:?}, tunnel new stream {tunneled:?}",
            BENCH_BYTES >> 20,
            tunnel_rate / direct_rate,
        );
    }
}
