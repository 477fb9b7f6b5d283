//! The HTTP peers of `cairn rack provision`: the boot server's install reports and the hub's
//! appliance list. Thin: one request each, parsed into the machine's terms.
//!
//! Boot server contract used here: `GET /v1/install/progress/{mac}` answers
//! `{"seq": N, "progress": cairn_api::install::InstallProgress}` for the latest report from
//! that MAC (`seq` increasing with every report), or 404 when none arrived yet.

use async_trait::async_trait;
use cairn_api::InstallProgress;
use serde::Deserialize;

use crate::rack::machine::{FleetView, InstallProgressSource, PeerError};

/// A client with the workspace's one crypto provider (ring). Without a CA it trusts nothing,
/// which suits the plain-HTTP boot server and refuses any HTTPS it is pointed at.
fn client(tls: Option<rustls::ClientConfig>) -> Result<reqwest::Client, PeerError> {
    let config = match tls {
        Some(config) => config,
        None => rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| PeerError(e.to_string()))?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth(),
    };
    reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|e| PeerError(format!("building the HTTP client: {e}")))
}

/// The boot server's install reports over HTTP.
#[derive(Debug, Clone)]
pub struct BootServerProgress {
    base: url::Url,
    http: reqwest::Client,
}

impl BootServerProgress {
    /// A client for the boot server at `base` (plain HTTP on the provisioning network).
    pub fn new(base: url::Url) -> Result<Self, PeerError> {
        Ok(Self {
            base,
            http: client(None)?,
        })
    }
}

#[derive(Deserialize)]
struct ProgressAnswer {
    seq: u64,
    progress: InstallProgress,
}

#[async_trait]
impl InstallProgressSource for BootServerProgress {
    async fn latest(&self, mac: &str) -> Result<Option<(u64, InstallProgress)>, PeerError> {
        let url = self
            .base
            .join(&format!("v1/install/progress/{mac}"))
            .map_err(|e| PeerError(e.to_string()))?;
        let answer = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| PeerError(format!("GET {url}: {e}")))?;
        if answer.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status().is_success() {
            return Err(PeerError(format!("GET {url}: {}", answer.status())));
        }
        let body: ProgressAnswer = answer
            .json()
            .await
            .map_err(|e| PeerError(format!("GET {url}: {e}")))?;
        Ok(Some((body.seq, body.progress)))
    }
}

/// The hub's appliance list, read with an operator token.
#[derive(Debug, Clone)]
pub struct HubFleet {
    base: url::Url,
    token: String,
    http: reqwest::Client,
}

impl HubFleet {
    /// A client for the hub at `base`, trusting only `ca_pem` (the hub's CA); `token` is an
    /// operator bearer token (viewer suffices).
    pub fn new(base: url::Url, token: String, ca_pem: &str) -> Result<Self, PeerError> {
        let tls = Some(
            cairn_hub::client::tls_config(ca_pem, None)
                .map_err(|e| PeerError(format!("hub CA: {e}")))?,
        );
        Ok(Self {
            base,
            token,
            http: client(tls)?,
        })
    }
}

/// Finds the appliance that is server `name` with boot MAC `mac` in a `GET /v1/appliances`
/// answer (a list, or an object with an `appliances` list): by NIC MAC, else by hostname.
pub fn match_appliance(answer: &serde_json::Value, name: &str, mac: &str) -> Option<String> {
    let list = answer
        .as_array()
        .or_else(|| answer.get("appliances").and_then(|a| a.as_array()))?;
    let mac = mac.to_ascii_lowercase();
    let has_mac = |a: &serde_json::Value| {
        a.pointer("/inventory/nics")
            .and_then(|n| n.as_array())
            .is_some_and(|nics| {
                nics.iter().any(|n| {
                    n.get("mac")
                        .and_then(|m| m.as_str())
                        .is_some_and(|m| m.to_ascii_lowercase() == mac)
                })
            })
    };
    let id = |a: &serde_json::Value| a.get("id").and_then(|i| i.as_str()).map(str::to_owned);
    list.iter()
        .find(|a| has_mac(a))
        .or_else(|| {
            list.iter()
                .find(|a| a.get("hostname").and_then(|h| h.as_str()) == Some(name))
        })
        .and_then(id)
}

#[async_trait]
impl FleetView for HubFleet {
    async fn find(&self, name: &str, mac: &str) -> Result<Option<String>, PeerError> {
        let url = self
            .base
            .join("v1/appliances")
            .map_err(|e| PeerError(e.to_string()))?;
        let answer = self
            .http
            .get(url.clone())
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| PeerError(format!("GET {url}: {e}")))?;
        if !answer.status().is_success() {
            return Err(PeerError(format!("GET {url}: {}", answer.status())));
        }
        let body: serde_json::Value = answer
            .json()
            .await
            .map_err(|e| PeerError(format!("GET {url}: {e}")))?;
        Ok(match_appliance(&body, name, mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appliances_match_by_mac_then_hostname() {
        let answer = serde_json::json!([
            {"id": "a1", "hostname": "other", "inventory": {"nics": [{"mac": "52:54:00:C4:00:01"}]}},
            {"id": "a2", "hostname": "srv2", "inventory": {"nics": []}},
        ]);
        assert_eq!(
            match_appliance(&answer, "srv1", "52:54:00:c4:00:01").as_deref(),
            Some("a1")
        );
        assert_eq!(
            match_appliance(&answer, "srv2", "52:54:00:c4:00:02").as_deref(),
            Some("a2")
        );
        assert_eq!(match_appliance(&answer, "srv3", "52:54:00:c4:00:03"), None);
        let wrapped = serde_json::json!({"appliances": answer});
        assert_eq!(
            match_appliance(&wrapped, "srv2", "x").as_deref(),
            Some("a2")
        );
    }
}
