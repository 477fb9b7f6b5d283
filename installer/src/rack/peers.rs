//! The HTTP peers of `cairn rack provision`: the boot server's install reports, the hub's
//! appliance list and its enrollment tokens. Thin: one request each, parsed into the
//! machine's terms.
//!
//! Boot server contract used here: `GET /v1/install/progress/{mac}` answers a
//! [`crate::boot_server::Report`] for the latest report from that MAC (`seq` increasing with
//! every report), or 404 when none arrived yet.

use async_trait::async_trait;
use cairn_api::InstallProgress;
use cairn_api::hub::{ApplianceQuery, ApplianceView, CreateEnrollmentToken};
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::{self, Trust};

use crate::boot_server::Report;
use crate::rack::machine::{
    FleetView, InstallProgressSource, MintError, MintedToken, PeerError, TokenBinding, TokenMinter,
};

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

/// The hub's appliance list, read with an operator token, and the per-server enrollment
/// tokens of virtual media, minted with it.
#[derive(Debug, Clone)]
pub struct HubFleet {
    hub: HubClient,
}

impl HubFleet {
    /// A client for the hub at `base`, trusting only `ca_pem` (the hub's CA); `token` is an
    /// operator bearer token (viewer suffices to watch; minting needs operator or admin).
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
            .list_appliances(&ApplianceQuery::default())
            .await
            .map_err(|e| PeerError(cairn_api::error_chain(&e)))?;
        Ok(match_appliance(&appliances, name, mac))
    }
}

#[async_trait]
impl TokenMinter for HubFleet {
    async fn mint(&self, binding: &TokenBinding) -> Result<MintedToken, MintError> {
        let request = CreateEnrollmentToken {
            site: binding.site.clone(),
            ttl_seconds: binding.ttl.as_secs().max(1),
            max_uses: 1,
            labels: Default::default(),
            tenant: None,
            mac: Some(binding.mac.clone()),
            serial: binding.serial.clone(),
        };
        match self.hub.create_token(&request).await {
            Ok(t) => Ok(MintedToken {
                id: t.view.id,
                secret: t.token,
            }),
            Err(e) => {
                let why = cairn_api::error_chain(&e);
                Err(match e {
                    // The token's role or scope, or a site it may not mint for: asking again
                    // changes nothing.
                    cairn_hub_client::Error::Refused {
                        status: 400 | 401 | 403 | 404,
                        ..
                    } => MintError::Refused(why),
                    _ => MintError::Other(why),
                })
            }
        }
    }

    async fn revoke(&self, id: &str) -> Result<(), PeerError> {
        self.hub
            .revoke_token(id)
            .await
            .map(|_| ())
            .map_err(|e| PeerError(cairn_api::error_chain(&e)))
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

    /// With a real hub: an operator's (here the admin's) token mints a single-use token bound
    /// to the MAC and serial, for the site, expiring with the TTL; revoking it shows; a
    /// viewer's token is refused as such, not as something to retry.
    #[tokio::test]
    async fn tokens_are_minted_bound_and_a_viewer_is_refused() {
        let hub = cairn_test_support::hub::Hub::builder(cairn_test_support::workspace_bin(
            "cairn-hub",
            "cairn-hub",
        ))
        .start();
        let _ = rustls::crypto::ring::default_provider().install_default();
        let url = url::Url::parse(&hub.url).unwrap();
        let fleet = HubFleet::new(url.clone(), hub.admin_token.clone(), &hub.ca_pem).unwrap();
        let binding = TokenBinding {
            site: "lab".into(),
            mac: "52:54:00:c4:00:01".into(),
            serial: Some("QPX12345".into()),
            ttl: std::time::Duration::from_secs(840),
        };
        let minted = fleet.mint(&binding).await.unwrap();
        assert!(
            minted.secret.starts_with("cairn-et.") && minted.secret.contains(&minted.id),
            "{minted:?}"
        );
        assert!(!format!("{minted:?}").contains(&minted.secret));
        let views = fleet.hub.list_tokens().await.unwrap();
        let view = views.iter().find(|t| t.id == minted.id).unwrap();
        assert_eq!(
            (
                view.max_uses,
                view.mac.as_deref(),
                view.serial.as_deref(),
                view.site.as_str()
            ),
            (1, Some("52:54:00:c4:00:01"), Some("QPX12345"), "lab")
        );
        let ttl = (view.expires_at - view.created_at).whole_seconds();
        assert!((839..=840).contains(&ttl), "{ttl}");
        fleet.revoke(&minted.id).await.unwrap();
        let views = fleet.hub.list_tokens().await.unwrap();
        assert!(views.iter().find(|t| t.id == minted.id).unwrap().revoked);

        let viewer = fleet
            .hub
            .create_operator_token(&cairn_api::hub::CreateOperatorToken {
                name: "watcher".into(),
                role: cairn_api::hub::Role::Viewer,
                site: None,
                tenant: None,
                ttl_seconds: None,
            })
            .await
            .unwrap();
        let watcher = HubFleet::new(url, viewer.token, &hub.ca_pem).unwrap();
        match watcher.mint(&binding).await {
            Err(MintError::Refused(why)) => assert!(why.contains("403"), "{why}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
