#!/usr/bin/env bash
# BENCHMARKS.md "Install path": cairn-agent writing a root image (zstd frames decoded and
# hashed on every core, each written only after its SHA-256 matched install.json's frame
# digests, GPT, ESP, boot code, seed filesystem, fsync) against
# `dd` of the same uncompressed image (conv=fsync) and `coreos-installer install` of the same
# image (--insecure: it checks no digest, the agent does), all onto the same loop device,
# side by side with hyperfine.
#
# Two root images, each measured in its own hyperfine run:
# - squashfs: what cairn ships in a slot (mksquashfs -comp gzip, as `cairn image build`) of
#   this machine's binaries; zstd barely shrinks it, so decoding costs little;
# - raw: the same binaries uncompressed, the worst case for the agent (zstd shrinks them 3x,
#   so every byte written is decoded).
# Both are compressed as the build compresses root.img.zst: independent zstd -3 frames of
# 4 MiB of image each, stating their size (`cairn_image_build::stream::compress_frames`).
# Usage: image-build/bench/agent-write.sh [IMAGE_MIB]   (default 512: size of each image)
# Env: RUNS (default 5), CAIRN_BIN=DIR (use already built binaries), COREOS_INSTALLER=PATH,
#      SKIP_COREOS=1, PAYLOADS (default "squashfs raw").
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
[ -x "$COREOS" ] && [ -z "${SKIP_COREOS:-}" ] || COREOS=
[ -n "$COREOS" ] || echo "coreos-installer: not available, measured without it" >&2
WORK=$(mktemp -d /var/tmp/cairn-bench.XXXXXX)
LOOP=
UDEVD=
cleanup() {
  [ -z "$LOOP" ] || losetup -d "$LOOP"
  if [ -n "$UDEVD" ]; then udevadm control --exit || true; rm -rf /run/udev; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
# coreos-installer waits for udev to settle after writing the partition table: run udevd for
# the benchmark's duration where none runs (containers, CI), and stop it afterwards.
if [ -n "$COREOS" ] && [ ! -S /run/udev/control ]; then
  /lib/systemd/systemd-udevd --daemon >/dev/null 2>&1 && UDEVD=1
fi

# The minimal build gives the ESP, GRUB and install.json; its root image is replaced below.
SOURCE_DATE_EPOCH=1700000000 "$BIN/cairn" image build --config image-build/examples/minimal.yaml \
  --out "$WORK/out" >/dev/null
SRC="$WORK/out/pxe"

# This machine's binaries, in a fixed order, until the image has MIB MiB.
binaries() {
  find /usr/lib /usr/bin -type f -size +16k -print0 2>/dev/null | sort -z | xargs -0 cat 2>/dev/null
}
make_image() { # NAME -> $WORK/NAME.img of exactly MIB MiB
  case $1 in
    raw) binaries | head -c $((MIB << 20)) > "$WORK/raw.img" || true ;;
    squashfs)
      # gzip shrinks binaries about 2.5x: pack 3x the image's size in 1 MiB files, then cut
      # the filesystem at MIB MiB (a bench image: nobody mounts it, its bytes are real).
      mkdir -p "$WORK/tree"
      binaries | head -c $((MIB * 3 << 20)) | split -b 1M -a 5 - "$WORK/tree/f." || true
      mksquashfs "$WORK/tree" "$WORK/big.sqfs" -reproducible -all-root -comp gzip -noappend \
        -quiet -no-progress >/dev/null
      rm -rf "$WORK/tree"
      head -c $((MIB << 20)) "$WORK/big.sqfs" > "$WORK/squashfs.img"
      rm -f "$WORK/big.sqfs"
      [ "$(stat -c %s "$WORK/squashfs.img")" -eq $((MIB << 20)) ] \
        || { echo "not enough binaries on this machine for a $MIB MiB squashfs" >&2; exit 1; }
      ;;
  esac
}
compress_frames() { # IMAGE OUT: independent frames of 4 MiB of image, as the build writes
  mkdir -p "$WORK/frames"
  split -b 4M -a 5 -d "$1" "$WORK/frames/"
  for f in "$WORK/frames"/*; do zstd -q -3 --check -c "$f"; done > "$2"
  rm -rf "$WORK/frames"
}

truncate -s $(( MIB * 2 + 512 ))M "$WORK/target.raw"
# -P: coreos-installer re-reads the partition table it wrote.
LOOP=$(losetup --find --show -P "$WORK/target.raw")
# root-a starts after 1 MiB + the ESP (32 MiB): dd writes to the same offset.
OFFSET=$(( (1 + 32) << 20 ))
# Each run starts from a blank-looking disk (the agent refuses one with a partition table).
fresh="dd if=/dev/zero of=$LOOP bs=1M count=1 conv=fsync status=none && sync"

for PAYLOAD in ${PAYLOADS:-squashfs raw}; do
  make_image "$PAYLOAD"
  IMG=$WORK/$PAYLOAD.img
  compress_frames "$IMG" "$SRC/root.img.zst"
  rm -rf "$WORK/format1"
  python3 - "$SRC/install.json" "$IMG" "$SRC/root.img.zst" "$WORK/format1" <<'PY'
import hashlib, json, os, struct, sys
manifest, img, zst = sys.argv[1:4]
FRAME = 4 << 20
def digest(p):
    h = hashlib.sha256()
    with open(p, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            h.update(chunk)
    return {"size": os.path.getsize(p), "sha256": h.hexdigest()}
def frames(p):
    # As cairn_formats::stream::FrameDigests (docs/images.md); the agent refuses a list whose
    # root does not match, so a drift from it fails the benchmark loudly.
    with open(p, 'rb') as f:
        digests = [hashlib.sha256(c).digest() for c in iter(lambda: f.read(FRAME), b'')]
    root = hashlib.sha256(b"cairn frame digests v1\n" + struct.pack("<Q", FRAME) + b"".join(digests))
    return {"frame_size": FRAME, "root": root.hexdigest(), "frames": [d.hex() for d in digests]}
m = json.load(open(manifest))
m["root_image"], m["root_payload"] = digest(img), digest(zst)
m["root_frames"] = frames(img)
m["slot_size"] = (os.path.getsize(img) // (1 << 20) + 1) << 20
json.dump(m, open(manifest, "w"))
# What earlier builds wrote (format 1: one digest per image, checked after the write), for
# the same run: the same files, hard-linked, with that install.json.
for field in ("format", "root_frames", "esp_frames"):
    m.pop(field, None)
os.makedirs(sys.argv[4], exist_ok=True)
for name in os.listdir(os.path.dirname(manifest)):
    if name != "install.json":
        os.link(os.path.join(os.path.dirname(manifest), name), os.path.join(sys.argv[4], name))
json.dump(m, open(os.path.join(sys.argv[4], "install.json"), "w"))
PY
  COS=()
  if [ -n "$COREOS" ]; then
    # coreos-installer writes whole disk images: the same root image in a GPT partition at
    # root-a's offset (33 MiB), zstd -3 (one frame: its decoder is sequential).
    truncate -s $(( MIB + 34 ))M "$WORK/cos.img"
    sgdisk -q -n 1:$(( 33 << 11 )):0 -t 1:8300 "$WORK/cos.img"
    dd if="$IMG" of="$WORK/cos.img" bs=1M seek=33 conv=notrunc status=none
    zstd -q -3 -f --rm "$WORK/cos.img" -o "$WORK/cos.img.zst"
    COS=(-n coreos-installer "$COREOS install $LOOP --image-file $WORK/cos.img.zst --insecure >/dev/null")
  fi
  echo "== $PAYLOAD image: $MIB MiB, $(( $(stat -c %s "$SRC/root.img.zst") >> 20 )) MiB zstd; $(nproc) cores"
  echo "load before: $(uptime)"
  hyperfine --warmup 1 --runs "${RUNS:-5}" --export-markdown "$WORK/$PAYLOAD.md" \
    --export-json "$WORK/$PAYLOAD.json" --prepare "$fresh" \
    -n "dd" \
    "dd if=$IMG of=$LOOP bs=1M seek=$OFFSET oflag=seek_bytes conv=notrunc,fsync status=none" \
    -n "cairn-agent" \
    "$BIN/cairn-agent --source $SRC --target $LOOP --log-level warn >/dev/null" \
    -n "cairn-agent format 1" \
    "$BIN/cairn-agent --source $WORK/format1 --target $LOOP --log-level warn >/dev/null" \
    "${COS[@]}"
  echo "load after: $(uptime)"
  cat "$WORK/$PAYLOAD.md"
  python3 - "$WORK/$PAYLOAD.json" "$MIB" "$PAYLOAD" <<'PY'
import json, sys
results = json.load(open(sys.argv[1]))["results"]
mib, payload = int(sys.argv[2]), sys.argv[3]
# Medians too: one stalled run (the host's disk, another VM) moves a mean of ten a lot.
for stat in ("mean", "median"):
    r = {x["command"]: x[stat] for x in results}
    speeds = ", ".join(f"{name} {mib / t:.0f} MiB/s" for name, t in r.items())
    print(f"{payload} ({stat}): {speeds}")
    print(f"{payload} ({stat}): cairn-agent / dd throughput ratio: {r['dd'] / r['cairn-agent']:.2f}x")
    print(f"{payload} ({stat}): cairn-agent with a format-1 install.json (whole-image digest) / dd: "
          f"{r['dd'] / r['cairn-agent format 1']:.2f}x")
    if "coreos-installer" in r:
        print(f"{payload} ({stat}): cairn-agent / coreos-installer throughput ratio: "
              f"{r['coreos-installer'] / r['cairn-agent']:.2f}x")
PY
  rm -rf "$IMG" "$WORK/cos.img.zst" "$WORK/format1"
done
