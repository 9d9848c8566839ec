//! The bash script one host runs for one phase. Everything it writes goes through
//! `kf_write` (temp file beside the target, fsync, rename), so a crash leaves the
//! old file or the new one; restarts are marked pending before the writes and the
//! marks cleared only after the restart succeeded.

use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kforge_core::plan::{PlannedCommand, PlannedFile};

use crate::facts::{MANIFEST, PENDING_DIR, STATE_DIR};
use crate::ssh::shell_quote as q;

const PRELUDE: &str = r#"set -euo pipefail
umask 077
kf_write() { # PATH MODE OWNER, base64 content on stdin
  local p=$1 d t; d=$(dirname "$p"); mkdir -p "$d"; t="$d/.$(basename "$p").kforge-tmp-$$"
  base64 -d > "$t"; chmod "$2" "$t"; chown "$3" "$t"; sync "$t"; mv -f "$t" "$p"; echo "KF written $p"
}
kf_restart() { # UNIT
  if ! timeout 120 systemctl restart "$1"; then
    echo "kforge: $1 did not start:" >&2; systemctl status "$1" --no-pager -n 5 >&2 || true; return 1
  fi
  echo "KF restarted $1"
}
"#;

#[derive(Default)]
pub struct PhaseScript {
    pub clean_temp_files: Vec<String>,
    pub writes: Vec<PlannedFile>,
    pub removes: Vec<String>,
    pub daemon_reload: bool,
    pub commands: Vec<PlannedCommand>,
    /// (unit, reload command if a reload suffices).
    pub restarts: Vec<(String, Option<String>)>,
    pub enables: Vec<String>,
    pub manifest_json: Option<String>,
}

impl PhaseScript {
    pub fn render(&self) -> String {
        let mut s = String::from(PRELUDE);
        let _ = writeln!(s, "mkdir -p {STATE_DIR} {PENDING_DIR}");
        for t in &self.clean_temp_files {
            let _ = writeln!(s, "rm -f {}; echo \"KF cleaned {}\"", q(t), t);
        }
        for (unit, _) in &self.restarts {
            let _ = writeln!(s, "touch {}", q(&format!("{PENDING_DIR}/{unit}")));
        }
        for f in &self.writes {
            let _ = writeln!(s, "kf_write {} {:04o} {} <<'KFEOF'", q(&f.path), f.mode, q(&f.owner));
            let encoded = STANDARD.encode(&*f.content);
            for chunk in encoded.as_bytes().chunks(76) {
                s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
                s.push('\n');
            }
            s.push_str("KFEOF\n");
        }
        for r in &self.removes {
            // A unit the plan dropped is stopped and disabled before its file goes. A stop
            // that fails fails the script: the file and the manifest entry stay, so the
            // next apply tries again instead of leaving the unit's effects behind.
            if let Some(unit) =
                r.strip_prefix("/etc/systemd/system/").filter(|u| !u.contains('/') && u.ends_with(".service"))
            {
                let _ = writeln!(s, "if [ -e {} ]; then systemctl disable --now -q {}; fi", q(r), q(unit));
            }
            let _ = writeln!(s, "rm -f {}; echo \"KF removed {}\"", q(r), r);
        }
        if self.daemon_reload {
            s.push_str("systemctl daemon-reload\n");
        }
        for c in &self.commands {
            let _ = writeln!(s, "# {}", c.description);
            let _ = writeln!(s, "{}", c.shell_line());
        }
        for unit in &self.enables {
            let _ = writeln!(s, "systemctl enable -q {}", q(unit));
        }
        for (unit, reload) in &self.restarts {
            match reload {
                Some(cmd) => {
                    let _ = writeln!(
                        s,
                        "if systemctl is-active -q {u} && {cmd}; then echo \"KF reloaded {u}\"; else kf_restart {u}; fi",
                        u = q(unit)
                    );
                }
                None => {
                    let _ = writeln!(s, "kf_restart {}", q(unit));
                }
            }
            let _ = writeln!(s, "rm -f {}", q(&format!("{PENDING_DIR}/{unit}")));
        }
        if let Some(json) = &self.manifest_json {
            let _ = writeln!(
                s,
                "kf_write {MANIFEST} 0600 root:root <<'KFEOF' >/dev/null\n{}\nKFEOF",
                STANDARD.encode(json)
            );
        }
        s
    }
}
