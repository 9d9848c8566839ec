# kforge status probes, read-only. kforge sends this file, then calls one function.

KF_KUBECTL=(/usr/local/bin/kubectl --kubeconfig /etc/kforge/admin.kubeconfig --request-timeout=10s)

# kf_host_status "PEER_IP…" "UNIT…" "CERT…" "BINARY…": mesh reachability (TCP to sshd
# on each peer's mesh address), the firewall table, unit states, certificate digests,
# and what each binary says it is (a stand-in says so in its --version).
kf_host_status() {
  local ip u f b
  for ip in $1; do
    if timeout 3 bash -c "echo > /dev/tcp/$ip/22" 2>/dev/null; then echo "reach $ip yes"; else echo "reach $ip no"; fi
  done
  if nft list table inet kforge >/dev/null 2>&1; then echo 'firewall yes'; else echo 'firewall no'; fi
  for u in $2; do echo "unit $u $(systemctl is-active "$u" 2>/dev/null | head -1)"; done
  for f in $3; do [ -f "$f" ] && echo "file $(sha256sum "$f" | cut -d' ' -f1) $f"; done
  for b in ${4:-}; do [ -x "$b" ] && echo "version $b $(timeout 5 "$b" --version 2>/dev/null | head -1)"; done
  true
}

# kf_kubernetes_status: /readyz and each node's kubelet version and Ready condition,
# asked with the admin kubeconfig on a controller.
kf_kubernetes_status() {
  echo "readyz $("${KF_KUBECTL[@]}" get --raw=/readyz 2>&1 | tail -1)"
  "${KF_KUBECTL[@]}" get nodes -o jsonpath='{range .items[*]}node {.metadata.name} {.status.nodeInfo.kubeletVersion} {range .status.conditions[?(@.type=="Ready")]}{.status}{end}{"\n"}{end}'
  true
}

# kf_dns_query SERVER QUERY: send QUERY (printf escapes of one DNS message) with
# bash's /dev/udp and print the answer's first A record: no dig or nslookup needed.
# The query goes out as one datagram: written to a file first, then one dd write
# (printf alone writes it in pieces, each its own datagram).
kf_dns_query() {
  local q reply rcode answers n a b c d
  q=$(mktemp)
  # shellcheck disable=SC2059  # the query is printf escapes by design
  printf "$2" > "$q"
  reply=$(timeout 5 bash -c "exec 3<>/dev/udp/$1/53; dd if=$q bs=512 count=1 status=none >&3; dd bs=512 count=1 status=none <&3" | od -An -v -tu1 | tr -s ' \n' ' ')
  rm -f "$q"
  # shellcheck disable=SC2086  # one word per byte
  set -- $reply
  if [ $# -lt 12 ]; then echo 'dns no answer within 5 s'; return 0; fi
  rcode=$(( $4 & 15 )); answers=$(( $7 * 256 + $8 ))
  if [ "$rcode" -ne 0 ] || [ "$answers" -eq 0 ]; then echo "dns rcode $rcode, $answers answers"; return 0; fi
  n=$#
  a=${*:n-3:1} b=${*:n-2:1} c=${*:n-1:1} d=${*:n:1}
  echo "dns answer $a.$b.$c.$d"
}

# kf_gitops_status NAMESPACE NAME CONTROLLER…: the engine's GitRepository and
# Kustomization NAME as JSON (one line each), and each controller's available replicas.
kf_gitops_status() {
  local ns=$1 name=$2 c
  shift 2
  echo "source $("${KF_KUBECTL[@]}" -n "$ns" get gitrepositories.source.toolkit.fluxcd.io "$name" -o json 2>&1 | tr -d '\n')"
  echo "kustomization $("${KF_KUBECTL[@]}" -n "$ns" get kustomizations.kustomize.toolkit.fluxcd.io "$name" -o json 2>&1 | tr -d '\n')"
  for c in "$@"; do
    echo "controller $c $("${KF_KUBECTL[@]}" -n "$ns" get deployment "$c" -o jsonpath='{.status.availableReplicas}' 2>/dev/null)"
  done
  true
}
