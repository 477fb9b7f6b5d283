//! `cairn boot-server`: proxy DHCP, TFTP and HTTP/iPXE for servers being installed.

use cairn_api::cli::{Exit, not_built};
use clap::Args;

/// Serve PXE to the servers of an inventory.
#[derive(Debug, Args)]
pub struct BootServerArgs {}

impl BootServerArgs {
    /// Runs the boot server.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        Ok(not_built("cairn boot-server", "issue 6"))
    }
}
