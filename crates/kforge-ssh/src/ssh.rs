//! One host over system OpenSSH: the user's own config, agent and ProxyJump apply,
//! host keys are checked strictly, nothing ever prompts, and one ControlMaster per
//! host carries every command of an apply.
//!
//! The original design suggested the `openssh` crate; it drives this same ControlMaster
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
    /// The host of `target`, dialled with `ssh_config` through connections shared in `control_dir`.
    pub fn of(target: &crate::Target, ssh_config: Option<PathBuf>, control_dir: &std::path::Path) -> Host {
        Host {
            node: target.node.clone(),
            target: target.host.clone(),
            user: target.user.clone(),
            port: target.port,
            ssh_config,
            control_dir: control_dir.to_path_buf(),
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new("ssh");
        if crate::faults::is_cut(&self.node) {
            // A lost host, as the fault matrix makes one: no connection, not even over
            // the shared one (ssh takes the first value given for an option).
            c.args(["-o", "ProxyCommand=false", "-o", "ControlMaster=no", "-o", "ControlPath=none"]);
        }
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

    /// Copy a remote file to `local` (written 0600), returning its sha256.
    pub fn download(&self, what: &str, remote: &str, local: &Path) -> Result<String, SshError> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut c = self.command();
        c.arg(format!("cat {}", shell_quote(remote)));
        let mut child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().map_err(SshError::Spawn)?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(local)
            .map_err(SshError::Spawn)?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut hasher = kforge_core::hashing::Sha256Writer::new(&mut file);
        let copied = std::io::copy(&mut stdout, &mut hasher);
        let sum = hasher.finish();
        self.finish(what, child)?;
        copied.map_err(SshError::Spawn)?;
        file.sync_all().map_err(SshError::Spawn)?;
        Ok(sum)
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
            Some(255) => Err(self.connect_error(&err)),
            _ => Err(SshError::Remote { host: self.node.clone(), what: what.into(), detail: last_lines(&err) }),
        }
    }

    /// What ssh said when it could not connect (its exit 255): its last lines, and the way
    /// out when the host key is not the pinned one.
    pub(crate) fn connect_error(&self, stderr: &str) -> SshError {
        let mut detail = last_lines(stderr);
        if detail.trim().is_empty() {
            detail = "connection failed".into();
        }
        if stderr.contains("IDENTIFICATION HAS CHANGED") || stderr.contains("Host key verification failed") {
            detail.push_str(&format!(
                "\n  help: {node}'s SSH host key is not the one your known_hosts pins. If you reinstalled or replaced the machine, check its new key out of band (the provider's console), replace the old line (ssh-keygen -R {target}, with -f FILE for another known_hosts), add the new one, and apply again: kforge re-joins it (docs/nodes.md, \"Replacing a node\"). If you did not, stop: something else answers at its address",
                node = self.node,
                target = self.target
            ));
        }
        SshError::Connect { host: self.node.clone(), detail }
    }

    /// Close the ControlMaster.
    pub fn close(&self) {
        close_all([self]);
    }

    fn close_command(&self) -> Command {
        let mut c = Command::new("ssh");
        if let Some(cfg) = &self.ssh_config {
            c.arg("-F").arg(cfg);
        }
        c.arg("-o")
            .arg(format!("ControlPath={}/%C", self.control_dir.display()))
            .args(["-l", &self.user, "-p", &self.port.to_string(), "-O", "exit", &self.target])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }
}

/// Close every host's ControlMaster at once: each `ssh -O exit` waits for its master
/// to go, ~70 ms a host one after another at the end of every apply.
pub fn close_all<'a>(hosts: impl IntoIterator<Item = &'a Host>) {
    let closing: Vec<_> = hosts.into_iter().filter_map(|h| h.close_command().spawn().ok()).collect();
    for mut c in closing {
        let _ = c.wait();
    }
}

/// The directory holding this process's ControlMaster sockets: private (0700),
/// removed on drop. Directories left by killed runs are swept on creation.
pub struct ControlDir(PathBuf);

impl ControlDir {
    pub fn create() -> Result<ControlDir, String> {
        use std::os::unix::fs::DirBuilderExt;
        sweep_dead_control_dirs();
        // One per use (status opens etcd's and its own): pid, then a counter.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kforge-ssh-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(ControlDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ControlDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A killed kforge leaves its ControlMaster directory behind: remove those whose
/// process is gone.
fn sweep_dead_control_dirs() {
    for entry in std::fs::read_dir(std::env::temp_dir()).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix("kforge-ssh-").and_then(|rest| rest.split('-').next()?.parse::<u32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The end of a failed script's stderr: enough lines for a unit's own log (its cause).
fn last_lines(s: &str) -> String {
    let lines: Vec<&str> = s.trim().lines().collect();
    let tail = &lines[lines.len().saturating_sub(12)..];
    if tail.is_empty() { "no output".into() } else { tail.join(" | ") }
}

pub fn shell_quote(s: &str) -> String {
    kforge_core::render::shell_quote(s)
}

/// A bash array assignment: `NAME=('a' 'b c')`, each item quoted.
pub fn sh_array(name: &str, items: &[String]) -> String {
    format!("{name}=({})", items.iter().map(|i| shell_quote(i)).collect::<Vec<_>>().join(" "))
}
