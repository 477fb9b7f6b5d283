//! Test peers for the node daemon: the real `cairn-hub` binary and the real `cairn-node`
//! binary, each a direct child process, killed and reaped on drop; polling helpers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `target/<profile>/` of this test run (the test binary lives in its `deps/`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A binary of the workspace; fails the test with how to build it when missing.
pub fn workspace_bin(name: &str, package: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build it first with `cargo build -p {package}` (same target dir); \
         `make test` builds every workspace binary",
        path.display()
    );
    path
}

/// Runs `cmd` to completion and returns its standard output; fails the test with `missing`
/// (what to install) when it cannot start, and with its standard error when it fails.
pub fn output_ok(cmd: &mut Command, missing: &str) -> Vec<u8> {
    let out = cmd.output().unwrap_or_else(|e| panic!("{missing}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `limit` with `what`.
pub fn poll<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A running `cairn-hub serve`.
pub struct Hub {
    child: Child,
    pub data: PathBuf,
    pub url: String,
    pub fingerprint: String,
    pub admin_token: String,
    pub log: PathBuf,
}

impl Hub {
    /// `cairn-hub init` in `data` (when not yet initialised) and `serve` on `listen`.
    pub fn start(data: &Path, listen: &str) -> Self {
        Self::start_in(data, listen, &[])
    }

    /// Same, running it under `prefix` (e.g. `ip netns exec NS`).
    pub fn start_in(data: &Path, listen: &str, prefix: &[&str]) -> Self {
        Self::start_full(data, listen, prefix, &[])
    }

    /// Same, with the names its certificate carries (`init --name`, default: loopback).
    pub fn start_full(data: &Path, listen: &str, prefix: &[&str], names: &[&str]) -> Self {
        let bin = workspace_bin("cairn-hub", "cairn-hub");
        let meta = data.join("test-init.json");
        if !meta.exists() {
            let out = output_ok(
                Command::new(&bin)
                    .args(["init", "--output", "json", "--data"])
                    .arg(data)
                    .args(names.iter().flat_map(|n| ["--name", n])),
                "cairn-hub init",
            );
            std::fs::write(&meta, out).unwrap();
        }
        let init: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&meta).unwrap()).unwrap();
        let log = data.join("hub.log");
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let mut child = cmd
            .args([
                "serve",
                "--heartbeat-interval",
                "1",
                "--listen",
                listen,
                "--data",
            ])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cairn-hub serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from cairn-hub: {line:?}"))
            .to_owned();
        Self {
            child,
            data: data.to_path_buf(),
            url,
            fingerprint: init["ca_fingerprint"].as_str().unwrap().to_owned(),
            admin_token: init["admin_token"].as_str().unwrap().to_owned(),
            log,
        }
    }

    /// `host:port` the hub listens on.
    pub fn addr(&self) -> String {
        self.url.trim_start_matches("https://").to_owned()
    }

    fn client(&self) -> reqwest::blocking::Client {
        let ca = std::fs::read(self.data.join("ca.pem")).unwrap();
        reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls(&ca))
            .build()
            .unwrap()
    }

    /// An operator call; returns status and JSON body.
    pub fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let mut req = self
            .client()
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().expect("hub request");
        let status = resp.status().as_u16();
        (status, resp.json().unwrap_or(serde_json::Value::Null))
    }

    /// A fresh enrollment token for `site`.
    pub fn enrollment_token(&self, site: &str) -> String {
        let (status, body) = self.call(
            reqwest::Method::POST,
            "/v1/tokens",
            Some(serde_json::json!({"site": site})),
        );
        assert_eq!(status, 201, "creating a token: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Stops the hub and waits for it.
    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A rustls client config trusting `ca_pem`, ring provider.
pub fn tls(ca_pem: &[u8]) -> rustls::ClientConfig {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// A running `cairn-node run` under a test root.
pub struct Node {
    child: Child,
    pub root: PathBuf,
    pub log: PathBuf,
}

/// The captured dev-VM fixture (sysfs and procfs).
pub fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-vm")
}

impl Node {
    /// Starts `cairn-node --root ROOT run` reading the fixture inventory.
    pub fn start(root: &Path) -> Self {
        Self::start_with(root, &[])
    }

    /// Starts it with extra `run` arguments; `prefix` runs it under another command
    /// (e.g. `ip netns exec NS`).
    pub fn start_with(root: &Path, prefix: &[&str]) -> Self {
        Self::start_full(root, prefix, &[])
    }

    /// With a prefix command and extra `run` arguments.
    pub fn start_full(root: &Path, prefix: &[&str], extra: &[&str]) -> Self {
        let bin = workspace_bin("cairn-node", "cairn-node-daemon");
        let log = root.join(format!(
            "node-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let mut cmd = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .args(["--log-level", "debug", "--root"])
            .arg(root)
            .args(["run", "--sys-root"])
            .arg(fixture().join("sys"))
            .arg("--proc-root")
            .arg(fixture().join("proc"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("cairn-node run");
        Self {
            child,
            root: root.to_path_buf(),
            log,
        }
    }

    /// `cairn-node status --output json`, when the daemon answers.
    pub fn status(&self) -> Option<serde_json::Value> {
        node_status(&self.root)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM (as systemd would) and reaps it.
    pub fn stop(mut self) {
        terminate(&mut self.child);
    }

    /// Whether the process has exited, and how.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().unwrap()
    }
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            terminate(&mut self.child);
        }
    }
}

/// `cairn-node --root ROOT status --output json`.
pub fn node_status(root: &Path) -> Option<serde_json::Value> {
    let out = Command::new(workspace_bin("cairn-node", "cairn-node-daemon"))
        .arg("--root")
        .arg(root)
        .args(["status", "--output", "json"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Writes `node.yaml` (and the token file) under `root`.
pub fn write_config(root: &Path, hub_url: &str, fingerprint: &str, token: &str, extra: &str) {
    let etc = root.join("etc/cairn");
    std::fs::create_dir_all(&etc).unwrap();
    std::fs::write(etc.join("token"), format!("{token}\n")).unwrap();
    std::fs::write(
        etc.join("node.yaml"),
        format!(
            "hostname: edge-test\nhub:\n  url: {hub_url}\n  ca_fingerprint: \"{fingerprint}\"\n  token_file: /etc/cairn/token\n{extra}"
        ),
    )
    .unwrap();
}

/// A network namespace named `<prefix>-<pid>`, with loopback up, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn new(prefix: &str) -> Self {
        let name = format!("{prefix}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(
            ok.success(),
            "ip netns add {name} failed (needs root and iproute2)"
        );
        let ns = Self(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NS ARGS`, its standard output.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NS` as a command prefix.
    pub fn prefix(&self) -> [&str; 4] {
        ["ip", "netns", "exec", self.0.as_str()]
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}
