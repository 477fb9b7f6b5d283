//! `cairn-net`: the same commands as `cairn-node net`, as a small standalone binary for
//! tests in network namespaces and for the QEMU guest (no daemon dependencies).

use cairn_api::cli::{LogArgs, finish, init_tracing};
use cairn_netplan::cli::NetArgs;
use clap::Parser;

/// netplan YAML through netlink (the `cairn-node net` commands).
#[derive(Debug, Parser)]
#[command(name = "cairn-net", version)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    net: NetArgs,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(&cli.log);
    finish(cli.net.run().await)
}
