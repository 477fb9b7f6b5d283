#!/usr/bin/env bash
# BENCHMARKS.md "Issue 9 — upgrades": cairn-node's slot writer (`upgrade::write_slot`, what an
# upgrade runs: bundle signature check, zstd frames decoded and hashed on every core, each
# written only after its SHA-256 matched the signed frame digests, in order, with direct I/O
# through the agent's writer, one fsync) against `dd conv=fsync` of the same uncompressed root
# image onto the same file, and
# `zstd -dc | dd` (the decode without any checking) for reference, side by side with hyperfine.
# Usage: node-daemon/bench/upgrade-write.sh [IMAGE_MIB]   (default 256)
# Env: RUNS (default 5), CAIRN_BIN=DIR (already built `cairn` and `examples/slot_write`, e.g.
# a debug target dir: say so next to the figures), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/../.."
MIB=${1:-256}
if [ -n "${CAIRN_BIN:-}" ]; then
  BIN=$CAIRN_BIN
else
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
  cargo build --release -q -p cairn-node-daemon --example slot_write
  cargo build --release -q -p cairn-installer --bin cairn
  BIN=$CARGO_TARGET_DIR/release
fi
WORK=$(mktemp -d /var/tmp/cairn-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# A root tree of MIB MiB of this machine's binaries (realistic to compress and hash), packed
# like `cairn image build` packs a slot, then made into a signed bundle by `cairn image derive`.
python3 - "$WORK/tree" "$MIB" <<'PY'
import os, shutil, sys
dest, left = sys.argv[1], int(sys.argv[2]) << 20
os.makedirs(dest, exist_ok=True)
n = 0
for top in ("/usr/lib", "/usr/bin"):
    for d, _, files in sorted(os.walk(top)):
        for f in sorted(files):
            p = os.path.join(d, f)
            if left <= 0 or not os.path.isfile(p) or os.path.islink(p):
                continue
            size = os.path.getsize(p)
            if size < 16 << 10:
                continue
            shutil.copyfile(p, os.path.join(dest, f"{n:06d}"))
            n += 1
            left -= size
PY
mkdir -p "$WORK/tree/etc" "$WORK/base"
echo bench > "$WORK/tree/etc/cairn-release"
mksquashfs "$WORK/tree" "$WORK/base.img" -reproducible -all-root -comp gzip -noappend -quiet -no-progress
zstd -q -3 --rm "$WORK/base.img" -o "$WORK/base/root.img.zst"
rm -rf "$WORK/tree"
"$BIN/cairn" image keygen --out "$WORK/release.key" 2>/dev/null
SOURCE_DATE_EPOCH=1700000000 "$BIN/cairn" image derive --from "$WORK/base" --version 2.0 \
  --signing-key "$WORK/release.key" --out "$WORK/update.bundle" 2>/dev/null
rm -rf "$WORK/base"
# The same bundle as earlier builds wrote it (format 1: one image digest, checked after the
# write), signed with the same key, for the same run.
python3 - "$WORK/update.bundle" "$WORK/format1.bundle" <<'PY'
import json, struct, sys
src, dst = sys.argv[1:]
data = open(src, "rb").read()
(length,) = struct.unpack("<I", data[12:16])
manifest = json.loads(data[16:16 + length])
del manifest["root_frames"]
body = json.dumps(manifest, indent=2).encode()
with open(dst, "wb") as out:
    out.write(b"CAIRNBDL" + struct.pack("<II", 1, len(body)) + body + bytes(64))
    out.write(data[16 + length + 64:])
PY
"$BIN/cairn" image sign --key "$WORK/release.key" "$WORK/format1.bundle" >/dev/null 2>&1
# The uncompressed root image dd copies: exactly the bytes the slot writer writes.
"$BIN/examples/slot_write" "$WORK/update.bundle" "$WORK/release.key.pub" "$WORK/root.img" 2>/dev/null
zstd -q -3 "$WORK/root.img" -o "$WORK/root.img.zst"
IMG=$(stat -c %s "$WORK/root.img")
truncate -s "$IMG" "$WORK/slot"
echo "load before: $(uptime)"
hyperfine --warmup 1 --runs "${RUNS:-5}" --export-markdown "$WORK/result.md" \
  --export-json "$WORK/result.json" \
  -n "dd" "dd if=$WORK/root.img of=$WORK/slot bs=1M conv=notrunc,fsync status=none" \
  -n "zstd -dc | dd" "zstd -dc $WORK/root.img.zst | dd of=$WORK/slot bs=1M conv=notrunc,fsync status=none" \
  -n "cairn-node write_slot" "$BIN/examples/slot_write $WORK/update.bundle $WORK/release.key.pub $WORK/slot 2>/dev/null" \
  -n "write_slot format 1" "$BIN/examples/slot_write $WORK/format1.bundle $WORK/release.key.pub $WORK/slot 2>/dev/null"
echo "load after: $(uptime)"
cat "$WORK/result.md"
python3 - "$WORK/result.json" "$IMG" <<'PY'
import json, sys
r = {x["command"]: x["mean"] for x in json.load(open(sys.argv[1]))["results"]}
mib = int(sys.argv[2]) / (1 << 20)
for name, mean in r.items():
    print(f"{name}: {mib / mean:.0f} MiB/s")
print(f"write_slot / dd throughput ratio: {r['dd'] / r['cairn-node write_slot']:.2f}x")
print(f"write_slot / zstd -dc | dd throughput ratio: {r['zstd -dc | dd'] / r['cairn-node write_slot']:.2f}x")
print(f"write_slot of a format-1 bundle (whole-image digest) / dd throughput ratio: {r['dd'] / r['write_slot format 1']:.2f}x")
PY
echo "root image: $((IMG >> 20)) MiB (squashfs of $MIB MiB of files), bundle $(( $(stat -c %s "$WORK/update.bundle") >> 20 )) MiB; $(nproc) cores"
