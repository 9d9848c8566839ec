//! One lab machine: an overlay on the shared root filesystem, its own identity
//! (hostname, machine-id, SSH host key), booted with systemd-nspawn into its
//! network namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;
use crate::sh::{quietly, run};

/// Mount `root` as an overlay (lower = the shared image) and give it an identity.
pub fn prepare(image: &Path, dir: &Path, name: &str, authorized_key: &str) -> Result<String, LabError> {
    for sub in ["upper", "work", "root"] {
        fs::create_dir_all(dir.join(sub)).map_err(|e| LabError::io(dir, e))?;
    }
    let root = dir.join("root");
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        image.display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    run("mount", &["-t", "overlay", "overlay", "-o", &opts, &root.display().to_string()]).map_err(LabError::Command)?;
    let write = |rel: &str, text: &str, mode: u32| -> Result<(), LabError> {
        use std::os::unix::fs::PermissionsExt;
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).map_err(|e| LabError::io(&p, e))?;
        fs::write(&p, text).map_err(|e| LabError::io(&p, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(|e| LabError::io(&p, e))
    };
    write("etc/hostname", &format!("{name}\n"), 0o644)?;
    write("etc/hosts", &format!("127.0.0.1 localhost\n127.0.1.1 {name}\n"), 0o644)?;
    let id: String = kforge_core::random::random_hex(16);
    write("etc/machine-id", &format!("{id}\n"), 0o444)?;
    write("root/.ssh/authorized_keys", authorized_key, 0o600)?;
    let key = root.join("etc/ssh/ssh_host_ed25519_key");
    run("ssh-keygen", &["-q", "-t", "ed25519", "-N", "", "-C", name, "-f", &key.display().to_string()])
        .map_err(LabError::Command)?;
    let public =
        fs::read_to_string(root.join("etc/ssh/ssh_host_ed25519_key.pub")).map_err(|e| LabError::io(&key, e))?;
    // "ssh-ed25519 AAAA… comment" → "ssh-ed25519 AAAA…"
    Ok(public.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
}

/// Boot the machine in the background; returns the nspawn process id.
pub fn boot(root: &Path, name: &str, ns: &str, log: &Path) -> Result<u32, LabError> {
    let log_file = fs::File::create(log).map_err(|e| LabError::io(log, e))?;
    let err_file = log_file.try_clone().map_err(|e| LabError::io(log, e))?;
    // setsid: the machine outlives this kforge process (until `lab down`).
    let child = Command::new("setsid")
        .args(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "-D"])
        .arg(root)
        .args(["-M", name, &format!("--network-namespace-path=/run/netns/{ns}")])
        .args(["--bind=/dev/net/tun", "--capability=CAP_NET_ADMIN,CAP_NET_RAW", "-b"])
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file)
        .spawn()
        .map_err(|e| LabError::Setup(format!("cannot start systemd-nspawn: {e} (install systemd-container)")))?;
    Ok(child.id())
}

pub fn is_running(pid: u32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("systemd-nspawn"))
        .unwrap_or(false)
}

/// Stop the machine: SIGTERM makes nspawn shut systemd down cleanly; SIGKILL after 15 s.
pub fn stop(pid: u32) {
    if !is_running(pid) {
        return;
    }
    quietly("kill", &["-TERM", &pid.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if !is_running(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    quietly("kill", &["-KILL", &pid.to_string()]);
    std::thread::sleep(Duration::from_millis(500));
}

/// Unmount the overlay (retrying while nspawn lets go) and delete the machine's files.
pub fn remove(dir: &Path) {
    let root: PathBuf = dir.join("root");
    let root_s = root.display().to_string();
    for _ in 0..20 {
        if !is_mounted(&root) {
            break;
        }
        quietly("umount", &[&root_s]);
        std::thread::sleep(Duration::from_millis(250));
    }
    if is_mounted(&root) {
        quietly("umount", &["-l", &root_s]);
    }
    let _ = fs::remove_dir_all(dir);
}

pub fn is_mounted(path: &Path) -> bool {
    let p = path.display().to_string();
    fs::read_to_string("/proc/mounts")
        .map(|m| m.lines().any(|l| l.split_whitespace().nth(1) == Some(&p)))
        .unwrap_or(false)
}
