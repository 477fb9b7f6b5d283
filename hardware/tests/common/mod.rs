//! Real peers for the integration tests: sushy-tools (Redfish) and OpenIPMI's ipmi_sim.
//! Each peer is a direct child process, on a free loopback port, with its own temporary
//! state, killed and reaped on drop. A missing peer fails the test with what to install.

#![allow(unreachable_pub)] // a helper module of test binaries: `pub` is how they share it
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use cairn_test_support::ChildGuard;
pub use cairn_test_support::poll;
pub use cairn_test_support::ports::{free_tcp_port, free_udp_port};

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

/// A child process killed and reaped on drop (with whatever it started); its log is printed
/// if the test failed. Fields drop in order: the process goes before its directory.
pub struct Peer {
    pub child: ChildGuard,
    pub log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Peer {
    pub fn new(child: Child, log: PathBuf, dir: tempfile::TempDir) -> Peer {
        Peer {
            child: ChildGuard::new(child).with_log(&log),
            log,
            dir,
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
        let peer = Peer::new(child, log, dir);
        let scheme = if tls.is_some() { "https" } else { "http" };
        poll("sushy-emulator to answer", Duration::from_secs(30), || {
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

/// The SDR of the one sensor the ipmi_sim peer offers: "CPU Temp", full record, M=1, °C.
const CPU_TEMP_SDR: &str = "0x00 0x00 0x51 0x01 0x33 0x20 0x00 0x01 0x03 0x01 0x7f 0x68 0x01 0x01 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x01 0x00 0x00 0x01 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0xff 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0x00 0xc8 0x43 0x50 0x55 0x20 0x54 0x65 0x6d 0x70";

/// OpenIPMI's ipmi_sim as a LAN BMC on loopback, with a chassis-control script that keeps
/// power and boot device in files (ipmi_sim refuses boot devices without one).
pub struct IpmiSim {
    pub peer: Peer,
    pub port: u16,
    pub password: String,
}

impl IpmiSim {
    pub fn start() -> IpmiSim {
        let sim = which("ipmi_sim");
        which("ipmitool");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_udp_port();
        let password = "s3cret-pw".to_owned();
        let ctl = d.join("ctl.sh");
        std::fs::write(
            &ctl,
            r#"#!/bin/sh
# ipmi_sim chassis_control: `get power boot ...` prints key:value lines, `set key value ...`.
d=$(dirname "$0")
op=$1; shift
case "$op" in
  get) for k in "$@"; do case $k in
         power) echo "power:$(cat "$d/power" 2>/dev/null || echo 0)";;
         boot) echo "boot:$(cat "$d/boot" 2>/dev/null || echo default)";;
       esac; done ;;
  set) while [ $# -ge 2 ]; do echo "$2" > "$d/$1"; shift 2; done ;;
esac
"#,
        )
        .unwrap();
        Command::new("chmod").arg("+x").arg(&ctl).status().unwrap();
        let conf = d.join("lan.conf");
        std::fs::write(
            &conf,
            format!(
                r#"name "cairn-test"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{ctl}"
  user 1 true  ""        ""        user     10       none md2 md5 straight
  user 2 true  "admin"   "{password}"  admin    10       none md2 md5 straight
"#,
                ctl = ctl.display()
            ),
        )
        .unwrap();
        let cmds = d.join("cmds");
        std::fs::write(
            &cmds,
            format!(
                "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\nmain_sdr_add 0x20 {CPU_TEMP_SDR}\nsensor_add 0x20 0 1 0x01 0x01\nsensor_set_value 0x20 0 1 45 0\nmc_enable 0x20\n"
            ),
        )
        .unwrap();
        std::fs::create_dir(d.join("state")).unwrap();
        let log = d.join("ipmi_sim.log");
        let child = Command::new(sim)
            .args(["-n", "-c"])
            .arg(&conf)
            .arg("-f")
            .arg(&cmds)
            .arg("-s")
            .arg(d.join("state"))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("starting ipmi_sim");
        let sim = IpmiSim {
            peer: Peer::new(child, log, dir),
            port,
            password,
        };
        poll(
            "ipmi_sim to answer ipmitool",
            Duration::from_secs(20),
            || sim.ipmitool_ok(&["mc", "info"]).then_some(()),
        );
        sim
    }

    pub fn url(&self) -> String {
        format!("ipmi://admin@127.0.0.1:{}", self.port)
    }

    fn ipmitool_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ipmitool");
        // -E reads the password from IPMI_PASSWORD, keeping it out of argv.
        c.args([
            "-I",
            "lanplus",
            "-C",
            "3",
            "-H",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "admin",
            "-E",
            "-N",
            "1",
            "-R",
            "2",
        ])
        .args(args)
        .env("IPMI_PASSWORD", &self.password)
        .stdin(Stdio::null());
        c
    }

    fn ipmitool_ok(&self, args: &[&str]) -> bool {
        self.ipmitool_cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    /// Runs ipmitool (the reference client) and returns its standard output.
    pub fn ipmitool(&self, args: &[&str]) -> String {
        let out = self.ipmitool_cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "ipmitool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}
