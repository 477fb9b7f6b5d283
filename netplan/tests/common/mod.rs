//! Test helpers: throw-away network namespaces and the `cairn-net` binary run inside them.
//! Polling and child guards come from `cairn-test-support`.

#![allow(unreachable_pub)] // a helper module of test binaries: `pub` is how they share it
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace named with the pid, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("cnp-{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("`ip` not found: install iproute2 (scripts/setup)");
        assert!(
            out.status.success(),
            "ip netns add {name}: {} (tests need root and iproute2)",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Runs `ip -n NS ARGS`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -j -n NS ARGS` parsed.
    pub fn ip_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["-j"];
        full.extend_from_slice(args);
        let text = self.ip(&full);
        serde_json::from_str(if text.trim().is_empty() { "[]" } else { &text }).unwrap()
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `cairn-net` with args inside the namespace.
    pub fn net(&self, state: &Path, args: &[&str]) -> Output {
        self.command(env!("CARGO_BIN_EXE_cairn-net"))
            .arg("--state-dir")
            .arg(state)
            .args(args)
            .output()
            .unwrap()
    }

    /// Runs `cairn-net` and requires success; returns stdout.
    pub fn net_ok(&self, state: &Path, args: &[&str]) -> String {
        let out = self.net(state, args);
        assert!(
            out.status.success(),
            "cairn-net {}: exit {:?}\nstdout: {}\nstderr: {}",
            args.join(" "),
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Addresses of a link as "ADDR/PREFIX" strings (link-local excluded).
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        v[0]["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["scope"] != "link")
                    .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn has_link(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", dev])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    pub fn routes(&self) -> String {
        self.ip(&["route", "show", "table", "all"])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Creates a veth pair: `a` in namespace `na`, `b` in `nb`.
pub fn veth(na: &Netns, a: &str, nb: &Netns, b: &str) {
    na.ip(&[
        "link", "add", a, "type", "veth", "peer", "name", b, "netns", &nb.name,
    ]);
}

/// A netplan file in a temp dir.
pub struct Yaml {
    pub dir: tempfile::TempDir,
}

impl Yaml {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}
