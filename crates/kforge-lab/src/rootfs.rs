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
/// What every lab machine has, as a fresh VPS image would (plus nginx, which the
/// hardway distribution needs on controllers, and git, which the lab's forge serves).
/// cloud-init is there as on a cloud image, but disabled unless a machine is seeded
/// with user-data (`lab up --user-data`): other labs boot without it. debootstrap does
/// not resolve virtual packages, so cloud-init's python3-cryptography needs
/// python3-cffi-backend named (it provides the cffi API versions it depends on).
/// The cache directory's name carries a
/// digest of this list, so changing it builds a new image.
const PACKAGES: &str = "systemd-sysv,udev,openssh-server,git,wireguard-tools,nftables,iproute2,iputils-ping,procps,nginx,libnginx-mod-stream,conntrack,socat,ipset,iptables,kmod,cloud-init,python3-cffi-backend";
/// Where cloud-init looks for its switch-off file (`touch` it: cloud-init does nothing).
pub const CLOUD_INIT_DISABLED: &str = "etc/cloud/cloud-init.disabled";
const READY_MARK: &str = ".kforge-rootfs-ready";

/// Where the cache lives: `KFORGE_LAB_CACHE`, else `/var/cache/kforge-lab`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KFORGE_LAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/kforge-lab"))
}

/// The Debian mirror: `--mirror`, `KFORGE_LAB_MIRROR`, else the source this machine's
/// apt uses for the `bookworm` suite's `main` component (no registry host is written
/// into kforge). Like apt, only `*.sources` and `*.list` files count.
pub fn mirror(flag: Option<&str>) -> Result<String, LabError> {
    if let Some(m) = flag.map(String::from).or_else(|| std::env::var("KFORGE_LAB_MIRROR").ok()) {
        return Ok(m);
    }
    let mut files: Vec<PathBuf> = vec![PathBuf::from("/etc/apt/sources.list")];
    let mut listed: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sources" || x == "list"))
        .collect();
    listed.sort();
    files.extend(listed);
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let deb822 = file.extension().is_some_and(|x| x == "sources");
        if let Some(uri) = if deb822 { mirror_in_deb822(&text) } else { mirror_in_list(&text) } {
            return Ok(uri);
        }
    }
    Err(LabError::Setup(format!(
        "no apt source for Debian {SUITE} main found in /etc/apt; pass --mirror URL or set KFORGE_LAB_MIRROR"
    )))
}

fn mirror_in_deb822(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| -> Vec<&str> {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(':')))
                .map(|v| v.split_whitespace().collect())
                .unwrap_or_default()
        };
        if field("Types").contains(&"deb")
            && field("Suites").contains(&SUITE)
            && field("Components").contains(&"main")
            && let Some(uri) = field("URIs").first()
        {
            return Some(uri.to_string());
        }
    }
    None
}

fn mirror_in_list(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with('[') && !w.ends_with(']')).collect();
        match words.as_slice() {
            ["deb", uri, suite, components @ ..] if *suite == SUITE && components.contains(&"main") => {
                Some(uri.to_string())
            }
            _ => None,
        }
    })
}

/// The cached root filesystem, built on first use (a few minutes).
pub fn ensure(mirror_flag: Option<&str>, log: &dyn Fn(&str)) -> Result<PathBuf, LabError> {
    let cache = cache_dir();
    let tag = &kforge_core::hashing::sha256_hex(PACKAGES.as_bytes())[..8];
    let root = cache.join(format!("rootfs-{SUITE}-{tag}"));
    if root.join(READY_MARK).exists() {
        return Ok(root);
    }
    std::fs::create_dir_all(&cache).map_err(|e| LabError::io(&cache, e))?;
    let staging = cache.join(format!("rootfs-{SUITE}-{tag}.building"));
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
    // nginx is there for kforge to run (the hardway /healthz proxy), not as a web
    // server on port 80 of every machine.
    let _ = std::fs::remove_file(root.join("etc/systemd/system/multi-user.target.wants/nginx.service"));
    // The machine-id is set per machine; an empty one here would be shared.
    let _ = std::fs::write(root.join("etc/machine-id"), "");
    // cloud-init runs only on machines seeded with user-data (`machine::seed`).
    std::fs::write(root.join(CLOUD_INIT_DISABLED), "").map_err(|e| LabError::io(root, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_bookworm_main_source_and_nothing_else() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(mirror_in_deb822(deb822).as_deref(), Some("http://mirror.example/debian"));
        let third_party = "Types: deb\nURIs: https://repo.example/node_20.x\nSuites: nodistro\nComponents: main\n";
        assert_eq!(mirror_in_deb822(third_party), None);
        let list = "deb [arch=amd64] http://mirror.example/debian bookworm main contrib\ndeb http://x/debian-security bookworm-security main\n";
        assert_eq!(mirror_in_list(list).as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(mirror_in_list("deb http://x/y trixie main\n"), None);
    }
}
