//! `cairn rack provision`: the per-server provisioning state machine.

use cairn_api::cli::{Exit, not_built};
use clap::{Args, Subcommand};

/// Provision a rack of servers from its inventory.
#[derive(Debug, Args)]
pub struct RackArgs {
    #[command(subcommand)]
    command: RackCommand,
}

#[derive(Debug, Subcommand)]
enum RackCommand {
    /// Inspect, baseline, boot the installer, install and register every server.
    Provision,
}

impl RackArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn rack", "issue 8"))
    }
}
