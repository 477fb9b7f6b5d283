//! The identity key in a TPM (a real `swtpm`, reached over its TCP TCTI) against a real
//! `cairn-hub`: the node registers with a CSR the TPM signed, heartbeats over mTLS the TPM
//! signs, keeps its identity across a restart, re-keys in the TPM at renewal, and no private
//! key is ever written under its root. Site policy: `required` without a TPM refuses to start
//! naming the setting; `preferred` without one keeps the key in a file. The stored key is
//! useless with another TPM.

mod common;

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_test_support::ports::free_tcp_port;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const NO_NET: &str = "network:\n  manage: false\n";

/// A software TPM 2.0 on loopback, its state in a temporary directory, stopped on drop.
struct Swtpm {
    port: u16,
    _child: ChildGuard,
}

impl Swtpm {
    fn start(state: &Path) -> Self {
        std::fs::create_dir_all(state).unwrap();
        // swtpm takes the command port and the control port next to it, as the swtpm TCTI
        // expects.
        let port = free_port_pair();
        let log = state.join("swtpm.log");
        let mut cmd = Command::new("swtpm");
        cmd.args(["socket", "--tpm2", "--server"])
            .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
            .arg("--ctrl")
            .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
            .args(["--flags", "not-need-init,startup-clear", "--tpmstate"])
            // Absolute: swtpm refuses relative state paths (LAB.md).
            .arg(format!("dir={}", state.canonicalize().unwrap().display()))
            .arg("--log")
            .arg(format!("file={}", log.display()));
        let child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("swtpm (apt-get install swtpm; scripts/setup): {e}"))
            .with_log(log);
        poll("swtpm to listen", LIMIT, || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self {
            port,
            _child: child,
        }
    }

    fn config(&self, policy: &str) -> String {
        format!(
            "tpm:\n  policy: {policy}\n  tcti: \"swtpm:host=127.0.0.1,port={}\"\n",
            self.port
        )
    }
}

/// Two consecutive free loopback ports; the first is returned.
fn free_port_pair() -> u16 {
    poll("two consecutive free ports", Duration::from_secs(5), || {
        let port = free_tcp_port();
        let first = TcpListener::bind(("127.0.0.1", port)).ok()?;
        let second = TcpListener::bind(("127.0.0.1", port.checked_add(1)?)).ok()?;
        drop((first, second));
        Some(port)
    })
}

fn registered(node: &Node) -> LocalStatus {
    poll("the node to register and heartbeat", LIMIT, || {
        node.status()
            .filter(|s| s.appliance_id.is_some() && s.hub_reachable && s.phase == "running")
    })
}

/// Files under `dir` holding a PEM private key (of any kind: PKCS#8, SEC1, RSA).
fn private_key_files(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap_or_default()
                .windows(b"PRIVATE KEY-----".len())
                .any(|w| w == b"PRIVATE KEY-----")
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
fn a_tpm_key_registers_heartbeats_survives_restarts_and_renews_without_leaving_the_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let tpm = Swtpm::start(&dir.path().join("tpm"));
    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("node");
    let token = hub.enrollment_token("tpm");
    let config = format!("{NO_NET}{}", tpm.config("required"));
    write_config(&root, &hub.url, &hub.fingerprint, &token, &config);

    let started = Instant::now();
    let node = Node::start(&root);
    let id = registered(&node).appliance_id.unwrap();
    eprintln!(
        "registration with the key in the TPM: {:?}",
        started.elapsed()
    );
    assert!(
        node.log().contains("identity key in the TPM"),
        "{}",
        node.log()
    );
    let leaked = private_key_files(&root);
    assert!(leaked.is_empty(), "private keys on disk: {leaked:?}");

    // A restart loads the same key from the TPM: same appliance, heartbeats over mTLS.
    node.stop();
    let node = Node::start(&root);
    let again = registered(&node);
    assert_eq!(again.appliance_id.as_deref(), Some(id.as_str()));
    node.stop();

    // 20 hours on (the hub signs for 24 h): the node re-keys in the TPM, renews with the
    // hub and heartbeats with the new certificate.
    let node = Node::start_with(
        &root,
        &[
            "env",
            "FAKETIME_DONT_FAKE_MONOTONIC=1",
            "faketime",
            "-f",
            "+20h",
        ],
    );
    poll("the renewal", LIMIT, || {
        node.log()
            .contains("client certificate renewed")
            .then_some(())
    });
    let after = node.status().unwrap().last_hub_contact;
    let renewed = poll("a heartbeat after the renewal", LIMIT, || {
        node.status()
            .filter(|s| s.last_hub_contact != after && s.hub_reachable && s.last_error.is_none())
    });
    assert_eq!(renewed.appliance_id.as_deref(), Some(id.as_str()));
    node.stop();
    let leaked = private_key_files(&root);
    assert!(
        leaked.is_empty(),
        "private keys on disk after renewal: {leaked:?}"
    );
    assert_eq!(hub.admin().appliances().unwrap().len(), 1);

    // What the store keeps is useless with another TPM (the state copied to another
    // machine): the key does not load there, so nothing is signed and the hub is not reached.
    let other = Swtpm::start(&dir.path().join("other-tpm"));
    let config = format!("{NO_NET}{}", other.config("required"));
    write_config(&root, &hub.url, &hub.fingerprint, "unused", &config);
    let node = Node::start(&root);
    poll("the other TPM to refuse the key", LIMIT, || {
        node.log().contains("the TPM did not sign").then_some(())
    });
    let status = node.status().unwrap();
    assert!(!status.hub_reachable, "{status:?}");
    node.stop();
}

#[test]
fn without_a_tpm_required_refuses_to_start_and_preferred_keeps_a_key_file() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there: no TPM.
    let absent = free_tcp_port();
    let tcti = |policy: &str| {
        format!(
            "{NO_NET}tpm:\n  policy: {policy}\n  tcti: \"swtpm:host=127.0.0.1,port={absent}\"\n"
        )
    };
    let root = dir.path().join("required");
    write_config(
        &root,
        "https://127.0.0.1:9",
        &"00".repeat(32),
        "unused",
        &tcti("required"),
    );
    let mut node = Node::start(&root);
    let exit = poll("the node to refuse to start", LIMIT, || node.try_exit());
    assert!(!exit.success(), "{exit:?}");
    let log = node.log();
    assert!(
        log.contains("tpm.policy is required") && log.contains("preferred"),
        "{log}"
    );

    let hub = hub_at(&dir.path().join("hub")).start();
    let root = dir.path().join("preferred");
    let token = hub.enrollment_token("no-tpm");
    write_config(
        &root,
        &hub.url,
        &hub.fingerprint,
        &token,
        &tcti("preferred"),
    );
    let started = Instant::now();
    let node = Node::start(&root);
    registered(&node);
    eprintln!(
        "registration with the key in a file: {:?}",
        started.elapsed()
    );
    assert!(node.log().contains("TPM not usable"), "{}", node.log());
    node.stop();
    // The file key is where policy allows it: in the state store. This also shows the scan
    // above finds a key when there is one.
    assert!(!private_key_files(&root.join("var/lib/cairn")).is_empty());
}
