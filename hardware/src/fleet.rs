//! Running one operation across many BMCs: bounded concurrency, a time limit per BMC, and a
//! result for every server, in inventory order. One slow or broken BMC never stalls the rest.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::address::{BmcAddress, Credentials};
use crate::bmc::{Bmc, BmcError};
use crate::connect::{ConnectOptions, connect};
use crate::tls::Trust;

/// One BMC to work on.
#[derive(Debug, Clone)]
pub struct Target {
    /// Server name (the address when there is no inventory).
    pub name: String,
    /// BMC address.
    pub address: BmcAddress,
    /// Credentials, or why they could not be read (reported as this server's failure).
    pub credentials: Result<Credentials, String>,
    /// Per-server TLS pin, overriding the fleet-wide trust.
    pub fingerprint: Option<String>,
}

/// What happened on one server.
#[derive(Debug, Serialize)]
pub struct Outcome<T> {
    /// Server name.
    pub server: String,
    /// BMC address (never with a password).
    pub bmc: String,
    /// Milliseconds spent.
    pub elapsed_ms: u64,
    /// The result, or the error chain as text.
    #[serde(flatten)]
    pub result: OutcomeResult<T>,
}

/// Success value or error text.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum OutcomeResult<T> {
    /// Success.
    Ok {
        /// The value.
        result: T,
    },
    /// Failure.
    Err {
        /// The error chain.
        error: String,
    },
}

impl<T> Outcome<T> {
    /// Whether this server succeeded.
    pub fn ok(&self) -> bool {
        matches!(self.result, OutcomeResult::Ok { .. })
    }
}

/// A boxed operation on one BMC; the second argument is the server's name.
pub type Operation<T> = Arc<
    dyn Fn(Arc<dyn Bmc>, String) -> Pin<Box<dyn Future<Output = Result<T, BmcError>> + Send>>
        + Send
        + Sync,
>;

/// Runs `op` on every target, at most `parallel` at once, each limited to `timeout`.
pub async fn run<T: Send + 'static>(
    targets: Vec<Target>,
    parallel: usize,
    timeout: Duration,
    options: ConnectOptions,
    op: Operation<T>,
    on_done: impl Fn(&str, bool),
) -> Vec<Outcome<T>> {
    let semaphore = Arc::new(Semaphore::new(parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, target) in targets.into_iter().enumerate() {
        let semaphore = semaphore.clone();
        let op = op.clone();
        let mut options = options.clone();
        if let Some(fp) = &target.fingerprint {
            options.trust = Trust::Fingerprint(fp.clone());
        }
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let start = Instant::now();
            let span = tracing::info_span!("bmc", server = %target.name);
            let result: Result<T, String> = async {
                let credentials = target.credentials.clone()?;
                let bmc: Arc<dyn Bmc> = Arc::from(
                    connect(&target.address, credentials, &options)
                        .map_err(|e| cairn_api::error_chain(&e))?,
                );
                let result =
                    match tokio::time::timeout(timeout, op(bmc.clone(), target.name.clone())).await
                    {
                        Ok(r) => r.map_err(|e| cairn_api::error_chain(&e)),
                        Err(_) => Err(format!(
                            "no result within {:.1} s (per-BMC timeout)",
                            timeout.as_secs_f64()
                        )),
                    };
                let _ = tokio::time::timeout(Duration::from_secs(2), bmc.close()).await;
                result
            }
            .instrument(span)
            .await;
            let outcome = Outcome {
                server: target.name.clone(),
                bmc: target.address.to_string(),
                elapsed_ms: start.elapsed().as_millis() as u64,
                result: match result {
                    Ok(result) => OutcomeResult::Ok { result },
                    Err(error) => {
                        tracing::error!(server = %target.name, %error, "failed");
                        OutcomeResult::Err { error }
                    }
                },
            };
            (index, outcome)
        });
    }
    let mut out: Vec<Option<Outcome<T>>> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((index, outcome)) => {
                on_done(&outcome.server, outcome.ok());
                if out.len() <= index {
                    out.resize_with(index + 1, || None);
                }
                out[index] = Some(outcome);
            }
            Err(e) => tracing::error!(error = %e, "a BMC task panicked"),
        }
    }
    out.into_iter().flatten().collect()
}
