#!/bin/sh
# /sbin/init of the `minimal` appliance root (a read-only squashfs slot).
# Mounts the data partition (formatting it on first boot if it is blank), turns the install
# seed into /etc/cairn/node.yaml, brings up the network, announces itself on the beacon
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

# The seed the install agent wrote (seed/node.yaml with flat keys: hostname, hub_url,
# hub_ca_file, hub_ca_fingerprint, enrollment_token_file) becomes cairn-node's schema
# (hub: url, ca_file, ca_fingerprint, token_file). A seed already in that schema (it has a
# `hub:` section) is used as it is. The network is this init's (udhcpc), not cairn-node's.
seed=/var/lib/cairn/seed
key() { sed -n "s/^$1: *//p" "$seed/node.yaml" | tr -d '"' | head -n 1; }
if [ -f "$seed/node.yaml" ]; then
  if grep -q '^hub:' "$seed/node.yaml"; then
    cp "$seed/node.yaml" /etc/cairn/node.yaml
  else
    name=$(key hostname); [ -n "$name" ] || name=$(cat "$seed/hostname" 2>/dev/null)
    ca=$(key hub_ca_file); [ -z "$ca" ] && [ -f "$seed/hub-ca.pem" ] && ca=$seed/hub-ca.pem
    fp=$(key hub_ca_fingerprint)
    token=$(key enrollment_token_file)
    [ -z "$token" ] && [ -f "$seed/enrollment-token" ] && token=$seed/enrollment-token
    {
      echo "# Made by /sbin/init from $seed/node.yaml."
      [ -n "$name" ] && echo "hostname: $name"
      echo "hub:"
      echo "  url: $(key hub_url)"
      [ -n "$ca" ] && echo "  ca_file: $ca"
      [ -n "$fp" ] && echo "  ca_fingerprint: \"$fp\""
      [ -n "$token" ] && echo "  token_file: $token"
      echo "network:"
      echo "  manage: false"
    } > /etc/cairn/node.yaml
  fi
fi
hub=$(sed -n 's/^ *url: *//p; s/^hub_url: *//p' /etc/cairn/node.yaml 2>/dev/null | tr -d '"' | head -n 1)
name=$(sed -n 's/^hostname: *//p' /etc/cairn/node.yaml 2>/dev/null | tr -d '"')
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
  cairn-node run > /dev/console 2>&1
  echo "cairn-init: cairn-node exited ($?); restarting in 10 s" > /dev/console
  sleep 10
done
