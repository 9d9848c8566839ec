//! The programs kforge installs, named once. Each one's key under `spec.artifacts`,
//! where it lands on a host, which role needs it and how its release is unpacked all
//! come from the one `match` in [`Component::install`]; the cluster file's
//! `Artifacts` and every hardway phase look components up here.

use crate::spec::Role;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    K3s,
    Etcd,
    Etcdctl,
    KubeApiserver,
    KubeControllerManager,
    KubeScheduler,
    Kubectl,
    Kubelet,
    KubeProxy,
    Containerd,
    Runc,
    CniPlugins,
}

/// Where a component's binary goes on a host.
#[derive(Debug, Clone, Copy)]
pub struct Install {
    /// The binary kforge checks for (the one a unit runs).
    pub dest: &'static str,
    /// Which hardway role needs it; `None`: every node (K3s).
    pub role: Option<Role>,
    /// Unpacked here when the artifact is a release tarball (top directory stripped).
    pub unpack_into: Option<&'static str>,
    /// Only these tarball members (tar wildcards); everything when empty.
    pub members: &'static [&'static str],
}

const BIN: &str = "/usr/local/bin";

/// The Kubernetes binaries kforge delivers live in one directory per release,
/// `/opt/kforge/kubernetes/v1.37.2/bin/`, side by side: an upgrade uploads the new
/// release beside the running one and the unit's ExecStart moves to it (the unit file
/// changes, so the restart is ordinary), and a patch rollback finds the old release
/// still there.
pub const RELEASES_DIR: &str = "/opt/kforge/kubernetes";

impl Component {
    /// In the cluster file's schema order.
    pub const ALL: [Component; 12] = [
        Component::K3s,
        Component::Etcd,
        Component::Etcdctl,
        Component::KubeApiserver,
        Component::KubeControllerManager,
        Component::KubeScheduler,
        Component::Kubectl,
        Component::Kubelet,
        Component::KubeProxy,
        Component::Containerd,
        Component::Runc,
        Component::CniPlugins,
    ];

    /// The components of a hardway cluster (everything but K3s).
    pub fn hardway() -> impl Iterator<Item = Component> {
        Component::ALL.into_iter().filter(|c| *c != Component::K3s)
    }

    /// Whether a node with `roles` in a `kind` cluster runs this component.
    pub fn runs_on(self, kind: crate::spec::DistributionKind, roles: &crate::spec::Roles) -> bool {
        match self.install().role {
            None => kind == crate::spec::DistributionKind::K3s,
            Some(role) => kind == crate::spec::DistributionKind::Hardway && roles.has(role),
        }
    }

    /// The key under `spec.artifacts`.
    pub const fn key(self) -> &'static str {
        match self {
            Component::K3s => "k3s",
            Component::Etcd => "etcd",
            Component::Etcdctl => "etcdctl",
            Component::KubeApiserver => "kube-apiserver",
            Component::KubeControllerManager => "kube-controller-manager",
            Component::KubeScheduler => "kube-scheduler",
            Component::Kubectl => "kubectl",
            Component::Kubelet => "kubelet",
            Component::KubeProxy => "kube-proxy",
            Component::Containerd => "containerd",
            Component::Runc => "runc",
            Component::CniPlugins => "cni-plugins",
        }
    }

    /// The systemd unit that runs it, for the components kforge starts itself (K3s's
    /// unit depends on the node's role: see `k3s.rs`).
    pub const fn service(self) -> Option<&'static str> {
        match self {
            Component::Etcd => Some("etcd.service"),
            Component::KubeApiserver => Some("kube-apiserver.service"),
            Component::KubeControllerManager => Some("kube-controller-manager.service"),
            Component::KubeScheduler => Some("kube-scheduler.service"),
            Component::Kubelet => Some("kubelet.service"),
            Component::KubeProxy => Some("kube-proxy.service"),
            Component::Containerd => Some("containerd.service"),
            Component::K3s | Component::Etcdctl | Component::Kubectl | Component::Runc | Component::CniPlugins => None,
        }
    }

    /// Whether kforge keeps this component's delivered binary in the release's own
    /// directory ([`RELEASES_DIR`]): the Kubernetes programs a unit runs, whose version
    /// is `spec.distribution.version`. kubectl (a client, at its stable path for people
    /// and scripts) and components with versions of their own stay where they are.
    pub const fn side_by_side(self) -> bool {
        matches!(
            self,
            Component::KubeApiserver
                | Component::KubeControllerManager
                | Component::KubeScheduler
                | Component::Kubelet
                | Component::KubeProxy
        )
    }

    /// The binary a unit runs for `version`: under [`RELEASES_DIR`] when kforge
    /// delivers it (`delivered`: an artifact names it) and it is kept side by side; the
    /// install path otherwise (a binary the host brings itself is where it put it).
    pub fn binary(self, version: &str, delivered: bool) -> String {
        let dest = self.install().dest;
        if !(delivered && self.side_by_side()) {
            return dest.to_string();
        }
        let name = dest.rsplit('/').next().unwrap_or(dest);
        format!("{RELEASES_DIR}/{version}/bin/{name}")
    }

    pub const fn install(self) -> Install {
        const fn binary(dest: &'static str, role: Role) -> Install {
            Install { dest, role: Some(role), unpack_into: None, members: &[] }
        }
        match self {
            Component::K3s => Install { dest: "/usr/local/bin/k3s", role: None, unpack_into: None, members: &[] },
            Component::Etcd => Install {
                dest: "/usr/local/bin/etcd",
                role: Some(Role::Controller),
                unpack_into: Some(BIN),
                members: &["*/etcd", "*/etcdctl", "*/etcdutl"],
            },
            Component::Etcdctl => binary("/usr/local/bin/etcdctl", Role::Controller),
            Component::KubeApiserver => binary("/usr/local/bin/kube-apiserver", Role::Controller),
            Component::KubeControllerManager => binary("/usr/local/bin/kube-controller-manager", Role::Controller),
            Component::KubeScheduler => binary("/usr/local/bin/kube-scheduler", Role::Controller),
            Component::Kubectl => binary("/usr/local/bin/kubectl", Role::Controller),
            Component::Kubelet => binary("/usr/local/bin/kubelet", Role::Worker),
            Component::KubeProxy => binary("/usr/local/bin/kube-proxy", Role::Worker),
            Component::Containerd => Install {
                dest: "/usr/local/bin/containerd",
                role: Some(Role::Worker),
                unpack_into: Some(BIN),
                members: &["bin/*"],
            },
            Component::Runc => binary("/usr/local/sbin/runc", Role::Worker),
            Component::CniPlugins => Install {
                dest: "/opt/cni/bin/bridge",
                role: Some(Role::Worker),
                unpack_into: Some("/opt/cni/bin"),
                members: &[],
            },
        }
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

/// The guarded command that stops a host before anything starts when its binary of
/// `c` is not the cluster file's `spec.distribution.version` (a wrong download, an
/// image baked with another release). `None` for components with versions of their own
/// (etcd, containerd, runc, the CNI plugins). It runs whenever the artifacts phase
/// changed (and in every bootstrap). A binary the host brings itself (`delivered:
/// false`: no artifact names it) can change behind kforge's back, so its test is also a
/// recheck that every apply runs; it is plain shell (no kforge functions), since the
/// facts run it. A delivered binary is pinned by its digest instead: a changed one is
/// uploaded again, which runs the check.
pub fn version_check(c: Component, version: &str, delivered: bool) -> Option<crate::plan::PlannedCommand> {
    let dest = &c.binary(version, delivered);
    // What the binary prints first, and how to ask it.
    let (ask, expected) = match c {
        Component::K3s => {
            (format!("{dest} --version 2>/dev/null | head -n1 | cut -d' ' -f1-3"), format!("k3s version {version}"))
        }
        Component::KubeApiserver
        | Component::KubeControllerManager
        | Component::KubeScheduler
        | Component::Kubelet
        | Component::KubeProxy => (format!("{dest} --version 2>/dev/null | head -n1"), format!("Kubernetes {version}")),
        Component::Kubectl => {
            (format!("{dest} version --client 2>/dev/null | head -n1"), format!("Client Version: {version}"))
        }
        Component::Etcd | Component::Etcdctl | Component::Containerd | Component::Runc | Component::CniPlugins => {
            return None;
        }
    };
    let test = format!("[ \"$({ask})\" = '{expected}' ]");
    let key = c.key();
    Some(crate::plan::PlannedCommand {
        description: format!("check that {dest} is {version}"),
        run: format!(
            "fail \"{dest} reports '$({ask})', but the cluster file says {version} (spec.distribution.version): \
             install the {version} binary (spec.artifacts.{key}) or change the version; nothing was started\""
        ),
        unless: Some(test.clone()),
        recheck: (!delivered).then_some(test),
    })
}
