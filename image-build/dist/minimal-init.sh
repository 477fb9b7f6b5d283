#!/bin/sh
# /sbin/init of the `minimal` appliance root (a read-only squashfs slot).
# Mounts the data partition (formatting it on first boot if it is blank), turns the install
# seed to cairn-node, brings up the network, announces itself on the beacon
# ("cairn-beacon version=V slot=S hub=URL") and runs `cairn-node run`, restarting it if it
# ever exits (this init is the appliance's whole service manager).
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# /dev, /proc and /sys were moved here by the initramfs.
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /etc/cairn

slot=$(sed -n 's/.*cairn\.slot=\([ab]\).*/\1/p' /proc/cmdline)
data=""
for u in /sys/class/block/*/uevent; do
  grep -qx PARTNAME=data "$u" && data="/dev/$(sed -n 's/^DEVNAME=//p' "$u")"
done
if [ -n "$data" ]; then
  mount -t ext4 "$data" /var/lib/cairn 2>/dev/null || {
    mke2fs -q -L cairn-data "$data" && mount -t ext4 "$data" /var/lib/cairn
  }
fi

# A/B upgrades: cairn-node writes the other slot by partition label (no udev here, so the
# links are made now), edits GRUB's environment on the ESP, and reads the image's own
# settings and release keys (/usr/lib/cairn/node.d, copied since /etc/cairn is a tmpfs).
mkdir -p /dev/disk/by-partlabel /etc/cairn/node.d
for u in /sys/class/block/*/uevent; do
  p=$(sed -n 's/^PARTNAME=//p' "$u"); [ -n "$p" ] || continue
  ln -sf "/dev/$(sed -n 's/^DEVNAME=//p' "$u")" "/dev/disk/by-partlabel/$p"
done
[ -e /dev/disk/by-partlabel/esp ] && mount -t vfat -o noexec,nosuid,nodev /dev/disk/by-partlabel/esp /boot/efi
cp /usr/lib/cairn/node.d/*.yaml /etc/cairn/node.d/ 2>/dev/null

# The seed the install agent wrote is a cairn-node seed (node.yaml in cairn-node's schema
# and the files it names): `cairn-node run --seed-dir` below copies it into /etc/cairn, a
# tmpfs here, so every boot starts from the seed. The network is this init's (udhcpc), not
# cairn-node's: a drop-in says so. The hub URL and hostname are read only for the beacon.
seed=/var/lib/cairn/seed
if [ -f "$seed/node.yaml" ]; then
  mkdir -p /etc/cairn/node.d
  printf 'network:\n  manage: false\n' > /etc/cairn/node.d/10-minimal-image.yaml
fi
value() { sed -n "s/^$1: *//p" "$seed/node.yaml" 2>/dev/null | tr -d "\"'" | head -n 1; }
hub=$(value ' *url')
name=$(value hostname); [ -n "$name" ] || name=$(cat "$seed/hostname" 2>/dev/null)
[ -n "$name" ] && hostname "$name"

for n in /sys/class/net/*; do
  n=${n##*/}; [ "$n" = lo ] && continue
  ip link set "$n" up
  udhcpc -i "$n" -n -q -t 5 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1
done
line="cairn-beacon version=$(cat /etc/cairn-release) slot=${slot:-?} hub=${hub:-none}"
echo "$line" > /dev/console
# The beacon goes to QEMU's user-network guestfwd address; elsewhere nobody listens.
(echo "$line" | timeout 30 nc 10.0.2.100 9 2>/dev/null) &

# cairn-node registers with the hub (retrying while it is unreachable), then heartbeats.
# Without a configuration it starts the first-boot wizard instead.
mkdir -p /run/cairn
while true; do
  echo "cairn-init: starting cairn-node" > /dev/console
  cairn-node run --seed-dir "$seed" > /dev/console 2>&1
  echo "cairn-init: cairn-node exited ($?); restarting in 10 s" > /dev/console
  sleep 10
done
