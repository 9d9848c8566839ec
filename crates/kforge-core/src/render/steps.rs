//! The one step language every executor speaks, and the one place steps become shell.
//!
//! The bootstrap script (cloud-init, rendered trees) and every apply phase over SSH
//! are lists of [`Step`]s; [`to_shell`] renders them after the shared functions in
//! `sh/steps.sh` (shellcheck runs on both in CI). A step never guesses what a file is:
//! the plan says (see [`crate::plan::FileKind`]).

use std::fmt::Write;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::shell_quote as q;
use crate::plan::{PlannedCommand, PlannedFile};

/// The functions every rendered script starts with, as documented in the source.
pub const PRELUDE: &str = include_str!("sh/steps.sh");

/// [`PRELUDE`] as scripts carry it: without its comment and blank lines. Every node's
/// user-data carries a copy, and EC2 takes 16 KiB of user-data; the comments (about a
/// third of the functions' bytes) stay in kforge's source, which one line names.
fn compact_prelude() -> &'static str {
    static COMPACT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let mut s = String::from("# kforge's step functions (commented in kforge's source: render/sh/steps.sh)\n");
        for line in PRELUDE.lines().filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')) {
            s.push_str(line);
            s.push('\n');
        }
        s
    });
    &COMPACT
}
/// Units restarted with pending changes are marked here first (apply).
pub const PENDING_DIR: &str = "/var/lib/kforge/pending";

#[derive(Debug, Clone)]
pub enum Step {
    /// A `# comment` line: what the next lines are for.
    Comment(String),
    /// Progress on stderr.
    Log(String),
    /// Install, in one `apt-get install`, those of the packages this host lacks (each
    /// judged by its proof, `Package::proof`); the units they enable are left off.
    Install(Vec<crate::packages::Package>),
    /// Download `url`, verify it against `sha256`, install it at `dest`.
    Fetch {
        name: String,
        url: String,
        sha256: String,
        dest: String,
        mode: u32,
    },
    /// The binary must already be at `dest` (it cannot travel in user-data).
    Require {
        name: String,
        dest: String,
        sha256: Option<String>,
        hint: String,
    },
    /// The host's architecture must be one of `archs` (an artifact with one source per
    /// architecture, rendered for a host whose architecture the plan did not know).
    ArchCheck {
        name: String,
        setting: String,
        archs: Vec<String>,
    },
    /// `step` only on a host of `arch` (`uname -m`, named as release files name it).
    OnArch {
        arch: String,
        step: Box<Step>,
    },
    /// Remove a leftover temp file of an interrupted apply.
    CleanTemp(String),
    /// The unit's inputs are about to change: restart it even if this run dies.
    MarkPending(String),
    /// The same, for a unit whose reload applies every change it is about to get (`wg
    /// syncconf`, `nft -f`; its unit definition unchanged): a run after this one died
    /// reloads it rather than restart it (a restart of the mesh drops its routes). A
    /// restart mark already there stays one.
    MarkPendingReload(String),
    /// Take an artifact from stdin, verify it, install it at `dest` (apply's upload).
    Receive {
        dest: String,
        sha256: String,
        mode: u32,
    },
    /// Write the file atomically (content travels base64 in the script).
    Write(PlannedFile),
    /// Write the file only where it is absent: a program owns it after its first
    /// start (`PlannedFile::handed_over`).
    WriteOnce(PlannedFile),
    /// Write the file unless it already holds exactly this (the bootstrap's own
    /// writes: a re-run writes nothing).
    Ensure(PlannedFile),
    /// Install a staged handed-over file (`PlannedFile::placed_path`) where its path is
    /// absent, then drop the staged copy.
    PlaceOnce {
        staged: String,
        dest: String,
        mode: u32,
        owner: String,
    },
    /// Remove a file kforge wrote before; a unit is stopped and disabled first.
    Remove {
        path: String,
        unit: Option<String>,
    },
    DaemonReload,
    /// A command, skipped when its guard holds.
    Run(PlannedCommand),
    Enable(String),
    /// (Re)start `unit`, recording the digest of the inputs it runs with.
    Restart {
        unit: String,
        inputs: String,
        /// Try this first while the unit runs (e.g. `wg syncconf`: tunnels stay up).
        reload: Option<String>,
        /// Only when the unit is down or ran with other inputs (re-runnable scripts).
        when_changed: bool,
        /// Queue the restart without waiting for the unit to be ready.
        no_block: bool,
        /// The unit is ready once it has joined this server: start it, wait a little
        /// saying so, and succeed either way (it keeps retrying on its own).
        joins: Option<String>,
    },
    ClearPending(String),
    /// Record the digest of each of these files with its size, mtime and inode now, so
    /// the next facts reuse the digests (apply, after it wrote or uploaded anything).
    RecordDigests(Vec<(String, String)>),
    /// Record what kforge wrote on this host (JSON), for the next apply.
    RecordManifest {
        path: String,
        json: String,
        /// Leave a record that lists the same files (the bootstrap: a re-run on a host
        /// apply manages keeps apply's record).
        unless_same: bool,
    },
    /// `then` where the shell test `test` holds, `otherwise` elsewhere: what the host
    /// decides at boot (a bootstrap cannot ask kforge about the host's kernel).
    Branch {
        test: String,
        then: Vec<Step>,
        otherwise: Vec<Step>,
    },
    /// From here on, how the script ends is recorded at `path` (done, or the step that
    /// failed and its error) for `kforge status` and `kforge doctor` to read.
    RecordOutcome(String),
}

/// Steps as shell lines, without shebang or prelude (to compare two lists as the host
/// would run them).
pub fn render_steps(steps: &[Step]) -> String {
    let mut s = String::new();
    for step in steps {
        render_step(&mut s, step);
    }
    s
}

/// Render steps as one bash script: shebang, header comment lines, prelude, steps.
pub fn to_shell(header: &[String], steps: &[Step]) -> String {
    let mut s = String::from("#!/bin/bash\n");
    for line in header {
        let _ = writeln!(s, "# {line}");
    }
    s.push_str(compact_prelude());
    for step in steps {
        render_step(&mut s, step);
    }
    s
}

fn render_step(s: &mut String, step: &Step) {
    let _ = match step {
        Step::Comment(text) => writeln!(s, "\n# {text}"),
        Step::Log(text) => writeln!(s, "log {}", q(text)),
        Step::Install(packages) => {
            let args: Vec<String> = packages.iter().map(|p| q(&p.install_arg())).collect();
            writeln!(s, "kf_install {}", args.join(" "))
        }
        Step::Fetch { name, url, sha256, dest, mode } => {
            writeln!(s, "kf_fetch {} {} {} {} {mode:o}", q(name), q(url), q(sha256), q(dest))
        }
        Step::Require { name, dest, sha256, hint } => {
            let sum = sha256.clone().unwrap_or_default();
            writeln!(s, "kf_require {} {} {} {}", q(name), q(dest), q(&sum), q(hint))
        }
        Step::ArchCheck { name, setting, archs } => {
            writeln!(s, "kf_arch_in {} {} {}", q(name), q(setting), q(&archs.join(" ")))
        }
        Step::OnArch { arch, step } => {
            let mut inner = String::new();
            render_step(&mut inner, step);
            write!(s, "kf_arch_is {} && {inner}", q(arch))
        }
        Step::CleanTemp(path) => writeln!(s, "rm -f {p}; echo {m}", p = q(path), m = q(&format!("KF cleaned {path}"))),
        Step::MarkPending(unit) => writeln!(s, "echo restart > {}", q(&format!("{PENDING_DIR}/{unit}"))),
        Step::MarkPendingReload(unit) => {
            let mark = q(&format!("{PENDING_DIR}/{unit}"));
            writeln!(s, "[ -e {mark} ] || echo reload > {mark}")
        }
        Step::Receive { dest, sha256, mode } => writeln!(s, "kf_receive {} {} {mode:o}", q(dest), q(sha256)),
        Step::Write(f) => write_file(s, "kf_write", f),
        Step::WriteOnce(f) => write_file(s, "kf_write_once", f),
        Step::Ensure(f) => {
            let _ = writeln!(s, "kf_ensure {} {:04o} {} {} <<'KFEOF'", q(&f.path), f.mode, q(&f.owner), f.sha256);
            let encoded = STANDARD.encode(&*f.content);
            for chunk in encoded.as_bytes().chunks(76) {
                s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
                s.push('\n');
            }
            writeln!(s, "KFEOF")
        }
        Step::PlaceOnce { staged, dest, mode, owner } => {
            writeln!(s, "kf_place_once {} {} {mode:04o} {}", q(staged), q(dest), q(owner))
        }
        Step::Remove { path, unit } => {
            if let Some(unit) = unit {
                // A stop that fails fails the script: the file and its manifest entry
                // stay, so the next run tries again instead of leaving the unit behind.
                let _ = writeln!(s, "if [ -e {} ]; then systemctl disable --now -q {}; fi", q(path), q(unit));
            }
            writeln!(s, "rm -f {p}; echo {m}", p = q(path), m = q(&format!("KF removed {path}")))
        }
        Step::DaemonReload => writeln!(s, "systemctl daemon-reload"),
        Step::Run(c) => writeln!(
            s,
            "# {d}\nKF_STEP={}; {}",
            q(&format!("run: {d}", d = c.description)),
            c.shell_line(),
            d = c.description
        ),
        Step::Enable(unit) => writeln!(s, "systemctl enable -q {}", q(unit)),
        Step::Restart { unit, inputs, reload, when_changed, no_block, joins } => {
            let (u, i) = (q(unit), q(inputs));
            let restart = match (joins, no_block) {
                (Some(server), _) => format!("kf_restart_joining {u} {i} {}", q(server)),
                (None, true) => format!("kf_restart_no_block {u} {i}"),
                (None, false) => format!("kf_restart {u} {i}"),
            };
            let action = match reload {
                Some(cmd) => {
                    format!("if systemctl is-active -q {u} && {cmd}; then kf_reloaded {u} {i}; else {restart}; fi")
                }
                None => restart,
            };
            if *when_changed { writeln!(s, "kf_unchanged {u} {i} || {{ {action}; }}") } else { writeln!(s, "{action}") }
        }
        Step::ClearPending(unit) => writeln!(s, "rm -f {}", q(&format!("{PENDING_DIR}/{unit}"))),
        Step::RecordDigests(files) => {
            let _ = writeln!(s, "kf_record_digests <<'KFEOF'");
            for (path, sha256) in files {
                let _ = writeln!(s, "{sha256} {path}");
            }
            writeln!(s, "KFEOF")
        }
        // Plain JSON, not base64: one line (serde escapes newlines), so the quoted
        // heredoc cannot end early, and gzip folds the bootstrap's two variants together.
        Step::RecordManifest { path, json, unless_same } => {
            assert!(!json.contains('\n'), "a manifest is one line of JSON");
            let when = if *unless_same { "unless-same" } else { "always" };
            writeln!(s, "kf_record_manifest {} {when} <<'KFEOF'\n{json}\nKFEOF", q(path))
        }
        Step::Branch { test, then, otherwise } => {
            let _ = writeln!(s, "if {test}; then");
            then.iter().for_each(|step| render_step(s, step));
            let _ = writeln!(s, "else");
            otherwise.iter().for_each(|step| render_step(s, step));
            writeln!(s, "fi")
        }
        Step::RecordOutcome(path) => writeln!(s, "trap 'kf_outcome {} $?' EXIT", q(path)),
    };
}

fn write_file(s: &mut String, function: &str, f: &PlannedFile) -> std::fmt::Result {
    writeln!(s, "{function} {} {:04o} {} <<'KFEOF'", q(&f.path), f.mode, q(&f.owner))?;
    let encoded = STANDARD.encode(&*f.content);
    for chunk in encoded.as_bytes().chunks(76) {
        s.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        s.push('\n');
    }
    writeln!(s, "KFEOF")
}
