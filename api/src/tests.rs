use std::collections::BTreeMap;

use serde::Serialize;
use serde::de::DeserializeOwned;
use time::macros::datetime;

use super::*;

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let json = serde_json::to_string(value).expect("serialize");
    let back: T = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(&back, value, "round trip changed the value: {json}");
}

fn inventory() -> HardwareInventory {
    HardwareInventory {
        manufacturer: "Dell Inc.".into(),
        model: "PowerEdge R650".into(),
        serial: "7XJ2KL3".into(),
        bios_version: Some("1.9.2".into()),
        cpus: vec![Cpu {
            model: "Xeon Gold 6338".into(),
            cores: 32,
            threads: 64,
        }],
        memory_bytes: 256 << 30,
        nics: vec![
            Nic {
                name: "eno2".into(),
                mac: "B0:7B:25:00:00:02".into(),
                speed_mbps: Some(25000),
                link_up: Some(true),
            },
            Nic {
                name: "eno1".into(),
                mac: "b0:7b:25:00:00:01".into(),
                speed_mbps: None,
                link_up: None,
            },
        ],
        disks: vec![Disk {
            name: "nvme0n1".into(),
            size_bytes: 960 << 30,
            model: None,
            serial: Some("S5".into()),
            rotational: Some(false),
        }],
    }
}

fn desired() -> DesiredState {
    DesiredState {
        generation: 7,
        heartbeat_interval_seconds: 30,
        upgrade: Some(UpgradeOrder {
            campaign: "nov-rollout".into(),
            version: "2026.11.1".into(),
            bundle_url: "https://hub.example.test/v1/releases/2026.11.1/bundle".into(),
            sha256: "ab".repeat(32),
            size_bytes: 40 << 20,
            compatible_from: vec!["2026.10.3".into()],
            allow_downgrade: false,
            window: Some(MaintenanceWindow {
                start: "22:00".into(),
                end: "04:00".into(),
            }),
            prestage: true,
            max_bytes_per_second: Some(10 << 20),
        }),
        join: Some(JoinBundle {
            control_plane: "edge-east".into(),
            api_server_url: "https://cp.example.test:6443".into(),
            ca_bundle_pem: "-----BEGIN CERTIFICATE-----\n...".into(),
            bootstrap_token: "abcdef.0123456789abcdef".into(),
            revision: 2,
        }),
        overlay: Some(OverlayDocument {
            local_vtep: "10.0.0.1".into(),
            vpcs: vec![VpcMembership {
                name: "blue".into(),
                vni: 4096,
                vrf_table: 1001,
                subnet: "172.30.0.0/24".into(),
                gateway: "172.30.0.1/24".into(),
                peer_vteps: vec!["10.0.0.2".into()],
            }],
        }),
        config: Some(crate::RenderedConfig {
            generation: 3,
            settings: crate::node_config::FleetConfig {
                dns: Some(vec!["192.0.2.53".into()]),
                heartbeat_interval_seconds: Some(10),
                ..Default::default()
            },
            netplan: Some(serde_json::json!({"network": {"version": 2}})),
            layers: vec!["tenant:acme@1".into(), "site:berlin@2".into()],
        }),
    }
}

#[test]
fn every_wire_type_survives_a_json_round_trip() {
    round_trip(&inventory());
    round_trip(&desired());
    round_trip(&RegistrationRequest {
        token: "tok".into(),
        csr_pem: "csr".into(),
        hostname: "edge-1".into(),
        inventory: inventory(),
        agent_version: "0.1.0".into(),
    });
    round_trip(&RegistrationResponse {
        appliance_id: ApplianceId::new("a-1f3c").unwrap(),
        site: "factory-7".into(),
        certificate_pem: "cert".into(),
        ca_bundle_pem: "ca".into(),
        desired: desired(),
    });
    round_trip(&Heartbeat {
        applied_generation: 6,
        status: NodeStatus {
            agent_version: "0.1.0".into(),
            os_version: "2026.10.3".into(),
            booted_slot: Some("a".into()),
            uptime_seconds: 3600,
            load1: 0.25,
            conditions: vec![Condition {
                kind: "KubeletActive".into(),
                status: ConditionStatus::False,
                reason: "UnitFailed".into(),
                message: "kubelet.service exited 1".into(),
            }],
            counters: BTreeMap::from([("reports_dropped".into(), 3)]),
            vtep_address: Some("10.0.0.1".into()),
            hub_link: None,
            upgrade: Some(UpgradeReport {
                campaign: "nov-rollout".into(),
                version: "2026.11.1".into(),
                phase: UpgradePhase::RolledBack,
                reason: "health check kubelet failed".into(),
                bytes_done: 0,
                bytes_total: 0,
                logs: vec!["kubelet.service: failed".into()],
                at: datetime!(2026-11-22 10:00:00 UTC),
            }),
            config: Some(crate::ConfigReport {
                generation: 3,
                outcome: crate::ConfigOutcome::RolledBack {
                    reason: "gateway 192.0.2.1 unreachable".into(),
                },
                last_good_generation: Some(2),
                not_applied: vec!["settings.ntp".into()],
            }),
            observed_at: datetime!(2026-11-22 10:00:00 UTC),
        },
    });
    round_trip(&InstallProgress {
        mac: "52:54:00:12:34:56".into(),
        step: InstallStep::Writing,
        bytes_written: 1 << 20,
        bytes_total: Some(1 << 30),
        message: String::new(),
    });
}

#[test]
fn commands_reject_unknown_fields_and_name_them() {
    let json =
        r#"{"token":"t","csr_pem":"c","hostname":"h","inventory":{},"agent_version":"1","ttl":5}"#;
    let err = serde_json::from_str::<RegistrationRequest>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `ttl`"), "{err}");

    let json = r#"{"mac":"m","step":"writing","extra":1}"#;
    let err = serde_json::from_str::<InstallProgress>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `extra`"), "{err}");
}

#[test]
fn reports_and_documents_tolerate_fields_from_newer_senders() {
    let json = r#"{"generation":3,"future_feature":{"x":1}}"#;
    let state: DesiredState = serde_json::from_str(json).unwrap();
    assert_eq!(state.generation, 3);
    assert_eq!(
        state.heartbeat_interval_seconds, 30,
        "default interval applies"
    );

    let json =
        r#"{"applied_generation":1,"status":{"observed_at":"2026-11-22T10:00:00Z","gpu_count":4}}"#;
    let hb: Heartbeat = serde_json::from_str(json).unwrap();
    assert_eq!(hb.applied_generation, 1);
}

#[test]
fn install_steps_use_kebab_case_on_the_wire() {
    let json = serde_json::to_string(&InstallStep::BootloaderInstalled).unwrap();
    assert_eq!(json, r#""bootloader-installed""#);
}

#[test]
fn upgrade_phases_use_kebab_case_and_know_which_end_an_upgrade() {
    let json = serde_json::to_string(&UpgradePhase::RolledBack).unwrap();
    assert_eq!(json, r#""rolled-back""#);
    assert!(UpgradePhase::RolledBack.is_final());
    assert!(UpgradePhase::Committed.is_final());
    assert!(!UpgradePhase::Verifying.is_final());
    assert!(!UpgradePhase::Staged.is_final());
}

#[test]
fn appliance_ids_are_validated_on_the_wire() {
    assert!(serde_json::from_str::<ApplianceId>(r#""edge-01""#).is_ok());
    for bad in [r#""""#, r#""Edge""#, r#""a/b""#, r#""-a""#] {
        let err = serde_json::from_str::<ApplianceId>(bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains("invalid appliance id"), "{bad}: {err}");
    }
    let long = format!("\"{}\"", "a".repeat(64));
    assert!(serde_json::from_str::<ApplianceId>(&long).is_err());
    assert_eq!(
        ApplianceId::new("x1").unwrap().uri_san(),
        "cairn://appliance/x1"
    );
}

#[test]
fn hardware_identity_ignores_mac_case_and_order() {
    let mut a = inventory();
    let macs = a.normalized_macs();
    assert_eq!(macs, vec!["b0:7b:25:00:00:01", "b0:7b:25:00:00:02"]);
    a.nics.reverse();
    assert_eq!(a.normalized_macs(), macs);
}

#[test]
fn fingerprints_accept_the_spellings_operators_paste() {
    let hex = "ab".repeat(32);
    let colons = hex
        .as_bytes()
        .chunks(2)
        .map(|pair| std::str::from_utf8(pair).unwrap().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join(":");
    for text in [
        hex.clone(),
        format!("sha256:{hex}"),
        format!("  SHA256:{colons}\n"),
        format!("sha256 Fingerprint={colons}"),
        colons.clone(),
    ] {
        let fp = crate::CertFingerprint::parse(&text).unwrap();
        assert_eq!(fp.hex(), hex, "{text:?}");
        assert_eq!(fp.to_string(), format!("sha256:{hex}"));
    }
    for bad in ["", "sha256:1234", &"zz".repeat(32), &format!("{hex}00")] {
        let err = crate::CertFingerprint::parse(bad).unwrap_err();
        assert!(err.to_string().contains("64 hex digits"), "{err}");
    }
}

#[test]
fn maintenance_windows_parse_or_say_what_is_wrong() {
    let w = MaintenanceWindow::parse("22:00-04:30").unwrap();
    assert_eq!((w.start.as_str(), w.end.as_str()), ("22:00", "04:30"));
    assert!(
        MaintenanceWindow::parse("22:00")
            .unwrap_err()
            .contains("HH:MM-HH:MM")
    );
    assert!(
        MaintenanceWindow::parse("24:00-01:00")
            .unwrap_err()
            .contains("\"24:00\"")
    );
    assert!(MaintenanceWindow::parse("2:00-01:00").is_err());
}
