//! `cairn hub ...`: the operator's client for the hub API.

use cairn_api::cli::{Exit, not_built};
use clap::{Args, Subcommand};

/// Talk to a cairn hub: tokens, appliances, control planes, VPCs, audit.
#[derive(Debug, Args)]
pub struct HubArgs {
    #[command(subcommand)]
    command: HubClientCommand,
}

#[derive(Debug, Subcommand)]
enum HubClientCommand {
    /// Save the hub URL, its CA fingerprint and your token.
    Login,
    /// Enrollment tokens.
    Token,
    /// Appliances in the fleet.
    Appliances,
}

impl HubArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn hub", "issue 5"))
    }
}
