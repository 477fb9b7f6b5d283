//! `cairn boot-server`: proxy DHCP, TFTP and HTTP/iPXE for the servers of an inventory.
//!
//! - DHCP ([`dhcp`]): answers PXE clients whose MAC is in the inventory, nothing else.
//! - TFTP ([`tftp`]): iPXE itself, for NIC ROMs that are plain PXE.
//! - HTTP (axum): `/boot/{mac}.ipxe` (per-server iPXE script rendered with tera from the
//!   build's `pxe/ipxe.tera`, carrying this server's URL and a fresh one-time nonce),
//!   `/pxe/...` (kernel, initrd, payload; Range requests supported), `/media/...` (the
//!   per-server seeded ISOs `cairn rack provision` builds into the build's `media/` for
//!   virtual media, each under a random 128-bit path and never listed), `POST /v1/install/plan`
//!   (the nonce, once, for the plan and a report token) and `/v1/install/progress` (the
//!   report token); for the rack provisioner, unauthenticated reads of what the agents
//!   reported: `/v1/install/progress/{mac}` (the latest report of one server) and
//!   `/v1/install/status` (every inventory server). Both shapes are a contract documented
//!   in docs/images.md.
//!
//! Nothing secret is on the PXE LAN's unauthenticated paths or the kernel command line: the
//! script carries only the nonce, which the agent exchanges once (a second exchange, or one
//! with an older nonce, is refused). The enrollment token in the plan is minted at that
//! exchange from the hub with the operator token this server was given: single-use, bound
//! to the server's boot MAC (and to the serial rack.yaml declares for it), expiring with the
//! install timeout. The boot server never holds
//! a multi-use enrollment token. Nonces and report tokens are random; only their SHA-256 is
//! kept in memory. The inventory is read with `cairn_hardware::inventory` (the format's
//! owner).

pub mod dhcp;
pub mod tftp;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::Json;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use cairn_api::InstallProgress;
use cairn_api::cli::Exit;
use clap::Args;

use crate::agent::plan::{InstallPlan, PlanGrant};

/// Serve PXE to the servers of an inventory.
///
/// Example: `cairn boot-server --artifacts out/ --interface br-lab --inventory rack.yaml
/// --hub-url https://hub:8443 --hub-ca hub-ca.pem`. Only servers with a `boot_mac` are
/// answered. Without `--dhcp-range` another DHCP server must hand out addresses.
#[derive(Debug, Args)]
pub struct BootServerArgs {
    /// The output directory of `cairn image build` (holds pxe/). Its media/ is served too:
    /// `cairn rack provision` builds the seeded virtual-media ISOs there.
    #[arg(long)]
    artifacts: PathBuf,
    /// The network interface facing the servers.
    #[arg(long)]
    interface: String,
    /// The rack inventory (rack.yaml).
    #[arg(long)]
    inventory: PathBuf,
    /// Our address on the interface; default: its first IPv4 address.
    #[arg(long)]
    address: Option<Ipv4Addr>,
    /// HTTP port (0 picks a free one; the chosen URL is logged).
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// TFTP port for the PXE ROMs that load iPXE first (69 is what every ROM asks).
    #[arg(long, default_value_t = 69)]
    tftp_port: u16,
    /// Where ipxe.efi and undionly.kpxe are (Debian's ipxe package).
    #[arg(long, default_value = "/usr/lib/ipxe")]
    ipxe_dir: PathBuf,
    /// Also lease addresses to inventory MACs, from this range: `192.168.77.100-192.168.77.200`.
    #[arg(long)]
    dhcp_range: Option<String>,
    /// Hub URL written into each server's node.yaml (cairn-node's schema, docs/images.md).
    /// Needs --hub-ca, --hub-token-file and --site: cairn-node trusts no hub it cannot
    /// verify and registers only with a token, which this server mints per install.
    #[arg(long, requires_all = ["hub_ca", "hub_token_file", "site"])]
    hub_url: Option<String>,
    /// Hub CA bundle (PEM): the only CA trusted for the hub, and written next to node.yaml.
    #[arg(long, requires = "hub_url")]
    hub_ca: Option<PathBuf>,
    /// File holding an operator token (operator role, for --site) with which one
    /// single-use enrollment token per install is minted, bound to the server's boot MAC
    /// and to the serial rack.yaml declares for it.
    /// Never pass tokens on the command line.
    #[arg(long, requires = "hub_url")]
    hub_token_file: Option<PathBuf>,
    /// Site the installed servers enroll into.
    #[arg(long, requires = "hub_url")]
    site: Option<String>,
    /// How long an install may take, seconds: each per-server enrollment token expires then.
    #[arg(long, default_value_t = 3600)]
    install_timeout: u64,
    /// Let the agent overwrite disks that hold partitions or filesystems.
    #[arg(long)]
    allow_wipe: bool,
    /// Probe the segment for other DHCP servers first (6 s): refuse to start if one offers
    /// PXE, or if any answers while --dhcp-range would make this one lease too; otherwise
    /// warn and start as proxy DHCP beside it.
    #[arg(long)]
    preflight: bool,
    /// Extra kernel arguments for the install environment.
    #[arg(long, default_value = "console=ttyS0,115200")]
    kernel_args: String,
    /// What the install environment does when the install fails: stay (default, shows the
    /// error on the console), poweroff or reboot.
    #[arg(long)]
    on_fail: Option<String>,
}

struct Server {
    name: String,
    mac: String,
    /// The serial rack.yaml declares: the install's token is bound to it too.
    serial: Option<String>,
    /// The plan without its enrollment token (minted at each exchange).
    plan: InstallPlan,
}

/// One server's secrets of the moment, as SHA-256 hex.
#[derive(Default)]
struct Session {
    /// The nonce of the latest script served, until it is exchanged.
    nonce: Option<String>,
    /// The report token handed out with the latest plan.
    report: Option<String>,
}

/// What renders the per-server iPXE scripts.
struct Scripts {
    tera: tera::Tera,
    base_url: String,
    kernel_args: String,
    on_fail: Option<String>,
}

/// Mints the per-install enrollment tokens at the hub.
struct Enroller {
    hub: cairn_hub_client::HubClient,
    site: String,
    ttl_seconds: u64,
}

struct AppState {
    servers: Vec<Server>,
    scripts: Scripts,
    enroller: Option<Enroller>,
    /// Per boot MAC.
    sessions: Mutex<BTreeMap<String, Session>>,
    /// The latest report per boot MAC, numbered by `next_seq`.
    progress: Mutex<Reports>,
}

#[derive(Default)]
struct Reports {
    next_seq: u64,
    latest: BTreeMap<String, Report>,
}

/// One server's latest report, as `GET /v1/install/progress/{mac}` answers it. `seq` grows
/// with every report the boot server accepts (from any server), so a poller sees whether a
/// report is new even when it repeats the previous step.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Report {
    /// Order of arrival at this boot server (starts at 1).
    pub seq: u64,
    /// What the agent sent; `mac` is the inventory's boot MAC of the token's server.
    pub progress: InstallProgress,
}

/// One inventory server in `GET /v1/install/status`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ServerStatus {
    /// The inventory name.
    pub name: String,
    /// The boot MAC (lowercase).
    pub mac: String,
    /// The latest report, or `null` before the agent reported anything.
    pub report: Option<Report>,
}

/// `GET /v1/install/status`: every inventory server with a boot MAC, in inventory order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct StatusAnswer {
    /// The servers.
    pub servers: Vec<ServerStatus>,
}

fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

fn random_hex() -> anyhow::Result<String> {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| anyhow::anyhow!("no randomness for install nonces"))?;
    Ok(hex::encode(bytes))
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

impl AppState {
    /// The server whose current report token `headers` carry.
    fn by_report_token(&self, headers: &HeaderMap) -> Option<&Server> {
        let hash = sha256_hex(bearer(headers)?);
        let sessions = self.sessions.lock().expect("not poisoned");
        let mac = sessions
            .iter()
            .find(|(_, s)| s.report.as_deref() == Some(hash.as_str()))?
            .0;
        self.servers.iter().find(|s| &s.mac == mac)
    }

    /// Takes the nonce `headers` carry: the server it was issued to, once.
    fn take_nonce(&self, headers: &HeaderMap) -> Option<&Server> {
        let hash = sha256_hex(bearer(headers)?);
        let mut sessions = self.sessions.lock().expect("not poisoned");
        let (mac, session) = sessions
            .iter_mut()
            .find(|(_, s)| s.nonce.as_deref() == Some(hash.as_str()))?;
        session.nonce = None;
        let mac = mac.clone();
        self.servers.iter().find(|s| s.mac == mac)
    }
}

impl BootServerArgs {
    /// Runs the boot server.
    pub async fn run(self) -> anyhow::Result<Exit> {
        let rack = match cairn_hardware::inventory::Rack::load(&self.inventory) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e:#}");
                return Ok(Exit::InvalidInput);
            }
        };
        let (server_ip, prefix) = interface_address(&self.interface, self.address)?;
        if self.preflight {
            let others = dhcp::preflight(&self.interface, std::time::Duration::from_secs(6))
                .await
                .context("preflight DHCP probe")?;
            for (ip, pxe) in &others {
                tracing::warn!(server = %ip, pxe, "another DHCP server answers on this segment");
            }
            if let Some((ip, _)) = others.iter().find(|(_, pxe)| *pxe) {
                eprintln!(
                    "error: another PXE server ({ip}) answers on {}; stop it first",
                    self.interface
                );
                return Ok(Exit::Failed);
            }
            // Proxy mode relies on the other DHCP server for addresses; leasing beside it
            // would hand out conflicting ones.
            if let (Some((ip, _)), Some(_)) = (others.first(), &self.dhcp_range) {
                eprintln!(
                    "error: another DHCP server ({ip}) answers on {}; drop --dhcp-range to run as proxy DHCP beside it",
                    self.interface
                );
                return Ok(Exit::Failed);
            }
        }
        let listener = tokio::net::TcpListener::bind((server_ip, self.http_port))
            .await
            .with_context(|| format!("binding HTTP on {server_ip}:{}", self.http_port))?;
        let base_url = format!("http://{}", listener.local_addr()?);
        let template_path = self.artifacts.join("pxe/ipxe.tera");
        let template = std::fs::read_to_string(&template_path).with_context(|| {
            format!(
                "reading {} (is --artifacts a build output?)",
                template_path.display()
            )
        })?;
        let mut tera = tera::Tera::default();
        tera.add_raw_template("ipxe", &template)
            .context("parsing ipxe.tera")?;

        let read_opt = |p: &Option<PathBuf>| -> anyhow::Result<Option<String>> {
            p.as_ref()
                .map(|p| {
                    std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
                })
                .transpose()
        };
        let hub_ca = read_opt(&self.hub_ca)?;
        let enroller = match (
            &self.hub_url,
            &hub_ca,
            read_opt(&self.hub_token_file)?,
            &self.site,
        ) {
            (Some(url), Some(ca), Some(token), Some(site)) => Some(Enroller {
                hub: cairn_hub_client::HubClient::new(
                    url,
                    &cairn_hub_client::tls::Trust::CaBundle(ca.clone()),
                    None,
                )
                .context("hub client")?
                .with_bearer(token.trim()),
                site: site.clone(),
                ttl_seconds: self.install_timeout,
            }),
            _ => None,
        };
        let pool = self.dhcp_range.as_deref().map(parse_range).transpose()?;
        let mut servers = Vec::new();
        let mut leases = BTreeMap::new();
        let mut boot_urls = BTreeMap::new();
        for s in &rack.servers {
            let Some(mac) = s.boot_mac.as_ref().map(|m| m.to_ascii_lowercase()) else {
                tracing::warn!(server = %s.name, "no boot_mac: not served");
                continue;
            };
            let mut netplan = BTreeMap::new();
            if let Some(p) = &s.netplan {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("{}: netplan {}", s.name, p.display()))?;
                netplan.insert("50-cairn.yaml".to_owned(), text);
            }
            let node_yaml = self
                .hub_url
                .as_ref()
                .map(|hub| crate::agent::plan::node_yaml(&s.name, hub));
            let plan = InstallPlan {
                name: s.name.clone(),
                disk_hint: s.disk_hint.clone(),
                wipe: self.allow_wipe,
                node_yaml,
                netplan,
                hub_ca: hub_ca.clone(),
                enrollment_token: None,
            };
            if let Some((start, end)) = pool {
                let ip = u32::from(start) + servers.len() as u32;
                anyhow::ensure!(
                    ip <= u32::from(end),
                    "--dhcp-range is smaller than the inventory"
                );
                leases.insert(mac.clone(), Ipv4Addr::from(ip));
            }
            boot_urls.insert(mac.clone(), format!("{base_url}/boot/{mac}.ipxe"));
            servers.push(Server {
                name: s.name.clone(),
                mac,
                serial: s.serial.clone(),
                plan,
            });
        }
        let dhcp_cfg = Arc::new(dhcp::DhcpConfig {
            server_ip,
            prefix,
            boot_urls,
            leases,
            tftp_bootfile: (tftp::BOOT_FILES.0.into(), tftp::BOOT_FILES.1.into()),
        });
        let state = Arc::new(AppState {
            servers,
            scripts: Scripts {
                tera,
                base_url: base_url.clone(),
                kernel_args: self.kernel_args.clone(),
                on_fail: self.on_fail.clone(),
            },
            enroller,
            sessions: Mutex::default(),
            progress: Mutex::default(),
        });
        let app = router(state.clone(), &self.artifacts);
        let tftp = tftp::Tftp::bind(
            &self.ipxe_dir,
            (server_ip, self.tftp_port).into(),
            tftp::Limits::default(),
        )
        .await?;
        tracing::info!(url = %base_url, tftp = %tftp.addr(), interface = %self.interface, servers = state.servers.len(), "boot server up");
        cairn_api::cli::service::ready(&format!(
            "serving {} servers on {} ({base_url})",
            state.servers.len(),
            self.interface
        ));
        let http = axum::serve(listener, app);
        let iface = self.interface.clone();
        let dhcp67 = dhcp::serve(&iface, dhcp_cfg.clone(), 67);
        let dhcp4011 = dhcp::serve(&iface, dhcp_cfg, 4011);
        tokio::select! {
            r = http => r.context("HTTP server")?,
            r = dhcp67 => r.context("DHCP on port 67 (needs root or CAP_NET_BIND_SERVICE)")?,
            r = dhcp4011 => r.context("proxy DHCP on port 4011")?,
            r = tftp.serve() => r.context("TFTP")?,
            _ = tokio::signal::ctrl_c() => tracing::info!("stopping"),
        }
        Ok(Exit::Success)
    }
}

fn router(state: Arc<AppState>, artifacts: &std::path::Path) -> axum::Router {
    let serve = |dir: &str| tower_http::services::ServeDir::new(artifacts.join(dir));
    axum::Router::new()
        .route("/boot/{file}", get(boot_script))
        .route("/v1/install/plan", post(plan))
        .route("/v1/install/progress", post(progress))
        .route("/v1/install/progress/{mac}", get(progress_of))
        .route("/v1/install/status", get(status))
        .nest_service("/pxe", serve("pxe"))
        // No directory listing: a seeded ISO's URL is its only way in.
        .nest_service("/media", serve("media"))
        .with_state(state)
}

fn parse_range(text: &str) -> anyhow::Result<(Ipv4Addr, Ipv4Addr)> {
    let (a, b) = text
        .split_once('-')
        .with_context(|| format!("--dhcp-range {text:?}: expected FIRST-LAST"))?;
    let (a, b): (Ipv4Addr, Ipv4Addr) = (a.trim().parse()?, b.trim().parse()?);
    anyhow::ensure!(
        u32::from(a) <= u32::from(b),
        "--dhcp-range {text:?}: FIRST > LAST"
    );
    Ok((a, b))
}

/// Our IPv4 address and prefix on `interface` (from `ip -4 -o addr`, the one call to a tool).
fn interface_address(interface: &str, given: Option<Ipv4Addr>) -> anyhow::Result<(Ipv4Addr, u8)> {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "dev", interface])
        .output()
        .context("running ip (iproute2)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<(Ipv4Addr, u8)> = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "inet")
        .filter_map(|w| {
            let (ip, prefix) = w[1].split_once('/')?;
            Some((ip.parse().ok()?, prefix.parse().ok()?))
        })
        .collect();
    match given {
        Some(ip) => Ok((
            ip,
            found.iter().find(|(a, _)| *a == ip).map_or(24, |(_, p)| *p),
        )),
        None => found.first().copied().with_context(|| {
            format!("interface {interface} has no IPv4 address (or does not exist)")
        }),
    }
}

async fn boot_script(
    State(state): State<Arc<AppState>>,
    UrlPath(file): UrlPath<String>,
) -> axum::response::Response {
    let mac = file.trim_end_matches(".ipxe").to_ascii_lowercase();
    let Some(s) = state.servers.iter().find(|s| s.mac == mac) else {
        return (
            StatusCode::NOT_FOUND,
            format!("#!ipxe\necho cairn: {mac} is not in the inventory\nexit 1\n"),
        )
            .into_response();
    };
    match render_script(&state, s) {
        Ok(script) => {
            tracing::info!(server = %s.name, %mac, "serving iPXE script with a fresh nonce");
            (StatusCode::OK, script).into_response()
        }
        Err(e) => {
            tracing::error!(server = %s.name, error = %format!("{e:#}"), "rendering the iPXE script");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot render the script",
            )
                .into_response()
        }
    }
}

/// The script for `s` with a fresh nonce, which replaces any earlier one of `s`: a server
/// that boots again gets a new one; the old one is worthless.
fn render_script(state: &AppState, s: &Server) -> anyhow::Result<String> {
    let nonce = random_hex()?;
    let mut ctx = tera::Context::new();
    ctx.insert("base_url", &state.scripts.base_url);
    ctx.insert("mac", &s.mac);
    ctx.insert("name", &s.name);
    ctx.insert("nonce", &nonce);
    ctx.insert("kernel_args", &state.scripts.kernel_args);
    ctx.insert("on_fail", &state.scripts.on_fail);
    let script = state
        .scripts
        .tera
        .render("ipxe", &ctx)
        .context("rendering ipxe.tera")?;
    state
        .sessions
        .lock()
        .expect("not poisoned")
        .entry(s.mac.clone())
        .or_default()
        .nonce = Some(sha256_hex(&nonce));
    Ok(script)
}

/// `POST /v1/install/plan`: the nonce (bearer), once, for the plan with a freshly minted
/// enrollment token and the report token.
async fn plan(State(state): State<Arc<AppState>>, headers: HeaderMap) -> axum::response::Response {
    let Some(s) = state.take_nonce(&headers) else {
        return (
            StatusCode::UNAUTHORIZED,
            "unknown or already used install nonce",
        )
            .into_response();
    };
    let mut plan = s.plan.clone();
    if let Some(e) = &state.enroller {
        let request = cairn_api::hub::CreateEnrollmentToken {
            site: e.site.clone(),
            ttl_seconds: e.ttl_seconds,
            max_uses: 1,
            labels: Default::default(),
            tenant: None,
            mac: Some(s.mac.clone()),
            serial: s.serial.clone(),
        };
        match e.hub.create_token(&request).await {
            Ok(t) => {
                tracing::info!(server = %s.name, mac = %s.mac, serial = ?s.serial, token = %t.view.id, "minted this install's enrollment token");
                plan.enrollment_token = Some(t.token);
            }
            Err(err) => {
                let err = cairn_api::error_chain(&err);
                tracing::error!(server = %s.name, error = %err, "minting the enrollment token");
                return (
                    StatusCode::BAD_GATEWAY,
                    format!("the hub did not mint an enrollment token: {err}"),
                )
                    .into_response();
            }
        }
    }
    let report_token = match random_hex() {
        Ok(t) => t,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    state
        .sessions
        .lock()
        .expect("not poisoned")
        .entry(s.mac.clone())
        .or_default()
        .report = Some(sha256_hex(&report_token));
    tracing::info!(server = %s.name, mac = %s.mac, "install plan handed out");
    Json(PlanGrant { plan, report_token }).into_response()
}

async fn progress(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Json(p): Json<InstallProgress>,
) -> StatusCode {
    let Some(s) = state.by_report_token(&headers) else {
        return StatusCode::UNAUTHORIZED;
    };
    tracing::info!(server = %s.name, step = ?p.step, bytes = p.bytes_written, message = %p.message, "install progress");
    // The token says which server this is; the MAC the agent claims is only informational.
    let progress = InstallProgress {
        mac: s.mac.clone(),
        ..p
    };
    let mut reports = state.progress.lock().expect("not poisoned");
    reports.next_seq += 1;
    let seq = reports.next_seq;
    reports
        .latest
        .insert(s.mac.clone(), Report { seq, progress });
    StatusCode::NO_CONTENT
}

async fn progress_of(
    State(state): State<Arc<AppState>>,
    UrlPath(mac): UrlPath<String>,
) -> axum::response::Response {
    let mac = mac.to_ascii_lowercase();
    match state
        .progress
        .lock()
        .expect("not poisoned")
        .latest
        .get(&mac)
    {
        Some(r) => Json(r.clone()).into_response(),
        None if state.servers.iter().any(|s| s.mac == mac) => {
            (StatusCode::NOT_FOUND, "no report from this server yet").into_response()
        }
        None => (StatusCode::NOT_FOUND, "not in the inventory").into_response(),
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Json<StatusAnswer> {
    let reports = state.progress.lock().expect("not poisoned");
    Json(StatusAnswer {
        servers: state
            .servers
            .iter()
            .map(|s| ServerStatus {
                name: s.name.clone(),
                mac: s.mac.clone(),
                report: reports.latest.get(&s.mac).cloned(),
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC1: &str = "52:54:00:ab:00:01";

    /// Two inventory servers, the build's own iPXE template, and report tokens `t1`, `t2`.
    fn state_with(enroller: Option<Enroller>) -> Arc<AppState> {
        let server = |name: &str, mac: &str, serial: Option<&str>| Server {
            name: name.into(),
            mac: mac.into(),
            serial: serial.map(str::to_owned),
            plan: InstallPlan {
                name: name.into(),
                ..Default::default()
            },
        };
        let mut tera = tera::Tera::default();
        tera.add_raw_template("ipxe", include_str!("../../image-build/dist/ipxe.tera"))
            .unwrap();
        let sessions = [(MAC1, "t1"), ("52:54:00:00:00:02", "t2")]
            .into_iter()
            .map(|(mac, t)| {
                let session = Session {
                    nonce: None,
                    report: Some(sha256_hex(t)),
                };
                (mac.to_owned(), session)
            })
            .collect();
        Arc::new(AppState {
            servers: vec![
                server("edge-1", MAC1, Some("EDGE1-SN")),
                server("edge-2", "52:54:00:00:00:02", None),
            ],
            scripts: Scripts {
                tera,
                base_url: "http://192.0.2.1:8080".into(),
                kernel_args: "console=ttyS0,115200".into(),
                on_fail: None,
            },
            enroller,
            sessions: Mutex::new(sessions),
            progress: Mutex::default(),
        })
    }

    fn state() -> Arc<AppState> {
        state_with(None)
    }

    async fn serve(state: Arc<AppState>) -> String {
        let dir = tempfile::tempdir().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = router(state, dir.path());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        base
    }

    /// The PXE LAN's view, with a real hub: the script (and so the kernel command line)
    /// carries only a nonce; it is exchanged once for the plan, whose enrollment token the
    /// hub minted at that moment, single-use and bound to the server's boot MAC and to the
    /// serial rack.yaml declares; a newer script makes the older nonce worthless; the boot
    /// server holds no other token.
    #[tokio::test]
    async fn the_script_carries_only_a_nonce_exchanged_once_for_a_bound_token() {
        let hub = cairn_test_support::hub::Hub::builder(cairn_test_support::workspace_bin(
            "cairn-hub",
            "cairn-hub",
        ))
        .start();
        let trust = cairn_hub_client::tls::Trust::CaBundle(hub.ca_pem.clone());
        let admin = cairn_hub_client::HubClient::new(&hub.url, &trust, None)
            .unwrap()
            .with_bearer(hub.admin_token.clone());
        let enroller = Enroller {
            hub: admin.clone(),
            site: "lab".into(),
            ttl_seconds: 900,
        };
        let base = serve(state_with(Some(enroller))).await;
        let http = reqwest::Client::new();
        let script = || async {
            let r = http
                .get(format!("{base}/boot/{MAC1}.ipxe"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.unwrap()
        };
        let nonce_of = |script: &str| {
            script
                .split_whitespace()
                .find_map(|w| w.strip_prefix("cairn.nonce="))
                .unwrap_or_else(|| panic!("no nonce in {script}"))
                .to_owned()
        };
        let exchange = |nonce: String| {
            http.post(format!("{base}/v1/install/plan"))
                .bearer_auth(nonce)
                .send()
        };
        let first = script().await;
        let second = script().await;
        assert_ne!(nonce_of(&first), nonce_of(&second));
        let stale = exchange(nonce_of(&first)).await.unwrap();
        assert_eq!(stale.status(), 401, "an older script's nonce is worthless");

        let grant: PlanGrant = exchange(nonce_of(&second))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let token = grant.plan.enrollment_token.clone().expect("a token");
        assert!(token.starts_with("cairn-et."), "{token}");
        let again = exchange(nonce_of(&second)).await.unwrap();
        assert_eq!(again.status(), 401, "a nonce is exchanged once");
        let cmdline = second.lines().find(|l| l.starts_with("kernel ")).unwrap();
        for secret in [&token, &grant.report_token] {
            assert!(!second.contains(secret.as_str()), "{second}");
        }
        assert!(
            !cmdline.contains("cairn-et") && !cmdline.contains("token"),
            "{cmdline}"
        );

        let tokens = admin.list_tokens().await.unwrap();
        assert_eq!(
            tokens.len(),
            1,
            "the boot server holds no other token: {tokens:?}"
        );
        let minted = &tokens[0];
        assert_eq!(token.split('.').nth(1), Some(minted.id.as_str()));
        assert_eq!(
            (
                minted.max_uses,
                minted.mac.as_deref(),
                minted.serial.as_deref(),
                minted.site.as_str()
            ),
            (1, Some(MAC1), Some("EDGE1-SN"), "lab")
        );
        let ttl = (minted.expires_at - minted.created_at).whole_seconds();
        assert!(
            (899..=900).contains(&ttl),
            "expires with the install timeout: {ttl}"
        );

        // Reports need the report token, never the nonce.
        let report = |bearer: String| {
            http.post(format!("{base}/v1/install/progress"))
                .bearer_auth(bearer)
                .json(&InstallProgress {
                    mac: MAC1.into(),
                    step: cairn_api::InstallStep::Started,
                    bytes_written: 0,
                    bytes_total: None,
                    message: String::new(),
                })
                .send()
        };
        assert_eq!(report(nonce_of(&second)).await.unwrap().status(), 401);
        assert_eq!(report(grant.report_token).await.unwrap().status(), 204);
    }

    /// A hub URL alone would give installs a node.yaml cairn-node refuses (no CA, no
    /// way to mint a token): the command line says so before anything starts.
    #[test]
    fn a_hub_url_needs_the_hub_ca_and_an_enrollment_token() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cmd {
            #[command(flatten)]
            args: BootServerArgs,
        }
        let base = [
            "x",
            "--artifacts",
            "a",
            "--interface",
            "br0",
            "--inventory",
            "r.yaml",
        ];
        let parse = |extra: &[&str]| Cmd::try_parse_from(base.iter().chain(extra));
        let err = parse(&["--hub-url", "https://hub:8443", "--hub-ca", "ca.pem"]).unwrap_err();
        assert!(err.to_string().contains("--hub-token-file"), "{err}");
        assert!(parse(&["--hub-ca", "ca.pem"]).is_err());
        let full = [
            "--hub-url",
            "https://hub:8443",
            "--hub-ca",
            "ca.pem",
            "--hub-token-file",
            "operator.token",
            "--site",
            "lab",
        ];
        // A shared enrollment token is no longer something the boot server takes.
        let shared = parse(&[&full[..], &["--enrollment-token-file", "token"]].concat());
        assert!(shared.is_err(), "{shared:?}");
        let ok = parse(&full);
        assert!(ok.is_ok(), "{ok:?}");
        assert!(parse(&[]).is_ok());
    }

    /// The seeded ISOs `cairn rack provision` leaves in the build's media/ are served by their
    /// full path only: no directory is listed, so the random segment is the way in.
    #[tokio::test]
    async fn seeded_isos_are_served_by_path_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join("media/0123456789abcdef0123456789abcdef");
        std::fs::create_dir_all(&seg).unwrap();
        std::fs::write(seg.join("a.iso"), b"ISO").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = router(state(), dir.path());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let _ = rustls::crypto::ring::default_provider().install_default();
        let get = |path: &str| reqwest::get(format!("{base}{path}"));
        let iso = get("/media/0123456789abcdef0123456789abcdef/a.iso")
            .await
            .unwrap();
        assert_eq!(iso.status(), 200);
        assert_eq!(iso.bytes().await.unwrap().as_ref(), b"ISO");
        for listing in [
            "/media/",
            "/media",
            "/media/0123456789abcdef0123456789abcdef/",
        ] {
            let r = get(listing).await.unwrap();
            assert_eq!(r.status(), 404, "{listing}");
        }
    }

    /// The provisioner's view over real HTTP: per-MAC progress with a growing `seq`, and the
    /// status of every inventory server; reports need the server's own token.
    #[tokio::test]
    async fn reports_are_readable_per_mac_and_for_the_whole_inventory() {
        let base = serve(state()).await;
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{base}{path}")).send();

        let r = get("/v1/install/progress/52:54:00:ab:00:01").await.unwrap();
        assert_eq!(r.status(), 404);
        let report = |token: &str, step: cairn_api::InstallStep| {
            http.post(format!("{base}/v1/install/progress"))
                .bearer_auth(token)
                .json(&InstallProgress {
                    mac: "spoofed".into(),
                    step,
                    bytes_written: 5,
                    bytes_total: Some(10),
                    message: "m".into(),
                })
                .send()
        };
        let r = report("wrong", cairn_api::InstallStep::Started)
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        for step in [
            cairn_api::InstallStep::Started,
            cairn_api::InstallStep::Writing,
        ] {
            assert_eq!(report("t1", step).await.unwrap().status(), 204);
        }

        // Upper-case MACs are the same server.
        let r: Report = get("/v1/install/progress/52:54:00:AB:00:01")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r.seq, 2);
        assert_eq!(r.progress.step, cairn_api::InstallStep::Writing);
        assert_eq!(
            r.progress.mac, "52:54:00:ab:00:01",
            "the token decides the MAC"
        );

        let text = get("/v1/install/status")
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(json["servers"][0]["name"], "edge-1");
        assert_eq!(json["servers"][0]["report"]["seq"], 2);
        assert_eq!(json["servers"][0]["report"]["progress"]["step"], "writing");
        assert_eq!(json["servers"][0]["report"]["progress"]["bytes_written"], 5);
        assert_eq!(json["servers"][1]["mac"], "52:54:00:00:00:02");
        assert!(json["servers"][1]["report"].is_null(), "{text}");
    }
}
