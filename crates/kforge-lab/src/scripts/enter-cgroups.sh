#!/bin/sh
# kforge lab: start a machine in its own cgroup subtree in every hierarchy.
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
exec unshare --cgroup "$@"
