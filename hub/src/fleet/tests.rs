//! Fleet behaviour, run against both backends: the embedded store and a real etcd.

use std::sync::Arc;

use cairn_api::{DesiredState, HardwareInventory, Heartbeat, Nic, NodeStatus, RegistrationRequest};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use time::OffsetDateTime;

use cairn_api::hub::CreateEnrollmentToken;

use super::*;
use crate::store::embedded::EmbeddedStore;
use crate::store::etcd::{EtcdSettings, EtcdStore};
use crate::testutil::{Etcd, LIMIT};
use cairn_test_support::poll_async;

struct World {
    fleet: Fleet,
    admin: Caller,
    _dir: tempfile::TempDir,
}

async fn world(store: Arc<dyn Store>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let ca = crate::pki::init(dir.path(), &["localhost".into()], None).unwrap();
    let settings = FleetSettings {
        heartbeat_interval_seconds: 1,
        offline_after_missed: 1,
        ..Default::default()
    };
    let fleet = Fleet::new(store, Arc::new(ca), settings);
    let token = fleet.bootstrap_admin().await.unwrap().unwrap();
    let admin = fleet.authenticate(&token, "127.0.0.1").await.unwrap();
    World {
        fleet,
        admin,
        _dir: dir,
    }
}

fn csr(cn: &str) -> String {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params
        .serialize_request(&KeyPair::generate().unwrap())
        .unwrap()
        .pem()
        .unwrap()
}

fn request(token: &str, host: &str, serial: &str) -> RegistrationRequest {
    RegistrationRequest {
        token: token.into(),
        csr_pem: csr(host),
        hostname: host.into(),
        inventory: HardwareInventory {
            serial: serial.into(),
            nics: vec![Nic {
                mac: format!("52:54:00:{:02x}:00:01", serial.len()),
                ..Default::default()
            }],
            ..Default::default()
        },
        agent_version: "0.1.0".into(),
    }
}

fn peer(reg: &RegistrationResponse) -> PeerCert {
    let der =
        rustls::pki_types::CertificateDer::from_pem_slice(reg.certificate_pem.as_bytes()).unwrap();
    PeerCert::from_der(&der)
}

use rustls::pki_types::pem::PemObject;

fn beat(vtep: Option<&str>, seq: u64) -> Heartbeat {
    Heartbeat {
        applied_generation: 1,
        status: NodeStatus {
            agent_version: "0.1.0".into(),
            os_version: "cairn-1".into(),
            booted_slot: None,
            uptime_seconds: seq,
            load1: 0.0,
            conditions: vec![],
            counters: [("seq".to_string(), seq)].into(),
            vtep_address: vtep.map(str::to_owned),
            config: None,
            hub_link: None,
            upgrade: None,
            observed_at: OffsetDateTime::now_utc(),
        },
    }
}

/// Every behaviour below, on one backend.
async fn suite(store: Arc<dyn Store>) {
    let w = world(store).await;
    offline_and_online_are_events(&w).await;
    known_appliances_see_every_change_at_their_next_heartbeat(&w).await;
    vpc_overlays_follow_membership_and_addresses(&w).await;
    bad_vteps_stay_out_of_overlays(&w).await;
    appliances_join_only_their_tenants_vpcs(&w).await;
    the_reconciler_repairs_what_a_crash_left_stale(&w).await;
    // Last: its appliances go offline while it waits for a token to expire.
    registration_keeps_hardware_identity(&w).await;
    a_repeated_registration_gets_the_same_identity(&w).await;
    bound_tokens_register_only_their_server(&w).await;
    logs_are_kept_by_age_and_count(&w).await;
    // Last: it adds hundreds of records the checks above would have to step over.
    appliance_lists_page_filter_count_and_watch(&w).await;
}

/// Retention over what the suite wrote: by count the newest entries of each log stay, by
/// age only those written since.
async fn logs_are_kept_by_age_and_count(w: &World) {
    let with = |max_age: Duration, max_count: usize| {
        let keep = Retention { max_age, max_count };
        let settings = FleetSettings {
            audit_retention: keep,
            event_retention: keep,
            ..Default::default()
        };
        Fleet::new(w.fleet.store.clone(), w.fleet.ca.clone(), settings)
    };
    let audit = || async {
        w.fleet
            .audit_since(&w.admin, OffsetDateTime::UNIX_EPOCH, 100_000)
            .await
            .unwrap()
    };
    let events = || async {
        w.fleet
            .events_since(&w.admin, OffsetDateTime::UNIX_EPOCH, 100_000)
            .await
            .unwrap()
    };
    let (audit_before, events_before) = (audit().await, events().await);
    assert!(audit_before.len() > 5 && events_before.len() > 5);

    let deleted = with(Duration::days(1), 5).prune_logs().await.unwrap();
    assert_eq!(deleted, audit_before.len() + events_before.len() - 10);
    assert_eq!(audit().await, audit_before[audit_before.len() - 5..]);
    assert_eq!(events().await, events_before[events_before.len() - 5..]);

    let mark = OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    w.fleet
        .audit(&w.admin, "test.after", "a", "ok", None)
        .await
        .unwrap();
    w.fleet
        .audit(&w.admin, "test.after", "b", "ok", None)
        .await
        .unwrap();
    let max_age = OffsetDateTime::now_utc() - mark - Duration::milliseconds(100);
    with(max_age, 1000).prune_logs().await.unwrap();
    let kept: Vec<String> = audit().await.into_iter().map(|e| e.target).collect();
    assert_eq!(kept, ["a", "b"]);
    assert!(events().await.is_empty());
}

fn enrollment(site: &str, max_uses: u32) -> CreateEnrollmentToken {
    CreateEnrollmentToken {
        site: site.into(),
        ttl_seconds: 60,
        max_uses,
        labels: Default::default(),
        tenant: None,
        mac: None,
        serial: None,
    }
}

/// The issue's attack and the only ways known hardware re-keys: a token of any site with a
/// registered appliance's serial and MACs is refused (`hardware_known`), audited and raised
/// as an event, and the appliance keeps its site, ID and certificate; its own re-install
/// token works once, only for its hardware.
async fn registration_keeps_hardware_identity(w: &World) {
    let anon = Caller::anonymous("10.0.0.66");
    let since = OffsetDateTime::now_utc();
    let t = w
        .fleet
        .create_enrollment_token(&w.admin, enrollment("s1", 2))
        .await
        .unwrap();
    let a = w
        .fleet
        .register(&anon, request(&t.token, "h1", "SERIAL-A"))
        .await
        .unwrap();
    let a_peer = peer(&a);
    // Site B's token, site A's hardware.
    let other = w
        .fleet
        .create_enrollment_token(&w.admin, enrollment("s9", 5))
        .await
        .unwrap();
    for token in [&other.token, &t.token] {
        let err = w
            .fleet
            .register(&anon, request(token, "evil", "SERIAL-A"))
            .await
            .unwrap_err();
        assert!(matches!(err, FleetError::HardwareKnown), "{err}");
    }
    let shown = w
        .fleet
        .show_appliance(&w.admin, a.appliance_id.as_str())
        .await
        .unwrap();
    assert_eq!((shown.site.as_str(), shown.hostname.as_str()), ("s1", "h1"));
    assert_eq!(shown.rekeys, 0);
    w.fleet
        .heartbeat(Some(&a_peer), beat(None, 0))
        .await
        .expect("the real appliance keeps its certificate");
    let tokens = w.fleet.list_enrollment_tokens(&w.admin).await.unwrap();
    let uses = |id: &str| tokens.iter().find(|x| x.id == id).unwrap().uses;
    assert_eq!(
        (uses(&t.view.id), uses(&other.view.id)),
        (1, 0),
        "refusals use no token"
    );
    let audit = w.fleet.audit_since(&w.admin, since, 100).await.unwrap();
    let refused: Vec<_> = audit
        .iter()
        .filter(|e| e.result == "refused: hardware_known")
        .collect();
    assert_eq!(refused.len(), 2, "{audit:?}");
    assert_eq!(refused[0].target, a.appliance_id.as_str());
    assert_eq!(refused[0].source, "10.0.0.66");
    let events = w.fleet.events_since(&w.admin, since, 100).await.unwrap();
    let raised: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "registration_refused")
        .collect();
    assert_eq!(raised.len(), 2, "{events:?}");
    assert!(
        raised[0].message.contains(&other.view.id) && raised[0].message.contains("s9"),
        "{}",
        raised[0].message
    );

    // The re-install token: not for other hardware, once for its own, same site.
    let rt = w
        .fleet
        .create_reinstall_token(&w.admin, a.appliance_id.as_str(), 60)
        .await
        .unwrap();
    assert_eq!(rt.view.site, "s1");
    assert_eq!(rt.view.appliance.as_ref(), Some(&a.appliance_id));
    let err = w
        .fleet
        .register(&anon, request(&rt.token, "h2", "SERIAL-B"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::TokenRefused(TokenRefusal::Mismatch)),
        "{err}"
    );
    let b = w
        .fleet
        .register(&anon, request(&rt.token, "h1", "SERIAL-A"))
        .await
        .unwrap();
    assert_eq!(a.appliance_id, b.appliance_id);
    assert_eq!(b.site, "s1");
    let err = w
        .fleet
        .register(&anon, request(&rt.token, "h1", "SERIAL-A"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::TokenRefused(TokenRefusal::UsedUp)),
        "{err}"
    );
    // The re-install replaced the first certificate.
    let err = w
        .fleet
        .heartbeat(Some(&a_peer), beat(None, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::CertificateSuperseded));
    w.fleet
        .heartbeat(Some(&peer(&b)), beat(None, 0))
        .await
        .unwrap();
    let list = list_site(w, "s1").await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].rekeys, 1);

    // Another appliance's re-install token does not open this one.
    let c = w
        .fleet
        .register(&anon, request(&t.token, "h3", "SERIAL-C"))
        .await
        .unwrap();
    let rt_c = w
        .fleet
        .create_reinstall_token(&w.admin, c.appliance_id.as_str(), 60)
        .await
        .unwrap();
    let err = w
        .fleet
        .register(&anon, request(&rt_c.token, "h1", "SERIAL-A"))
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::HardwareKnown), "{err}");

    // Re-install tokens expire.
    let short = w
        .fleet
        .create_reinstall_token(&w.admin, a.appliance_id.as_str(), 1)
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = w
        .fleet
        .register(&anon, request(&short.token, "h1", "SERIAL-A"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::TokenRefused(TokenRefusal::Expired)),
        "{err}"
    );
}

/// SHA-256 of the public key a PEM certificate carries, as the hub hashes a CSR's.
fn cert_key_sha256(pem: &str) -> String {
    use sha2::Digest;
    let der = rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    hex::encode(sha2::Sha256::digest(cert.public_key().raw))
}

/// Issue 22: a registration whose answer was lost is sent again, same token and CSR. It
/// gets the same appliance and a certificate for the same key, without a second use and
/// audited as a retry; the same token with another key is still refused, known hardware
/// still is, and the window closes with a renewal, a revocation or the token's expiry.
async fn a_repeated_registration_gets_the_same_identity(w: &World) {
    let anon = Caller::anonymous("10.0.0.22");
    let since = OffsetDateTime::now_utc();
    let t = w
        .fleet
        .create_enrollment_token(&w.admin, enrollment("s22", 1))
        .await
        .unwrap();
    let first_req = request(&t.token, "r1", "SERIAL-R1");
    let lost = w.fleet.register(&anon, first_req.clone()).await.unwrap();
    let again = w.fleet.register(&anon, first_req.clone()).await.unwrap();
    assert_eq!(again.appliance_id, lost.appliance_id);
    assert_eq!(again.site, "s22");
    let key = crate::pki::csr_key_sha256(&first_req.csr_pem).unwrap();
    assert_eq!(cert_key_sha256(&again.certificate_pem), key, "the same key");
    // The answer that was lost never reached the appliance: its certificate is replaced.
    w.fleet
        .heartbeat(Some(&peer(&again)), beat(None, 0))
        .await
        .expect("the repeated answer's certificate works");
    let err = w
        .fleet
        .heartbeat(Some(&peer(&lost)), beat(None, 0))
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::CertificateSuperseded), "{err}");
    let tokens = w.fleet.list_enrollment_tokens(&w.admin).await.unwrap();
    let uses = |id: &str| tokens.iter().find(|x| x.id == id).unwrap().uses;
    assert_eq!(uses(&t.view.id), 1, "a repeat is not a second use");
    let list = list_site(w, "s22").await;
    assert_eq!(list.len(), 1, "{list:?}");
    let audit = w.fleet.audit_since(&w.admin, since, 100).await.unwrap();
    let retries: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "appliance.register-retry")
        .collect();
    assert_eq!(retries.len(), 1, "{audit:?}");
    assert_eq!(retries[0].target, lost.appliance_id.as_str());
    assert!(retries[0].result.starts_with("ok"), "{:?}", retries[0]);

    // The used token with another key is refused as before, on the same hardware too.
    for (host, serial) in [("r1", "SERIAL-R1"), ("r9", "SERIAL-R9")] {
        let err = w
            .fleet
            .register(&anon, request(&t.token, host, serial))
            .await
            .unwrap_err();
        assert!(
            matches!(err, FleetError::TokenRefused(TokenRefusal::UsedUp)),
            "{host}: {err}"
        );
    }
    // A token with uses left: the repeat still takes none, and another key on the known
    // hardware is still `hardware_known`.
    let multi = w
        .fleet
        .create_enrollment_token(&w.admin, enrollment("s22", 3))
        .await
        .unwrap();
    let m_req = request(&multi.token, "r2", "SERIAL-R2");
    let m1 = w.fleet.register(&anon, m_req.clone()).await.unwrap();
    let m2 = w.fleet.register(&anon, m_req.clone()).await.unwrap();
    assert_eq!(m1.appliance_id, m2.appliance_id);
    let err = w
        .fleet
        .register(&anon, request(&multi.token, "r2", "SERIAL-R2"))
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::HardwareKnown), "{err}");
    let tokens = w.fleet.list_enrollment_tokens(&w.admin).await.unwrap();
    assert_eq!(
        tokens.iter().find(|x| x.id == multi.view.id).unwrap().uses,
        1
    );

    // Once the appliance renewed its certificate, the window is closed.
    let renewed = w
        .fleet
        .renew(&anon, Some(&peer(&m2)), &csr(m2.appliance_id.as_str()))
        .await
        .unwrap();
    assert!(!renewed.certificate_pem.is_empty());
    let err = w.fleet.register(&anon, m_req).await.unwrap_err();
    assert!(matches!(err, FleetError::HardwareKnown), "{err}");

    // A revoked token answers no repeat.
    w.fleet
        .revoke_enrollment_token(&w.admin, &t.view.id)
        .await
        .unwrap();
    let err = w.fleet.register(&anon, first_req).await.unwrap_err();
    assert!(
        matches!(err, FleetError::TokenRefused(TokenRefusal::Revoked)),
        "{err}"
    );
    // Nor does an expired one: the token's TTL bounds the window.
    let mut short = enrollment("s22", 1);
    short.ttl_seconds = 1;
    let short = w
        .fleet
        .create_enrollment_token(&w.admin, short)
        .await
        .unwrap();
    let s_req = request(&short.token, "r3", "SERIAL-R3");
    w.fleet.register(&anon, s_req.clone()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let err = w.fleet.register(&anon, s_req).await.unwrap_err();
    assert!(
        matches!(err, FleetError::TokenRefused(TokenRefusal::Expired)),
        "{err}"
    );
}

/// A per-server token is bound to its boot MAC (and serial): another server registering
/// with it is refused and the token stays unused for its own server.
async fn bound_tokens_register_only_their_server(w: &World) {
    let anon = Caller::anonymous("127.0.0.1");
    let mut bad = enrollment("s3", 2);
    bad.mac = Some("52:54:00:aa:bb:01".into());
    let err = w
        .fleet
        .create_enrollment_token(&w.admin, bad)
        .await
        .unwrap_err();
    assert!(
        matches!(err, FleetError::Invalid(_)),
        "bound tokens are single-use: {err}"
    );
    let mut req = enrollment("s3", 1);
    req.mac = Some("52:54:00:AA:BB:01".into());
    req.serial = Some("SRV-1".into());
    let t = w
        .fleet
        .create_enrollment_token(&w.admin, req)
        .await
        .unwrap();
    assert_eq!(t.view.mac.as_deref(), Some("52:54:00:aa:bb:01"));
    let with = |mac: &str, serial: &str| {
        let mut r = request(&t.token, "srv", serial);
        r.inventory.nics = vec![Nic {
            mac: mac.into(),
            ..Default::default()
        }];
        r
    };
    for (mac, serial) in [
        ("52:54:00:aa:bb:02", "SRV-1"),
        ("52:54:00:aa:bb:01", "SRV-2"),
    ] {
        let err = w
            .fleet
            .register(&anon, with(mac, serial))
            .await
            .unwrap_err();
        assert!(
            matches!(err, FleetError::TokenRefused(TokenRefusal::Mismatch)),
            "{mac} {serial}: {err}"
        );
    }
    let ok = w
        .fleet
        .register(&anon, with("52:54:00:AA:BB:01", "SRV-1"))
        .await
        .unwrap();
    assert_eq!(ok.site, "s3");
}

/// The first page of a site's appliances.
async fn list_site(w: &World, site: &str) -> Vec<ApplianceView> {
    let filter = ApplianceFilter {
        site: Some(site.into()),
        ..Default::default()
    };
    let page = w
        .fleet
        .list_appliance_page(&w.admin, &filter, 1000, None)
        .await
        .unwrap();
    assert_eq!(page.cursor, None);
    page.items
}

async fn register_many(w: &World, site: &str, n: usize) -> Vec<(RegistrationResponse, PeerCert)> {
    let t = w
        .fleet
        .create_enrollment_token(&w.admin, enrollment(site, n as u32))
        .await
        .unwrap();
    let mut out = Vec::new();
    for i in 0..n {
        let reg = w
            .fleet
            .register(
                &Caller::anonymous("127.0.0.1"),
                request(&t.token, &format!("{site}-{i}"), &format!("{site}-SER-{i}")),
            )
            .await
            .unwrap();
        let p = peer(&reg);
        out.push((reg, p));
    }
    out
}

async fn offline_and_online_are_events(w: &World) {
    let since = OffsetDateTime::now_utc();
    let apps = register_many(w, "s2", 1).await;
    let (reg, p) = &apps[0];
    w.fleet.heartbeat(Some(p), beat(None, 1)).await.unwrap();
    assert_eq!(w.fleet.sweep_offline().await.unwrap(), 0, "fresh heartbeat");
    poll_async("offline", LIMIT, || async {
        w.fleet.sweep_offline().await.unwrap();
        let state = w
            .fleet
            .show_appliance(&w.admin, reg.appliance_id.as_str())
            .await
            .unwrap()
            .state;
        (state == cairn_api::hub::ApplianceState::Offline).then_some(())
    })
    .await;
    assert_eq!(
        w.fleet.sweep_offline().await.unwrap(),
        0,
        "one transition, one event"
    );
    w.fleet.heartbeat(Some(p), beat(None, 2)).await.unwrap();
    let events = w.fleet.events_since(&w.admin, since, 100).await.unwrap();
    let kinds: Vec<&str> = events
        .iter()
        .filter(|e| e.appliance == reg.appliance_id)
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(kinds, ["registered", "online", "offline", "online"]);
}

/// The heartbeats of an appliance this hub already served skip the reads (one conditional
/// write): they still record each status, see a renewal, a label and a deletion at once.
async fn known_appliances_see_every_change_at_their_next_heartbeat(w: &World) {
    let anon = Caller::anonymous("127.0.0.1");
    let apps = register_many(w, "s9", 1).await;
    let (reg, first) = &apps[0];
    let id = reg.appliance_id.as_str();
    let seq = |view: ApplianceView| view.status.unwrap().status.counters["seq"];
    for n in 1..=3 {
        w.fleet.heartbeat(Some(first), beat(None, n)).await.unwrap();
        assert_eq!(seq(w.fleet.show_appliance(&w.admin, id).await.unwrap()), n);
    }
    w.fleet
        .label_appliance(&w.admin, id, [("rack".into(), Some("r1".into()))].into())
        .await
        .unwrap();
    let renewed = w.fleet.renew(&anon, Some(first), &csr(id)).await.unwrap();
    let der = rustls::pki_types::CertificateDer::from_pem_slice(renewed.certificate_pem.as_bytes())
        .unwrap();
    let second = PeerCert::from_der(&der);
    // Until the new certificate is first seen the old one still works.
    w.fleet.heartbeat(Some(first), beat(None, 4)).await.unwrap();
    w.fleet
        .heartbeat(Some(&second), beat(None, 5))
        .await
        .unwrap();
    let err = w
        .fleet
        .heartbeat(Some(first), beat(None, 6))
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::CertificateSuperseded), "{err}");
    assert_eq!(seq(w.fleet.show_appliance(&w.admin, id).await.unwrap()), 5);
    w.fleet.delete_appliance(&w.admin, id).await.unwrap();
    let err = w
        .fleet
        .heartbeat(Some(&second), beat(None, 7))
        .await
        .unwrap_err();
    assert!(matches!(err, FleetError::NotFound { .. }), "{err}");
}

/// What the hub wants of the appliance holding `peer` once it has beaten with `vtep`.
async fn desired_after_beat(w: &World, peer: &PeerCert, vtep: Option<&str>) -> DesiredState {
    w.fleet
        .heartbeat(Some(peer), beat(vtep, 0))
        .await
        .unwrap()
        .desired
}

async fn vpc_overlays_follow_membership_and_addresses(w: &World) {
    let blue = w
        .fleet
        .create_vpc(&w.admin, "blue", "10.10.0.0/24", None)
        .await
        .unwrap();
    let red = w
        .fleet
        .create_vpc(&w.admin, "red", "10.20.0.0/24", None)
        .await
        .unwrap();
    assert_ne!(blue.vni, red.vni, "VNIs are unique");
    assert!(matches!(
        w.fleet
            .create_vpc(&w.admin, "blue", "10.30.0.0/24", None)
            .await,
        Err(FleetError::Conflict(_))
    ));
    assert!(matches!(
        w.fleet
            .create_vpc(&w.admin, "bad", "10.30.0.1/24", None)
            .await,
        Err(FleetError::Invalid(_))
    ));

    let apps = register_many(w, "s3", 3).await;
    for (i, (_, p)) in apps.iter().enumerate() {
        w.fleet
            .heartbeat(Some(p), beat(Some(&format!("192.0.2.{}", i + 1)), 0))
            .await
            .unwrap();
    }
    for (reg, _) in &apps[..2] {
        w.fleet
            .attach(&w.admin, "blue", reg.appliance_id.as_str())
            .await
            .unwrap();
    }
    let (_, p0) = &apps[0];
    let d0 = desired_after_beat(w, p0, Some("192.0.2.1")).await;
    let overlay = d0.overlay.clone().unwrap();
    assert_eq!(overlay.local_vtep, "192.0.2.1");
    assert_eq!(overlay.vpcs.len(), 1);
    assert_eq!(overlay.vpcs[0].vni, blue.vni);
    assert_eq!(overlay.vpcs[0].gateway, "10.10.0.1/24");
    assert_eq!(overlay.vpcs[0].peer_vteps, ["192.0.2.2"]);

    // A third member appears in the others' peer lists, with a new generation.
    w.fleet
        .attach(&w.admin, "blue", apps[2].0.appliance_id.as_str())
        .await
        .unwrap();
    let d1 = desired_after_beat(w, p0, Some("192.0.2.1")).await;
    assert!(d1.generation > d0.generation);
    assert_eq!(
        d1.overlay.as_ref().unwrap().vpcs[0].peer_vteps,
        ["192.0.2.2", "192.0.2.3"]
    );
    // A peer reports a new address: everyone's overlay follows.
    desired_after_beat(w, &apps[1].1, Some("192.0.2.22")).await;
    let d2 = desired_after_beat(w, p0, Some("192.0.2.1")).await;
    assert!(d2.generation > d1.generation);
    assert_eq!(
        d2.overlay.as_ref().unwrap().vpcs[0].peer_vteps,
        ["192.0.2.22", "192.0.2.3"]
    );
    // Unchanged inputs keep the generation.
    let d3 = desired_after_beat(w, p0, Some("192.0.2.1")).await;
    assert_eq!(d3.generation, d2.generation);
    // Detach: gone from the peers, and the detached one has no overlay.
    w.fleet
        .detach(&w.admin, "blue", apps[2].0.appliance_id.as_str())
        .await
        .unwrap();
    let d4 = desired_after_beat(w, p0, Some("192.0.2.1")).await;
    assert_eq!(
        d4.overlay.as_ref().unwrap().vpcs[0].peer_vteps,
        ["192.0.2.22"]
    );
    let d5 = desired_after_beat(w, &apps[2].1, Some("192.0.2.3")).await;
    assert_eq!(d5.overlay, None);
    // A peer whose VTEP setting was removed drops out of the others' peer lists.
    desired_after_beat(w, &apps[1].1, None).await;
    let d6 = desired_after_beat(w, p0, Some("192.0.2.1")).await;
    assert!(d6.generation > d4.generation);
    assert!(
        d6.overlay.as_ref().unwrap().vpcs[0].peer_vteps.is_empty(),
        "{d6:?}"
    );
}

/// A VTEP address that is not unicast, or that another member of the VPC has, is refused
/// and kept out of every overlay; a valid one later is taken.
async fn bad_vteps_stay_out_of_overlays(w: &World) {
    w.fleet
        .create_vpc(&w.admin, "amber", "10.40.0.0/24", None)
        .await
        .unwrap();
    let apps = register_many(w, "s4", 2).await;
    for (reg, _) in &apps {
        w.fleet
            .attach(&w.admin, "amber", reg.appliance_id.as_str())
            .await
            .unwrap();
    }
    let (p0, p1) = (&apps[0].1, &apps[1].1);
    let id1 = apps[1].0.appliance_id.clone();
    desired_after_beat(w, p0, Some("198.51.100.1")).await;
    for (bad, why) in [
        ("127.0.0.1", "loopback"),
        ("239.1.1.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("not-an-address", "not an IP address"),
        ("198.51.100.1", "same address"),
    ] {
        desired_after_beat(w, p1, Some(bad)).await;
        let view = w
            .fleet
            .show_appliance(&w.admin, id1.as_str())
            .await
            .unwrap();
        let (addr, reason) = view.vtep_refused.clone().expect("refused");
        assert_eq!(addr, bad);
        assert!(reason.contains(why), "{bad}: {reason}");
        assert_eq!(view.vtep_address, None);
        let d0 = desired_after_beat(w, p0, Some("198.51.100.1")).await;
        assert!(
            d0.overlay.unwrap().vpcs[0].peer_vteps.is_empty(),
            "{bad} reached a peer's overlay"
        );
    }
    let refusals = w
        .fleet
        .events_since(&w.admin, OffsetDateTime::UNIX_EPOCH, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.appliance == id1 && e.kind == "vtep-refused")
        .count();
    assert_eq!(refusals, 5, "one event per refusal, not per heartbeat");
    desired_after_beat(w, p1, Some("198.51.100.2")).await;
    let view = w
        .fleet
        .show_appliance(&w.admin, id1.as_str())
        .await
        .unwrap();
    assert_eq!(view.vtep_refused, None);
    let d0 = desired_after_beat(w, p0, Some("198.51.100.1")).await;
    assert_eq!(d0.overlay.unwrap().vpcs[0].peer_vteps, ["198.51.100.2"]);
}

/// The appliance records, each with its version: what a pass that writes nothing leaves as
/// it was.
async fn appliance_versions(w: &World) -> Vec<(String, u64)> {
    w.fleet
        .list_raw(keys::APPLIANCES)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.version))
        .collect()
}

/// Writes an appliance record alone, as the first of a change's two transactions does
/// before a crash keeps the second (the rewrite of the desired states) from running.
async fn write_primary_alone(w: &World, id: &ApplianceId, change: impl FnOnce(&mut Appliance)) {
    let key = format!("{}{id}", keys::APPLIANCES);
    let mut a = w.fleet.record(id).await.unwrap();
    change(&mut a);
    assert!(
        w.fleet
            .store()
            .txn(vec![], vec![Op::put(&key, encode(&a))])
            .await
            .unwrap()
    );
}

/// One reconciler pass, run as the leader runs it: through the leadership's fence.
async fn reconcile(w: &World) -> Vec<Repair> {
    let fence = w
        .fleet
        .store()
        .lead()
        .await
        .unwrap()
        .expect("the only hub leads");
    w.fleet.as_leader(fence).reconcile().await.unwrap()
}

/// Each torn state a crash between a primary change and the rewrite of the desired states
/// derived from it leaves (a VTEP change, a membership change, a join) is repaired by one
/// reconciler pass, with a new generation the node picks up and an event; over a
/// consistent store a pass writes nothing.
async fn the_reconciler_repairs_what_a_crash_left_stale(w: &World) {
    w.fleet
        .create_vpc(&w.admin, "green", "10.60.0.0/24", None)
        .await
        .unwrap();
    let apps = register_many(w, "s9", 3).await;
    let ids: Vec<ApplianceId> = apps.iter().map(|(r, _)| r.appliance_id.clone()).collect();
    for (i, (_, p)) in apps.iter().enumerate() {
        desired_after_beat(w, p, Some(&format!("198.18.0.{}", i + 1))).await;
    }
    for id in &ids[..2] {
        w.fleet
            .attach(&w.admin, "green", id.as_str())
            .await
            .unwrap();
    }
    let before = appliance_versions(w).await;
    assert_eq!(
        reconcile(w).await,
        [],
        "everything the suite did is consistent"
    );
    assert_eq!(
        appliance_versions(w).await,
        before,
        "a pass over consistent state writes nothing"
    );

    // A VTEP change whose peers' rewrite never ran.
    let d0 = desired_after_beat(w, &apps[0].1, Some("198.18.0.1")).await;
    assert_eq!(
        d0.overlay.as_ref().unwrap().vpcs[0].peer_vteps,
        ["198.18.0.2"]
    );
    write_primary_alone(w, &ids[1], |a| a.vtep_address = Some("198.18.0.22".into())).await;
    let stale = desired_after_beat(w, &apps[0].1, Some("198.18.0.1")).await;
    assert_eq!(
        stale, d0,
        "torn: the peer's overlay still names the old address"
    );
    let repairs = reconcile(w).await;
    // In key order, and the IDs are random: compared as a set.
    let repaired: BTreeSet<(&str, &[&str])> = repairs
        .iter()
        .map(|r| (r.appliance.as_str(), r.parts.as_slice()))
        .collect();
    assert_eq!(
        repaired,
        BTreeSet::from([
            (ids[0].as_str(), &["overlay"][..]),
            (ids[1].as_str(), &["overlay"][..])
        ]),
        "the peer's list and the changed appliance's own local address"
    );
    let d1 = desired_after_beat(w, &apps[0].1, Some("198.18.0.1")).await;
    assert_eq!(
        d1.overlay.as_ref().unwrap().vpcs[0].peer_vteps,
        ["198.18.0.22"]
    );
    assert_eq!(
        d1.generation,
        d0.generation + 1,
        "a new generation: the node applies it"
    );

    // A membership change whose members' rewrite never ran.
    w.fleet
        .store()
        .txn(vec![], {
            let (_, mut vpc) = w.fleet.get::<Vpc>("vpcs/green").await.unwrap().unwrap();
            vpc.members.insert(ids[2].clone());
            let mut c = w.fleet.record(&ids[2]).await.unwrap();
            c.vpcs.insert("green".into());
            vec![
                Op::put("vpcs/green", encode(&vpc)),
                Op::put(format!("{}{}", keys::APPLIANCES, ids[2]), encode(&c)),
            ]
        })
        .await
        .unwrap();
    assert_eq!(
        desired_after_beat(w, &apps[2].1, Some("198.18.0.3"))
            .await
            .overlay,
        None
    );
    assert_eq!(reconcile(w).await.len(), 3, "every member's overlay");
    let d2 = desired_after_beat(w, &apps[0].1, Some("198.18.0.1")).await;
    assert_eq!(
        d2.overlay.as_ref().unwrap().vpcs[0].peer_vteps,
        ["198.18.0.22", "198.18.0.3"]
    );
    let d3 = desired_after_beat(w, &apps[2].1, Some("198.18.0.3")).await;
    assert_eq!(
        d3.overlay.as_ref().unwrap().vpcs[0].peer_vteps,
        ["198.18.0.1", "198.18.0.22"]
    );

    // A join bundle stored whose desired state was never rewritten.
    let bundle = cairn_api::JoinBundle {
        control_plane: "cp-green".into(),
        api_server_url: "https://192.0.2.50:6443".into(),
        ca_bundle_pem: String::new(),
        bootstrap_token: "abcdef.0123456789abcdef".into(),
        revision: 1,
    };
    write_primary_alone(w, &ids[1], |a| a.join = Some(bundle.clone())).await;
    let repairs = reconcile(w).await;
    assert_eq!(repairs.len(), 1);
    assert_eq!(
        (&repairs[0].appliance, repairs[0].parts.as_slice()),
        (&ids[1], &["join"][..])
    );
    let d4 = desired_after_beat(w, &apps[1].1, Some("198.18.0.22")).await;
    assert_eq!(d4.join, Some(bundle));

    // Every repair is an event; and now the store is consistent again.
    let events = w
        .fleet
        .events_since(&w.admin, OffsetDateTime::UNIX_EPOCH, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.kind == "desired-state-repaired")
        .count();
    assert_eq!(events, 2 + 3 + 1);
    let before = appliance_versions(w).await;
    assert_eq!(reconcile(w).await, []);
    assert_eq!(appliance_versions(w).await, before);
}

/// Even a fleet-wide operator cannot attach an appliance to another tenant's VPC.
async fn appliances_join_only_their_tenants_vpcs(w: &World) {
    w.fleet
        .create_tenant(&w.admin, "t2", &["s5".to_owned()].into())
        .await
        .unwrap();
    w.fleet
        .create_vpc(&w.admin, "t2-net", "10.50.0.0/24", Some("t2"))
        .await
        .unwrap();
    let apps = register_many(w, "s5", 1).await;
    let id = apps[0].0.appliance_id.as_str();
    assert!(matches!(
        w.fleet.attach(&w.admin, "amber", id).await,
        Err(FleetError::Forbidden(_))
    ));
    let vpc = w.fleet.attach(&w.admin, "t2-net", id).await.unwrap();
    assert_eq!(vpc.tenant, "t2");
    assert!(vpc.members.iter().any(|m| m.as_str() == id));

    // A control plane of t2 takes only t2's sites, whoever assigns it.
    w.fleet
        .add_control_plane(
            &w.admin,
            ControlPlane {
                name: "t2-cp".into(),
                api_server_url: "https://127.0.0.1:1".into(),
                ca_bundle_pem: w.fleet.ca().cert_pem.clone(),
                credentials_ref: "/nonexistent".into(),
                site: None,
                labels: Default::default(),
                tenant: "t2".into(),
            },
        )
        .await
        .unwrap();
    assert!(matches!(
        w.fleet
            .assign(&w.admin, "t2-cp", Some("s3".into()), Default::default())
            .await,
        Err(FleetError::Forbidden(_))
    ));
    let result = w
        .fleet
        .assign(&w.admin, "t2-cp", Some("s5".into()), Default::default())
        .await
        .unwrap();
    assert_eq!(
        result.failed.len(),
        1,
        "the s5 appliance, and no other, is joined"
    );
}

#[tokio::test]
async fn embedded_backend_passes_the_fleet_suite() {
    let dir = tempfile::tempdir().unwrap();
    suite(Arc::new(
        EmbeddedStore::open(&dir.path().join("hub.redb")).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn etcd_backend_passes_the_fleet_suite() {
    let etcd = Etcd::start(1).await;
    let store = EtcdStore::connect(
        &etcd.endpoints(),
        &EtcdSettings::new("/fleet/", "t", std::time::Duration::from_secs(3)),
    )
    .await
    .unwrap();
    suite(Arc::new(store)).await;
}

/// A 3-member etcd cluster loses a member in the middle of a heartbeat load: every
/// heartbeat the hub acknowledged is in the store afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_heartbeat_is_lost_when_an_etcd_member_dies() {
    let mut etcd = Etcd::start(3).await;
    let store = EtcdStore::connect(
        &etcd.endpoints(),
        &EtcdSettings::new("/kill/", "t", std::time::Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let w = Arc::new(world(Arc::new(store)).await);
    let apps = register_many(&w, "k", 8).await;
    let acked: Arc<std::sync::Mutex<Vec<u64>>> =
        Arc::new(std::sync::Mutex::new(vec![0; apps.len()]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (_, p)) in apps.iter().enumerate() {
        let (w, p, acked, stop) = (w.clone(), p.clone(), acked.clone(), stop.clone());
        tasks.spawn(async move {
            let mut seq = 0;
            let mut failures = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seq += 1;
                match w.fleet.heartbeat(Some(&p), beat(None, seq)).await {
                    Ok(_) => acked.lock().unwrap()[i] = seq,
                    // Refused while the cluster re-forms: not acknowledged, so no promise made.
                    Err(_) => failures += 1,
                }
            }
            failures
        });
    }
    let total = || acked.lock().unwrap().iter().sum::<u64>();
    poll_async("load running", LIMIT, || async {
        (total() > 200).then_some(())
    })
    .await;
    // Kill the member the client most likely talks to, mid-load.
    etcd.kill(0);
    let after_kill = total();
    poll_async("load continues on the survivors", LIMIT, || async {
        (total() > after_kill + 200).then_some(())
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    // Read back through a fresh client on the survivors only.
    let survivors = EtcdStore::connect(
        &etcd.endpoints(),
        &EtcdSettings::new("/kill/", "r", std::time::Duration::from_secs(3)),
    )
    .await
    .unwrap();
    let acked = acked.lock().unwrap().clone();
    for ((reg, _), want) in apps.iter().zip(acked) {
        let raw = survivors
            .get(&format!("{}{}", keys::STATUS, reg.appliance_id))
            .await
            .unwrap()
            .unwrap();
        let status: Status = serde_json::from_slice(&raw.value).unwrap();
        let stored = status.status.counters["seq"];
        assert!(
            stored >= want,
            "{}: acknowledged seq {want}, store has {stored}",
            reg.appliance_id
        );
    }
}

/// An appliance to seed: ID, site, labels.
type Seeded<'a> = (String, &'a str, Vec<(&'a str, &'a str)>);

/// Writes copies of `template` as appliances `ids`, each with its site and labels, straight
/// to the store (as many as a transaction holds at a time).
async fn seed(w: &World, template: &Appliance, records: &[Seeded<'_>]) {
    for chunk in records.chunks(crate::store::MAX_TXN_OPS) {
        let ops = chunk
            .iter()
            .map(|(id, site, labels)| {
                let mut a = template.clone();
                a.id = ApplianceId::new(id.as_str()).unwrap();
                a.site = (*site).to_owned();
                a.labels = labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect();
                Op::put(format!("{}{id}", keys::APPLIANCES), encode(&a))
            })
            .collect();
        assert!(w.fleet.store().txn(vec![], ops).await.unwrap());
    }
}

fn filter(site: Option<&str>, selector: &str) -> ApplianceFilter {
    ApplianceFilter {
        site: site.map(str::to_owned),
        selector: selector.parse().unwrap(),
        ..Default::default()
    }
}

/// The next event of a watch, failing the test when none comes in time.
async fn next_event(events: &mut WatchEvents) -> cairn_api::hub::WatchEvent {
    tokio::time::timeout(LIMIT, events.recv())
        .await
        .expect("an event within the limit")
        .expect("the watch goes on")
        .expect("no watch error")
}

async fn appliance_lists_page_filter_count_and_watch(w: &World) {
    use cairn_api::hub::{ApplianceState, CountBy, WatchEventType as E};
    let pa = register_many(w, "pa", 1).await;
    let pb = register_many(w, "pb", 1).await;
    let template = w.fleet.record(&pa[0].0.appliance_id).await.unwrap();
    // 300 records: even numbers, so records can be added between any two later.
    let role = |i: usize| if i.is_multiple_of(3) { "edge" } else { "core" };
    let records: Vec<Seeded<'_>> = (0..300)
        .map(|i| {
            let mut labels = vec![("role", role(i))];
            if i.is_multiple_of(10) {
                labels.push(("hold", "yes"));
            }
            let site = if i.is_multiple_of(2) { "pa" } else { "pb" };
            (format!("pg-{:04}", 2 * i), site, labels)
        })
        .collect();
    seed(w, &template, &records).await;
    let seeded: Vec<&str> = records.iter().map(|(id, _, _)| id.as_str()).collect();

    // Paging while records are added on both sides of the cursor: every record there from
    // the start is listed exactly once, in order; none twice.
    let only_pg = filter(None, "!cairn-test-none");
    let mut listed: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut added = 0;
    loop {
        let page = w
            .fleet
            .list_appliance_page(&w.admin, &only_pg, 37, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 37);
        listed.extend(page.items.iter().map(|a| a.id.to_string()));
        let Some(next) = page.cursor else { break };
        // One record before the cursor (not listed any more), one after (listed).
        let last: usize = listed.last().unwrap()[3..].parse().unwrap();
        let inserted = [
            (
                format!("pg-{:04}", last.saturating_sub(1) | 1),
                "pa",
                vec![],
            ),
            (format!("pg-{:04}", last + 1), "pa", vec![]),
        ];
        seed(w, &template, &inserted).await;
        added += 1;
        cursor = Some(next);
    }
    assert!(added >= 8, "several pages: {added}");
    assert!(
        listed.windows(2).all(|p| p[0] < p[1]),
        "in ID order, none twice"
    );
    for id in &seeded {
        assert_eq!(
            listed.iter().filter(|l| l == id).count(),
            1,
            "{id} listed once"
        );
    }
    let bad = w
        .fleet
        .list_appliance_page(&w.admin, &only_pg, 10, Some("zz"))
        .await;
    assert!(matches!(bad, Err(FleetError::BadCursor)), "{bad:?}");

    // Selectors with Kubernetes semantics, site and state filters, and counts agree.
    let edge_free = filter(Some("pa"), "role in (edge),!hold");
    let want: Vec<&str> = records
        .iter()
        .enumerate()
        .filter(|(i, (_, site, _))| *site == "pa" && role(*i) == "edge" && i % 10 != 0)
        .map(|(_, (id, _, _))| id.as_str())
        .collect();
    let page = w
        .fleet
        .list_appliance_page(&w.admin, &edge_free, 1000, None)
        .await
        .unwrap();
    let got: Vec<String> = page.items.iter().map(|a| a.id.to_string()).collect();
    assert_eq!(got, want);
    let counts = w
        .fleet
        .count_appliances(
            &w.admin,
            &filter(None, "role notin (core),role,site=pa,!hold"),
            CountBy::Site,
        )
        .await
        .unwrap();
    assert_eq!(counts.total, want.len() as u64);
    assert_eq!(counts.counts.get("pa"), Some(&(want.len() as u64)));
    let by_state = w
        .fleet
        .count_appliances(&w.admin, &filter(Some("pa"), ""), CountBy::State)
        .await
        .unwrap();
    assert_eq!(by_state.counts["online"] + by_state.counts["offline"], 0);
    assert_eq!(by_state.counts["registered"], by_state.total);
    let registered = ApplianceFilter {
        state: Some(ApplianceState::Online),
        ..filter(Some("pa"), "")
    };
    let none_online = w
        .fleet
        .list_appliance_page(&w.admin, &registered, 10, None)
        .await
        .unwrap();
    assert!(none_online.items.is_empty());

    // A token of site pa sees only pa, in lists and in counts.
    let scoped = w
        .fleet
        .create_operator_token(
            &w.admin,
            &CreateOperatorToken {
                name: "pa-viewer".into(),
                role: Role::Viewer,
                site: Some("pa".into()),
                tenant: None,
                ttl_seconds: None,
            },
        )
        .await
        .unwrap();
    let pa_viewer = w
        .fleet
        .authenticate(&scoped.token, "127.0.0.1")
        .await
        .unwrap();
    let everything = filter(None, "");
    let seen = w
        .fleet
        .list_appliance_page(&pa_viewer, &everything, 1000, None)
        .await
        .unwrap();
    assert!(!seen.items.is_empty());
    assert!(seen.items.iter().all(|a| a.site == "pa"));
    let other = w
        .fleet
        .list_appliance_page(&pa_viewer, &filter(Some("pb"), ""), 1000, None)
        .await
        .unwrap();
    assert!(
        other.items.is_empty(),
        "another site's appliances stay unseen"
    );
    let counts = w
        .fleet
        .count_appliances(&pa_viewer, &everything, CountBy::Site)
        .await
        .unwrap();
    assert_eq!(counts.counts.keys().collect::<Vec<_>>(), vec!["pa"]);

    // Watch from a list's version: a heartbeat that changes the state is an event, one
    // that changes only the clock and counters is not; label changes are; a selector's
    // watch sees an appliance leave it as DELETED; a new record is ADDED.
    let (reg, peer_pa) = &pa[0];
    let id = reg.appliance_id.to_string();
    let from = w
        .fleet
        .list_appliance_page(&w.admin, &everything, 1, None)
        .await
        .unwrap()
        .resource_version;
    let mut all = w
        .fleet
        .watch_appliances(&w.admin, everything.clone(), Some(from))
        .await
        .unwrap();
    let mut edges = w
        .fleet
        .watch_appliances(&w.admin, filter(None, "role=edge"), Some(from))
        .await
        .unwrap();
    w.fleet
        .heartbeat(Some(peer_pa), beat(None, 1))
        .await
        .unwrap();
    let online = next_event(&mut all).await;
    assert_eq!(
        (online.kind, online.id.as_str()),
        (E::Modified, id.as_str())
    );
    assert_eq!(
        online.object.as_ref().unwrap().state,
        ApplianceState::Online
    );
    w.fleet
        .heartbeat(Some(peer_pa), beat(None, 2))
        .await
        .unwrap();
    let mut labels = BTreeMap::new();
    labels.insert("role".to_owned(), Some("edge".to_owned()));
    w.fleet
        .label_appliance(&w.admin, &id, labels.clone())
        .await
        .unwrap();
    let labelled = next_event(&mut all).await;
    assert_eq!(
        labelled.kind,
        E::Modified,
        "the quiet heartbeat sent nothing"
    );
    assert!(labelled.resource_version > online.resource_version);
    assert_eq!(
        labelled
            .object
            .as_ref()
            .unwrap()
            .labels
            .get("role")
            .map(String::as_str),
        Some("edge")
    );
    let joined = next_event(&mut edges).await;
    assert_eq!((joined.kind, joined.id.as_str()), (E::Added, id.as_str()));
    labels.insert("role".to_owned(), Some("core".to_owned()));
    w.fleet
        .label_appliance(&w.admin, &id, labels)
        .await
        .unwrap();
    let left = next_event(&mut edges).await;
    assert_eq!(
        (left.kind, left.id.as_str(), left.object),
        (E::Deleted, id.as_str(), None)
    );
    seed(
        w,
        &template,
        &[("pg-9999".into(), "pa", vec![("role", "edge")])],
    )
    .await;
    let new = next_event(&mut edges).await;
    assert_eq!((new.kind, new.id.as_str()), (E::Added, "pg-9999"));

    // Resuming after the first event replays what followed; one appliance's watch sees
    // only it, and its deletion.
    let mut resumed = w
        .fleet
        .watch_appliances(&w.admin, everything.clone(), Some(online.resource_version))
        .await
        .unwrap();
    let again = next_event(&mut resumed).await;
    assert_eq!(again.id.as_str(), id.as_str());
    assert!(again.resource_version > online.resource_version);
    let one = ApplianceFilter {
        id: Some("pg-9999".into()),
        ..Default::default()
    };
    let mut single = w.fleet.watch_appliances(&w.admin, one, None).await.unwrap();
    w.fleet.delete_appliance(&w.admin, "pg-9999").await.unwrap();
    let gone = next_event(&mut single).await;
    assert_eq!((gone.kind, gone.id.as_str()), (E::Deleted, "pg-9999"));
    // Out of scope looks the same as absent.
    let hidden = w
        .fleet
        .watch_appliances(
            &pa_viewer,
            ApplianceFilter {
                id: Some(pb[0].0.appliance_id.to_string()),
                ..Default::default()
            },
            None,
        )
        .await;
    assert!(
        matches!(hidden, Err(FleetError::NotFound { .. })),
        "{:?}",
        hidden.map(drop)
    );
}
