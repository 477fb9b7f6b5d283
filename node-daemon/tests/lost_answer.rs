//! Issue 22: a registration whose answer is lost on the way. A TCP relay on loopback between
//! the real `cairn-node` and the real `cairn-hub` forwards the registration to the hub and
//! drops the connection once the hub has answered, before the answer reaches the node; the
//! node must end up as one appliance, with the key it kept before the first send, also when
//! it is killed in between.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use cairn_api::hub::{ApplianceView, AuditEntryView, EventQuery, SinceQuery};
use cairn_node_daemon::store::Store;
use common::*;

const LIMIT: Duration = Duration::from_secs(60);
const NO_NET: &str = "network:\n  manage: false\n";

/// TLS content type of application data: after the handshake, every request and answer.
const APPLICATION_DATA: u8 = 0x17;
/// A record this large from the node is a registration (CSR and inventory); the CA fetch,
/// the handshake's last flight and HTTP/2 preambles are far smaller. From the hub, an
/// answer carrying a certificate and the CA; session tickets are far smaller.
const LARGE: usize = 1024;

/// What the relay does with registrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Forward the next registration, drop its answer and the connection, then `then`.
    LoseAnswer { then: Loss },
    /// Close connections that send a registration, before it reaches the hub.
    Refuse,
    /// Forward everything.
    Pass,
}

/// The mode after the answer was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Loss {
    Pass,
    Refuse,
}

/// Follows the TLS record headers in one direction of a connection.
#[derive(Default)]
struct Records {
    header: Vec<u8>,
    body_left: usize,
}

impl Records {
    /// (content type, length) of each record whose header completes in `bytes`.
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<(u8, usize)> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let n = self.body_left.min(bytes.len());
                self.body_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (5 - self.header.len()).min(bytes.len());
            self.header.extend_from_slice(&bytes[..n]);
            bytes = &bytes[n..];
            if self.header.len() == 5 {
                let len = usize::from(u16::from_be_bytes([self.header[3], self.header[4]]));
                out.push((self.header[0], len));
                self.body_left = len;
                self.header.clear();
            }
        }
        out
    }
}

struct Shared {
    mode: Mutex<Mode>,
    /// When the hub's answer was dropped.
    lost_at: Mutex<Option<SystemTime>>,
}

/// The relay: `url` is the hub's URL with the relay's port.
struct LossyRelay {
    url: String,
    shared: Arc<Shared>,
}

impl LossyRelay {
    fn start(hub_url: &str, mode: Mode) -> Self {
        let (base, port) = hub_url.rsplit_once(':').unwrap();
        let hub_addr = format!("127.0.0.1:{}", port.trim_end_matches('/'));
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("{base}:{}", listener.local_addr().unwrap().port());
        let shared = Arc::new(Shared {
            mode: Mutex::new(mode),
            lost_at: Mutex::new(None),
        });
        let state = shared.clone();
        // Detached: the listener lives until the test process ends; its connections end
        // with the node and the hub.
        std::thread::spawn(move || {
            for node in listener.incoming().flatten() {
                let Ok(hub) = TcpStream::connect(&hub_addr) else {
                    continue;
                };
                relay(node, hub, state.clone());
            }
        });
        Self { url, shared }
    }

    fn set(&self, mode: Mode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    fn lost_at(&self) -> Option<SystemTime> {
        *self.shared.lost_at.lock().unwrap()
    }
}

fn relay(node: TcpStream, hub: TcpStream, shared: Arc<Shared>) {
    // Set once this connection carried the registration whose answer is to be lost.
    let victim = Arc::new(AtomicBool::new(false));
    let ends = Arc::new((node.try_clone().unwrap(), hub.try_clone().unwrap()));
    let close = move || {
        let _ = ends.0.shutdown(Shutdown::Both);
        let _ = ends.1.shutdown(Shutdown::Both);
    };
    let up = {
        let (mut from, mut to) = (node.try_clone().unwrap(), hub.try_clone().unwrap());
        let (shared, victim, close) = (shared.clone(), victim.clone(), close.clone());
        move || {
            let mut records = Records::default();
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let registration = records
                    .feed(&buf[..n])
                    .iter()
                    .any(|&(kind, len)| kind == APPLICATION_DATA && len > LARGE);
                if registration {
                    match *shared.mode.lock().unwrap() {
                        Mode::Refuse => return close(),
                        Mode::LoseAnswer { .. } => victim.store(true, Ordering::SeqCst),
                        Mode::Pass => {}
                    }
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            close();
        }
    };
    let down = {
        let (mut from, mut to) = (hub, node);
        move || {
            let mut records = Records::default();
            let mut buf = vec![0u8; 64 << 10];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let answer = records
                    .feed(&buf[..n])
                    .iter()
                    .any(|&(kind, len)| kind == APPLICATION_DATA && len > LARGE);
                if victim.load(Ordering::SeqCst) {
                    // Nothing of the hub's reaches the node from here on; once the answer
                    // is out of the hub, the connection goes.
                    if answer {
                        let mut mode = shared.mode.lock().unwrap();
                        if let Mode::LoseAnswer { then } = *mode {
                            *mode = match then {
                                Loss::Pass => Mode::Pass,
                                Loss::Refuse => Mode::Refuse,
                            };
                            *shared.lost_at.lock().unwrap() = Some(SystemTime::now());
                        }
                        break;
                    }
                    continue;
                }
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            close();
        }
    };
    std::thread::spawn(up);
    std::thread::spawn(down);
}

/// The public key (its raw bits) of a PEM private key or certificate.
fn key_of_private(pem: &str) -> Vec<u8> {
    rcgen::KeyPair::from_pem(pem)
        .unwrap()
        .public_key_raw()
        .to_vec()
}

fn key_of_certificate(pem: &str) -> Vec<u8> {
    let block = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    cert.public_key().subject_public_key.data.to_vec()
}

fn registered(node: &Node) -> LocalStatus {
    poll("the node to register and heartbeat", LIMIT, || {
        node.status()
            .filter(|s| s.appliance_id.is_some() && s.hub_reachable && s.phase == "running")
    })
}

/// Everything the hub logged, not just the last 24 hours (the default).
fn since_ever() -> SinceQuery {
    SinceQuery {
        since: Some(time::OffsetDateTime::UNIX_EPOCH),
        limit: None,
    }
}

/// The hub's audit entries of `action`.
fn audited(admin: &Admin, action: &str) -> Vec<AuditEntryView> {
    let mut audit = admin.ok(admin.client.audit(&since_ever()));
    audit.retain(|e| e.action == action);
    audit
}

/// The one appliance the hub lists, once it has heartbeated.
fn the_one_appliance(admin: &Admin) -> ApplianceView {
    let mut list = admin.appliances().unwrap();
    assert_eq!(list.len(), 1, "exactly one appliance: {list:#?}");
    list.remove(0)
}

/// When the hub first heard a heartbeat of `id` (its `online` event).
fn first_heartbeat(admin: &Admin, id: &str) -> Option<SystemTime> {
    let query = EventQuery {
        since: Some(time::OffsetDateTime::UNIX_EPOCH),
        appliance: Some(id.to_owned()),
        kind: Some("online".into()),
        ..Default::default()
    };
    let events = admin.run(admin.client.events(&query)).ok()?;
    let online = events.into_iter().next()?;
    Some(online.at.into())
}

#[test]
fn a_lost_registration_answer_ends_in_one_appliance_with_the_first_key() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    let relay = LossyRelay::start(&hub.url, Mode::LoseAnswer { then: Loss::Pass });
    let root = dir.path().join("node");
    // Single-use, as tokens for one server are: the repeat must not need a second use.
    let token = hub.enrollment_token("lost-answer");
    write_config(&root, &relay.url, &hub.fingerprint, &token, NO_NET);

    let node = Node::start(&root);
    let status = registered(&node);
    let id = status.appliance_id.clone().unwrap();
    let lost_at = relay
        .lost_at()
        .expect("the first answer was lost on the way");
    let log = node.log();
    assert!(
        log.contains("sending the pending registration again (same key and CSR)"),
        "{log}"
    );
    let admin = hub.admin();
    let appliance = the_one_appliance(&admin);
    assert_eq!(appliance.id.as_str(), id);
    let retries = audited(&admin, "appliance.register-retry");
    assert_eq!(retries.len(), 1, "{retries:#?}");
    assert_eq!(retries[0].target, id);
    assert_eq!(audited(&admin, "appliance.register").len(), 1);
    let tokens = admin.ok(admin.client.list_tokens());
    assert_eq!(tokens[0].uses, 1, "one use of the token: {tokens:#?}");

    let heard = poll("the hub's first heartbeat event", LIMIT, || {
        first_heartbeat(&admin, &id)
    });
    let recovery = heard.duration_since(lost_at).unwrap_or_default();
    eprintln!(
        "figure: lost registration answer -> first heartbeat accepted: {:.2} s",
        recovery.as_secs_f64()
    );
    node.stop();
    // The key of the identity is the one the first registration sent: the hub answered the
    // repeat (audited above) only for the key it had signed, and the certificate is for it.
    let identity = Store::open(&root.join("var/lib/cairn"))
        .unwrap()
        .identity()
        .unwrap()
        .unwrap();
    assert_eq!(
        key_of_private(&identity.key_pem),
        key_of_certificate(&identity.certificate_pem)
    );
}

#[test]
fn a_node_killed_after_a_lost_answer_comes_back_with_the_same_key_as_the_same_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub")).start();
    // The first answer is lost; later attempts do not reach the hub until the restart.
    let relay = LossyRelay::start(&hub.url, Mode::LoseAnswer { then: Loss::Refuse });
    let root = dir.path().join("node");
    let state = root.join("var/lib/cairn");
    let token = hub.enrollment_token("restart");
    write_config(&root, &relay.url, &hub.fingerprint, &token, NO_NET);

    let node = Node::start(&root);
    poll("the lost answer", LIMIT, || relay.lost_at());
    let admin = hub.admin();
    poll("the hub to hold the registration", LIMIT, || {
        (admin.appliances().ok()?.len() == 1).then_some(())
    });
    node.kill();
    let pending = Store::open(&state)
        .unwrap()
        .pending_registration()
        .unwrap()
        .expect("the registration is kept while its answer is missing");
    assert!(root.join("etc/cairn/token").exists(), "the token is kept");

    relay.set(Mode::Pass);
    let node = Node::start(&root);
    let status = registered(&node);
    let id = status.appliance_id.clone().unwrap();
    assert_eq!(the_one_appliance(&admin).id.as_str(), id);
    assert_eq!(audited(&admin, "appliance.register-retry").len(), 1);
    node.stop();
    let store = Store::open(&state).unwrap();
    let identity = store.identity().unwrap().unwrap();
    assert_eq!(
        identity.key_pem, pending.key_pem,
        "the key kept before the first send"
    );
    assert_eq!(
        key_of_private(&identity.key_pem),
        key_of_certificate(&identity.certificate_pem)
    );
    assert_eq!(
        store.pending_registration().unwrap(),
        None,
        "the pending registration goes once the answer is saved"
    );
    assert!(!root.join("etc/cairn/token").exists());
}
