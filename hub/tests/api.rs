//! The hub's API end to end, against a real `cairn-hub` process over HTTPS/mTLS.

mod common;

use common::{Device, HubClients, LIMIT, heartbeat, post, start_hub};
use serde_json::{Value, json};

#[tokio::test]
async fn init_prints_the_fingerprint_the_hub_serves() {
    let hub = start_hub(&[]);
    let (status, body) = hub.admin().get("/v1/ca").await;
    assert_eq!(status, 200);
    assert_eq!(body["fingerprint"], hub.fingerprint.as_str());
    assert!(hub.fingerprint.starts_with("sha256:") && hub.fingerprint.len() == 7 + 64);
    // Keys are private to root.
    use std::os::unix::fs::PermissionsExt;
    for key in ["ca.key", "server.key"] {
        let mode = std::fs::metadata(hub.data.join(key))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }
    // A second init refuses to overwrite the hub.
    let out = std::process::Command::new(common::hub_bin())
        .args(["init", "--data"])
        .arg(hub.data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already holds a hub"));
}

#[tokio::test]
async fn register_heartbeat_rekey_and_token_lifecycle() {
    let hub = start_hub(&[
        "--heartbeat-interval",
        "1",
        "--offline-after",
        "2",
        "--offline-check-every",
        "1",
    ]);
    let admin = hub.admin();
    let token = admin.enrollment_token("lab", 1).await;

    // The wizard's check does not use the token.
    for _ in 0..3 {
        let (s, check) = post(
            &hub.anonymous(),
            format!("{}/v1/registrations/check", hub.url),
            &json!({"token": token}),
        )
        .await;
        assert_eq!(s, 200);
        assert_eq!(check, json!({"valid": true, "site": "lab"}));
    }

    let device = Device::new(
        "edge-1",
        "SER123",
        &["52:54:00:00:00:01", "52:54:00:00:00:02"],
    );
    let reg = device.register(&hub, &token).await;
    assert_eq!(reg.site, "lab");
    assert_eq!(reg.desired.generation, 1);
    assert_eq!(reg.desired.heartbeat_interval_seconds, 1);
    assert_eq!(reg.ca_bundle_pem, hub.ca_pem);
    let id = reg.appliance_id.clone();

    // Heartbeat over mTLS.
    let http = device.client(&hub, &reg);
    let (s, body) = post(
        &http,
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["desired"]["generation"], 1);
    // Without a certificate: 401 with a message.
    let (s, body) = post(
        &hub.anonymous(),
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 401);
    assert_eq!(body["error"], "client_certificate_required");

    let (s, view) = admin.get(&format!("/v1/appliances/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(view["state"], "online");
    assert_eq!(view["labels"]["rack"], "r1");
    assert_eq!(view["status"]["status"]["os_version"], "cairn-1");

    // Silence: offline after 2 missed 1 s intervals, an event; then online again.
    cairn_test_support::poll_async("offline", LIMIT, || async {
        let (_, v) = admin.get(&format!("/v1/appliances/{id}")).await;
        (v["state"] == "offline").then_some(())
    })
    .await;
    let (s, _) = post(
        &http,
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200);
    let (_, events) = admin.get("/v1/events?since=2000-01-01T00:00:00Z").await;
    let kinds: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["appliance"] == id.as_str())
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["registered", "online", "offline", "online"]);

    // The attack: any token of another site, this appliance's serial and MACs (listed in
    // another order). Refused, audited, raised as an event; the appliance keeps its ID, site
    // and certificate.
    let site_b = admin.enrollment_token("site-b", 10).await;
    let impostor = Device::new(
        "evil",
        "SER123",
        &["52:54:00:00:00:02", "52:54:00:00:00:01"],
    );
    let (s, body) = post(
        &hub.anonymous(),
        format!("{}/v1/registrations", hub.url),
        &serde_json::to_value(impostor.request(&site_b)).unwrap(),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("hardware_known")),
        "{body}"
    );
    assert!(
        !body.to_string().contains(id.as_str()),
        "the refusal names no appliance: {body}"
    );
    let (s, _) = post(
        &http,
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200, "the real appliance keeps its certificate");
    let (_, view) = admin.get(&format!("/v1/appliances/{id}")).await;
    assert_eq!(
        (view["site"].as_str(), view["hostname"].as_str()),
        (Some("lab"), Some("edge-1"))
    );
    assert_eq!(view["rekeys"], 0);
    let (_, events) = admin.get("/v1/events?since=2000-01-01T00:00:00Z").await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["appliance"] == id.as_str()
                && e["kind"] == "registration_refused"
                && e["site"] == "lab"),
        "{events}"
    );

    // Same hardware, new key, with the re-install token an operator minted for it: same
    // identity and site, re-keyed; the token works once.
    let (s, minted) = admin
        .post(
            &format!("/v1/appliances/{id}/reinstall-token"),
            json!({"ttl_seconds": 600}),
        )
        .await;
    assert_eq!(s, 201, "{minted}");
    assert_eq!(
        (minted["kind"].as_str(), minted["site"].as_str()),
        (Some("reinstall"), Some("lab"))
    );
    let reinstall = minted["token"].as_str().unwrap().to_owned();
    let reinstalled = Device::new(
        "edge-1",
        "SER123",
        &["52:54:00:00:00:02", "52:54:00:00:00:01"],
    );
    let lost = reinstalled.register(&hub, &reinstall).await;
    assert_eq!(lost.appliance_id, id);
    assert_eq!(lost.site, "lab");
    // The same request again, as after a lost answer: the same identity, a certificate for
    // the same key, not a second use. Another key with the token finds it used up.
    let again = reinstalled.register(&hub, &reinstall).await;
    assert_eq!(
        (again.appliance_id.as_str(), again.site.as_str()),
        (id.as_str(), "lab")
    );
    let other_key = Device::new(
        "edge-1",
        "SER123",
        &["52:54:00:00:00:02", "52:54:00:00:00:01"],
    );
    let (s, body) = post(
        &hub.anonymous(),
        format!("{}/v1/registrations", hub.url),
        &serde_json::to_value(other_key.request(&reinstall)).unwrap(),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("token_used_up")),
        "{body}"
    );
    let (s, body) = post(
        &http,
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 401, "the old certificate must stop working");
    assert_eq!(body["error"], "certificate_superseded");
    let http2 = reinstalled.client(&hub, &again);
    let (s, _) = post(
        &http2,
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200);
    let (_, list) = admin.get("/v1/appliances").await;
    assert_eq!(
        list["items"].as_array().unwrap().len(),
        1,
        "no duplicate for known hardware"
    );

    // Used up: refused with the reason, audited.
    let third = Device::new("edge-2", "SER999", &["52:54:00:00:00:09"]);
    let (s, body) = post(
        &hub.anonymous(),
        format!("{}/v1/registrations", hub.url),
        &serde_json::to_value(third.request(&token)).unwrap(),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (403, Some("token_used_up")),
        "{body}"
    );
    let (_, check) = post(
        &hub.anonymous(),
        format!("{}/v1/registrations/check", hub.url),
        &json!({"token": token}),
    )
    .await;
    assert_eq!(check, json!({"valid": false, "reason": "used_up"}));

    // Revoked.
    let token2 = admin.enrollment_token("lab", 5).await;
    let token2_id = token2.split('.').nth(1).unwrap();
    let (s, _) = admin
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/tokens/{token2_id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let (s, body) = post(
        &hub.anonymous(),
        format!("{}/v1/registrations", hub.url),
        &serde_json::to_value(third.request(&token2)).unwrap(),
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (403, Some("token_revoked")));
    // Unknown secret for a real ID reveals nothing.
    let forged = format!("cairn-et.{token2_id}.{}", "ab".repeat(20));
    let (_, check) = post(
        &hub.anonymous(),
        format!("{}/v1/registrations/check", hub.url),
        &json!({"token": forged}),
    )
    .await;
    assert_eq!(check, json!({"valid": false, "reason": "unknown"}));

    let (_, audit) = admin.get("/v1/audit?since=2000-01-01T00:00:00Z").await;
    let results: Vec<(String, String)> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["result"].as_str().unwrap().into(),
            )
        })
        .collect();
    for expected in [
        ("appliance.register", "ok"),
        ("appliance.register", "refused: hardware_known"),
        ("token.reinstall", "ok"),
        ("appliance.rekey", "ok"),
        ("appliance.register", "refused: token_used_up"),
        ("token.revoke", "ok"),
        ("appliance.register", "refused: token_revoked"),
    ] {
        assert!(
            results.contains(&(expected.0.into(), expected.1.into())),
            "audit lacks {expected:?}: {results:?}"
        );
    }
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["actor"] != "cairn-hub init")
            .all(|e| e["source"] == "127.0.0.1"),
        "{audit}"
    );
    // Secrets never reach the audit or token listings.
    let (_, tokens) = admin.get("/v1/tokens").await;
    let dump = format!("{audit}{tokens}{events}");
    for t in [&token, &reinstall, &site_b] {
        assert!(!dump.contains(t.split('.').nth(2).unwrap()));
    }
}

#[tokio::test]
async fn renewal_over_mtls_replaces_the_certificate() {
    let hub = start_hub(&[]);
    let token = hub.admin().enrollment_token("lab", 1).await;
    let device = Device::new("edge-r", "SER-R", &["52:54:00:00:01:01"]);
    let reg = device.register(&hub, &token).await;
    let http = device.client(&hub, &reg);
    let id = reg.appliance_id.to_string();

    // The renewal CSR must name the appliance ID.
    let new_key = rcgen::KeyPair::generate().unwrap();
    let (s, body) = post(
        &http,
        format!("{}/v1/renewals", hub.url),
        &json!({"csr_pem": common::csr("edge-r", &new_key)}),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("csr_subject_mismatch"))
    );
    let (s, body) = post(
        &http,
        format!("{}/v1/renewals", hub.url),
        &json!({"csr_pem": common::csr(&id, &new_key)}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let renewed = hub.appliance(
        body["certificate_pem"].as_str().unwrap(),
        &new_key.serialize_pem(),
    );
    let beat = |http: &reqwest::Client| {
        let (http, url) = (http.clone(), format!("{}/v1/heartbeats", hub.url));
        async move { post(&http, url, &heartbeat(1, None)).await }
    };
    // Until the new certificate is seen, the old one still works (the renewal's answer may
    // have been lost), and the hub shows both.
    assert_eq!(beat(&http).await.0, 200);
    let (_, view) = hub.admin().get(&format!("/v1/appliances/{id}")).await;
    assert!(view["previous_cert_sha256"].is_string(), "{view}");
    assert_eq!(beat(&renewed).await.0, 200);
    // The first use of the new one retired the old one.
    let (s, body) = beat(&http).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("certificate_superseded")),
        "{body}"
    );
    let (_, view) = hub.admin().get(&format!("/v1/appliances/{id}")).await;
    assert!(view["previous_cert_sha256"].is_null(), "{view}");
    let (_, events) = hub
        .admin()
        .get("/v1/events?since=2000-01-01T00:00:00Z")
        .await;
    assert!(
        events
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["appliance"] == id.as_str() && e["kind"] == "previous-certificate-retired"),
        "{events}"
    );
    assert_eq!(beat(&renewed).await.0, 200);
    // Without a certificate: refused.
    let (s, _) = post(
        &hub.anonymous(),
        format!("{}/v1/renewals", hub.url),
        &json!({"csr_pem": common::csr(&id, &new_key)}),
    )
    .await;
    assert_eq!(s, 401);
}

#[tokio::test]
async fn bad_input_gets_a_4xx_with_a_message() {
    let hub = start_hub(&["--registration-rate", "5"]);
    let http = hub.anonymous();
    let token = hub.admin().enrollment_token("lab", 10).await;
    let device = Device::new("edge-x", "SER-X", &["52:54:00:00:02:01"]);

    let send = |body: Vec<u8>, path: &'static str| {
        let http = http.clone();
        let url = format!("{}{path}", hub.url);
        async move {
            let r = http
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            (s, r.json::<Value>().await.unwrap())
        }
    };
    // Over the size limit.
    let big = serde_json::to_vec(&json!({"token": "x".repeat(100_000)})).unwrap();
    let (s, body) = send(big, "/v1/registrations/check").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    // Malformed JSON.
    let (s, body) = send(b"{not json".to_vec(), "/v1/registrations").await;
    assert_eq!((s, body["error"].as_str()), (400, Some("malformed_json")));
    assert!(!body["message"].as_str().unwrap().is_empty());
    // Unknown fields in a command.
    let mut req = serde_json::to_value(device.request(&token)).unwrap();
    req["surprise"] = json!(1);
    let (s, _) = send(serde_json::to_vec(&req).unwrap(), "/v1/registrations").await;
    assert_eq!(s, 422);
    // Malformed CSR.
    let mut req = device.request(&token);
    req.csr_pem =
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n".into();
    let (s, body) = send(serde_json::to_vec(&req).unwrap(), "/v1/registrations").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("csr_invalid")),
        "{body}"
    );

    // Unknown route and wrong method.
    let r = http
        .get(format!("{}/v1/nothing-here", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "no_such_route");
    let r = http
        .get(format!("{}/v1/heartbeats", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // No or wrong bearer token.
    let r = http
        .get(format!("{}/v1/appliances", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (s, _) = hub
        .operator("cairn-op.0011.2233")
        .get("/v1/appliances")
        .await;
    assert_eq!(s, 401);

    // A client certificate from another CA: refused with a reason, not a bare TLS alert.
    let other = start_hub(&[]);
    let other_token = other.admin().enrollment_token("lab", 1).await;
    let stranger = Device::new("edge-s", "SER-S", &["52:54:00:00:03:01"]);
    let foreign = stranger.register(&other, &other_token).await;
    let wrong = hub.appliance(&foreign.certificate_pem, &stranger.key.serialize_pem());
    let (s, body) = post(
        &wrong,
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (401, Some("client_certificate_invalid")),
        "{body}"
    );

    // A flood on the registration endpoints: 429 once the per-source budget is spent
    // (5 per minute, 4 already used above by check + registrations).
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (s, _) = post(
            &http,
            format!("{}/v1/registrations/check", hub.url),
            &json!({"token": token}),
        )
        .await;
        statuses.push(s);
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    // The hub is still fine.
    let (s, _) = hub.admin().get("/v1/whoami").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn scoped_operator_tokens_see_only_their_site() {
    let hub = start_hub(&[]);
    let admin = hub.admin();
    for (site, serial) in [("north", "N1"), ("south", "S1")] {
        let t = admin.enrollment_token(site, 1).await;
        Device::new(&format!("edge-{serial}").to_lowercase(), serial, &[])
            .register(&hub, &t)
            .await;
    }
    let (s, body) = admin
        .post(
            "/v1/operator-tokens",
            json!({"name": "north-ops", "role": "operator", "site": "north"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let north = hub.operator(body["token"].as_str().unwrap());
    let (_, list) = north.get("/v1/appliances").await;
    let sites: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["site"].as_str().unwrap())
        .collect();
    assert_eq!(sites, ["north"]);
    let (s, _) = north.post("/v1/tokens", json!({"site": "south"})).await;
    assert_eq!(s, 403);
    let (s, _) = north.post("/v1/tokens", json!({"site": "north"})).await;
    assert_eq!(s, 201);
    let (s, _) = north
        .post(
            "/v1/operator-tokens",
            json!({"name": "x", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, 403, "operators cannot mint operator tokens");

    let (s, body) = admin
        .post(
            "/v1/operator-tokens",
            json!({"name": "watcher", "role": "viewer"}),
        )
        .await;
    assert_eq!(s, 201);
    let viewer = hub.operator(body["token"].as_str().unwrap());
    let (s, _) = viewer.get("/v1/appliances").await;
    assert_eq!(s, 200);
    let (s, body) = viewer.post("/v1/tokens", json!({"site": "north"})).await;
    assert_eq!((s, body["error"].as_str()), (403, Some("forbidden")));
}

#[tokio::test]
async fn openapi_and_metrics_are_served() {
    let hub = start_hub(&[]);
    let r = hub
        .anonymous()
        .get(format!("{}/v1/openapi.json", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served: Value = r.json().await.unwrap();
    let checked_in: Value = serde_json::from_str(include_str!("../openapi.json")).unwrap();
    assert_eq!(served, checked_in);
    assert!(
        served["paths"]["/v1/heartbeats"]["post"]["security"][0]["applianceCertificate"].is_array()
    );

    let token = hub.admin().enrollment_token("lab", 1).await;
    let device = Device::new("edge-m", "SER-M", &["52:54:00:00:05:01"]);
    let reg = device.register(&hub, &token).await;
    let (s, _) = post(
        &device.client(&hub, &reg),
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(s, 200);

    let r = hub
        .anonymous()
        .get(format!("{}/metrics", hub.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "metrics need a viewer token");
    let r = hub
        .anonymous()
        .get(format!("{}/metrics", hub.url))
        .bearer_auth(&hub.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    for needle in [
        r#"cairn_hub_http_requests_total{route="/v1/heartbeats",method="POST",status="200"} 1"#,
        r#"cairn_hub_http_request_duration_seconds_count{route="/v1/registrations"} 1"#,
        r#"cairn_hub_appliances{state="online"} 1"#,
        r#"cairn_hub_registrations_total{result="ok"} 1"#,
        r#"cairn_hub_store_operation_duration_seconds_count{op="txn",backend="embedded"}"#,
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

/// The operator CLI (`cairn hub ...`) against a real hub.
#[tokio::test]
async fn operator_cli_logs_in_with_a_pinned_ca_and_manages_the_fleet() {
    use cairn_api::cli::Exit;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        hub: cairn_hub_client::cli::HubArgs,
    }
    let hub = start_hub(&[]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hub.json");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, &hub.admin_token).unwrap();
    let run = |args: Vec<String>| {
        let mut full = vec![
            "cairn-hub-test".to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        full.extend(args);
        Cli::parse_from(full).hub.run()
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // A malformed fingerprint is invalid input, nothing is sent or saved.
    let exit = run(s(&[
        "login",
        "--url",
        &hub.url,
        "--ca-fingerprint",
        "sha256:12:34",
        "--token-file",
        token_file.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(exit, Exit::InvalidInput);
    assert!(!config.exists());
    // A wrong fingerprint: refused before the token is sent, nothing saved.
    let wrong = format!("sha256:{}", "00".repeat(32));
    let err = run(s(&[
        "login",
        "--url",
        &hub.url,
        "--ca-fingerprint",
        &wrong,
        "--token-file",
        token_file.to_str().unwrap(),
    ]))
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("not logging in"), "{err:#}");
    assert!(!config.exists());
    let exit = run(s(&[
        "login",
        "--url",
        &hub.url,
        "--ca-fingerprint",
        &hub.fingerprint,
        "--token-file",
        token_file.to_str().unwrap(),
    ]))
    .await
    .unwrap();
    assert_eq!(exit, Exit::Success);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );

    assert_eq!(
        run(s(&[
            "token",
            "create",
            "--site",
            "lab",
            "--max-uses",
            "2",
            "--label",
            "rack=r9"
        ]))
        .await
        .unwrap(),
        Exit::Success
    );
    let (_, tokens) = hub.admin().get("/v1/tokens").await;
    assert_eq!(tokens[0]["labels"]["rack"], "r9");
    let id = tokens[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        run(s(&["--output", "json", "token", "list"]))
            .await
            .unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&["token", "revoke", &id])).await.unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&["token", "revoke", "ffffff"])).await.unwrap(),
        Exit::Failed,
        "unknown token: reported, exit 1"
    );

    let t = hub.admin().enrollment_token("lab", 1).await;
    let device = Device::new("edge-c", "SER-C", &["52:54:00:00:06:01"]);
    let reg = device.register(&hub, &t).await;
    let app = reg.appliance_id.to_string();
    assert_eq!(
        run(s(&["appliances", "list"])).await.unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&["appliances", "label", &app, "role=edge", "rack-"]))
            .await
            .unwrap(),
        Exit::Success
    );
    let (_, view) = hub.admin().get(&format!("/v1/appliances/{app}")).await;
    assert_eq!(view["labels"], json!({"role": "edge"}));
    assert_eq!(
        run(s(&[
            "appliances",
            "reinstall",
            &app,
            "--ttl-seconds",
            "600"
        ]))
        .await
        .unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&[
            "token",
            "create",
            "--site",
            "lab",
            "--mac",
            "52:54:00:00:07:01"
        ]))
        .await
        .unwrap(),
        Exit::Success
    );
    let (_, tokens) = hub.admin().get("/v1/tokens").await;
    let tokens = tokens.as_array().unwrap();
    assert!(
        tokens.iter().any(|t| t["kind"] == "reinstall"
            && t["appliance"] == app.as_str()
            && t["max_uses"] == 1),
        "{tokens:?}"
    );
    assert!(
        tokens
            .iter()
            .any(|t| t["mac"] == "52:54:00:00:07:01" && t["max_uses"] == 1),
        "{tokens:?}"
    );
    assert_eq!(
        run(s(&["vpcs", "create", "blue", "--subnet", "10.9.0.0/24"]))
            .await
            .unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&["vpcs", "attach", "blue", &app])).await.unwrap(),
        Exit::Success
    );
    let (_, vpcs) = hub.admin().get("/v1/vpcs").await;
    assert_eq!(vpcs[0]["members"], json!([app]));
    assert_eq!(
        run(s(&["vpcs", "detach", "blue", &app])).await.unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&["audit", "--since", "2000-01-01T00:00:00Z"]))
            .await
            .unwrap(),
        Exit::Success
    );
    assert!(run(s(&["audit", "--since", "yesterday"])).await.is_err());
    assert_eq!(
        run(s(&["control-planes", "list"])).await.unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&["appliances", "delete", &app])).await.unwrap(),
        Exit::Success
    );
    let (s404, _) = hub.admin().get(&format!("/v1/appliances/{app}")).await;
    assert_eq!(s404, 404);
    let (sc, body) = post(
        &device.client(&hub, &reg),
        format!("{}/v1/heartbeats", hub.url),
        &heartbeat(1, None),
    )
    .await;
    assert_eq!(
        (sc, body["error"].as_str()),
        (404, Some("appliance_unknown")),
        "a deleted appliance's certificate stops working"
    );

    // Tenants: one claims a site at creation, a second site through an enrollment token.
    assert_eq!(
        run(s(&["tenants", "create", "acme", "--site", "east"]))
            .await
            .unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&[
            "token", "create", "--site", "west", "--tenant", "acme"
        ]))
        .await
        .unwrap(),
        Exit::Success
    );
    assert_eq!(
        run(s(&["tenants", "create", "other", "--site", "east"]))
            .await
            .unwrap(),
        Exit::Failed,
        "a claimed site is refused"
    );
    assert_eq!(run(s(&["tenants", "list"])).await.unwrap(), Exit::Success);
    let (_, tenants) = hub.admin().get("/v1/tenants").await;
    assert_eq!(
        tenants,
        json!([{"name": "default", "sites": [], "created_at": null, "created_by": null},
            {"name": "acme", "sites": ["east", "west"],
             "created_at": tenants[1]["created_at"], "created_by": "operator:admin"}])
    );

    // Operator tokens: made, listed and revoked from the CLI; a revoked or expired token
    // is refused, a tenant token sees only its tenant.
    assert_eq!(
        run(s(&[
            "operators",
            "create",
            "acme-ops",
            "--role",
            "operator",
            "--tenant",
            "acme",
            "--ttl-seconds",
            "3600"
        ]))
        .await
        .unwrap(),
        Exit::Success
    );
    assert_eq!(run(s(&["operators", "list"])).await.unwrap(), Exit::Success);
    let (_, ops) = hub.admin().get("/v1/operator-tokens").await;
    let acme_ops = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "acme-ops")
        .unwrap();
    assert_eq!(acme_ops["tenant"], "acme");
    assert!(acme_ops["expires_at"].is_string());
    let (_, made) = hub
        .admin()
        .post(
            "/v1/operator-tokens",
            json!({"name": "short", "role": "viewer", "tenant": "acme"}),
        )
        .await;
    let short = hub.operator(made["token"].as_str().unwrap());
    let east = hub.admin().enrollment_token("east", 1).await;
    Device::new("edge-e", "SER-E", &["52:54:00:00:07:01"])
        .register(&hub, &east)
        .await;
    let (_, seen) = short.get("/v1/appliances").await;
    let sites: Vec<&str> = seen["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["site"].as_str().unwrap())
        .collect();
    assert_eq!(
        sites,
        ["east"],
        "a tenant token sees only its tenant's sites"
    );
    let id = made["id"].as_str().unwrap();
    assert_eq!(
        run(s(&["operators", "revoke", id])).await.unwrap(),
        Exit::Success
    );
    let (status, body) = short.get("/v1/whoami").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("this operator token was revoked"))
    );
    let (_, made) = hub
        .admin()
        .post(
            "/v1/operator-tokens",
            json!({"name": "brief", "role": "viewer", "ttl_seconds": 1}),
        )
        .await;
    let brief = hub.operator(made["token"].as_str().unwrap());
    assert_eq!(brief.get("/v1/whoami").await.0, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = brief.get("/v1/whoami").await;
    assert_eq!(
        (status, body["message"].as_str()),
        (401, Some("this operator token has expired"))
    );
}

#[tokio::test]
async fn the_last_admin_token_cannot_be_revoked_or_deleted() {
    common::the_last_admin_is_kept(&start_hub(&[])).await;
}

#[tokio::test]
async fn secret_files_are_owner_only_whatever_mode_they_had() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let mut first = start_hub(&[]);
    let data = first.data.clone();
    let secrets = ["ca.key", "server.key", "hub.redb"].map(|f| data.join(f));
    for p in &secrets {
        assert_eq!(mode(p), 0o600, "{} after init", p.display());
    }
    first.kill();
    // An older hub, a restore or a copy left them readable by all.
    for p in &secrets {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let hub = common::Hub::builder(common::hub_bin()).data(&data).start();
    for p in &secrets {
        assert_eq!(mode(p), 0o600, "{} after a restart", p.display());
    }
    assert_eq!(hub.admin().get("/v1/whoami").await.0, 200);
    // `init --admin-token-file` over an existing, wider file.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, "old").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(common::hub_bin())
        .args(["init", "--data"])
        .arg(dir.path().join("data"))
        .arg("--admin-token-file")
        .arg(&token_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&token_file), 0o600);
    assert!(
        std::fs::read_to_string(&token_file)
            .unwrap()
            .starts_with("cairn-op.")
    );
}

/// The fleet API over HTTP with the typed client: pages with cursors, selectors (a
/// malformed one named by position), counts, and watches as server-sent events, resumed
/// from a version, a too-old version answered 410; a site token watches only its site.
#[tokio::test]
async fn appliance_lists_page_count_and_watch_over_http() {
    use cairn_api::hub::{
        ApplianceQuery, CountBy, CountQuery, LabelRequest, ResumeQuery, WatchEventType, WatchQuery,
    };
    use cairn_hub_client::HubClient;
    use cairn_hub_client::tls::Trust;

    let hub = start_hub(&[]);
    let admin = hub.admin();
    let mut ids = Vec::new();
    for (site, serial) in [("north", "N1"), ("north", "N2"), ("south", "S1")] {
        let t = admin.enrollment_token(site, 1).await;
        let reg = Device::new(&format!("edge-{serial}").to_lowercase(), serial, &[])
            .register(&hub, &t)
            .await;
        ids.push(reg.appliance_id.to_string());
    }
    let client = HubClient::new(&hub.url, &Trust::CaBundle(hub.ca_pem.clone()), None)
        .unwrap()
        .with_bearer(hub.admin_token.clone());

    let first = client
        .list_appliances_page(&ApplianceQuery {
            limit: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    let second = client
        .list_appliances_page(&ApplianceQuery {
            limit: Some(2),
            cursor: first.cursor.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!((second.items.len(), second.cursor.as_deref()), (1, None));
    let all = client
        .list_appliances(&ApplianceQuery {
            limit: Some(1),
            selector: Some("site in (north)".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(all.len(), 2, "every page followed");

    let (s, body) = admin.get("/v1/appliances?selector=site%20in%20north").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("at character 9: expected '('"),
        "{message}"
    );
    let (s, body) = admin.get("/v1/appliances?continue=nonsense").await;
    assert_eq!((s, body["error"].as_str()), (400, Some("cursor_invalid")));

    let counts = client
        .count_appliances(&CountQuery {
            by: CountBy::Site,
            selector: None,
            site: None,
        })
        .await
        .unwrap();
    assert_eq!(counts.counts["north"], 2);
    assert_eq!(counts.total, 3);

    // A label change after the list's version is the watch's next event; resuming after an
    // event the watch had sent replays the one that followed.
    let mut watch = client
        .watch_appliances(&WatchQuery {
            resource_version: Some(first.resource_version),
            ..Default::default()
        })
        .await
        .unwrap();
    let label = |value: &str| LabelRequest {
        labels: [("tier".to_owned(), Some(value.to_owned()))].into(),
    };
    client
        .label_appliance(&ids[0], &label("gold"))
        .await
        .unwrap();
    let gold = watch.next().await.unwrap().unwrap();
    assert_eq!(
        (gold.kind, gold.id.as_str()),
        (WatchEventType::Modified, ids[0].as_str())
    );
    client
        .label_appliance(&ids[0], &label("silver"))
        .await
        .unwrap();
    let silver = watch.next().await.unwrap().unwrap();
    let mut one = client
        .watch_appliance(
            &ids[0],
            &ResumeQuery {
                resource_version: Some(gold.resource_version),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let replayed = one.next().await.unwrap().unwrap();
    assert_eq!(replayed.resource_version, silver.resource_version);
    assert_eq!(replayed.object.unwrap().labels["tier"], "silver");

    // The hub process keeps no history from before it opened its store.
    let too_old = client
        .watch_appliances(&WatchQuery {
            resource_version: Some(1),
            ..Default::default()
        })
        .await
        .err()
        .unwrap();
    let refusal = too_old.refusal().unwrap();
    assert_eq!(refusal.error.as_str(), "resource_version_too_old");

    // A north token's watch carries north's changes only; south's appliance is unknown to it.
    let (s, body) = admin
        .post(
            "/v1/operator-tokens",
            json!({"name": "north-watch", "role": "viewer", "site": "north"}),
        )
        .await;
    assert_eq!(s, 201, "{body}");
    let north = HubClient::new(&hub.url, &Trust::CaBundle(hub.ca_pem.clone()), None)
        .unwrap()
        .with_bearer(body["token"].as_str().unwrap().to_owned());
    let mut north_watch = north
        .watch_appliances(&WatchQuery::default())
        .await
        .unwrap();
    client
        .label_appliance(&ids[2], &label("south"))
        .await
        .unwrap();
    client
        .label_appliance(&ids[1], &label("north"))
        .await
        .unwrap();
    let seen = north_watch.next().await.unwrap().unwrap();
    assert_eq!(
        seen.id.as_str(),
        ids[1],
        "south's change never reached north"
    );
    let hidden = north
        .watch_appliance(&ids[2], &ResumeQuery::default())
        .await
        .err()
        .unwrap();
    assert_eq!(
        hidden.refusal().unwrap().error.as_str(),
        "appliance_unknown"
    );
}
