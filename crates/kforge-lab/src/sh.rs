//! Running the host's tools (ip, mount, debootstrap, ssh-keygen) with errors that
//! say what was run and what it printed.

use std::process::{Command, Stdio};

#[derive(Debug, thiserror::Error)]
#[error("`{command}` failed: {output}")]
pub struct CommandError {
    pub command: String,
    pub output: String,
}

/// Run `program args…`, returning stdout; stderr goes into the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, CommandError> {
    let shown = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| CommandError { command: shown.clone(), output: e.to_string() })?;
    if !out.status.success() {
        let mut output = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if output.is_empty() {
            output = format!("exit status {}", out.status);
        }
        return Err(CommandError { command: shown, output });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run inside a network namespace.
pub fn in_ns(ns: &str, program: &str, args: &[&str]) -> Result<String, CommandError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Like [`run`], ignoring failure (teardown of what may already be gone).
pub fn quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
}
