//! `cairn-agent`: runs in the install environment and writes the appliance image to disk.

use cairn_api::cli::{Exit, LogArgs, not_built};
use clap::Parser;

/// The cairn install agent: picks the target disk, writes and verifies the image, reboots.
#[derive(Debug, Parser)]
#[command(name = "cairn-agent", version, about, long_about = None)]
pub struct AgentCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
}

impl AgentCli {
    /// Runs the install.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn-agent", "issue 6"))
    }
}
