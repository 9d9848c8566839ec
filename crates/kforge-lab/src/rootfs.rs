//! The lab's root filesystem: Debian bookworm built once with debootstrap and cached
//! outside the repository; every machine is an overlay on it.
//!
//! Left out on purpose: a kernel (nspawn machines share the host's) and etcd — kforge
//! installs datastores itself. SSH host keys are removed from the shared image: each
//! machine gets its own, generated before boot, so `known_hosts` is exact from the
//! first connection.

use std::path::{Path, PathBuf};

use crate::LabError;
use crate::sh::run;

pub const SUITE: &str = "bookworm";
const PACKAGES: &str = "systemd-sysv,udev,openssh-server,wireguard-tools,nftables,iproute2,iputils-ping,procps";
const READY_MARK: &str = ".kforge-rootfs-ready";

/// Where the cache lives: `KFORGE_LAB_CACHE`, else `/var/cache/kforge-lab`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KFORGE_LAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/kforge-lab"))
}

/// The Debian mirror: `--mirror`, `KFORGE_LAB_MIRROR`, else the one this machine's
/// apt sources use (no registry host is written into kforge).
pub fn mirror(flag: Option<&str>) -> Result<String, LabError> {
    if let Some(m) = flag.map(String::from).or_else(|| std::env::var("KFORGE_LAB_MIRROR").ok()) {
        return Ok(m);
    }
    let mut texts = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            texts.push(std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    texts.push(std::fs::read_to_string("/etc/apt/sources.list").unwrap_or_default());
    for text in &texts {
        for line in text.lines().map(str::trim) {
            let uri =
                line.strip_prefix("URIs:").map(|rest| rest.split_whitespace().next().unwrap_or("")).or_else(|| {
                    line.strip_prefix("deb ").and_then(|rest| rest.split_whitespace().find(|w| w.contains("://")))
                });
            if let Some(uri) = uri.filter(|u| u.contains("://") && !u.contains("security")) {
                return Ok(uri.to_string());
            }
        }
    }
    Err(LabError::Setup(
        "no Debian mirror found in /etc/apt/sources*; pass --mirror URL or set KFORGE_LAB_MIRROR".into(),
    ))
}

/// The cached root filesystem, built on first use (a few minutes).
pub fn ensure(mirror_flag: Option<&str>, log: &dyn Fn(&str)) -> Result<PathBuf, LabError> {
    let cache = cache_dir();
    let root = cache.join(format!("rootfs-{SUITE}"));
    if root.join(READY_MARK).exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(&cache).map_err(|e| LabError::io(&cache, e))?;
    let staging = cache.join(format!("rootfs-{SUITE}.building"));
    let _ = std::fs::remove_dir_all(&staging);
    let mirror = mirror(mirror_flag)?;
    log(&format!("building the lab root filesystem with debootstrap (once, a few minutes) into {}", root.display()));
    let staging_s = staging.display().to_string();
    run("debootstrap", &["--variant=minbase", &format!("--include={PACKAGES}"), SUITE, &staging_s, &mirror])
        .map_err(|e| LabError::Setup(format!("{e}\n  help: install debootstrap, or check the mirror ({mirror})")))?;
    finish(&staging)?;
    std::fs::write(staging.join(READY_MARK), "").map_err(|e| LabError::io(&staging, e))?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&staging, &root).map_err(|e| LabError::io(&root, e))?;
    Ok(root)
}

/// Make the image lab-ready: no shared host keys, no shared machine-id. Userspace
/// WireGuard is deliberately *not* baked in: `kforge apply` finds the kernel module
/// missing and uploads boringtun-cli itself, as it would on a real host.
fn finish(root: &Path) -> Result<(), LabError> {
    for entry in std::fs::read_dir(root.join("etc/ssh")).map_err(|e| LabError::io(root, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // The machine-id is set per machine; an empty one here would be shared.
    let _ = std::fs::write(root.join("etc/machine-id"), "");
    Ok(())
}
