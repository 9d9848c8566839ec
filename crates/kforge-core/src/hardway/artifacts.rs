//! Hardway artifacts: each component's binary or release tarball (unpacked once per
//! distinct tarball), and the image archives containerd imports before the kubelet runs.
//!
//! A new release reaches every host in the artifacts stage, but it goes live only in the
//! host's own turn. The Kubernetes programs sit side by side in their release's
//! directory, so the new one runs only once the unit's file names it. etcd, containerd,
//! runc and the CNI plugins keep one path each, so they wait, staged under
//! [`STAGED`], until the phase that restarts their unit puts them in place. Were they
//! put in place in the artifacts stage, any restart outside a turn (a crash, a reboot,
//! the runc of the next container) would run the new release with no gate.

use super::IMAGES_DIR;
use crate::component::Component;
use crate::model::Model;
use crate::plan::{NodePlan, Phase, PlannedArtifact, PlannedCommand};
use crate::spec::{Artifact, Node, Role};

/// Release tarballs and staged binaries wait here for their turn (the tarballs'
/// digest stamps beside them).
const STAGED: &str = "/var/lib/kforge/archives";

/// The phase whose turn puts a new release of `c` in place: the one that restarts the
/// unit running it. `None`: kept side by side in its release's directory (nothing
/// runs it before its unit names it), or a client (kubectl, etcdctl) that no unit runs.
pub(super) const fn goes_live_in(c: Component) -> Option<Phase> {
    match c {
        Component::Etcd => Some(Phase::Datastore),
        Component::Containerd | Component::Runc | Component::CniPlugins => Some(Phase::Runtime),
        Component::KubeApiserver
        | Component::KubeControllerManager
        | Component::KubeScheduler
        | Component::Kubelet
        | Component::KubeProxy
        | Component::Etcdctl
        | Component::Kubectl
        | Component::K3s => None,
    }
}

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
        let live = goes_live_in(c).unwrap_or(Phase::Artifacts);
        match install.unpack_into.filter(|_| a.is_archive()) {
            Some(dir) => {
                phase.artifacts.extend(PlannedArtifact::from_spec(c.key(), &path, 0o644, a, arch));
                np.phase(live).commands.push(unpack(&path, dir, install.members));
            }
            None => {
                phase.artifacts.extend(PlannedArtifact::from_spec(c.key(), &path, 0o755, a, arch));
                if path != install.dest {
                    np.phase(live).commands.push(put_in_place(&path, install.dest));
                }
            }
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
/// release's directory, or a client), or, for a component that goes live only in its
/// turn ([`goes_live_in`]), its release tarball or binary staged under [`STAGED`].
pub(super) fn upload_path(model: &Model<'_>, c: Component, a: &Artifact) -> String {
    match (c.install().unpack_into.filter(|_| a.is_archive()), goes_live_in(c)) {
        (Some(_), _) => format!("{STAGED}/{}.tar.gz", c.key()),
        (None, Some(_)) => format!("{STAGED}/{}", c.key()),
        (None, None) => super::binary(model, c),
    }
}

/// Put a staged binary in place, by rename: a running program keeps its old file, the
/// next start runs the new one.
fn put_in_place(staged: &str, dest: &str) -> PlannedCommand {
    PlannedCommand {
        description: format!("put {staged} in place as {dest}"),
        run: format!("install -m 0755 {staged} {dest}.kforge-new && mv -f {dest}.kforge-new {dest}"),
        unless: Some(format!("cmp -s {staged} {dest}")),
        recheck: None,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// etcd 3.6.16 → 3.6.17 on a lab: as the second controller's turn began, the third
    /// already answered `etcd --version` 3.6.17 (its tarball was unpacked in the
    /// artifacts stage). Now what a host's running programs are started from changes only
    /// in the phase whose turn restarts them, and that phase restarts them on it.
    #[test]
    fn a_new_release_goes_live_only_in_the_turn_of_the_unit_that_runs_it() {
        // The example as shipped (tarballs) and with every component as a plain binary.
        let binaries = crate::spec::examples::HARDWAY
            .replace("etcd: {path: ./bin/etcd-v3.6.16-linux-amd64.tar.gz}", "etcd: {path: ./bin/etcd}")
            .replace(
                "containerd: {path: ./bin/containerd-2.4.2-linux-amd64.tar.gz}",
                "containerd: {path: ./bin/containerd}",
            );
        for text in [crate::spec::examples::HARDWAY, binaries.as_str()] {
            let spec = crate::spec::parse("kforge.yaml", text).unwrap().cluster;
            let (secrets, _) =
                crate::pipeline::reconcile_secrets(&spec, None, time::OffsetDateTime::now_utc()).unwrap();
            let model = Model::build(&spec, &secrets);
            let plan = crate::pipeline::build_plan(&model, &secrets);
            let mut checked = 0;
            for np in &plan.nodes {
                let artifacts = np.phases.iter().flat_map(|p| p.artifacts.iter());
                for c in Component::hardway().filter(|c| goes_live_in(*c).is_some()) {
                    let live = c.install().dest;
                    assert!(!artifacts.clone().any(|a| a.dest == live), "{}: {c} uploaded where it runs from", np.node);
                }
                for a in artifacts.filter(|a| a.dest.starts_with(STAGED)) {
                    let c = Component::hardway().find(|c| c.key() == a.name).unwrap();
                    let turn = goes_live_in(c).unwrap();
                    let readers: Vec<Phase> = np
                        .phases
                        .iter()
                        .filter(|p| p.commands.iter().any(|x| x.run.contains(&a.dest)))
                        .map(|p| p.phase)
                        .collect();
                    assert_eq!(readers, [turn], "{}: {c} goes live in {turn:?} only", np.node);
                    let restarts = np.phases.iter().find(|p| p.phase == turn).unwrap();
                    assert!(
                        restarts.units.iter().any(|u| u.start && u.restart_on.contains(&a.dest)),
                        "{}: {turn:?} restarts a unit on {}",
                        np.node,
                        a.dest
                    );
                    checked += 1;
                }
            }
            assert!(checked >= 4, "etcd, containerd, runc and the CNI plugins are staged ({checked})");
        }
    }
}
