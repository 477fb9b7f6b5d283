#!/usr/bin/env bash
# Hub benchmark (BENCHMARKS.md, issue 5): the same heartbeat load against
#   A) one hub on the embedded store (redb), and
#   B) two hubs on a 3-member etcd cluster (Debian's etcd-server),
# from a load generator simulating N appliances, each with its own client certificate over
# its own kept-alive mTLS connection. Everything on loopback; every process is reaped.
# Knobs: HUB_BENCH_APPLIANCES (default 18000: the per-process file descriptor limit here is
# 20,000, and every appliance holds one connection on each side), HUB_BENCH_INTERVAL_MS
# (5400: 3,333 beats/s, the rate of 100,000 appliances at 30 s), HUB_BENCH_DURATION_S (60),
# HUB_BENCH_ETCD_APPLIANCES (default: the same N), HUB_BENCH_ETCD_INTERVAL_MS (same).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${HUB_BENCH_APPLIANCES:-18000}
INTERVAL_MS=${HUB_BENCH_INTERVAL_MS:-5400}
DURATION=${HUB_BENCH_DURATION_S:-60}
ETCD_N=${HUB_BENCH_ETCD_APPLIANCES:-$N}
ETCD_INTERVAL_MS=${HUB_BENCH_ETCD_INTERVAL_MS:-$INTERVAL_MS}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
PROFILE=${HUB_BENCH_PROFILE:-release}   # `debug` only for a quick look; figures come from release
if [ "$PROFILE" = release ]; then flags=(--release); else flags=(); fi
cargo build "${flags[@]}" --locked -p cairn-hub --bin cairn-hub --example loadgen >&2
HUB="$TARGET/$PROFILE/cairn-hub"
LOADGEN="$TARGET/$PROFILE/examples/loadgen"
ulimit -n "$(ulimit -Hn)"   # one connection per simulated appliance, on both ends

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_hub DATA OUT [args...]: serve on a free port; the URL goes to OUT.url once listening.
# Called in this shell, never inside $(...), so the hub's pid reaches `pids` for cleanup.
# Every simulated appliance connects from 127.0.0.1: the connection caps (10,000 in total,
# 512 per source by default) are lifted, as for a hub sized for this fleet. The load generator
# opens every connection before the clock starts and sends the first request only then: on a
# loaded machine that takes longer than the hub's 10 s allowance for a first request (meant
# for slowloris clients), which would cut the early connections, so it is raised.
start_hub() {
  local data=$1 out=$2; shift 2
  "$HUB" serve --data "$data" --listen 127.0.0.1:0 --registration-rate 100000000 \
    --max-connections 100000 --max-connections-per-source 100000 --header-read-timeout 600 \
    --heartbeat-interval 30 "$@" >"$out" 2>"$out.log" &
  pids+=($!)
  echo "$!" >"$out.pid"
  for _ in $(seq 1 300); do
    grep -q '^listening on ' "$out" 2>/dev/null && break
    sleep 0.1
  done
  sed -n 's/^listening on //p' "$out" >"$out.url"
}

# run_load DATA TOKEN N INTERVAL_MS [args...]
run_load() { "$LOADGEN" --ca "$1/ca.pem" --token-file "$work/$2.token" --appliances "$3" \
  --interval-ms "$4" --duration-s "$DURATION" "${@:5}"; }

echo "== hub: embedded store, one hub, $N appliances every ${INTERVAL_MS} ms for ${DURATION}s" >&2
"$HUB" init --data "$work/emb" --admin-token-file "$work/emb.token" >/dev/null
start_hub "$work/emb" "$work/emb.out"; url=$(cat "$work/emb.out.url")
embedded=$(run_load "$work/emb" emb "$N" "$INTERVAL_MS" --url "$url" --pid "hub=$(cat "$work/emb.out.pid")")
echo "$embedded"

kill "$(cat "$work/emb.out.pid")"; wait "$(cat "$work/emb.out.pid")" 2>/dev/null || true
echo "== hub: 3-member etcd, two hubs, $ETCD_N appliances every ${ETCD_INTERVAL_MS} ms" >&2
cluster=""; clients=()
for i in 0 1 2; do
  c=$(free_port); p=$(free_port)
  clients+=("http://127.0.0.1:$c"); peers[$i]="http://127.0.0.1:$p"
  cluster+="${cluster:+,}m$i=http://127.0.0.1:$p"
done
etcd_pids=()
for i in 0 1 2; do
  etcd --name "m$i" --data-dir "$work/etcd$i" --listen-client-urls "${clients[$i]}" \
    --advertise-client-urls "${clients[$i]}" --listen-peer-urls "${peers[$i]}" \
    --initial-advertise-peer-urls "${peers[$i]}" --initial-cluster "$cluster" \
    --initial-cluster-state new --initial-cluster-token "bench-$$" >"$work/etcd$i.log" 2>&1 &
  pids+=($!); etcd_pids+=("etcd$i=$!")
done
endpoints=$(IFS=,; echo "${clients[*]}")
for _ in $(seq 1 100); do
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1 && break
  sleep 0.2
done
"$HUB" init --data "$work/etc" --admin-token-file "$work/etc.token" --etcd-endpoints "$endpoints" >/dev/null
mkdir -p "$work/etc2"; cp "$work/etc"/*.pem "$work/etc"/*.key "$work/etc2/"
start_hub "$work/etc" "$work/a.out" --etcd-endpoints "$endpoints"; url_a=$(cat "$work/a.out.url")
start_hub "$work/etc2" "$work/b.out" --etcd-endpoints "$endpoints"; url_b=$(cat "$work/b.out.url")
etcd_run=$(run_load "$work/etc" etc "$ETCD_N" "$ETCD_INTERVAL_MS" --url "$url_a" --url "$url_b" \
  --pid "hub-a=$(cat "$work/a.out.pid")" --pid "hub-b=$(cat "$work/b.out.pid")" \
  $(printf -- '--pid %s ' "${etcd_pids[@]}"))
echo "$etcd_run"

python3 - "$embedded" "$etcd_run" <<'PY'
import json, sys
e, c = (json.loads(a) for a in sys.argv[1:3])
print(f"embedded/etcd: heartbeats/s x{e['heartbeats_per_s'] / max(c['heartbeats_per_s'], 1):.2f}, "
      f"p99 x{e['p99_ms'] / max(c['p99_ms'], 1e-9):.2f}, registrations/min x{e['registrations_per_min'] / max(c['registrations_per_min'], 1):.2f}")
PY
