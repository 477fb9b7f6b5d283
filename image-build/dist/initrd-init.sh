#!/bin/sh
# /init of cairn's initramfs (minimal profile and install environment).
# Two jobs, chosen by the kernel command line:
#   root=PARTLABEL=root-a        mount that slot's squashfs and switch_root into it;
#   cairn.install=http|cdrom     run cairn-agent to install this machine.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /run /tmp /newroot /media/cdrom
mount -t tmpfs tmpfs /run

arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1="*) echo "${w#*=}"; return;; esac; done; }
say() { echo "cairn-initrd: $*" > /dev/console; }
fail() {
  say "$*"
  case "$(arg cairn.on_fail)" in
    poweroff) sync; poweroff -f ;;
    reboot) sync; reboot -f ;;
  esac
  exec sh
}
# Device node of the partition whose GPT name is $1, waiting for the disk to appear.
by_partname() {
  i=0
  while [ $i -lt 100 ]; do
    for u in /sys/class/block/*/uevent; do
      if grep -qx "PARTNAME=$1" "$u"; then echo "/dev/$(sed -n 's/^DEVNAME=//p' "$u")"; return 0; fi
    done
    i=$((i + 1)); sleep 0.1
  done
  return 1
}
net_up() {
  for n in /sys/class/net/*; do
    n=${n##*/}; [ "$n" = lo ] && continue
    ip link set "$n" up
    udhcpc -i "$n" -n -q -t 8 -T 1 -s /etc/udhcpc.script >/dev/null 2>&1 && return 0
  done
  return 1
}

for m in $(cat /etc/modules); do modprobe -q "$m"; done
ip link set lo up

mode=$(arg cairn.install)
case "$mode" in
  "")
    root=$(arg root)
    dev=$(by_partname "${root#PARTLABEL=}") || fail "no partition named ${root#PARTLABEL=}"
    mount -t squashfs -o ro "$dev" /newroot || fail "cannot mount $dev"
    umount /run
    for m in dev proc sys; do mount --move /$m /newroot/$m; done
    exec switch_root /newroot /sbin/init
    ;;
  http)
    net_up || fail "no DHCP answer on any interface"
    export CAIRN_INSTALL_NONCE="$(arg cairn.nonce)"
    cairn-agent --server "$(arg cairn.server)" --mac "$(arg cairn.mac)" --reboot
    ;;
  cdrom)
    i=0
    while ! dev=$(findfs LABEL=CAIRN-INSTALL 2>/dev/null) && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.1; done
    [ -n "$dev" ] || fail "no CD labelled CAIRN-INSTALL"
    mount -t iso9660 -o ro "$dev" /media/cdrom || fail "cannot mount $dev"
    cairn-agent --source /media/cdrom/cairn --reboot
    ;;
  *) fail "unknown cairn.install=$mode" ;;
esac
fail "install failed (exit $?)"
