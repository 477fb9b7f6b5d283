//! The BMC flashes exactly the verified image. A test-local Redfish endpoint (axum) records
//! what a BMC receives: a multipart push to its `MultipartHttpPushUri`, or the bytes it
//! downloads itself from SimpleUpdate's `ImageURI`. The image's upstream is a test-local
//! server whose content changes right after its first download, as a compromised or
//! republished mirror would. sushy-tools cannot show this: its SimpleUpdate never fetches
//! `ImageURI` (it only bumps `BiosVersion`) and it has no `MultipartHttpPushUri`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use cairn_firmware_profiles::apply::{ApplyOptions, Delivery, Images, apply};
use cairn_firmware_profiles::image::{ImageCache, ImageError};
use cairn_firmware_profiles::profile::Profile;
use cairn_firmware_profiles::serve::{ImageServer, ServeLimits, tls_config};
use cairn_hardware::address::{BmcAddress, Credentials};
use cairn_hardware::redfish::{RedfishBmc, RedfishOptions};
use serde_json::{Value, json};

const GOOD: &[u8] = b"verified firmware image, version 1.1.0\n";
const EVIL: &[u8] = b"something else put at the same URL later\n";

fn sha256(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// An HTTP client as the BMC's downloader and the test's probe (reqwest's default client
/// has no TLS provider in this workspace).
fn http() -> reqwest::Client {
    http_trusting(None)
}

fn http_trusting(ca: Option<&std::path::Path>) -> reqwest::Client {
    use cairn_hardware::tls::{Trust, client_config};
    let trust = ca.map_or(Trust::System, |p| Trust::CaBundle(p.to_owned()));
    let tls = client_config(&trust, "").unwrap();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .unwrap()
}

async fn fetch(url: &str) -> reqwest::Result<reqwest::Response> {
    http().get(url).send().await
}

/// The status code of a GET of `path` sent byte for byte.
async fn raw_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nHost: bmc\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.unwrap();
    String::from_utf8_lossy(&answer)
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

async fn listen(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// The image's upstream: serves GOOD once, then EVIL.
#[derive(Default)]
struct Upstream {
    downloads: AtomicUsize,
}

async fn upstream_image(State(up): State<Arc<Upstream>>) -> Vec<u8> {
    match up.downloads.fetch_add(1, Ordering::SeqCst) {
        0 => GOOD.to_vec(),
        _ => EVIL.to_vec(),
    }
}

async fn start_upstream() -> (Arc<Upstream>, String) {
    let up = Arc::new(Upstream::default());
    let app = axum::Router::new()
        .route("/bios.bin", get(upstream_image))
        .with_state(up.clone());
    let addr = listen(app).await;
    (up, format!("http://{addr}/bios.bin"))
}

/// What the BMC got, and how.
#[derive(Debug, Clone)]
struct Received {
    how: &'static str,
    bytes: Vec<u8>,
    /// SimpleUpdate: the ImageURI; push: the UpdateParameters.
    detail: Value,
    /// The push declared its length (no chunked upload).
    content_length: Option<usize>,
}

/// A Redfish BMC with one system, BIOS version 1.0.0 until an update arrives.
struct MockBmc {
    push: bool,
    /// The CA bundle its downloader trusts (the system's when `None`).
    trust: Option<std::path::PathBuf>,
    version: Mutex<String>,
    received: Mutex<Vec<Received>>,
}

impl MockBmc {
    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
    fn flashed(&self, r: Received) {
        *self.version.lock().unwrap() = "1.1.0".into();
        self.received.lock().unwrap().push(r);
    }
}

async fn root() -> Json<Value> {
    Json(json!({
        "@odata.id": "/redfish/v1/",
        "Systems": { "@odata.id": "/redfish/v1/Systems" },
        "UpdateService": { "@odata.id": "/redfish/v1/UpdateService" },
    }))
}

async fn systems() -> Json<Value> {
    Json(json!({ "Members": [ { "@odata.id": "/redfish/v1/Systems/1" } ] }))
}

async fn system(State(bmc): State<Arc<MockBmc>>) -> Json<Value> {
    Json(json!({
        "@odata.id": "/redfish/v1/Systems/1",
        "Manufacturer": "Cairn Test",
        "Model": "Recorder",
        "BiosVersion": *bmc.version.lock().unwrap(),
        "PowerState": "On",
        "Bios": { "@odata.id": "/redfish/v1/Systems/1/Bios" },
    }))
}

async fn bios() -> Json<Value> {
    Json(json!({ "Attributes": { "ProcTurboMode": "Enabled" } }))
}

async fn update_service(State(bmc): State<Arc<MockBmc>>) -> Json<Value> {
    let mut u = json!({
        "@odata.id": "/redfish/v1/UpdateService",
        "Actions": { "#UpdateService.SimpleUpdate": {
            "target": "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
            "TransferProtocol@Redfish.AllowableValues": ["HTTP", "HTTPS"],
        } },
    });
    if bmc.push {
        u["MultipartHttpPushUri"] = "/redfish/v1/UpdateService/upload".into();
    }
    Json(u)
}

fn task_accepted() -> axum::response::Response {
    (
        StatusCode::ACCEPTED,
        [("Location", "/redfish/v1/TaskService/Tasks/1")],
    )
        .into_response()
}

async fn task() -> Json<Value> {
    Json(json!({ "TaskState": "Completed", "TaskStatus": "OK" }))
}

/// SimpleUpdate: the BMC downloads ImageURI itself, as a real one does.
async fn simple_update(
    State(bmc): State<Arc<MockBmc>>,
    Json(body): Json<Value>,
) -> axum::response::Response {
    let uri = body["ImageURI"].as_str().unwrap_or_default().to_owned();
    let fetched = http_trusting(bmc.trust.as_deref()).get(&uri).send().await;
    let got = match fetched.and_then(|r| r.error_for_status()) {
        Ok(r) => r.bytes().await.unwrap().to_vec(),
        Err(e) => {
            return (StatusCode::BAD_REQUEST, format!("fetching {uri}: {e}")).into_response();
        }
    };
    bmc.flashed(Received {
        how: "simple-update",
        bytes: got,
        detail: Value::from(uri),
        content_length: None,
    });
    task_accepted()
}

/// Splits a multipart/form-data body into (name, content) parts.
fn multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .expect("a boundary")
        .trim_matches('"');
    let delimiter = format!("\r\n--{boundary}");
    // Prefix CRLF so the first delimiter looks like the others.
    let mut body = [b"\r\n".as_slice(), body].concat();
    let mut parts = Vec::new();
    while let Some(at) = find(&body, delimiter.as_bytes()) {
        body.drain(..at + delimiter.len());
        if body.starts_with(b"--") {
            break;
        }
        let head_end = find(&body, b"\r\n\r\n").expect("part headers");
        let head = String::from_utf8_lossy(&body[..head_end]).into_owned();
        let content_start = head_end + 4;
        let next = find(&body[content_start..], delimiter.as_bytes()).expect("part end");
        let name = head
            .split("name=\"")
            .nth(1)
            .and_then(|n| n.split('"').next())
            .unwrap_or_default()
            .to_owned();
        parts.push((name, body[content_start..content_start + next].to_vec()));
        body.drain(..content_start + next);
    }
    parts
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

async fn upload(
    State(bmc): State<Arc<MockBmc>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let content_type = headers["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("multipart/form-data"),
        "{content_type}"
    );
    let parts = multipart(&content_type, &body);
    let part = |name: &str| {
        parts
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, c)| c.clone())
    };
    let (Some(parameters), Some(file)) = (part("UpdateParameters"), part("UpdateFile")) else {
        return (StatusCode::BAD_REQUEST, "UpdateParameters and UpdateFile").into_response();
    };
    bmc.flashed(Received {
        how: "push",
        bytes: file,
        detail: serde_json::from_slice(&parameters).unwrap(),
        content_length: headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok()),
    });
    task_accepted()
}

async fn start_bmc(push: bool) -> (Arc<MockBmc>, RedfishBmc) {
    start_bmc_trusting(push, None).await
}

async fn start_bmc_trusting(
    push: bool,
    trust: Option<std::path::PathBuf>,
) -> (Arc<MockBmc>, RedfishBmc) {
    let (bmc, addr) = start_mock(push, trust).await;
    let client = RedfishBmc::new(
        &BmcAddress::parse(&format!("redfish+http://admin@{addr}")).unwrap(),
        Credentials::new("admin", "x"),
        RedfishOptions::default(),
    )
    .unwrap();
    (bmc, client)
}

async fn start_mock(push: bool, trust: Option<std::path::PathBuf>) -> (Arc<MockBmc>, SocketAddr) {
    let bmc = Arc::new(MockBmc {
        push,
        trust,
        version: Mutex::new("1.0.0".into()),
        received: Mutex::default(),
    });
    let app = axum::Router::new()
        .route("/redfish/v1/", get(root))
        .route("/redfish/v1/Systems", get(systems))
        .route("/redfish/v1/Systems/1", get(system))
        .route("/redfish/v1/Systems/1/Bios", get(bios))
        .route("/redfish/v1/UpdateService", get(update_service))
        .route(
            "/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
            post(simple_update),
        )
        .route("/redfish/v1/UpdateService/upload", post(upload))
        .route("/redfish/v1/TaskService/Tasks/1", get(task))
        .with_state(bmc.clone());
    (bmc, listen(app).await)
}

fn profile_yaml(image_url: &str) -> String {
    format!(
        "name: recorder\nmatch: {{manufacturer: Cairn Test}}\nfirmware:\n  - {{component: bios, min_version: '1.1.0', image_url: '{image_url}', sha256: {}}}\n",
        sha256(GOOD)
    )
}

fn profile(image_url: &str) -> Profile {
    Profile::parse(
        &profile_yaml(image_url),
        std::path::Path::new("recorder.yaml"),
    )
    .unwrap()
}

fn options(
    cache: &tempfile::TempDir,
    server: Option<Arc<ImageServer>>,
    upstream: bool,
) -> ApplyOptions {
    ApplyOptions {
        reset: false,
        power_on: false,
        settle_timeout: Duration::from_secs(5),
        images: Images {
            cache: Arc::new(ImageCache::open(cache.path()).unwrap()),
            server,
            upstream_allowed: upstream,
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pushed_image_is_the_verified_one_even_when_its_url_changes() {
    let (up, url) = start_upstream().await;
    let (bmc, client) = start_bmc(true).await;
    let cache = tempfile::tempdir().unwrap();
    let applied = apply(&client, &profile(&url), &options(&cache, None, false))
        .await
        .unwrap();
    assert_eq!(applied.updated.len(), 1);
    assert_eq!(applied.updated[0].delivery, Delivery::Pushed);

    let got = bmc.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].how, "push");
    assert_eq!(
        sha256(&got[0].bytes),
        sha256(GOOD),
        "the BMC got the verified bytes"
    );
    assert_eq!(
        got[0].detail,
        json!({ "Targets": ["/redfish/v1/Systems/1"] })
    );
    let declared = got[0]
        .content_length
        .expect("a declared Content-Length, not chunked");
    assert!(declared > GOOD.len(), "{declared}");
    // The URL now serves other bytes, and nobody fetched it again.
    assert_eq!(up.downloads.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_downloading_bmc_gets_the_verified_copy_from_cairn_until_the_server_stops() {
    let (up, url) = start_upstream().await;
    let (bmc, client) = start_bmc(false).await;
    let cache = tempfile::tempdir().unwrap();
    let server = Arc::new(
        ImageServer::start("127.0.0.1:0".parse().unwrap(), ServeLimits::default(), None)
            .await
            .unwrap(),
    );
    let applied = apply(
        &client,
        &profile(&url),
        &options(&cache, Some(server.clone()), false),
    )
    .await
    .unwrap();
    assert_eq!(applied.updated[0].delivery, Delivery::Served);

    let got = bmc.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].how, "simple-update");
    assert_eq!(
        sha256(&got[0].bytes),
        sha256(GOOD),
        "the BMC got the verified bytes"
    );
    assert_eq!(
        up.downloads.load(Ordering::SeqCst),
        1,
        "upstream fetched once"
    );
    // http://127.0.0.1:PORT/firmware/<random>/<sha256>
    let uri = got[0].detail.as_str().unwrap().to_owned();
    let path: Vec<&str> = uri
        .strip_prefix(&format!("http://{}/", server.address()))
        .unwrap()
        .split('/')
        .collect();
    assert_eq!(path[0], "firmware", "{uri}");
    assert_eq!(path[1].len(), 32, "a random part: {uri}");
    assert_eq!(path[2], sha256(GOOD), "{uri}");

    server.stop().await;
    let after = fetch(&uri).await;
    assert!(
        after.as_ref().is_err_and(|e| e.is_connect()),
        "the server is gone after the apply: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_bmc_fetches_upstream_only_when_allowed_and_then_gets_what_the_url_serves_now() {
    let (up, url) = start_upstream().await;
    let (bmc, client) = start_bmc(false).await;
    let cache = tempfile::tempdir().unwrap();
    let e = apply(&client, &profile(&url), &options(&cache, None, false))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--serve-address") && e.contains("--bmc-fetches-upstream"),
        "{e}"
    );
    assert!(bmc.received().is_empty(), "nothing was sent");

    // Allowed: the old behaviour, and the reason it is no longer the default.
    let applied = apply(&client, &profile(&url), &options(&cache, None, true))
        .await
        .unwrap();
    assert_eq!(applied.updated[0].delivery, Delivery::Upstream);
    let got = bmc.received();
    assert_eq!(got[0].detail, Value::from(url.as_str()));
    assert_eq!(
        got[0].bytes, EVIL,
        "the digest did not cover what the BMC flashed"
    );
    assert_eq!(up.downloads.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_cached_image_is_downloaded_again_or_refused_never_sent() {
    use std::os::unix::fs::PermissionsExt;
    let tamper = |path: &std::path::Path| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(path, EVIL).unwrap();
    };
    let (up, url) = start_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::open(dir.path()).unwrap();
    let want = sha256(GOOD);

    let first = cache.get(&url, &want).await.unwrap();
    assert!(first.downloaded);
    assert_eq!(first.path, dir.path().join(&want), "named by its digest");
    let again = cache.get(&url, &want).await.unwrap();
    assert!(!again.downloaded, "verified again, not downloaded again");
    assert_eq!(up.downloads.load(Ordering::SeqCst), 1);

    // Tampered between two applies, while upstream now serves other bytes: refused, and
    // the tampered file is gone.
    tamper(&first.path);
    let e = cache.get(&url, &want).await.unwrap_err();
    assert!(matches!(e, ImageError::Digest { .. }), "{e}");
    assert!(!first.path.exists(), "the tampered copy was removed");
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no leftovers"
    );

    // Tampered after it was verified, before the BMC reads it: the server refuses it.
    let (up2, url2) = start_upstream().await;
    let verified = cache.get(&url2, &want).await.unwrap();
    assert!(verified.downloaded);
    assert_eq!(up2.downloads.load(Ordering::SeqCst), 1);
    let server = ImageServer::start("127.0.0.1:0".parse().unwrap(), ServeLimits::default(), None)
        .await
        .unwrap();
    let served = server.offer(&verified);
    assert_eq!(fetch(&served).await.unwrap().bytes().await.unwrap(), GOOD);
    tamper(&verified.path);
    let r = fetch(&served).await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::GONE);
    assert!(verified.still_verified().is_err());

    // Tampered in the cache, with the upstream still good: downloaded again and pushed.
    let (bmc, client) = start_bmc(true).await;
    let (up3, url3) = start_upstream().await;
    let opts = ApplyOptions {
        reset: false,
        power_on: false,
        settle_timeout: Duration::from_secs(5),
        images: Images {
            cache: Arc::new(cache),
            server: None,
            upstream_allowed: false,
        },
    };
    apply(&client, &profile(&url3), &opts).await.unwrap();
    assert_eq!(up3.downloads.load(Ordering::SeqCst), 1, "downloaded again");
    assert_eq!(bmc.received()[0].bytes, GOOD);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_image_server_serves_only_its_files_with_ranges_and_time_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (_up, url) = start_upstream().await;
    let cache = ImageCache::open(dir.path()).unwrap();
    let image = cache.get(&url, &sha256(GOOD)).await.unwrap();
    let limits = ServeLimits {
        header_read: Duration::from_secs(1),
        connection: Duration::from_secs(30),
    };
    assert!(
        ImageServer::start("0.0.0.0:0".parse().unwrap(), limits, None)
            .await
            .unwrap_err()
            .to_string()
            .contains("BMCs reach")
    );
    let server = ImageServer::start("127.0.0.1:0".parse().unwrap(), limits, None)
        .await
        .unwrap();
    let served = server.offer(&image);
    assert_eq!(server.offer(&image), served, "one URL per image");
    let base = format!("http://{}", server.address());
    let http = http();
    let status = |path: String| {
        let http = http.clone();
        async move { http.get(path).send().await.unwrap().status().as_u16() }
    };
    let token = served.split('/').nth(4).unwrap().to_owned();
    for other in [
        format!("{base}/"),
        format!("{base}/firmware/"),
        format!("{base}/firmware/{token}/"),
        format!("{base}/firmware/{}/{}", "0".repeat(32), image.sha256),
        format!("{base}/{}", image.sha256),
        format!("{base}{}", dir.path().join(&image.sha256).display()),
    ] {
        assert_eq!(status(other.clone()).await, 404, "{other}");
    }
    // Paths a client library would normalise, sent as they are.
    for raw in [
        format!("/firmware/{token}/../{token}/{}", image.sha256),
        format!("/firmware/{token}/%2e%2e/{token}/{}", image.sha256),
        format!("/firmware/{token}//{}", image.sha256),
    ] {
        assert_eq!(raw_get(server.address(), &raw).await, "404", "{raw}");
    }
    assert_eq!(http.post(&served).send().await.unwrap().status(), 405);
    let whole = http.get(&served).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.bytes().await.unwrap(), GOOD);
    let part = http
        .get(&served)
        .header("Range", "bytes=9-16")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.bytes().await.unwrap(), &GOOD[9..=16]);

    // A client that connects and sends nothing is cut off at the header-read limit.
    use tokio::io::AsyncReadExt;
    let mut idle = tokio::net::TcpStream::connect(server.address())
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed within the header-read limit")
        .unwrap_or(0);
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(n == 0 || text.contains("408"), "{text}");
}

/// `cairn firmware`, as the installer's binary wires it.
#[derive(clap::Parser)]
enum Cairn {
    Firmware(cairn_firmware_profiles::cli::FirmwareArgs),
}

#[tokio::test(flavor = "multi_thread")]
async fn cairn_firmware_apply_serves_the_verified_image_for_the_duration_of_the_apply() {
    use clap::Parser;
    let (up, url) = start_upstream().await;
    let (bmc, addr) = start_mock(false, None).await;
    let dir = tempfile::tempdir().unwrap();
    let profiles = dir.path().join("profiles");
    std::fs::create_dir(&profiles).unwrap();
    std::fs::write(profiles.join("recorder.yaml"), profile_yaml(&url)).unwrap();
    std::fs::write(dir.path().join("bmc.pw"), "x\n").unwrap();
    let cache = dir.path().join("cache");
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let Cairn::Firmware(args) = Cairn::try_parse_from([
        "cairn".to_owned(),
        "firmware".into(),
        "--bmc".into(),
        format!("redfish+http://admin@{addr}"),
        "--allow-insecure-redfish".into(),
        "--password-file".into(),
        path(&dir.path().join("bmc.pw")),
        "--profiles".into(),
        path(&profiles),
        "apply".into(),
        "--serve-address".into(),
        "127.0.0.1:0".into(),
        "--image-cache".into(),
        path(&cache),
    ])
    .unwrap();
    assert_eq!(args.run().await.unwrap(), cairn_api::cli::Exit::Success);

    let got = bmc.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].bytes, GOOD);
    assert_eq!(up.downloads.load(Ordering::SeqCst), 1);
    assert!(cache.join(sha256(GOOD)).exists(), "kept in the cache");
    let uri = got[0].detail.as_str().unwrap();
    let after = fetch(uri).await;
    assert!(
        after.as_ref().is_err_and(|e| e.is_connect()),
        "the server stopped with the apply: {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn over_https_the_bmc_gets_the_verified_copy_from_a_certificate_it_trusts() {
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_path, key_path) = (dir.path().join("serve.pem"), dir.path().join("serve.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();

    // A key file that is not a key: refused, and its content is not repeated.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "secret-looking text").unwrap();
    let e = cairn_api::error_chain(&tls_config(&cert_path, &bad).unwrap_err());
    assert!(
        e.contains("bad.key") && !e.contains("secret-looking"),
        "{e}"
    );

    let tls = tls_config(&cert_path, &key_path).unwrap();
    let server = Arc::new(
        ImageServer::start(
            "127.0.0.1:0".parse().unwrap(),
            ServeLimits::default(),
            Some(tls),
        )
        .await
        .unwrap(),
    );
    let (up, url) = start_upstream().await;
    let (bmc, client) = start_bmc_trusting(false, Some(cert_path.clone())).await;
    let cache = tempfile::tempdir().unwrap();
    let applied = apply(
        &client,
        &profile(&url),
        &options(&cache, Some(server.clone()), false),
    )
    .await
    .unwrap();
    assert_eq!(applied.updated[0].delivery, Delivery::Served);
    let got = bmc.received();
    let uri = got[0].detail.as_str().unwrap();
    assert!(uri.starts_with("https://127.0.0.1:"), "{uri}");
    assert_eq!(got[0].bytes, GOOD);
    assert_eq!(up.downloads.load(Ordering::SeqCst), 1);
    // A client that does not trust the certificate gets nothing.
    assert!(fetch(uri).await.is_err());
    server.stop().await;
}
