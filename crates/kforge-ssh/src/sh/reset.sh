#!/bin/bash
# `kforge reset`: take off a host everything kforge installed, and what the programs it
# ran left behind, so the host is as kforge found it (SSH untouched) and a normal apply
# can add it again. The record of what kforge wrote is the host's manifest; the rest
# (containers, mounts, links, rules) is found on the host.
#
# kf_reset IFACE MODE: MODE `preview` prints one `would ACTION WHAT` line per action and
# changes nothing; `do` prints one `did ACTION WHAT` line per action taken.

# The programs kforge runs, stopped first (the kubelet before the runtime it talks to).
KF_RESET_FIRST_UNITS=(kubelet.service kube-proxy.service k3s-agent.service k3s.service)
# State the programs kforge ran keep outside the files it wrote. etcd's data goes too:
# a controller is reset only after its member left etcd (or with the whole cluster), and
# a member restarted on old data would try to rejoin as the member it was.
KF_RESET_DIRS=(/var/lib/kubelet /var/lib/containerd /run/containerd /var/lib/cni /etc/cni/net.d /opt/cni
  /var/log/pods /var/log/containers /var/lib/rancher /etc/rancher /run/k3s /run/flannel
  /etc/kforge /opt/kforge /var/lib/kforge /run/kforge /var/lib/etcd /var/lib/etcd.before-restore-* /etc/etcd)

kf_reset() {
  local iface=$1 mode=$2 cluster=$3 manifest=/var/lib/kforge/manifest.json owner
  local -a files units mounts
  kf_act() {
    local what=$1
    shift
    if [ "$mode" = preview ]; then echo "would $what"; return 0; fi
    "$@" >/dev/null 2>&1 || true
    echo "did $what"
  }
  mapfile -t files < <(grep -o '"/[^"]*":' "$manifest" 2>/dev/null | sed 's/^"//; s/":$//')
  # Another cluster's record (a re-purposed machine) may list its owner's files: none of
  # them is kforge's to remove here.
  owner=$(grep -o '"cluster":"[^"]*"' "$manifest" 2>/dev/null | head -n1 | cut -d'"' -f4)
  if [ -n "$owner" ] && [ "$owner" != "$cluster" ]; then
    echo "kept the ${#files[@]} files listed by the record of cluster $owner (not this cluster's: remove them yourself if they are kforge's)"
    files=()
  fi
  units=("${KF_RESET_FIRST_UNITS[@]}")
  for f in "${files[@]}"; do
    case $f in /etc/systemd/system/*.service) units+=("${f##*/}") ;; esac
  done
  units+=("wg-quick@$iface.service")

  # kube-proxy's own cleanup (its iptables chains), while its binary is still there.
  local proxy
  proxy=$(systemctl show -p ExecStart --value kube-proxy.service 2>/dev/null | sed -n 's/^{ path=\([^ ;]*\).*/\1/p')
  if [ -n "$proxy" ] && [ -x "$proxy" ]; then
    kf_act "stop kube-proxy.service (before its cleanup)" systemctl stop kube-proxy.service
    kf_act "clean kube-proxy's rules ($proxy --cleanup)" "$proxy" --cleanup
  fi
  local seen=" " u
  for u in "${units[@]}"; do
    case $seen in *" $u "*) continue ;; esac
    seen+="$u "
    if [ "$(systemctl show -p LoadState --value "$u" 2>/dev/null)" = loaded ] &&
      { systemctl is-active -q "$u" || systemctl is-enabled -q "$u"; } 2>/dev/null; then
      kf_act "stop and disable $u" systemctl disable --now "$u"
    fi
  done
  # Containers outlive containerd: their shims, and what runs under them.
  if pgrep -f containerd-shim >/dev/null 2>&1; then
    kf_act "kill $(pgrep -fc containerd-shim) container shims and their containers" kf_reset_kill_shims
  fi
  # Strictly under: a directory that is itself a mount point (a dedicated disk for
  # containerd, say) stays mounted, and is emptied below instead of removed.
  mapfile -t mounts < <(awk '{print $2}' /proc/mounts | grep -E '^(/var/lib/kubelet|/run/containerd|/var/lib/containerd|/run/netns|/var/run/netns|/run/k3s)/' | sort -r)
  if [ "${#mounts[@]}" -gt 0 ]; then
    kf_act "unmount ${#mounts[@]} mounts under the kubelet's and containerd's directories" umount -l "${mounts[@]}"
  fi
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do
    kf_act "delete network namespace $ns" ip netns delete "$ns"
  done
  local link
  for link in cni0 flannel.1 kube-ipvs0 "$iface"; do
    if ip link show "$link" >/dev/null 2>&1; then kf_act "delete link $link" ip link delete "$link"; fi
  done
  if pgrep -f "boringtun-cli.* $iface\$" >/dev/null 2>&1; then
    kf_act "stop the userspace WireGuard of $iface" pkill -f "boringtun-cli.* $iface\$"
  fi
  local t n
  for t in filter nat mangle; do
    n=$(iptables-save -t "$t" 2>/dev/null | grep -cE 'KUBE-|CNI-') || true
    if [ "${n:-0}" -gt 0 ]; then
      kf_act "remove $n iptables $t lines naming KUBE- or CNI-" kf_reset_iptables "$t"
    fi
  done
  for t in "inet kforge" "ip kube-proxy" "ip6 kube-proxy"; do
    # shellcheck disable=SC2086  # family and name are two words
    if nft list table $t >/dev/null 2>&1; then kf_act "delete nftables table $t" nft delete table $t; fi
  done
  local gone=0
  for f in "${files[@]}"; do
    [ -e "$f" ] && gone=$((gone + 1))
  done
  if [ "$gone" -gt 0 ]; then kf_act "remove $gone files kforge wrote (its manifest)" rm -f "${files[@]}"; fi
  local d
  for d in "${KF_RESET_DIRS[@]}"; do
    if mountpoint -q "$d" 2>/dev/null; then
      if [ -n "$(ls -A "$d")" ]; then kf_act "empty $d (a mount point: kept mounted)" kf_reset_empty "$d"; fi
    elif [ -e "$d" ]; then
      kf_act "remove $d" rm -rf --one-file-system "$d"
    fi
  done
  kf_act "reload systemd" kf_reset_reload
}

kf_reset_kill_shims() {
  local pids
  pids=$(pgrep -f containerd-shim)
  # Each shim's children are the containers; the kill takes both.
  # shellcheck disable=SC2086  # one pid per word
  pkill -9 -P "$(echo $pids | tr ' ' ',')" 2>/dev/null
  # shellcheck disable=SC2086
  kill -9 $pids 2>/dev/null
  sleep 1
}

kf_reset_empty() {
  find "$1" -mindepth 1 -maxdepth 1 -exec rm -rf --one-file-system {} +
}

kf_reset_iptables() {
  iptables-save -t "$1" | grep -vE 'KUBE-|CNI-' | iptables-restore -T "$1"
}

kf_reset_reload() {
  systemctl daemon-reload
  systemctl reset-failed
}
