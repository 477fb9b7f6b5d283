//! `cairn-lab ...`.

use cairn_api::cli::{Exit, LogArgs, not_built};
use clap::{Parser, Subcommand};

/// Rehearse a site: an emulated rack of QEMU servers with real BMC emulators.
#[derive(Debug, Parser)]
#[command(name = "cairn-lab", version, about, long_about = None)]
pub struct LabCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    command: LabCommand,
}

#[derive(Debug, Subcommand)]
enum LabCommand {
    /// Start the lab.
    Up,
    /// Remove everything the lab made.
    Down,
    /// Show each server's state.
    Status,
    /// Start, provision every server, and show the fleet.
    Demo,
}

impl LabCli {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn-lab", "issue 8"))
    }
}
