//! Link kinds the development kernel lacks (bond, 802.1Q VLAN, VRF, dummy) and the
//! three-node VPC overlay, inside one QEMU guest booted with Debian's kernel through the
//! qemu-tests harness. One boot runs every check (a boot costs 6–60 s under TCG).
//!
//! The overlay scenario: three node namespaces on one underlay bridge (192.168.50.0/24,
//! MTU 1550), two VPCs with the SAME subnet (10.100.0.0/24), so only VXLAN/VRF separation keeps
//! them apart. Each node has one workload namespace per VPC (veth into the VPC bridge).

use std::path::PathBuf;

use cairn_netplan::schema::{Kind, load_files};
use cairn_vm_harness::guest::GuestRun;

/// The netplan examples that parse, applied in the guest (item 8): each ethernet becomes a
/// veth with the same name (or MAC, for `match: macaddress`), the example is applied, applied
/// again (must write nothing), then removed. Returns (files, script, example names).
/// Files to put in the guest: (guest path, contents).
type Files = Vec<(String, Vec<u8>)>;

fn corpus() -> (Files, String, Vec<String>) {
    let dir = [
        "/usr/share/doc/netplan/examples",
        "/usr/share/doc/netplan.io/examples",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|d| d.is_dir())
    .expect("netplan examples missing: install netplan.io (scripts/setup)");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    let mut files = Vec::new();
    let mut script = String::from("echo '# corpus'\n");
    let mut names = Vec::new();
    for path in paths {
        let Ok(config) = load_files(std::slice::from_ref(&path)) else {
            continue;
        };
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let guest = format!("/cairn/corpus/{name}.yaml");
        files.push((guest.clone(), std::fs::read(&path).unwrap()));
        let mut made = Vec::new();
        for (i, dev) in config.devices.values().enumerate() {
            let Kind::Ethernet { matcher, .. } = &dev.kind else {
                continue;
            };
            let (link, mac) = match matcher {
                Some(m) if m.macaddress.is_some() => (format!("cx{i}"), m.macaddress.clone()),
                Some(m) => (m.name.clone().unwrap_or_else(|| dev.id.clone()), None),
                None => (dev.id.clone(), None),
            };
            if link == "lo" {
                continue;
            }
            let mac = mac.map(|m| format!(" address {m}")).unwrap_or_default();
            script.push_str(&format!(
                "$IP link add {link}{mac} type veth peer name cp{i}\n"
            ));
            made.push(link);
        }
        script.push_str(&format!(
            "check corpus-{name} $NET --state-dir /var/lib/corpus-{name} --file {guest} apply\n\
             out=$($NET --state-dir /var/lib/corpus-{name} --file {guest} --output json apply)\n\
             check corpus-{name}-noop sh -c \"echo '$out' | grep -q '\\\"writes\\\": 0'\"\n\
             $NET --state-dir /var/lib/corpus-{name} --file /cairn/empty.yaml apply >/dev/null\n"
        ));
        for link in made {
            script.push_str(&format!(
                "$IP link del {link} 2>/dev/null; $IP link del mainif 2>/dev/null\n"
            ));
        }
        names.push(name);
    }
    (files, script, names)
}

/// Parsed examples the kernel refuses to apply, with the reason in docs/netplan.md:
/// vrf.yaml routes `default via 10.10.10.4` in a VRF that has no address in that subnet
/// ("Network is unreachable"; networkd fails the same way).
const CORPUS_NOT_APPLIED: &[&str] = &["vrf"];

const BOND_YAML: &str = r#"
network:
  version: 2
  ethernets: {d1: {}, d2: {}}
  bonds:
    bond0:
      interfaces: [d1, d2]
      parameters: {mode: active-backup, mii-monitor-interval: 100, primary: d1, up-delay: 0, down-delay: 0}
      addresses: [10.10.0.2/24]
      routes: [{to: 10.20.0.0/16, via: 10.10.0.1, metric: 30}]
  vlans:
    bond0.10: {id: 10, link: bond0, addresses: [10.11.0.2/24], mtu: 1400}
    bond0.20: {id: 20, link: bond0, addresses: [10.21.0.2/24]}
  dummy-devices:
    dm9: {addresses: [10.12.0.1/32]}
  vrfs:
    vrf-blue:
      table: 1001
      interfaces: [dm9]
      routes: [{to: 10.99.0.0/16, type: blackhole}]
      routing-policy: [{from: 10.12.0.0/24, table: 1001, priority: 100}]
"#;

/// The same minus VLAN 20, with a LACP bond: the VLAN goes, the bond is recreated in the
/// new mode, the members follow.
const BOND_YAML_2: &str = r#"
network:
  version: 2
  ethernets: {d1: {}, d2: {}}
  bonds:
    bond0:
      interfaces: [d1, d2]
      parameters: {mode: 802.3ad, lacp-rate: fast, transmit-hash-policy: layer3+4, mii-monitor-interval: 100}
      addresses: [10.10.0.2/24]
  vlans:
    bond0.10: {id: 10, link: bond0, addresses: [10.11.0.2/24], mtu: 1400}
"#;

fn overlay(local: &str, peers: &[&str]) -> String {
    let peers: Vec<String> = peers.iter().map(|p| format!("\"{p}\"")).collect();
    let peers = peers.join(",");
    format!(
        r#"{{"local_vtep":"{local}","vpcs":[
 {{"name":"red","vni":100,"vrf_table":1100,"subnet":"10.100.0.0/24","gateway":"10.100.0.1/24","peer_vteps":[{peers}]}},
 {{"name":"green","vni":200,"vrf_table":1200,"subnet":"10.100.0.0/24","gateway":"10.100.0.1/24","peer_vteps":[{peers}]}}]}}"#
    )
}

const SCRIPT: &str = r#"
IP=/usr/local/bin/ip
NET=/usr/local/bin/cairn-net
mkdir -p /var/lib

# ---------- bonds, VLANs, VRF, dummies (item 7) ----------
$IP link add d1 type dummy
$IP link add d2 type dummy
check bond-apply $NET --state-dir /var/lib/c1 --file /cairn/bond.yaml apply
check bond-mode sh -c "$IP -d link show bond0 | grep -q 'mode active-backup'"
check bond-miimon sh -c "$IP -d link show bond0 | grep -q 'miimon 100'"
check bond-members sh -c "$IP link show d1 | grep -q 'master bond0' && $IP link show d2 | grep -q 'master bond0'"
check bond-address sh -c "$IP addr show bond0 | grep -q 'inet 10.10.0.2/24'"
check bond-route sh -c "$IP route | grep -q '10.20.0.0/16 via 10.10.0.1 dev bond0 proto static metric 30'"
check vlan10 sh -c "$IP -d link show bond0.10 | grep -q 'vlan protocol 802.1Q id 10'"
check vlan10-mtu sh -c "$IP link show bond0.10 | grep -q 'mtu 1400'"
check vlan20-addr sh -c "$IP addr show bond0.20 | grep -q 'inet 10.21.0.2/24'"
check vrf-table sh -c "$IP -d link show vrf-blue | grep -q 'vrf table 1001'"
check vrf-member sh -c "$IP link show dm9 | grep -q 'master vrf-blue'"
check vrf-connected sh -c "$IP route show table 1001 | grep -q '10.12.0.1'"
check vrf-blackhole sh -c "$IP route show table 1001 | grep -q 'blackhole 10.99.0.0/16'"
check vrf-rule sh -c "$IP rule | grep -q '100:.*from 10.12.0.0/24 lookup 1001'"
out=$($NET --state-dir /var/lib/c1 --file /cairn/bond.yaml --output json apply)
emit bond-second-apply "$(echo "$out" | grep '"writes"' | tr -dc 0-9)"
check bond-idempotent sh -c "echo '$out' | grep -q '\"writes\": 0'"
check bond-change $NET --state-dir /var/lib/c1 --file /cairn/bond2.yaml apply
check bond-lacp sh -c "$IP -d link show bond0 | grep -q 'mode 802.3ad' && $IP -d link show bond0 | grep -q 'lacp_rate fast'"
check bond-members-again sh -c "$IP link show d1 | grep -q 'master bond0' && $IP link show d2 | grep -q 'master bond0'"
check vlan10-kept sh -c "$IP addr show bond0.10 | grep -q 'inet 10.11.0.2/24'"
check vlan20-gone sh -c "! $IP link show bond0.20 2>/dev/null"
check vrf-gone sh -c "! $IP link show vrf-blue 2>/dev/null && ! $IP link show dm9 2>/dev/null"
check blackhole-gone sh -c "! $IP route show table 1001 | grep -q blackhole"
check rule-gone sh -c "! $IP rule | grep -q 'lookup 1001'"
out=$($NET --state-dir /var/lib/c1 --file /cairn/bond2.yaml --output json apply)
check bond2-idempotent sh -c "echo '$out' | grep -q '\"writes\": 0'"

# ---------- VPC overlay on three nodes (item 5) ----------
$IP link add under type bridge
$IP link set under mtu 1550 up
for n in 1 2 3; do
  $IP netns add node$n
  $IP link add u$n type veth peer name eth0 netns node$n
  $IP link set u$n mtu 1550 master under up
  $IP -n node$n link set lo up
  $IP -n node$n link set eth0 mtu 1550 up
  $IP -n node$n addr add 192.168.50.$n/24 dev eth0
done
for n in 1 2 3; do
  check overlay-apply-$n $IP netns exec node$n $NET --state-dir /var/lib/o$n overlay --document /cairn/overlay$n.json
  for vpc in 100:1 200:2; do
    vni=${vpc%:*}; k=${vpc#*:}
    $IP netns add w$n-$vni
    $IP -n node$n link add wl$vni type veth peer name eth0 netns w$n-$vni
    $IP -n node$n link set wl$vni master br$vni up
    $IP -n w$n-$vni link set lo up
    $IP -n w$n-$vni link set eth0 up
    $IP -n w$n-$vni addr add 10.100.0.$k$n/24 dev eth0
  done
done
check vxlan-learning-off sh -c "$IP -n node1 -d link show vx100 | grep -q nolearning"
check vxlan-in-bridge sh -c "$IP -n node1 link show vx100 | grep -q 'master br100'"
check bridge-in-vrf sh -c "$IP -n node1 link show br100 | grep -q 'master vrf100'"
check gateway sh -c "$IP -n node1 addr show br100 | grep -q 'inet 10.100.0.1/24'"
check fdb-peers sh -c "/usr/local/bin/bridge -n node1 fdb show dev vx100 | grep -c '00:00:00:00:00:00 dst 192.168.50' | grep -qx 2"
# Same VPC crosses nodes (red: .11 .12 .13; green: .21 .22 .23).
check red-1-to-2 $IP netns exec w1-100 ping -c 2 -W 3 10.100.0.12
check red-1-to-3 $IP netns exec w1-100 ping -c 2 -W 3 10.100.0.13
check green-2-to-3 $IP netns exec w2-200 ping -c 2 -W 3 10.100.0.23
# Cross-VPC does not (same subnet, different VNI and VRF).
check red-not-to-green sh -c "! $IP netns exec w1-100 ping -c 2 -W 2 10.100.0.22"
check green-not-to-red sh -c "! $IP netns exec w3-200 ping -c 2 -W 2 10.100.0.11"
# The overlay re-applied is a no-op.
out=$($IP netns exec node1 $NET --state-dir /var/lib/o1 --output json overlay --document /cairn/overlay1.json)
check overlay-idempotent sh -c "echo '$out' | grep -q '\"writes\": 0'"
# Removing node 3 from node 1's peers cuts only node 3, with only FDB changes.
out=$($IP netns exec node1 $NET --state-dir /var/lib/o1 --output json overlay --document /cairn/overlay1-no3.json)
check peer-removal-fdb-only sh -c "echo '$out' | grep '\"op\"' | grep -v '\"del-fdb\"' | wc -l | grep -qx 0 && echo '$out' | grep -c '\"del-fdb\"' | grep -qx 2"
check red-1-to-3-cut sh -c "! $IP netns exec w1-100 ping -c 2 -W 2 10.100.0.13"
check red-1-to-2-kept $IP netns exec w1-100 ping -c 2 -W 3 10.100.0.12
# An underlay MTU too small for VXLAN is refused with a clear message.
$IP netns add node4
$IP link add u4 type veth peer name eth0 netns node4
$IP -n node4 link set eth0 up
$IP -n node4 addr add 192.168.50.4/24 dev eth0
out=$($IP netns exec node4 $NET --state-dir /var/lib/o4 overlay --document /cairn/overlay4.json 2>&1)
rc=$?
check mtu-refused sh -c "[ $rc = 3 ] && echo '$out' | grep -q 'underlay eth0 has MTU 1500, too small for VXLAN: needs at least 1550'"
check mtu-nothing-created sh -c "! $IP -n node4 link show vx100 2>/dev/null"
"#;

#[test]
fn bonds_vlans_vrfs_and_three_node_vpc_overlay_in_a_debian_guest() {
    let all = ["192.168.50.1", "192.168.50.2", "192.168.50.3"];
    let (corpus_files, corpus_script, corpus_names) = corpus();
    let mut run = GuestRun::new();
    for (path, data) in corpus_files {
        run = run.file(&path, data);
    }
    let report = run
        .module("bonding", "")
        .module("8021q", "")
        .module("vrf", "")
        .module("dummy", "")
        .module("vxlan", "")
        .module("bridge", "")
        .module("veth", "")
        .binary(env!("CARGO_BIN_EXE_cairn-net"), "/usr/local/bin/cairn-net")
        .binary("/usr/bin/ip", "/usr/local/bin/ip")
        .binary("/usr/sbin/bridge", "/usr/local/bin/bridge")
        .file("/cairn/bond.yaml", BOND_YAML)
        .file("/cairn/bond2.yaml", BOND_YAML_2)
        .file("/cairn/overlay1.json", overlay(all[0], &all))
        .file("/cairn/overlay2.json", overlay(all[1], &all))
        .file("/cairn/overlay3.json", overlay(all[2], &all))
        .file("/cairn/overlay1-no3.json", overlay(all[0], &all[..2]))
        .file("/cairn/overlay4.json", overlay("192.168.50.4", &all))
        .file("/cairn/empty.yaml", "network: {version: 2}\n")
        .memory_mb(768)
        // TCG on two cores shared with other builds: minutes, not seconds, under load.
        .timeout(std::time::Duration::from_secs(900))
        .script(&format!("{SCRIPT}\n{corpus_script}"))
        .run()
        .expect(
            "guest run (needs qemu-system-x86, linux-image-amd64, busybox-static: scripts/setup)",
        );
    let failed: Vec<_> = report
        .checks
        .iter()
        .filter(|c| !c.passed && !c.name.starts_with("corpus-"))
        .collect();
    assert!(
        failed.is_empty(),
        "failed: {failed:#?}\n--- serial ---\n{}",
        report.serial
    );
    // Corpus: every parsed example applies and re-applies with zero writes, except those
    // whose YAML the kernel itself refuses (documented in docs/netplan.md).
    let applied: Vec<&String> = corpus_names
        .iter()
        .filter(|n| {
            report
                .check(&format!("corpus-{n}"))
                .is_some_and(|c| c.passed)
                && report
                    .check(&format!("corpus-{n}-noop"))
                    .is_some_and(|c| c.passed)
        })
        .collect();
    let not_applied: Vec<String> = corpus_names
        .iter()
        .filter(|n| !applied.contains(n))
        .map(|n| {
            format!(
                "{n}: {}",
                report
                    .check(&format!("corpus-{n}"))
                    .map(|c| c.detail.clone())
                    .unwrap_or_default()
            )
        })
        .collect();
    println!(
        "corpus applied {}/{}; not applied: {not_applied:#?}",
        applied.len(),
        corpus_names.len()
    );
    assert_eq!(
        not_applied
            .iter()
            .map(|n| n.split(':').next().unwrap().to_string())
            .collect::<Vec<_>>(),
        CORPUS_NOT_APPLIED,
        "{not_applied:#?}"
    );
    assert_eq!(report.value("bond-second-apply"), Some("0"));
    assert!(
        report.checks.len() >= 40,
        "{} checks ran",
        report.checks.len()
    );
}
