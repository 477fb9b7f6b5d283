//! `cairn image ...`.

use cairn_api::cli::{Exit, not_built};
use clap::{Args, Subcommand};

/// Build appliance images and sign update bundles.
#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    command: ImageCommand,
}

#[derive(Debug, Subcommand)]
enum ImageCommand {
    /// Build the disk image, ISO, PXE set and bundle from a config.
    Build,
    /// Create an Ed25519 signing key.
    Keygen,
    /// Sign an update bundle.
    Sign,
    /// Verify an update bundle.
    Verify,
}

impl ImageArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn image", "issue 6"))
    }
}
