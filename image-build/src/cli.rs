//! `cairn image ...`.

use std::path::PathBuf;

use anyhow::Context as _;
use cairn_api::cli::{Exit, OutputFormat};
use clap::{Args, Subcommand};

use crate::build::{self, BuildRequest};
use crate::config::ImageConfig;
use cairn_formats::bundle::{self, BundleError};
use cairn_formats::keys::{PublicKey, SigningKey, TrustStore};

/// Build appliance images and sign update bundles.
///
/// A release goes: `cairn image keygen --out release.key` once per fleet, then
/// `cairn image build --config image.yaml --out DIR --signing-key release.key` per release;
/// nodes trust `release.key.pub` and refuse bundles that `cairn image verify` would refuse.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the disk image, ISO, PXE set and bundle from a config.
    ///
    /// Writes disk.raw, disk.qcow2, root.img.zst, pxe/, installer.iso,
    /// update-VERSION.bundle and manifest.json (size and SHA-256 of each) into --out.
    /// Two builds with the same inputs and SOURCE_DATE_EPOCH are bit-identical (minimal).
    Build {
        /// The image config (see image-build/examples/minimal.yaml and debian.yaml).
        #[arg(long)]
        config: PathBuf,
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// Sign the update bundle and the install manifest (install.json.sig) with this key
        /// (from `cairn image keygen`). Required when the config lists release_keys, and
        /// must be one of them: the install environment and the appliance trust only those.
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Timestamp of every file in the images; defaults to now (not reproducible).
        #[arg(long, env = "SOURCE_DATE_EPOCH")]
        source_date_epoch: Option<u64>,
        /// Keep the Debian packages a `debian` build downloads here, and take them from here
        /// next time (a warm build downloads only the package lists and what changed).
        #[arg(long, value_name = "DIR", default_value = crate::debian::DEFAULT_PACKAGE_CACHE)]
        package_cache: PathBuf,
        /// Download every package again and keep none.
        #[arg(long, conflicts_with = "package_cache")]
        no_package_cache: bool,
        /// Print manifest.json to standard output as JSON instead of a table.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
    /// Make another release's update bundle from a build's root image: a new version, and
    /// files added or replaced (a fixed binary, a config drop-in), without rebuilding the
    /// rest of the image. Reproducible with the same inputs and SOURCE_DATE_EPOCH.
    ///
    /// Example: `cairn image derive --from out/ --version 1.2.1
    /// --add ./cairn-node:/usr/bin/cairn-node --signing-key release.key --out update-1.2.1.bundle`
    Derive {
        /// An output directory of `cairn image build` (its root.img.zst is the base).
        #[arg(long)]
        from: PathBuf,
        /// The new version (written to /etc/cairn-release, os-release and the manifest).
        #[arg(long)]
        version: String,
        /// A version the bundle may be installed over (repeat); none: any.
        #[arg(long = "compatible-from", value_name = "VERSION")]
        compatible_from: Vec<String>,
        /// Put a local file into the image, `LOCAL:/PATH/IN/IMAGE` (repeat); it replaces
        /// what was there and keeps the local file's mode.
        #[arg(long = "add", value_name = "LOCAL:/PATH", value_parser = parse_add)]
        add: Vec<(PathBuf, String)>,
        /// The bundle to write.
        #[arg(long)]
        out: PathBuf,
        /// Sign the bundle with this key (from `cairn image keygen`).
        #[arg(long)]
        signing_key: Option<PathBuf>,
        /// Timestamp of every file in the image; defaults to now (not reproducible).
        #[arg(long, env = "SOURCE_DATE_EPOCH")]
        source_date_epoch: Option<u64>,
    },
    /// Create an Ed25519 signing key (KEY, mode 0600) and its public key (KEY.pub).
    Keygen {
        /// Where to write the private key; the public key goes to the same path plus `.pub`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Sign an update bundle in place (its payload is checked first).
    Sign {
        /// The private key from `cairn image keygen`.
        #[arg(long)]
        key: PathBuf,
        /// The bundle file, e.g. `update-1.2.0.bundle`.
        bundle: PathBuf,
    },
    /// Verify an update bundle: exit 0 only if it is intact and signed by one of the keys.
    Verify {
        /// A trusted public key (`KEY.pub`); repeat to trust several.
        #[arg(long = "pubkey", required = true)]
        pubkeys: Vec<PathBuf>,
        /// The bundle file.
        bundle: PathBuf,
        /// Print the manifest as a table or JSON.
        #[arg(long, value_enum, default_value_t)]
        output: OutputFormat,
    },
}

impl ImageArgs {
    /// Runs the command.
    pub async fn run(self) -> anyhow::Result<Exit> {
        match self.command {
            ImageCommand::Build {
                config,
                out,
                signing_key,
                source_date_epoch,
                package_cache,
                no_package_cache,
                output,
            } => {
                let package_cache = (!no_package_cache).then_some(package_cache);
                build(
                    config,
                    out,
                    signing_key,
                    source_date_epoch,
                    package_cache,
                    output,
                )
                .await
            }
            ImageCommand::Derive {
                from,
                version,
                compatible_from,
                add,
                out,
                signing_key,
                source_date_epoch,
            } => {
                if let Err(message) = crate::config::check_version(&version) {
                    eprintln!("error: --version: {message}");
                    return Ok(Exit::InvalidInput);
                }
                let signing_key = match signing_key.map(|k| SigningKey::read(&k)).transpose() {
                    Ok(k) => k,
                    Err(e) => return invalid(e),
                };
                let request = build::DeriveRequest {
                    from,
                    version,
                    compatible_from,
                    add,
                    out,
                    signing_key,
                    source_date_epoch: epoch_or_now(source_date_epoch)?,
                };
                let manifest =
                    tokio::task::spawn_blocking(move || build::derive(&request)).await??;
                eprintln!(
                    "wrote the bundle for version {} (root image {} bytes)",
                    manifest.version, manifest.root_image.size
                );
                Ok(Exit::Success)
            }
            ImageCommand::Keygen { out } => {
                let key = SigningKey::generate()?;
                let public = out.with_file_name(format!(
                    "{}.pub",
                    out.file_name()
                        .context("--out needs a file name")?
                        .to_string_lossy()
                ));
                key.write(&out)?;
                key.public_key().write(&public)?;
                eprintln!(
                    "wrote {} and {} (fingerprint {})",
                    out.display(),
                    public.display(),
                    key.public_key().fingerprint()
                );
                Ok(Exit::Success)
            }
            ImageCommand::Sign { key, bundle } => {
                let key = match SigningKey::read(&key) {
                    Ok(k) => k,
                    Err(e) => return invalid(e),
                };
                let bundle_path = bundle;
                match tokio::task::spawn_blocking(move || bundle::sign(&bundle_path, &key)).await? {
                    Ok(m) => {
                        eprintln!("signed bundle for version {}", m.version);
                        Ok(Exit::Success)
                    }
                    Err(e) => refused(e),
                }
            }
            ImageCommand::Verify {
                pubkeys,
                bundle,
                output,
            } => {
                let mut keys = Vec::new();
                for path in &pubkeys {
                    match PublicKey::read(path) {
                        Ok(k) => keys.push(k),
                        Err(e) => return invalid(e),
                    }
                }
                let trust = TrustStore::new(keys);
                let verified =
                    match tokio::task::spawn_blocking(move || bundle::verify(&bundle, &trust))
                        .await?
                    {
                        Ok(v) => v,
                        Err(e) => return refused(e),
                    };
                let m = &verified.manifest;
                match output {
                    OutputFormat::Json => println!("{}", serde_json::to_string_pretty(m)?),
                    OutputFormat::Table => {
                        println!("OK: signed by {}", verified.signer.fingerprint());
                        println!("version          {}", m.version);
                        println!("architecture     {}", m.architecture);
                        println!("compatible from  {}", m.compatible_from.join(", "));
                        println!(
                            "root image       {} bytes, sha256 {}",
                            m.root_image.size, m.root_image.sha256
                        );
                        match &m.root_frames {
                            Some(f) => println!(
                                "frame digests    {} of {} bytes, root {} (format 2)",
                                f.frames.len(),
                                f.frame_size,
                                f.root
                            ),
                            None => println!("frame digests    none (format 1)"),
                        }
                        println!("build time       {}", m.build_time);
                    }
                }
                Ok(Exit::Success)
            }
        }
    }
}

async fn build(
    config: PathBuf,
    out: PathBuf,
    signing_key: Option<PathBuf>,
    source_date_epoch: Option<u64>,
    package_cache: Option<PathBuf>,
    output: OutputFormat,
) -> anyhow::Result<Exit> {
    let config = match ImageConfig::load(&config) {
        Ok(c) => c,
        Err(e) => return invalid(e),
    };
    let signing_key = match signing_key.map(|k| SigningKey::read(&k)).transpose() {
        Ok(k) => k,
        Err(e) => return invalid(e),
    };
    let binaries = match &config.binaries {
        Some(b) => b.clone(),
        None => std::env::current_exe()
            .context("finding the running executable")?
            .parent()
            .context("the running executable has no directory")?
            .to_owned(),
    };
    let request = BuildRequest {
        config,
        out,
        signing_key,
        source_date_epoch: epoch_or_now(source_date_epoch)?,
        binaries,
        package_cache,
    };
    let started = std::time::Instant::now();
    let manifest = tokio::task::spawn_blocking(move || {
        build::build(&request, |step| {
            tracing::info!(elapsed_s = started.elapsed().as_secs(), "{step}")
        })
    })
    .await??;
    tracing::info!(elapsed_s = started.elapsed().as_secs(), "build finished");
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&manifest)?),
        OutputFormat::Table => {
            for (path, d) in &manifest.files {
                println!("{:>12}  {}  {path}", d.size, d.sha256);
            }
        }
    }
    Ok(Exit::Success)
}

fn epoch_or_now(given: Option<u64>) -> anyhow::Result<u64> {
    Ok(match given {
        Some(e) => e,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
    })
}

fn parse_add(text: &str) -> Result<(PathBuf, String), String> {
    match text.split_once(':') {
        Some((local, path)) if !local.is_empty() && path.starts_with('/') => {
            Ok((PathBuf::from(local), path.to_owned()))
        }
        _ => Err(format!("{text:?} is not LOCAL:/PATH/IN/IMAGE")),
    }
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> anyhow::Result<Exit> {
    eprintln!("error: {:#}", anyhow::Error::new(e));
    Ok(Exit::InvalidInput)
}

fn refused(e: BundleError) -> anyhow::Result<Exit> {
    eprintln!("error: bundle refused: {:#}", anyhow::Error::new(e));
    Ok(Exit::Failed)
}
