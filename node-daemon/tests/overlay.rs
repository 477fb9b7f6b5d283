//! The VPC overlay end to end: a real `cairn-hub` on the host's loopback, two real
//! `cairn-node` daemons inside one QEMU guest booted with Debian's kernel (the host kernel has
//! no VRF), an operator putting both appliances in a VPC through the hub's API, and the
//! guest's kernel checked for what the overlay document describes.
//!
//! Layout inside the guest: appliance A runs in the guest's root namespace, appliance B in a
//! namespace `n2`. Each has its own QEMU user-network NIC as uplink to the hub (10.0.2.2 in a
//! user network is the host's 127.0.0.1; nothing else is reachable: no default route) and one
//! end of a veth pair as underlay, which its own netplan file configures (MTU 1550, the VTEP
//! address). A workload namespace hangs off each VPC bridge, so the test also sends traffic
//! through the tunnel.
//!
//! Besides attach and detach it checks that re-applying writes nothing (`ip monitor` stays
//! silent through heartbeats and a restart) and that a node restarted with its overlay links
//! gone and the hub out of reach rebuilds them from its stored desired state.
//!
//! The guest script and the test take turns through the console: the script waits for what
//! it can see (a VXLAN link appearing or going), prints a `CAIRN-MARK`, and the test acts on
//! the hub when it reads the mark.

mod common;

use std::time::{Duration, Instant};

use cairn_api::hub::{ApplianceView, CreateVpc};
use cairn_api::{ConditionStatus, VpcMembership};
use cairn_vm_harness::guest::{GuestRun, RunningGuest};
use cairn_vm_harness::qemu::Nic;
use common::*;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Limit for one step on the hub side; TCG on two shared cores is slow.
const STEP: Duration = Duration::from_secs(240);
const SUBNET: &str = "10.77.0.0/24";

fn node_yaml(host: &str, hub_url: &str, fingerprint: &str, vtep: &str) -> String {
    format!(
        "hostname: {host}\n\
         hub:\n  url: {hub_url}\n  ca_fingerprint: \"{fingerprint}\"\n  token_file: /etc/cairn/token\n\
         network:\n  manage: true\n  vtep_address: {vtep}\n"
    )
}

fn underlay_yaml(link: &str, vtep: &str) -> String {
    format!(
        "network:\n  version: 2\n  ethernets:\n    {link}:\n      mtu: 1550\n      addresses: [{vtep}/24]\n"
    )
}

const SCRIPT: &str = r#"
IP=/usr/local/bin/ip
BR=/usr/local/bin/bridge
NODE=/usr/local/bin/cairn-node
# Plain log lines to grep (the text format colours even when writing to a file).
export NO_COLOR=1
# Polls a command every 0.2 s for up to $1 seconds (of uptime: a loaded host slows each try).
wait_until() {
  end=$(( $(cut -d. -f1 /proc/uptime) + $1 )); shift
  while ! "$@" >/dev/null 2>&1; do
    [ "$(cut -d. -f1 /proc/uptime)" -ge $end ] && return 1
    sleep 0.2
  done
}
# Guest uptime at a milestone, for the test's timing report.
stamp() { echo "CAIRN-VALUE t-$1 $(cut -d' ' -f1 /proc/uptime)"; }
# IPv6 autoconfiguration would add addresses in the middle of the no-writes window.
echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6
echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6

# Uplinks: each appliance its own user network; 10.0.2.2 there is the host's loopback.
$IP link set eth0 up
$IP addr add 10.0.2.15/24 dev eth0
$IP netns add n2
$IP netns exec n2 sh -c 'echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6; echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6'
$IP link set eth1 netns n2
$IP -n n2 link set lo up
$IP -n n2 link set eth1 up
$IP -n n2 addr add 10.0.2.15/24 dev eth1
# The underlay cable; each node's netplan file configures its end.
$IP link add u1 type veth peer name u2 netns n2

$NODE --root /n1 run > /n1.log 2>&1 &
P1=$!
$IP netns exec n2 $NODE --root /n2 run > /n2.log 2>&1 &
P2=$!
stamp started
echo CAIRN-MARK started

# ---- attach: the overlay appears on both, each naming the other as VTEP peer ----
vxname() { $IP -o link show type vxlan | sed -n 's/^[0-9]*: \(vx[0-9]*\)[:@].*/\1/p' | head -1; }
if wait_until 400 sh -c "$IP -o link show type vxlan | grep -q vx"; then
  VX=$(vxname); VNI=${VX#vx}; TABLE=$((100000 + VNI))
  emit vni $VNI
  stamp overlay-appeared
  result overlay-appeared PASS
else
  result overlay-appeared FAIL "no VXLAN link in 400 s"; tail -n 40 /n1.log; exit 1
fi
wait_until 120 sh -c "$BR fdb show dev vx$VNI | grep -q 'dst 192.168.50.2'" && result peer-a PASS || result peer-a FAIL "$($BR fdb show dev vx$VNI)"
wait_until 120 sh -c "$BR -n n2 fdb show dev vx$VNI | grep -q 'dst 192.168.50.1'" && result peer-b PASS || result peer-b FAIL "$($BR -n n2 fdb show dev vx$VNI)"
stamp peers
for n in a:192.168.50.1 b:192.168.50.2; do
  node=${n%%:*}; vtep=${n#*:}
  if [ $node = a ]; then X="$IP"; B="$BR"; else X="$IP -n n2"; B="$BR -n n2"; fi
  check vxlan-$node sh -c "$X -d link show vx$VNI | grep -q 'vxlan id $VNI local $vtep ' && $X -d link show vx$VNI | grep -q 'dstport 4789 nolearning'"
  check vxlan-mtu-$node sh -c "$X link show vx$VNI | grep -q 'mtu 1500 .*master br$VNI'"
  check vrf-$node sh -c "$X -d link show vrf$VNI | grep -q 'vrf table $TABLE'"
  check ip-vrf-$node sh -c "$X vrf show | grep -Eq '^vrf$VNI +$TABLE\$'"
  check bridge-in-vrf-$node sh -c "$X link show br$VNI | grep -q 'master vrf$VNI'"
  check gateway-$node sh -c "$X addr show br$VNI | grep -q 'inet 10.77.0.1/24'"
  check vrf-route-$node sh -c "$X route show vrf vrf$VNI | grep -q '10.77.0.0/24 dev br$VNI'"
  check one-peer-$node sh -c "$B fdb show dev vx$VNI | grep -c '00:00:00:00:00:00 dst' | grep -qx 1"
done
echo "CAIRN-VALUE vxlan-a $($IP -d -o link show vx$VNI | tr -s ' \\' ' ')"
echo "CAIRN-VALUE vrf-a $($IP vrf show | tr '\n' ';')"
stamp checked
# A workload on each side: traffic crosses the tunnel inside the VPC.
$IP netns add w1
$IP netns add w2
$IP link add wl1 type veth peer name eth0 netns w1
$IP link set wl1 master br$VNI up
$IP -n n2 link add wl2 type veth peer name eth0 netns w2
$IP -n n2 link set wl2 master br$VNI up
for w in 1 2; do
  $IP -n w$w link set lo up; $IP -n w$w link set eth0 up; $IP -n w$w addr add 10.77.0.1$w/24 dev eth0
done
check vpc-ping $IP netns exec w1 ping -c 2 -W 5 10.77.0.12
check vpc-gateway-ping $IP netns exec w2 ping -c 1 -W 5 10.77.0.1
stamp pinged
# The kernel notifies every bridge port once its forward-delay timer runs out (15 s after it
# joined, STP or not): a link event nobody wrote. Start the no-writes window after that.
# The timer reads 0.00 in its last 10 ms, and a TCG guest runs timers late (a CI run saw
# the event land just after the window opened), so allow it 2 s more.
wait_until 40 sh -c "! { $IP -d link show; $IP -n n2 -d link show; } | grep -o 'forward_delay_timer *[0-9.]*' | grep -vq ' 0.00\$'"
sleep 2

# ---- idempotence: heartbeats with the same desired state, then a restart ----
$IP monitor link address route > /tmp/mon-a 2>&1 &
M1=$!
$IP -n n2 monitor link address route > /tmp/mon-b 2>&1 &
M2=$!
IDX=$(cat /sys/class/net/vx$VNI/ifindex)
stamp window
echo CAIRN-MARK overlay-up
sleep 6
# A restart re-applies the stored desired state ("force"): it must find nothing to do.
kill $P1; wait $P1
$NODE --root /n1 run > /n1-restart.log 2>&1 &
P1=$!
wait_until 120 grep -q 'overlay applied' /n1-restart.log
sleep 3
kill $M1 $M2
check no-writes-a sh -c "! [ -s /tmp/mon-a ] || { cat /tmp/mon-a; false; }"
check no-writes-b sh -c "! [ -s /tmp/mon-b ] || { cat /tmp/mon-b; false; }"
check same-link-a sh -c "[ $(cat /sys/class/net/vx$VNI/ifindex) = $IDX ]"
check restart-zero-changes sh -c "grep 'overlay applied' /n1-restart.log | grep -q 'changes=0'"
check applied-once-a sh -c "[ \$(grep -c 'overlay applied' /n1.log) -le 3 ] || grep 'overlay applied' /n1.log"
emit overlay-applies-a "$(grep -c 'overlay applied' /n1.log)"

# ---- edge autonomy: A restarts with its links gone (a reboot) and the hub out of reach ----
kill $P1; wait $P1
$IP link del vx$VNI; $IP link del br$VNI; $IP link del vrf$VNI
$IP link set eth0 down
$NODE --root /n1 run > /n1-offline.log 2>&1 &
P1=$!
wait_until 120 sh -c "$BR fdb show dev vx$VNI | grep -q 'dst 192.168.50.2'" && result restored-offline PASS || result restored-offline FAIL "$(tail -n 5 /n1-offline.log)"
check restored-in-vrf sh -c "$IP link show br$VNI | grep -q 'master vrf$VNI' && $IP addr show br$VNI | grep -q 'inet 10.77.0.1/24'"
wait_until 60 grep -q 'hub unreachable' /n1-offline.log && result hub-was-unreachable PASS || result hub-was-unreachable FAIL "$(tail -n 5 /n1-offline.log)"
$IP link set wl1 master br$VNI
check vpc-ping-offline $IP netns exec w1 ping -c 2 -W 5 10.77.0.12
$IP link set eth0 up
stamp idempotent
echo CAIRN-MARK idempotent

# ---- detach A: its overlay goes, B loses the peer ----
wait_until 120 sh -c "! $IP link show vx$VNI" && result removed-a PASS || result removed-a FAIL "$($IP link)"
check vrf-bridge-removed-a sh -c "! $IP link show vrf$VNI && ! $IP link show br$VNI"
wait_until 120 sh -c "! $BR -n n2 fdb show dev vx$VNI | grep -q 'dst 192.168.50.1'" && result peer-removed-b PASS || result peer-removed-b FAIL "$($BR -n n2 fdb show dev vx$VNI)"
check kept-b $IP -n n2 link show vx$VNI
check underlay-kept-a sh -c "$IP addr show u1 | grep -q 'inet 192.168.50.1/24'"
stamp detached-a
echo CAIRN-MARK detached-a

# ---- detach B, the last member ----
wait_until 120 sh -c "! $IP -n n2 link show vx$VNI" && result removed-b PASS || result removed-b FAIL "$($IP -n n2 link)"
check vrf-removed-b sh -c "! $IP -n n2 link show vrf$VNI"
stamp detached-b
kill $P1 $P2; wait $P1; wait $P2
echo '--- node a'; tail -n 30 /n1.log; tail -n 10 /n1-restart.log; tail -n 10 /n1-offline.log
echo '--- node b'; tail -n 30 /n2.log
"#;

/// The hub's record of the appliance called `host`.
fn appliance(admin: &Admin, host: &str) -> Option<ApplianceView> {
    admin
        .appliances()
        .unwrap()
        .into_iter()
        .find(|a| a.hostname == host)
}

/// Polls until the appliance `host` satisfies `ok`, returning its record.
fn hub_until(
    admin: &Admin,
    host: &str,
    what: &str,
    ok: impl Fn(&ApplianceView) -> bool,
) -> ApplianceView {
    poll(&format!("{host}: {what}"), STEP, || {
        appliance(admin, host).filter(|a| ok(a))
    })
}

/// The node reported (a heartbeat after applying) the generation it was given.
fn applied(a: &ApplianceView) -> bool {
    a.status.as_ref().map(|s| s.applied_generation) == Some(a.desired.generation)
}

/// The first VPC of the appliance's desired overlay.
fn first_vpc(a: &ApplianceView) -> Option<&VpcMembership> {
    a.desired.overlay.as_ref()?.vpcs.first()
}

/// Seconds from `since` to the first "overlay applied ... vpcs=1" log line after `section`
/// in the console. The guest's clock comes from the host's RTC at boot (second resolution).
fn applied_after(serial: &str, section: &str, since: OffsetDateTime) -> Option<f64> {
    let rest = &serial[serial.find(section)?..];
    let line = rest
        .lines()
        .find(|l| l.contains("overlay applied") && l.contains("vpcs=1"))?;
    let at = OffsetDateTime::parse(line.split_whitespace().next()?, &Rfc3339).ok()?;
    Some((at - since).as_seconds_f64())
}

fn mark(guest: &mut RunningGuest, name: &str) {
    if let Err(e) = guest.wait_for(&format!("CAIRN-MARK {name}")) {
        panic!(
            "guest: {}\n--- serial ---\n{}",
            cairn_api::error_chain(&e),
            guest.serial()
        );
    }
}

#[test]
fn vpc_overlay_from_hub_to_the_kernel_of_two_appliances() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let hub = hub_at(&dir.path().join("hub"))
        .names(&["127.0.0.1", "10.0.2.2"])
        .start();
    let port = hub.addr().rsplit(':').next().unwrap().to_owned();
    let guest_url = format!("https://10.0.2.2:{port}");
    let mut run = GuestRun::new()
        .module("vrf", "")
        .module("vxlan", "")
        .module("bridge", "")
        .module("veth", "")
        .binary(
            workspace_bin("cairn-node", "cairn-node-daemon"),
            "/usr/local/bin/cairn-node",
        )
        .binary("/usr/bin/ip", "/usr/local/bin/ip")
        .binary("/usr/sbin/bridge", "/usr/local/bin/bridge");
    for (root, host, link, vtep) in [
        ("n1", "edge-a", "u1", "192.168.50.1"),
        ("n2", "edge-b", "u2", "192.168.50.2"),
    ] {
        let token = hub.enrollment_token("vpc-site");
        run = run
            .file(
                &format!("/{root}/etc/cairn/node.yaml"),
                node_yaml(host, &guest_url, &hub.fingerprint, vtep),
            )
            .file(&format!("/{root}/etc/cairn/token"), format!("{token}\n"))
            .file(
                &format!("/{root}/etc/cairn/netplan/underlay.yaml"),
                underlay_yaml(link, vtep),
            )
            .nic(Nic::User {
                options: String::new(),
            });
    }
    let mut guest = run
        .memory_mb(1024)
        .timeout(Duration::from_secs(900))
        .script(SCRIPT)
        .spawn()
        .expect("guest (needs qemu-system-x86, linux-image-amd64, busybox-static: scripts/setup)");
    mark(&mut guest, "started");

    // Both register through the guest's user networks and report their VTEP addresses.
    let admin = hub.admin();
    let has_vtep =
        |vtep: &'static str| move |a: &ApplianceView| a.vtep_address.as_deref() == Some(vtep);
    let a = hub_until(
        &admin,
        "edge-a",
        "registered with its VTEP",
        has_vtep("192.168.50.1"),
    );
    let b = hub_until(
        &admin,
        "edge-b",
        "registered with its VTEP",
        has_vtep("192.168.50.2"),
    );
    let (id_a, id_b) = (a.id.as_str(), b.id.as_str());
    println!("registered after {:?}", started.elapsed());

    // The operator makes a VPC and puts both in it.
    let vpc = admin.ok(admin.client.create_vpc(&CreateVpc {
        name: "blue".into(),
        subnet: SUBNET.into(),
        tenant: None,
    }));
    let vni = vpc.vni;
    let attached_at = Instant::now();
    let attached_utc = OffsetDateTime::now_utc();
    admin.ok(admin.client.attach("blue", id_a));
    admin.ok(admin.client.attach("blue", id_b));

    // The guest sees the devices; the hub sees each node report the generation applied.
    mark(&mut guest, "overlay-up");
    println!(
        "guest checks of the overlay done {:?} after the attach",
        attached_at.elapsed()
    );
    let peer_of = |peer: &'static str| {
        move |a: &ApplianceView| applied(a) && first_vpc(a).is_some_and(|v| v.peer_vteps == [peer])
    };
    let a = hub_until(
        &admin,
        "edge-a",
        "applied its overlay",
        peer_of("192.168.50.2"),
    );
    let b = hub_until(
        &admin,
        "edge-b",
        "applied its overlay",
        peer_of("192.168.50.1"),
    );
    for node in [&a, &b] {
        let generation = node.desired.generation;
        let conditions = &node.status.as_ref().unwrap().status.conditions;
        assert!(
            conditions.iter().any(|c| c.kind == "OverlayApplied"
                && c.status == ConditionStatus::True
                && c.message == format!("generation {generation}: 1 VPCs")),
            "{node:#?}"
        );
    }
    let overlay = a.desired.overlay.as_ref().unwrap();
    assert_eq!(overlay.local_vtep, "192.168.50.1", "{a:#?}");
    assert_eq!(overlay.vpcs[0].vni, vni, "{a:#?}");
    assert_eq!(overlay.vpcs[0].gateway, "10.77.0.1/24", "{a:#?}");
    let generations = (a.desired.generation, b.desired.generation);

    // Same desired state through the idempotence window and a restart: no new generation.
    mark(&mut guest, "idempotent");
    let a_now = hub_until(&admin, "edge-a", "applied after its restart", applied);
    let b_now = hub_until(&admin, "edge-b", "still applied", applied);
    assert_eq!(
        (a_now.desired.generation, b_now.desired.generation),
        generations
    );

    // Detaching A removes its overlay and B's tunnel to it.
    admin.ok(admin.client.detach("blue", id_a));
    mark(&mut guest, "detached-a");
    let a = hub_until(&admin, "edge-a", "applied the detach", |a| {
        applied(a) && a.desired.overlay.is_none()
    });
    let b = hub_until(&admin, "edge-b", "applied the lost peer", |b| {
        applied(b) && first_vpc(b).is_some_and(|v| v.peer_vteps.is_empty())
    });
    assert!(a.desired.generation > generations.0);
    assert!(b.desired.generation > generations.1);

    // The last member leaves: the VPC has no tunnel left anywhere.
    admin.ok(admin.client.detach("blue", id_b));
    let report = guest.finish().expect("guest run");
    println!("{}", report.serial);
    report.assert_all_passed();
    assert_eq!(report.value("vni"), Some(vni.to_string().as_str()));
    let stamps: Vec<_> = report
        .values
        .iter()
        .filter(|(k, _)| k.starts_with("t-"))
        .collect();
    println!("guest uptime at milestones: {stamps:?}");
    for node in ["a", "b"] {
        println!(
            "node {node} applied its first overlay {:?} s after the attach (guest clock, ±1 s)",
            applied_after(&report.serial, &format!("--- node {node}"), attached_utc)
        );
    }
    println!("whole run {:?}", started.elapsed());
}
