//! One operator at a time per cluster file. Every command that writes the secrets bundle
//! (`apply`, `secrets update`, `certs renew`) holds a lock beside the cluster file
//! (`kforge.yaml.lock`) from before its first read of the bundle to after its last save:
//! two applies started together would otherwise each create a PKI, and one would save a
//! bundle read before the other's change over it.
//!
//! The lock is the kernel's (`flock`): it goes with the process, however it ends, so a
//! killed kforge never leaves it held. The file names the holder (command, pid, host,
//! since) for whoever waits; it holds no secret.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long to wait for another holder.
#[derive(Debug, Clone, Copy)]
pub enum Wait {
    /// Refuse at once, naming the holder (`--no-wait`).
    No,
    /// Wait up to this long, a line every 30 s.
    Up(Duration),
}

/// The default wait: longer than a rolling upgrade of a small cluster.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30 * 60);

/// Held while it lives.
#[derive(Debug)]
pub struct ClusterLock {
    file: File,
    path: PathBuf,
}

/// Where the lock of `cluster_file` lives: beside it, `NAME.lock`.
pub fn lock_path(cluster_file: &Path) -> PathBuf {
    let mut name = cluster_file.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "kforge.yaml".into());
    name.push(".lock");
    cluster_file.with_file_name(name)
}

impl ClusterLock {
    /// Take the lock of `cluster_file` for `command`, waiting as `wait` says; `log` gets
    /// the lines that say who holds it and for how long kforge has waited.
    pub fn acquire(cluster_file: &Path, command: &str, wait: Wait, log: &dyn Fn(&str)) -> Result<ClusterLock, String> {
        let path = lock_path(cluster_file);
        let file = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(&path)
                .map_err(|e| format!("{}: {e}", path.display()))?
        };
        let started = Instant::now();
        let mut said = Duration::ZERO;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => return Err(format!("{}: {e}", path.display())),
            }
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            let holder = if holder.is_empty() { "another process" } else { holder };
            let waited = started.elapsed();
            match wait {
                Wait::No => {
                    return Err(format!(
                        "{} is held by {holder}: another kforge works on this cluster\n  help: wait for it (run again without --no-wait), or stop it",
                        path.display()
                    ));
                }
                Wait::Up(max) if waited >= max => {
                    return Err(format!(
                        "{} is still held by {holder} after {} s of waiting\n  help: is that kforge stuck? stop it (its lock goes with it), then run again",
                        path.display(),
                        waited.as_secs()
                    ));
                }
                // The holder writes its line just after it takes the lock: a moment to
                // read it, rather than "another process".
                Wait::Up(_) if holder == "another process" && waited < Duration::from_secs(2) => {}
                Wait::Up(max) if waited >= said => {
                    log(&format!(
                        "waiting for {} (held by {holder}; up to {} s, --no-wait refuses instead)",
                        path.display(),
                        max.as_secs()
                    ));
                    said += Duration::from_secs(30);
                }
                Wait::Up(_) => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let lock = ClusterLock { file, path };
        lock.say_holder(command);
        Ok(lock)
    }

    /// Write who holds it, for whoever waits.
    fn say_holder(&self, command: &str) {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let line = format!("`{command}` (pid {} on {}, since unix time {since})\n", std::process::id(), host.trim());
        let mut f = &self.file;
        let _ = f.set_len(0);
        let _ = f.write_all(line.as_bytes());
        let _ = f.sync_data();
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        // The holder's line goes first, then the lock (closing the file releases it too).
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_waits_or_refuses_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kforge.yaml");
        assert_eq!(lock_path(&file), dir.path().join("kforge.yaml.lock"));
        let first = ClusterLock::acquire(&file, "kforge apply", Wait::No, &|_| {}).unwrap();
        let holder = std::fs::read_to_string(first.path()).unwrap();
        assert!(holder.starts_with(&format!("`kforge apply` (pid {} on ", std::process::id())), "{holder}");
        // flock is per open file: a second open in this process is a second holder.
        let refused = ClusterLock::acquire(&file, "kforge secrets update", Wait::No, &|_| {}).unwrap_err();
        assert!(refused.contains("is held by `kforge apply` (pid"), "{refused}");
        let lines = std::sync::Mutex::new(Vec::new());
        let gave_up =
            ClusterLock::acquire(&file, "kforge secrets update", Wait::Up(Duration::from_millis(500)), &|l| {
                lines.lock().unwrap().push(l.to_string())
            })
            .unwrap_err();
        assert!(gave_up.contains("still held by `kforge apply`"), "{gave_up}");
        assert!(lines.lock().unwrap()[0].starts_with("waiting for "), "{:?}", lines.lock().unwrap());
        // Released: the next one takes it, however long it meant to wait.
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            drop(first);
        });
        let second = ClusterLock::acquire(&file, "kforge secrets update", Wait::Up(Duration::from_secs(10)), &|_| {});
        releaser.join().unwrap();
        assert!(std::fs::read_to_string(second.unwrap().path()).unwrap().starts_with("`kforge secrets update`"));
    }
}
