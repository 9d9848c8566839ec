#!/bin/sh
# kforge lab: PID 1 of a lab machine until it execs systemd.
# systemd-nspawn mounts the cgroup v1 controllers read-only; containerd and the kubelet
# must create cgroups. The machine runs in a cgroup namespace rooted at its own
# subtree (see enter-cgroups.sh), so mounting each controller afresh, read-write,
# shows and opens only that subtree. Done before systemd starts, so systemd manages
# the controllers as on a real cgroup v1 host.
for dir in /sys/fs/cgroup/*; do
  controller=$(basename "$dir")
  case $controller in unified | systemd) continue ;; esac
  umount "$dir" 2>/dev/null || umount -l "$dir"
  mount -t cgroup -o "rw,nosuid,nodev,noexec,$controller" cgroup "$dir"
done
# The kubelet's OOM watcher reads the kernel log; a container has none (kind does the same).
[ -e /dev/kmsg ] || ln -s /dev/console /dev/kmsg
exec /lib/systemd/systemd "$@"
