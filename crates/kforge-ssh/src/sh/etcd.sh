# kforge's etcd helpers, run on a controller over SSH with kforge's etcd client
# certificate. kforge sends this file, sets KF_ETCD_ENV (the etcdctl environment file
# it planned), then calls one function.
set -euo pipefail
umask 077
KF_ETCD_ENV=/etc/etcd/etcdctl.env

kf_etcd_env() {
  set -a
  # shellcheck source=/dev/null
  . "$KF_ETCD_ENV"
  set +a
  export PATH=/usr/local/bin:$PATH
}

# kf_snapshot_status FILE: etcdutl where the release has it (etcdctl's is deprecated).
kf_snapshot_status() {
  if command -v etcdutl >/dev/null; then etcdutl snapshot status "$1" -w json; else etcdctl snapshot status "$1" -w json; fi
}

kf_etcd_health() {
  kf_etcd_env
  etcdctl endpoint health --cluster 2>&1
}

# kf_snapshot_save FILE: a snapshot of the local member, its status and its sha256. A
# member that does not answer is refused at once — etcdctl's snapshot of a stopped member
# waits for it for good — and the save itself is bounded (KF_SNAPSHOT_WAIT s, 300).
kf_snapshot_save() {
  local why wait=${KF_SNAPSHOT_WAIT:-300}
  kf_etcd_env
  mkdir -p "$(dirname "$1")"; rm -f "$1"
  if ! why=$(ETCDCTL_ENDPOINTS=https://127.0.0.1:2379 timeout 20 etcdctl endpoint health --dial-timeout=3s --command-timeout=5s 2>&1); then
    echo "kforge: the etcd member here does not answer, so it takes no snapshot: $(tail -n1 <<<"$why")" >&2
    return 1
  fi
  if ! ETCDCTL_ENDPOINTS=https://127.0.0.1:2379 timeout "$wait" etcdctl snapshot save --dial-timeout=3s "$1" >/dev/null; then
    rm -f "$1"
    echo "kforge: etcdctl snapshot save failed or did not finish within $wait s" >&2
    return 1
  fi
  chmod 600 "$1"
  kf_snapshot_status "$1"
  sha256sum "$1" | cut -d' ' -f1
}

# kf_receive_snapshot FILE SHA256, the snapshot on stdin.
kf_receive_snapshot() {
  mkdir -p "$(dirname "$1")"; cat > "$1"
  echo "$2  $1" | sha256sum -c --status
}

kf_check_snapshot() {
  kf_etcd_env
  kf_snapshot_status "$1"
}

# kf_stop_members: kube-apiserver (it would write to a half-restored cluster) and etcd;
# says whether kube-apiserver ran, and its release.
kf_stop_members() {
  local pid
  if systemctl is-active -q kube-apiserver.service; then
    # The release it ran: a restore for an older minor leaves it stopped.
    pid=$(systemctl show -p MainPID --value kube-apiserver.service)
    [ "${pid:-0}" -gt 0 ] && echo "apiserver-release $(/proc/"$pid"/exe --version 2>/dev/null | head -1)"
    echo apiserver-was-active; systemctl stop kube-apiserver.service
  fi
  systemctl stop etcd.service
}

# kf_restore FILE DATA_DIR NAME INITIAL_CLUSTER TOKEN PEER_URL: this member's data
# directory rebuilt from the snapshot; the old one is kept aside and named on stdout.
#
# The restored revision jumps ahead by 10^9 and is marked compacted (etcdutl). Without
# that it goes back to the snapshot's, below what every running informer has seen
# (scheduler, controller-manager, kubelets): each watches on from its newer revision,
# so whatever is written until the revision passes it again is never delivered — a
# pod created then stays Pending for good. Compacted, every such watch is refused as
# too old and its client lists everything again.
kf_restore() {
  local tool=etcdctl kept data=$2 bump=()
  kf_etcd_env
  command -v etcdutl >/dev/null && tool=etcdutl && bump=(--bump-revision 1000000000 --mark-compacted)
  rm -rf "$data.restoring"
  "$tool" snapshot restore "$1" --name "$3" --initial-cluster "$4" \
    --initial-cluster-token "$5" --initial-advertise-peer-urls "$6" "${bump[@]}" \
    --data-dir "$data.restoring" >/dev/null 2>&1
  if [ -d "$data" ]; then
    kept=$data.before-restore-$(date +%Y%m%dT%H%M%S)
    mv "$data" "$kept"; echo "kept=$kept"
  fi
  mv "$data.restoring" "$data"; chmod 700 "$data"; rm -f "$1"
}

# kf_start_etcd: start and wait until active. A start can fail transiently right after
# a stop (seen in containers: the old cgroup not yet gone, exit 219/CGROUP); the unit's
# Restart=on-failure brings it back within seconds, so waiting for "active" covers it.
kf_start_etcd() {
  timeout 120 systemctl start etcd.service && return 0
  for _ in $(seq 60); do systemctl is-active -q etcd.service && return 0; sleep 2; done
  systemctl status etcd.service --no-pager -n 5 >&2
  return 1
}

# kf_start_apiserver: bring back a kube-apiserver that kf_stop_members stopped.
kf_start_apiserver() {
  systemctl start kube-apiserver.service
}

# kf_membership: the member list and each started member's health (one line each, JSON),
# asked with short timeouts: a member that is down must not stall the answer.
kf_membership() {
  kf_etcd_env
  echo "list $(timeout 8 etcdctl --command-timeout=3s member list -w json 2>/dev/null | tr -d '\n' || true)"
  echo "health $(timeout 15 etcdctl --command-timeout=3s endpoint health --cluster -w json 2>/dev/null | tr -d '\n' || true)"
}

# kf_member_remove ID (hex) [CLIENT-URL...]: remove the member, then wait (up to 30 s)
# until its client URLs accept no connection: the removed etcd stops itself once it
# learns it is gone, and a request an API server sends it meanwhile fails. Refused or
# unanswered (its host down) both mean it serves no one; "still serving" if it does.
kf_member_remove() {
  kf_etcd_env
  etcdctl --command-timeout=10s member remove "$1" >/dev/null
  shift
  local url hostport host port end=$(( $(date +%s) + 30 ))
  for url in "$@"; do
    hostport=${url#*://}; hostport=${hostport%%/*}
    port=${hostport##*:}; host=${hostport%:*}; host=${host#[}; host=${host%]}
    while timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null; do
      [ "$(date +%s)" -lt "$end" ] || { echo "still serving $url"; break; }
      sleep 0.5
    done
  done
}

# kf_probe_peer IP PORT: whether this member reaches a joining controller's peer port
# over the mesh, before it is added. Nothing listens there yet, so "refused" is the
# answer wanted: the packet crossed the mesh and the joiner's firewall, and its kernel
# answered. A timeout means the path drops it (mesh down, firewall), and etcd would
# wait on an unreachable member.
kf_probe_peer() {
  local said
  if said=$(timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2" 2>&1); then echo "answers"; return 0; fi
  case $said in *refused*) echo "refused (reached, nothing listens yet)"; return 0 ;; esac
  echo "no answer from $1:$2 within 5 s${said:+: $said}" >&2
  return 1
}

# kf_member_add NAME PEER_URL: NAME added as a learner (it has no vote until promoted,
# so quorum is untouched while it catches up); etcdctl's answer carries the member
# list the joiner starts with (ETCD_INITIAL_CLUSTER, ETCD_INITIAL_CLUSTER_STATE).
kf_member_add() {
  kf_etcd_env
  etcdctl --command-timeout=10s member add "$1" --peer-urls="$2" --learner | grep '^ETCD_'
}

# kf_member_promote ID (hex): etcd refuses until the learner has caught up with the
# leader's log; the caller asks again.
kf_member_promote() {
  kf_etcd_env
  etcdctl --command-timeout=10s member promote "$1" 2>&1
}

# kf_join_env_write FILE: the member list the joiner starts with, from stdin.
kf_join_env_write() {
  local t
  mkdir -p "$(dirname "$1")"; t="$(dirname "$1")/.$(basename "$1").kforge-tmp-$$"
  { echo "# Written by kforge apply while this controller joins the running etcd; removed once it votes."; cat; } > "$t"
  chmod 644 "$t"; mv -f "$t" "$1"
}
