#!/usr/bin/env bash
# Footprint of `cairn-node run` after registration (issue 7, BENCHMARKS.md "node daemon
# footprint"): RSS and CPU over DURATION seconds (default 600) against a real cairn-hub on
# loopback, heartbeating every 30 s. Reference in the same run: `sleep`, the smallest idle
# process there is, sampled the same way, so the ratio shows what the daemon adds.
# Usage: node-daemon/bench/footprint.sh [DURATION]   (binaries from $BIN, default target/release;
# HUB_BIN overrides where cairn-hub comes from: the hub's build does not change the node's figures)
set -euo pipefail
DURATION=${1:-600}
BIN=${BIN:-$PWD/target/release}
HUB_BIN=${HUB_BIN:-$BIN}
work=$(mktemp -d)
cleanup() { kill "${hub:-}" "${node:-}" "${ref:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

"$HUB_BIN/cairn-hub" init --data "$work/hub" --output json > "$work/init.json"
fp=$(sed -n 's/.*"ca_fingerprint":"\([^"]*\)".*/\1/p' "$work/init.json")
admin=$(sed -n 's/.*"admin_token":"\([^"]*\)".*/\1/p' "$work/init.json")
"$HUB_BIN/cairn-hub" serve --data "$work/hub" --listen 127.0.0.1:0 --heartbeat-interval 30 > "$work/hub.out" 2> "$work/hub.log" &
hub=$!
until grep -q 'listening on' "$work/hub.out"; do sleep 0.1; done
url=$(sed -n 's/^listening on //p' "$work/hub.out")
token=$(curl -sS --cacert "$work/hub/ca.pem" -H "Authorization: Bearer $admin" \
  -d '{"site":"bench"}' -H 'content-type: application/json' "$url/v1/tokens" |
  sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
mkdir -p "$work/node/etc/cairn"
printf '%s\n' "$token" > "$work/node/etc/cairn/token"
cat > "$work/node/etc/cairn/node.yaml" <<YAML
hostname: bench-node
hub:
  url: $url
  ca_fingerprint: "$fp"
  token_file: /etc/cairn/token
network:
  manage: false
YAML
"$BIN/cairn-node" --log-level warn --root "$work/node" run &
node=$!
until "$BIN/cairn-node" --root "$work/node" status --output json 2>/dev/null | grep -q '"phase": "running"'; do sleep 0.2; done
sleep 3   # let registration's allocations settle
sleep "$DURATION" & ref=$!

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
n0=$(cpu $node); r0=$(cpu $ref); t0=$(date +%s.%N)
max_node=0; max_ref=0
end=$(( $(date +%s) + DURATION ))
while [ "$(date +%s)" -lt "$end" ]; do
  a=$(rss $node); b=$(rss $ref)
  [ "$a" -gt "$max_node" ] && max_node=$a
  [ "$b" -gt "$max_ref" ] && max_ref=$b
  sleep 5
done
n1=$(cpu $node); r1=$(cpu $ref 2>/dev/null || echo "$r0"); t1=$(date +%s.%N)
awk -v n0="$n0" -v n1="$n1" -v r0="$r0" -v r1="$r1" -v t0="$t0" -v t1="$t1" -v hz="$ticks" \
    -v mn="$max_node" -v mr="$max_ref" -v d="$DURATION" 'BEGIN {
  el = t1 - t0
  cn = 100 * (n1 - n0) / hz / el; cr = 100 * (r1 - r0) / hz / el
  printf "window           %d s (heartbeat every 30 s)\n", d
  printf "cairn-node RSS   max %.1f MB   (sleep: %.1f MB, ratio %.1fx)\n", mn/1024, mr/1024, mn/mr
  printf "cairn-node CPU   %.3f %% of one core   (sleep: %.3f %%)\n", cn, cr
}'
