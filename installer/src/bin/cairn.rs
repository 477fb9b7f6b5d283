//! `cairn`: the operator CLI. Parses arguments and hands over to `cairn_installer::cli`.

use std::process::ExitCode;

use cairn_installer::cli::Cli;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cairn_api::cli::init_tracing(&cli.log);
    cairn_api::cli::finish(cli.run().await)
}
