//! The lab's root filesystems: a Debian image as a provider hands it out, built once
//! with debootstrap and cached outside the repository (every machine is an overlay on
//! it), and beside it the package mirror that image's machines install from.
//!
//! The image holds what a Debian cloud image holds — the base system, systemd, sshd,
//! cloud-init, ca-certificates and the "important" networking tools — and nothing
//! kforge needs: no WireGuard tools, nftables, nginx or its stream module, iptables,
//! conntrack. A lab kinder than a VPS would hide exactly the install steps a new user
//! meets first; kforge installs those from the mirror (`mirror.rs`), as it would from a
//! provider's.
//!
//! Left out on purpose: a kernel (nspawn machines share the host's), package lists and
//! apt sources naming the workstation's registry (each machine names the lab's mirror),
//! and SSH host keys (each machine gets its own, generated before boot, so
//! `known_hosts` is exact from the first connection).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::LabError;
use crate::sh::{quietly, run};

/// The images `lab up --image` offers. Debian 13 is current stable, the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Image {
    #[default]
    Debian13,
    Debian12,
}

impl Image {
    pub const ALL: [Image; 2] = [Image::Debian13, Image::Debian12];

    /// As `--image` names it.
    pub fn name(self) -> &'static str {
        match self {
            Image::Debian13 => "debian-13",
            Image::Debian12 => "debian-12",
        }
    }

    /// Debian's codename (debootstrap's suite).
    pub fn suite(self) -> &'static str {
        match self {
            Image::Debian13 => "trixie",
            Image::Debian12 => "bookworm",
        }
    }

    pub fn parse(name: &str) -> Option<Image> {
        Image::ALL.into_iter().find(|i| i.name() == name)
    }
}

impl std::fmt::Display for Image {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A cloud image's base beyond minbase: init, sshd, cloud-init, CA certificates and the
/// "important" tools every provider image carries (ip, ping, ps, modprobe). cloud-init
/// is there, but switched off unless a machine is seeded with user-data (`lab up
/// --user-data`). debootstrap does not resolve virtual packages, so cloud-init needs
/// python3-cffi-backend named (python3-cryptography depends on the cffi API versions it
/// provides).
const BASE: &str = "systemd-sysv,udev,openssh-server,cloud-init,python3-cffi-backend,ca-certificates,iproute2,iputils-ping,procps,kmod";

/// Where cloud-init looks for its switch-off file (`touch` it: cloud-init does nothing).
pub const CLOUD_INIT_DISABLED: &str = "etc/cloud/cloud-init.disabled";
const READY_MARK: &str = ".kforge-rootfs-ready";

/// An image and its mirror, ready in the cache.
#[derive(Debug, Clone)]
pub struct Cached {
    pub root: PathBuf,
    /// The flat apt repository (`.deb` files and `Packages`) the lab serves.
    pub mirror: PathBuf,
}

/// Where the cache lives: `KFORGE_LAB_CACHE`, else `/var/cache/kforge-lab`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("KFORGE_LAB_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/kforge-lab"))
}

/// The Debian mirror: `--mirror`, `KFORGE_LAB_MIRROR`, else the source this machine's
/// apt uses for Debian's `main` component (a suite without `-updates` or `-security`;
/// any suite's packages are under the same URI, so it serves every image). No registry
/// host is written into kforge. Like apt, only `*.sources` and `*.list` files count.
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
    Err(LabError::Setup(
        "no apt source for Debian main found in /etc/apt; pass --mirror URL or set KFORGE_LAB_MIRROR".into(),
    ))
}

/// A release suite (`bookworm`, `trixie`), not `-updates`, `-security` or `-backports`.
fn is_release_suite(suite: &str) -> bool {
    !suite.is_empty() && suite.chars().all(|c| c.is_ascii_lowercase())
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
        let uri = field("URIs").first().map(|u| u.to_string());
        if field("Types").contains(&"deb")
            && field("Suites").iter().any(|s| is_release_suite(s))
            && field("Components").contains(&"main")
            && uri.as_deref().is_some_and(|u| u.trim_end_matches('/').ends_with("/debian"))
        {
            return uri;
        }
    }
    None
}

fn mirror_in_list(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let words: Vec<&str> = l.split_whitespace().filter(|w| !w.starts_with('[') && !w.ends_with(']')).collect();
        match words.as_slice() {
            ["deb", uri, suite, components @ ..]
                if is_release_suite(suite)
                    && components.contains(&"main")
                    && uri.trim_end_matches('/').ends_with("/debian") =>
            {
                Some(uri.to_string())
            }
            _ => None,
        }
    })
}

/// The cached image and its mirror, built on first use (a few minutes): debootstrap,
/// then, inside the new image, apt downloads every package kforge installs with what
/// it depends on there (`crate::mirror::PACKAGES`) — exactly what its machines lack.
pub fn ensure(image: Image, mirror_flag: Option<&str>, log: &dyn Fn(&str)) -> Result<Cached, LabError> {
    let cache = cache_dir();
    let suite = image.suite();
    let tag = &kforge_core::hashing::sha256_hex(
        format!("{BASE}\n{}\n{}", crate::mirror::packages().join(","), crate::mirror::FORMAT).as_bytes(),
    )[..8];
    let cached = Cached {
        root: cache.join(format!("rootfs-{suite}-{tag}")),
        mirror: cache.join(format!("mirror-{suite}-{tag}")),
    };
    if cached.root.join(READY_MARK).exists() && cached.mirror.join(READY_MARK).exists() {
        return Ok(cached);
    }
    std::fs::create_dir_all(&cache).map_err(|e| LabError::io(&cache, e))?;
    let staging = cache.join(format!("rootfs-{suite}-{tag}.building"));
    let mirror_staging = cache.join(format!("mirror-{suite}-{tag}.building"));
    for d in [&staging, &mirror_staging] {
        let _ = std::fs::remove_dir_all(d);
    }
    let uri = mirror(mirror_flag)?;
    log(&format!("building the {image} image with debootstrap (once, a few minutes) into {}", cached.root.display()));
    let staging_s = staging.display().to_string();
    run("debootstrap", &["--variant=minbase", &format!("--include={BASE}"), suite, &staging_s, &uri])
        .map_err(|e| LabError::Setup(format!("{e}\n  help: install debootstrap, or check the mirror ({uri})")))?;
    log(&format!(
        "fetching what kforge installs on {image} hosts, with its dependencies, into the lab's mirror ({})",
        cached.mirror.display()
    ));
    fetch_packages(&staging, &mirror_staging, &uri, suite)?;
    crate::mirror::write_index(&mirror_staging)?;
    finish(&staging)?;
    for (built, at) in [(&staging, &cached.root), (&mirror_staging, &cached.mirror)] {
        std::fs::write(built.join(READY_MARK), "").map_err(|e| LabError::io(built, e))?;
        let _ = std::fs::remove_dir_all(at);
        std::fs::rename(built, at).map_err(|e| LabError::io(at, e))?;
    }
    Ok(cached)
}

/// Inside the freshly built image (its own apt, its own installed set): download the
/// mirror's packages and their dependencies, without installing them, into `into`.
fn fetch_packages(root: &Path, into: &Path, uri: &str, suite: &str) -> Result<(), LabError> {
    let io = |p: &Path, e| LabError::io(p, e);
    std::fs::create_dir_all(into).map_err(|e| io(into, e))?;
    std::fs::write(root.join("etc/apt/sources.list"), format!("deb {uri} {suite} main\n")).map_err(|e| io(root, e))?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf")).map_err(|e| io(root, e))?;
    // debootstrap leaves the base system's own packages here: only what apt fetches
    // now goes to the mirror.
    let archives = root.join("var/cache/apt/archives");
    for entry in std::fs::read_dir(&archives).map_err(|e| io(&archives, e))?.flatten() {
        if entry.path().extension().is_some_and(|x| x == "deb") {
            std::fs::remove_file(entry.path()).map_err(|e| io(&entry.path(), e))?;
        }
    }
    let proc_dir = root.join("proc").display().to_string();
    run("mount", &["-t", "proc", "proc", &proc_dir])?;
    let root_s = root.display().to_string();
    let packages = crate::mirror::packages();
    let script = format!(
        "set -e; export DEBIAN_FRONTEND=noninteractive; apt-get -q update >/dev/null; \
         apt-get -q -y --download-only --no-install-recommends install {} >/dev/null",
        packages.join(" ")
    );
    let fetched = run("chroot", &[&root_s, "sh", "-c", &script]);
    quietly("umount", &[&proc_dir]);
    fetched.map_err(|e| LabError::Setup(format!("{e}\n  help: check the mirror ({uri}) serves {suite}")))?;
    for entry in std::fs::read_dir(&archives).map_err(|e| io(&archives, e))?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.ends_with(".deb") {
            // Epochs appear as `%3a` in apt's file names: keep names URL-plain.
            let plain = name.replace("%3a", "_");
            std::fs::rename(entry.path(), into.join(plain)).map_err(|e| io(&entry.path(), e))?;
        }
    }
    Ok(())
}

/// Make the image a provider's: no shared host keys or machine-id, no package lists and
/// no apt source (each machine names the lab's mirror), no resolver of the workstation.
fn finish(root: &Path) -> Result<(), LabError> {
    for entry in std::fs::read_dir(root.join("etc/ssh")).map_err(|e| LabError::io(root, e))?.flatten() {
        if entry.file_name().to_string_lossy().starts_with("ssh_host_") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    // The machine-id is set per machine; an empty one here would be shared.
    let _ = std::fs::write(root.join("etc/machine-id"), "");
    let _ = std::fs::remove_file(root.join("etc/apt/sources.list"));
    for dir in ["etc/apt/sources.list.d", "var/lib/apt/lists", "var/cache/apt/archives"] {
        for entry in std::fs::read_dir(root.join(dir)).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    for cache in ["var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin"] {
        let _ = std::fs::remove_file(root.join(cache));
    }
    let _ = std::fs::write(root.join("etc/resolv.conf"), "");
    // cloud-init runs only on machines seeded with user-data (`machine::seed`).
    std::fs::write(root.join(CLOUD_INIT_DISABLED), "").map_err(|e| LabError::io(root, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_main_source_and_nothing_else() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n\
                      Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(mirror_in_deb822(deb822).as_deref(), Some("http://mirror.example/debian"));
        let third_party = "Types: deb\nURIs: https://repo.example/node_20.x\nSuites: nodistro\nComponents: main\n";
        assert_eq!(mirror_in_deb822(third_party), None);
        let list = "deb http://x/debian-security bookworm-security main\ndeb [arch=amd64] http://mirror.example/debian trixie main contrib\n";
        assert_eq!(mirror_in_list(list).as_deref(), Some("http://mirror.example/debian"));
        assert_eq!(mirror_in_list("deb http://x/y trixie main\n"), None);
    }

    #[test]
    fn images_are_named_as_lab_up_takes_them() {
        assert_eq!(Image::default(), Image::Debian13, "current stable is the default");
        for i in Image::ALL {
            assert_eq!(Image::parse(i.name()), Some(i));
        }
        for kforge_needs in kforge_core::packages::Package::ALL.map(|p| p.name()) {
            assert!(!BASE.split(',').any(|p| p == kforge_needs), "the image must not carry {kforge_needs}");
        }
        assert_eq!(Image::parse("ubuntu-24.04"), None);
    }
}
