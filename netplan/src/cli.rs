//! `cairn-node net ...`.

use cairn_api::cli::{Exit, not_built};
use clap::{Args, Subcommand};

/// Apply host networking from netplan YAML, safely.
#[derive(Debug, Args)]
pub struct NetArgs {
    #[command(subcommand)]
    command: NetCommand,
}

#[derive(Debug, Subcommand)]
enum NetCommand {
    /// Apply the configuration now.
    Apply,
    /// Show what apply would change.
    Diff,
    /// Apply with automatic rollback unless confirmed.
    Try,
    /// Keep a configuration applied with `try`.
    Confirm,
    /// Show the applied state.
    Status,
}

impl NetArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn-node net", "issue 4"))
    }
}
