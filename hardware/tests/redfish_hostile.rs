//! Redfish against a hostile BMC: links to other origins, endless bodies, and a session that
//! expires in the middle of a firmware upload.
//!
//! The "BMC" is an axum server that answers the way a compromised or broken BMC might; a
//! second server on another port stands for the host such links point to and records every
//! request it receives. Nothing carrying the BMC's credentials may ever reach it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use cairn_hardware::address::{BmcAddress, Credentials};
use cairn_hardware::bmc::{Bmc, BmcError, FirmwareTarget, PowerState};
use cairn_hardware::redfish::client::MAX_BODY_BYTES;
use cairn_hardware::redfish::{RedfishBmc, RedfishOptions};
use serde_json::json;

const PASSWORD: &str = "bmc-secret-password";
const TOKEN: &str = "bmc-session-token";

/// How the hostile BMC misbehaves.
#[derive(Clone, Copy, PartialEq)]
enum Hostility {
    /// Service root's `Links.Sessions` is an absolute URL on the other host.
    SessionsElsewhere,
    /// The Systems collection's member is an absolute URL on the other host.
    MemberElsewhere,
    /// The member is an absolute URL on the BMC itself: allowed.
    MemberAbsoluteSameOrigin,
    /// The System resource is a body larger than the limit, without Content-Length.
    EndlessSystem,
    /// The System resource announces a huge Content-Length.
    HugeContentLength,
    /// The UpdateService's `MultipartHttpPushUri` is an absolute URL on the other host.
    PushElsewhere,
    /// The first firmware upload is answered 401 (its session expired); later ones pass.
    UploadSessionExpires,
    /// The UpdateService takes images of at most 1000 bytes.
    TinyMaxImageSize,
}

#[derive(Clone)]
struct HostileBmc {
    hostility: Hostility,
    me: String,
    elsewhere: String,
    /// Bodies of the uploads that reached the push URI.
    uploads: Arc<Mutex<Vec<axum::body::Bytes>>>,
    logins: Arc<AtomicUsize>,
}

async fn bmc_handler(State(s): State<HostileBmc>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let sessions = if s.hostility == Hostility::SessionsElsewhere {
        format!("{}/redfish/v1/SessionService/Sessions", s.elsewhere)
    } else {
        "/redfish/v1/SessionService/Sessions".to_owned()
    };
    if path != "/redfish/v1/" && path != "/redfish/v1/SessionService/Sessions" {
        let token = req
            .headers()
            .get("X-Auth-Token")
            .and_then(|v| v.to_str().ok());
        if token != Some(TOKEN) {
            return StatusCode::UNAUTHORIZED.into_response();
        }
    }
    match path.as_str() {
        "/redfish/v1/" => Json(json!({
            "Systems": {"@odata.id": "/redfish/v1/Systems"},
            "UpdateService": {"@odata.id": "/redfish/v1/UpdateService"},
            "Links": {"Sessions": {"@odata.id": sessions}},
        }))
        .into_response(),
        "/redfish/v1/UpdateService" => {
            let push = match s.hostility {
                Hostility::PushElsewhere => format!("{}/upload", s.elsewhere),
                _ => "/redfish/v1/UpdateService/upload".to_owned(),
            };
            let max = match s.hostility {
                Hostility::TinyMaxImageSize => json!(1000),
                _ => json!(null),
            };
            Json(json!({"MultipartHttpPushUri": push, "MaxImageSizeBytes": max})).into_response()
        }
        "/redfish/v1/UpdateService/upload" => {
            let body = axum::body::to_bytes(req.into_body(), usize::MAX)
                .await
                .unwrap();
            s.uploads.lock().unwrap().push(body);
            // The session "expires" during the first upload, after its bytes arrived.
            if s.hostility == Hostility::UploadSessionExpires
                && s.uploads.lock().unwrap().len() == 1
            {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            StatusCode::NO_CONTENT.into_response()
        }
        "/redfish/v1/SessionService/Sessions" => {
            s.logins.fetch_add(1, Ordering::SeqCst);
            (
                StatusCode::CREATED,
                [
                    ("X-Auth-Token", TOKEN),
                    ("Location", "/redfish/v1/SessionService/Sessions/1"),
                ],
                Json(json!({})),
            )
                .into_response()
        }
        "/redfish/v1/Systems" => {
            let member = match s.hostility {
                Hostility::MemberElsewhere => format!("{}/redfish/v1/Systems/1", s.elsewhere),
                Hostility::MemberAbsoluteSameOrigin => format!("{}/redfish/v1/Systems/1", s.me),
                _ => "/redfish/v1/Systems/1".to_owned(),
            };
            Json(json!({"Members": [{"@odata.id": member}]})).into_response()
        }
        "/redfish/v1/Systems/1" => match s.hostility {
            Hostility::EndlessSystem => {
                // 1 MiB chunks, one more than the limit allows; no Content-Length.
                let chunk = axum::body::Bytes::from(vec![b' '; 1 << 20]);
                let n = MAX_BODY_BYTES / chunk.len() + 1;
                let stream = futures::stream::iter(
                    std::iter::repeat_n(chunk, n).map(Ok::<_, std::convert::Infallible>),
                );
                Response::new(Body::from_stream(stream))
            }
            Hostility::HugeContentLength => {
                // Announces 100 GB and starts sending it.
                let chunk = axum::body::Bytes::from(vec![b' '; 1 << 20]);
                let stream = futures::stream::iter(
                    std::iter::repeat_n(chunk, 100_000).map(Ok::<_, std::convert::Infallible>),
                );
                (
                    [(header::CONTENT_LENGTH, "100000000000")],
                    Body::from_stream(stream),
                )
                    .into_response()
            }
            _ => Json(json!({"PowerState": "On", "Id": "1"})).into_response(),
        },
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The host hostile links point to: it records the headers of every request.
async fn elsewhere_handler(
    State(seen): State<Arc<Mutex<Vec<HeaderMap>>>>,
    req: Request,
) -> Response {
    seen.lock().unwrap().push(req.headers().clone());
    Json(json!({"PowerState": "Off"})).into_response()
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    url
}

/// Runs `power_state` against a BMC with the given hostility; returns its answer and the
/// requests the other host received.
async fn against(hostility: Hostility) -> (Result<PowerState, BmcError>, Vec<HeaderMap>) {
    let (bmc, _, seen) = start(hostility).await;
    let result = bmc.power_state().await;
    let seen = seen.lock().unwrap().clone();
    (result, seen)
}

/// A client of a hostile BMC, its state, and what the other host receives.
async fn start(hostility: Hostility) -> (RedfishBmc, HostileBmc, Arc<Mutex<Vec<HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let elsewhere = serve(
        Router::new()
            .fallback(elsewhere_handler)
            .with_state(seen.clone()),
    )
    .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = format!("http://{}", listener.local_addr().unwrap());
    let state = HostileBmc {
        hostility,
        me: me.clone(),
        elsewhere,
        uploads: Arc::default(),
        logins: Arc::default(),
    };
    let router = Router::new()
        .fallback(bmc_handler)
        .with_state(state.clone());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let address = BmcAddress::parse(&me.replace("http://", "redfish+http://")).unwrap();
    let bmc = RedfishBmc::new(
        &address,
        Credentials::new("admin", PASSWORD),
        RedfishOptions::default(),
    )
    .unwrap();
    (bmc, state, seen)
}

fn assert_no_credentials(seen: &[HeaderMap]) {
    for headers in seen {
        assert!(headers.get(header::AUTHORIZATION).is_none(), "{headers:?}");
        assert!(headers.get("X-Auth-Token").is_none(), "{headers:?}");
    }
    assert!(seen.is_empty(), "the other host was contacted: {seen:?}");
}

#[tokio::test]
async fn a_sessions_link_to_another_host_never_receives_the_password() {
    let (result, seen) = against(Hostility::SessionsElsewhere).await;
    assert_no_credentials(&seen);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("outside the BMC"), "{err}");
    assert!(!err.contains(PASSWORD), "{err}");
}

#[tokio::test]
async fn a_member_link_to_another_host_never_receives_the_session_token() {
    let (result, seen) = against(Hostility::MemberElsewhere).await;
    assert_no_credentials(&seen);
    let err = result.unwrap_err().to_string();
    assert!(err.contains("outside the BMC"), "{err}");
}

#[tokio::test]
async fn an_absolute_link_to_the_bmc_itself_is_followed() {
    let (result, seen) = against(Hostility::MemberAbsoluteSameOrigin).await;
    assert_eq!(result.unwrap(), PowerState::On);
    assert!(seen.is_empty());
}

#[tokio::test]
async fn an_endless_body_is_cut_off_at_the_limit() {
    let (result, _) = against(Hostility::EndlessSystem).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("larger than 16 MiB"), "{err}");
}

#[tokio::test]
async fn a_huge_content_length_is_refused_before_reading() {
    let (result, _) = against(Hostility::HugeContentLength).await;
    let err = result.unwrap_err().to_string();
    assert!(err.contains("larger than 16 MiB"), "{err}");
}

fn image(dir: &tempfile::TempDir) -> (std::path::PathBuf, Vec<u8>) {
    // Larger than one upload chunk, so the file is streamed in several reads.
    let bytes: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    let path = dir.path().join("bios.bin");
    std::fs::write(&path, &bytes).unwrap();
    (path, bytes)
}

#[tokio::test]
async fn a_push_uri_on_another_host_never_receives_the_image_or_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = image(&dir);
    let (bmc, state, seen) = start(Hostility::PushElsewhere).await;
    assert!(bmc.accepts_firmware_push().await.unwrap());
    let err = bmc
        .push_firmware(&path, FirmwareTarget::Bios)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("outside the BMC"), "{err}");
    assert_no_credentials(&seen.lock().unwrap());
    assert!(state.uploads.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_upload_whose_session_expires_is_sent_again_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bytes) = image(&dir);
    let (bmc, state, _) = start(Hostility::UploadSessionExpires).await;
    bmc.push_firmware(&path, FirmwareTarget::Bios)
        .await
        .unwrap();
    assert_eq!(
        state.logins.load(Ordering::SeqCst),
        2,
        "logged in again once"
    );
    let uploads = state.uploads.lock().unwrap().clone();
    assert_eq!(uploads.len(), 2);
    for body in uploads {
        let at = body
            .windows(bytes.len())
            .position(|w| w == bytes.as_slice())
            .expect("the whole file in each upload");
        let head = String::from_utf8_lossy(&body[..at]);
        assert!(
            head.contains("name=\"UpdateParameters\"") && head.contains("name=\"UpdateFile\""),
            "the parameters part, then the file part: {head}"
        );
    }
}

#[tokio::test]
async fn an_image_larger_than_the_bmc_takes_is_not_sent() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = image(&dir);
    let (bmc, state, _) = start(Hostility::TinyMaxImageSize).await;
    let err = bmc
        .push_firmware(&path, FirmwareTarget::Bios)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("MaxImageSizeBytes"), "{err}");
    assert!(state.uploads.lock().unwrap().is_empty());
}
