//! The node's client for the hub's appliance endpoints (hub/API.md).
//!
//! [`HubApi`] is the seam: the daemon's logic is written against it, and [`HttpsHub`] is the
//! thin module that speaks HTTPS. Trust is never "accept anything": before registration the
//! node knows only the hub CA's SHA-256 fingerprint, so the first connection uses
//! [`PinnedCaVerifier`], which accepts a server chain only if it contains a certificate with
//! that fingerprint and the server certificate verifies against it. After registration the
//! hub CA returned by the hub is the only root, and the node presents its client certificate.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::{Heartbeat, HeartbeatResponse, RegistrationRequest, RegistrationResponse};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::pki;

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
         `cairn-node state reset` and a new enrollment token"
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

/// `POST /v1/registrations/check` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCheck {
    /// Whether a registration with this token would be accepted.
    pub valid: bool,
    /// Why not.
    #[serde(default)]
    pub reason: Option<String>,
    /// The token's site.
    #[serde(default)]
    pub site: Option<String>,
}

/// `POST /v1/renewals` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Renewal {
    /// New client certificate.
    pub certificate_pem: String,
    /// CA bundle.
    pub ca_bundle_pem: String,
}

#[derive(Debug, Deserialize)]
struct CaAnswer {
    ca_bundle_pem: String,
}

#[derive(Debug, Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    message: String,
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

/// How the node trusts the hub.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Only the CA fingerprint is known (before registration).
    Fingerprint(String),
    /// The CA bundle, PEM.
    CaBundle(String),
}

/// The client identity presented over mTLS.
#[derive(Debug, Clone)]
pub struct ClientIdentity {
    /// Certificate, PEM.
    pub certificate_pem: String,
    /// Key, PEM.
    pub key_pem: String,
}

/// HTTPS implementation of [`HubApi`].
#[derive(Debug, Clone)]
pub struct HttpsHub {
    client: reqwest::Client,
    base: String,
    mismatch: Arc<Mutex<Option<String>>>,
    pinned: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts a server chain only when one of its certificates has the pinned SHA-256
/// fingerprint, then verifies the chain with that certificate as the only root.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    fingerprint: String,
    /// What was presented on the last mismatch, for the error message (rustls only carries
    /// a generic error up through reqwest).
    mismatch: Arc<Mutex<Option<String>>>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<String> = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| pki::fingerprint(c))
            .collect();
        let Some(anchor) = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| pki::fingerprint(c) == self.fingerprint)
        else {
            let text = presented
                .iter()
                .map(|f| format!("sha256:{f}"))
                .collect::<Vec<_>>()
                .join(", ");
            *self.mismatch.lock().unwrap_or_else(|e| e.into_inner()) = Some(text);
            return Err(rustls::Error::General("CA fingerprint mismatch".into()));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl HttpsHub {
    /// A client for `base_url` trusting the hub as `trust` says, presenting `identity` when
    /// given.
    pub fn new(
        base_url: &str,
        trust: &Trust,
        identity: Option<&ClientIdentity>,
    ) -> Result<Self, HubError> {
        let mismatch = Arc::new(Mutex::new(None));
        let (config, pinned) = tls_config(trust, identity, &mismatch)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| HubError::Tls(e.to_string()))?;
        Ok(Self {
            client,
            base: base_url.trim_end_matches('/').to_owned(),
            mismatch,
            pinned,
        })
    }

    /// With only a fingerprint: fetches `GET /v1/ca` over a pinned connection and checks the
    /// fingerprint of what it returns. The result is the CA bundle to trust from now on.
    pub async fn fetch_pinned_ca(base_url: &str, fingerprint: &str) -> Result<String, HubError> {
        let hub = Self::new(base_url, &Trust::Fingerprint(fingerprint.to_owned()), None)?;
        let answer: CaAnswer = hub
            .call(reqwest::Method::GET, "/v1/ca", None::<&()>)
            .await?;
        let ders = pki::pem_certificates(&answer.ca_bundle_pem, "hub CA").map_err(|e| {
            HubError::Garbage {
                endpoint: "GET /v1/ca".into(),
                detail: e.to_string(),
            }
        })?;
        if !ders.iter().any(|d| pki::fingerprint(d) == fingerprint) {
            return Err(HubError::FingerprintMismatch {
                expected: fingerprint.to_owned(),
                presented: ders
                    .iter()
                    .map(|d| format!("sha256:{}", pki::fingerprint(d)))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(answer.ca_bundle_pem)
    }

    async fn call<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, HubError> {
        let endpoint = format!("{method} {path}");
        let url = format!("{}{path}", self.base);
        let mut request = self.client.request(method, &url);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(source) => {
                if let (Some(expected), Some(presented)) = (
                    &self.pinned,
                    self.mismatch
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .take(),
                ) {
                    return Err(HubError::FingerprintMismatch {
                        expected: expected.clone(),
                        presented,
                    });
                }
                return Err(HubError::Unreachable { url, source });
            }
        };
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| HubError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| HubError::Garbage {
                endpoint,
                detail: format!("HTTP {status}, {e}; body starts {:?}", preview(&bytes)),
            });
        }
        let Ok(err) = serde_json::from_slice::<ErrorBody>(&bytes) else {
            return Err(HubError::Garbage {
                endpoint,
                detail: format!("HTTP {status}, body starts {:?}", preview(&bytes)),
            });
        };
        Err(classify(endpoint, status.as_u16(), err))
    }
}

/// The TLS client configuration for talking to the hub (or a mirror trusted the same way):
/// `trust` as the only roots, `identity` presented for mTLS. Also returns the pinned
/// fingerprint, when trusting by fingerprint; `mismatch` receives what a mismatching server
/// presented.
pub fn tls_config(
    trust: &Trust,
    identity: Option<&ClientIdentity>,
    mismatch: &Arc<Mutex<Option<String>>>,
) -> Result<(rustls::ClientConfig, Option<String>), HubError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| HubError::Tls(e.to_string()))?;
    let (builder, pinned) = match trust {
        Trust::Fingerprint(fp) => (
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCaVerifier {
                    fingerprint: fp.clone(),
                    mismatch: mismatch.clone(),
                    provider: provider.clone(),
                })),
            Some(fp.clone()),
        ),
        Trust::CaBundle(pem) => {
            let mut roots = RootCertStore::empty();
            for der in pki::pem_certificates(pem, "hub CA bundle")
                .map_err(|e| HubError::Tls(e.to_string()))?
            {
                roots
                    .add(CertificateDer::from(der))
                    .map_err(|e| HubError::Tls(format!("hub CA bundle: {e}")))?;
            }
            (builder.with_root_certificates(roots), None)
        }
    };
    let config = match identity {
        Some(id) => {
            let chain: Vec<CertificateDer<'static>> =
                pki::pem_certificates(&id.certificate_pem, "client certificate")
                    .map_err(|e| HubError::Tls(e.to_string()))?
                    .into_iter()
                    .map(CertificateDer::from)
                    .collect();
            let key = PrivateKeyDer::from_pem_slice(id.key_pem.as_bytes())
                .map_err(|e| HubError::Tls(format!("client key: {e}")))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| HubError::Tls(e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok((config, pinned))
}

fn classify(endpoint: String, status: u16, err: ErrorBody) -> HubError {
    if let Some(reason) = err.error.strip_prefix("token_") {
        return HubError::TokenRejected {
            reason: reason.to_owned(),
            message: err.message,
        };
    }
    if err.error == "certificate_superseded" || err.error == "appliance_unknown" {
        return HubError::IdentityRevoked {
            code: err.error,
            message: err.message,
        };
    }
    HubError::Refused {
        endpoint,
        status,
        code: err.error,
        message: err.message,
    }
}

/// The first bytes of an unexpected body, printable, for error messages.
fn preview(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(80)])
        .chars()
        .map(|c| if c.is_control() { '.' } else { c })
        .collect()
}

impl HubApi for HttpsHub {
    async fn check_token(&self, token: &str) -> Result<TokenCheck, HubError> {
        #[derive(Serialize)]
        struct Check<'a> {
            token: &'a str,
        }
        self.call(
            reqwest::Method::POST,
            "/v1/registrations/check",
            Some(&Check { token }),
        )
        .await
    }

    async fn register(
        &self,
        request: &RegistrationRequest,
    ) -> Result<RegistrationResponse, HubError> {
        self.call(reqwest::Method::POST, "/v1/registrations", Some(request))
            .await
    }

    async fn renew(&self, csr_pem: &str) -> Result<Renewal, HubError> {
        #[derive(Serialize)]
        struct Renew<'a> {
            csr_pem: &'a str,
        }
        self.call(
            reqwest::Method::POST,
            "/v1/renewals",
            Some(&Renew { csr_pem }),
        )
        .await
    }

    async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatResponse, HubError> {
        self.call(reqwest::Method::POST, "/v1/heartbeats", Some(heartbeat))
            .await
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
                error: "token_used_up".into(),
                message: "no uses left".into(),
            },
        );
        assert!(matches!(&e, HubError::TokenRejected { reason, .. } if reason == "used_up"));
        assert!(e.to_string().contains("cairn hub token create"), "{e}");
        let e = classify(
            "POST /v1/heartbeats".into(),
            401,
            ErrorBody {
                error: "certificate_superseded".into(),
                message: String::new(),
            },
        );
        assert!(e.to_string().contains("will not re-register"), "{e}");
        assert!(!e.is_transient());
    }

    #[test]
    fn preview_keeps_garbage_printable_and_short() {
        assert_eq!(preview(b"<html>\n\x00hi"), "<html>..hi");
        assert_eq!(preview(&[b'a'; 200]).len(), 80);
    }
}
