# kforge status probes of the cluster (each host's own state comes from facts.sh), read-only.
# kforge sends this file, then calls one function.

KF_KUBECTL=(/usr/local/bin/kubectl --kubeconfig /etc/kforge/admin.kubeconfig --request-timeout=10s)

# kf_kubernetes_status: /readyz and each node's kubelet version, Ready condition and
# every other condition that is True (a pressure: DiskPressure, MemoryPressure, …),
# asked with the admin kubeconfig on a controller.
kf_kubernetes_status() {
  echo "readyz $("${KF_KUBECTL[@]}" get --raw=/readyz 2>&1 | tail -1)"
  "${KF_KUBECTL[@]}" get nodes -o jsonpath='{range .items[*]}node {.metadata.name} {.status.nodeInfo.kubeletVersion} {range .status.conditions[?(@.type=="Ready")]}{.status}{end} {range .status.conditions[?(@.status=="True")]}{.type},{end}{"\n"}{end}'
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
