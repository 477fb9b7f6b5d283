#!/usr/bin/env bash
# Tunnel benchmark (BENCHMARKS.md, issue 17): one 256 MiB response through the appliance
# tunnel (yamux over a loopback TCP connection) against the same HTTP/1.1 server over a direct
# loopback TCP connection, and the time per small request: a new tunnel stream each, against a
# new TCP connection each and one kept alive. TLS is left out on both sides, so the figures
# are the multiplexer's cost. The machine is shared: run it three times, take the median.
set -euo pipefail
cd "$(dirname "$0")/../.."
PROFILE=${HUB_BENCH_PROFILE:-release}   # `debug` only for a quick look; figures come from release
if [ "$PROFILE" = release ]; then flags=(--release); else flags=(); fi
for _ in 1 2 3; do
  cargo test -q "${flags[@]}" --locked -p cairn-hub --lib tunnel::tests::bench_tunnel_against_direct_tcp \
    -- --ignored --nocapture 2>&1 | grep '^tunnel bench:'
done
