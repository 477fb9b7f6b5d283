//! Where the agent gets its plan and payload, and where it reports: the boot server over
//! HTTP (PXE installs), or a directory on the install ISO (no server, reports only logged).

use std::io::Read;
use std::path::PathBuf;

use cairn_api::{InstallProgress, InstallStep};
use cairn_formats::install::{self, InstallManifest, ManifestTrustError, Trust};
use cairn_formats::keys::TrustStore;

use super::plan::{InstallPlan, PlanGrant, SEED_HUB_CA, SEED_TOKEN};

/// Why the plan or a payload could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// An HTTP request failed.
    #[error("GET {url}")]
    Http {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// A file could not be read.
    #[error("reading {path}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A document did not parse.
    #[error("{what} is invalid: {reason}")]
    Invalid {
        /// Which document.
        what: String,
        /// The parser's message.
        reason: String,
    },
    /// The install manifest is not signed by a trusted release key.
    #[error(transparent)]
    Trust(#[from] ManifestTrustError),
}

impl SourceError {
    /// Whether the file is absent (not a failure to reach it).
    fn is_not_found(&self) -> bool {
        match self {
            Self::Http { source, .. } => source.status() == Some(reqwest::StatusCode::NOT_FOUND),
            Self::File { source, .. } => source.kind() == std::io::ErrorKind::NotFound,
            Self::Invalid { .. } | Self::Trust(_) => false,
        }
    }
}

/// The most `install.json` may hold (it is a page of digests): a source streaming more is
/// refused rather than read into memory.
const MAX_MANIFEST: u64 = 1 << 20;

/// A source of the install plan and payload files (`install.json`, `root.img.zst`, ...).
pub trait Source: Send {
    /// The plan for this machine.
    fn plan(&self) -> Result<InstallPlan, SourceError>;
    /// The install manifest (digests of every payload file), checked against `trust`
    /// before anything is written: with any trusted release key, only an `install.json`
    /// that one of them signed (`install.json.sig`) is taken.
    fn manifest(&self, trust: &TrustStore) -> Result<(InstallManifest, Trust), SourceError> {
        let json = read_small(self, "install.json", MAX_MANIFEST)?;
        let signature = if trust.keys().is_empty() {
            None
        } else {
            match read_small(self, install::SIGNATURE_FILE, 64) {
                Ok(sig) => Some(sig),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e),
            }
        };
        Ok(install::verify(&json, signature.as_deref(), trust)?)
    }
    /// Opens a payload file as a stream.
    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, SourceError>;
    /// Reports progress and logs it (best effort: a lost report never fails the install).
    fn report(&self, progress: &InstallProgress);
}

/// The boot server: `POST {base}/v1/install/plan` with the script's one-time nonce as
/// bearer (once), `GET {base}/pxe/{file}`, and `POST {base}/v1/install/progress` with the
/// report token the plan came with.
pub struct HttpSource {
    base: String,
    nonce: String,
    report_token: std::sync::OnceLock<String>,
    client: reqwest::blocking::Client,
}

impl HttpSource {
    /// A source on the boot server at `base` (e.g. `http://192.168.77.1:8080`), with the
    /// nonce the iPXE script passed.
    pub fn new(base: &str, nonce: String) -> Result<Self, SourceError> {
        // The install environment has no system CA store, and the boot server speaks plain
        // HTTP (payloads are verified by digest): an empty root store, so nothing is trusted
        // by accident and the client builds without system certificates.
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let client = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls)
            // Payloads are large and streamed: no overall timeout, only for connecting.
            .timeout(None)
            .connect_timeout(std::time::Duration::from_secs(10))
            .build()
            .map_err(|source| SourceError::Http {
                url: base.to_owned(),
                source,
            })?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            nonce,
            report_token: std::sync::OnceLock::new(),
            client,
        })
    }
}

impl Source for HttpSource {
    fn plan(&self) -> Result<InstallPlan, SourceError> {
        let url = format!("{}/v1/install/plan", self.base);
        let grant: PlanGrant = self
            .client
            .post(&url)
            .bearer_auth(&self.nonce)
            .send()
            .and_then(|r| r.error_for_status())
            .and_then(|r| r.json())
            .map_err(|source| SourceError::Http { url, source })?;
        let _ = self.report_token.set(grant.report_token);
        Ok(grant.plan)
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        let url = format!("{}/pxe/{name}", self.base);
        let answer = self
            .client
            .get(&url)
            .send()
            .and_then(|r| r.error_for_status())
            .map_err(|source| SourceError::Http { url, source })?;
        Ok(Box::new(answer))
    }

    fn report(&self, progress: &InstallProgress) {
        log_progress(progress);
        // Before the plan there is no report token: the failure is only logged.
        let Some(token) = self.report_token.get() else {
            return;
        };
        let url = format!("{}/v1/install/progress", self.base);
        let sent = self
            .client
            .post(&url)
            .bearer_auth(token)
            .json(progress)
            .timeout(std::time::Duration::from_secs(10))
            .send()
            .and_then(|r| r.error_for_status());
        if let Err(error) = sent {
            tracing::warn!(%error, step = ?progress.step, "progress report lost");
        }
    }
}

/// A directory holding the payload (`cairn/` on the install ISO), with an optional
/// `seed/` (a cairn-node seed: node.yaml, netplan/*.yaml, hub-ca.pem, enrollment-token; plus
/// install.yaml with the disk hint).
pub struct DirSource {
    dir: PathBuf,
}

impl DirSource {
    /// A source reading `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }
}

impl Source for DirSource {
    fn plan(&self) -> Result<InstallPlan, SourceError> {
        let seed = self.dir.join("seed");
        let read = |name: &str| -> Result<Option<String>, SourceError> {
            let path = seed.join(name);
            match std::fs::read_to_string(&path) {
                Ok(text) => Ok(Some(text)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(source) => Err(SourceError::File { path, source }),
            }
        };
        let mut plan: InstallPlan = match read("install.yaml")? {
            Some(text) => serde_yaml_ng::from_str(&text).map_err(|e| SourceError::Invalid {
                what: seed.join("install.yaml").display().to_string(),
                reason: e.to_string(),
            })?,
            None => InstallPlan::default(),
        };
        if plan.node_yaml.is_none() {
            plan.node_yaml = read("node.yaml")?;
        }
        if plan.hub_ca.is_none() {
            plan.hub_ca = read(SEED_HUB_CA)?;
        }
        if plan.enrollment_token.is_none() {
            plan.enrollment_token = read(SEED_TOKEN)?.map(|t| t.trim().to_owned());
        }
        if let Ok(entries) = std::fs::read_dir(seed.join("netplan")) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(text) = read(&format!("netplan/{name}"))? {
                    plan.netplan.entry(name).or_insert(text);
                }
            }
        }
        Ok(plan)
    }

    fn open(&self, name: &str) -> Result<Box<dyn Read + Send>, SourceError> {
        let path = self.dir.join(name);
        let file =
            std::fs::File::open(&path).map_err(|source| SourceError::File { path, source })?;
        Ok(Box::new(std::io::BufReader::with_capacity(1 << 20, file)))
    }

    fn report(&self, progress: &InstallProgress) {
        log_progress(progress);
    }
}

/// Reads `name` whole, refusing one longer than `limit` bytes.
fn read_small<S: Source + ?Sized>(
    source: &S,
    name: &str,
    limit: u64,
) -> Result<Vec<u8>, SourceError> {
    let mut bytes = Vec::new();
    source
        .open(name)?
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| SourceError::File {
            path: name.into(),
            source,
        })?;
    if bytes.len() as u64 > limit {
        return Err(SourceError::Invalid {
            what: name.into(),
            reason: format!("longer than {limit} bytes"),
        });
    }
    Ok(bytes)
}

/// The log line every report also produces.
fn log_progress(p: &InstallProgress) {
    if p.step == InstallStep::Failed {
        tracing::error!(step = ?p.step, message = %p.message, "install failed");
    } else {
        tracing::info!(step = ?p.step, bytes = p.bytes_written, total = ?p.bytes_total, message = %p.message, "install progress");
    }
}
