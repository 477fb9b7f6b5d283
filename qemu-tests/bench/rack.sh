#!/usr/bin/env bash
# Issue 8 timings: one server against four in parallel, in the same run, on the same lab
# (5 servers: srv1 alone, then srv2..srv5 with --parallel 4), from `cairn rack provision`'s
# JSON lines (each carries a Unix time). Per server it splits the provisioning into:
#   pxe boot   power-on (state `installing`) to the agent's first report
#   write      first `writing` report to `verified` (stream, decompress, hash, write)
#   finish     `verified` to the agent's `completed` (boot loader, seed)
#   reboot     boot device back to disk (BMC)
#   first boot installed disk booting to cairn-node registered with the hub
# The unavoidable parts are the two boots and the image write; the rest is overhead.
# Usage: qemu-tests/bench/rack.sh [ARTIFACTS]   (binaries from PATH, e.g. target/release)
set -euo pipefail
work=$(mktemp -d /var/tmp/cairn-bench-rack.XXXXXX)
lab="$work/lab"
cleanup() { cairn-lab down --dir "$lab" >/dev/null 2>&1 || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
art=${1:-}
if [ -z "$art" ]; then
  art="$work/artifacts"
  t0=$(date +%s.%N)
  printf 'profile: minimal\nversion: 0.1.0\ncompatible_from: []\ndisk:\n  size_mib: 384\n  esp_mib: 32\n  slot_mib: 96\nkernel_args: console=ttyS0,115200 no_timer_check\n' > "$work/image.yaml"
  cairn image build --config "$work/image.yaml" --out "$art" > "$work/build.log" 2>&1
  awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "image build: %.1f s\n", b - a }'
fi
cairn-lab up --servers 5 --dir "$lab" --artifacts "$art" > "$work/up.log" 2>&1 &
for _ in $(seq 600); do [ -e "$lab/lab.json" ] && break; sleep 0.2; done
[ -e "$lab/lab.json" ] || { cat "$work/up.log"; exit 1; }
svc() { jq -r ".services.$1" "$lab/lab.json"; }
provision() {
  cairn-lab exec --dir "$lab" -- cairn rack provision "$lab/rack.yaml" --output json \
    --artifacts "$art" --hub "$(svc hub_url)" --boot-server "$(svc boot_server_url)" \
    --token-file "$(svc admin_token)" --hub-ca "$(svc hub_ca)" "$@"
}
report() {  # JSON lines on stdin -> one row per server, then the wall time
  jq -rs --arg run "$1" '
    def t(f): (map(select(f)) | first | .time);
    map(select(.time != null)) |
    (map(.time) | min) as $t0 | (map(.time) | max) as $t1 |
    (group_by(.server)[] | map(select(.event == "state")) | select(length > 0) |
      . as $e | $e[0].server as $s |
      t(.detail.state == "installing") as $on |
      t(.detail.state == "installing" and .detail.step != null) as $agent |
      t(.detail.step == "writing") as $w0 |
      t(.detail.step == "verified") as $w1 |
      t(.detail.state == "rebooting") as $done |
      t(.detail.state == "first-boot") as $fb |
      t(.detail.state == "provisioned") as $fin |
      [$run, $s, ($agent - $on), ($w1 - $w0), ($done - $w1), ($fb - $done), ($fin - $fb),
       ($fin - $t0), (($agent - $on) + ($w1 - $w0) + ($fin - $fb))]
      | map(if type == "number" then (. * 10 | round / 10 | tostring) else . end) | join("\t")),
    "\($run)\twall\t\(($t1 - $t0)*10|round/10)"'
}
printf 'run\tserver\tpxe-boot\twrite\tfinish\treboot\tfirst-boot\ttotal\ttwo-boots+write\n'
provision --only srv1 > "$work/one.jsonl"
report one < "$work/one.jsonl"
provision --only srv2 --only srv3 --only srv4 --only srv5 --parallel 4 > "$work/four.jsonl"
report four < "$work/four.jsonl"
one=$(jq -s 'map(select(.time != null)) | (map(.time) | max) - (map(.time) | min)' "$work/one.jsonl")
four=$(jq -s 'map(select(.time != null)) | (map(.time) | max) - (map(.time) | min)' "$work/four.jsonl")
awk -v a="$one" -v b="$four" 'BEGIN { printf "four in parallel / one: %.2fx (goal <= 1.3x)\n", b / a }'
