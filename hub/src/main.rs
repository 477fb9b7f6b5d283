//! `cairn-hub`: the hub server. Parses arguments and hands over to `cairn_hub::cli`.

use std::process::ExitCode;

use cairn_hub::cli::HubCli;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = HubCli::parse();
    cairn_api::cli::init_tracing(&cli.log);
    cairn_api::cli::finish(cli.run().await)
}
