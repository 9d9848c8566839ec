//! One apply at a time per host: `flock` on /var/lib/kforge/apply.lock, held by an SSH
//! session whose stdin kforge keeps open. When kforge exits — or is killed — the pipe
//! closes, the remote side sees end-of-file and the lock is released: no stale locks.

use std::io::{BufRead, BufReader};
use std::process::Child;

use crate::ssh::{Host, SshError};

pub struct HostLock {
    child: Child,
}

impl HostLock {
    pub fn acquire(host: &Host) -> Result<HostLock, SshError> {
        let mut child = host.spawn_bash()?;
        {
            use std::io::Write;
            let stdin = child.stdin.as_mut().expect("piped");
            // `exec` so that bash's own read of the script does not race `cat`.
            let script = "mkdir -p /var/lib/kforge\nexec flock -n -E 75 /var/lib/kforge/apply.lock -c 'echo KF locked; cat >/dev/null'\n";
            let _ = stdin.write_all(script.as_bytes());
            let _ = stdin.flush();
        }
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() == "KF locked" {
            return Ok(HostLock { child });
        }
        let status = child.wait().ok().and_then(|s| s.code());
        let detail = match status {
            Some(75) => "another kforge apply is running on this host (lock /var/lib/kforge/apply.lock)".to_string(),
            Some(255) => return Err(SshError::Connect { host: host.node.clone(), detail: "connection failed".into() }),
            other => format!("could not take the apply lock (exit {other:?})"),
        };
        Err(SshError::Remote { host: host.node.clone(), what: "lock".into(), detail })
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}
