//! The bootstrap script: the node's plan as ordered shell steps.
//!
//! It expects the plan's files to be in place already (cloud-init `write_files`, or
//! the rendered tree copied to `/`), then per phase: install artifacts (verified by
//! sha256), reload systemd if unit files are part of the plan, run the phase's
//! commands, enable and (re)start its units. Re-running it converges again.

use std::fmt::Write;

use super::shell_quote as q;
use crate::plan::{ArtifactSource, NodePlan, Phase};

pub const PATH: &str = "/var/lib/kforge/bootstrap.sh";

const PRELUDE: &str = r#"set -euo pipefail
log() { echo "kforge: $*" >&2; }
fail() { echo "kforge: error: $*" >&2; exit 1; }

# fetch_artifact NAME URL SHA256 DEST MODE: download, verify, install atomically.
fetch_artifact() {
  local name=$1 url=$2 sum=$3 dest=$4 mode=$5 tmp
  if [ -f "$dest" ] && echo "$sum  $dest" | sha256sum -c --status; then return 0; fi
  mkdir -p "$(dirname "$dest")"
  tmp=$(mktemp "$dest.kforge-XXXXXX")
  curl -fsSL --retry 3 -o "$tmp" "$url" || { rm -f "$tmp"; fail "cannot download $name from $url"; }
  if ! echo "$sum  $tmp" | sha256sum -c --status; then
    rm -f "$tmp"; fail "$name from $url does not match its sha256 $sum"
  fi
  chmod "$mode" "$tmp" && mv -f "$tmp" "$dest"
}

# require_artifact NAME DEST SHA256|"" HINT: the binary must already be on the host.
require_artifact() {
  local name=$1 dest=$2 sum=$3 hint=$4
  [ -x "$dest" ] || fail "$dest ($name) is missing: $hint"
  if [ -n "$sum" ] && ! echo "$sum  $dest" | sha256sum -c --status; then
    fail "$dest ($name) does not match its sha256 $sum"
  fi
}

# need COMMAND PACKAGE: install PACKAGE when COMMAND is missing (apt hosts).
need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  command -v apt-get >/dev/null 2>&1 || fail "$1 is missing; install package $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >/dev/null
}
"#;

/// Render the bootstrap script for one node.
pub fn render_bootstrap(cluster: &str, node: &NodePlan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#!/bin/bash");
    let _ = writeln!(s, "# kforge bootstrap of node {} (cluster {}). Generated; safe to re-run.", node.node, cluster);
    let _ =
        writeln!(s, "# The files of the plan must already be in place (cloud-init write_files or the rendered tree).");
    s.push_str(PRELUDE);
    let _ = writeln!(s);
    let _ = writeln!(s, "need wg wireguard-tools");
    let _ = writeln!(s, "need nft nftables");
    for c in &node.required_commands {
        // The commands kforge requires are named like their Debian/Ubuntu packages.
        let _ = writeln!(s, "need {} {}", q(c), q(c));
    }
    let mut reloaded = false;
    for phase in &node.phases {
        let _ = writeln!(s, "\n# --- phase: {} ---", phase.phase.name());
        let _ = writeln!(s, "log {}", q(&format!("{}: phase {}", node.node, phase.phase.name())));
        for a in &phase.artifacts {
            let sum = a.sha256.clone().unwrap_or_default();
            match &a.source {
                ArtifactSource::Url { url } => {
                    let _ =
                        writeln!(s, "fetch_artifact {} {} {} {} {:o}", q(&a.name), q(url), q(&sum), q(&a.dest), a.mode);
                }
                ArtifactSource::Path { path } => {
                    let hint = format!(
                        "it comes from {path} on the workstation; bake it into the image, run `kforge apply`, or pin artifacts.{}.url + sha256",
                        a.name
                    );
                    let _ = writeln!(s, "require_artifact {} {} {} {}", q(&a.name), q(&a.dest), q(&sum), q(&hint));
                }
            }
        }
        let has_unit_files = node.files().any(|f| f.path.starts_with("/etc/systemd/system/"));
        if !phase.units.is_empty() && has_unit_files && !reloaded {
            let _ = writeln!(s, "systemctl daemon-reload");
            reloaded = true;
        }
        for c in &phase.commands {
            let _ = writeln!(s, "# {}", c.description);
            let _ = writeln!(s, "{}", c.shell_line());
        }
        for u in phase.units.iter().filter(|u| u.start) {
            if u.enable {
                let _ = writeln!(s, "systemctl enable -q {}", q(&u.name));
            }
            if phase.phase == Phase::Datastore {
                // An etcd member is "started" only once it has a quorum, and the other
                // controllers may boot minutes later: do not wait for it here.
                let _ = writeln!(s, "systemctl restart --no-block {}", q(&u.name));
            } else {
                let _ = writeln!(s, "systemctl restart {}", q(&u.name));
            }
        }
    }
    let _ = writeln!(s, "\nlog {}", q(&format!("{}: bootstrap finished", node.node)));
    s
}
