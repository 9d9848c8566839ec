# kforge doctor probes: read-only. kforge sends this file, then calls one function.
# Every line printed is "KEY WORDS…"; kforge judges them (crates/kforge-ssh/src/doctor.rs).

KF_KUBECTL=(/usr/local/bin/kubectl --kubeconfig /etc/kforge/admin.kubeconfig --request-timeout=10s)

# kf_doctor_host IFACE MTU "PEER_IP…" "IP:PORT…" "CERT…" "UNIT…" ENDPOINT "IMAGE…": what
# the facts (sent in the same round trip) do not read: this host's clock to the
# sub-second, forwarding sysctls, mesh handshakes, don't-fragment pings at the mesh MTU,
# required ports over the mesh, the loaded firewall's rules, certificates on disk,
# resolv.conf, flannel's VXLAN device, imported images, and the journal of each unit
# that is down. Probes run in parallel; each prints its lines. KF_LOADED_RULES (set by
# kforge) is the pipeline that counts the loaded table's rules per chain.
kf_doctor_host() {
  local iface=$1 mtu=$2 peers=$3 ports=$4 certs=$5 units=$6 endpoint=${7:-} images=${8:-}
  local ip p f u i dir dev state known pinned
  dir=$(mktemp -d)
  echo "time $(date +%s.%N)"
  echo "sysctl ip_forward $(cat /proc/sys/net/ipv4/ip_forward 2>/dev/null || echo missing)"
  echo "sysctl bridge-nf-call-iptables $(cat /proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || echo missing)"
  # The underlay: the interface holding the public endpoint, else the default route's.
  dev=$(ip -o addr show 2>/dev/null | awk -v a="$endpoint" '$4 ~ "^"a"/" {print $2; exit}')
  [ -n "$dev" ] || dev=$(ip -o route show default 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i=="dev") {print $(i+1); exit}}')
  [ -n "$dev" ] && echo "underlay $dev $(cat "/sys/class/net/$dev/mtu" 2>/dev/null)"
  for ip in $peers; do
    # A small ping says the path is up; one of exactly the mesh MTU with DF set says
    # full-size packets get through (an MTU black hole passes the first, fails the second).
    # Two tries each, 0.2 s apart (-i below 1 s needs root, which doctor has).
    ( if ping -n -q -c 2 -i 0.2 -W 2 -s 56 "$ip" >/dev/null 2>&1; then s=ok; else s=fail; fi
      if ping -n -q -c 2 -i 0.2 -W 2 -M "do" -s $((mtu - 28)) "$ip" >/dev/null 2>&1; then d=ok; else d=fail; fi
      echo "ping $ip $s $d" ) > "$dir/ping-$ip" &
  done
  for p in $ports; do
    # open: something answered; refused: reachable, nothing listening; filtered: dropped.
    ( timeout 3 bash -c "exec 3<>/dev/tcp/${p%:*}/${p#*:}" 2>/dev/null; rc=$?
      case $rc in 0) r=open ;; 124) r=filtered ;; *) r=refused ;; esac
      echo "port $p $r" ) > "$dir/port-$p" &
  done
  if nft list table inet kforge >/dev/null 2>&1; then
    echo 'firewall loaded'
    bash -c "$KF_LOADED_RULES" | sed 's/^/firewall-rules /'
  else
    echo 'firewall missing'
  fi
  # Other tables that drop on input by default, or drop the mesh or a peer: rules kforge
  # did not write (kube-proxy's own tables drop neither, so they are not listed).
  local mesh_match
  mesh_match="iifname \"$iface\""
  for ip in $peers; do mesh_match="$mesh_match|${ip//./\\.}([^0-9]|$)"; done
  nft list tables 2>/dev/null | while read -r _ fam name; do
    [ "$fam $name" = "inet kforge" ] && continue
    if nft list table "$fam" "$name" 2>/dev/null | grep drop | grep -Eq "hook input .*policy drop|$mesh_match"; then
      echo "foreign-table $fam $name"
    fi
  done
  for f in $certs; do
    # The certificate itself (public), one line: kforge reads its dates (hosts may lack openssl).
    [ -f "$f" ] && echo "cert $f $(sha256sum "$f" | cut -d' ' -f1) $(base64 -w0 < "$f")"
  done
  echo "resolv $(awk '/^nameserver/{print $2}' /etc/resolv.conf 2>/dev/null | tr '\n' ' ')"
  if ip -d link show flannel.1 >/dev/null 2>&1; then
    echo "vxlan $(ip -d link show flannel.1 | grep -o 'dev [^ ]*' | head -1 | cut -d' ' -f2)"
  fi
  # Images kforge imported (no registry serves them): still in containerd, and pinned so
  # the kubelet's image garbage collection leaves them alone. Nothing when containerd
  # does not answer (the services check says why).
  if [ -n "$images" ] && known=$(/usr/local/bin/ctr --namespace k8s.io images ls -q 2>/dev/null); then
    pinned=$(/usr/local/bin/ctr --namespace k8s.io images ls -q 'labels."io.cri-containerd.pinned"==pinned' 2>/dev/null)
    for i in $images; do
      if ! printf '%s\n' "$known" | grep -qxF "$i"; then state=missing
      elif printf '%s\n' "$pinned" | grep -qxF "$i"; then state=pinned
      else state=unpinned; fi
      echo "image $i $state"
    done
  fi
  for u in $units; do
    # Why a unit is down: its last complaint in the journal (its state is in the facts).
    case $(systemctl is-active "$u" 2>/dev/null | head -1) in
      failed|activating) echo "unitlog $u $(journalctl -u "$u" -n 50 --no-pager -o cat 2>/dev/null | grep -v "^$u: " | grep -iE 'error|fail|no such|invalid|refus' | tail -1)" ;;
    esac
  done
  wait
  cat "$dir"/* 2>/dev/null
  # After the pings: every pair has just had a reason to handshake.
  # Unix time of each peer's latest handshake (0: never). boringtun, the userspace
  # implementation, reports seconds since instead: a value before 2001 is that.
  wg show "$iface" latest-handshakes 2>/dev/null | while read -r key at; do
    if [ "$at" -gt 0 ] && [ "$at" -lt 1000000000 ]; then at=$(( $(date +%s) - at )); fi
    echo "handshake $key $at"
  done
  rm -rf "$dir"
  true
}

# kf_doctor_etcd "https://IP:2379…": each member's status (asked one by one, so a
# member that lost quorum still answers), the member list and alarms.
kf_doctor_etcd() {
  local e
  set -a
  # shellcheck source=/dev/null
  . /etc/etcd/etcdctl.env
  set +a
  export PATH=/usr/local/bin:$PATH
  for e in $1; do
    # JSON on stdout when the member answers; else etcdctl's last complaint.
    echo "status $e $(ETCDCTL_ENDPOINTS=$e timeout 8 etcdctl --command-timeout=3s endpoint status -w json 2>/dev/null | tr -d '\n' || true)"
  done
  echo "members $(timeout 8 etcdctl --command-timeout=3s member list -w json 2>/dev/null | tr -d '\n')"
  echo "alarms $(timeout 8 etcdctl --command-timeout=3s alarm list 2>/dev/null | tr '\n' ' ')"
  true
}

# kf_doctor_api: /readyz?verbose, the scheduler's and controller-manager's leases,
# pods Pending with their PodScheduled condition, and this host's clock.
kf_doctor_api() {
  local l
  # Short timeouts: without etcd every question would hang for the default 10 s.
  KF_KUBECTL=(/usr/local/bin/kubectl --kubeconfig /etc/kforge/admin.kubeconfig --request-timeout=5s)
  echo "now $(date +%s)"
  "${KF_KUBECTL[@]}" get --raw='/readyz?verbose' 2>&1 | sed 's/^/readyz /'
  for l in kube-scheduler kube-controller-manager; do
    echo "lease $l $("${KF_KUBECTL[@]}" -n kube-system get lease "$l" -o jsonpath='{.spec.holderIdentity}|{.spec.renewTime}' 2>/dev/null)"
  done
  "${KF_KUBECTL[@]}" get pods -A --field-selector=status.phase=Pending -o jsonpath='{range .items[*]}pending {.metadata.namespace}/{.metadata.name} {.metadata.creationTimestamp} {range .status.conditions[?(@.type=="PodScheduled")]}{.reason}: {.message}{end}{"\n"}{end}' 2>/dev/null
  true
}
