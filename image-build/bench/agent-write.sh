#!/usr/bin/env bash
# BENCHMARKS.md "Install path": cairn-agent writing a root image (zstd stream, SHA-256,
# GPT, ESP, boot code, seed filesystem, fsync) against `dd` of the same uncompressed image
# onto the same target file (conv=fsync), side by side with hyperfine.
# Usage: image-build/bench/agent-write.sh [IMAGE_MIB]   (default 512)
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${1:-512}
# CAIRN_BIN=DIR uses already built binaries (e.g. a debug build) instead of building.
if [ -n "${CAIRN_BIN:-}" ]; then
  BIN=$CAIRN_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
  cargo build --release -q -p cairn-installer --bin cairn --bin cairn-agent
  BIN=$CARGO_TARGET_DIR/release
fi
WORK=$(mktemp -d /var/tmp/cairn-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

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
TARGET="$WORK/target.raw"
# root-a starts after 1 MiB + the ESP (32 MiB): dd writes to the same offset.
OFFSET=$(( (1 + 32) << 20 ))
fresh="rm -f $TARGET && truncate -s $(( MIB * 2 + 512 ))M $TARGET && sync"
hyperfine --warmup 1 --runs ${RUNS:-5} --export-markdown "$WORK/result.md" \
  --prepare "$fresh" \
  -n "dd (uncompressed image, fsync)" \
  "dd if=$WORK/root.img of=$TARGET bs=1M seek=$OFFSET oflag=seek_bytes conv=notrunc,fsync status=none" \
  -n "cairn-agent (zstd + SHA-256 + GPT/ESP/seed, fsync)" \
  "$BIN/cairn-agent --source $SRC --target $TARGET --log-level warn >/dev/null"
cat "$WORK/result.md"
echo "image: $MIB MiB uncompressed, $(( $(stat -c %s "$SRC/root.img.zst") >> 20 )) MiB zstd"
