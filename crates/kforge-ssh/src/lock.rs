//! One apply at a time per host: `flock` on /run/kforge/apply.lock, held by an SSH
//! session as a *lease*. kforge writes a heartbeat line every 10 s; the holder exits
//! (releasing the lock) at end-of-file — kforge exited or was killed — or after 30 s
//! without a heartbeat — the connection died, as when a host's network drops
//! mid-apply and its sshd never learns the client is gone. A new apply waits up to
//! 45 s, so it outlasts a stale lease but not a live apply.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ssh::{Host, SshError};

const HEARTBEAT: Duration = Duration::from_secs(10);
/// The lease, kept as shell (shellcheck runs on the file in CI).
const SCRIPT: &str = include_str!("sh/lock.sh");

pub struct HostLock {
    child: Child,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
}

impl HostLock {
    pub fn acquire(host: &Host) -> Result<HostLock, SshError> {
        let mut child = host.spawn_bash()?;
        let mut stdin = child.stdin.take().expect("piped");
        let _ = stdin.write_all(SCRIPT.as_bytes());
        let _ = stdin.flush();
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if line.trim() != "KF locked" {
            drop(stdin);
            let detail = match child.wait().ok().and_then(|s| s.code()) {
                Some(75) => "another kforge apply holds /run/kforge/apply.lock (waited 45 s)".to_string(),
                Some(255) => {
                    let mut said = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut said);
                    }
                    return Err(host.connect_error(&said));
                }
                other => format!("could not take the apply lock (exit {other:?})"),
            };
            return Err(SshError::Remote { host: host.node.clone(), what: "lock".into(), detail });
        }
        let stdin = Arc::new(Mutex::new(Some(stdin)));
        let beat = Arc::clone(&stdin);
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(HEARTBEAT);
                let mut guard = beat.lock().unwrap_or_else(|e| e.into_inner());
                let alive = guard.as_mut().is_some_and(|s| s.write_all(b"\n").and_then(|_| s.flush()).is_ok());
                if !alive {
                    break;
                }
            }
        });
        Ok(HostLock { child, stdin })
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        // Closing stdin ends the lease; the holder exits and the lock is free.
        self.stdin.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = self.child.wait();
    }
}
