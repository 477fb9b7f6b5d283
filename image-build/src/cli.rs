//! `cairn image ...`.

use std::path::PathBuf;

use anyhow::Context as _;
use cairn_api::cli::{Exit, OutputFormat, not_built};
use clap::{Args, Subcommand};

use crate::bundle::{self, BundleError};
use crate::keys::{PublicKey, SigningKey, TrustStore};

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
    Build,
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
            ImageCommand::Build => Ok(not_built("cairn image build", "issue 6")),
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
                        println!("build time       {}", m.build_time);
                    }
                }
                Ok(Exit::Success)
            }
        }
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
