//! The binaries answer `--help` and `--version`, and unbuilt commands refuse honestly.

use std::process::Command;

fn run(bin: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin).args(args).output().expect("run binary");
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cairn_help_lists_every_subcommand_of_the_design() {
    let (code, stdout, _) = run(env!("CARGO_BIN_EXE_cairn"), &["--help"]);
    assert_eq!(code, 0);
    for sub in ["bmc", "firmware", "rack", "boot-server", "image", "hub"] {
        assert!(
            stdout.contains(sub),
            "`cairn --help` lacks {sub}:\n{stdout}"
        );
    }
    let (code, stdout, _) = run(env!("CARGO_BIN_EXE_cairn"), &["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout.trim(),
        format!("cairn {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn cairn_agent_answers_help_and_version() {
    let (code, stdout, _) = run(env!("CARGO_BIN_EXE_cairn-agent"), &["--version"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("cairn-agent "), "{stdout}");
    let (code, _, _) = run(env!("CARGO_BIN_EXE_cairn-agent"), &["--help"]);
    assert_eq!(code, 0);
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let (code, _, stderr) = run(env!("CARGO_BIN_EXE_cairn"), &["--no-such-flag"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}

#[test]
fn every_command_reaching_bmcs_takes_allow_insecure_redfish() {
    for command in [
        &["bmc", "status", "--help"][..],
        &["firmware", "plan", "--help"],
        &["rack", "provision", "--help"],
    ] {
        let (code, stdout, _) = run(env!("CARGO_BIN_EXE_cairn"), command);
        assert_eq!(code, 0, "{command:?}");
        assert!(
            stdout.contains("--allow-insecure-redfish"),
            "`cairn {}` lacks the flag:\n{stdout}",
            command.join(" ")
        );
    }
}
