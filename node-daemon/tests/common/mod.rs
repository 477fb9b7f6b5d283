//! Test peers for the node daemon: the real `cairn-hub` binary (started by
//! `cairn-test-support`'s launcher) and the real `cairn-node` binary, each a direct child
//! process, stopped with whatever it started and reaped on drop.

#![allow(unreachable_pub)] // a helper module of test binaries: `pub` is how they share it
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_api::hub::{ApplianceQuery, ApplianceView, CreateEnrollmentToken};
pub use cairn_hub_client::Error as HubError;
use cairn_hub_client::HubClient;
use cairn_hub_client::tls::Trust;
pub use cairn_node_daemon::status::LocalStatus;
pub use cairn_test_support::hub::{Hub, HubBuilder};
pub use cairn_test_support::{ChildGuard, poll, workspace_bin};

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

/// A hub keeping its state in `data` (a second start there restarts the same hub), with
/// one-second heartbeats; start it with [`HubBuilder::start`].
pub fn hub_at(data: &Path) -> HubBuilder {
    Hub::builder(workspace_bin("cairn-hub", "cairn-hub"))
        .data(data)
        .serve_args(&["--heartbeat-interval", "1"])
}

/// The hub's admin as an operator reaches it: through the one typed client (`cairn hub`'s),
/// each call run to its end on a runtime of the calling thread, so that a thread moved into
/// a network namespace calls the hub listening there.
pub struct Admin {
    rt: tokio::runtime::Runtime,
    /// The client, with the admin token.
    pub client: HubClient,
}

impl Admin {
    /// Runs one call of [`Admin::client`].
    pub fn run<T>(&self, call: impl Future<Output = Result<T, HubError>>) -> Result<T, HubError> {
        self.rt.block_on(call)
    }

    /// Runs one call that must succeed; a refusal fails the test with the hub's error body.
    pub fn ok<T>(&self, call: impl Future<Output = Result<T, HubError>>) -> T {
        self.run(call)
            .unwrap_or_else(|e| panic!("{}", cairn_api::error_chain(&e)))
    }

    /// Every appliance the hub lists.
    pub fn appliances(&self) -> Result<Vec<ApplianceView>, HubError> {
        self.run(self.client.list_appliances(&ApplianceQuery::default()))
    }
}

/// Operator calls with the hub's admin token.
pub trait HubCalls {
    /// The admin's client of this hub.
    fn admin(&self) -> Admin;

    /// A fresh enrollment token for `site` (one registration, a day).
    fn enrollment_token(&self, site: &str) -> String;
}

impl HubCalls for Hub {
    fn admin(&self) -> Admin {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let client = HubClient::new(&self.url, &Trust::CaBundle(self.ca_pem.clone()), None)
            .expect("a client of the test hub")
            .with_bearer(&self.admin_token);
        Admin { rt, client }
    }

    fn enrollment_token(&self, site: &str) -> String {
        let admin = self.admin();
        admin
            .ok(admin.client.create_token(&CreateEnrollmentToken {
                site: site.into(),
                ttl_seconds: 24 * 3600,
                max_uses: 1,
                labels: Default::default(),
                tenant: None,
                mac: None,
                serial: None,
            }))
            .token
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

/// A running `cairn-node run` under a test root, stopped with SIGTERM (and whatever it runs
/// under, such as `faketime`) when dropped.
pub struct Node {
    child: ChildGuard,
    pub root: PathBuf,
    pub log: PathBuf,
}

/// How long the daemon may take to stop on SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

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
        cmd.args(["--log-level", "debug", "--root"])
            .arg(root)
            .args(["run", "--sys-root"])
            .arg(fixture().join("sys"))
            .arg("--proc-root")
            .arg(fixture().join("proc"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = ChildGuard::spawn(&mut cmd)
            .expect("cairn-node run")
            .with_grace(STOP_GRACE);
        Self {
            child,
            root: root.to_path_buf(),
            log,
        }
    }

    /// `cairn-node status --output json`, when the daemon answers.
    pub fn status(&self) -> Option<LocalStatus> {
        node_status(&self.root)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Stops the daemon with SIGTERM (as systemd would) and reaps it.
    pub fn stop(mut self) {
        self.child.terminate(STOP_GRACE);
    }

    /// Kills the daemon (SIGKILL, like a power cut) and reaps it.
    pub fn kill(mut self) {
        self.child.kill();
    }

    /// Whether the process has exited, and how.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait()
    }
}

/// `cairn-node --root ROOT status --output json`, read as the typed local status.
pub fn node_status(root: &Path) -> Option<LocalStatus> {
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

    /// Moves the calling thread into the namespace for good: the sockets it opens from then
    /// on are the namespace's. For a thread of its own.
    pub fn enter(&self) {
        use std::os::fd::AsFd;
        let ns = std::fs::File::open(format!("/run/netns/{}", self.0)).unwrap();
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("setns into {}: {e}", self.0));
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

/// How long a container may take to boot.
const BOOT_LIMIT: Duration = Duration::from_secs(120);

/// A Debian bookworm root with systemd and dbus, built once with mmdebstrap and cached in
/// the target directory.
pub fn debian_root() -> PathBuf {
    let dir = cairn_test_support::profile_dir()
        .parent()
        .unwrap()
        .join("nspawn-debian");
    let root = dir.join("root");
    // cairn-node links tpm2-tss and loads its device TCTI: its .deb depends on them. A root
    // cached with another package set is built again.
    let include = "--include=systemd,systemd-sysv,dbus,libtss2-esys-3.0.2-0,libtss2-tctildr0,libtss2-tcti-device0";
    let stamp = dir.join("include");
    if root.join("usr/lib/systemd/systemd").exists()
        && std::fs::read_to_string(&stamp).is_ok_and(|s| s == include)
    {
        return root;
    }
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join("root.tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    output_ok(
        Command::new("mmdebstrap")
            .args([
                "--variant=minbase",
                include,
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
                "bookworm",
            ])
            .arg(&tmp),
        "mmdebstrap is needed: scripts/setup installs it",
    );
    // An empty fstab avoids a degraded boot (LAB.md).
    std::fs::write(tmp.join("etc/fstab"), "").unwrap();
    std::fs::rename(&tmp, &root).unwrap();
    std::fs::write(&stamp, include).unwrap();
    root
}

/// A booted container; its changes go to a tmpfs overlay and vanish with it. Dropping it
/// kills the container's processes (its init among them: the kernel then ends the whole PID
/// namespace) and systemd-nspawn, which is their parent (ChildGuard).
pub struct Container {
    _nspawn: ChildGuard,
    leader: u32,
}

impl Container {
    pub fn boot(root: &Path, name: &str) -> Self {
        assert!(
            Path::new("/usr/bin/systemd-nspawn").exists(),
            "systemd-nspawn is missing: apt-get install systemd-container (scripts/setup)"
        );
        let nspawn = ChildGuard::spawn(
            Command::new("systemd-nspawn")
                .args([
                    "--register=no",
                    "--keep-unit",
                    "--console=pipe",
                    "--volatile=overlay",
                    "-q",
                ])
                .arg("-D")
                .arg(root)
                .args(["-M", name, "-b"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .expect("systemd-nspawn");
        let pid = nspawn.id();
        // The container's PID 1 is nspawn's child; but first nspawn forks an outer child that
        // forks PID 1 and exits. Taking the first child once let a loaded machine catch the
        // outer one, whose root vanished with it, and wait for a bus that never came: the
        // leader is the child whose root has the bus.
        let leader = poll("the container's system bus", BOOT_LIMIT, || {
            let children =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            children.split_whitespace().find_map(|child| {
                let bus = format!("/proc/{child}/root/run/dbus/system_bus_socket");
                Path::new(&bus)
                    .exists()
                    .then(|| child.parse().ok())
                    .flatten()
            })
        });
        Self {
            _nspawn: nspawn,
            leader,
        }
    }

    /// The container's init, as seen from the host.
    pub fn leader(&self) -> u32 {
        self.leader
    }

    pub fn root(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root", self.leader))
    }

    pub fn bus(&self) -> String {
        format!(
            "unix:path={}/run/dbus/system_bus_socket",
            self.root().display()
        )
    }
}
