//! Upgrades: what runs now (each host's running programs, as they report their own
//! version) against what the cluster file asks for, and the version-skew rules that
//! must hold before any host is touched.
//!
//! The rules, each refusal pointing at the version's line in the cluster file:
//! - an API server moves at most one minor per apply (v1.35 → v1.37 is refused with the
//!   path: v1.36 first), and never down a minor (a patch rollback within a minor is an
//!   ordinary apply with the older patch);
//! - a kubelet or kube-proxy may be at most 3 minors older than the API servers it talks
//!   to (a warning from 2, the stricter reading of the policy) and never newer: kforge
//!   moves every API server before any worker, so only what runs now can break it;
//! - controller-manager and scheduler move only after every API server (the controllers
//!   phase comes after the control-plane phase, with a barrier);
//! - etcd one minor at a time, and into 3.6 only from 3.5.26 or later (etcd's 3.5 → 3.6
//!   upgrade guide: earlier 3.5 patches carry upgrade blockers).

use std::collections::BTreeMap;
use std::fmt;

use crate::component::Component;
use crate::spec::{Cluster, Diagnostic};

/// A release number as programs print it: `v1.37.2`, `3.6.16`, `v1.36.4+k3s1`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// Anything after the patch number (`+k3s1`, `-rc.1`), kept for display.
    pub suffix: String,
}

impl Version {
    pub fn parse(text: &str) -> Option<Version> {
        let t = text.trim().trim_start_matches('v');
        let end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
        let mut nums = t[..end].split('.').map(|n| n.parse::<u32>().ok());
        let (major, minor, patch) = (nums.next()??, nums.next()??, nums.next()??);
        Some(Version { major, minor, patch, suffix: t[end..].to_string() })
    }

    /// Whole minors from `self` up to `newer` (negative when `newer` is older).
    pub fn minors_to(&self, newer: &Version) -> i64 {
        (i64::from(newer.major) - i64::from(self.major)) * 1000 + i64::from(newer.minor) - i64::from(self.minor)
    }

    pub fn same_minor(&self, other: &Version) -> bool {
        self.major == other.major && self.minor == other.minor
    }

    fn line(&self) -> String {
        format!("v{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}{}", self.major, self.minor, self.patch, self.suffix)
    }
}

/// The version a component's running program printed (`--version`'s first line), or
/// `None` for text that names none.
pub fn version_in(c: Component, line: &str) -> Option<Version> {
    // kforge's named stand-ins say so in their version line: they run no release.
    if line.contains("stand-in") {
        return None;
    }
    let word = match c {
        // "Kubernetes v1.37.2"
        Component::KubeApiserver
        | Component::KubeControllerManager
        | Component::KubeScheduler
        | Component::Kubelet
        | Component::KubeProxy => line.strip_prefix("Kubernetes ")?,
        // "k3s version v1.36.4+k3s1 (abcdef12)"
        Component::K3s => line.strip_prefix("k3s version ")?.split_whitespace().next()?,
        // "etcd Version: 3.6.16"
        Component::Etcd | Component::Etcdctl => line.rsplit(' ').next()?,
        // "containerd github.com/containerd/containerd/v2 v2.4.2 <revision>"
        Component::Containerd => line.split_whitespace().nth(2)?,
        // "runc version 1.5.2"
        Component::Runc => line.strip_prefix("runc version ")?,
        Component::Kubectl | Component::CniPlugins => return None,
    };
    Version::parse(word)
}

/// What runs on one host: component → the version its running program reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    pub node: String,
    pub versions: BTreeMap<Component, Version>,
}

/// Where the cluster file sets each component's version, for refusals.
const VERSION_PATH: &str = "spec.distribution.version";

/// etcd's 3.5 → 3.6 upgrade guide: every 3.5 member on 3.5.26 or later first.
const ETCD_36_FROM: (u32, u32, u32) = (3, 5, 26);

/// The Kubernetes components whose version is the cluster file's
/// `spec.distribution.version`.
const KUBERNETES: [Component; 5] = [
    Component::KubeApiserver,
    Component::KubeControllerManager,
    Component::KubeScheduler,
    Component::Kubelet,
    Component::KubeProxy,
];

/// The etcd release the cluster file delivers, read from its artifact's file name or
/// URL (`etcd-v3.6.16-linux-amd64.tar.gz`, as etcd publishes them): `None` when the
/// name carries none.
pub fn etcd_release(cluster: &Cluster) -> Option<Version> {
    let a = cluster.spec.artifacts.get(Component::Etcd)?;
    a.sources().into_iter().find_map(|(_, s)| {
        let name = s.url.or(s.path)?;
        let file = name.rsplit('/').next()?.to_string();
        // What follows the number is the platform and extension, not the release.
        Version::parse(file.strip_prefix("etcd-")?).map(|v| Version { suffix: String::new(), ..v })
    })
}

/// Every rule over what runs now and what the file asks for: errors refuse the apply
/// before any host is touched; warnings are printed and the apply goes on.
pub fn check(cluster: &Cluster, running: &[Running]) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let Some(wanted) = Version::parse(&cluster.spec.distribution.version) else { return out };
    let oldest = |c: Component| {
        running.iter().filter_map(|r| Some((r.node.as_str(), r.versions.get(&c)?))).min_by_key(|(_, v)| (*v).clone())
    };
    let newest = |c: Component| {
        running.iter().filter_map(|r| Some((r.node.as_str(), r.versions.get(&c)?))).max_by_key(|(_, v)| (*v).clone())
    };
    let api = if cluster.spec.distribution.kind == crate::spec::DistributionKind::K3s {
        Component::K3s
    } else {
        Component::KubeApiserver
    };

    // The API servers: one minor at a time, never down a minor.
    if let Some((node, now)) = oldest(api).filter(|(_, now)| now.major != wanted.major) {
        out.push(
            Diagnostic::error(
                VERSION_PATH,
                format!("{wanted} is another major release than the {now} the API server on {node} runs"),
            )
            .help("kforge moves a cluster within one major release, one minor at a time"),
        );
    } else if let Some((node, now)) = oldest(api) {
        let step = now.minors_to(&wanted);
        if step > 1 {
            let path: Vec<String> = (1..step).map(|i| format!("v{}.{}", now.major, i64::from(now.minor) + i)).collect();
            out.push(
                Diagnostic::error(
                    VERSION_PATH,
                    format!(
                        "{wanted} skips a minor: the API server on {node} runs {now}, and an API server moves one minor at a time"
                    ),
                )
                .help(format!(
                    "upgrade to {} first (set version: to its newest patch, apply), then to {wanted}",
                    path.join(", then ")
                )),
            );
        }
    }
    if let Some((node, now)) = newest(api)
        && wanted < *now
        && !wanted.same_minor(now)
    {
        out.push(
            Diagnostic::error(
                VERSION_PATH,
                format!(
                    "{wanted} is a downgrade across minors: the API server on {node} runs {now}, and Kubernetes does not support going back a minor (etcd holds objects in the newer schema)"
                ),
            )
            .help(format!(
                "a patch rollback stays within {} (e.g. an earlier {}.x); to go back a minor, keep {wanted} in the file and restore the etcd snapshot apply took before the upgrade (snapshots/ beside this file): `kforge etcd restore SNAPSHOT --yes` leaves the API servers stopped, then `kforge apply` starts {wanted}'s and moves every node back",
                now.line(),
                now.line()
            )),
        );
    }

    // kubelets and kube-proxies against the API servers they will talk to: every API
    // server moves first, so each worker still running its old release must be within
    // the skew of the new one.
    for c in [Component::Kubelet, Component::KubeProxy] {
        for r in running {
            let Some(v) = r.versions.get(&c) else { continue };
            let behind = v.minors_to(&wanted);
            let what = c.key();
            if behind > 3 {
                out.push(
                    Diagnostic::error(
                        VERSION_PATH,
                        format!(
                            "the {what} on {} runs {v}: with the API servers at {wanted} it would be {behind} minors older, and the skew policy allows 3",
                            r.node
                        ),
                    )
                    .help(format!("upgrade the cluster one minor at a time from {} (every node moves each time)", v.line())),
                );
            } else if behind >= 2 {
                out.push(Diagnostic::warning(
                    VERSION_PATH,
                    format!(
                        "the {what} on {} runs {v}, {behind} minors older than {wanted}: supported, but at the edge of the skew policy until this apply upgrades it",
                        r.node
                    ),
                ));
            }
        }
    }

    // etcd: one minor at a time, into 3.6 only from 3.5.26 or later.
    if let (Some(new), Some((node, now))) = (etcd_release(cluster), oldest(Component::Etcd)) {
        let path = "spec.artifacts.etcd";
        if now.minors_to(&new) > 1 {
            out.push(
                Diagnostic::error(path, format!("etcd {new} skips a minor: {node} runs etcd {now}")).help(format!(
                    "upgrade etcd to the newest v{}.{}.x first",
                    now.major,
                    now.minor + 1
                )),
            );
        } else if now.minors_to(&new) < 0 {
            out.push(
                Diagnostic::error(path, format!("etcd {new} is a downgrade across minors: {node} runs etcd {now}"))
                    .help("etcd supports downgrades only through `etcdctl downgrade`; restore a snapshot instead"),
            );
        } else if (new.major, new.minor) == (3, 6) && (now.major, now.minor) == (3, 5) {
            let (ma, mi, pa) = ETCD_36_FROM;
            if (now.major, now.minor, now.patch) < (ma, mi, pa) {
                out.push(
                    Diagnostic::error(path, format!("etcd {now} on {node} cannot move to {new} directly"))
                        .help(format!("etcd's upgrade guide asks for {ma}.{mi}.{pa} or later on every member before 3.6: upgrade to the newest 3.5 first")),
                );
            }
        }
    }
    out
}

/// Where versions are mixed now: per component, every version running somewhere and on
/// which nodes (an interrupted upgrade, a host changed by hand). Empty when uniform.
pub fn mixed(running: &[Running]) -> Vec<String> {
    let mut by: BTreeMap<Component, BTreeMap<Version, Vec<&str>>> = BTreeMap::new();
    for r in running {
        for (c, v) in &r.versions {
            by.entry(*c).or_default().entry(v.clone()).or_default().push(&r.node);
        }
    }
    by.into_iter()
        .filter(|(_, vs)| vs.len() > 1)
        .map(|(c, vs)| {
            let parts: Vec<String> = vs.iter().map(|(v, nodes)| format!("{v} on {}", nodes.join(", "))).collect();
            format!("{} versions are mixed: {}", c.key(), parts.join("; "))
        })
        .collect()
}

/// The components that would change release on this host (running → wanted), for the
/// plan's upgrade view.
pub fn moves(cluster: &Cluster, r: &Running) -> Vec<(Component, Version, Version)> {
    let Some(wanted) = Version::parse(&cluster.spec.distribution.version) else { return Vec::new() };
    let mut v: Vec<(Component, Version, Version)> = KUBERNETES
        .into_iter()
        .chain([Component::K3s])
        .filter_map(|c| Some((c, r.versions.get(&c)?.clone())))
        .filter(|(_, now)| *now != wanted)
        .map(|(c, now)| (c, now, wanted.clone()))
        .collect();
    if let (Some(new), Some(now)) = (etcd_release(cluster), r.versions.get(&Component::Etcd))
        && *now != new
    {
        v.push((Component::Etcd, now.clone(), new));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn versions_parse_as_programs_print_them() {
        assert_eq!(version_in(Component::Kubelet, "Kubernetes v1.37.2"), Some(v("1.37.2")));
        assert_eq!(version_in(Component::Etcd, "etcd Version: 3.6.16"), Some(v("3.6.16")));
        assert_eq!(
            version_in(Component::Containerd, "containerd github.com/containerd/containerd/v2 v2.4.2 module-proxy"),
            Some(v("2.4.2"))
        );
        assert_eq!(version_in(Component::Runc, "runc version 1.5.2"), Some(v("1.5.2")));
        let k3s = version_in(Component::K3s, "k3s version v1.36.4+k3s1 (abcdef12)").unwrap();
        assert_eq!((k3s.minor, k3s.patch, k3s.suffix.as_str()), (36, 4, "+k3s1"));
        assert_eq!(version_in(Component::Kubelet, "kubelet: command not found"), None);
        assert_eq!(version_in(Component::K3s, "k3s version v0.0.0-kforge-stand-in (kforge)"), None);
        assert!(v("1.37.2") > v("1.36.9") && v("1.37.10") > v("1.37.9"));
        assert_eq!(v("1.35.0").minors_to(&v("1.37.2")), 2);
    }

    fn lab(version: &str) -> crate::spec::LoadedSpec {
        let text = crate::spec::examples::HARDWAY_LAB.replace("version: v1.37.2", &format!("version: {version}"));
        crate::spec::parse("kforge.yaml", &text).unwrap()
    }

    fn running(nodes: &[(&str, &[(Component, &str)])]) -> Vec<Running> {
        nodes
            .iter()
            .map(|(n, vs)| Running { node: n.to_string(), versions: vs.iter().map(|(c, s)| (*c, v(s))).collect() })
            .collect()
    }

    fn errors(spec: &crate::spec::LoadedSpec, r: &[Running]) -> Vec<String> {
        let found = check(&spec.cluster, r);
        found.iter().filter(|d| d.is_error()).map(|d| spec.render_diagnostics(vec![d.clone()])).collect()
    }

    #[test]
    fn an_api_server_never_skips_a_minor_and_the_refusal_gives_the_path() {
        let spec = lab("v1.37.2");
        let r = running(&[
            ("lab-1", &[(Component::KubeApiserver, "1.35.4")]),
            ("lab-2", &[(Component::KubeApiserver, "1.36.3")]),
        ]);
        let e = errors(&spec, &r);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].contains("1.37.2 skips a minor: the API server on lab-1 runs 1.35.4"), "{}", e[0]);
        assert!(e[0].contains("--> kforge.yaml:12:"), "points at the version's line: {}", e[0]);
        assert!(e[0].contains("upgrade to v1.36 first"), "{}", e[0]);
        // One minor up, a patch up, a patch rollback: all allowed.
        for (from, to) in [("1.36.3", "v1.37.2"), ("1.37.1", "v1.37.2"), ("1.37.2", "v1.37.1")] {
            let r = running(&[("lab-1", &[(Component::KubeApiserver, from), (Component::Kubelet, from)])]);
            assert!(errors(&lab(to), &r).is_empty(), "{from} → {to}");
        }
    }

    #[test]
    fn a_downgrade_across_minors_is_refused() {
        let r = running(&[("lab-1", &[(Component::KubeApiserver, "1.37.2")])]);
        let e = errors(&lab("v1.36.3"), &r);
        assert_eq!(e.len(), 1);
        assert!(e[0].contains("1.36.3 is a downgrade across minors"), "{}", e[0]);
        assert!(e[0].contains("kforge etcd restore SNAPSHOT --yes` leaves the API servers stopped"), "{}", e[0]);
        // After that restore no API server runs: the rollback apply is allowed, with the
        // controllers and kubelets still at the newer minor until their turns.
        let restored =
            running(&[("lab-1", &[(Component::KubeControllerManager, "1.37.2"), (Component::Kubelet, "1.37.2")])]);
        assert!(errors(&lab("v1.36.3"), &restored).is_empty());
    }

    #[test]
    fn kubelets_stay_within_three_minors_and_warn_from_two() {
        let spec = lab("v1.37.2");
        let far = running(&[
            ("lab-1", &[(Component::KubeApiserver, "1.36.3")]),
            ("lab-3", &[(Component::Kubelet, "1.33.1")]),
        ]);
        let e = errors(&spec, &far);
        assert!(
            e.iter().any(|e| e.contains("the kubelet on lab-3 runs 1.33.1") && e.contains("4 minors older")),
            "{e:?}"
        );
        let edge = running(&[
            ("lab-1", &[(Component::KubeApiserver, "1.36.3")]),
            ("lab-3", &[(Component::KubeProxy, "1.35.0")]),
        ]);
        let found = check(&spec.cluster, &edge);
        assert!(found.iter().all(|d| !d.is_error()), "{found:?}");
        assert!(
            found.iter().any(|d| d.message.contains("kube-proxy on lab-3 runs 1.35.0, 2 minors older")),
            "{found:?}"
        );
    }

    #[test]
    fn etcd_moves_one_minor_at_a_time_from_the_patch_its_guide_names() {
        let spec = lab("v1.37.2");
        assert_eq!(etcd_release(&spec.cluster), Some(v("3.6.16")));
        let old35 = running(&[("lab-2", &[(Component::Etcd, "3.5.21")])]);
        let e = errors(&spec, &old35);
        assert!(
            e.len() == 1 && e[0].contains("etcd 3.5.21 on lab-2 cannot move to 3.6.16") && e[0].contains("3.5.26"),
            "{e:?}"
        );
        assert!(e[0].contains("spec.artifacts.etcd"), "{}", e[0]);
        assert!(errors(&spec, &running(&[("lab-2", &[(Component::Etcd, "3.5.26")])])).is_empty());
        let e = errors(&spec, &running(&[("lab-2", &[(Component::Etcd, "3.4.30")])]));
        assert!(e.len() == 1 && e[0].contains("skips a minor"), "{e:?}");
    }

    #[test]
    fn mixed_versions_are_named_per_component() {
        let r = running(&[
            ("lab-1", &[(Component::Kubelet, "1.37.2")]),
            ("lab-2", &[(Component::Kubelet, "1.36.3")]),
            ("lab-3", &[(Component::Kubelet, "1.37.2")]),
        ]);
        assert_eq!(mixed(&r), ["kubelet versions are mixed: 1.36.3 on lab-2; 1.37.2 on lab-1, lab-3"]);
        assert!(mixed(&r[..1]).is_empty());
    }
}
