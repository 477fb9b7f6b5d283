//! The node's side of the hub's appliance endpoints (hub/API.md).
//!
//! [`HubApi`] is the seam: the daemon's logic is written against it, and [`HttpsHub`] is the
//! thin module that speaks HTTPS, through the workspace's one hub client
//! (`cairn-hub-client`). Trust is never "accept anything": before registration the node
//! knows only the hub CA's SHA-256 fingerprint, so the first connection is pinned to it
//! ([`Trust::Fingerprint`]); after registration the hub CA returned by the hub is the only
//! root, and the node presents its client certificate. Errors become [`HubError`]s that say
//! what the appliance's owner can do.

use cairn_api::hub::{ErrorBody, ErrorCode, Renewal, TokenCheck};
use cairn_api::{
    CertFingerprint, Heartbeat, HeartbeatResponse, RegistrationRequest, RegistrationResponse,
};
use cairn_hub_client::{self as hub_client, HubClient};

pub use cairn_hub_client::tls::{ClientKey, Identity as ClientIdentity, Trust};

/// What went wrong talking to the hub. Each variant says what the operator can do.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// No answer: network down, hub down, timeout. The node queues and retries.
    #[error("hub {url} unreachable")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// The hub's chain does not contain the pinned CA.
    #[error(
        "hub certificate does not match the pinned CA fingerprint sha256:{expected} (the hub \
         presented {presented}); check hub.ca_fingerprint against the output of `cairn-hub \
         init` on the hub, or whether something intercepts the connection"
    )]
    FingerprintMismatch {
        /// The pinned fingerprint.
        expected: String,
        /// What the chain held.
        presented: String,
    },
    /// The hub refused the enrollment token.
    #[error(
        "the hub rejected the enrollment token ({reason}): {message}; ask the fleet operator \
         for a new token (`cairn hub token create`) and write it to the token file"
    )]
    TokenRejected {
        /// `token_unknown`, `token_expired`, ...
        reason: String,
        /// The hub's explanation.
        message: String,
    },
    /// The hub replaced this certificate, or forgot the appliance.
    #[error(
        "the hub no longer accepts this appliance's identity ({code}): {message}; the node \
         keeps running on its last state and will not re-register on its own. Way out: \
         `cairn-node state reset` and a new token: a re-install token \
         (`cairn hub appliances reinstall ID`) if the hub still knows this hardware"
    )]
    IdentityRevoked {
        /// `certificate_superseded` or `appliance_unknown`.
        code: String,
        /// The hub's explanation.
        message: String,
    },
    /// The hub answered, but not with what the API promises.
    #[error("hub answered {endpoint} with something that is not the cairn API ({detail})")]
    Garbage {
        /// Which call.
        endpoint: String,
        /// HTTP status and what failed to parse.
        detail: String,
    },
    /// The hub refused the request for another reason.
    #[error("hub refused {endpoint}: HTTP {status} {code}: {message}")]
    Refused {
        /// Which call.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// Error code.
        code: String,
        /// The hub's explanation.
        message: String,
    },
    /// Building the TLS client failed (bad key or CA in the store).
    #[error("setting up TLS to the hub: {0}")]
    Tls(String),
}

impl HubError {
    /// Whether retrying later may help (as opposed to needing an operator).
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::Garbage { .. } => true,
            Self::Refused { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

/// The appliance endpoints of the hub.
pub trait HubApi: Send + Sync {
    /// `POST /v1/registrations/check`: would this token be accepted? Does not use it up.
    fn check_token(&self, token: &str)
    -> impl Future<Output = Result<TokenCheck, HubError>> + Send;
    /// `POST /v1/registrations`.
    fn register(
        &self,
        request: &RegistrationRequest,
    ) -> impl Future<Output = Result<RegistrationResponse, HubError>> + Send;
    /// `POST /v1/renewals` (mTLS).
    fn renew(&self, csr_pem: &str) -> impl Future<Output = Result<Renewal, HubError>> + Send;
    /// `POST /v1/heartbeats` (mTLS).
    fn heartbeat(
        &self,
        heartbeat: &Heartbeat,
    ) -> impl Future<Output = Result<HeartbeatResponse, HubError>> + Send;
}

/// A client for the hub's appliance endpoints: [`HubClient`] with the node's errors.
#[derive(Debug, Clone)]
pub struct HttpsHub {
    client: HubClient,
}

impl HttpsHub {
    /// A client for `base_url` trusting the hub as `trust` says, presenting `identity` when
    /// given.
    pub fn new(
        base_url: &str,
        trust: &Trust,
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, HubError> {
        Ok(Self {
            client: HubClient::new(base_url, trust, identity)?,
        })
    }

    /// A client for several URLs of one fleet's hubs, tried in order when one cannot be
    /// reached ([`HubClient::failover`]).
    pub fn failover(
        base_urls: &[String],
        trust: &Trust,
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, HubError> {
        Ok(Self {
            client: HubClient::failover(base_urls, trust, identity)?,
        })
    }

    /// The URL of the hub calls go to now.
    pub fn current_url(&self) -> &str {
        self.client.base_url()
    }

    /// With only a fingerprint (hex): fetches `GET /v1/ca` over a pinned connection and
    /// checks the fingerprint of what it returns. The result is the CA bundle to trust from
    /// now on.
    pub async fn fetch_pinned_ca(base_url: &str, fingerprint: &str) -> Result<String, HubError> {
        let pin = CertFingerprint::parse(fingerprint).map_err(|e| HubError::Tls(e.to_string()))?;
        Ok(HubClient::fetch_pinned_ca(base_url, &pin)
            .await?
            .ca_bundle_pem)
    }
}

impl From<hub_client::Error> for HubError {
    fn from(e: hub_client::Error) -> Self {
        use hub_client::Error as E;
        match e {
            E::Unreachable { url, source } => HubError::Unreachable { url, source },
            E::FingerprintMismatch {
                expected,
                presented,
            } => HubError::FingerprintMismatch {
                expected: expected.hex().to_owned(),
                presented,
            },
            E::Refused {
                endpoint,
                status,
                body,
            } => classify(endpoint, status, body),
            E::Garbage { endpoint, detail } => HubError::Garbage { endpoint, detail },
            other => HubError::Tls(cairn_api::error_chain(&other)),
        }
    }
}

fn classify(endpoint: String, status: u16, err: ErrorBody) -> HubError {
    match err.error {
        ErrorCode::Token(reason) => HubError::TokenRejected {
            reason: reason.as_str().to_owned(),
            message: err.message,
        },
        code @ (ErrorCode::CertificateSuperseded | ErrorCode::ApplianceUnknown) => {
            HubError::IdentityRevoked {
                code: code.to_string(),
                message: err.message,
            }
        }
        code => HubError::Refused {
            endpoint,
            status,
            code: code.to_string(),
            message: err.message,
        },
    }
}

impl HubApi for HttpsHub {
    async fn check_token(&self, token: &str) -> Result<TokenCheck, HubError> {
        Ok(self.client.check_token(token).await?)
    }

    async fn register(
        &self,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, HubError> {
        Ok(self.client.register(request).await?)
    }

    async fn renew(&self, csr_pem: &str) -> Result<Renewal, HubError> {
        Ok(self.client.renew(csr_pem).await?)
    }

    async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatResponse, HubError> {
        Ok(self.client.heartbeat(heartbeat).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_error_codes_map_to_actionable_errors() {
        let e = classify(
            "POST /v1/registrations".into(),
            403,
            ErrorBody {
                error: ErrorCode::parse("token_used_up"),
                message: "no uses left".into(),
            },
        );
        assert!(matches!(&e, HubError::TokenRejected { reason, .. } if reason == "used_up"));
        assert!(e.to_string().contains("cairn hub token create"), "{e}");
        let e = classify(
            "POST /v1/heartbeats".into(),
            401,
            ErrorBody {
                error: ErrorCode::parse("certificate_superseded"),
                message: String::new(),
            },
        );
        assert!(e.to_string().contains("will not re-register"), "{e}");
        assert!(!e.is_transient());
    }
}
