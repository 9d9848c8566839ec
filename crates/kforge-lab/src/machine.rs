//! One lab machine: an overlay on the shared root filesystem, its own identity
//! (hostname, machine-id, SSH host key), booted with systemd-nspawn into its
//! network namespace.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::LabError;
use crate::sh::{quietly, run};

/// Joins the machine's own cgroup subtree, then execs nspawn in a cgroup namespace.
const ENTER_CGROUPS: &str = include_str!("scripts/enter-cgroups.sh");
/// PID 1 until systemd: opens the machine's cgroup controllers for containers.
const MACHINE_INIT: &str = include_str!("scripts/machine-init.sh");
const MACHINE_INIT_PATH: &str = "usr/local/sbin/kforge-lab-init";

/// Mount `root` as an overlay (lower = the shared image) and give it an identity.
/// `nameserver` goes into its resolv.conf: a lab address, never the workstation's own
/// resolver, so nothing in the lab sends DNS queries off the lab's networks.
pub fn prepare(
    image: &Path,
    dir: &Path,
    name: &str,
    authorized_key: &str,
    nameserver: std::net::Ipv4Addr,
    mirror: Option<std::net::Ipv4Addr>,
) -> Result<String, LabError> {
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
    write(
        "etc/resolv.conf",
        &format!("# kforge lab: a lab address (nothing answers DNS there)\nnameserver {nameserver}\n"),
        0o644,
    )?;
    // apt installs from the lab's mirror, as a VPS from its provider's.
    if let Some(ip) = mirror {
        write(crate::mirror::SOURCES_FILE, &crate::mirror::sources_line(ip), 0o644)?;
    }
    write(MACHINE_INIT_PATH, MACHINE_INIT, 0o755)?;
    // No login on the console: getty's vhangup() of /dev/console at boot sends SIGHUP to
    // whoever holds it as controlling terminal — a kubelet that opened /dev/kmsg (linked
    // to the console, as kind does) and died with it after every reboot.
    let getty = root.join("etc/systemd/system/console-getty.service");
    fs::create_dir_all(getty.parent().unwrap()).map_err(|e| LabError::io(&getty, e))?;
    std::os::unix::fs::symlink("/dev/null", &getty).map_err(|e| LabError::io(&getty, e))?;
    // containerd's overlayfs snapshotter cannot stack on the machine's overlay root.
    fs::create_dir_all(dir.join("containerd")).map_err(|e| LabError::io(dir, e))?;
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

/// One directory per cgroup hierarchy for a machine: `<this process's cgroup>/
/// kforge-lab/<subtree>` (a kubelet's cgroups then live under its machine's).
///
/// That includes the cgroup v2 hierarchy a hybrid host mounts at
/// /sys/fs/cgroup/unified, which holds no controllers but which each machine's systemd
/// uses to track its units. With name=systemd, it must be the machine's own (see
/// enter-cgroups.sh): shared, every machine's `/system.slice/X.service` was one
/// directory, and one machine removing it as another started X failed that start with
/// status=219/CGROUP.
pub fn cgroup_dirs(subtree: &str) -> Vec<PathBuf> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    own.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let name = match controllers {
                // cgroup v2: on a hybrid host, the unified hierarchy (a host that is v2
                // only mounts it at /sys/fs/cgroup and has no v1 hierarchies to split).
                "" if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() => "unified",
                "" => return None,
                "name=systemd" => "systemd",
                c => c,
            };
            let mut base = Path::new("/sys/fs/cgroup").join(name);
            if !base.is_dir() {
                base = Path::new("/sys/fs/cgroup").join(name.split(',').next()?);
            }
            Some(base.join(path.trim_start_matches('/')).join("kforge-lab").join(subtree))
        })
        .collect()
}

/// Remove a machine's cgroup directories (after it stopped), deepest first.
pub fn remove_cgroups(dirs: &[PathBuf]) {
    for dir in dirs {
        let mut all: Vec<PathBuf> = Vec::new();
        collect_dirs(dir, &mut all);
        all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for d in all {
            let _ = fs::remove_dir(&d);
        }
        // The shared kforge-lab level goes with the last machine.
        if let Some(parent) = dir.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
        out.push(dir.to_path_buf());
    }
}

/// Boot the machine in the background; returns the nspawn process id.
///
/// Beyond a plain container it can run containers itself (containerd, runc, a real
/// kubelet): all capabilities, the keyring and bpf system calls runc uses, its own
/// cgroup subtree opened read-write by the init wrapper, an ext4 directory for
/// containerd, and the network namespace's sysctls writable (the kubelet and
/// kube-proxy set `net.*`; nspawn would mount /proc/sys read-only).
pub fn boot(dir: &Path, name: &str, ns: &str, cgroups: &[PathBuf], log: &Path) -> Result<u32, LabError> {
    let log_file = fs::File::create(log).map_err(|e| LabError::io(log, e))?;
    let err_file = log_file.try_clone().map_err(|e| LabError::io(log, e))?;
    let root = dir.join("root");
    let containerd = format!("--bind={}:/var/lib/containerd", dir.join("containerd").display());
    // setsid: the machine outlives this kforge process (until `lab down`).
    let child = Command::new("setsid")
        .args(["sh", "-c", ENTER_CGROUPS, "enter-cgroups"])
        .args(cgroups)
        .arg("--")
        .args(["systemd-nspawn", "-q", "--register=no", "--keep-unit", "--resolv-conf=off", "-D"])
        .arg(&root)
        .args(["-M", name, &format!("--network-namespace-path=/run/netns/{ns}")])
        .args(["--bind=/dev/net/tun", &containerd, "--capability=all", "--system-call-filter=@keyring bpf"])
        .arg(format!("/{MACHINE_INIT_PATH}"))
        .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", "network")
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

/// What a machine boots with when the lab boots from user-data (`up`'s seeder).
#[derive(Debug, Clone)]
pub struct MachineSeed {
    /// cloud-init user-data as `kforge render` wrote it (plain or gzip).
    pub user_data: Vec<u8>,
    /// Files baked into the machine's disk, as an image built for the cluster carries
    /// them (binaries never travel in user-data): (file here, path there, mode).
    pub bake: Vec<(PathBuf, String, u32)>,
}

/// cloud-init's settings on a seeded lab machine: NoCloud only, and the lab keeps
/// what it set up itself (network, SSH host keys pinned in known_hosts, root login).
const LAB_CLOUD_CFG: &str = "\
# kforge lab: this machine boots from the NoCloud seed in /var/lib/cloud/seed/nocloud.
# The lab owns the network, the SSH host key (pinned in the lab's known_hosts) and root
# login; cloud-init runs the user-data and leaves those alone.
datasource_list: [NoCloud]
network: {config: disabled}
ssh_deletekeys: false
ssh_genkeytypes: []
disable_root: false
preserve_hostname: true
manage_etc_hosts: false
# The minimal image has no `locales` package for update-locale to configure.
locale: false
";

/// Seed a prepared (mounted, not yet booted) machine: NoCloud user-data and meta-data,
/// cloud-init switched on, the node's artifacts baked in.
pub fn seed(dir: &Path, name: &str, seed: &MachineSeed) -> Result<(), LabError> {
    use std::os::unix::fs::PermissionsExt;
    let root = dir.join("root");
    let write = |rel: &str, data: &[u8], mode: u32| -> Result<(), LabError> {
        let p = root.join(rel.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).map_err(|e| LabError::io(&p, e))?;
        fs::write(&p, data).map_err(|e| LabError::io(&p, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(|e| LabError::io(&p, e))
    };
    write("var/lib/cloud/seed/nocloud/user-data", &seed.user_data, 0o600)?;
    let instance = kforge_core::random::random_hex(8);
    write(
        "var/lib/cloud/seed/nocloud/meta-data",
        format!("instance-id: kforge-lab-{name}-{instance}\nlocal-hostname: {name}\n").as_bytes(),
        0o644,
    )?;
    write("etc/cloud/cloud.cfg.d/90-kforge-lab.cfg", LAB_CLOUD_CFG.as_bytes(), 0o644)?;
    let off = root.join(crate::rootfs::CLOUD_INIT_DISABLED);
    if off.exists() {
        fs::remove_file(&off).map_err(|e| LabError::io(&off, e))?;
    }
    for (from, to, mode) in &seed.bake {
        let p = root.join(to.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).map_err(|e| LabError::io(&p, e))?;
        fs::copy(from, &p).map_err(|e| LabError::io(from, e))?;
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).map_err(|e| LabError::io(&p, e))?;
    }
    Ok(())
}
