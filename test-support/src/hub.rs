//! A real `cairn-hub` for tests: `init` in a data directory (a fresh temporary one unless the
//! test names its own), `serve` on `127.0.0.1:0` (or a given address), the URL read from the
//! one line `serve` prints, the process killed and reaped when the [`Hub`] is dropped.
//!
//! Why the binary rather than the server in-process: the hub's own tests use this crate, so
//! linking `cairn-hub` here would build the crate under test a second time as a dependency;
//! and the node's tests need what only a process gives: a restart on the same data and
//! address, a hub inside a network namespace (`ip netns exec`), SIGKILL as a crash. The caller
//! names the binary because Cargo hands a package's binaries only to its own tests: the hub's
//! tests pass `env!("CARGO_BIN_EXE_cairn-hub")` (built for them by Cargo), others find it with
//! [`crate::workspace_bin`].

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::ChildGuard;

/// `init`'s JSON answer, kept in the data directory so a restart knows the CA fingerprint and
/// the admin token without a second `init` (which refuses an initialised directory).
const INIT: &str = "test-init.json";

/// The files a replica shares with its hub: one CA, one server identity.
const SHARED_KEYS: [&str; 5] = ["ca.pem", "ca.key", "server.pem", "server.key", INIT];

/// How to start a hub; [`HubBuilder::start`] starts it.
#[derive(Debug)]
pub struct HubBuilder {
    bin: PathBuf,
    data: Option<PathBuf>,
    tmp: Option<tempfile::TempDir>,
    listen: String,
    prefix: Vec<String>,
    names: Vec<String>,
    init_args: Vec<String>,
    serve_args: Vec<String>,
}

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

impl HubBuilder {
    /// Keeps the hub's state in `dir` (created when missing) instead of a temporary directory,
    /// initialised only on the first start: a later start on the same directory is a restart
    /// of the same hub.
    pub fn data(mut self, dir: &Path) -> Self {
        self.data = Some(dir.to_path_buf());
        self
    }

    /// `serve --listen ADDR` (default `127.0.0.1:0`); a fixed address brings a stopped hub
    /// back where its clients look for it.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_owned();
        self
    }

    /// Runs `init` and `serve` under this command (e.g. `ip netns exec NS`).
    pub fn prefix(mut self, prefix: &[&str]) -> Self {
        self.prefix = owned(prefix);
        self
    }

    /// The names the hub's certificate carries (`init --name`, default: loopback).
    pub fn names(mut self, names: &[&str]) -> Self {
        self.names = owned(names);
        self
    }

    /// More `init` arguments (e.g. `--etcd-endpoints`, `--trusted-release-key`).
    pub fn init_args(mut self, args: &[&str]) -> Self {
        self.init_args = owned(args);
        self
    }

    /// More `serve` arguments (e.g. `--heartbeat-interval 1`).
    pub fn serve_args(mut self, args: &[&str]) -> Self {
        self.serve_args = owned(args);
        self
    }

    fn command(&self) -> Command {
        let mut cmd = match self.prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&self.bin);
                c
            }
            None => Command::new(&self.bin),
        };
        cmd.stdin(Stdio::null());
        cmd
    }

    /// `init` (unless the data directory holds a hub already), then `serve`; returns once the
    /// hub listens.
    pub fn start(mut self) -> Hub {
        let data = match &self.data {
            Some(data) => data.clone(),
            None => {
                let tmp = tempfile::Builder::new()
                    .prefix("cairn-hub-")
                    .tempdir()
                    .expect("a temporary directory for the hub");
                let data = tmp.path().join("data");
                self.tmp = Some(tmp);
                data
            }
        };
        std::fs::create_dir_all(&data).expect("creating the hub's data directory");
        let init_file = data.join(INIT);
        if !init_file.exists() {
            let out = self
                .command()
                .args(["init", "--output", "json", "--data"])
                .arg(&data)
                .args(self.names.iter().flat_map(|n| ["--name", n]))
                .args(&self.init_args)
                .output()
                .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
            assert!(
                out.status.success(),
                "cairn-hub init: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::write(&init_file, &out.stdout).expect("keeping init's answer");
        }
        let init: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&init_file).expect("reading init's answer"))
                .expect("init's answer is JSON");
        let field = |key: &str| {
            init[key]
                .as_str()
                .unwrap_or_else(|| panic!("no {key} in init's answer: {init}"))
                .to_owned()
        };
        let log = data.join("hub.log");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("opening the hub's log");
        let mut cmd = self.command();
        cmd.args(["serve", "--listen", &self.listen, "--data"])
            .arg(&data)
            .args(&self.serve_args)
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()))
            .with_log(&log);
        let stdout = child.child_mut().stdout.take().expect("serve's stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading serve's first line");
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from cairn-hub serve: {line:?}"))
            .to_owned();
        Hub {
            url,
            fingerprint: field("ca_fingerprint"),
            admin_token: field("admin_token"),
            ca_pem: std::fs::read_to_string(data.join("ca.pem")).expect("the hub's CA"),
            data,
            log,
            bin: self.bin,
            child,
            _tmp: self.tmp,
        }
    }
}

/// A running `cairn-hub serve`, killed (SIGKILL, as a crash) and reaped on drop.
#[derive(Debug)]
pub struct Hub {
    /// `https://HOST:PORT`.
    pub url: String,
    /// The CA fingerprint appliances pin (`sha256:...`).
    pub fingerprint: String,
    /// The first admin token, in clear.
    pub admin_token: String,
    /// The CA certificate (PEM) clients trust.
    pub ca_pem: String,
    /// The data directory.
    pub data: PathBuf,
    /// The hub's standard error, printed when a test panics while it runs.
    pub log: PathBuf,
    bin: PathBuf,
    child: ChildGuard,
    _tmp: Option<tempfile::TempDir>,
}

impl Hub {
    /// A hub from the binary `bin`, in a temporary directory, on `127.0.0.1:0`.
    pub fn builder(bin: impl Into<PathBuf>) -> HubBuilder {
        HubBuilder {
            bin: bin.into(),
            data: None,
            tmp: None,
            listen: "127.0.0.1:0".into(),
            prefix: Vec::new(),
            names: Vec::new(),
            init_args: Vec::new(),
            serve_args: Vec::new(),
        }
    }

    /// `HOST:PORT` the hub listens on.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("https://")
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// A second hub process with this one's CA, server identity and admin token, in a data
    /// directory of its own (for hubs sharing one etcd), on `127.0.0.1:0`.
    pub fn replica(&self, serve_args: &[&str]) -> Hub {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-hub-")
            .tempdir()
            .expect("a temporary directory for the replica");
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).expect("creating the replica's data directory");
        for f in SHARED_KEYS {
            std::fs::copy(self.data.join(f), data.join(f))
                .unwrap_or_else(|e| panic!("copying {f} to the replica: {e}"));
        }
        HubBuilder {
            data: Some(data),
            tmp: Some(tmp),
            ..Self::builder(&self.bin)
        }
        .serve_args(serve_args)
        .start()
    }
}
