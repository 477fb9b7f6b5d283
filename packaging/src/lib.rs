//! Man pages and shell completions for every cairn command, written while packages are
//! made (`scripts/package`): the text comes from the same clap definitions the binaries
//! parse with, so `--help`, `man cairn-node-run` and Tab completion never disagree.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

/// The shells completions are written for, with the file name each one's loader looks for
/// (Debian: /usr/share/bash-completion/completions/NAME, /usr/share/zsh/vendor-completions/_NAME,
/// /usr/share/fish/vendor_completions.d/NAME.fish).
const SHELLS: [(Shell, &str, &str, &str); 3] = [
    (Shell::Bash, "bash", "", ""),
    (Shell::Zsh, "zsh", "_", ""),
    (Shell::Fish, "fish", "", ".fish"),
];

/// Every shipped command: `cairn`, `cairn-agent`, `cairn-hub`, `cairn-node`.
pub fn commands() -> Vec<clap::Command> {
    vec![
        cairn_installer::cli::Cli::command(),
        cairn_installer::agent::AgentCli::command(),
        cairn_hub::cli::HubCli::command(),
        cairn_node_daemon::cli::NodeCli::command(),
    ]
}

/// Writes `man/<command>/<command>[-<subcommand>...].1` (one page per visible subcommand, as
/// git does; one directory per binary, i.e. per package) and `completions/<shell>/<file>` for
/// every command under `out`; returns the files.
pub fn generate(out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let commands = commands();
    let binaries: Vec<String> = commands.iter().map(|c| c.get_name().to_owned()).collect();
    for cmd in commands {
        let man = out.join("man").join(cmd.get_name());
        std::fs::create_dir_all(&man).with_context(|| format!("creating {}", man.display()))?;
        let mut built = cmd.clone().disable_help_subcommand(true);
        built.build();
        pages(&built, true, &binaries, &man)?;
        for (shell, dir, prefix, suffix) in SHELLS {
            let dir = out.join("completions").join(dir);
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let name = cmd.get_name().to_owned();
            let path = dir.join(format!("{prefix}{name}{suffix}"));
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            clap_complete::generate(shell, &mut cmd.clone(), name, &mut file);
        }
    }
    let mut files = Vec::new();
    collect(out, &mut files)?;
    files.sort();
    Ok(files)
}

/// The pages of `cmd` and its visible subcommands. A subcommand whose page name is another
/// binary's (`cairn hub` would be cairn-hub(1), the server's) gets none: cairn.1 lists it, and
/// its own subcommands keep theirs (cairn-hub-login(1), ...), so no two packages ship a file.
fn pages(cmd: &clap::Command, top: bool, binaries: &[String], dir: &Path) -> anyhow::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        pages(sub, false, binaries, dir)?;
    }
    let page = clap_mangen::Man::new(cmd.clone());
    let name = page.get_filename();
    if top || !binaries.iter().any(|b| format!("{b}.1") == name) {
        page.generate_to(dir)
            .with_context(|| format!("writing the man page {name}"))?;
    }
    Ok(())
}
fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}
