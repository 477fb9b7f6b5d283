#!/usr/bin/env bash
# Fleet API benchmark (BENCHMARKS.md, issue 20 item 2), with FLEET_BENCH_RECORDS appliance
# records (default 100,000) seeded straight through the store API (`fleetbench seed`):
#   A) one hub on the embedded store, B) one hub on a 1-member etcd: for each, p50/p99 of a
#      page of 500 (first, middle by cursor, with a selector), the latency of a watch event
#      after a label change, and the hub's RSS on an empty store and after one pass over
#      every page of the full one (memory per record = the difference / records);
#   C) an upgrade campaign over FLEET_BENCH_CAMPAIGN (default 10,000) simulated appliances
#      in batches of FLEET_BENCH_BATCH (500), driven on etcd: the time of each driver pass.
# Everything on loopback; every process is reaped; the scratch directory is removed.
set -euo pipefail
cd "$(dirname "$0")/../.."
RECORDS=${FLEET_BENCH_RECORDS:-100000}
CAMPAIGN=${FLEET_BENCH_CAMPAIGN:-10000}
BATCH=${FLEET_BENCH_BATCH:-500}
SAMPLES=${FLEET_BENCH_SAMPLES:-50}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
PROFILE=${HUB_BENCH_PROFILE:-release}   # `debug` only for a quick look; figures come from release
if [ "$PROFILE" = release ]; then flags=(--release); else flags=(); fi
cargo build "${flags[@]}" --locked -p cairn-hub --bin cairn-hub --example fleetbench >&2
HUB="$TARGET/$PROFILE/cairn-hub"
BENCH="$TARGET/$PROFILE/examples/fleetbench"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_hub DATA OUT [args...]: serve on a free port; URL to OUT.url, pid to OUT.pid.
start_hub() {
  local data=$1 out=$2; shift 2
  rm -f "$out" "$out.url"   # a restart must not read the previous run's address
  "$HUB" serve --data "$data" --listen 127.0.0.1:0 "$@" >"$out" 2>"$out.log" &
  pids+=($!)
  echo "$!" >"$out.pid"
  for _ in $(seq 1 300); do
    grep -q '^listening on ' "$out" 2>/dev/null && break
    sleep 0.1
  done
  sed -n 's/^listening on //p' "$out" >"$out.url"
}
stop_hub() { kill "$(cat "$1.pid")"; wait "$(cat "$1.pid")" 2>/dev/null || true; }
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$(cat "$1.pid")/status"; }
measure() { "$BENCH" measure --url "$(cat "$1.url")" --ca "$2/ca.pem" --token-file "$3" \
  --pid "$(cat "$1.pid")" --samples "$SAMPLES"; }
# empty_rss OUT DATA TOKEN: the hub's RSS after a list on its empty store.
empty_rss() {
  "$BENCH" measure --url "$(cat "$1.url")" --ca "$2/ca.pem" --token-file "$3" \
    --pid "$(cat "$1.pid")" --samples 1 >/dev/null 2>&1 || true
  rss "$1"
}

echo "== fleet: embedded store, $RECORDS records" >&2
"$HUB" init --data "$work/emb" --admin-token-file "$work/emb.token" >/dev/null
start_hub "$work/emb" "$work/emb.out"
emb_empty=$(empty_rss "$work/emb.out" "$work/emb" "$work/emb.token")
echo "{\"embedded_empty_rss_kib\": $emb_empty}"
stop_hub "$work/emb.out"
"$BENCH" seed --embedded "$work/emb/hub.redb" --records "$RECORDS" >&2
start_hub "$work/emb" "$work/emb.out"
embedded=$(measure "$work/emb.out" "$work/emb" "$work/emb.token")
echo "$embedded"
stop_hub "$work/emb.out"

echo "== fleet: 1-member etcd, one hub, $RECORDS records" >&2
c=$(free_port); p=$(free_port)
etcd --name m0 --data-dir "$work/etcd" --listen-client-urls "http://127.0.0.1:$c" \
  --advertise-client-urls "http://127.0.0.1:$c" --listen-peer-urls "http://127.0.0.1:$p" \
  --initial-advertise-peer-urls "http://127.0.0.1:$p" --initial-cluster "m0=http://127.0.0.1:$p" \
  --quota-backend-bytes 8589934592 >"$work/etcd.log" 2>&1 &
pids+=($!)
endpoint="http://127.0.0.1:$c"
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoint" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
"$HUB" init --data "$work/etc" --admin-token-file "$work/etc.token" --etcd-endpoints "$endpoint" >/dev/null
start_hub "$work/etc" "$work/etc.out" --etcd-endpoints "$endpoint"
etc_empty=$(empty_rss "$work/etc.out" "$work/etc" "$work/etc.token")
echo "{\"etcd_empty_rss_kib\": $etc_empty}"
"$BENCH" seed --etcd "$endpoint" --records "$RECORDS" >&2
etcd_run=$(measure "$work/etc.out" "$work/etc" "$work/etc.token")
echo "$etcd_run"
stop_hub "$work/etc.out"

echo "== fleet: campaign over $CAMPAIGN appliances in batches of $BATCH on etcd" >&2
campaign=$("$BENCH" campaign --etcd "$endpoint" --etcd-prefix /campaign-bench/ \
  --appliances "$CAMPAIGN" --batch "$BATCH")
echo "$campaign"

python3 - "$RECORDS" "$emb_empty" "$embedded" "$etc_empty" "$etcd_run" "$campaign" <<'PY'
import json, sys
n = int(sys.argv[1])
for name, empty, run in (("embedded", sys.argv[2], sys.argv[3]), ("etcd", sys.argv[4], sys.argv[5])):
    r = json.loads(run)
    per = (r["rss_after_pass_kib"] - int(empty)) * 1024 / n
    print(f"{name}: page of 500 p50/p99 ms: first {r['first_page']['p50_ms']:.1f}/{r['first_page']['p99_ms']:.1f}, "
          f"middle {r['middle_page']['p50_ms']:.1f}/{r['middle_page']['p99_ms']:.1f}, "
          f"selector {r['selector_page']['p50_ms']:.1f}/{r['selector_page']['p99_ms']:.1f}; "
          f"watch event {r['watch_event_after_label']['p50_ms']:.1f}/{r['watch_event_after_label']['p99_ms']:.1f}; "
          f"RSS {int(empty)//1024} MiB empty -> {r['rss_after_pass_kib']//1024} MiB with {r['records']} records "
          f"({per:.0f} bytes/record)")
c = json.loads(sys.argv[6])
print(f"campaign: {c['appliances']} appliances, batches of {c['batch']}: driver pass p50/p99 "
      f"{c['driver_pass']['p50_ms']:.0f}/{c['driver_pass']['p99_ms']:.0f} ms over {c['passes']} passes, "
      f"whole campaign {c['campaign_total_s']:.1f} s")
PY
