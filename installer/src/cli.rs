//! The `cairn` command line: one entry point for a site technician or fleet operator.

use cairn_api::cli::{Exit, LogArgs};
use clap::{Parser, Subcommand};

use crate::{boot_server::BootServerArgs, rack::RackArgs};

/// cairn: land a distributed cloud on bare metal.
///
/// Start with `cairn bmc status --bmc redfish://admin@bmc-1` to see a server, or
/// `cairn rack provision rack.yaml` to install a whole rack.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about)]
pub struct Cli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drive server BMCs over Redfish and IPMI.
    Bmc(cairn_hardware::cli::BmcArgs),
    /// Plan, apply and check BIOS and firmware baselines.
    Firmware(cairn_firmware_profiles::cli::FirmwareArgs),
    /// Provision a rack of servers end to end.
    Rack(RackArgs),
    /// Serve PXE (proxy DHCP, TFTP, HTTP/iPXE) to servers being installed.
    BootServer(BootServerArgs),
    /// Build appliance images and sign update bundles.
    Image(cairn_image_build::cli::ImageArgs),
    /// Talk to a cairn hub.
    Hub(cairn_hub_client::cli::HubArgs),
}

impl Cli {
    /// Runs the chosen subcommand.
    pub async fn run(self) -> anyhow::Result<Exit> {
        Ok(match self.command {
            Command::Bmc(args) => args.run().await?,
            Command::Firmware(args) => args.run().await?,
            Command::Rack(args) => args.run().await?,
            Command::BootServer(args) => args.run().await?,
            Command::Image(args) => args.run().await?,
            Command::Hub(args) => args.run().await?,
        })
    }
}
