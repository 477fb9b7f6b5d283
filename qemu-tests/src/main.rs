//! `cairn-lab`: the emulated rack. Parses arguments and hands over to `cairn_qemu_tests::cli`.

use std::process::ExitCode;

use cairn_qemu_tests::cli::LabCli;
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = LabCli::parse();
    cairn_api::cli::init_tracing(&cli.log);
    cairn_api::cli::finish(cli.run().await)
}
