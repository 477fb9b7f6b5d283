//! A/B upgrades on the node, process level: `cairn-node upgrade apply` and `cairn-node run`
//! against bundles built and signed with the real cairn-formats code, served over HTTPS with
//! Range by a small server in this file (the hub's release serving is built separately),
//! written into a file-backed GPT disk laid out by cairn-formats' gpt module, with the GRUB
//! environment checked by GRUB's own `grub-editenv`. The post-boot part runs the daemon
//! against a real `cairn-hub`.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::UpgradePhase;
use cairn_api::hub::{CampaignAction, CreateCampaign, MemberState, Selector};
use cairn_formats::keys::SigningKey;
use cairn_formats::{bundle, gpt, grubenv};
use common::*;
use serde_json::{Value, json};

const LIMIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
/// Slots of the test disk.
const SLOT: u64 = 8 * MIB;

/// A release: key, image and signed bundle.
struct Release {
    image: Vec<u8>,
    bundle: PathBuf,
}

fn make_release(dir: &Path, key: &SigningKey, version: &str, image: Vec<u8>) -> Release {
    let raw = dir.join(format!("{version}.img"));
    std::fs::write(&raw, &image).unwrap();
    let payload = dir.join(format!("{version}.img.zst"));
    std::fs::write(&payload, zstd::stream::encode_all(&image[..], 3).unwrap()).unwrap();
    let out = dir.join(format!("{version}.bundle"));
    bundle::create(
        &out,
        version,
        "x86_64",
        vec![],
        "2026-11-22T00:00:00Z",
        &raw,
        &payload,
    )
    .unwrap();
    bundle::sign(&out, key).unwrap();
    std::fs::remove_file(&raw).unwrap();
    std::fs::remove_file(&payload).unwrap();
    Release { image, bundle: out }
}

/// Incompressible bytes, so the bundle has a size worth downloading.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn sha256(path: &Path) -> String {
    cairn_formats::stream::Digest::of_file(path).unwrap().sha256
}

/// HTTPS file server with Range; records each request's Range header.
struct BundleServer {
    url: String,
    ca_file: PathBuf,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

impl BundleServer {
    fn start(dir: &Path, files: Vec<(String, PathBuf)>) -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::default();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = vec![rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap())];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let ca_file = dir.join("bundle-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        // Detached: the listener lives until the test process ends.
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = config.clone();
                let seen = seen.clone();
                let files = files.clone();
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, stream);
                    let _ = serve_one(&mut tls, &files, &seen);
                });
            }
        });
        Self {
            url,
            ca_file,
            ranges,
        }
    }

    fn ranges(&self) -> Vec<Option<String>> {
        self.ranges.lock().unwrap().clone()
    }
}

fn serve_one(
    tls: &mut impl ReadWrite,
    files: &[(String, PathBuf)],
    seen: &Mutex<Vec<Option<String>>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(&mut *tls);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut range = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("range")
        {
            range = Some(v.trim().to_owned());
        }
    }
    drop(reader);
    seen.lock().unwrap().push(range.clone());
    let path = request.split_whitespace().nth(1).unwrap_or_default();
    let Some((_, file)) = files.iter().find(|(p, _)| p == path) else {
        return tls.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    };
    let body = std::fs::read(file)?;
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok());
    let head = match from {
        Some(from) => format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {from}-{}/{}\r\nConnection: close\r\n\r\n",
            body.len() - from,
            body.len() - 1,
            body.len()
        ),
        None => format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len()
        ),
    };
    tls.write_all(head.as_bytes())?;
    tls.write_all(&body[from.unwrap_or(0)..])?;
    tls.flush()
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// An appliance root: GPT disk (ESP, root-a, root-b, data), grubenv, kernel command line,
/// node.yaml with an `upgrade:` section and a trusted release key.
struct Appliance {
    root: PathBuf,
    disk: PathBuf,
    layout: gpt::Layout,
    grubenv: PathBuf,
}

impl Appliance {
    fn new(root: &Path, trusted: &SigningKey, extra_upgrade: &str) -> Self {
        std::fs::create_dir_all(root.join("etc/cairn")).unwrap();
        std::fs::create_dir_all(root.join("boot/efi/grub")).unwrap();
        let layout = gpt::Layout::new(2 * SLOT + 80 * MIB, MIB, SLOT).unwrap();
        let disk = root.join("disk.raw");
        let f = std::fs::File::create(&disk).unwrap();
        f.set_len(layout.disk_size).unwrap();
        let bytes = gpt::build(&layout, &gpt::guid_from_seed(b"upgrade-test"));
        f.write_all_at(&bytes.primary, 0).unwrap();
        f.write_all_at(&bytes.backup, bytes.backup_offset).unwrap();
        let grubenv = root.join("boot/efi/grub/grubenv");
        std::fs::write(
            &grubenv,
            grubenv::new_block(&BTreeMap::from([("cairn_slot", "a")])).unwrap(),
        )
        .unwrap();
        std::fs::write(
            root.join("cmdline"),
            "root=PARTLABEL=root-a cairn.slot=a ro\n",
        )
        .unwrap();
        std::fs::write(root.join("etc/os-release"), "CAIRN_VERSION=2026.11.1\n").unwrap();
        trusted
            .public_key()
            .write(&root.join("etc/cairn/release.pub"))
            .unwrap();
        let this = Self {
            root: root.to_path_buf(),
            disk,
            layout,
            grubenv,
        };
        this.configure("https://127.0.0.1:1", &"00".repeat(32), "", extra_upgrade);
        this
    }

    /// Writes node.yaml: the hub (a placeholder when only `upgrade apply` runs) and upgrades.
    fn configure(&self, hub_url: &str, fingerprint: &str, token: &str, extra_upgrade: &str) {
        let marker = |name: &str| self.root.join(name).display().to_string();
        let upgrade = format!(
            "network:\n  manage: false\nupgrade:\n  trusted_keys: [/etc/cairn/release.pub]\n  disk: /disk.raw\n  grubenv: /boot/efi/grub/grubenv\n  cmdline: /cmdline\n  drain_command: [sh, -c, 'echo $CAIRN_UPGRADE_VERSION > {}']\n  reboot_command: [sh, -c, 'echo reboot >> {}']\n{extra_upgrade}",
            marker("drained"),
            marker("reboots"),
        );
        write_config(&self.root, hub_url, fingerprint, token, &upgrade);
    }

    fn slot(&self, name: &str, len: usize) -> Vec<u8> {
        let p = self.layout.get(name).unwrap();
        let mut buf = vec![0u8; len];
        std::fs::File::open(&self.disk)
            .unwrap()
            .read_exact_at(&mut buf, p.offset)
            .unwrap();
        buf
    }

    /// `grub-editenv FILE list`: GRUB's own reading of the environment block.
    fn grub_vars(&self) -> BTreeMap<String, String> {
        grub_editenv_list(&self.grubenv)
    }

    fn boot(&self, slot: &str) {
        std::fs::write(
            self.root.join("cmdline"),
            format!("root=PARTLABEL=root-{slot} cairn.slot={slot} ro\n"),
        )
        .unwrap();
    }

    fn write_order(&self, order: &Value) -> PathBuf {
        let path = self.root.join("order.json");
        std::fs::write(&path, order.to_string()).unwrap();
        path
    }

    fn apply_cmd(&self, order: &Path, ca: &Path) -> Command {
        let mut cmd = Command::new(workspace_bin("cairn-node", "cairn-node-daemon"));
        cmd.arg("--root")
            .arg(&self.root)
            .args(["upgrade", "apply", "--order"])
            .arg(order)
            .arg("--ca-file")
            .arg(ca);
        cmd
    }

    fn apply(&self, order: &Path, ca: &Path) -> (Output, Value) {
        let out = self.apply_cmd(order, ca).output().unwrap();
        let report = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out, report)
    }

    fn state(&self) -> String {
        std::fs::read_to_string(self.root.join("var/lib/cairn/upgrade/state.json"))
            .unwrap_or_default()
    }
}

/// `grub-editenv FILE list`: GRUB's own reading of an environment block.
fn grub_editenv_list(path: &Path) -> BTreeMap<String, String> {
    let out = Command::new("grub-editenv")
        .arg(path)
        .arg("list")
        .output()
        .expect("grub-editenv is needed (grub-common, scripts/setup)");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn order(server: &BundleServer, release: &Release, version: &str, extra: Value) -> Value {
    let mut o = json!({
        "campaign": "c1",
        "version": version,
        "bundle_url": format!("{}/{version}.bundle", server.url),
        "sha256": sha256(&release.bundle),
        "size_bytes": std::fs::metadata(&release.bundle).unwrap().len(),
    });
    o.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    o
}

fn serve(dir: &Path, releases: &[(&str, &Release)]) -> BundleServer {
    BundleServer::start(
        dir,
        releases
            .iter()
            .map(|(v, r)| (format!("/{v}.bundle"), r.bundle.clone()))
            .collect(),
    )
}

#[test]
fn a_signed_bundle_lands_in_the_inactive_slot_and_grub_tries_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir.path(), &key, "2026.11.2", noise(3 * MIB as usize, 1));
    let server = serve(dir.path(), &[("2026.11.2", &release)]);
    let node = Appliance::new(&dir.path().join("node"), &key, "  tries: 2\n");
    let before_a = node.slot("root-a", 4096);

    let order = node.write_order(&order(&server, &release, "2026.11.2", json!({})));
    let (out, report) = node.apply(&order, &server.ca_file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["phase"], "rebooting", "{report}");

    assert_eq!(
        node.slot("root-b", release.image.len()),
        release.image,
        "the inactive slot holds the image"
    );
    assert_eq!(
        node.slot("root-a", 4096),
        before_a,
        "the booted slot is untouched"
    );
    let vars = node.grub_vars();
    assert_eq!(vars["cairn_slot"], "a", "{vars:?}");
    assert_eq!(vars["cairn_try"], "b", "{vars:?}");
    assert_eq!(vars["cairn_tries"], "2", "{vars:?}");
    assert_eq!(std::fs::metadata(&node.grubenv).unwrap().len(), 1024);
    assert_eq!(
        std::fs::read_to_string(node.root.join("drained"))
            .unwrap()
            .trim(),
        "2026.11.2",
        "the drain hook ran with the version"
    );
    assert_eq!(
        std::fs::read_to_string(node.root.join("reboots")).unwrap(),
        "reboot\n"
    );
    assert_eq!(server.ranges(), vec![None], "one plain download");
}

#[test]
fn on_a_two_copy_esp_a_torn_copy_is_repaired_and_both_are_armed() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir.path(), &key, "2026.11.2", noise(64 * 1024, 8));
    let server = serve(dir.path(), &[("2026.11.2", &release)]);
    let node = Appliance::new(&dir.path().join("node"), &key, "");
    let copy2 = node.grubenv.with_file_name("grubenv.2");
    std::fs::copy(&node.grubenv, &copy2).unwrap();
    // Copy 1 torn by a power cut during an earlier write: its second sector is garbage.
    let mut torn = std::fs::read(&node.grubenv).unwrap();
    torn[512..].fill(0x5a);
    std::fs::write(&node.grubenv, &torn).unwrap();

    let order = node.write_order(&order(&server, &release, "2026.11.2", json!({})));
    let (out, report) = node.apply(&order, &server.ca_file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["phase"], "rebooting", "{report}");
    assert_eq!(
        std::fs::read(&node.grubenv).unwrap(),
        std::fs::read(&copy2).unwrap(),
        "both copies rewritten whole"
    );
    for path in [&node.grubenv, &copy2] {
        let vars = grub_editenv_list(path);
        assert_eq!(vars["cairn_try"], "b", "{vars:?}");
        assert_eq!(vars["cairn_check"], "a:b:1:2", "{vars:?}");
        assert_eq!(std::fs::metadata(path).unwrap().len(), 1024);
    }
}

#[test]
fn tampered_and_unknown_key_bundles_are_refused_before_the_slot_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let tampered = make_release(dir.path(), &key, "2026.11.2", noise(MIB as usize, 2));
    // One payload byte changed after signing; the order's hash matches the changed file, so
    // only the signed manifest can catch it.
    let len = std::fs::metadata(&tampered.bundle).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&tampered.bundle)
        .unwrap();
    f.write_all_at(b"\x42", len - 100).unwrap();
    let unknown = make_release(dir.path(), &stranger, "2026.11.3", noise(MIB as usize, 3));
    let server = serve(
        dir.path(),
        &[("2026.11.2", &tampered), ("2026.11.3", &unknown)],
    );
    let node = Appliance::new(&dir.path().join("node"), &key, "");
    let grubenv = std::fs::read(&node.grubenv).unwrap();

    for (release, version, why) in [
        (
            &tampered,
            "2026.11.2",
            "payload does not match its signed manifest",
        ),
        (&unknown, "2026.11.3", "not made by a trusted key"),
    ] {
        let order = node.write_order(&order(&server, release, version, json!({})));
        let (out, report) = node.apply(&order, &server.ca_file);
        assert!(!out.status.success(), "{out:?}");
        assert_eq!(report["phase"], "refused", "{report}");
        assert!(report["reason"].as_str().unwrap().contains(why), "{report}");
        assert!(
            node.slot("root-b", SLOT as usize).iter().all(|b| *b == 0),
            "not one byte reached the slot"
        );
        assert_eq!(std::fs::read(&node.grubenv).unwrap(), grubenv);
        assert!(!node.root.join("reboots").exists());
    }
}

/// The slot writer checks each 4 MiB frame against the bundle's signed frame digests before
/// it writes it: a payload whose middle frame decodes cleanly but is not the signed one (a
/// bundle whose payload was swapped after signing) leaves the frames before it in the slot
/// and not a byte of it, and the error names the frame. Framed payloads (decoded on every
/// core) and one-stream payloads (decoded on one) alike.
#[test]
fn a_frame_not_matching_its_signed_digest_never_reaches_the_slot() {
    use cairn_formats::keys::TrustStore;
    use cairn_formats::stream::{FRAME_SIZE, compress_frames};
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let trust = TrustStore::new(vec![key.public_key()]);
    let image = noise(6 * FRAME_SIZE + 1000, 7);
    let mut bad = image.clone();
    for b in &mut bad[3 * FRAME_SIZE..4 * FRAME_SIZE] {
        *b = !*b;
    }
    let raw = dir.path().join("root.img");
    std::fs::write(&raw, &image).unwrap();
    let framed = |image: &[u8]| {
        let mut out = Vec::new();
        compress_frames(image, &mut out).unwrap();
        out
    };
    let payload = dir.path().join("root.img.zst");
    std::fs::write(&payload, framed(&image)).unwrap();
    let good = dir.path().join("good.bundle");
    bundle::create(
        &good,
        "2026.12.1",
        "x86_64",
        vec![],
        "2026-12-07T00:00:00Z",
        &raw,
        &payload,
    )
    .unwrap();
    bundle::sign(&good, &key).unwrap();
    let header_len = {
        let bytes = std::fs::read(&good).unwrap();
        16 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as u64 + 64
    };
    let slot = dir.path().join("slot");
    let limit = (7 * FRAME_SIZE) as u64;

    // The intact bundle fills the slot with the image.
    std::fs::write(&slot, vec![0xa5u8; 7 * FRAME_SIZE]).unwrap();
    let written = cairn_node_daemon::upgrade::write_slot(&good, &trust, &slot, 0, limit).unwrap();
    assert_eq!(written, image.len() as u64);
    assert!(std::fs::read(&slot).unwrap()[..image.len()] == image[..]);

    for (how, swapped) in [
        ("framed", framed(&bad)),
        ("one stream", zstd::stream::encode_all(&bad[..], 3).unwrap()),
    ] {
        let tampered = dir.path().join("tampered.bundle");
        let mut bytes = std::fs::read(&good).unwrap();
        bytes.truncate(header_len as usize);
        bytes.extend_from_slice(&swapped);
        std::fs::write(&tampered, bytes).unwrap();
        std::fs::write(&slot, vec![0xa5u8; 7 * FRAME_SIZE]).unwrap();
        let err =
            cairn_node_daemon::upgrade::write_slot(&tampered, &trust, &slot, 0, limit).unwrap_err();
        let offset = 3 * FRAME_SIZE;
        assert!(
            err.contains(&format!(
                "frame 3 (image bytes {offset}..{}) does not match",
                offset + FRAME_SIZE
            )),
            "{how}: {err}"
        );
        let on_disk = std::fs::read(&slot).unwrap();
        assert!(
            on_disk[..offset] == image[..offset],
            "{how}: frames 0-2 written"
        );
        assert!(
            on_disk[offset..].iter().all(|b| *b == 0xa5),
            "{how}: bytes of frame 3 or later reached the slot"
        );
    }
}

#[test]
fn versions_the_node_may_not_install_are_refused_without_downloading() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir.path(), &key, "2026.10.9", noise(4096, 4));
    let server = serve(dir.path(), &[("2026.10.9", &release)]);
    let node = Appliance::new(&dir.path().join("node"), &key, "");
    let order = node.write_order(&order(&server, &release, "2026.10.9", json!({})));
    let (out, report) = node.apply(&order, &server.ca_file);
    assert!(!out.status.success());
    assert_eq!(report["phase"], "refused", "{report}");
    assert!(
        report["reason"].as_str().unwrap().contains("downgrade"),
        "{report}"
    );
    assert!(server.ranges().is_empty(), "nothing was downloaded");
}

#[test]
fn a_killed_download_resumes_with_range_and_a_prestaged_bundle_waits_for_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir.path(), &key, "2026.11.2", noise(2 * MIB as usize, 5));
    let server = serve(dir.path(), &[("2026.11.2", &release)]);
    // A window that is never open now: 1 minute, an hour from now (fixed offset UTC).
    let node = Appliance::new(&dir.path().join("node"), &key, "  utc_offset: \"+00:00\"\n");
    let now = time::OffsetDateTime::now_utc();
    let start = (u32::from(now.hour()) + 1) % 24;
    let window = json!({"start": format!("{start:02}:00"), "end": format!("{start:02}:01")});
    let slow = node.write_order(&order(
        &server,
        &release,
        "2026.11.2",
        json!({"max_bytes_per_second": 256 * 1024, "prestage": true, "window": window}),
    ));
    let mut child = ChildGuard::spawn(&mut node.apply_cmd(&slow, &server.ca_file)).unwrap();
    let partial = node.root.join(format!(
        "var/lib/cairn/upgrade/{}.partial",
        sha256(&release.bundle)
    ));
    poll("part of the bundle on disk", LIMIT, || {
        std::fs::metadata(&partial)
            .ok()
            .filter(|m| m.len() >= 256 * 1024)
    });
    // Killed like a power cut, well before the end (about 8 s at this rate).
    child.kill();
    let kept = std::fs::metadata(&partial).unwrap().len();
    let total = std::fs::metadata(&release.bundle).unwrap().len();
    assert!(kept > 0 && kept < total, "{kept} of {total}");

    // Same order without the cap: resumes where the file ends, then stages (outside the
    // window nothing is written).
    let fast = node.write_order(&order(
        &server,
        &release,
        "2026.11.2",
        json!({"prestage": true, "window": window}),
    ));
    let (out, report) = node.apply(&fast, &server.ca_file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["phase"], "staged", "{report}");
    assert_eq!(
        server.ranges(),
        vec![None, Some(format!("bytes={kept}-"))],
        "the second request resumed with Range"
    );
    assert!(node.slot("root-b", 4096).iter().all(|b| *b == 0));
    assert!(!node.grub_vars().contains_key("cairn_try"));

    // A restart keeps the staged bundle: no new download.
    let (_, report) = node.apply(&fast, &server.ca_file);
    assert_eq!(report["phase"], "staged", "{report}");
    assert_eq!(server.ranges().len(), 2);
}

#[test]
fn a_restart_mid_write_reports_interrupted_and_never_arms_grub() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    // Large but compressible: the write takes long enough to be caught halfway.
    let mut image = vec![0u8; 300 * MIB as usize];
    for (i, chunk) in image.chunks_mut(MIB as usize).enumerate() {
        chunk[0] = i as u8 | 1;
    }
    let release = make_release(dir.path(), &key, "2026.11.2", image);
    let server = serve(dir.path(), &[("2026.11.2", &release)]);
    let root = dir.path().join("node");
    std::fs::create_dir_all(&root).unwrap();
    // This test's disk needs a bigger slot.
    let node = Appliance::new(&root, &key, "");
    let layout = gpt::Layout::new(2 * 320 * MIB + 80 * MIB, MIB, 320 * MIB).unwrap();
    let f = std::fs::File::create(&node.disk).unwrap();
    f.set_len(layout.disk_size).unwrap();
    let bytes = gpt::build(&layout, &gpt::guid_from_seed(b"big"));
    f.write_all_at(&bytes.primary, 0).unwrap();
    f.write_all_at(&bytes.backup, bytes.backup_offset).unwrap();
    let grubenv = std::fs::read(&node.grubenv).unwrap();

    let order = node.write_order(&order(&server, &release, "2026.11.2", json!({})));
    let mut child = ChildGuard::spawn(&mut node.apply_cmd(&order, &server.ca_file)).unwrap();
    poll("the write to start", LIMIT, || {
        node.state().contains("\"writing\"").then_some(())
    });
    child.kill();
    assert!(!node.root.join("reboots").exists(), "killed before the end");

    let (_, report) = node.apply(&order, &server.ca_file);
    assert_eq!(report["phase"], "interrupted", "{report}");
    assert_eq!(
        std::fs::read(&node.grubenv).unwrap(),
        grubenv,
        "GRUB was never told to try the half-written slot"
    );
    assert!(!node.root.join("reboots").exists());
    // The report is final: the same order is not retried by the node.
    let (_, again) = node.apply(&order, &server.ca_file);
    assert_eq!(again["phase"], "interrupted");
}

#[test]
fn when_grub_gave_up_on_the_new_slot_the_node_reports_it_did_not_boot() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir.path(), &key, "2026.11.2", noise(4096, 6));
    let server = serve(dir.path(), &[("2026.11.2", &release)]);
    let node = Appliance::new(&dir.path().join("node"), &key, "");
    let order = node.write_order(&order(&server, &release, "2026.11.2", json!({})));
    let (_, report) = node.apply(&order, &server.ca_file);
    assert_eq!(report["phase"], "rebooting", "{report}");
    // What grub.cfg does when the tries run out, done with GRUB's own tool.
    let status = Command::new("grub-editenv")
        .arg(&node.grubenv)
        .args(["set", "cairn_try=", "cairn_rolled_back=b"])
        .status()
        .unwrap();
    assert!(status.success());
    node.boot("a");
    let (_, report) = node.apply(&order, &server.ca_file);
    assert_eq!(report["phase"], "rolled-back", "{report}");
    assert_eq!(report["reason"], "new slot did not boot", "{report}");
    assert_eq!(node.grub_vars()["cairn_rolled_back"], "");
}

/// Starts a registered daemon on the new slot with `checks` as operator health checks.
fn boot_new_slot(dir: &Path, checks: &str) -> (Hub, Appliance, Node) {
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir, &key, "2026.11.2", noise(64 * 1024, 7));
    let server = serve(dir, &[("2026.11.2", &release)]);
    let node = Appliance::new(&dir.join("node"), &key, "");
    let order = node.write_order(&order(&server, &release, "2026.11.2", json!({})));
    let (_, report) = node.apply(&order, &server.ca_file);
    assert_eq!(report["phase"], "rebooting", "{report}");
    std::fs::remove_file(node.root.join("reboots")).unwrap();

    let hub = hub_at(&dir.join("hub")).start();
    let token = hub.enrollment_token("site-u");
    node.configure(&hub.url, &hub.fingerprint, &token, checks);
    node.boot("b");
    std::fs::write(
        node.root.join("etc/os-release"),
        "CAIRN_VERSION=2026.11.2\n",
    )
    .unwrap();
    let daemon = Node::start(&node.root);
    (hub, node, daemon)
}

fn upgrade_phase(daemon: &Node, phase: UpgradePhase) -> LocalStatus {
    poll(&format!("upgrade phase {phase:?}"), LIMIT, || {
        daemon
            .status()
            .filter(|s| s.upgrade.as_ref().is_some_and(|u| u.phase == phase))
    })
}

#[test]
fn on_the_new_slot_passing_health_checks_commit_it() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, node, daemon) = boot_new_slot(
        dir.path(),
        "  health_checks:\n    - name: service\n      command: [sh, -c, 'echo ok']\n",
    );
    let status = upgrade_phase(&daemon, UpgradePhase::Committed);
    assert_eq!(status.booted_slot.as_deref(), Some("b"), "{status:?}");
    let vars = node.grub_vars();
    assert_eq!(vars["cairn_slot"], "b", "{vars:?}");
    assert_eq!(vars["cairn_try"], "", "{vars:?}");
    assert!(
        !node.root.join("reboots").exists(),
        "no reboot after a commit"
    );
    daemon.stop();
    drop(hub);
}

#[test]
fn on_the_new_slot_a_failing_health_check_rolls_back_with_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let (hub, node, daemon) = boot_new_slot(
        dir.path(),
        "  health_deadline_seconds: 2\n  health_checks:\n    - name: payments\n      command: [sh, -c, 'echo payments: connection refused; exit 3']\n",
    );
    let status = upgrade_phase(&daemon, UpgradePhase::RolledBack);
    let upgrade = status.upgrade.as_ref().unwrap();
    assert!(upgrade.reason.contains("payments"), "{upgrade:?}");
    let logs = upgrade.logs.join("\n");
    assert!(logs.contains("connection refused"), "{logs}");
    let vars = node.grub_vars();
    assert_eq!(vars["cairn_slot"], "a", "GRUB boots the old slot: {vars:?}");
    assert_eq!(vars["cairn_try"], "", "{vars:?}");
    poll("the reboot", LIMIT, || {
        node.root.join("reboots").exists().then_some(())
    });
    daemon.stop();

    // After the reboot into the old slot the report stays: rolled back, not retried.
    node.boot("a");
    std::fs::write(
        node.root.join("etc/os-release"),
        "CAIRN_VERSION=2026.11.1\n",
    )
    .unwrap();
    let daemon = Node::start(&node.root);
    let status = upgrade_phase(&daemon, UpgradePhase::RolledBack);
    assert_eq!(status.booted_slot.as_deref(), Some("a"));
    daemon.stop();
    drop(hub);
}

#[test]
fn a_campaign_on_a_real_hub_upgrades_the_node_through_the_inactive_slot_to_committed() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir.path(), &key, "2026.11.2", noise(256 * 1024, 8));
    // The hub trusts the release key from its data directory (read at serve).
    let hub_dir = dir.path().join("hub");
    drop(hub_at(&hub_dir).start());
    std::fs::create_dir_all(hub_dir.join("release-keys")).unwrap();
    key.public_key()
        .write(&hub_dir.join("release-keys/release.pem"))
        .unwrap();
    let hub = hub_at(&hub_dir).start();
    let admin = hub.admin();
    let uploaded = admin.ok(admin
        .client
        .upload_release(&release.bundle, &sha256(&release.bundle)));
    assert_eq!(uploaded.version, "2026.11.2", "{uploaded:#?}");

    let node = Appliance::new(&dir.path().join("node"), &key, "");
    let token = hub.enrollment_token("site-c");
    node.configure(&hub.url, &hub.fingerprint, &token, "");
    let daemon = Node::start(&node.root);
    poll("registration", LIMIT, || {
        daemon.status().filter(|s| s.hub_reachable)
    });
    admin.ok(admin.client.create_campaign(&CreateCampaign {
        name: "c1".into(),
        release: "2026.11.2".into(),
        selector: Selector::default(),
        canaries: 0,
        batch_size: None,
        max_concurrency: None,
        max_failures: 0,
        window: None,
        prestage: false,
        allow_downgrade: false,
        deadline_seconds: None,
    }));
    admin.ok(admin.client.campaign_action("c1", CampaignAction::Start));

    // The order arrives with the desired state; the bundle comes from the hub over mTLS.
    poll("the reboot into the new slot", LIMIT, || {
        node.root.join("reboots").exists().then_some(())
    });
    assert_eq!(node.slot("root-b", release.image.len()), release.image);
    assert_eq!(node.grub_vars()["cairn_try"], "b");
    daemon.stop();

    node.boot("b");
    std::fs::write(
        node.root.join("etc/os-release"),
        "CAIRN_VERSION=2026.11.2\n",
    )
    .unwrap();
    let daemon = Node::start(&node.root);
    upgrade_phase(&daemon, UpgradePhase::Committed);
    assert_eq!(node.grub_vars()["cairn_slot"], "b");
    // The hub sees the committed report.
    let shown = poll("the hub to record the commit", LIMIT, || {
        let c = admin.run(admin.client.campaign("c1")).ok()?;
        c.members
            .iter()
            .any(|m| m.state == MemberState::Committed)
            .then_some(c)
    });
    assert_eq!(shown.release, "2026.11.2", "{shown:#?}");
    daemon.stop();
    drop(hub);
}

/// A tmpfs of its own, mounted on `dir` and unmounted on drop: a small filesystem whose free
/// space the test sets.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        output_ok(
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={size}"), "cairn-test"])
                .arg(dir),
            "mounting a tmpfs needs root and mount(8)",
        );
        Self(dir.to_path_buf())
    }

    fn free(&self) -> u64 {
        let fs = rustix::fs::statvfs(&self.0).unwrap();
        fs.f_bavail * fs.f_frsize
    }

    /// Writes a filler file that leaves about `free` bytes free (tmpfs counts whole pages).
    fn leave_free(&self, free: u64) {
        let filler = self.0.join("filler");
        let _ = std::fs::remove_file(&filler);
        let fill = self
            .free()
            .checked_sub(free)
            .expect("the tmpfs is too small");
        std::fs::write(&filler, vec![0x5a; fill as usize]).unwrap();
        let left = self.free();
        assert!(
            left.abs_diff(free) <= 64 << 10,
            "{left} free, {free} wanted"
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_download_without_room_on_its_filesystem_fails_before_a_byte_is_fetched() {
    use cairn_node_daemon::upgrade::effects::FREE_SPACE_MARGIN;
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let release = make_release(dir.path(), &key, "2026.11.2", noise(3 * MIB as usize, 7));
    let size = std::fs::metadata(&release.bundle).unwrap().len();
    let sha = sha256(&release.bundle);

    // Half a MiB short of the bundle plus the room kept for the state store.
    let server = serve(dir.path(), &[("2026.11.2", &release)]);
    let node = Appliance::new(&dir.path().join("full"), &key, "");
    let data = node.root.join("var/lib/cairn/upgrade");
    let fs = Tmpfs::mount(&data, "48m");
    fs.leave_free(size + FREE_SPACE_MARGIN - MIB / 2);
    let full = node.write_order(&order(&server, &release, "2026.11.2", json!({})));
    let (out, report) = node.apply(&full, &server.ca_file);
    assert!(!out.status.success(), "{out:?}");
    assert_eq!(report["phase"], "failed", "{report}");
    let reason = report["reason"].as_str().unwrap();
    assert!(
        reason.contains("not enough free space in")
            && reason.contains(&data.display().to_string())
            && reason.contains("MiB needed")
            && reason.contains("MiB free"),
        "{reason}"
    );
    assert!(server.ranges().is_empty(), "nothing was downloaded");
    assert!(!data.join(format!("{sha}.partial")).exists());
    drop(fs);

    // What a partial download already holds counts: the rest and the margin fit, although
    // the whole bundle and the margin would not.
    let server = serve(dir.path(), &[("2026.11.2", &release)]);
    let node = Appliance::new(&dir.path().join("resumed"), &key, "");
    let data = node.root.join("var/lib/cairn/upgrade");
    let fs = Tmpfs::mount(&data, "48m");
    let have = 2 * MIB;
    let bytes = std::fs::read(&release.bundle).unwrap();
    std::fs::write(data.join(format!("{sha}.partial")), &bytes[..have as usize]).unwrap();
    fs.leave_free(size - have + FREE_SPACE_MARGIN + MIB / 2);
    assert!(fs.free() < size + FREE_SPACE_MARGIN);
    let resumed = node.write_order(&order(&server, &release, "2026.11.2", json!({})));
    let (out, report) = node.apply(&resumed, &server.ca_file);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(report["phase"], "rebooting", "{report}");
    assert_eq!(server.ranges(), vec![Some(format!("bytes={have}-"))]);
    assert_eq!(node.slot("root-b", release.image.len()), release.image);
}
