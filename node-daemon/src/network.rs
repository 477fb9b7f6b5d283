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
use cairn_netplan::safe::{Probe, TryOutcome, recover, try_probed};
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
    /// Tries the host netplan files of `dir` with the hub's netplan patch merged last
    /// (`None`: without the patch kept from before): checkpoint, apply, probe `probes`,
    /// then keep it (and the patch, for later starts) or roll back. `Err`: it could not
    /// be applied (and was undone).
    fn try_fleet(
        &self,
        dir: &Path,
        patch: Option<&str>,
        probes: &[Probe],
    ) -> impl Future<Output = Result<FleetTry, NetworkError>> + Send;
    /// Goes back to the state before a trial.
    fn rollback(&self, trial: Trial) -> impl Future<Output = Result<(), NetworkError>> + Send;
    /// Realises a VPC overlay document; `None` (the appliance is in no VPC) removes the
    /// overlay links this node made.
    fn apply_overlay(
        &self,
        doc: Option<&OverlayDocument>,
    ) -> impl Future<Output = Result<usize, NetworkError>> + Send;
}

/// How a [`Network::try_fleet`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetTry {
    /// The probes passed: the change stays.
    Kept,
    /// A probe failed: the previous network is back.
    RolledBack(String),
}

/// How long a fleet change may stay unconfirmed on disk: a crash or reboot in that window
/// rolls it back at the next start.
const FLEET_TRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

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
        let (store, mut nl) = self.recovered(part).await?;
        let report = apply(&mut nl, target, &store)
            .await
            .map_err(|e| NetworkError(e.to_string()))?;
        Ok(report.changes.len())
    }

    /// The store of `part` and a netlink connection, after rolling back a try that was
    /// interrupted (a crash or a reboot while it was unconfirmed).
    async fn recovered(&self, part: &str) -> Result<(Store, RtNetlink), NetworkError> {
        let store = Store::new(self.state_dir.join(part));
        let mut nl = RtNetlink::connect().map_err(|e| NetworkError(format!("netlink: {e}")))?;
        if let Some(restored) = recover(&mut nl, &store)
            .await
            .map_err(|e| NetworkError(e.to_string()))?
        {
            tracing::warn!(%restored, "an unconfirmed net try was interrupted and rolled back");
        }
        Ok((store, nl))
    }

    /// The hub's netplan patch kept after its try passed, applied after the host files.
    fn fleet_patch(&self) -> PathBuf {
        self.state_dir.join("fleet/netplan.yaml")
    }

    /// The `*.yaml` files of `dir` in name order, then the kept fleet patch (or `patch`,
    /// when given, instead).
    fn host_files(&self, dir: &Path, patch: Option<&Path>) -> Result<Vec<PathBuf>, NetworkError> {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(NetworkError(format!("reading {}: {e}", dir.display()))),
        };
        files.sort();
        let kept = self.fleet_patch();
        match patch {
            Some(p) => files.push(p.to_path_buf()),
            None if kept.exists() => files.push(kept),
            None => {}
        }
        Ok(files)
    }
}

impl Network for Netplan {
    async fn apply_host(&self, dir: &Path) -> Result<usize, NetworkError> {
        let files = self.host_files(dir, None)?;
        if files.is_empty() {
            tracing::info!(dir = %dir.display(), "no netplan files: host network left as it is");
            return Ok(0);
        }
        let config = load_files(&files).map_err(|e| NetworkError(e.to_string()))?;
        self.run("host", &config).await
    }

    async fn try_fleet(
        &self,
        dir: &Path,
        patch: Option<&str>,
        probes: &[Probe],
    ) -> Result<FleetTry, NetworkError> {
        let kept = self.fleet_patch();
        let pending = kept.with_file_name("pending.yaml");
        let io = |what: &str, p: &Path, e: std::io::Error| {
            NetworkError(format!("{what} {}: {e}", p.display()))
        };
        // Kept already (a restart applies the stored desired state again): nothing to
        // try, and no probe to fail while the hub is down.
        if patch.is_some() && std::fs::read_to_string(&kept).ok().as_deref() == patch {
            return Ok(FleetTry::Kept);
        }
        let files = match patch {
            Some(text) => {
                let parent = pending.parent().expect("a file in fleet/");
                std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
                std::fs::write(&pending, text).map_err(|e| io("writing", &pending, e))?;
                self.host_files(dir, Some(&pending))?
            }
            None if kept.exists() => {
                // The patch was removed on the hub: try the host files alone.
                let mut files = self.host_files(dir, None)?;
                files.retain(|f| f != &kept);
                files
            }
            None => return Ok(FleetTry::Kept),
        };
        let config = load_files(&files).map_err(|e| NetworkError(e.to_string()))?;
        let (store, mut nl) = self.recovered("host").await?;
        let outcome = try_probed(&mut nl, &config, &store, probes, FLEET_TRY_WINDOW)
            .await
            .map_err(|e| NetworkError(e.to_string()));
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let _ = std::fs::remove_file(&pending);
                return Err(e);
            }
        };
        match outcome {
            TryOutcome::Confirmed => {
                match patch {
                    Some(_) => {
                        std::fs::rename(&pending, &kept).map_err(|e| io("keeping", &kept, e))?
                    }
                    None => std::fs::remove_file(&kept).map_err(|e| io("removing", &kept, e))?,
                }
                Ok(FleetTry::Kept)
            }
            TryOutcome::ProbeFailed {
                probe,
                reason,
                restored,
            } => {
                let _ = std::fs::remove_file(&pending);
                Ok(FleetTry::RolledBack(format!(
                    "probe {probe} failed ({reason}); {restored}"
                )))
            }
            TryOutcome::TimedOut { restored } => {
                let _ = std::fs::remove_file(&pending);
                Ok(FleetTry::RolledBack(format!(
                    "not confirmed in time; {restored}"
                )))
            }
        }
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
