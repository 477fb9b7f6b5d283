//! `cairn-node`: the appliance daemon. Parses arguments and hands over to `cairn_node_daemon::cli`.

use std::process::ExitCode;

use cairn_node_daemon::cli::NodeCli;
use clap::Parser;

// One thread: the daemon waits on the hub and systemd most of the time, and a single-threaded
// runtime keeps its memory footprint small (BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = NodeCli::parse();
    cairn_api::cli::init_tracing(&cli.log);
    cairn_api::cli::finish(cli.run().await)
}
