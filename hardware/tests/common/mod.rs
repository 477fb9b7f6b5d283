//! Real peers for the integration tests: sushy-tools (Redfish) and OpenIPMI's ipmi_sim.
//! Each peer is a direct child process, on a free loopback port, with its own temporary
//! state, killed and reaped on drop. A missing peer fails the test with what to install.
#![allow(dead_code)]

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SUSHY: &str = "/opt/cairn/venv/bin/sushy-emulator";
pub const VENV_PYTHON: &str = "/opt/cairn/venv/bin/python";

pub fn require(path: &str, what: &str) {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: {what} (run `sudo scripts/setup`)"
    );
}

pub fn which(cmd: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(cmd))
                .find(|p| p.exists())
        })
        .unwrap_or_else(|| panic!("`{cmd}` is not installed (run `sudo scripts/setup`)"))
}

/// A free TCP port on loopback (sushy cannot listen on port 0 itself).
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free UDP port on loopback.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 50 ms until it returns `Some` or `limit` passes.
pub fn poll<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed and reaped on drop; its log is printed if the test failed.
pub struct Peer {
    pub child: Child,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- peer log {} ---\n{}", self.log.display(), log);
        }
    }
}

/// Which sushy-tools driver to run.
pub enum SushyDriver {
    /// `SUSHY_EMULATOR_FAKE_DRIVER`: state only, `n` systems.
    Fake(usize),
    /// libvirt's in-memory `test:///default` (BIOS, processors, SimpleUpdate).
    LibvirtTest,
}

pub struct Sushy {
    pub peer: Peer,
    pub port: u16,
}

impl Sushy {
    pub fn start(driver: SushyDriver, auth: Option<(&str, &str)>) -> Sushy {
        Self::start_with(driver, auth, None)
    }

    pub fn start_with(
        driver: SushyDriver,
        auth: Option<(&str, &str)>,
        tls: Option<(&Path, &Path)>,
    ) -> Sushy {
        require(SUSHY, "sushy-tools in /opt/cairn/venv");
        let dir = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        // A config key, not only an environment variable: without it every instance on the
        // machine shares one state database under /tmp.
        let mut config = format!(
            "SUSHY_EMULATOR_STATE_DIR = '{}'\n",
            dir.path().join("state").display()
        );
        match driver {
            SushyDriver::Fake(n) => {
                config.push_str(
                    "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n",
                );
                for i in 0..n {
                    config.push_str(&format!(
                        "  {{'uuid': '00000000-0000-0000-0000-{i:012}', 'name': 'fake{i}', 'power_state': 'Off', 'external_notifier': False, 'nics': [{{'mac': '52:54:00:00:{:02x}:{:02x}', 'ip': '127.0.0.1'}}]}},\n",
                        i / 256,
                        i % 256
                    ));
                }
                config.push_str("]\n");
            }
            SushyDriver::LibvirtTest => {
                config.push_str("SUSHY_EMULATOR_LIBVIRT_URI = 'test:///default'\n");
            }
        }
        if let Some((user, password)) = auth {
            let out = Command::new(VENV_PYTHON)
                .args([
                    "-c",
                    "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                    password,
                ])
                .output()
                .unwrap();
            assert!(out.status.success(), "bcrypt in the sushy venv");
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(
                &htpasswd,
                format!("{user}:{}", String::from_utf8_lossy(&out.stdout).trim()),
            )
            .unwrap();
            config.push_str(&format!(
                "SUSHY_EMULATOR_AUTH_FILE = '{}'\n",
                htpasswd.display()
            ));
        }
        let conf = dir.path().join("emulator.conf");
        std::fs::write(&conf, config).unwrap();
        let log = dir.path().join("sushy.log");
        let mut cmd = Command::new(SUSHY);
        cmd.args([
            "--interface",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--config",
        ])
        .arg(&conf)
        .env("SUSHY_EMULATOR_STATE_DIR", dir.path().join("state"))
        .env("TMPDIR", dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap());
        if let Some((cert, key)) = tls {
            cmd.arg("--ssl-certificate")
                .arg(cert)
                .arg("--ssl-key")
                .arg(key);
        }
        let child = cmd.spawn().expect("starting sushy-emulator");
        let peer = Peer { child, log, dir };
        let scheme = if tls.is_some() { "https" } else { "http" };
        poll(Duration::from_secs(30), "sushy-emulator to answer", || {
            let ok = Command::new("curl")
                .args([
                    "-skf",
                    "-o",
                    "/dev/null",
                    &format!("{scheme}://127.0.0.1:{port}/redfish/v1/"),
                ])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            ok.then_some(())
        });
        Sushy { peer, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("redfish+http://admin@127.0.0.1:{}{path}", self.port)
    }

    /// GET a path with curl (the reference client), as JSON.
    pub fn curl(&self, path: &str, auth: Option<&str>) -> serde_json::Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sf", &format!("http://127.0.0.1:{}{path}", self.port)]);
        if let Some(a) = auth {
            cmd.args(["-u", a]);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "curl {path}");
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Writes a password file and returns its path.
pub fn password_file(dir: &Path, password: &str) -> PathBuf {
    let p = dir.join("bmc.pw");
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p
}
