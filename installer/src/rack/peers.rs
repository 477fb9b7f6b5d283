//! The HTTP peers of `cairn rack provision`: the boot server's install reports and the hub's
//! appliance list. Thin: one request each, parsed into the machine's terms.
//!
//! Boot server contract used here: `GET /v1/install/progress/{mac}` answers a
//! [`crate::boot_server::Report`] for the latest report from that MAC (`seq` increasing with
//! every report), or 404 when none arrived yet.

use async_trait::async_trait;
use cairn_api::InstallProgress;
use cairn_api::hub::{ApplianceView, SiteQuery};
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::{self, Trust};

use crate::boot_server::Report;
use crate::rack::machine::{FleetView, InstallProgressSource, PeerError};

/// The boot server's install reports over HTTP.
#[derive(Debug, Clone)]
pub struct BootServerProgress {
    base: url::Url,
    http: reqwest::Client,
}

impl BootServerProgress {
    /// A client for the boot server at `base` (plain HTTP on the provisioning network; with
    /// no root trusted, an HTTPS address it is pointed at is refused).
    pub fn new(base: url::Url) -> Result<Self, PeerError> {
        let (config, _) = tls::client_config(&Trust::Nothing, None)
            .map_err(|e| PeerError(cairn_api::error_chain(&e)))?;
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .tls_backend_preconfigured(config)
            .build()
            .map_err(|e| PeerError(format!("building the HTTP client: {e}")))?;
        Ok(Self { base, http })
    }
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
        let body: Report = answer
            .json()
            .await
            .map_err(|e| PeerError(format!("GET {url}: {e}")))?;
        Ok(Some((body.seq, body.progress)))
    }
}

/// The hub's appliance list, read with an operator token.
#[derive(Debug, Clone)]
pub struct HubFleet {
    hub: HubClient,
}

impl HubFleet {
    /// A client for the hub at `base`, trusting only `ca_pem` (the hub's CA); `token` is an
    /// operator bearer token (viewer suffices).
    pub fn new(base: url::Url, token: String, ca_pem: &str) -> Result<Self, PeerError> {
        let hub = HubClient::new(base.as_str(), &Trust::CaBundle(ca_pem.into()), None)
            .map_err(|e| PeerError(format!("hub: {}", cairn_api::error_chain(&e))))?
            .with_bearer(token);
        Ok(Self { hub })
    }
}

/// Finds the appliance that is server `name` with boot MAC `mac`: by NIC MAC, else by
/// hostname.
pub fn match_appliance(appliances: &[ApplianceView], name: &str, mac: &str) -> Option<String> {
    let has_mac = |a: &&ApplianceView| {
        a.inventory
            .nics
            .iter()
            .any(|n| n.mac.eq_ignore_ascii_case(mac))
    };
    appliances
        .iter()
        .find(has_mac)
        .or_else(|| appliances.iter().find(|a| a.hostname == name))
        .map(|a| a.id.to_string())
}

#[async_trait]
impl FleetView for HubFleet {
    async fn find(&self, name: &str, mac: &str) -> Result<Option<String>, PeerError> {
        let appliances = self
            .hub
            .list_appliances(&SiteQuery::default())
            .await
            .map_err(|e| PeerError(cairn_api::error_chain(&e)))?;
        Ok(match_appliance(&appliances, name, mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appliance(id: &str, hostname: &str, macs: &[&str]) -> ApplianceView {
        serde_json::from_value(serde_json::json!({
            "id": id, "site": "s", "hostname": hostname, "labels": {},
            "inventory": {"nics": macs.iter().map(|m| serde_json::json!({"name": "eth0", "mac": m})).collect::<Vec<_>>()},
            "agent_version": "0", "cert_sha256": "", "cert_not_after": "2030-01-01T00:00:00Z",
            "registered_at": "2026-01-01T00:00:00Z", "rekeys": 0, "vpcs": [],
            "desired": {"generation": 1, "heartbeat_interval_seconds": 30},
            "state": "registered", "status": null,
        }))
        .unwrap()
    }

    #[test]
    fn appliances_match_by_mac_then_hostname() {
        let list = [
            appliance("a1", "other", &["52:54:00:C4:00:01"]),
            appliance("a2", "srv2", &[]),
        ];
        assert_eq!(
            match_appliance(&list, "srv1", "52:54:00:c4:00:01").as_deref(),
            Some("a1")
        );
        assert_eq!(
            match_appliance(&list, "srv2", "52:54:00:c4:00:02").as_deref(),
            Some("a2")
        );
        assert_eq!(match_appliance(&list, "srv3", "52:54:00:c4:00:03"), None);
    }
}
