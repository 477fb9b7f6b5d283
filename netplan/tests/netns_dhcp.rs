//! The DHCPv4 client against dnsmasq in a namespace: lease obtained and persisted, renewed
//! (unicast, T1), rebound (broadcast, T2) while the server was away, released on stop.
//! dnsmasq's minimum lease is 2 minutes; T1/T2 options of 3 s/8 s make the phases quick.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_test_support::{ChildGuard, poll};
use common::{Netns, veth};

fn dnsmasq(server: &Netns, leases: &std::path::Path) -> ChildGuard {
    let child = server
        .command("dnsmasq")
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",
            "--interface=s0",
            "--bind-interfaces",
            "--dhcp-authoritative",
            "--dhcp-range=10.9.0.100,10.9.0.150,255.255.255.0,2m",
            "--dhcp-option=option:router,10.9.0.1",
            "--dhcp-option=option:T1,3",
            "--dhcp-option=option:T2,8",
            "--pid-file=",
            "--log-facility=-",
            "--log-dhcp",
        ])
        .arg(format!("--dhcp-leasefile={}", leases.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("dnsmasq not found: install dnsmasq-base (scripts/setup)");
    ChildGuard::new(child)
}

fn lease(state: &std::path::Path) -> Option<serde_json::Value> {
    std::fs::read(state.join("dhcp-c0.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

#[test]
fn lease_renew_rebind_release_against_dnsmasq() {
    let client = Netns::new("dhc");
    let server = Netns::new("dhs");
    veth(&client, "c0", &server, "s0");
    server.ip(&["addr", "add", "10.9.0.1/24", "dev", "s0"]);
    server.ip(&["link", "set", "s0", "up"]);
    let dir = tempfile::tempdir().unwrap();
    let leases = dir.path().join("dnsmasq.leases");
    let state = dir.path().join("state");
    let mut srv = Some(dnsmasq(&server, &leases));

    let mut dhcp = ChildGuard::new(
        client
            .command(env!("CARGO_BIN_EXE_cairn-net"))
            .arg("--state-dir")
            .arg(&state)
            .args(["dhcp", "--interface", "c0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    poll("a lease", Duration::from_secs(30), || {
        lease(&state).is_some().then_some(())
    });
    let l = lease(&state).unwrap();
    let addr = l["address"].as_str().unwrap().to_string();
    assert!(addr.starts_with("10.9.0.1"), "{l}");
    assert_eq!(l["prefix"], 24);
    assert_eq!(l["router"], "10.9.0.1");
    poll("the address", Duration::from_secs(10), || {
        client
            .addrs("c0")
            .contains(&format!("{addr}/24"))
            .then_some(())
    });
    assert!(
        client.routes().contains("default via 10.9.0.1 dev c0"),
        "{}",
        client.routes()
    );
    assert!(std::fs::read_to_string(&leases).unwrap().contains(&addr));

    // Renewal at T1, unicast to the server.
    poll("a renewal", Duration::from_secs(30), || {
        lease(&state)
            .is_some_and(|l| l["renewals"].as_u64().unwrap_or(0) >= 1)
            .then_some(())
    });

    // The server goes away: renewing fails until T2, then the client rebinds by broadcast
    // to whichever server answers (the same dnsmasq, restarted on its lease file).
    drop(srv.take());
    poll("the rebinding phase", Duration::from_secs(30), || {
        lease(&state)
            .is_some_and(|l| l["phase"] == "rebinding")
            .then_some(())
    });
    srv = Some(dnsmasq(&server, &leases));
    poll("a rebind", Duration::from_secs(30), || {
        lease(&state)
            .is_some_and(|l| l["rebinds"].as_u64().unwrap_or(0) >= 1 && l["phase"] == "bound")
            .then_some(())
    });
    assert_eq!(
        lease(&state).unwrap()["address"],
        addr.as_str(),
        "same address kept"
    );
    assert!(client.addrs("c0").contains(&format!("{addr}/24")));

    // Stop = removal from the config: DHCPRELEASE, address and lease file gone.
    Command::new("kill")
        .args(["-TERM", &dhcp.id().to_string()])
        .status()
        .unwrap();
    let status = dhcp.child_mut().wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(client.addrs("c0").is_empty(), "{:?}", client.addrs("c0"));
    assert!(lease(&state).is_none());
    poll(
        "dnsmasq to drop the released lease",
        Duration::from_secs(10),
        || {
            (!std::fs::read_to_string(&leases)
                .unwrap_or_default()
                .contains(&addr))
            .then_some(())
        },
    );
    drop(srv);
}
