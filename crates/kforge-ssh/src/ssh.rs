//! One host over system OpenSSH: the user's own config, agent and ProxyJump apply,
//! host keys are checked strictly, nothing ever prompts, and one ControlMaster per
//! host carries every command of an apply.
//!
//! DESIGN.md suggested the `openssh` crate; it drives this same ControlMaster
//! machinery from tokio. kforge's apply is a handful of long commands per host, so
//! plain `ssh` processes on threads do the same with no async runtime.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("cannot reach {host} over SSH: {detail}")]
    Connect { host: String, detail: String },
    #[error("on {host}: `{what}` failed: {detail}")]
    Remote { host: String, what: String, detail: String },
    #[error("cannot run ssh: {0}")]
    Spawn(std::io::Error),
}

#[derive(Debug, Clone)]
pub struct Host {
    /// Node name (for messages).
    pub node: String,
    /// What ssh dials: an alias from ssh_config, a name or an address.
    pub target: String,
    pub user: String,
    pub port: u16,
    pub ssh_config: Option<PathBuf>,
    pub control_dir: PathBuf,
}

impl Host {
    fn command(&self) -> Command {
        let mut c = Command::new("ssh");
        if let Some(cfg) = &self.ssh_config {
            c.arg("-F").arg(cfg);
        }
        c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"])
            .args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"])
            .args(["-o", "ControlMaster=auto", "-o", "ControlPersist=60"])
            .arg("-o")
            .arg(format!("ControlPath={}/%C", self.control_dir.display()))
            .args(["-l", &self.user, "-p", &self.port.to_string()])
            .arg(&self.target);
        c
    }

    /// Run a bash script on the host (sent on stdin), returning its stdout.
    pub fn run_script(&self, what: &str, script: &str) -> Result<String, SshError> {
        let mut child = self.spawn_bash()?;
        let mut stdin = child.stdin.take().expect("piped");
        // A failed write means the remote side died; the exit status says why.
        let _ = stdin.write_all(script.as_bytes());
        drop(stdin);
        self.finish(what, child)
    }

    /// Stream a local file to `cat > remote_tmp` then run `then` (install it).
    pub fn upload(&self, what: &str, local: &Path, remote_script: &str) -> Result<String, SshError> {
        let mut c = self.command();
        c.arg(format!("bash -c {}", shell_quote(remote_script)));
        let mut child =
            c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(SshError::Spawn)?;
        let mut stdin = child.stdin.take().expect("piped");
        let mut file = std::fs::File::open(local).map_err(SshError::Spawn)?;
        let _ = std::io::copy(&mut file, &mut stdin);
        drop(stdin);
        self.finish(what, child)
    }

    /// Start `bash -s` with stdin kept open by the caller (the host lock).
    pub fn spawn_bash(&self) -> Result<Child, SshError> {
        let mut c = self.command();
        c.arg("bash -s");
        c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(SshError::Spawn)
    }

    fn finish(&self, what: &str, mut child: Child) -> Result<String, SshError> {
        let mut out = String::new();
        let mut err = String::new();
        if let Some(mut o) = child.stdout.take() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let status = child.wait().map_err(SshError::Spawn)?;
        match status.code() {
            Some(0) => Ok(out),
            // ssh itself failed (connection, authentication, host key).
            Some(255) => Err(SshError::Connect { host: self.node.clone(), detail: last_lines(&err) }),
            _ => Err(SshError::Remote { host: self.node.clone(), what: what.into(), detail: last_lines(&err) }),
        }
    }

    /// Close the ControlMaster.
    pub fn close(&self) {
        let mut c = Command::new("ssh");
        if let Some(cfg) = &self.ssh_config {
            c.arg("-F").arg(cfg);
        }
        let _ = c
            .arg("-o")
            .arg(format!("ControlPath={}/%C", self.control_dir.display()))
            .args(["-l", &self.user, "-p", &self.port.to_string(), "-O", "exit", &self.target])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.trim().lines().collect();
    let tail = &lines[lines.len().saturating_sub(4)..];
    if tail.is_empty() { "no output".into() } else { tail.join(" | ") }
}

pub fn shell_quote(s: &str) -> String {
    kforge_core::render::shell_quote(s)
}
