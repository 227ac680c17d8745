#!/bin/sh
# PID 1 of every test VM (busybox, in the initramfs that debian_kernel.py
# builds). It loads the boot modules, mounts the host's exchange directory
# (9p tag "xchg") at /run/vm and hands over to the /run/vm/run.sh the host
# wrote there. With gf.root=host on the kernel command line, it first
# builds the root the tests run in: the host's / (9p tag "root", read-only)
# under a tmpfs overlay, the kernel package's modules at
# /lib/modules/$(uname -r) (gf.modules), busybox's modprobe for autoloading
# (gf.modprobe), then switch_root (chroot would leave the VM's tasks in a
# chroot, where the kernel refuses to create user namespaces). run.sh writes
# the command's status to /run/vm/status and powers the VM off; if anything
# here fails, the VM powers off without a status.
export PATH=/bin
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev

fail() {
    echo "vm init: $*" >&2
    echo o >/proc/sysrq-trigger
    exit 1
}

cmdline_value() {
    for word in $(cat /proc/cmdline); do
        case "$word" in "$1="*) echo "${word#*=}" ;; esac
    done
}

for module in $(cat /modules/order); do
    insmod "/modules/$module" || fail "cannot load $module"
done
nine_p="trans=virtio,version=9p2000.L,msize=262144"

if [ "$(cmdline_value gf.root)" != host ]; then
    mkdir -p /run/vm /tmp
    mount -t 9p -o "$nine_p" xchg /run/vm || fail "cannot mount the exchange directory"
    ip link set lo up
    exec /bin/sh /run/vm/run.sh
fi

mkdir /lower /rw /newroot
mount -t 9p -o "$nine_p,ro,cache=loose" root /lower || fail "cannot mount the host's root"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "cannot build the overlay root"
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mkdir /newroot/run/vm
mount -t 9p -o "$nine_p" xchg /newroot/run/vm || fail "cannot mount the exchange directory"
release=$(uname -r)
mkdir -p "/newroot/lib/modules/$release"
mount --bind "/newroot$(cmdline_value gf.modules)" "/newroot/lib/modules/$release" \
    || fail "cannot mount the module tree"
cmdline_value gf.modprobe >/proc/sys/kernel/modprobe
for fs in dev proc sys; do
    mount --move "/$fs" "/newroot/$fs"
done
exec switch_root /newroot /bin/sh /run/vm/run.sh
