#!/bin/bash
# The lab's forge, set up on the `forge` machine (as root, over SSH): git over SSH as
# user `git` with one bare repository, /srv/git/fleet.git (branch main, one commit).
# The lab's key ($1) may push; deploy keys added with `forge-add-deploy-key < KEY.pub`
# may only fetch, as a forge's read-only deploy keys. Safe to run again.
set -euo pipefail
lab_key=$1

# A bare machine, as every lab machine: git comes from the lab's package mirror.
if ! command -v git >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get -q update >/dev/null && apt-get -q -y --no-install-recommends install git >/dev/null
fi

id git >/dev/null 2>&1 || useradd --system --home-dir /srv/git --create-home --shell /usr/bin/git-shell git
install -d -o git -g git -m 0700 /srv/git/.ssh
touch /srv/git/.ssh/authorized_keys

# git-shell (the git user's shell) runs a forced command only from ~/git-shell-commands.
install -d -o git -g git -m 0755 /srv/git/git-shell-commands
cat >/srv/git/git-shell-commands/forge-read-only <<'SH'
#!/bin/sh
# authorized_keys command of a deploy key: fetch, never push.
case "$SSH_ORIGINAL_COMMAND" in
  "git-upload-pack "*) exec git-shell -c "$SSH_ORIGINAL_COMMAND" ;;
  *) echo "forge: a deploy key may only fetch" >&2; exit 1 ;;
esac
SH
cat >/usr/local/sbin/forge-add-deploy-key <<'SH'
#!/bin/sh
# forge-add-deploy-key < KEY.pub: let KEY fetch (never push) the repositories here.
set -eu
read -r key
case "$key" in ssh-*) ;; *) echo "forge: not an SSH public key" >&2; exit 1 ;; esac
line="restrict,command=\"forge-read-only\" $key"
grep -qxF "$line" /srv/git/.ssh/authorized_keys || echo "$line" >>/srv/git/.ssh/authorized_keys
echo "forge: deploy key added (read-only)"
SH
chmod 0755 /srv/git/git-shell-commands/forge-read-only /usr/local/sbin/forge-add-deploy-key

grep -qxF "$lab_key" /srv/git/.ssh/authorized_keys || echo "$lab_key" >>/srv/git/.ssh/authorized_keys
chown git:git /srv/git/.ssh/authorized_keys
chmod 0600 /srv/git/.ssh/authorized_keys

if [ ! -d /srv/git/fleet.git ]; then
  git init --quiet --bare --initial-branch=main /srv/git/fleet.git
  seed=$(mktemp -d)
  git -C "$seed" init --quiet --initial-branch=main
  mkdir -p "$seed/clusters/lab"
  printf '# What the lab cluster runs: Flux applies this directory.\n' >"$seed/clusters/lab/README.md"
  git -C "$seed" add .
  git -C "$seed" -c user.name=forge -c user.email=forge@lab commit --quiet -m "An empty cluster directory"
  git -C "$seed" push --quiet /srv/git/fleet.git main
  rm -rf "$seed"
  chown -R git:git /srv/git/fleet.git
fi
echo "forge: ssh://git@$(hostname -I | cut -d' ' -f1)/srv/git/fleet.git ready"
