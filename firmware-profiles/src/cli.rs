//! `cairn firmware ...`.

use cairn_api::cli::{Exit, not_built};
use clap::{Args, Subcommand};

/// Plan, apply and check BIOS and firmware baselines.
#[derive(Debug, Args)]
pub struct FirmwareArgs {
    #[command(subcommand)]
    command: FirmwareCommand,
}

#[derive(Debug, Subcommand)]
enum FirmwareCommand {
    /// Show what would change; changes nothing.
    Plan,
    /// Stage settings, reset when needed, verify.
    Apply,
    /// Report drift across a rack.
    Check,
}

impl FirmwareArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn firmware", "issue 3"))
    }
}
