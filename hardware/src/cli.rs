//! `cairn bmc ...`.

use cairn_api::cli::{Exit, not_built};
use clap::{Args, Subcommand};

/// Drive server BMCs over Redfish and IPMI: power, boot device, inventory, media, logs.
#[derive(Debug, Args)]
pub struct BmcArgs {
    #[command(subcommand)]
    command: BmcCommand,
}

#[derive(Debug, Subcommand)]
enum BmcCommand {
    /// Power state and health of each BMC.
    Status,
    /// Power on, off, soft-off, cycle or reset.
    Power,
    /// Set the next (or every) boot device.
    Boot,
    /// Read hardware inventory.
    Inventory,
}

impl BmcArgs {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn bmc", "issue 3"))
    }
}
