//! The generator writes a man page and completions for every shipped command and subcommand.

use std::path::Path;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_command_gets_a_man_page_and_completions() {
    let out = tempfile::tempdir().unwrap();
    let files = cairn_packaging::generate(out.path()).unwrap();
    for f in &files {
        assert!(!read(f).trim().is_empty(), "{} is empty", f.display());
    }
    for cmd in ["cairn", "cairn-agent", "cairn-hub", "cairn-node"] {
        let page = read(&out.path().join(format!("man/{cmd}/{cmd}.1")));
        assert!(page.starts_with(".ie"), "{cmd}.1 is no roff: {page:.80}");
        assert!(
            page.contains(&format!(".TH {cmd} 1")),
            "{cmd}.1 has no title"
        );
        let bash = read(&out.path().join(format!("completions/bash/{cmd}")));
        assert!(
            bash.contains(&format!("-F _{}", cmd.replace('-', "__"))),
            "{bash:.200}"
        );
        assert!(out.path().join(format!("completions/zsh/_{cmd}")).is_file());
        assert!(
            out.path()
                .join(format!("completions/fish/{cmd}.fish"))
                .is_file()
        );
    }
    // Subcommands have pages of their own, with their options.
    let run = read(&out.path().join("man/cairn-node/cairn-node-run.1"));
    assert!(run.contains("seed\\-dir"), "{run}");
    let serve = read(&out.path().join("man/cairn-hub/cairn-hub-serve.1"));
    assert!(serve.contains("listen"), "{serve}");
    assert!(out.path().join("man/cairn/cairn-boot-server.1").is_file());
    // `cairn hub login` keeps its page; cairn-hub.1 is the server's, not `cairn hub`'s.
    assert!(read(&out.path().join("man/cairn/cairn-hub-login.1")).contains(".TH cairn-hub-login"));
    assert!(read(&out.path().join("man/cairn-hub/cairn-hub.1")).contains("serve"));
    assert!(!out.path().join("man/cairn/cairn-hub.1").exists());
    // Completions know subcommands.
    let bash = read(&out.path().join("completions/bash/cairn"));
    assert!(bash.contains("boot-server"));
}
