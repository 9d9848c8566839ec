# kforge facts: what a host is and has, in one SSH round trip, read-only except for
# the digest cache (rewritten only when a digest changed). Inputs (arrays, set by kforge before this file):
#   KF_PATHS     files whose sha256 the apply needs (planned files, artifacts)
#   KF_UNITS     units whose state it needs
#   KF_PACKAGES  `NAME=PROOF` for each package the plan needs: reported missing when
#                its proof (a command on PATH, or a path) is not on the host
#   KF_DIRS      directories where an interrupted apply may have left temp files
#   KF_RECHECKS  read-only tests of state outside kforge's files (an imported image,
#                a kernel setting); each failing one is reported by its index
#   KF_RUNNING   `COMPONENT UNIT` (or `COMPONENT /path/to/binary`): what the running
#                program says it is (`--version`, first line)
#   KF_KNOWN_VERSIONS  `ID LINE`: what processes already answered (kforge remembers)
#   KF_PEERS     mesh addresses of the other nodes (`kforge status`): each is reached
#                with TCP to sshd over the mesh (empty for apply)
#   KF_READ_ONLY 1: leave the digest cache as it is (status, doctor write nothing)
# Output: one `key=value` or `kind args…` line per fact (parsed by facts.rs).
# shellcheck disable=SC2154
set -u
KF_STATE=/var/lib/kforge

# shellcheck source=/dev/null
. /etc/os-release 2>/dev/null
echo "os=${ID:-unknown} ${VERSION_ID:-}"
echo "arch=$(uname -m)"
echo "init=$(cat /proc/1/comm 2>/dev/null)"
echo "hostname=$(hostname)"
echo "machine_id=$(cat /etc/machine-id 2>/dev/null)"
echo "clock=$(date +%s)"
echo "swap=$(tail -n +2 /proc/swaps 2>/dev/null | wc -l)"
echo "cgroup_fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null)"
# The memory controller (Raspberry Pi OS boots with it off): listed by the unified
# hierarchy's root, or enabled in /proc/cgroups on a v1 or hybrid host.
if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
  if grep -qw memory /sys/fs/cgroup/cgroup.controllers; then echo memory_cgroup=yes; else echo memory_cgroup=no; fi
else
  awk '$1 == "memory" { print ($4 == 1 ? "memory_cgroup=yes" : "memory_cgroup=no") }' /proc/cgroups 2>/dev/null
fi
if ip link add kforge-probe type wireguard 2>/dev/null; then ip link del kforge-probe; echo wg_kernel=yes; else echo wg_kernel=no; fi
if command -v boringtun-cli >/dev/null 2>&1; then echo boringtun=yes; else echo boringtun=no; fi
if nft list table inet kforge >/dev/null 2>&1; then echo firewall=yes; else echo firewall=no; fi
# A hard-way controller's etcd member data: its etcd has run here (founded or joined).
if [ -d /var/lib/etcd/member ]; then echo etcd_data=yes; else echo etcd_data=no; fi
# A K3s server's own datastore (embedded etcd or kine): it founded or joined a cluster.
if [ -d /var/lib/rancher/k3s/server/db ]; then echo k3s_datastore=yes; else echo k3s_datastore=no; fi
for ip in "${KF_PEERS[@]}"; do
  { if timeout 3 bash -c "echo > /dev/tcp/$ip/22" 2>/dev/null; then echo "reach $ip yes"; else echo "reach $ip no"; fi; } &
done

# File digests, reusing the last apply's for files whose size, mtime and inode are
# unchanged (as git's index does): hashing ~760 MB of binaries on every host at every
# apply was most of a no-op apply's time. kforge replaces files by rename, so a file it
# wrote always gets a new inode and is hashed afresh.
declare -A kf_known=()
if [ -f "$KF_STATE/hash-cache" ]; then
  while read -r h st p; do kf_known["$st $p"]=$h; done < "$KF_STATE/hash-cache"
fi
# One stat for every path (a stat per path was a fifth of the facts' time).
kf_cache=""
while read -r st p; do
  [ -f "$p" ] || continue
  h=${kf_known["$st $p"]:-}
  [ -n "$h" ] || h=$(sha256sum "$p" | cut -d' ' -f1)
  echo "file $h $p"
  kf_cache+="$h $st $p"$'\n'
done < <(if [ ${#KF_PATHS[@]} -gt 0 ]; then stat -c '%s:%.9Y:%i %n' -- "${KF_PATHS[@]}" 2>/dev/null; fi)
# Sorted, and written only when it changed: a no-op apply writes nothing on the host
# (an apply that wrote files records their digests itself: kf_record_digests).
kf_cache=$(printf '%s' "$kf_cache" | sort -u)
if [ "$KF_READ_ONLY" != 1 ] && [ -d "$KF_STATE" ] && [ "$(cat "$KF_STATE/hash-cache" 2>/dev/null)" != "$kf_cache" ]; then
  printf '%s\n' "$kf_cache" > "$KF_STATE/hash-cache.tmp" && mv -f "$KF_STATE/hash-cache.tmp" "$KF_STATE/hash-cache"
fi

# Every unit's state, enablement and main process come from one `systemctl show` (a
# systemctl call per unit and question was a third of the facts' time); its blocks
# follow the order of the units asked.
kf_units=("${KF_UNITS[@]}")
for e in "${KF_RUNNING[@]}"; do u=${e#* }; [ "${u:0:1}" = / ] || kf_units+=("$u"); done
declare -A kf_active=() kf_enabled=() kf_pid=()
kf_i=0
while IFS= read -r line; do
  [ -n "$line" ] || { kf_i=$((kf_i + 1)); continue; }
  u=${kf_units[$kf_i]:-}
  [ -n "$u" ] || break
  case $line in
    ActiveState=*) kf_active[$u]=${line#*=} ;;
    UnitFileState=*) kf_enabled[$u]=${line#*=} ;;
    MainPID=*) kf_pid[$u]=${line#*=} ;;
  esac
done < <(if [ ${#kf_units[@]} -gt 0 ]; then systemctl show -p ActiveState,UnitFileState,MainPID -- "${kf_units[@]}" 2>/dev/null; fi)

# The release each program runs now: the unit's main process asked through
# /proc/PID/exe, so a binary replaced on disk but not yet restarted still reports the
# old release. A process's answer never changes: kforge remembers it on the workstation
# by process (boot, pid, start time) and sends what it knows (KF_KNOWN_VERSIONS), so a
# no-op apply starts no Go binary and writes nothing here; every answer comes back as
# `version-id ID LINE` for kforge to remember.
declare -A kf_asked=()
for e in "${KF_KNOWN_VERSIONS[@]}"; do kf_asked["${e%% *}"]=${e#* }; done
kf_boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null)
for e in "${KF_RUNNING[@]}"; do
  c=${e%% *} u=${e#* }
  if [ "${u:0:1}" = / ]; then
    [ -x "$u" ] || continue
    exe=$u id="$c@$(stat -c '%s:%.9Y:%i' "$u")"
  else
    pid=${kf_pid[$u]:-0}
    [ "$pid" -gt 0 ] 2>/dev/null || continue
    # Field 22 of /proc/PID/stat, the start time (fields 3… follow the ") " after the name).
    read -r stat_line < "/proc/$pid/stat" 2>/dev/null || continue
    read -r -a fields <<< "${stat_line##*) }"
    exe=/proc/$pid/exe id="$c@$kf_boot:$pid:${fields[19]:-}"
  fi
  line=${kf_asked["$id"]:-}
  [ -n "$line" ] || line=$(timeout 5 "$exe" --version 2>/dev/null | head -n1)
  [ -n "$line" ] || continue
  echo "running $c $line"
  echo "version-id $id $line"
done

for u in "${KF_UNITS[@]}"; do
  echo "unit $u ${kf_active[$u]:-unknown} ${kf_enabled[$u]:-}"
done
# A pending restart, and whether a reload finishes it (the mark says `reload`).
for f in "$KF_STATE"/pending/*; do [ -e "$f" ] && echo "pending ${f##*/} $(head -n 1 "$f")"; done
[ -f "$KF_STATE/manifest.json" ] && echo "manifest $(base64 -w0 < "$KF_STATE/manifest.json")"
# How the bootstrap script last ended, and cloud-init's own verdict on its last boot.
[ -f "$KF_STATE/bootstrap.outcome" ] && echo "bootstrap $(base64 -w0 < "$KF_STATE/bootstrap.outcome")"
[ -f /run/cloud-init/result.json ] && echo "cloud-init $(base64 -w0 < /run/cloud-init/result.json)"
# Listening sockets with who holds them: `listen tcp/PORT PROGRAM UNIT` (the unit from
# the process's cgroup, `-` outside any), or `listen tcp/PORT` when ss names no process.
kf_unit_of() { grep -o '[^/]*\.service' "/proc/$1/cgroup" 2>/dev/null | tail -n1; }
# A process that exited since ss listed it (gone, or a zombie: no cgroup left to name
# its unit) was restarting, not holding the port outside systemd.
kf_alive() {
  local s
  s=$(sed -n 's/.*) \(.\) .*/\1/p' "/proc/$1/stat" 2>/dev/null)
  [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
}
for proto in tcp udp; do
  if [ $proto = tcp ]; then flags=-Hltnp; else flags=-Hlunp; fi
  ss $flags 2>/dev/null | while read -r _ _ _ local _ users; do
    port=${local##*:}
    if [[ $users =~ \(\(\"([^\"]+)\",pid=([0-9]+) ]] && kf_alive "${BASH_REMATCH[2]}"; then
      u=$(kf_unit_of "${BASH_REMATCH[2]}"); echo "listen $proto/$port ${BASH_REMATCH[1]} ${u:--}"
    else
      echo "listen $proto/$port"
    fi
  done
done
# Kernel WireGuard sockets have no process: each interface names its port (and the
# wg-quick unit that brought it up, when one runs).
if command -v wg >/dev/null 2>&1; then
  wg show all listen-port 2>/dev/null | while read -r iface port; do
    u=-; systemctl is-active -q "wg-quick@$iface.service" 2>/dev/null && u="wg-quick@$iface.service"
    echo "listen udp/$port wireguard:$iface $u"
  done
fi
for e in "${KF_PACKAGES[@]}"; do
  p=${e#*=}
  case $p in
    /*) [ -e "$p" ] ;;
    *) PATH="$PATH:/usr/sbin:/sbin" command -v "$p" >/dev/null 2>&1 ;;
  esac || echo "missing-package ${e%%=*}"
done
if command -v apt-get >/dev/null 2>&1; then echo apt=yes; else echo apt=no; fi
kf_temp_dirs=()
for d in "${KF_DIRS[@]}"; do [ -d "$d" ] && kf_temp_dirs+=("$d"); done
[ ${#kf_temp_dirs[@]} -eq 0 ] || find "${kf_temp_dirs[@]}" -maxdepth 1 -name '.*.kforge-tmp-*' -printf 'tmp %p\n'
# All at once (each is a client asking a daemon), and bounded: a wedged containerd must
# not hang the facts of every apply.
for i in "${!KF_RECHECKS[@]}"; do
  { timeout 20 bash -c "${KF_RECHECKS[$i]}" </dev/null >/dev/null 2>&1 || echo "recheck-failed $i"; } &
done
wait
true
