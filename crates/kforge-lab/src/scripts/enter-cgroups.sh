#!/bin/sh
# kforge lab: start a machine in its own cgroup subtree in every hierarchy (the v1
# controllers, name=systemd, and the hybrid host's v2 "unified" tree).
#   enter-cgroups.sh CGROUP_DIR... -- COMMAND...
# This workstation has no systemd to give each container a cgroup of its own, so every
# machine's systemd would otherwise manage the same host cgroups (units failing with
# status=219/CGROUP, kubelets fighting over one tree). kforge picks one directory per
# hierarchy (<current cgroup>/kforge-lab/<lab>-<machine>); this script joins them all,
# then a new cgroup namespace makes them the machine's root, so its systemd,
# containerd and kubelet see and manage only their own subtree.
set -eu
while [ "$1" != -- ]; do
  dir=$1
  shift
  mkdir -p "$dir"
  if [ -f "$dir/cpuset.cpus" ]; then
    # cpuset children start with no CPUs: each new level takes its parent's.
    for level in "$(dirname "$dir")" "$dir"; do
      parent=$(dirname "$level")
      [ -n "$(cat "$level/cpuset.cpus")" ] || cat "$parent/cpuset.cpus" >"$level/cpuset.cpus"
      [ -n "$(cat "$level/cpuset.mems")" ] || cat "$parent/cpuset.mems" >"$level/cpuset.mems"
    done
  fi
  echo $$ >"$dir/cgroup.procs"
done
shift
# nspawn, inside this cgroup namespace, still sees the host's own mounts of the
# name=systemd hierarchy and of the hybrid host's cgroup v2 tree, which show the host's
# root: it then made its cgroups there ("/payload"), the same directory for every
# machine, so machines starting or stopping same-named units at once raced on one
# directory (status=219/CGROUP, "Failed to attach … No such file or directory").
# Mounted again inside the namespace (in a mount namespace of nspawn's own), they show
# the machine's subtree as their root, as the v1 controllers do once machine-init
# mounts them afresh.
# shellcheck disable=SC2016  # $@ is expanded by the inner shell
exec unshare --cgroup --mount --propagation private sh -c '
  umount /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd || exit 1
  if [ -f /sys/fs/cgroup/unified/cgroup.procs ]; then
    umount /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified || exit 1
  fi
  exec "$@"' sh "$@"
