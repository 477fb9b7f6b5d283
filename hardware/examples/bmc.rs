//! `cairn bmc` as a standalone binary: the same arguments and code as the subcommand of
//! `cairn`, without the hub and installer it links. Used by `hardware/bench/bmc-status.sh`
//! so the benchmark needs only this crate built:
//!   cargo build --release -p cairn-hardware --example bmc
//!   target/release/examples/bmc status --inventory rack.yaml

use std::process::ExitCode;

use cairn_api::cli::{LogArgs, finish, init_tracing};
use cairn_hardware::cli::BmcArgs;
use clap::Parser;

/// Drive server BMCs over Redfish and IPMI.
#[derive(Parser)]
#[command(name = "cairn-bmc")]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    bmc: BmcArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    finish(cli.bmc.run().await)
}
