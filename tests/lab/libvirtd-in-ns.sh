#!/bin/sh
# libvirtd-in-ns.sh STATE_DIR PID_DIR  -- run by tests/lab as:  ip netns exec NS sh libvirtd-in-ns.sh ...
# `ip netns exec` gives us a private mount namespace whose mounts are slaves of the host's: nothing
# mounted here propagates back. Root libvirtd has hard-coded state paths (/run/libvirt/libvirt-sock,
# /etc/libvirt/qemu/*.xml ...), so the lab's own directories are bind-mounted over them; virtlogd,
# libvirtd and their qemu children all live in this mount namespace and in the lab's network namespace.
# Clients reach libvirtd from any namespace through STATE_DIR/run/libvirt-sock.
set -eu
STATE=$1; PIDD=$2
for pair in etc:/etc/libvirt run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt; do
    src=$STATE/${pair%%:*}; dst=${pair#*:}
    mkdir -p "$src"
    [ -d "$dst" ] || mkdir -p "$dst"      # the mount point must exist on the host fs (it stays empty there)
    mount --bind "$src" "$dst"
done
# libvirtd in system mode does not spawn virtlogd; PID files in the lab's directory, not /run/*.pid
virtlogd --pid-file "$PIDD/virtlogd.pid" > "$STATE/log/virtlogd.out" 2>&1 &
i=0; while [ ! -S /run/libvirt/virtlogd-sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -S /run/libvirt/virtlogd-sock ] || { echo "virtlogd did not create its socket in 10 s" >&2; exit 1; }
# exec: the PID the lab recorded for this script becomes libvirtd's
exec libvirtd --pid-file "$PIDD/libvirtd.pid"
