#!/usr/bin/env bash
# BENCHMARKS.md "Host networking": in a Debian-kernel QEMU guest, a fresh apply of 1 bond over
# 2 dummies + 500 VLANs (one address each) + 500 routes by cairn-net, `ip -batch` and (when it
# builds) `nmstatectl apply --kernel`, side by side in one hyperfine run; then the no-op
# re-apply time and its netlink write count.
set -euo pipefail
cd "$(dirname "$0")/../.."
NM_ROOT="${NM_ROOT:-$PWD/target/nmstatectl}"
if [ ! -x "$NM_ROOT/bin/nmstatectl" ]; then
  # The crates.io nmstatectl (nispor-based, `--kernel` mode needs no NetworkManager).
  cargo install --locked nmstatectl --root "$NM_ROOT" || echo "bench: nmstatectl did not build; comparing with ip -batch only" >&2
fi
[ -x "$NM_ROOT/bin/nmstatectl" ] && export NMSTATECTL="$NM_ROOT/bin/nmstatectl"
cargo build --release -p cairn-netplan --bin cairn-net
CAIRN_NET="${CARGO_TARGET_DIR:-$PWD/target}/release/cairn-net" \
  cargo test -p cairn-netplan --test bench -- --ignored --nocapture
