//! `net try`: apply with a way back that survives the process (and a reboot).
//!
//! 1. The last-known-good state of everything the apply touches is written to disk
//!    (`checkpoint.json`, atomically) together with a deadline and the trying process's id,
//!    *before* any change.
//! 2. The configuration is applied (a failed apply restores by itself).
//! 3. Probes run: `HOST:PORT` is a TCP connect, `http://...`/`https://...` a GET whose status
//!    must be below 400 (HTTPS verifies the certificate against the system roots).
//! 4. A failed probe, or no `net confirm` before the deadline, restores the checkpoint.
//!    `net confirm` removes the checkpoint file; the waiting process sees it gone.
//! 5. Any later `cairn-node net` invocation (and the daemon at start) calls [`recover`]: a
//!    checkpoint whose process is gone means the try was interrupted (crash, reboot), and
//!    last-known-good is restored.

use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::apply::{ApplyError, Checkpoint, Restored, Store, Target, apply, checkpoint, restore};
use crate::netlink::Netlink;

/// How a try ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TryOutcome {
    /// Confirmed in time: the new configuration stays.
    Confirmed,
    /// A probe failed: rolled back.
    ProbeFailed {
        /// The probe.
        probe: String,
        /// Why it failed.
        reason: String,
        /// Rollback result.
        restored: Restored,
    },
    /// No confirmation before the deadline: rolled back.
    TimedOut {
        /// Rollback result.
        restored: Restored,
    },
}

/// A probe target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// TCP connect to `host:port`.
    Tcp(String),
    /// GET of an http(s) URL.
    Http(String),
}

impl std::str::FromStr for Probe {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(Probe::Http(s.to_string()));
        }
        match s.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                Ok(Probe::Tcp(s.to_string()))
            }
            _ => Err(format!(
                "probe {s:?} must be HOST:PORT (TCP connect) or an http(s):// URL"
            )),
        }
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Tcp(t) | Probe::Http(t) => f.write_str(t),
        }
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs one probe; `Err` says why it failed.
pub async fn run_probe(probe: &Probe) -> Result<(), String> {
    match probe {
        Probe::Tcp(target) => {
            let target = target.clone();
            tokio::task::spawn_blocking(move || {
                let addrs: Vec<_> = target
                    .to_socket_addrs()
                    .map_err(|e| format!("resolving {target}: {e}"))?
                    .collect();
                let mut last = format!("{target} resolves to no address");
                for addr in addrs {
                    match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
                        Ok(_) => return Ok(()),
                        Err(e) => last = format!("connecting to {addr}: {e}"),
                    }
                }
                Err(last)
            })
            .await
            .map_err(|e| e.to_string())?
        }
        Probe::Http(url) => {
            let client = reqwest::Client::builder()
                .timeout(PROBE_TIMEOUT)
                // The probe tests this host's own routes: never detour through a proxy.
                .no_proxy()
                .use_preconfigured_tls(tls_config()?)
                .build()
                .map_err(|e| format!("building HTTP client: {e}"))?;
            let resp = client
                .get(url)
                .send()
                .await
                .map_err(|e| format!("GET {url}: {}", cairn_api::error_chain(&e)))?;
            if resp.status().as_u16() >= 400 {
                return Err(format!("GET {url}: HTTP {}", resp.status()));
            }
            Ok(())
        }
    }
}

/// rustls with ring and the system's CA bundle (`/etc/ssl/certs`), verification on.
fn tls_config() -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    if let Ok(pem) = std::fs::read("/etc/ssl/certs/ca-certificates.crt") {
        for cert in rustls_pemfile_certs(&pem) {
            let _ = roots.add(cert);
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

fn rustls_pemfile_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether the process that started a try is still running.
fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Errors of `net try`.
#[derive(Debug, thiserror::Error)]
pub enum TryError {
    /// Applying failed (and was rolled back).
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Another try is pending.
    #[error("a `net try` is already pending (confirm it or wait for its rollback)")]
    Pending,
}

/// Runs a try: checkpoint, apply, probe, wait for confirmation until `timeout`.
pub async fn try_apply<N: Netlink, T: Target>(
    nl: &mut N,
    config: &T,
    store: &Store,
    probes: &[Probe],
    timeout: Duration,
) -> Result<TryOutcome, TryError> {
    let cp = match begin(nl, config, store, probes, timeout).await? {
        Ok(cp) => cp,
        Err(failed) => return Ok(failed),
    };
    tracing::info!(
        timeout_s = timeout.as_secs(),
        "applied; run `cairn-node net confirm` to keep it"
    );
    loop {
        if store.checkpoint()?.is_none() {
            return Ok(TryOutcome::Confirmed);
        }
        if now_unix() >= cp.deadline_unix {
            let restored = roll_back(nl, &cp, store).await?;
            return Ok(TryOutcome::TimedOut { restored });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A try that confirms itself once every probe passes, for changes no person watches (the
/// hub's fleet configuration). The checkpoint is on disk from before the apply until the
/// probes pass, so a crash or reboot in between rolls back at the next start ([`recover`]).
pub async fn try_probed<N: Netlink, T: Target>(
    nl: &mut N,
    config: &T,
    store: &Store,
    probes: &[Probe],
    timeout: Duration,
) -> Result<TryOutcome, TryError> {
    match begin(nl, config, store, probes, timeout).await? {
        Ok(_) => {
            confirm(store)?;
            Ok(TryOutcome::Confirmed)
        }
        Err(failed) => Ok(failed),
    }
}

/// Checkpoint, apply, probe: `Ok(checkpoint)` when every probe passed (the try is still
/// pending), `Err(outcome)` when one failed and the change was rolled back.
async fn begin<N: Netlink, T: Target>(
    nl: &mut N,
    config: &T,
    store: &Store,
    probes: &[Probe],
    timeout: Duration,
) -> Result<Result<Checkpoint, TryOutcome>, TryError> {
    if store.checkpoint()?.is_some() {
        return Err(TryError::Pending);
    }
    let state = checkpoint(nl, config, store).await?;
    let cp = Checkpoint {
        state,
        owned: store.owned()?,
        deadline_unix: now_unix() + timeout.as_secs(),
        pid: std::process::id(),
    };
    store.set_checkpoint(&cp)?;
    if let Err(e) = apply(nl, config, store).await {
        store.clear_checkpoint()?;
        return Err(e.into());
    }
    for probe in probes {
        if let Err(reason) = run_probe(probe).await {
            tracing::warn!(%probe, %reason, "probe failed, rolling back");
            let restored = roll_back(nl, &cp, store).await?;
            return Ok(Err(TryOutcome::ProbeFailed {
                probe: probe.to_string(),
                reason,
                restored,
            }));
        }
    }
    Ok(Ok(cp))
}

async fn roll_back<N: Netlink>(
    nl: &mut N,
    cp: &Checkpoint,
    store: &Store,
) -> Result<Restored, ApplyError> {
    let restored = restore(nl, &cp.state, store).await;
    if restored == Restored::Yes {
        // Ownership as before the try, minus what the rollback deleted.
        store.set_owned(&cp.owned)?;
        store.clear_checkpoint()?;
    }
    Ok(restored)
}

/// Keeps the configuration of the pending try. Returns false when none was pending.
pub fn confirm(store: &Store) -> Result<bool, ApplyError> {
    let pending = store.checkpoint()?.is_some();
    store.clear_checkpoint()?;
    Ok(pending)
}

/// Finishes a try interrupted by a crash or reboot: restores last-known-good when the
/// checkpoint's process is gone or its deadline passed. Returns what was done.
pub async fn recover<N: Netlink>(
    nl: &mut N,
    store: &Store,
) -> Result<Option<Restored>, ApplyError> {
    let Some(cp) = store.checkpoint()? else {
        return Ok(None);
    };
    if alive(cp.pid) && cp.pid != std::process::id() && now_unix() < cp.deadline_unix {
        return Ok(None); // the try is still running and will decide
    }
    tracing::warn!(
        pid = cp.pid,
        "found an unconfirmed `net try`; restoring last-known-good"
    );
    roll_back(nl, &cp, store).await.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_syntax() {
        assert_eq!(
            "10.0.0.1:443".parse(),
            Ok(Probe::Tcp("10.0.0.1:443".into()))
        );
        assert_eq!(
            "https://hub.example/healthz".parse(),
            Ok(Probe::Http("https://hub.example/healthz".into()))
        );
        assert!("hub".parse::<Probe>().is_err());
        assert!("hub:http".parse::<Probe>().is_err());
    }
}
