//! The binaries answer `--help` and `--version`, unbuilt commands refuse honestly, and
//! plain-HTTP Redfish needs its flag.

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

/// `cairn rack provision` over a `redfish+http://` BMC: without the flag the server fails at
/// once with the way out and nothing is sent; with it the BMC is tried (here nothing
/// listens) after a warning naming it, without the password.
/// `cairn rack provision` of `d`'s rack.yaml and artifacts/, with a hub and a boot server
/// nobody answers at, and `d`'s token and hub CA files.
fn rack_provision(d: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cairn"));
    c.args(["rack", "provision"])
        .arg(d.join("rack.yaml"))
        .arg("--artifacts")
        .arg(d.join("artifacts"))
        .args([
            "--hub",
            "https://127.0.0.1:9/",
            "--boot-server",
            "http://127.0.0.1:9/",
        ])
        .arg("--token-file")
        .arg(d.join("token"))
        .arg("--hub-ca")
        .arg(d.join("hub-ca.pem"));
    c
}

#[test]
fn rack_provision_refuses_plain_http_redfish_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("artifacts/pxe")).unwrap();
    for f in ["pxe/vmlinuz", "pxe/initrd.img"] {
        std::fs::write(d.join("artifacts").join(f), b"").unwrap();
    }
    std::fs::write(
        d.join("creds.yaml"),
        "username: admin\npassword: pw-not-in-logs\n",
    )
    .unwrap();
    std::fs::write(d.join("token"), "cairn-op.test.unused\n").unwrap();
    std::fs::write(d.join("hub-ca.pem"), "").unwrap();
    std::fs::write(
        d.join("rack.yaml"),
        "servers:\n  - name: s1\n    bmc: redfish+http://admin@127.0.0.1:1\n    credentials: creds.yaml\n    boot_mac: 52:54:00:00:79:01\n",
    )
    .unwrap();
    let provision = |extra: &[&str]| {
        let out = rack_provision(d)
            .args(["--boot", "pxe", "--max-attempts", "1", "--output", "json"])
            .args(extra)
            .output()
            .unwrap();
        // Each run starts from scratch, not from the previous run's failure.
        let _ = std::fs::remove_file(d.join("rack.state.json"));
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, stdout, stderr) = provision(&[]);
    assert_eq!(code, Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("in clear") && stdout.contains("--allow-insecure-redfish"),
        "{stdout}"
    );
    assert!(!stderr.contains("plain-HTTP Redfish allowed"), "{stderr}");

    let (code, stdout, stderr) = provision(&["--allow-insecure-redfish"]);
    assert_eq!(
        code,
        Some(1),
        "nothing listens on port 1: {stdout}\n{stderr}"
    );
    assert!(!stdout.contains("--allow-insecure-redfish"), "{stdout}");
    assert_eq!(
        stderr.matches("plain-HTTP Redfish allowed").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(!stderr.contains("pw-not-in-logs") && !stdout.contains("pw-not-in-logs"));
}

/// A misspelt `firmware_profile` stops `cairn rack provision` before anything starts: exit 3
/// naming the server and the profiles known, and its BMC never hears from cairn.
#[test]
fn rack_provision_refuses_an_unknown_firmware_profile_before_touching_a_bmc() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("artifacts/pxe")).unwrap();
    for f in ["pxe/vmlinuz", "pxe/initrd.img"] {
        std::fs::write(d.join("artifacts").join(f), b"").unwrap();
    }
    std::fs::write(d.join("creds.yaml"), "username: admin\npassword: pw\n").unwrap();
    std::fs::write(d.join("token"), "cairn-op.test.unused\n").unwrap();
    std::fs::write(d.join("hub-ca.pem"), "").unwrap();
    // The "BMC": a listener that would see any connection.
    let bmc = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bmc.set_nonblocking(true).unwrap();
    let port = bmc.local_addr().unwrap().port();
    std::fs::write(
        d.join("rack.yaml"),
        format!(
            "servers:\n  - name: s1\n    bmc: redfish+http://admin@127.0.0.1:{port}\n    credentials: creds.yaml\n    boot_mac: 52:54:00:00:79:01\n    firmware_profile: emulatr\n"
        ),
    )
    .unwrap();
    let out = rack_provision(d)
        .args(["--boot", "pxe", "--allow-insecure-redfish"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("server s1")
            && stderr.contains("emulatr")
            && stderr.contains("emulator")
            && stderr.contains("--profiles"),
        "{stderr}"
    );
    assert_eq!(
        bmc.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the BMC was contacted"
    );
    assert!(!d.join("rack.state.json").exists(), "nothing was started");
}
