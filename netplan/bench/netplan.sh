#!/usr/bin/env bash
# BENCHMARKS.md "Host networking": in a Debian-kernel QEMU guest, a fresh apply of 1 bond over
# 2 dummies + 500 VLANs (one address each) + 500 routes by cairn-net, `ip -batch` and (when it
# builds) `nmstatectl apply --kernel`, side by side in one hyperfine run; then the no-op
# re-apply time and its netlink write count.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The reference: crates.io nmstatectl (nispor-based; `--kernel` mode talks netlink itself and
# needs no NetworkManager), installed once under /opt/cairn/ref like the other reference tools.
# NMSTATECTL=path uses another build; NMSTATECTL= (empty) compares with ip -batch only.
NM_ROOT="${NM_ROOT:-/opt/cairn/ref}"
if [ -z "${NMSTATECTL+set}" ]; then
  if [ ! -x "$NM_ROOT/bin/nmstatectl" ]; then
    cargo install --locked --root "$NM_ROOT" nmstatectl ||
      echo "bench: nmstatectl did not build; comparing with ip -batch only" >&2
  fi
  NMSTATECTL="$NM_ROOT/bin/nmstatectl"
  [ -x "$NMSTATECTL" ] || NMSTATECTL=
fi
export NMSTATECTL
cargo build --release -p cairn-netplan --bin cairn-net
CAIRN_NET="${CARGO_TARGET_DIR:-$PWD/target}/release/cairn-net" \
  cargo test -p cairn-netplan --test bench -- --ignored --nocapture
