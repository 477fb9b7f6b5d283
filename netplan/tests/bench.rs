//! Benchmark (BENCHMARKS.md, `scripts/bench netplan`): in a Debian-kernel QEMU guest, a fresh
//! apply of 1 bond over 2 dummies + 500 VLANs with one address each + 500 routes, side by
//! side in one hyperfine run with `ip -batch` of the equivalent commands and, when built,
//! `nmstatectl apply --kernel` of the equivalent state; then the no-op re-apply time and its
//! netlink write count. Ignored in `make test` (it is a measurement, not a check).

use std::path::PathBuf;

use cairn_vm_harness::guest::GuestRun;

const VLANS: u32 = 500;
/// Fresh-apply rounds (one run of each tool per round).
const ROUNDS: u32 = 3;

fn addr(i: u32) -> (u32, u32) {
    (100 + i / 250, i % 250)
}

fn netplan_yaml() -> String {
    let mut s = String::from(
        "network:\n  version: 2\n  dummy-devices: {d1: {}, d2: {}}\n  bonds:\n    bond0:\n      interfaces: [d1, d2]\n      parameters: {mode: balance-rr}\n  vlans:\n",
    );
    for i in 1..=VLANS {
        let (x, y) = addr(i);
        s.push_str(&format!(
            "    bond0.{i}: {{id: {i}, link: bond0, addresses: [10.{x}.{y}.2/24], routes: [{{to: 172.{}.{y}.0/24, via: 10.{x}.{y}.1}}]}}\n",
            x - 84
        ));
    }
    s
}

fn ip_batch() -> String {
    let mut s = String::from(
        "link add d1 type dummy\nlink add d2 type dummy\nlink add bond0 type bond mode balance-rr\nlink set d1 master bond0\nlink set d2 master bond0\nlink set d1 up\nlink set d2 up\nlink set bond0 up\n",
    );
    for i in 1..=VLANS {
        let (x, y) = addr(i);
        s.push_str(&format!(
            "link add link bond0 name bond0.{i} type vlan id {i}\naddr add 10.{x}.{y}.2/24 dev bond0.{i}\nlink set bond0.{i} up\n"
        ));
    }
    for i in 1..=VLANS {
        let (x, y) = addr(i);
        s.push_str(&format!(
            "route add 172.{}.{y}.0/24 via 10.{x}.{y}.1 dev bond0.{i} proto static\n",
            x - 84
        ));
    }
    s
}

fn nmstate_yaml() -> String {
    let mut s = String::from(
        "interfaces:\n- {name: d1, type: dummy, state: up}\n- {name: d2, type: dummy, state: up}\n- name: bond0\n  type: bond\n  state: up\n  link-aggregation: {mode: balance-rr, port: [d1, d2]}\n",
    );
    for i in 1..=VLANS {
        let (x, y) = addr(i);
        s.push_str(&format!(
            "- name: bond0.{i}\n  type: vlan\n  state: up\n  vlan: {{base-iface: bond0, id: {i}}}\n  ipv4: {{enabled: true, dhcp: false, address: [{{ip: 10.{x}.{y}.2, prefix-length: 24}}]}}\n"
        ));
    }
    s.push_str("routes:\n  config:\n");
    for i in 1..=VLANS {
        let (x, y) = addr(i);
        s.push_str(&format!(
            "  - {{destination: 172.{}.{y}.0/24, next-hop-address: 10.{x}.{y}.1, next-hop-interface: bond0.{i}}}\n",
            x - 84
        ));
    }
    s
}

#[test]
#[ignore = "benchmark: run by scripts/bench netplan"]
fn bench_bond_500_vlans_500_routes() {
    // The release binary when the bench script provides it (the test harness itself can
    // stay a debug build).
    let cairn_net = std::env::var_os("CAIRN_NET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_cairn-net")));
    let nmstatectl = std::env::var_os("NMSTATECTL")
        .map(PathBuf::from)
        .filter(|p| p.is_file());
    let mut script = String::from(
        r#"
IP=/usr/local/bin/ip
NET=/usr/local/bin/cairn-net
"#,
    );
    script.push_str(&format!(
        r#"
# nmstatectl takes part when one apply of it reaches the state (it verifies, like cairn).
# Its nispor backend cannot create dummy links (EOPNOTSUPP), so they exist, down, before its
# runs: two link creations of 2 008 changes less for it.
set -- --prepare 'sh /cairn/reset.sh'
if [ -x /usr/local/bin/nmstatectl ]; then
  sh /cairn/reset-nm.sh
  NM="/usr/local/bin/nmstatectl apply --kernel /cairn/bench-nmstate.yaml"
  if out=$($NM 2>&1) && [ "$($IP link show | grep -c 'bond0\.')" = {VLANS} ]; then
    set -- --prepare 'sh /cairn/reset.sh' --prepare 'sh /cairn/reset.sh' --prepare 'sh /cairn/reset-nm.sh' -n nmstatectl "$NM"
  else
    echo "CAIRN-NMSTATE-FAILED $(echo "$out" | tail -8 | tr '\n' '|')"
  fi
fi
# Rounds of one run per tool, so that the host's changing load (TCG) hits all tools alike.
for round in $(seq {ROUNDS}); do
  /usr/local/bin/hyperfine -N --style basic --runs 1 --export-json /tmp/fresh.json -n cairn "$NET --state-dir /tmp/bs --file /cairn/bench.yaml apply" -n ip-batch "$IP -batch /cairn/bench.batch" "$@" >/dev/null 2>&1
  echo "CAIRN-JSON fresh $(tr -d '\n' < /tmp/fresh.json)"
done
sh /cairn/reset.sh
$NET --state-dir /tmp/bs --file /cairn/bench.yaml apply >/dev/null
check applied sh -c "$IP link show | grep -c 'bond0\.' | grep -qx {VLANS}"
emit noop-writes "$($NET --state-dir /tmp/bs --file /cairn/bench.yaml --output json apply | grep '"writes"' | tr -dc 0-9)"
/usr/local/bin/hyperfine -N --style basic --runs 5 --export-json /tmp/noop.json -n cairn-noop "$NET --state-dir /tmp/bs --file /cairn/bench.yaml apply" >/dev/null 2>&1
echo "CAIRN-JSON noop $(tr -d '\n' < /tmp/noop.json)"
$NET --state-dir /tmp/bs --file /cairn/bench.yaml --log-level cairn_netplan=debug apply 2>&1 | grep -E 'planned' | sed 's/^/CAIRN-PHASE no-op /'
# Where a fresh apply spends its time (read, plan, changes, verification), for profiling.
sh /cairn/reset.sh
$NET --state-dir /tmp/bs --file /cairn/bench.yaml --log-level cairn_netplan=debug apply 2>&1 | grep -E 'planned|changes made|verified' | sed 's/^/CAIRN-PHASE /'
"#
    ));
    let mut run = GuestRun::new()
        .module("bonding", "")
        .module("8021q", "")
        .module("dummy", "")
        .binary(&cairn_net, "/usr/local/bin/cairn-net")
        .binary("/usr/bin/ip", "/usr/local/bin/ip")
        .binary("/usr/bin/hyperfine", "/usr/local/bin/hyperfine")
        .file("/cairn/bench.yaml", netplan_yaml())
        .file("/cairn/bench.batch", ip_batch())
        .file("/cairn/bench-nmstate.yaml", nmstate_yaml())
        .file(
            "/cairn/reset.sh",
            "#!/bin/sh\n/usr/local/bin/ip link del bond0 2>/dev/null\n/usr/local/bin/ip link del d1 2>/dev/null\n/usr/local/bin/ip link del d2 2>/dev/null\nrm -rf /tmp/bs\nexit 0\n",
        )
        .file(
            "/cairn/reset-nm.sh",
            "#!/bin/sh\nsh /cairn/reset.sh\n/usr/local/bin/ip link add d1 type dummy\n/usr/local/bin/ip link add d2 type dummy\n",
        )
        .memory_mb(1024)
        .timeout(std::time::Duration::from_secs(1800))
        .script(&script);
    if let Some(nm) = &nmstatectl {
        run = run.binary(nm, "/usr/local/bin/nmstatectl");
    }
    let report = run.run().expect("guest run");
    report.assert_all_passed();
    // Per tool, the fresh-apply times of all rounds.
    let mut fresh: Vec<(String, Vec<f64>)> = Vec::new();
    for line in report.serial.lines() {
        let Some((_, j)) = line.split_once("CAIRN-JSON fresh ") else {
            continue;
        };
        let round: serde_json::Value = serde_json::from_str(j).unwrap();
        for r in round["results"].as_array().unwrap() {
            let name = r["command"].as_str().unwrap().to_string();
            let t = r["mean"].as_f64().unwrap();
            match fresh.iter_mut().find(|(n, _)| *n == name) {
                Some((_, times)) => times.push(t),
                None => fresh.push((name, vec![t])),
            }
        }
    }
    let mean = |name: &str| {
        fresh
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.iter().sum::<f64>() / t.len() as f64)
    };
    let range = |name: &str| {
        let t = &fresh.iter().find(|(n, _)| n == name).unwrap().1;
        let min = t.iter().copied().fold(f64::INFINITY, f64::min);
        let max = t.iter().copied().fold(0.0, f64::max);
        format!("{min:.3}–{max:.3}")
    };
    let json = |tag: &str| -> serde_json::Value {
        let line = report
            .serial
            .lines()
            .find_map(|l| l.split_once(&format!("CAIRN-JSON {tag} ")).map(|(_, j)| j))
            .unwrap_or_else(|| panic!("no {tag} results:\n{}", report.serial));
        serde_json::from_str(line).unwrap()
    };
    let cairn = mean("cairn").unwrap();
    let ip = mean("ip-batch").unwrap();
    println!("| fresh apply, {ROUNDS} rounds | mean s | min–max s | cairn / tool |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| cairn-net apply | {cairn:.3} | {} | 1.00 |",
        range("cairn")
    );
    println!(
        "| ip -batch | {ip:.3} | {} | {:.2} |",
        range("ip-batch"),
        cairn / ip
    );
    match mean("nmstatectl") {
        Some(nm) => println!(
            "| nmstatectl apply --kernel | {nm:.3} | {} | {:.2} |",
            range("nmstatectl"),
            cairn / nm
        ),
        None => println!("| nmstatectl apply --kernel | not built (set NMSTATECTL) | - | - |"),
    }
    for line in report
        .serial
        .lines()
        .filter(|l| l.contains("CAIRN-NMSTATE-FAILED"))
    {
        println!("nmstatectl did not apply the state: {line}");
    }
    for line in report.serial.lines().filter(|l| l.contains("CAIRN-PHASE")) {
        println!("{line}");
    }
    let noop = json("noop")["results"][0]["mean"].as_f64().unwrap();
    println!(
        "no-op re-apply: {noop:.3} s, {} netlink writes",
        report.value("noop-writes").unwrap_or("?")
    );
    assert_eq!(report.value("noop-writes"), Some("0"));
}
