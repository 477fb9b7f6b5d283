#!/usr/bin/env bash
# Benchmark: `cairn bmc status` across N emulated IPMI BMCs (one OpenIPMI ipmi_sim process
# each, on loopback) against a shell loop of `ipmitool -I lanplus -C 3 chassis power status`
# over the same BMCs, in the same run, with hyperfine.
#   hardware/bench/bmc-status.sh [N]        (default N=200)
# Runs `cairn bmc` from PATH (scripts/bench builds it), else the standalone example
# (cargo build --release -p cairn-hardware --example bmc); BMC_CMD overrides both.
set -euo pipefail
N=${1:-${BMC_BENCH_N:-200}}
if [ -n "${BMC_CMD:-}" ]; then :
elif command -v cairn >/dev/null; then BMC_CMD="cairn bmc"
else BMC_CMD="${CARGO_TARGET_DIR:-target}/release/examples/bmc"; fi
PARALLEL=${BMC_BENCH_PARALLEL:-128}
for tool in ipmi_sim ipmitool hyperfine python3; do
  command -v "$tool" >/dev/null || { echo "bench: $tool missing (run scripts/setup)" >&2; exit 2; }
done
[ -x "${BMC_CMD%% *}" ] || command -v "${BMC_CMD%% *}" >/dev/null || { echo "bench: $BMC_CMD not built (cargo build --release -p cairn-hardware --example bmc)" >&2; exit 2; }

work=$(mktemp -d /tmp/cairn-bmc-bench.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# N free UDP ports on loopback, chosen by the kernel.
mapfile -t ports < <(python3 - "$N" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); socks.append(s)
for s in socks: print(s.getsockname()[1])
PY
)

printf 'username: admin\npassword: bench-pw\n' > "$work/creds.yaml"
echo "servers:" > "$work/rack.yaml"
for i in "${!ports[@]}"; do
  d="$work/bmc$i"; mkdir -p "$d/state"; port=${ports[$i]}
  cat > "$d/lan.conf" <<CONF
name "bench$i"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 $port
    priv_limit admin
    allowed_auths_admin none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_callback none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  user 1 true  ""      ""         user  10 none md2 md5 straight
  user 2 true  "admin" "bench-pw" admin 10 none md2 md5 straight
CONF
  printf 'mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n' > "$d/cmds"
  ipmi_sim -n -c "$d/lan.conf" -f "$d/cmds" -s "$d/state" >/dev/null 2>&1 &
  pids+=($!)
  printf '  - name: bmc%d\n    bmc: ipmi://admin@127.0.0.1:%d\n    credentials: creds.yaml\n' "$i" "$port" >> "$work/rack.yaml"
done
export IPMI_PASSWORD=bench-pw
# Wait until the last one answers (they start in order).
for _ in $(seq 100); do
  ipmitool -I lanplus -C 3 -H 127.0.0.1 -p "${ports[-1]}" -U admin -E -N 1 -R 1 chassis power status >/dev/null 2>&1 && break
  sleep 0.2
done
{
  echo "#!/usr/bin/env bash"
  for p in "${ports[@]}"; do
    echo "ipmitool -I lanplus -C 3 -H 127.0.0.1 -p $p -U admin -E chassis power status"
  done
} > "$work/ipmitool-loop.sh"

$BMC_CMD status --inventory "$work/rack.yaml" --ipmi-cipher-suite 3 --parallel "$PARALLEL" --output json > "$work/check.json"
ok=$(grep -c '"result": "off"' "$work/check.json" || true)
echo "bench: cairn reached $ok of $N BMCs"
[ "$ok" = "$N" ] || { echo "bench: not every BMC answered; see $work/check.json" >&2; exit 1; }

hyperfine --warmup "${BMC_BENCH_WARMUP:-1}" --runs "${BMC_BENCH_RUNS:-5}" --export-markdown "$work/result.md" \
  -n "cairn bmc status ($N BMCs, --parallel $PARALLEL)" \
  "$BMC_CMD --log-level error status --inventory $work/rack.yaml --ipmi-cipher-suite 3 --parallel $PARALLEL --output json > /dev/null" \
  -n "ipmitool loop ($N BMCs)" \
  "bash $work/ipmitool-loop.sh > /dev/null"
cat "$work/result.md"
