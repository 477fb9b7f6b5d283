//! Event webhooks: the hub that leads the singleton jobs POSTs each fleet event, as the
//! JSON of its [`EventView`](cairn_api::hub::EventView), to every configured receiver, in
//! sequence order, signed with HMAC-SHA256 over the body.
//!
//! Each receiver has its own task and its own cursor in the store (the sequence number of
//! the last event it accepted, [`crate::model::WebhookCursor`]): a restart, or another hub
//! taking the leadership over, resumes after it, so nothing delivered is sent again and
//! nothing recorded is skipped. A receiver is first sent the events recorded after it was
//! configured. A failed attempt (no answer within the timeout, or any status but 2xx) is
//! retried after a pause that doubles up to a ceiling; with `max_attempts` set, an event
//! still refused after that many attempts is given up (logged) and the next one follows.
//!
//! Delivery is at least once: a hub that dies between a receiver's `2xx` and the cursor's
//! write, or loses the leadership while an attempt is in flight, leaves that event to be
//! sent again. Receivers deduplicate by `X-Cairn-Event-Seq`.

use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::fleet::{EventFilter, EventItem, Fleet, FleetError};
use crate::model::Event;
use crate::store::StoreError;

/// The header carrying the body's signature: `sha256=<hex HMAC-SHA256(secret, body)>`.
pub const SIGNATURE_HEADER: &str = "x-cairn-signature";
/// The header carrying the event's sequence number.
pub const SEQ_HEADER: &str = "x-cairn-event-seq";

/// The key of the signatures. Never printed.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret of these bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// When to retry a failed delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Pause after the first failure; each further failure doubles it.
    pub first: Duration,
    /// Longest pause.
    pub max: Duration,
    /// Attempts per event before it is given up; `0`: until it is delivered.
    pub max_attempts: u32,
}

/// Where the receivers are and how events reach them.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Receivers, `http(s)://...`.
    pub urls: Vec<reqwest::Url>,
    /// Only events of these kinds; empty: all.
    pub kinds: Vec<String>,
    /// The signatures' key.
    pub secret: Secret,
    /// Longest one attempt may take, connecting included.
    pub timeout: Duration,
    /// Retries.
    pub backoff: Backoff,
    /// How often a delivery task checks that this hub still leads, and a hub that does not
    /// checks whether it does now.
    pub lead_check: Duration,
}

/// What follows an attempt to deliver one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The receiver took it: record it, go on with the next event.
    Delivered,
    /// Try again after this pause.
    RetryAfter(Duration),
    /// Stop trying this event (the attempts are used up): go on with the next.
    GiveUp,
}

/// The step after attempt number `attempt` (from 1) of an event, which `delivered` or not.
pub fn after_attempt(delivered: bool, attempt: u32, backoff: &Backoff) -> Step {
    if delivered {
        return Step::Delivered;
    }
    if backoff.max_attempts != 0 && attempt >= backoff.max_attempts {
        return Step::GiveUp;
    }
    let doublings = attempt.saturating_sub(1).min(31);
    let pause = backoff
        .first
        .saturating_mul(1u32 << doublings)
        .min(backoff.max);
    Step::RetryAfter(pause)
}

/// The signature header's value for `body`.
pub fn sign(secret: &Secret, body: &[u8]) -> String {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256>>::new_from_slice(&secret.0).expect("HMAC accepts any key length");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Where a receiver is, for logs and the stored cursor: scheme, host and port only, since
/// a webhook URL's path or query often holds a credential.
pub fn origin(url: &reqwest::Url) -> String {
    url.origin().ascii_serialization()
}

/// Makes sure every receiver has a cursor: one configured for the first time gets the
/// events recorded from now on. Run at start, before the hub serves, so no event recorded
/// after the hub started with a receiver misses it.
pub async fn start_cursors(fleet: &Fleet, settings: &WebhookSettings) -> Result<(), FleetError> {
    for url in &settings.urls {
        let cursor = fleet.webhook_cursor(url.as_str(), &origin(url)).await?;
        tracing::info!(receiver = %origin(url), after = cursor.delivered, "event webhook configured");
    }
    Ok(())
}

/// Delivers to every receiver, each on its own, until stopped.
pub async fn run(fleet: Arc<Fleet>, settings: Arc<WebhookSettings>) {
    let http = match crate::releases::system_roots_tls()
        .map_err(|e| e.to_string())
        .and_then(|tls| {
            reqwest::Client::builder()
                .tls_backend_preconfigured(tls)
                .timeout(settings.timeout)
                .connect_timeout(settings.timeout)
                .build()
                .map_err(|e| e.to_string())
        }) {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "event webhooks: no HTTP client; no event is delivered");
            return;
        }
    };
    // Futures of this task, not tasks of their own: stopping it stops them all.
    futures::future::join_all(
        settings
            .urls
            .iter()
            .map(|url| deliver_to(fleet.clone(), settings.clone(), http.clone(), url.clone())),
    )
    .await;
}

/// Delivers to one receiver whenever this process leads.
async fn deliver_to(
    fleet: Arc<Fleet>,
    settings: Arc<WebhookSettings>,
    http: reqwest::Client,
    url: reqwest::Url,
) {
    let receiver = origin(&url);
    loop {
        match fleet.lead().await {
            Ok(Some(fence)) => {
                let leader = fleet.as_leader(fence);
                match follow(&fleet, &leader, &settings, &http, &url).await {
                    Ok(()) => tracing::info!(%receiver, "event webhook: no longer leading"),
                    Err(FleetError::Store(StoreError::NotLeader)) => {
                        tracing::warn!(%receiver, "event webhook: leadership lost; campaigning again")
                    }
                    Err(e) => {
                        tracing::warn!(%receiver, error = %e, "event webhook: delivery stopped")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "event webhook: leadership check failed"),
        }
        tokio::time::sleep(settings.lead_check).await;
    }
}

/// Follows the events after the receiver's cursor and delivers them one by one, while this
/// process leads; `Ok` once it no longer does.
async fn follow(
    fleet: &Fleet,
    leader: &Fleet,
    settings: &WebhookSettings,
    http: &reqwest::Client,
    url: &reqwest::Url,
) -> Result<(), FleetError> {
    let key = url.as_str();
    let cursor = leader.webhook_cursor(key, &origin(url)).await?;
    tracing::info!(receiver = %origin(url), after = cursor.delivered, "event webhook: leading, delivering");
    let mut feed = fleet
        .follow_all_events(EventFilter {
            kinds: settings.kinds.clone(),
            after: Some(cursor.delivered),
            ..Default::default()
        })
        .await?;
    let mut check = tokio::time::interval(settings.lead_check);
    loop {
        let item = tokio::select! {
            item = feed.recv() => item,
            _ = check.tick() => {
                if fleet.lead().await?.is_none() {
                    return Ok(());
                }
                continue;
            }
        };
        match item {
            None => return Ok(()),
            Some(Err(e)) => return Err(e),
            Some(Ok(EventItem::CaughtUp)) => {}
            Some(Ok(EventItem::Event(seq, event))) => {
                deliver(fleet, settings, http, url, seq, &event).await?;
                leader
                    .advance_webhook_cursor(key, &origin(url), seq)
                    .await?;
            }
        }
    }
}

/// Delivers one event, retrying as [`after_attempt`] says; fails with `NotLeader` when the
/// leadership is lost between attempts.
async fn deliver(
    fleet: &Fleet,
    settings: &WebhookSettings,
    http: &reqwest::Client,
    url: &reqwest::Url,
    seq: u64,
    event: &Event,
) -> Result<(), FleetError> {
    let body =
        serde_json::to_vec(&crate::views::event(seq, event)).expect("an event view serializes");
    let signature = sign(&settings.secret, &body);
    let receiver = origin(url);
    for attempt in 1.. {
        let outcome = http
            .post(url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, &signature)
            .header(SEQ_HEADER, seq.to_string())
            .body(body.clone())
            .send()
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| match r.status() {
                s if s.is_success() => Ok(()),
                s => Err(format!("answered {s}")),
            });
        let step = after_attempt(outcome.is_ok(), attempt, &settings.backoff);
        let why = outcome.err().unwrap_or_default();
        match step {
            Step::Delivered => {
                tracing::debug!(%receiver, seq, attempt, "event webhook: delivered");
                return Ok(());
            }
            Step::RetryAfter(pause) => {
                tracing::warn!(%receiver, seq, attempt, error = %why, retry_in_ms = pause.as_millis() as u64, "event webhook: delivery failed; retrying");
                tokio::time::sleep(pause).await;
                if fleet.lead().await?.is_none() {
                    return Err(FleetError::Store(StoreError::NotLeader));
                }
            }
            Step::GiveUp => {
                tracing::error!(%receiver, seq, attempts = attempt, error = %why, "event webhook: event given up after its last attempt; delivering the next");
                return Ok(());
            }
        }
    }
    unreachable!("the attempts loop only ends by returning")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_doubling_up_to_the_ceiling_and_the_attempt_bound() {
        let ms = Duration::from_millis;
        let unbounded = Backoff {
            first: ms(100),
            max: ms(1000),
            max_attempts: 0,
        };
        let bounded = Backoff {
            max_attempts: 3,
            ..unbounded
        };
        // (delivered, attempt, backoff, step)
        let cases = [
            (true, 1, unbounded, Step::Delivered),
            (true, 9, bounded, Step::Delivered),
            (false, 1, unbounded, Step::RetryAfter(ms(100))),
            (false, 2, unbounded, Step::RetryAfter(ms(200))),
            (false, 4, unbounded, Step::RetryAfter(ms(800))),
            (false, 5, unbounded, Step::RetryAfter(ms(1000))),
            (false, 1000, unbounded, Step::RetryAfter(ms(1000))),
            (false, 2, bounded, Step::RetryAfter(ms(200))),
            (false, 3, bounded, Step::GiveUp),
        ];
        for (delivered, attempt, backoff, want) in cases {
            assert_eq!(
                after_attempt(delivered, attempt, &backoff),
                want,
                "delivered {delivered}, attempt {attempt}, {backoff:?}"
            );
        }
    }

    #[test]
    fn signatures_are_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let secret = Secret::new(b"Jefe".to_vec());
        assert_eq!(
            sign(&secret, b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
    }
}
