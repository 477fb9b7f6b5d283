#!/usr/bin/env bash
# BENCHMARKS.md "Install path": cairn-agent writing a root image (zstd stream + SHA-256 on two
# threads, GPT, ESP, boot code, seed filesystem, fsync) against `dd` of the same uncompressed
# image (conv=fsync) and `coreos-installer install` of the same zstd image, all onto the same
# loop device, side by side with hyperfine.
# Usage: image-build/bench/agent-write.sh [IMAGE_MIB]   (default 512)
# Env: RUNS (default 5), CAIRN_BIN=DIR (use already built binaries), COREOS_INSTALLER=PATH.
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${1:-512}
if [ -n "${CAIRN_BIN:-}" ]; then
  BIN=$CAIRN_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
  cargo build --release -q -p cairn-installer --bin cairn --bin cairn-agent
  BIN=$CARGO_TARGET_DIR/release
fi
# The reference installer, built like the other reference tools (scripts/setup).
COREOS=${COREOS_INSTALLER:-/opt/cairn/ref/bin/coreos-installer}
if [ ! -x "$COREOS" ] && [ -z "${SKIP_COREOS:-}" ]; then
  echo "coreos-installer missing: cargo install --locked --root /opt/cairn/ref coreos-installer" >&2
  cargo install -q --locked --root /opt/cairn/ref coreos-installer || true
fi
[ -x "$COREOS" ] || echo "coreos-installer: not available, measured without it" >&2
WORK=$(mktemp -d /var/tmp/cairn-bench.XXXXXX)
LOOP=
cleanup() { [ -z "$LOOP" ] || losetup -d "$LOOP"; rm -rf "$WORK"; }
trap cleanup EXIT

# The minimal build gives the ESP, GRUB and install.json; the root image is replaced by
# MIB MiB of real binaries (the shared libraries of this machine), so compression and
# hashing see realistic data.
SOURCE_DATE_EPOCH=1700000000 "$BIN/cairn" image build --config image-build/examples/minimal.yaml \
  --out "$WORK/out" >/dev/null
find /usr/lib /usr/bin -type f -size +16k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null \
  | head -c $((MIB << 20)) > "$WORK/root.img" || true
SRC="$WORK/out/pxe"
zstd -q -3 -f "$WORK/root.img" -o "$SRC/root.img.zst"
python3 - "$SRC/install.json" "$WORK/root.img" "$SRC/root.img.zst" <<'PY'
import hashlib, json, os, sys
manifest, img, zst = sys.argv[1:]
def digest(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return {"size": os.path.getsize(p), "sha256": h.hexdigest()}
m = json.load(open(manifest))
m["root_image"], m["root_payload"] = digest(img), digest(zst)
m["slot_size"] = (os.path.getsize(img) // (1 << 20) + 1) << 20
json.dump(m, open(manifest, "w"))
PY
# coreos-installer writes whole disk images: the same root image in a GPT partition at
# root-a's offset (33 MiB), compressed the same way.
truncate -s $(( MIB + 34 ))M "$WORK/cos.img"
sgdisk -q -n 1:$(( 33 << 11 )):0 -t 1:8300 "$WORK/cos.img"
dd if="$WORK/root.img" of="$WORK/cos.img" bs=1M seek=33 conv=notrunc status=none
zstd -q -3 -f --rm "$WORK/cos.img" -o "$WORK/cos.img.zst"
truncate -s $(( MIB * 2 + 512 ))M "$WORK/target.raw"
# -P: coreos-installer re-reads the partition table it wrote.
LOOP=$(losetup --find --show -P "$WORK/target.raw")
# root-a starts after 1 MiB + the ESP (32 MiB): dd writes to the same offset.
OFFSET=$(( (1 + 32) << 20 ))
# Each run starts from a blank-looking disk (the agent refuses one with a partition table).
fresh="dd if=/dev/zero of=$LOOP bs=1M count=1 conv=fsync status=none && sync"
COS=()
[ ! -x "$COREOS" ] || COS=(-n coreos-installer "$COREOS install $LOOP --image-file $WORK/cos.img.zst --insecure >/dev/null")
echo "load before: $(uptime)"
hyperfine --warmup 1 --runs "${RUNS:-5}" --export-markdown "$WORK/result.md" \
  --export-json "$WORK/result.json" --prepare "$fresh" \
  -n "dd" \
  "dd if=$WORK/root.img of=$LOOP bs=1M seek=$OFFSET oflag=seek_bytes conv=notrunc,fsync status=none" \
  -n "cairn-agent" \
  "$BIN/cairn-agent --source $SRC --target $LOOP --log-level warn >/dev/null" \
  "${COS[@]}"
echo "load after: $(uptime)"
cat "$WORK/result.md"
python3 - "$WORK/result.json" "$MIB" <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
mib = int(sys.argv[2])
for name, mean in r.items():
    print(f"{name}: {mib / mean:.0f} MiB/s")
print(f"cairn-agent / dd throughput ratio: {r['dd'] / r['cairn-agent']:.2f}x")
if "coreos-installer" in r:
    print(f"cairn-agent / coreos-installer throughput ratio: {r['coreos-installer'] / r['cairn-agent']:.2f}x")
PY
echo "image: $MIB MiB uncompressed, $(( $(stat -c %s "$SRC/root.img.zst") >> 20 )) MiB zstd; $(nproc) cores"
