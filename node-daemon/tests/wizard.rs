//! The first-boot wizard end to end in real headless Chromium (driven through chromedriver's
//! W3C WebDriver endpoint) against a real `cairn-hub`.
//!
//! The node, its network trial and the hub run in a network namespace of the test's own;
//! Chromium runs on the host and reaches the wizard through a socat relay between the two
//! loopbacks, the only addresses involved.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_test_support::ports::free_tcp_port;
use common::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(90);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// SHA-256 fingerprint (lowercase hex) of the certificate served on a loopback port, read
/// with `openssl s_client` (an independent TLS client).
fn served_fingerprint(port: u16) -> String {
    let pem = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl is needed (scripts/setup)")
        .stdout;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(x509.stdin.as_mut().unwrap(), &pem).unwrap();
    let out = x509.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "no certificate on port {port}: {text}"
    );
    text.split('=')
        .nth(1)
        .unwrap()
        .trim()
        .replace(':', "")
        .to_ascii_lowercase()
}

/// A WebDriver session over chromedriver's HTTP API.
struct Browser {
    http: reqwest::blocking::Client,
    base: String,
    session: String,
    _driver: ChildGuard,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Self {
        for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            assert!(
                std::path::Path::new(bin).exists(),
                "{bin} is missing: apt-get install chromium chromium-driver (scripts/setup)"
            );
        }
        let port = free_tcp_port();
        // Chromium runs as chromedriver's child: the guard stops it too.
        let driver = ChildGuard::spawn(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .tls_backend_preconfigured(tls(b""))
            .build()
            .unwrap();
        poll("chromedriver", LIMIT, || {
            http.get(format!("{base}/status"))
                .send()
                .ok()
                .and_then(|r| r.json::<Value>().ok())
                .filter(|v| v["value"]["ready"] == true)
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // The wizard's certificate is self-signed by design; its fingerprint is what the
            // console shows (checked separately below).
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                         "--no-first-run", "--disable-background-networking",
                         "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let v: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Self {
            http,
            base,
            session,
            _driver: driver,
            _profile: profile,
        }
    }

    fn cmd(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let v: Value = request.send().unwrap().json().unwrap();
        assert!(v["value"]["error"].is_null(), "WebDriver {path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", json!({ "url": url }));
    }

    fn find(&self, css: &str) -> String {
        let v = self.cmd(
            reqwest::Method::POST,
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}: {v}\n{}", self.source()))
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            json!({}),
        );
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            json!({ "text": text }),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            json!({}),
        );
    }

    fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self
            .http
            .delete(format!("{}/session/{}", self.base, self.session))
            .send();
    }
}

#[test]
fn the_wizard_tests_everything_rolls_back_on_a_wrong_fingerprint_then_configures_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let netns = Netns::new("cairn-wiz");
    // The appliance's NIC: eth0 as the fixture inventory lists it, a veth in the namespace.
    netns.ip(&[
        "link", "add", "eth0", "type", "veth", "peer", "name", "uplink0",
    ]);
    netns.ip(&["link", "set", "uplink0", "up"]);
    let prefix = netns.prefix();
    let hub = hub_at(&dir.path().join("hub")).prefix(&prefix).start();
    let token = hub_token(&hub, &netns);

    let root = dir.path().join("node");
    std::fs::create_dir_all(&root).unwrap();
    let console = dir.path().join("console");
    std::fs::write(&console, "").unwrap();
    let wizard_port = free_tcp_port();
    let node = Node::start_full(
        &root,
        &prefix,
        &[
            "--wizard-listen",
            &format!("127.0.0.1:{wizard_port}"),
            "--console",
            console.to_str().unwrap(),
        ],
    );
    // The console gets the certificate fingerprint and the PIN.
    let text = poll("the PIN on the console", LIMIT, || {
        let t = std::fs::read_to_string(&console).ok()?;
        t.contains("one-time PIN").then_some(t)
    });
    let pin = text.split("one-time PIN: ").nth(1).unwrap()[..6].to_owned();
    assert!(text.contains("certificate sha256 fingerprint: "), "{text}");

    // Relay host loopback -> namespace loopback for the browser.
    let relay_port = free_tcp_port();
    // socat forks a relay per connection: the guard stops those too.
    let _relay = ChildGuard::spawn(
        Command::new("socat")
            .arg(format!(
                "TCP-LISTEN:{relay_port},bind=127.0.0.1,reuseaddr,fork"
            ))
            .arg(format!(
                "EXEC:ip netns exec {} socat STDIO TCP\\:127.0.0.1\\:{wizard_port}",
                netns.0
            )),
    )
    .expect("socat is needed (scripts/setup)");
    let url = format!("https://127.0.0.1:{relay_port}/");
    // The browser accepts the self-signed certificate; what makes that safe is that the
    // certificate served at this URL is the one whose fingerprint the console shows.
    let shown = text
        .split("certificate sha256 fingerprint: ")
        .nth(1)
        .and_then(|t| t.lines().next())
        .unwrap()
        .trim()
        .to_owned();
    assert_eq!(served_fingerprint(relay_port), shown, "console vs served");
    let browser = Browser::start();
    poll("the wizard page through the relay", LIMIT, || {
        browser.go(&url);
        browser.source().contains("Test and apply").then_some(())
    });
    assert!(
        browser.source().contains("eth0 (02:fc:00:00:00:01"),
        "NICs are listed with MACs"
    );

    let fill = |fingerprint: &str| {
        browser.type_into("#pin", &pin);
        browser.click("#mode-static");
        browser.type_into("#address", "10.77.0.2/24");
        browser.type_into("#dns", "10.77.0.53");
        browser.type_into("#hostname", "edge-wiz");
        browser.type_into("#hub_url", &hub.url);
        browser.type_into("#token", &token);
        browser.type_into("#fingerprint", fingerprint);
        browser.click("#apply");
    };

    // 1. A wrong fingerprint: the hub check fails, the network goes back, nothing is saved.
    fill(&"cd".repeat(32));
    let page = poll("the error page", LIMIT, || {
        let s = browser.source();
        s.contains("id=\"error\"").then_some(s)
    });
    assert!(page.contains("Reaching the hub failed"), "{page}");
    assert!(
        page.contains("does not match the pinned CA fingerprint"),
        "{page}"
    );
    assert!(page.contains("The network was put back"), "{page}");
    assert!(
        !netns
            .ip(&["-4", "addr", "show", "eth0"])
            .contains("10.77.0.2"),
        "rolled back"
    );
    assert!(!root.join("etc/cairn/node.yaml").exists());

    // 2. The right fingerprint: saved, and the daemon goes on to register.
    fill(&hub.fingerprint);
    poll("the success page", LIMIT, || {
        browser.source().contains("id=\"done\"").then_some(())
    });
    assert!(
        netns
            .ip(&["-4", "addr", "show", "eth0"])
            .contains("10.77.0.2/24")
    );
    let status = poll("the node to register after the wizard", LIMIT, || {
        node.status().filter(|s| s.appliance_id.is_some())
    });
    assert_eq!(status.hostname, "edge-wiz");
    node.stop();
}

/// An enrollment token, asked for from a thread inside the namespace (the hub listens on
/// the namespace's loopback).
fn hub_token(hub: &Hub, netns: &Netns) -> String {
    std::thread::scope(|s| {
        s.spawn(|| {
            netns.enter();
            hub.enrollment_token("wiz")
        })
        .join()
        .expect("the token thread")
    })
}
