# kforge's step functions, shared by every script kforge renders (the bootstrap
# script and each apply phase). Generated scripts call only these and guarded commands.
set -euo pipefail
umask 077
KF_STATE=/var/lib/kforge

# KF_STEP: what the script is doing now; KF_ERROR: why it stopped (kf_outcome).
KF_STEP=start KF_ERROR=
log() { echo "kforge: $*" >&2; }
fail() { KF_ERROR=$*; echo "kforge: error: $*" >&2; exit 1; }

# kf_outcome FILE STATUS (the bootstrap's EXIT trap): `ok`, or `failed STEP ERROR`
# (tab-separated), for kforge status and doctor to show which step failed. Written
# only when it changes: a re-run on a converged host leaves it as it was.
kf_outcome() {
  local line
  if [ "$2" = 0 ]; then line=ok; else line=$(printf 'failed\t%s\t%s' "$KF_STEP" "${KF_ERROR:-exit status $2}" | tr -d '\r\n'); fi
  [ "$(cat "$1" 2>/dev/null)" = "$line" ] && return 0
  mkdir -p "$(dirname "$1")"
  printf '%s\n' "$line" > "$1.tmp" && mv -f "$1.tmp" "$1"
}

# kf_ensure PATH MODE OWNER SHA256, base64 content on stdin: kf_write unless PATH
# already holds exactly that (a re-run writes nothing).
kf_ensure() {
  if [ -f "$1" ] && echo "$4  $1" | sha256sum -c --status 2>/dev/null; then cat >/dev/null; return 0; fi
  kf_write "$1" "$2" "$3"
}

# kf_record_manifest PATH always|unless-same, its JSON (one line) on stdin. With
# unless-same (the bootstrap's record) it is written unless the host's record lists
# the same files already, whoever wrote it (a re-run on a host apply manages keeps
# apply's record).
kf_record_manifest() {
  local new old
  new=$(cat)
  if [ "$2" = unless-same ]; then
    old=$(cat "$1" 2>/dev/null || true)
    [ "${old/\"by\":\"apply\"/\"by\":\"bootstrap\"}" = "$new" ] && return 0
  fi
  printf '%s' "$new" | base64 -w0 | kf_write "$1" 0600 root:root >/dev/null
}

# kf_wg_kernel: the kernel has a WireGuard module (else wg-quick runs boringtun-cli).
kf_wg_kernel() {
  if ip link add kforge-probe type wireguard 2>/dev/null; then ip link del kforge-probe; return 0; fi
  return 1
}

# kf_write PATH MODE OWNER, base64 content on stdin: temp file beside the target,
# fsync, rename. A crash leaves the old file or the new one, never half of either.
kf_write() {
  local p=$1 d t
  KF_STEP="write $p"
  d=$(dirname "$p"); mkdir -p "$d"; t="$d/.$(basename "$p").kforge-tmp-$$"
  base64 -d > "$t"; chmod "$2" "$t"; chown "$3" "$t"; sync "$t"; mv -f "$t" "$p"
  echo "KF written $p"
}

# kf_write_once PATH MODE OWNER, base64 content on stdin: only where PATH is absent.
# The file belongs to a program after its first start (K3s's CA files): never rewritten.
kf_write_once() {
  if [ -e "$1" ]; then cat >/dev/null; return 0; fi
  kf_write "$@"
}

# kf_place_once STAGED DEST MODE OWNER: a handed-over file that a rendered tree or
# user-data staged: put in place only where DEST is absent; the staged copy goes.
kf_place_once() {
  KF_STEP="place $2"
  if [ ! -e "$2" ]; then
    [ -f "$1" ] || fail "$2 is missing and no staged copy is at $1: run kforge apply (or render again)"
    mkdir -p "$(dirname "$2")"
    install -m "$3" -o "${4%%:*}" -g "${4##*:}" "$1" "$2.kforge-tmp-$$" && sync "$2.kforge-tmp-$$" && mv -f "$2.kforge-tmp-$$" "$2"
    echo "KF written $2"
  fi
  rm -f "$1"
}

# kf_receive DEST SHA256 MODE, the artifact on stdin: verified before it replaces DEST.
kf_receive() {
  local dest=$1 d t
  d=$(dirname "$dest"); mkdir -p "$d"; t="$d/.$(basename "$dest").kforge-tmp-upload"
  cat > "$t"
  echo "$2  $t" | sha256sum -c --status || { rm -f "$t"; echo "kforge: upload of $dest corrupted" >&2; exit 1; }
  chmod "$3" "$t"; sync "$t"; mv -f "$t" "$dest"
}

# kf_stamp UNIT INPUTS: the unit now runs with these inputs (digest of its files).
kf_stamp() {
  mkdir -p "$KF_STATE/units"; printf '%s\n' "$2" > "$KF_STATE/units/$1.inputs"
}

# kf_unchanged UNIT INPUTS: the unit runs with INPUTS: active, or still starting from
# the restart that recorded them — waited for, never restarted in the middle.
kf_unchanged() {
  [ "$(cat "$KF_STATE/units/$1.inputs" 2>/dev/null)" = "$2" ] || return 1
  systemctl is-active -q "$1" && return 0
  [ -n "$(systemctl list-jobs --no-legend "$1" 2>/dev/null)" ] || return 1
  KF_STEP="start $1"
  log "$1 is still starting with these inputs (an earlier run started it): waiting for it"
  kf_wait_started "$1" || kf_start_failed "$1"
}

# kf_wait_started UNIT: wait while UNIT's start job runs (a K3s server's first start
# imports images and founds etcd: minutes on a Raspberry Pi), a line every 30 s, at most
# KF_START_WAIT seconds (default 600); then it must be active.
kf_wait_started() {
  local waited=0 limit=${KF_START_WAIT:-600}
  while [ -n "$(systemctl list-jobs --no-legend "$1" 2>/dev/null)" ]; do
    if [ "$waited" -ge "$limit" ]; then
      KF_ERROR="$1 is still starting after $limit s; it goes on by itself: run this again to wait for it (systemctl status $1)"
      return 1
    fi
    if [ "$waited" -gt 0 ] && [ $((waited % 30)) = 0 ]; then log "$1: still starting after $waited s (waiting up to $limit s)"; fi
    sleep 1; waited=$((waited + 1))
  done
  systemctl is-active -q "$1"
}

# kf_start_failed UNIT: say why UNIT is not running (its own log lines name the cause:
# a failed exec, a cgroup errno, …) and fail.
kf_start_failed() {
  [ -n "$KF_ERROR" ] || KF_ERROR="$1 did not start: $(journalctl -u "$1" -n 1 --no-pager -o cat 2>/dev/null || true)"
  echo "kforge: $KF_ERROR" >&2; journalctl -u "$1" -n 12 --no-pager -o cat >&2 || true; return 1
}

# kf_restart UNIT INPUTS: restart and wait until it has started (kf_wait_started), or
# say why not. The inputs are recorded once the restart is queued, so a run that stops
# waiting, or is killed, leaves a unit that is starting to finish: the next run waits
# for it (kf_unchanged) instead of restarting it half-way.
kf_restart() {
  KF_STEP="start $1"
  systemctl restart --no-block "$1"
  kf_stamp "$1" "$2"
  kf_wait_started "$1" || { kf_start_failed "$1"; return 1; }
  echo "KF restarted $1"
}

# kf_restart_no_block UNIT INPUTS: an etcd member is "started" only with a quorum,
# and the other members may boot minutes later: queue the restart, do not wait.
kf_restart_no_block() {
  KF_STEP="start $1"
  systemctl restart --no-block "$1"; kf_stamp "$1" "$2"; echo "KF restarted $1"
}

# kf_restart_joining UNIT INPUTS SERVER: a K3s agent or joining server is ready only
# once SERVER answers, and a fleet booting from user-data starts every machine at once:
# start it without blocking, wait a little (KF_JOIN_WAIT seconds, default 30) saying
# what for, and succeed either way. systemd keeps it retrying (Restart=always).
kf_restart_joining() {
  local waited=0 limit=${KF_JOIN_WAIT:-30}
  KF_STEP="start $1"
  systemctl restart --no-block "$1"; kf_stamp "$1" "$2"; echo "KF restarted $1"
  until systemctl is-active -q "$1"; do
    if [ "$waited" -ge "$limit" ]; then
      log "$1: still waiting for the server at $3; it keeps retrying on its own (systemctl status $1)"
      return 0
    fi
    if [ $((waited % 10)) = 0 ]; then log "$1: waiting for the server at $3"; fi
    sleep 1; waited=$((waited + 1))
  done
  log "$1: joined $3"
}

# kf_reloaded UNIT INPUTS: record a successful reload (the reload ran just before).
kf_reloaded() {
  kf_stamp "$1" "$2"; echo "KF reloaded $1"
}

# kf_fetch NAME URL SHA256 DEST MODE: download, verify, install atomically.
kf_fetch() {
  local name=$1 url=$2 sum=$3 dest=$4 mode=$5 tmp
  KF_STEP="fetch $name"
  if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum -c --status; then return 0; fi
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.kforge-XXXXXX")
  curl -fsSL --retry 3 -o "$tmp" "$url" || { rm -f "$tmp"; fail "cannot download $name from $url"; }
  if ! echo "$sum  $tmp" | sha256sum -c --status; then
    rm -f "$tmp"; fail "$name from $url does not match its sha256 $sum"
  fi
  chmod "$mode" "$tmp" && mv -f "$tmp" "$dest"
}

# kf_require NAME DEST SHA256|"" HINT: the binary must already be on the host.
kf_require() {
  local name=$1 dest=$2 sum=$3 hint=$4
  KF_STEP="check $name at $dest"
  [ -e "$dest" ] || fail "$dest ($name) is missing: $hint"
  if [ -n "$sum" ] && ! echo "$sum  $dest" | sha256sum -c --status; then
    fail "$dest ($name) does not match its sha256 $sum"
  fi
}

# kf_arch: this host's CPU architecture as release files name it (amd64, arm64).
kf_arch() {
  case "$(uname -m)" in
    x86_64 | amd64) echo amd64 ;;
    aarch64 | arm64) echo arm64 ;;
    *) uname -m ;;
  esac
}

# kf_arch_is ARCH: this host is ARCH.
kf_arch_is() { [ "$(kf_arch)" = "$1" ]; }

# kf_arch_in NAME SETTING "ARCH…": NAME has a source for this host's architecture.
kf_arch_in() {
  case " $3 " in *" $(kf_arch) "*) return 0 ;; esac
  fail "$1: this host is $(uname -m) ($(kf_arch)), but $2 names sources for $3 only; add one for $(kf_arch)"
}

# kf_record_digests, "SHA256 PATH" lines on stdin (what the apply knows each file
# holds, having written or verified it): the digest cache the facts read, with each
# file's size, mtime and inode now, sorted as the facts write it. The next apply then
# hashes nothing and, finding the cache current, writes nothing.
kf_record_digests() {
  local h p out=""
  while read -r h p; do
    [ -f "$p" ] && out+="$h $(stat -c '%s:%.9Y:%i' "$p") $p"$'\n'
  done
  printf '%s' "$out" | sort -u > "$KF_STATE/hash-cache.tmp" && mv -f "$KF_STATE/hash-cache.tmp" "$KF_STATE/hash-cache"
}

# kf_node_labels KUBECTL LIST APPLIED: give each Node the labels and taints LIST names
# (`NODE label KEY=VALUE`, `NODE taint KEY=VALUE:EFFECT`) through the API — a kubelet's
# own ones apply only when its Node registers — and take off what APPLIED (the list as
# last applied) has and LIST dropped. A Node not registered after 60 s does not stop the
# others: its lines stay out of APPLIED, so the next run gives them.
kf_node_labels() {
  local list=$2 applied=$3 n kind v missing=' ' up kubectl
  read -r -a kubectl <<< "$1"
  KF_STEP="label and taint nodes"
  mkdir -p "$(dirname "$applied")"; : > "$applied.new"
  while read -r n kind v; do
    case "$missing" in *" $n "*) continue ;; esac
    up=
    for _ in $(seq 30); do "${kubectl[@]}" get node "$n" >/dev/null 2>&1 && { up=1; break; }; sleep 2; done
    if [ -z "$up" ]; then missing="$missing$n "; log "no Node $n after 60 s: its labels and taints wait for the next run"; continue; fi
    "${kubectl[@]}" "$kind" node "$n" "$v" --overwrite >/dev/null || fail "kubectl $kind node $n $v failed"
    echo "$n $kind $v" >> "$applied.new"
  done < "$list"
  if [ -f "$applied" ]; then
    while read -r n kind v; do
      # An applied list from before taints were listed: `NODE KEY=VALUE`.
      case $kind in label | taint) ;; *) v=$kind kind=label ;; esac
      kf_node_mark_listed "$list" "$n" "$kind" "$v" && continue
      "${kubectl[@]}" "$kind" node "$n" "$(kf_node_mark_id "$kind" "$v")-" >/dev/null 2>&1 || true
    done < "$applied"
  fi
  mv -f "$applied.new" "$applied"
}

# kf_node_mark_id label|taint VALUE: what names it (a label's key; a taint's KEY:EFFECT).
kf_node_mark_id() {
  if [ "$1" = taint ]; then echo "${2%%[=:]*}:${2##*:}"; else echo "${2%%=*}"; fi
}

# kf_node_mark_listed LIST NODE KIND VALUE: LIST still gives NODE a mark of that name.
kf_node_mark_listed() {
  local n kind v id
  id=$(kf_node_mark_id "$3" "$4")
  while read -r n kind v; do
    [ "$n" = "$2" ] && [ "$kind" = "$3" ] && [ "$(kf_node_mark_id "$kind" "$v")" = "$id" ] && return 0
  done < "$1"
  return 1
}

# kf_has PROOF: a command on PATH (the sbin directories too), or an absolute path that exists.
kf_has() {
  case $1 in
    /*) [ -e "$1" ] ;;
    *) PATH="$PATH:/usr/sbin:/sbin" command -v "$1" >/dev/null 2>&1 ;;
  esac
}

# kf_apt ARGS…: apt-get, non-interactive, waiting up to 5 minutes for the dpkg lock (a
# fresh cloud VM runs apt at its first boot); its output on stdout.
kf_apt() {
  DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=300 \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@" 2>&1
}

# kf_enabled_services: the enabled services, sorted, one per line.
kf_enabled_services() {
  { systemctl list-unit-files --type=service --state=enabled --no-legend 2>/dev/null || true; } | awk '{print $1}' | sort
}

# The policy-rc.d that keeps services stopped while kforge installs packages (the
# marker tells an interrupted run's leftover from the host's own).
KF_POLICY=/usr/sbin/policy-rc.d
KF_POLICY_MARK="# kforge: no service starts while kforge installs packages"

# kf_install NAME=PROOF…: install, in one apt-get install, the packages whose PROOF
# (a command, or a file) this host lacks; nothing when it lacks none. `apt-get update`
# runs only when apt cannot find a package (a fresh image has no package lists). No
# service starts while they install (Debian's nginx would serve port 80, or fail on
# it), and a service a package enables is disabled again: kforge runs what it needs
# under its own units. apt downloads every package before it unpacks one, so a mirror
# that fails installs none of them; the error names the packages and apt's own words.
kf_install() {
  local missing=() e out upd status=0 why u ours=0 enabled
  for e in "$@"; do kf_has "${e#*=}" || missing+=("${e%%=*}"); done
  [ ${#missing[@]} -gt 0 ] || return 0
  KF_STEP="install ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 \
    || fail "this host lacks ${missing[*]} and has no apt-get: install them (your distribution's equivalents) by hand, then run again"
  log "installing ${missing[*]} (apt-get, from this host's package sources)"
  # The services enabled before, to tell those the packages (or what they pulled in,
  # nginx-common's nginx.service) enable.
  enabled=$(kf_enabled_services)
  if [ ! -e "$KF_POLICY" ] || grep -qxF "$KF_POLICY_MARK" "$KF_POLICY" 2>/dev/null; then
    printf '#!/bin/sh\n%s\nexit 101\n' "$KF_POLICY_MARK" > "$KF_POLICY"; chmod 755 "$KF_POLICY"; ours=1
  fi
  out=$(kf_apt install --no-install-recommends "${missing[@]}") || status=$?
  # An install killed half-way (kforge killed, the host lost) leaves dpkg interrupted:
  # finish configuring what was unpacked, then try again.
  if [ "$status" != 0 ] && grep -q 'dpkg was interrupted' <<<"$out"; then
    log "dpkg was interrupted by an earlier install: dpkg --configure -a, then again"
    DEBIAN_FRONTEND=noninteractive dpkg --configure -a >/dev/null 2>&1 || true
    status=0; out=$(kf_apt install --no-install-recommends "${missing[@]}") || status=$?
  fi
  if [ "$status" != 0 ] && grep -qE 'Unable to locate package|has no installation candidate|404 +Not Found' <<<"$out"; then
    log "apt cannot find ${missing[*]} in its package lists: apt-get update, then again"
    upd=$(kf_apt update) || true
    status=0; out=$(kf_apt install --no-install-recommends "${missing[@]}") || status=$?
    out="$upd"$'\n'"$out"
  fi
  [ "$ours" = 0 ] || rm -f "$KF_POLICY"
  if [ "$status" != 0 ]; then
    why=$(grep -E '^(E|W): ' <<<"$out" | grep -v 'Some index files failed' | sort -u | head -n 6 | tr '\n' ' ') || true
    fail "apt-get could not install ${missing[*]}: ${why:-exit status $status}"
  fi
  for u in $(comm -13 <(echo "$enabled") <(kf_enabled_services)); do
    systemctl disable --now -q "$u"
    log "$u came with the packages and was left off: kforge runs what it needs under its own units"
  done
  echo "KF installed ${missing[*]}"
}

mkdir -p "$KF_STATE/pending"
