//! `cairn-node ...`.

use cairn_api::cli::{Exit, LogArgs, not_built};
use cairn_netplan::cli::NetArgs;
use clap::{Parser, Subcommand};

/// The cairn appliance daemon: registration, heartbeats, kubelet bootstrap, networking.
#[derive(Debug, Parser)]
#[command(name = "cairn-node", version, about, long_about = None)]
pub struct NodeCli {
    /// Logging options, shared by every cairn binary.
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Host networking from netplan YAML.
    Net(NetArgs),
    /// Run the daemon (as cairn-node.service).
    Run,
    /// Show the node's state.
    Status,
}

impl NodeCli {
    /// Runs the command.
    pub async fn run(self) -> Result<Exit, std::convert::Infallible> {
        match self.command {
            NodeCommand::Net(net) => net.run().await,
            NodeCommand::Run | NodeCommand::Status => Ok(not_built("cairn-node", "issue 7")),
        }
    }
}
