//! `cairn-agent`: the install agent. Parses arguments and hands over to `cairn_installer::agent`.

use std::process::ExitCode;

use cairn_installer::agent::AgentCli;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = AgentCli::parse();
    cairn_api::cli::init_tracing(&cli.log);
    cairn_api::cli::finish(cli.run().await)
}
