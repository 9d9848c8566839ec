//! Upgrades, offline: what an upgrade changes in the files kforge delivers. (The
//! upgrade itself, on the lab's real components: tests/it/lab/upgrade.rs.)

use std::collections::BTreeMap;
use std::path::Path;

use crate::util::TestContext;

/// Every file `render` writes for the nodes, by path (user-data and the bootstrap
/// script embed the files themselves, so they are compared through them).
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                dirs.push(p);
            } else if !rel.ends_with("/user-data") && !rel.ends_with("var/lib/kforge/bootstrap.sh") {
                out.insert(rel, std::fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    out
}

/// The operator's settings come through an upgrade unchanged (kubeadm #3049 dropped
/// kubelet settings): between v1.36.3 and v1.37.2 of the same file, every file on every
/// node is the same but for the release in the binaries' directory — and the kubelet's
/// and API server's settings from the cluster file are there in both.
#[test]
fn an_upgrade_changes_only_the_release_in_every_file() {
    let ctx = TestContext::with_example("hardway");
    // Settings an operator gives the kubelet (a label and a taint on a worker).
    ctx.edit_spec(
        "    - {name: worker-0, role: worker, endpoint: 198.51.100.30, location: fra}",
        "    - {name: worker-0, role: worker, endpoint: 198.51.100.30, location: fra, labels: {tier: edge}, taints: [\"edge=true:NoSchedule\"]}",
    );
    ctx.edit_spec("version: v1.37.2", "version: v1.36.3");
    let old = tree(&ctx.render("old"));
    ctx.edit_spec("version: v1.36.3", "version: v1.37.2");
    let new = tree(&ctx.render("new"));
    assert_eq!(old.keys().collect::<Vec<_>>(), new.keys().collect::<Vec<_>>(), "the same files");
    let mut moved = Vec::new();
    for (path, before) in &old {
        let after = &new[path];
        if before != after {
            assert_eq!(&before.replace("v1.36.3", "v1.37.2"), after, "{path}: more than the release changed");
            moved.push(path.as_str());
        }
    }
    // Exactly the units that run a release's program moved (on each node that runs it).
    let units: Vec<&str> = moved.iter().map(|p| p.rsplit('/').next().unwrap()).collect();
    for u in &units {
        assert!(
            [
                "kube-apiserver.service",
                "kube-controller-manager.service",
                "kube-scheduler.service",
                "kubelet.service",
                "kube-proxy.service"
            ]
            .contains(u),
            "{moved:?}"
        );
    }
    assert_eq!(units.len(), 3 * 3 + 2 * 2, "3 controllers' 3 units, 2 workers' 2: {moved:?}");
    let kubelet = &new["worker-0/etc/systemd/system/kubelet.service"];
    assert!(kubelet.contains("/opt/kforge/kubernetes/v1.37.2/bin/kubelet"), "{kubelet}");
    assert!(kubelet.contains("--node-labels=") && kubelet.contains("tier=edge"), "{kubelet}");
    assert!(kubelet.contains("--register-with-taints=edge=true:NoSchedule"), "{kubelet}");
    let apiserver = &new["controller-0/etc/systemd/system/kube-apiserver.service"];
    assert!(apiserver.contains("--service-cluster-ip-range=10.32.0.0/24"), "{apiserver}");
    assert!(apiserver.contains("--encryption-provider-config="), "{apiserver}");
}
