//! The node's end of its tunnel to the hub (issue 17): one outbound connection, the same
//! mTLS the heartbeats use, upgraded at `GET /v1/tunnel` to yamux. The hub opens streams on
//! it; on each the node serves a small HTTP/1.1 API (the journal, and commands run without
//! a shell). No port is opened on the node: everything arrives over the connection it made.
//!
//! The task reconnects with exponential backoff and jitter ([`crate::daemon::backoff`]),
//! trying the hub URLs in turn, and starts over at once with a new certificate.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_api::hub::remote::{
    EXEC_TIMEOUT_DEFAULT, EXEC_TIMEOUT_MAX, NODE_EXEC_PATH, NODE_LOGS_PATH, NODE_METRICS_PATH,
    NODE_REBOOT_PATH, NODE_ROLLBACK_PATH, NODE_SUPPORT_BUNDLE_PATH, TUNNEL_PATH, TUNNEL_PROTOCOL,
};
use cairn_api::hub::{ErrorBody, ExecRequest, ExecResult, LogsQuery, RebootResult};
use futures::StreamExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::watch;
use tokio_util::io::ReaderStream;

/// Where and as whom the tunnel connects: the hub URLs (tried in turn) and the TLS client
/// settings holding the appliance's certificate.
#[derive(Clone)]
pub struct Target {
    /// The hub's base URLs, the preferred first.
    pub urls: Vec<String>,
    /// The client settings of the heartbeats (hub CA as the only root, client certificate).
    pub tls: Arc<rustls::ClientConfig>,
}

/// What the node's tunnel API reads.
#[derive(Debug, Clone, Default)]
pub struct Local {
    /// The journal directory `journalctl` reads (`--directory`); the system's when `None`.
    pub journal_dir: Option<PathBuf>,
    /// What a reboot the hub asks for runs: the upgrade's `reboot_command` (`systemctl
    /// reboot` unless configured), so both reboots go the same way.
    pub reboot_command: Vec<String>,
    /// The GRUB environment a rollback switches the slot in.
    pub grubenv: PathBuf,
    /// The kernel command line naming the booted slot (`cairn.slot=`), read at each
    /// rollback.
    pub cmdline: PathBuf,
    /// The upgrade's latest report: what the other slot holds.
    pub upgrade: crate::upgrade::SharedReport,
    /// What a support bundle reads (its status is also what the metrics read).
    pub support: crate::support::Sources,
    /// The metrics the hub scrapes (those of the local API).
    pub metrics: Arc<crate::metrics::NodeMetrics>,
}

/// Longest wait between two connection attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// A tunnel that lived this long counts as a success: the next failure backs off from the
/// start again.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
/// Longest the TCP connect, the TLS handshake and the upgrade may each take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Most of a command's standard output (and of its standard error) sent back.
const OUTPUT_LIMIT: u64 = 1024 * 1024;

/// Why one tunnel connection ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    /// The hub URL cannot be used.
    #[error("hub URL {url}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Connecting, the TLS handshake or the upgrade failed.
    #[error("{step} {url}")]
    Io {
        /// What was being done.
        step: &'static str,
        /// The hub URL.
        url: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The hub answered the upgrade with something else than `101`.
    #[error(
        "the hub at {url} refused the tunnel: HTTP {status}: {message}; a hub older than the \
         tunnel answers 404 (upgrade it), a refused certificate 401 (see the node's heartbeats)"
    )]
    Refused {
        /// The hub URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// The hub's explanation.
        message: String,
    },
    /// The HTTP exchange of the upgrade failed.
    #[error("upgrading the connection to {url}")]
    Http {
        /// The hub URL.
        url: String,
        /// Why.
        #[source]
        source: hyper::Error,
    },
}

/// Keeps the tunnel open while the daemon runs: waits for a [`Target`], connects, serves,
/// and reconnects with backoff; a new target (a renewed certificate) restarts it at once.
pub async fn run(mut target: watch::Receiver<Option<Target>>, local: Local) {
    let mut failures: u32 = 0;
    loop {
        let Some(current) = target.borrow_and_update().clone() else {
            if target.changed().await.is_err() {
                return;
            }
            continue;
        };
        let url = current.urls[failures as usize % current.urls.len().max(1)].clone();
        let started = Instant::now();
        tokio::select! {
            ended = connect_and_serve(&url, &current.tls, &local) => match ended {
                Ok(()) => tracing::info!(hub = %url, "tunnel closed by the hub"),
                Err(e) => tracing::warn!(hub = %url, error = %cairn_api::error_chain(&e), "tunnel failed"),
            },
            changed = target.changed() => {
                if changed.is_err() {
                    return;
                }
                tracing::info!("new hub identity or address: reconnecting the tunnel");
                failures = 0;
                continue;
            }
        }
        failures = if started.elapsed() >= HEALTHY_AFTER {
            1
        } else {
            failures.saturating_add(1)
        };
        let wait = crate::daemon::backoff(failures, fastrand::f64()).min(BACKOFF_CAP);
        tracing::debug!(retry_in = ?wait, "tunnel reconnects");
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            changed = target.changed() => {
                if changed.is_err() {
                    return;
                }
                failures = 0;
            }
        }
    }
}

/// One tunnel: connect, upgrade, then serve every stream the hub opens until the
/// connection ends.
async fn connect_and_serve(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    local: &Local,
) -> Result<(), TunnelError> {
    let bad = |reason: &str| TunnelError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if parsed.scheme() != "https" {
        return Err(bad("the tunnel needs an https:// URL"));
    }
    let host = parsed.host_str().ok_or_else(|| bad("no host"))?.to_owned();
    let port = parsed.port_or_known_default().unwrap_or(443);
    let io = |step: &'static str| {
        move |source: std::io::Error| TunnelError::Io {
            step,
            url: url.to_owned(),
            source,
        }
    };
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
    // The host of a URL in brackets is an IPv6 address: connect and name it without them.
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio::net::TcpStream::connect((bare.as_str(), port)),
    )
    .await
    .map_err(|_| timed_out())
    .and_then(|r| r)
    .map_err(io("connecting to"))?;
    let _ = tcp.set_nodelay(true);
    // HTTP/1.1 only: the upgrade does not exist in HTTP/2.
    let mut config = (**tls).clone();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(bare)
        .map_err(|e| bad(&e.to_string()))?
        .to_owned();
    let stream = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .map_err(|_| timed_out())
    .and_then(|r| r)
    .map_err(io("TLS handshake with"))?;
    let http = |source| TunnelError::Http {
        url: url.to_owned(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(http)?;
    let conn = tokio::spawn(conn.with_upgrades());
    let authority = match parsed.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.clone(),
    };
    let request = hyper::Request::get(TUNNEL_PATH)
        .header(header::HOST, authority)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, TUNNEL_PROTOCOL)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| bad(&e.to_string()))?;
    let response = tokio::time::timeout(CONNECT_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| io("upgrading the connection to")(timed_out()))?
        .map_err(http)?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = response.status().as_u16();
        let body = tokio::time::timeout(
            CONNECT_TIMEOUT,
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|b| b.to_bytes())
        .unwrap_or_default();
        let message = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        conn.abort();
        return Err(TunnelError::Refused {
            url: url.to_owned(),
            status,
            message,
        });
    }
    let upgraded = hyper::upgrade::on(response).await.map_err(http)?;
    let config = tokio_yamux::Config {
        keepalive_interval: Duration::from_secs(15),
        ..Default::default()
    };
    let mut session = tokio_yamux::Session::new_client(TokioIo::new(upgraded), config);
    tracing::info!(hub = %url, "tunnel open");
    let api = router(local.clone());
    while let Some(stream) = session.next().await {
        let stream = stream.map_err(io("the tunnel to"))?;
        let service = hyper_util::service::TowerToHyperService::new(api.clone());
        tokio::spawn(async move {
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "tunnel stream ended with an error");
            }
        });
    }
    Ok(())
}

/// The API the hub reaches over each stream.
fn router(local: Local) -> Router {
    Router::new()
        .route(NODE_LOGS_PATH, get(logs))
        .route(NODE_EXEC_PATH, post(exec))
        .route(NODE_REBOOT_PATH, post(reboot))
        .route(NODE_ROLLBACK_PATH, post(rollback))
        .route(NODE_SUPPORT_BUNDLE_PATH, get(support_bundle))
        .route(NODE_METRICS_PATH, get(metrics))
        .with_state(Arc::new(local))
}

/// The node's metrics for the hub's scrapes: the local API's rendering, so both agree.
async fn metrics(State(local): State<Arc<Local>>) -> Response {
    crate::local_api::metrics_response(&local.support.status, &local.metrics)
}

/// The `journalctl` arguments of a logs request: options and their values as separate
/// arguments, never through a shell, so a unit or time cannot add options of its own.
fn journalctl_args(q: &LogsQuery, journal_dir: Option<&std::path::Path>) -> Vec<String> {
    let mut args = vec!["--no-pager".to_owned(), "-o".into(), "short-iso".into()];
    if let Some(dir) = journal_dir {
        args.push(format!("--directory={}", dir.display()));
    }
    if let Some(unit) = &q.unit {
        args.push(format!("--unit={unit}"));
    }
    if let Some(since) = &q.since {
        args.push(format!("--since={since}"));
    }
    if q.follow == Some(true) {
        args.push("--follow".into());
    }
    args
}

/// Starts `program` with no stdin and both outputs piped, killed when its handle is dropped
/// (the hub went, or the timeout passed).
fn spawn_piped<I, S>(program: &str, args: I) -> std::io::Result<tokio::process::Child>
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
}

/// `GET /logs`: `journalctl`'s output, then its errors, streamed as they come; the process
/// is killed when the hub stops reading.
async fn logs(State(local): State<Arc<Local>>, Query(q): Query<LogsQuery>) -> Response {
    let spawned = spawn_piped(
        "journalctl",
        journalctl_args(&q, local.journal_dir.as_deref()),
    );
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cairn-node cannot run journalctl: {e}\n"),
            )
                .into_response();
        }
    };
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            "journalctl without pipes\n",
        )
            .into_response();
    };
    // The child lives as long as the body: dropping the body (the hub went) kills it.
    let body = ReaderStream::new(stdout)
        .chain(ReaderStream::new(stderr))
        .map(move |chunk| {
            let _alive = &child;
            chunk
        });
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(body),
    )
        .into_response()
}

/// Runs the reboot command: `systemctl reboot` only queues the job, so the answer still
/// leaves before the tunnel goes down. A command that fails answers 500 with its last lines.
async fn request_reboot(local: &Local) -> Result<String, Response> {
    let failed =
        |why: String| (StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")).into_response();
    let Some(program) = local.reboot_command.first() else {
        return Err(failed(
            "cairn-node has no reboot command (upgrade.reboot_command)".into(),
        ));
    };
    tracing::warn!(command = %program, "rebooting for the hub");
    let (ok, lines) = crate::upgrade::effects::run_command(&local.reboot_command, &[]).await;
    if !ok {
        tracing::error!(output = %lines.join("\n"), "the reboot command failed");
        return Err(failed(format!(
            "cairn-node's reboot command ({program}) failed: {}",
            lines.join("; ")
        )));
    }
    Ok(format!(
        "reboot requested ({})",
        local.reboot_command.join(" ")
    ))
}

/// `POST /reboot`: reboots the node.
async fn reboot(State(local): State<Arc<Local>>) -> Response {
    match request_reboot(&local).await {
        Ok(message) => Json(RebootResult {
            appliance: String::new(),
            message,
        })
        .into_response(),
        Err(refused) => refused,
    }
}

/// `POST /rollback`: makes the other slot GRUB's default, when it holds a committed release
/// (409 with why otherwise), and reboots into it.
async fn rollback(State(local): State<Arc<Local>>) -> Response {
    use crate::upgrade::effects::{BootLoader, Grub};
    let booted = std::fs::read_to_string(&local.cmdline)
        .ok()
        .and_then(|c| crate::upgrade::booted_slot(&c));
    let target = match crate::upgrade::rollback_target(booted, local.upgrade.get().as_ref()) {
        Ok(slot) => slot,
        Err(why) => {
            return (
                StatusCode::CONFLICT,
                format!("cairn-node cannot roll back: {why}\n"),
            )
                .into_response();
        }
    };
    if let Err(e) = Grub::new(local.grubenv.clone()).commit(target) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "cairn-node could not make slot {} the default: {e}\n",
                target.letter()
            ),
        )
            .into_response();
    }
    tracing::warn!(slot = target.letter(), "rolling back for the hub");
    match request_reboot(&local).await {
        Ok(message) => Json(RebootResult {
            appliance: String::new(),
            message: format!("slot {} is the default; {message}", target.letter()),
        })
        .into_response(),
        Err(refused) => refused,
    }
}

/// `GET /support-bundle`: the bundle, `application/gzip`. The headers leave at once (the
/// hub waits 15 s for them) and the body when the bundle is built; a failure cuts the body.
async fn support_bundle(State(local): State<Arc<Local>>) -> Response {
    tracing::info!("building a support bundle for the hub");
    let built = futures::stream::once(async move {
        crate::support::build(&local.support, local.journal_dir.as_deref())
            .await
            .inspect_err(|e| tracing::warn!(error = %e, "building the support bundle failed"))
    });
    (
        [(header::CONTENT_TYPE, "application/gzip")],
        Body::from_stream(built),
    )
        .into_response()
}

/// Reads at most [`OUTPUT_LIMIT`] bytes, then drains the rest (so the command is not
/// blocked on a full pipe); says whether anything was cut.
async fn read_capped(r: Option<impl AsyncRead + Unpin>) -> (Vec<u8>, bool) {
    let Some(mut r) = r else {
        return (Vec::new(), false);
    };
    let mut out = Vec::new();
    let _ = (&mut r).take(OUTPUT_LIMIT).read_to_end(&mut out).await;
    let rest = tokio::io::copy(&mut r, &mut tokio::io::sink())
        .await
        .unwrap_or(0);
    (out, rest > 0)
}

/// `POST /exec`: runs the argv (no shell) with a timeout; a program that cannot start
/// answers 127, as a shell would.
async fn exec(Json(req): Json<ExecRequest>) -> Json<ExecResult> {
    use std::os::unix::process::ExitStatusExt;
    let Some((program, args)) = req.argv.split_first() else {
        return Json(ExecResult {
            exit_code: 127,
            stdout: String::new(),
            stderr: "cairn-node: no program given\n".into(),
            truncated: false,
        });
    };
    let limit = Duration::from_secs(
        req.timeout_seconds
            .unwrap_or(EXEC_TIMEOUT_DEFAULT)
            .clamp(1, EXEC_TIMEOUT_MAX),
    );
    let spawned = spawn_piped(program, args);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            return Json(ExecResult {
                exit_code: 127,
                stdout: String::new(),
                stderr: format!("cairn-node: cannot run {program}: {e}\n"),
                truncated: false,
            });
        }
    };
    tracing::info!(program = %program, "running a command for the hub");
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let ((out, cut_out), (err, cut_err), status) =
            tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
        (out, err, cut_out || cut_err, status)
    };
    match tokio::time::timeout(limit, run).await {
        Ok((out, err, truncated, status)) => {
            let exit_code = match status {
                Ok(s) => s.code().or(s.signal().map(|n| 128 + n)).unwrap_or(-1),
                Err(_) => -1,
            };
            Json(ExecResult {
                exit_code,
                stdout: String::from_utf8_lossy(&out).into_owned(),
                stderr: String::from_utf8_lossy(&err).into_owned(),
                truncated,
            })
        }
        // The child is dropped, so killed (SIGKILL), as this returns.
        Err(_) => Json(ExecResult {
            exit_code: 137,
            stdout: String::new(),
            stderr: format!(
                "cairn-node: {program} killed after {} s (timeout_seconds)\n",
                limit.as_secs()
            ),
            truncated: false,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journalctl_gets_each_value_as_one_argument() {
        let q = LogsQuery {
            unit: Some("kubelet.service; rm -rf /".into()),
            since: Some("-1h".into()),
            follow: Some(true),
        };
        assert_eq!(
            journalctl_args(&q, Some(std::path::Path::new("/j"))),
            [
                "--no-pager",
                "-o",
                "short-iso",
                "--directory=/j",
                "--unit=kubelet.service; rm -rf /",
                "--since=-1h",
                "--follow"
            ]
        );
        assert_eq!(
            journalctl_args(&LogsQuery::default(), None),
            ["--no-pager", "-o", "short-iso"]
        );
    }
}
