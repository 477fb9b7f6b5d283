//! The first-boot wizard: used when nothing configures the box.
//!
//! HTTPS with a self-signed certificate made at start; its SHA-256 fingerprint and a one-time
//! PIN are written to the console and serial port, so only someone with console access can
//! configure the appliance (and can check they talk to it, not to an impostor). One page,
//! rendered with tera; "Test and apply" proves the whole path before anything is saved:
//! the network is applied as a trial, the hub's CA is checked against the fingerprint, the
//! token is checked with the hub without using it up. Any failure rolls the network back and
//! says what failed and what to do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Form, State};
use axum::response::Html;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tera::{Context, Tera};
use tokio::sync::{Mutex, watch};

use cairn_formats::fsio::atomic_write_mode;

use crate::config;
use crate::hub::{HttpsHub, HubApi, Trust};
use crate::network::Network;
use cairn_api::node_config::{HubSection, NodeConfig, normalize_fingerprint, valid_hostname};

/// Wrong PINs tolerated before a new PIN is made (and shown on the console again).
const MAX_PIN_FAILURES: u32 = 5;

/// The longest a source waits after wrong PINs; the wait doubles from 1 s up to it.
const MAX_PIN_WAIT: Duration = Duration::from_secs(15 * 60);

/// Sources remembered at most; beyond it, sources whose wait is over are forgotten.
const MAX_PIN_SOURCES: usize = 4096;

/// Wizard failures.
#[derive(Debug, thiserror::Error)]
pub enum WizardError {
    /// Binding or the certificate failed.
    #[error("starting the wizard on {listen}: {detail}")]
    Start {
        /// Address.
        listen: String,
        /// Why.
        detail: String,
    },
}

/// The form as posted.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetupForm {
    /// Console PIN.
    #[serde(default)]
    pub pin: String,
    /// Interface name.
    #[serde(default)]
    pub interface: String,
    /// `dhcp` or `static`.
    #[serde(default)]
    pub mode: String,
    /// CIDR, static only.
    #[serde(default)]
    pub address: String,
    /// Gateway, static only.
    #[serde(default)]
    pub gateway: String,
    /// Comma-separated DNS servers.
    #[serde(default)]
    pub dns: String,
    /// VLAN ID or empty.
    #[serde(default)]
    pub vlan: String,
    /// Hostname.
    #[serde(default)]
    pub hostname: String,
    /// Hub URL.
    #[serde(default)]
    pub hub_url: String,
    /// Enrollment token (never rendered back).
    #[serde(default, skip_serializing)]
    pub token: String,
    /// Hub CA fingerprint.
    #[serde(default)]
    pub fingerprint: String,
}

/// A failed step: what failed, the message, what to do.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StepError {
    /// Step name.
    pub step: &'static str,
    /// What happened.
    pub message: String,
    /// What to do.
    pub hint: &'static str,
}

fn step(step: &'static str, hint: &'static str) -> impl Fn(String) -> StepError {
    move |message| StepError {
        step,
        message,
        hint,
    }
}

/// Checks the form and turns its network part into netplan YAML. Pure.
pub fn validate(form: &SetupForm, nics: &[String]) -> Result<String, StepError> {
    let input = step("Checking the form", "correct the field named and try again");
    if !nics.contains(&form.interface) {
        return Err(input(format!("unknown interface {:?}", form.interface)));
    }
    if !valid_hostname(&form.hostname) {
        return Err(input(format!(
            "hostname {:?} is not a valid host name",
            form.hostname
        )));
    }
    if !form.hub_url.starts_with("https://") {
        return Err(input("hub URL must start with https://".into()));
    }
    if normalize_fingerprint(&form.fingerprint).is_none() {
        return Err(input(
            "hub CA fingerprint must be 64 hex digits (sha256)".into(),
        ));
    }
    if form.token.trim().is_empty() {
        return Err(input("enrollment token is empty".into()));
    }
    let mut iface = serde_json::Map::new();
    if form.mode == "static" {
        let (ip, prefix) = form
            .address
            .split_once('/')
            .ok_or_else(|| input(format!("address {:?} needs a /prefix", form.address)))?;
        let ip: std::net::IpAddr = ip
            .parse()
            .map_err(|_| input(format!("address {ip:?} is not an IP address")))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= if ip.is_ipv4() { 32 } else { 128 })
            .ok_or_else(|| input(format!("prefix {prefix:?} is out of range")))?;
        iface.insert(
            "addresses".into(),
            serde_json::json!([format!("{ip}/{prefix}")]),
        );
        if !form.gateway.trim().is_empty() {
            let gw: std::net::IpAddr =
                form.gateway.trim().parse().map_err(|_| {
                    input(format!("gateway {:?} is not an IP address", form.gateway))
                })?;
            iface.insert(
                "routes".into(),
                serde_json::json!([{"to": "default", "via": gw.to_string()}]),
            );
        }
    } else {
        iface.insert("dhcp4".into(), serde_json::json!(true));
    }
    let dns: Vec<String> = form
        .dns
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<std::net::IpAddr>()
                .map(|a| a.to_string())
                .map_err(|_| input(format!("DNS server {s:?} is not an IP address")))
        })
        .collect::<Result<_, _>>()?;
    if !dns.is_empty() {
        iface.insert("nameservers".into(), serde_json::json!({"addresses": dns}));
    }
    let network = if form.vlan.trim().is_empty() {
        serde_json::json!({"version": 2, "ethernets": {form.interface.clone(): iface}})
    } else {
        let id: u16 = form
            .vlan
            .trim()
            .parse()
            .ok()
            .filter(|v| (1..=4094).contains(v))
            .ok_or_else(|| input(format!("VLAN ID {:?} must be 1-4094", form.vlan)))?;
        iface.insert("id".into(), serde_json::json!(id));
        iface.insert("link".into(), serde_json::json!(form.interface));
        serde_json::json!({
            "version": 2,
            "ethernets": {form.interface.clone(): {}},
            "vlans": {format!("{}.{id}", form.interface): iface},
        })
    };
    serde_yaml_ng::to_string(&serde_json::json!({ "network": network }))
        .map_err(|e| input(e.to_string()))
}

/// The node configuration the wizard writes.
pub fn node_yaml(form: &SetupForm) -> String {
    let cfg = NodeConfig {
        hostname: Some(form.hostname.clone()),
        hub: Some(HubSection {
            url: Some(form.hub_url.trim_end_matches('/').to_owned()),
            ca_fingerprint: normalize_fingerprint(&form.fingerprint).map(|f| format!("sha256:{f}")),
            token_file: Some("/etc/cairn/enrollment-token".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    format!(
        "# Written by the cairn-node first-boot wizard.\n{}",
        serde_yaml_ng::to_string(&cfg).unwrap_or_default()
    )
}

struct Shared<N> {
    tera: Tera,
    nics: Vec<crate::status::NicView>,
    root: PathBuf,
    network: N,
    pin: Mutex<PinGuard>,
    consoles: Vec<PathBuf>,
    fingerprint: String,
    done: watch::Sender<bool>,
}

/// The one-time PIN and the wrong guesses against it.
///
/// Each wrong PIN makes its source wait before the next guess is even compared: 1 s, then
/// twice as long after every further failure, up to [`MAX_PIN_WAIT`]. Every
/// [`MAX_PIN_FAILURES`] wrong PINs (from anywhere) the PIN itself is replaced, so guesses
/// spread over many sources cannot add up against one PIN.
struct PinGuard {
    pin: String,
    failures: u32,
    /// Per source (an IPv4 address, an IPv6 /64): failures and when it may try again.
    sources: HashMap<IpAddr, (u32, Instant)>,
}

/// Why a PIN was not accepted.
#[derive(Debug, PartialEq)]
enum PinRefusal {
    /// Wrong PIN.
    Wrong,
    /// Wrong, and the PIN was replaced: the new one must be announced.
    Replaced,
    /// Not compared: this source must wait this long after earlier wrong PINs.
    Wait(Duration),
}

impl PinGuard {
    fn new(pin: String) -> Self {
        PinGuard {
            pin,
            failures: 0,
            sources: HashMap::new(),
        }
    }

    /// One guess from `source` at `now`.
    fn check(&mut self, source: IpAddr, guess: &str, now: Instant) -> Result<(), PinRefusal> {
        let source = match source {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                // One IPv6 host commonly owns a whole /64.
                None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
            },
            v4 => v4,
        };
        if let Some((_, until)) = self.sources.get(&source)
            && *until > now
        {
            return Err(PinRefusal::Wait(*until - now));
        }
        if same(guess, &self.pin) {
            self.sources.remove(&source);
            return Ok(());
        }
        if self.sources.len() >= MAX_PIN_SOURCES {
            self.sources.retain(|_, (_, until)| *until > now);
        }
        let (n, until) = self.sources.entry(source).or_insert((0, now));
        *n += 1;
        let wait = Duration::from_secs(1u64 << (*n - 1).min(20)).min(MAX_PIN_WAIT);
        *until = now + wait;
        self.failures += 1;
        if self.failures >= MAX_PIN_FAILURES {
            self.pin = new_pin();
            self.failures = 0;
            return Err(PinRefusal::Replaced);
        }
        Err(PinRefusal::Wrong)
    }
}

/// The client's address, as the wizard's TLS listener accepted it.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

fn new_pin() -> String {
    let mut bytes = [0u8; 4];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    format!("{:06}", u32::from_le_bytes(bytes) % 1_000_000)
}

/// Writes the access details to stderr and every console device that opens.
fn announce(consoles: &[PathBuf], fingerprint: &str, pin: &str, listen: &str) {
    let text = format!(
        "\ncairn first-boot setup: open https://<this appliance>:{port}/\n  certificate sha256 fingerprint: {fingerprint}\n  one-time PIN: {pin}\n\n",
        port = listen.rsplit(':').next().unwrap_or("8443")
    );
    eprint!("{text}");
    for console in consoles {
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(console) {
            let _ = std::io::Write::write_all(&mut f, text.as_bytes());
        }
    }
}

/// Same-length comparison without early exit, so timing does not leak PIN digits.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn page<N>(
    state: &Shared<N>,
    form: &SetupForm,
    error: Option<StepError>,
    done: bool,
) -> Html<String> {
    let mut ctx = Context::new();
    ctx.insert("nics", &state.nics);
    ctx.insert("form", form);
    ctx.insert("error", &error);
    ctx.insert("done", &done);
    Html(
        state
            .tera
            .render("page.html", &ctx)
            .unwrap_or_else(|e| format!("template error: {e}")),
    )
}

async fn index<N: Network + 'static>(State(state): State<Arc<Shared<N>>>) -> Html<String> {
    page(
        &state,
        &SetupForm {
            mode: "dhcp".into(),
            ..Default::default()
        },
        None,
        false,
    )
    .await
}

async fn apply<N: Network + 'static>(
    State(state): State<Arc<Shared<N>>>,
    ConnectInfo(Peer(peer)): ConnectInfo<Peer>,
    Form(form): Form<SetupForm>,
) -> Html<String> {
    {
        let mut guard = state.pin.lock().await;
        if let Err(refusal) = guard.check(peer.ip(), form.pin.trim(), Instant::now()) {
            let message = match refusal {
                PinRefusal::Wrong => "the PIN does not match".into(),
                PinRefusal::Replaced => {
                    announce(&state.consoles, &state.fingerprint, &guard.pin, "");
                    "too many wrong PINs: a new PIN is shown on the console".into()
                }
                PinRefusal::Wait(wait) => format!(
                    "too many wrong PINs from this address: try again in {} s",
                    wait.as_secs() + 1
                ),
            };
            tracing::warn!(source = %peer.ip(), "wizard: PIN refused");
            let error = StepError {
                step: "Checking the PIN",
                message,
                hint: "type the PIN shown on the appliance's console",
            };
            return page(&state, &form, Some(error), false).await;
        }
    }
    match test_and_apply(&state, &form).await {
        Ok(()) => {
            // The PIN is one-time: nothing more can be posted.
            *state.pin.lock().await = PinGuard::new(new_pin());
            let _ = state.done.send(true);
            page(&state, &form, None, true).await
        }
        Err(e) => {
            tracing::warn!(step = e.step, message = %e.message, "wizard: test and apply failed");
            page(&state, &form, Some(e), false).await
        }
    }
}

async fn test_and_apply<N: Network>(state: &Shared<N>, form: &SetupForm) -> Result<(), StepError> {
    let names: Vec<String> = state.nics.iter().map(|n| n.name.clone()).collect();
    let netplan = validate(form, &names)?;
    let trial = state
        .network
        .try_host(&netplan)
        .await
        .map_err(|e| StepError {
            step: "Applying the network",
            message: e.to_string(),
            hint: "check the interface, address and VLAN; the previous network was restored",
        })?;
    let checked = check_hub(form).await;
    if let Err(e) = checked {
        if let Err(rb) = state.network.rollback(trial).await {
            return Err(StepError {
                message: format!("{}; rolling the network back failed too: {rb}", e.message),
                ..e
            });
        }
        return Err(e);
    }
    save(&state.root, form, &netplan).map_err(|e| StepError {
        step: "Saving the configuration",
        message: e.to_string(),
        hint: "the disk may be full or read-only; check the console",
    })
}

async fn check_hub(form: &SetupForm) -> Result<(), StepError> {
    let fp = normalize_fingerprint(&form.fingerprint).unwrap_or_default();
    let ca = HttpsHub::fetch_pinned_ca(form.hub_url.trim_end_matches('/'), &fp)
        .await
        .map_err(|e| StepError {
            step: "Reaching the hub",
            message: cairn_api::error_chain(&e),
            hint: "check the hub URL, gateway and DNS, and compare the fingerprint with the one `cairn-hub init` printed",
        })?;
    let hub = HttpsHub::new(
        form.hub_url.trim_end_matches('/'),
        &Trust::CaBundle(ca),
        None,
    )
    .map_err(|e| StepError {
        step: "Reaching the hub",
        message: e.to_string(),
        hint: "the hub's CA could not be used",
    })?;
    let check = hub
        .check_token(form.token.trim())
        .await
        .map_err(|e| StepError {
            step: "Checking the token",
            message: cairn_api::error_chain(&e),
            hint: "try again; if it persists, check the hub",
        })?;
    if !check.valid {
        return Err(StepError {
            step: "Checking the token",
            message: format!(
                "the hub does not accept this token ({})",
                check
                    .reason
                    .map_or_else(|| "no reason given".into(), |r| r.to_string())
            ),
            hint: "ask the fleet operator for a new enrollment token",
        });
    }
    Ok(())
}

fn save(root: &std::path::Path, form: &SetupForm, netplan: &str) -> std::io::Result<()> {
    let etc = root.join("etc/cairn");
    atomic_write_mode(
        &etc.join("netplan/50-wizard.yaml"),
        netplan.as_bytes(),
        0o600,
    )?;
    atomic_write_mode(
        &etc.join("enrollment-token"),
        format!("{}\n", form.token.trim()).as_bytes(),
        0o600,
    )?;
    // node.yaml last: its presence means "configured".
    atomic_write_mode(
        &root.join(config::MAIN_FILE),
        node_yaml(form).as_bytes(),
        0o644,
    )
}

/// TLS on top of a TCP listener, for axum.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            // A client that never finishes its handshake must not block the wizard.
            let handshake = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                self.acceptor.accept(tcp),
            );
            if let Ok(Ok(tls)) = handshake.await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// Runs the wizard until a configuration is saved.
pub async fn run<N: Network + 'static>(
    listen: &str,
    root: PathBuf,
    sys_root: &std::path::Path,
    network: N,
    consoles: Vec<PathBuf>,
) -> Result<(), WizardError> {
    let fail = |detail: String| WizardError::Start {
        listen: listen.to_owned(),
        detail,
    };
    let key = rcgen::KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(vec!["cairn-appliance".into()])
        .map_err(|e| fail(e.to_string()))?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "cairn appliance setup");
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    let fingerprint = crate::pki::fingerprint(cert.der());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| fail(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
            .map_err(|e| fail(e.to_string()))?,
    )
    .map_err(|e| fail(e.to_string()))?;
    let tcp = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| fail(e.to_string()))?;
    let bound = tcp
        .local_addr()
        .map_err(|e| fail(e.to_string()))?
        .to_string();
    let mut tera = Tera::default();
    tera.add_raw_template("page.html", include_str!("../templates/wizard/page.html"))
        .map_err(|e| fail(e.to_string()))?;
    let inventory = crate::inventory::collect(&crate::inventory::Roots {
        sys: sys_root.to_path_buf(),
        proc: "/proc".into(),
    });
    let pin = new_pin();
    announce(&consoles, &fingerprint, &pin, &bound);
    tracing::info!(listen = %bound, "first-boot wizard waiting for setup");
    let (done_tx, mut done_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        tera,
        nics: inventory
            .nics
            .iter()
            .map(|n| crate::status::NicView {
                name: n.name.clone(),
                mac: n.mac.clone(),
                link_up: n.link_up.unwrap_or(false),
            })
            .collect(),
        root,
        network,
        pin: Mutex::new(PinGuard::new(pin)),
        consoles,
        fingerprint,
        done: done_tx,
    });
    let app = axum::Router::new()
        .route("/", get(index::<N>))
        .route("/apply", post(apply::<N>))
        .with_state(shared);
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
    };
    axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
        .with_graceful_shutdown(async move {
            let _ = done_rx.wait_for(|d| *d).await;
            // Let the success page reach the browser.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        })
        .await
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form() -> SetupForm {
        SetupForm {
            interface: "eth0".into(),
            mode: "static".into(),
            address: "192.0.2.10/24".into(),
            gateway: "192.0.2.1".into(),
            dns: "192.0.2.53, 2001:db8::53".into(),
            hostname: "edge-9".into(),
            hub_url: "https://hub.test:8443/".into(),
            token: "cairn-et.a.b".into(),
            fingerprint: format!("sha256:{}", "AB".repeat(32)),
            ..Default::default()
        }
    }

    #[test]
    fn static_form_becomes_netplan_and_node_yaml_that_cairn_accepts() {
        let yaml = validate(&form(), &["eth0".into()]).unwrap();
        let config = cairn_netplan::schema::parse_str("w.yaml", &yaml).unwrap();
        assert_eq!(config.devices.len(), 1, "{yaml}");
        assert!(
            yaml.contains("192.0.2.10/24") && yaml.contains("via: 192.0.2.1"),
            "{yaml}"
        );
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &form(), &yaml).unwrap();
        let s = config::load(dir.path()).unwrap();
        assert_eq!(s.hostname, "edge-9");
        assert_eq!(s.hub_url, "https://hub.test:8443");
        assert_eq!(
            std::fs::read_to_string(&s.token_file).unwrap(),
            "cairn-et.a.b\n"
        );
    }

    #[test]
    fn vlan_form_puts_the_address_on_the_vlan() {
        let mut f = form();
        f.vlan = "42".into();
        let yaml = validate(&f, &["eth0".into()]).unwrap();
        let config = cairn_netplan::schema::parse_str("w.yaml", &yaml).unwrap();
        assert_eq!(config.devices.len(), 2, "{yaml}");
        assert!(yaml.contains("eth0.42"), "{yaml}");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            (
                SetupForm {
                    interface: "wlan9".into(),
                    ..form()
                },
                "unknown interface",
            ),
            (
                SetupForm {
                    address: "192.0.2.10".into(),
                    ..form()
                },
                "needs a /prefix",
            ),
            (
                SetupForm {
                    gateway: "gw".into(),
                    ..form()
                },
                "gateway",
            ),
            (
                SetupForm {
                    vlan: "5000".into(),
                    ..form()
                },
                "VLAN ID",
            ),
            (
                SetupForm {
                    hub_url: "http://x".into(),
                    ..form()
                },
                "https://",
            ),
            (
                SetupForm {
                    fingerprint: "12".into(),
                    ..form()
                },
                "fingerprint",
            ),
            (
                SetupForm {
                    hostname: "-x".into(),
                    ..form()
                },
                "hostname",
            ),
        ];
        for (f, want) in cases {
            let err = validate(&f, &["eth0".into()]).unwrap_err();
            assert!(err.message.contains(want), "{want}: {err:?}");
        }
    }

    #[test]
    fn pin_comparison() {
        assert!(same("123456", "123456"));
        assert!(!same("123456", "123457"));
        assert!(!same("12345", "123456"));
        assert_eq!(new_pin().len(), 6);
    }

    #[test]
    fn wrong_pins_make_their_source_wait_longer_each_time() {
        let start = Instant::now();
        let mut guard = PinGuard::new("123456".into());
        let attacker: IpAddr = "192.0.2.66".parse().unwrap();
        let admin: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(
            guard.check(attacker, "wrong0", start),
            Err(PinRefusal::Wrong)
        );
        // Even the right PIN is not compared during the wait.
        assert_eq!(
            guard.check(attacker, "123456", start + Duration::from_millis(500)),
            Err(PinRefusal::Wait(Duration::from_millis(500)))
        );
        // Another source is not held up by the attacker's wait.
        assert_eq!(guard.check(admin, "123456", start), Ok(()));
        let t = start + Duration::from_secs(1);
        assert_eq!(guard.check(attacker, "wrong1", t), Err(PinRefusal::Wrong));
        assert_eq!(
            guard.check(attacker, "wrong2", t + Duration::from_secs(1)),
            Err(PinRefusal::Wait(Duration::from_secs(1))),
            "the second failure doubles the wait"
        );
        let t = t + Duration::from_secs(2);
        assert_eq!(guard.check(attacker, "123456", t), Ok(()));
    }

    #[test]
    fn the_wait_is_capped_and_ipv6_hosts_count_per_64() {
        let mut guard = PinGuard::new("123456".into());
        let mut t = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        for _ in 0..30 {
            let r = guard.check(a, "wrong0", t);
            assert!(
                matches!(r, Err(PinRefusal::Wrong | PinRefusal::Replaced)),
                "{r:?}"
            );
            t += MAX_PIN_WAIT;
        }
        assert_eq!(
            guard.check(b, "wrong0", t - Duration::from_secs(1)),
            Err(PinRefusal::Wait(Duration::from_secs(1)))
        );
    }

    #[test]
    fn five_wrong_pins_from_anywhere_replace_the_pin() {
        let mut guard = PinGuard::new("123456".into());
        let now = Instant::now();
        for i in 1..MAX_PIN_FAILURES {
            let source = IpAddr::from([192, 0, 2, i as u8]);
            assert_eq!(guard.check(source, "wrong0", now), Err(PinRefusal::Wrong));
        }
        let last = IpAddr::from([192, 0, 2, 99]);
        assert_eq!(guard.check(last, "wrong0", now), Err(PinRefusal::Replaced));
        assert_ne!(guard.pin, "123456");
        let fresh = IpAddr::from([198, 51, 100, 1]);
        assert_eq!(guard.check(fresh, "123456", now), Err(PinRefusal::Wrong));
    }
}
