//! Container images without a registry: small OCI image archives written from static
//! binaries, for clusters that cannot pull (the lab, air-gapped hosts).
//!
//! An archive is a tar of an OCI image layout (`oci-layout`, `index.json`,
//! `blobs/sha256/…`) with one single-layer image, named by the
//! `io.containerd.image.name` annotation, which `ctr images import` (and K3s's
//! `agent/images/`) read. Everything is deterministic — same inputs, same bytes, same
//! digests — so the archive's sha256 can be pinned in a cluster file.

use std::io;
use std::path::Path;

use kforge_core::hashing::sha256_hex;
use serde_json::json;

/// One entry of the image's filesystem.
pub enum Entry {
    File { path: String, content: Vec<u8>, mode: u32 },
    Symlink { path: String, target: String },
    Dir { path: String },
}

/// What goes into one image.
pub struct ImageSpec {
    /// The full reference containerd will know it by, e.g. `kforge.lab/pause:1`.
    pub name: String,
    pub entries: Vec<Entry>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `uid:gid` the image runs as (empty: root). Pods with `runAsNonRoot` need one.
    pub user: String,
}

const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// The image as an OCI layout archive (uncompressed tar).
pub fn oci_archive(spec: &ImageSpec) -> io::Result<Vec<u8>> {
    let layer = layer_tar(&spec.entries)?;
    let layer_digest = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": spec.entrypoint,
            "Cmd": spec.cmd,
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "WorkingDir": "/",
        },
        // An uncompressed layer's diff id is its own digest.
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "kforge lab (OCI writer)"}],
    }))
    .expect("json");
    let config = with_user(config, &spec.user);
    let config_digest = format!("sha256:{}", sha256_hex(&config));
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": {"mediaType": MEDIA_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": MEDIA_LAYER, "digest": layer_digest, "size": layer.len()}],
    }))
    .expect("json");
    let manifest_digest = format!("sha256:{}", sha256_hex(&manifest));
    let tag = spec.name.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MEDIA_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {
                "io.containerd.image.name": spec.name,
                "org.opencontainers.image.ref.name": tag,
            },
        }],
    }))
    .expect("json");

    let mut out = tar::Builder::new(Vec::new());
    append_file(&mut out, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#, 0o644)?;
    append_file(&mut out, "index.json", &index, 0o644)?;
    for dir in ["blobs", "blobs/sha256"] {
        append_dir(&mut out, dir)?;
    }
    for blob in [&manifest, &config, &layer] {
        append_file(&mut out, &format!("blobs/sha256/{}", sha256_hex(blob)), blob, 0o644)?;
    }
    out.into_inner()
}

/// Set the image config's `config.User` when the image has one (an image without keeps
/// its bytes, and so its digest, exactly as before the field existed).
fn with_user(config: Vec<u8>, user: &str) -> Vec<u8> {
    if user.is_empty() {
        return config;
    }
    let mut v: serde_json::Value = serde_json::from_slice(&config).expect("json");
    v["config"]["User"] = json!(user);
    serde_json::to_vec(&v).expect("json")
}

fn layer_tar(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let mut t = tar::Builder::new(Vec::new());
    for e in entries {
        match e {
            Entry::File { path, content, mode } => append_file(&mut t, path, content, *mode)?,
            Entry::Dir { path } => append_dir(&mut t, path)?,
            Entry::Symlink { path, target } => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                t.append_link(&mut h, path, target)?;
            }
        }
    }
    t.into_inner()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

fn append_file(t: &mut tar::Builder<Vec<u8>>, path: &str, content: &[u8], mode: u32) -> io::Result<()> {
    let mut h = header(tar::EntryType::Regular, mode, content.len() as u64);
    t.append_data(&mut h, path, content)
}

fn append_dir(t: &mut tar::Builder<Vec<u8>>, path: &str) -> io::Result<()> {
    let mut h = header(tar::EntryType::Directory, 0o755, 0);
    t.append_data(&mut h, path, io::empty())
}

/// The images a lab cluster needs, named under `kforge.lab/` so nobody mistakes them
/// for upstream's: the pod sandbox, CoreDNS, and a test workload.
pub struct LabImage {
    pub name: &'static str,
    pub file: &'static str,
}

pub const PAUSE: LabImage = LabImage { name: "kforge.lab/pause:busybox", file: "pause.tar" };
pub const COREDNS: LabImage = LabImage { name: "kforge.lab/coredns:1", file: "coredns.tar" };
pub const BUSYBOX: LabImage = LabImage { name: "kforge.lab/busybox:1", file: "busybox.tar" };

/// Flux's controllers as the lab packages them: the binary `scripts/components` built
/// from the controller's Go module, as `/usr/local/bin/NAME`, run as nobody (65534),
/// named as the lab's install manifest names them. Versions as in scripts/components.
pub struct FluxImage {
    pub controller: &'static str,
    pub version: &'static str,
}

impl FluxImage {
    pub fn name(&self) -> String {
        format!("kforge.lab/fluxcd/{}:{}", self.controller, self.version)
    }
}

pub const FLUX_IMAGES: [FluxImage; 2] = [
    FluxImage { controller: "source-controller", version: "v1.9.3" },
    FluxImage { controller: "kustomize-controller", version: "v1.9.6" },
];

/// Flux's controller images into `out/CONTROLLER.tar`, from the binaries in `bin`.
pub fn write_flux_images(bin: &Path, out: &Path) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    for img in FLUX_IMAGES {
        let binary = std::fs::read(bin.join(img.controller))?;
        let spec = ImageSpec {
            name: img.name(),
            entries: vec![
                Entry::Dir { path: "usr".into() },
                Entry::Dir { path: "usr/local".into() },
                Entry::Dir { path: "usr/local/bin".into() },
                Entry::File { path: format!("usr/local/bin/{}", img.controller), content: binary, mode: 0o755 },
                Entry::Dir { path: "tmp".into() },
                Entry::Dir { path: "etc".into() },
                Entry::File {
                    path: "etc/passwd".into(),
                    content: b"root:x:0:0:root:/:/sbin/nologin\nnobody:x:65534:65534:nobody:/:/sbin/nologin\n".to_vec(),
                    mode: 0o644,
                },
            ],
            entrypoint: vec![img.controller.into()],
            cmd: vec![],
            user: "65534:65534".into(),
        };
        kforge_files::write_atomic(&out.join(format!("{}.tar", img.controller)), &oci_archive(&spec)?, 0o644)?;
    }
    Ok(())
}

/// Debian's busybox-static: one static binary, so it runs in an image with no libc.
pub const BUSYBOX_STATIC: &str = "/bin/busybox";
/// Applets the test workload links (shell, HTTP server and client, DNS lookup, netcat).
const APPLETS: &[&str] = &[
    "sh",
    "sleep",
    "timeout",
    "wc",
    "tr",
    "mkdir",
    "cat",
    "echo",
    "ls",
    "wget",
    "nc",
    "nslookup",
    "httpd",
    "hostname",
    "ip",
    "dd",
    "head",
    "sha256sum",
    "ping",
    "true",
];

/// Build the lab's image archives into `out` from static binaries: pause and a busybox
/// workload (Debian's busybox-static), and CoreDNS when given its binary (built by
/// `scripts/components`; K3s deploys its own CoreDNS).
pub fn write_lab_images(busybox: &Path, coredns: Option<&Path>, out: &Path) -> io::Result<()> {
    std::fs::create_dir_all(out)?;
    let bb = std::fs::read(busybox)?;
    let busybox_entries = |applets: &[&str]| {
        let mut v = vec![
            Entry::Dir { path: "bin".into() },
            Entry::File { path: "bin/busybox".into(), content: bb.clone(), mode: 0o755 },
            Entry::Dir { path: "tmp".into() },
            Entry::Dir { path: "etc".into() },
            Entry::File { path: "etc/passwd".into(), content: b"root:x:0:0:root:/:/bin/sh\n".to_vec(), mode: 0o644 },
        ];
        v.extend(applets.iter().map(|a| Entry::Symlink { path: format!("bin/{a}"), target: "busybox".into() }));
        v
    };
    // The sandbox only has to hold the pod's namespaces open; busybox sleeps (as PID 1 it
    // ignores SIGTERM, and containerd stops sandboxes with SIGKILL).
    let pause = ImageSpec {
        name: PAUSE.name.into(),
        entries: busybox_entries(&["sleep"]),
        entrypoint: vec!["/bin/sleep".into(), "2147483647".into()],
        cmd: vec![],
        user: String::new(),
    };
    let coredns_image = match coredns {
        Some(binary) => Some(ImageSpec {
            name: COREDNS.name.into(),
            entries: vec![Entry::File { path: "coredns".into(), content: std::fs::read(binary)?, mode: 0o755 }],
            entrypoint: vec!["/coredns".into()],
            cmd: vec![],
            user: String::new(),
        }),
        None => None,
    };
    let workload = ImageSpec {
        name: BUSYBOX.name.into(),
        entries: busybox_entries(APPLETS),
        entrypoint: vec![],
        cmd: vec!["/bin/sh".into()],
        user: String::new(),
    };
    let images = [Some((pause, PAUSE.file)), coredns_image.map(|i| (i, COREDNS.file)), Some((workload, BUSYBOX.file))];
    for (img, file) in images.into_iter().flatten() {
        let bytes = oci_archive(&img)?;
        kforge_files::write_atomic(&out.join(file), &bytes, 0o644)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flux_images_are_the_versions_the_components_script_builds() {
        let script = include_str!("../../../scripts/components");
        for img in FLUX_IMAGES {
            let var = img.controller.replace('-', "_").to_uppercase();
            assert!(
                script.contains(&format!("\n{var}_VERSION={}\n", img.version)),
                "scripts/components builds {} {}",
                img.controller,
                img.version
            );
        }
        assert!(
            script.contains("newName: kforge.lab/fluxcd/$c, newTag: $v"),
            "the install manifest names the images as the lab does"
        );
    }

    #[test]
    fn archives_are_deterministic_and_name_their_image() {
        let spec = || ImageSpec {
            name: "kforge.lab/x:1".into(),
            entries: vec![Entry::File { path: "hello".into(), content: b"hi".to_vec(), mode: 0o755 }],
            entrypoint: vec!["/hello".into()],
            cmd: vec![],
            user: String::new(),
        };
        let a = oci_archive(&spec()).unwrap();
        assert_eq!(a, oci_archive(&spec()).unwrap(), "same inputs, same bytes");
        let mut archive = tar::Archive::new(&a[..]);
        let mut names = Vec::new();
        let mut index = String::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().display().to_string();
            if p == "index.json" {
                std::io::Read::read_to_string(&mut e, &mut index).unwrap();
            }
            names.push(p);
        }
        assert!(names.contains(&"oci-layout".to_string()));
        assert_eq!(names.iter().filter(|n| n.starts_with("blobs/sha256/") && n.len() > 20).count(), 3);
        assert!(index.contains("\"io.containerd.image.name\":\"kforge.lab/x:1\""), "{index}");
    }
}
