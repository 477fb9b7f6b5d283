//! `cairn-packaging`: writes the man pages and shell completions the .deb packages ship
//! (`cairn-packaging generate --out DIR`; `scripts/package` runs it).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use cairn_api::cli::Exit;
use clap::{Parser, Subcommand};

/// Packaging-time generator for the cairn .deb packages.
#[derive(Debug, Parser)]
#[command(name = "cairn-packaging", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write man/*.1 and completions/{bash,zsh,fish}/* for cairn, cairn-agent, cairn-hub and
    /// cairn-node; DIR is emptied first so no page of a removed subcommand is left behind.
    Generate {
        /// The output directory.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn run(cli: Cli) -> anyhow::Result<Exit> {
    let Command::Generate { out } = cli.command;
    match std::fs::remove_dir_all(&out) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("emptying {}", out.display()));
        }
        _ => {}
    }
    let files = cairn_packaging::generate(&out)?;
    println!("{} files in {}", files.len(), out.display());
    Ok(Exit::Success)
}

fn main() -> ExitCode {
    cairn_api::cli::finish(run(Cli::parse()))
}
