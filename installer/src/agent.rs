//! `cairn-agent`: runs in the install environment and writes the appliance image to disk.
//!
//! Started by the initramfs (`image-build/dist/initrd-init.sh`): `--server URL --mac MAC`
//! after a PXE boot (the script's one-time nonce in `CAIRN_INSTALL_NONCE`), or `--source DIR` after booting the
//! install ISO. See [`write`](mod@write) for the order of writes that keeps a half-written disk
//! unbootable.

pub mod disks;
pub mod plan;
pub mod source;
pub mod write;

use std::path::PathBuf;

use anyhow::Context as _;
use cairn_api::InstallStep;
use cairn_api::cli::{Exit, LogArgs, OutputFormat};
use cairn_formats::install::Trust;
use cairn_formats::keys::TrustStore;
use clap::Parser;

use self::disks::{Hint, discover, select};
use self::source::{DirSource, HttpSource, Source};
use self::write::{FileTarget, InstallError, Progress, Target, check_blank, install};

/// The cairn install agent: picks the target disk, writes and verifies the image, reboots.
///
/// PXE: `cairn-agent --server http://BOOT-SERVER:PORT --mac MAC --reboot` with the iPXE
/// script's one-time nonce in CAIRN_INSTALL_NONCE (exchanged once for the plan). ISO: `cairn-agent --source /media/cdrom/cairn --reboot`.
/// The disk is chosen by the plan's disk hint (or --disk-hint); a disk holding partitions or
/// filesystems is refused unless the plan or --wipe allows wiping it.
#[derive(Debug, Parser)]
#[command(name = "cairn-agent", version, about, long_about)]
pub struct AgentCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    /// The boot server's base URL (PXE installs).
    #[arg(long, conflicts_with = "source", required_unless_present = "source")]
    pub server: Option<String>,
    /// A directory with install.json, the payload and an optional seed/ (ISO installs).
    #[arg(long)]
    pub source: Option<PathBuf>,
    /// This machine's boot MAC, as the boot server knows it (for progress reports).
    #[arg(long, default_value = "")]
    pub mac: String,
    /// Disk hint overriding the plan's: `/dev/vdb`, `/dev/disk/by-path/pci-...`,
    /// `serial=S`, `model=M`, `size>=100G`, `size=100G-2T`, `largest`, `smallest`
    /// (comma-separated criteria all apply).
    #[arg(long)]
    pub disk_hint: Option<String>,
    /// Write to this device or image file instead of discovering disks.
    #[arg(long)]
    pub target: Option<PathBuf>,
    /// Allow overwriting a disk that holds partitions or filesystems.
    #[arg(long)]
    pub wipe: bool,
    /// On failure, leave what was written (for debugging) instead of wiping it.
    #[arg(long)]
    pub keep_on_error: bool,
    /// Reboot after a successful install.
    #[arg(long)]
    pub reboot: bool,
    /// The release keys this install environment trusts (`*.pem`, put there by `cairn
    /// image build` from the image's release_keys). With any, only an install.json signed
    /// by one of them is installed; with none (a development build) it is not checked.
    #[arg(long, default_value = "/usr/lib/cairn/release-keys")]
    pub release_keys: PathBuf,
    /// Where sysfs is (for discovery).
    #[arg(long, default_value = "/sys", hide = true)]
    pub sysfs: PathBuf,
    /// Print the result as a table or JSON.
    #[arg(long, value_enum, default_value_t)]
    pub output: OutputFormat,
}

impl AgentCli {
    /// Runs the install.
    pub async fn run(self) -> anyhow::Result<Exit> {
        tokio::task::spawn_blocking(move || self.run_blocking())
            .await
            .context("the install task panicked")?
    }

    fn run_blocking(self) -> anyhow::Result<Exit> {
        // reqwest's rustls needs a process-wide provider; the workspace uses ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let source: Box<dyn Source> = match (&self.server, &self.source) {
            (Some(server), _) => {
                let nonce = std::env::var("CAIRN_INSTALL_NONCE").unwrap_or_default();
                Box::new(HttpSource::new(server, nonce)?)
            }
            (None, Some(dir)) => Box::new(DirSource::new(dir.clone())),
            (None, None) => unreachable!("clap requires --server or --source"),
        };
        let mut progress = Progress::new(source.as_ref(), &self.mac);
        match self.install(source.as_ref(), &mut progress) {
            Ok(summary) => {
                progress.step(InstallStep::Completed, 0, None, summary.clone());
                match self.output {
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::json!({"result": "installed", "detail": summary})
                    ),
                    OutputFormat::Table => println!("installed: {summary}"),
                }
                if self.reboot {
                    reboot();
                }
                Ok(Exit::Success)
            }
            Err(error) => {
                let message = format!("{:#}", anyhow::Error::from(error));
                progress.step(InstallStep::Failed, 0, None, message.clone());
                match self.output {
                    OutputFormat::Json => println!(
                        "{}",
                        serde_json::json!({"result": "failed", "detail": message})
                    ),
                    OutputFormat::Table => eprintln!("error: install failed: {message}"),
                }
                Ok(Exit::Failed)
            }
        }
    }

    fn install(
        &self,
        source: &dyn Source,
        progress: &mut Progress<'_>,
    ) -> Result<String, AgentError> {
        let trust = TrustStore::read_dir(&self.release_keys)
            .map_err(|e| AgentError::Keys(cairn_api::error_chain(&e)))?;
        let plan = source.plan()?;
        // Before anything else touches the disk: the digests every write is checked
        // against are only as good as the manifest that names them.
        let (manifest, how) = source.manifest(&trust)?;
        let signed = match how {
            Trust::SignedBy(key) => format!("signed by release key {}", key.fingerprint()),
            Trust::Unchecked => {
                tracing::warn!(
                    keys = %self.release_keys.display(),
                    "this install environment trusts no release key: install.json is not checked"
                );
                "unsigned: this install environment trusts no release key".into()
            }
        };
        progress.step(
            InstallStep::Started,
            0,
            Some(manifest.root_image.size),
            format!(
                "installing cairn {} ({}), {signed}",
                manifest.version, plan.name
            ),
        );
        let hint_text = self
            .disk_hint
            .clone()
            .or(plan.disk_hint.clone())
            .unwrap_or_default();
        let (path, partitions, description) = match &self.target {
            Some(path) => (path.clone(), Vec::new(), path.display().to_string()),
            None => {
                let hint = Hint::parse(&hint_text)?;
                let disks = discover(&self.sysfs, std::path::Path::new("/dev"))
                    .map_err(|e| AgentError::Discover(format!("{}: {e}", self.sysfs.display())))?;
                let d = select(&disks, &hint, &hint_text)?;
                let description = format!(
                    "{} ({} GiB{})",
                    d.dev.display(),
                    d.size >> 30,
                    d.serial
                        .as_deref()
                        .map(|s| format!(", serial {s}"))
                        .unwrap_or_default()
                );
                (d.dev.clone(), d.partitions.clone(), description)
            }
        };
        let mut target = FileTarget::open(&path)
            .map_err(|e| AgentError::Discover(format!("opening {}: {e}", path.display())))?;
        progress.step(
            InstallStep::DiskSelected,
            0,
            Some(manifest.root_image.size),
            description.clone(),
        );
        let target: &mut dyn Target = &mut target;
        check_blank(target, &partitions, plan.wipe || self.wipe)?;
        install(
            target,
            source,
            &manifest,
            &plan,
            progress,
            self.keep_on_error,
        )?;
        Ok(format!("cairn {} on {description}", manifest.version))
    }
}

/// Why the agent stopped before or during the install.
#[derive(Debug, thiserror::Error)]
enum AgentError {
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Select(#[from] disks::SelectError),
    #[error("finding disks: {0}")]
    Discover(String),
    #[error("reading the trusted release keys: {0}")]
    Keys(String),
    #[error(transparent)]
    Install(#[from] InstallError),
}

/// Reboots through busybox's `reboot -f` (the install environment has no init system to
/// ask; the agent synced every write already).
fn reboot() {
    tracing::info!("rebooting into the installed system");
    if let Err(error) = std::process::Command::new("reboot").arg("-f").status() {
        tracing::error!(%error, "reboot failed");
    }
}
