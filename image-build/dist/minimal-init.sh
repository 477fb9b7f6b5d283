#!/bin/sh
# /sbin/init of the `minimal` appliance root (a read-only squashfs slot).
# Mounts the data partition (formatting it on first boot if it is blank), brings up the
# network, and announces itself on the beacon: "cairn-beacon version=V slot=S hub=URL".
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
  [ -f /var/lib/cairn/seed/node.yaml ] && cp /var/lib/cairn/seed/node.yaml /etc/cairn/node.yaml
fi
hub=$(sed -n 's/^hub_url: *//p' /etc/cairn/node.yaml 2>/dev/null | tr -d '"')

for n in /sys/class/net/*; do
  n=${n##*/}; [ "$n" = lo ] && continue
  ip link set "$n" up
  udhcpc -i "$n" -n -q -t 5 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1
done
line="cairn-beacon version=$(cat /etc/cairn-release) slot=${slot:-?} hub=${hub:-none}"
echo "$line" > /dev/console
echo "$line" | timeout 30 nc 10.0.2.100 9 2>/dev/null
exec sh -c 'while true; do sleep 3600; done'
