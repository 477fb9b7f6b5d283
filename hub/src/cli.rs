//! `cairn-hub ...`: the server's own command line.

use cairn_api::cli::{Exit, LogArgs, not_built};
use clap::{Parser, Subcommand};

/// The cairn hub: enrollment, fleet registry, hosted control planes, upgrades.
#[derive(Debug, Parser)]
#[command(name = "cairn-hub", version, about, long_about = None)]
pub struct HubCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    command: HubCommand,
}

#[derive(Debug, Subcommand)]
enum HubCommand {
    /// Create the hub CA, server certificate and first admin token.
    Init,
    /// Serve the API and web console.
    Serve,
}

impl HubCli {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn-hub", "issue 5"))
    }
}
