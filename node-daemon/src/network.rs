//! Host network and VPC overlays, through the `cairn-netplan` library (never networkd).
//!
//! [`Network`] is the seam the daemon is written against; [`Netplan`] applies through
//! netlink with the library's last-known-good protection: an interrupted `net try` is rolled
//! back first, and an apply that fails verification restores the previous state.

use std::path::{Path, PathBuf};

use cairn_api::OverlayDocument;
use cairn_netplan::apply::{Store, apply, checkpoint, restore};
use cairn_netplan::netlink::RtNetlink;
use cairn_netplan::overlay::Overlay;
use cairn_netplan::safe::recover;
use cairn_netplan::schema::{load_files, parse_str};
use cairn_netplan::state::NetState;

/// Applying the network failed; the message says what netplan reported.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetworkError(pub String);

/// What the daemon needs from host networking.
pub trait Network: Send + Sync {
    /// Applies the netplan files in `dir`; returns how many changes were made.
    fn apply_host(&self, dir: &Path) -> impl Future<Output = Result<usize, NetworkError>> + Send;
    /// Applies netplan YAML for a trial (the wizard's "Test and apply"), returning the state
    /// to go back to.
    fn try_host(&self, yaml: &str) -> impl Future<Output = Result<Trial, NetworkError>> + Send;
    /// Goes back to the state before a trial.
    fn rollback(&self, trial: Trial) -> impl Future<Output = Result<(), NetworkError>> + Send;
    /// Realises a VPC overlay document; `None` (the appliance is in no VPC) removes the
    /// overlay links this node made.
    fn apply_overlay(
        &self,
        doc: Option<&OverlayDocument>,
    ) -> impl Future<Output = Result<usize, NetworkError>> + Send;
}

/// The network state before a trial apply.
#[derive(Debug, Clone)]
pub struct Trial(NetState);

/// [`Network`] through `cairn-netplan` and rtnetlink.
#[derive(Debug, Clone)]
pub struct Netplan {
    /// netplan's own state directory (ownership records, checkpoints, last known good).
    pub state_dir: PathBuf,
}

impl Netplan {
    /// Host network and overlays keep separate ownership records, so applying one never
    /// removes links the other made.
    async fn run<T: cairn_netplan::apply::Target>(
        &self,
        part: &str,
        target: &T,
    ) -> Result<usize, NetworkError> {
        let store = Store::new(self.state_dir.join(part));
        let mut nl = RtNetlink::connect().map_err(|e| NetworkError(format!("netlink: {e}")))?;
        if let Some(restored) = recover(&mut nl, &store)
            .await
            .map_err(|e| NetworkError(e.to_string()))?
        {
            tracing::warn!(%restored, "an unconfirmed net try was interrupted and rolled back");
        }
        let report = apply(&mut nl, target, &store)
            .await
            .map_err(|e| NetworkError(e.to_string()))?;
        Ok(report.changes.len())
    }
}

impl Network for Netplan {
    async fn apply_host(&self, dir: &Path) -> Result<usize, NetworkError> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(NetworkError(format!("reading {}: {e}", dir.display()))),
        };
        if files.is_empty() {
            tracing::info!(dir = %dir.display(), "no netplan files: host network left as it is");
            return Ok(0);
        }
        files.sort();
        let config = load_files(&files).map_err(|e| NetworkError(e.to_string()))?;
        self.run("host", &config).await
    }

    async fn try_host(&self, yaml: &str) -> Result<Trial, NetworkError> {
        let config = parse_str("wizard.yaml", yaml).map_err(|e| NetworkError(e.to_string()))?;
        let store = Store::new(self.state_dir.join("host"));
        let mut nl = RtNetlink::connect().map_err(|e| NetworkError(format!("netlink: {e}")))?;
        let before = checkpoint(&mut nl, &config, &store)
            .await
            .map_err(|e| NetworkError(e.to_string()))?;
        // A failed apply is rolled back by netplan itself.
        apply(&mut nl, &config, &store)
            .await
            .map_err(|e| NetworkError(e.to_string()))?;
        Ok(Trial(before))
    }

    async fn rollback(&self, trial: Trial) -> Result<(), NetworkError> {
        let store = Store::new(self.state_dir.join("host"));
        let mut nl = RtNetlink::connect().map_err(|e| NetworkError(format!("netlink: {e}")))?;
        match restore(&mut nl, &trial.0, &store).await {
            cairn_netplan::apply::Restored::Yes => Ok(()),
            other => Err(NetworkError(format!("rollback: {other}"))),
        }
    }

    async fn apply_overlay(&self, doc: Option<&OverlayDocument>) -> Result<usize, NetworkError> {
        // Without VPCs no link needs the VTEP address, so the unspecified one stands in;
        // applying an empty overlay deletes the links the overlay's ownership record lists.
        let none = OverlayDocument {
            local_vtep: "0.0.0.0".into(),
            vpcs: Vec::new(),
        };
        let overlay =
            Overlay::new(doc.unwrap_or(&none)).map_err(|e| NetworkError(e.to_string()))?;
        self.run("overlay", &overlay).await
    }
}
