//! Hardway artifacts: each component's binary or release tarball (unpacked once per
//! distinct tarball), and the image archives containerd imports before the kubelet runs.

use super::IMAGES_DIR;
use crate::component::Component;
use crate::model::Model;
use crate::plan::{NodePlan, Phase, PlannedArtifact, PlannedCommand};
use crate::spec::{Artifact, Node, Role};

/// Release tarballs are kept here (their digest stamps beside them).
const ARCHIVES: &str = "/var/lib/kforge/archives";

/// The binaries (or release tarballs) this node's roles need, and the image archives
/// a worker imports.
pub(super) fn plan(model: &Model<'_>, node: &Node, np: &mut NodePlan) {
    let artifacts = &model.spec.spec.artifacts;
    for c in Component::hardway().filter(|c| c.install().role.is_some_and(|r| node.role.has(r))) {
        let Some(a) = artifacts.get(c) else { continue };
        let install = c.install();
        let arch = np.arch;
        let phase = np.phase(Phase::Artifacts);
        let path = upload_path(model, c, a);
        match install.unpack_into.filter(|_| a.is_archive()) {
            Some(dir) => {
                phase.artifacts.extend(PlannedArtifact::from_spec(c.key(), &path, 0o644, a, arch));
                phase.commands.push(unpack(&path, dir, install.members));
            }
            None => phase.artifacts.extend(PlannedArtifact::from_spec(c.key(), &path, 0o755, a, arch)),
        }
    }
    let version = &model.spec.spec.distribution.version;
    for c in Component::hardway().filter(|c| c.install().role.is_some_and(|r| node.role.has(r))) {
        let stand_in = artifacts.get(c).is_some_and(|a| a.stand_in.is_some());
        let delivered = artifacts.get(c).is_some();
        if let Some(check) = crate::component::version_check(c, version, delivered).filter(|_| !stand_in) {
            np.phase(Phase::Artifacts).commands.push(check);
        }
    }
    if node.role.has(Role::Worker) {
        for (i, img) in model.spec.spec.images.iter().enumerate() {
            let arch = np.arch;
            np.phase(Phase::Artifacts).artifacts.extend(PlannedArtifact::image(i, img, IMAGES_DIR, arch));
        }
    }
}

/// `ctr images import` of each image archive, after containerd runs and before the
/// kubelet starts. Skipped when the archive was imported already (a stamp with its
/// digest) and containerd still knows the image, pinned (a wiped /var/lib/containerd
/// re-imports).
///
/// Pinned (containerd's CRI label `io.cri-containerd.pinned=pinned`) because no registry
/// serves these images: the kubelet's image garbage collection, which starts when the
/// image filesystem passes 85% full, never removes a pinned image, while an unpinned
/// one would be gone until the next apply and a pod needing it would fail to pull.
pub(super) fn image_imports(model: &Model<'_>) -> Vec<PlannedCommand> {
    model
        .spec
        .spec
        .images
        .iter()
        .map(|img| {
            let archive = format!("{IMAGES_DIR}/{}", img.host_file());
            let stamp = format!("{archive}.imported");
            let ctr = "/usr/local/bin/ctr --namespace k8s.io";
            let name = &img.name;
            let present_and_pinned =
                format!("{ctr} images ls -q 'name=={name},labels.\"{PINNED_LABEL}\"==pinned' | grep -qx '{name}'");
            PlannedCommand {
                description: format!("import image {name} into containerd, pinned"),
                run: format!(
                    "{ctr} images import --local {archive} >/dev/null && {ctr} images label '{name}' {PINNED_LABEL}=pinned >/dev/null && {present_and_pinned} && sha256sum {archive} | cut -d' ' -f1 > {stamp}"
                ),
                unless: Some(format!(
                    "[ \"$(cat {stamp} 2>/dev/null)\" = \"$(sha256sum {archive} | cut -d' ' -f1)\" ] && {present_and_pinned}"
                )),
                // Deleted or unpinned by hand (`ctr images rm`, a disk cleanup): every
                // apply puts it back, though no file of kforge's changed.
                recheck: Some(present_and_pinned),
            }
        })
        .collect()
}

/// containerd's CRI reports an image with this label as pinned; the kubelet's image
/// garbage collection skips pinned images.
const PINNED_LABEL: &str = "io.cri-containerd.pinned";

/// Where the artifact lands on the host: the binary itself (a Kubernetes program in its
/// release's directory), or the release tarball
/// kept under /var/lib/kforge/archives when the component unpacks one.
pub(super) fn upload_path(model: &Model<'_>, c: Component, a: &Artifact) -> String {
    match c.install().unpack_into.filter(|_| a.is_archive()) {
        Some(_) => format!("{ARCHIVES}/{}.tar.gz", c.key()),
        None => super::binary(model, c),
    }
}

/// Unpack a release tarball once per distinct tarball (a stamp holds its digest).
fn unpack(tarball: &str, dir: &str, members: &[&str]) -> PlannedCommand {
    let stamp = format!("{tarball}.unpacked");
    let members = if members.is_empty() {
        String::new()
    } else {
        format!(" --wildcards {}", members.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(" "))
    };
    PlannedCommand {
        description: format!("unpack {tarball} into {dir}"),
        run: format!(
            "mkdir -p {dir} && tar -xzf {tarball} -C {dir} --strip-components=1 --no-same-owner{members} && sha256sum {tarball} | cut -d' ' -f1 > {stamp}"
        ),
        unless: Some(format!("[ \"$(cat {stamp} 2>/dev/null)\" = \"$(sha256sum {tarball} | cut -d' ' -f1)\" ]")),
        recheck: None,
    }
}
