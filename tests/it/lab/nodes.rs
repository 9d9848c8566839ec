//! The cluster's shape changes on the hard-way lab, after its other checks: a machine
//! added to the running lab joins as a worker, `kforge reset` takes off everything
//! kforge put there (previewed first), a normal apply adds it back, the machine is
//! reinstalled in place (new host key, empty disk) and re-joins the documented way, and
//! dropping it from the file removes it from the cluster for good — its certificate
//! refused. Then the control plane shrinks to one controller and grows back to three,
//! each joining etcd as a learner.

use super::hardway::ETCDCTL;
use super::{Checks, Lab};

const NEW: &str = "lab-4";

pub(super) fn a_worker_joins_is_reset_and_joins_again(lab: &Lab, checks: &mut Checks) {
    checks.run("a machine added to the lab joins the running cluster as a worker", || joins(lab));
    checks.run("reset refuses a controller alone and an unknown name, touching nothing", || refusals(lab));
    checks.run("reset previews, then takes off everything kforge installed, SSH untouched", || reset(lab));
    checks.run("apply adds the reset worker back: one Node, Ready", || joins_again(lab));
    checks.run("a worker reinstalled in place is refused by its host key, then re-joins the documented way", || {
        replaced(lab)
    });
    checks.run("a worker dropped from the file is drained, reset, revoked and gone from every host", || removed(lab));
    checks.run("a stale etcd member made by hand: doctor names it, apply removes it", || stale_member(lab));
    checks.run("a controller leaves: refused while quorum would be lost, then etcd 3 → 2 members", || {
        controller_leaves(lab)
    });
    checks.run("controllers grow 1 → 3, one learner at a time, a workload answering throughout", || {
        controllers_grow(lab)
    });
    checks.run("a controller forced out while another's etcd is down: its member waits for quorum, then goes", || {
        forced_out(lab)
    });
}

pub(super) fn joins(lab: &Lab) {
    lab.ctx.kforge(&["lab", "add", NEW, "--dir", "lab"]).success();
    let ip = public_ip(lab);
    lab.edit_cluster(|c| {
        use kforge_core::spec::{IpAddress, Node, NodeSsh, Role, Roles};
        c.spec.nodes.push(Node {
            name: NEW.into(),
            role: Roles::one(Role::Worker),
            endpoint: Some(IpAddress(ip.parse().unwrap())),
            ssh: NodeSsh { host: Some(NEW.into()), ..NodeSsh::default() },
            location: None,
            labels: Default::default(),
            taints: Vec::new(),
            mesh_ip: None,
            arch: None,
        })
    });
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    ready_with_a_pod(lab);
    // The host's own record names its cluster, its node and the releases it runs.
    let manifest: serde_json::Value = serde_json::from_str(&lab.ssh(NEW, "cat /var/lib/kforge/manifest.json")).unwrap();
    assert_eq!((&manifest["cluster"], &manifest["node"]), (&serde_json::json!("hardway-lab"), &serde_json::json!(NEW)));
    assert_eq!(manifest["releases"]["hardway"], kforge_lab::HARDWAY_VERSION, "{manifest}");
    // Roles people can see: `kubectl get nodes` shows them (NAME STATUS ROLES …).
    let roles = lab.kubectl("lab-1", "get nodes --no-headers");
    let role_of = |n: &str| {
        roles
            .lines()
            .find(|l| l.starts_with(&format!("{n} ")))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_default()
            .to_string()
    };
    assert_eq!(role_of("lab-1"), "control-plane,worker", "{roles}");
    assert_eq!(role_of(NEW), "worker", "{roles}");
}

/// lab-4 Ready at the lab's release, running a pod placed on it.
pub(super) fn ready_with_a_pod(lab: &Lab) {
    lab.wait_for(90, "lab-4 Ready", || {
        lab.kubectl("lab-1", "get node lab-4 -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}'").trim()
            == "True"
    });
    let version = lab.kubectl("lab-1", "get node lab-4 -o jsonpath='{.status.nodeInfo.kubeletVersion}'");
    assert_eq!(version.trim(), kforge_lab::HARDWAY_VERSION);
    lab.kubectl("lab-1", "delete pod on-lab-4 --ignore-not-found --wait=true --timeout=60s");
    lab.kubectl(
        "lab-1",
        "run on-lab-4 --image=kforge.lab/busybox:1 --image-pull-policy=Never --restart=Never --overrides='{\"spec\":{\"nodeName\":\"lab-4\"}}' -- sleep 3600",
    );
    let (ready, said) = lab.ssh_status(
        "lab-1",
        "kubectl --kubeconfig /etc/kforge/admin.kubeconfig wait --for=condition=Ready pod/on-lab-4 --timeout=60s",
    );
    if !ready {
        let pod = lab.ssh_status("lab-1", "kubectl --kubeconfig /etc/kforge/admin.kubeconfig describe pod on-lab-4").1;
        let kubelet = lab.ssh_status(NEW, "journalctl -u kubelet -u containerd --no-pager -n 40").1;
        panic!("{said}\n{pod}\n{kubelet}");
    }
    // Every host already in the cluster reaches the pod over the mesh: each must have
    // a route to lab-4's pod network, which wg-quick adds only when it starts (the
    // hosts already running reload their peers). Pods forward by the same routes.
    let ip = lab.kubectl("lab-1", "get pod on-lab-4 -o jsonpath={.status.podIP}");
    for n in ["lab-1", "lab-2", "lab-3"] {
        let (reached, said) = lab.ssh_status(n, &format!("ping -c 1 -W 2 {ip}; ip route get {ip}"));
        assert!(reached, "{n} does not reach the pod on lab-4 ({ip}): {said}");
    }
}

fn refusals(lab: &Lab) {
    let manifest = || lab.ssh("lab-1", "sha256sum /var/lib/kforge/manifest.json");
    let before = manifest();
    let out = lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", "lab-1", "--yes"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("lab-1 runs the control plane"), "{}", out.stderr);
    let out = lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", "lab-44", "--yes"]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(out.stderr.contains("has no node `lab-44`; did you mean `lab-4`"), "{}", out.stderr);
    assert_eq!(manifest(), before);
}

fn reset(lab: &Lab) {
    let manifest = || lab.ssh(NEW, "sha256sum /var/lib/kforge/manifest.json");
    let before = manifest();
    let preview = lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", NEW]).success().stdout;
    for would in [
        "would stop and disable kubelet.service",
        "would stop and disable containerd.service",
        "would delete link cni0",
    ] {
        assert!(preview.contains(would), "{would}: {preview}");
    }
    assert!(preview.contains("nothing was changed"), "{preview}");
    assert_eq!(manifest(), before, "the preview touched the host");

    let done = lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", NEW, "--yes"]).success().stdout;
    eprintln!("{done}");
    assert!(done.contains("did stop and disable kubelet.service"), "{done}");
    // What an operator would check by hand, on the host itself (over SSH: it still works).
    let listening = lab.ssh(NEW, "ss -Htln | awk '{print $4}'");
    for port in [":6443", ":2379", ":2380", ":10250", ":10256"] {
        assert!(!listening.lines().any(|l| l.ends_with(port)), "{port} still open: {listening}");
    }
    let rules = lab.ssh(NEW, "iptables-save | grep -cE 'KUBE-|CNI-' || true");
    assert_eq!(rules.trim(), "0", "KUBE- or CNI- rules left");
    let left = lab.ssh(
        NEW,
        "for p in /var/lib/kforge /etc/kforge /opt/kforge /etc/systemd/system/kubelet.service /etc/systemd/system/containerd.service /etc/wireguard/kforge0.conf /var/lib/kubelet /etc/cni/net.d; do [ -e $p ] && echo $p; done; ip -o link show | awk -F': ' '{print $2}' | grep -E '^(cni0|kforge0|veth)' ; nft list tables | grep kforge; ip netns list | grep cni-; pgrep -l -x 'containerd|containerd-shim|kubelet|kube-proxy|boringtun-cli'; grep -c ' /var/lib/kubelet' /proc/mounts; true",
    );
    assert_eq!(left.trim(), "0", "left on {NEW}: {left}");
    // The lab gives containerd its own mount (overlay cannot stack on the machine's
    // root), as a real host may give it a disk: kept mounted, emptied.
    let kept = lab.ssh(NEW, "mountpoint -q /var/lib/containerd && ls -A /var/lib/containerd | wc -l");
    assert_eq!(kept.trim(), "0", "/var/lib/containerd: still a mount point, empty");
    // A second reset finds nothing to do.
    let again = lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", NEW, "--yes"]).success().stdout;
    assert!(!again.contains("did stop"), "{again}");
}

fn joins_again(lab: &Lab) {
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    ready_with_a_pod(lab);
    let nodes = lab.kubectl("lab-1", "get nodes -o name");
    assert_eq!(nodes.lines().filter(|l| l.trim() == "node/lab-4").count(), 1, "{nodes}");
}

/// lab-4 dropped from the file: plan shows the removal, apply drains it (its pod moves),
/// revokes its kubelet certificate, resets the host and deletes the Node; every other
/// host drops its mesh peer and firewall entries; the bundle forgets it. Then its old
/// certificate, still valid by date, is refused by the real API.
fn removed(lab: &Lab) {
    lab.kubectl("lab-1", "delete pod on-lab-4 --ignore-not-found --wait=true --timeout=60s");
    // One replica, placed on lab-4 (the others cordoned by hand while it is scheduled:
    // a preferred affinity alone loses to other scores now and then): the drain must
    // move it.
    let others = "lab-1 lab-2 lab-3";
    lab.kubectl("lab-1", &format!("cordon {others}"));
    let on = || lab.kubectl("lab-1", "get pods -l app=leaves-lab-4 -o jsonpath='{.items[*].spec.nodeName}'");
    lab.ssh("lab-1", &format!("kubectl --kubeconfig /etc/kforge/admin.kubeconfig apply -f - <<'EOF'\n{LEAVES}EOF"));
    lab.kubectl("lab-1", "rollout status deploy/leaves-lab-4 --timeout=60s");
    // The scheduler acts on its own cache of the Nodes, and a cordon reaches it by a
    // watch of its own: a pod scheduled a moment after the cordon can still land on a
    // cordoned node (seen once in CI, on lab-1). Placed again, it goes to lab-4.
    for _ in 0..3 {
        if on().trim() == NEW {
            break;
        }
        eprintln!("leaves-lab-4 was placed on {} before the scheduler saw the cordon: placing it again", on().trim());
        lab.kubectl("lab-1", "delete pods -l app=leaves-lab-4 --wait=true --timeout=60s");
        lab.kubectl("lab-1", "rollout status deploy/leaves-lab-4 --timeout=60s");
    }
    lab.kubectl("lab-1", &format!("uncordon {others}"));
    assert_eq!(on().trim(), NEW);
    let bundle = || -> kforge_core::secrets::SecretsBundle {
        serde_saphyr::from_str(&lab.ctx.read("lab/kforge.secrets.yaml")).unwrap()
    };
    let old = bundle().certificates["kubelet-client/lab-4"].pair.clone();
    let public_key = lab.ssh(NEW, "wg show kforge0 public-key").trim().to_string();
    let (mesh_ip, public_ip) = (bundle().mesh_ips[NEW].to_string(), public_ip(lab));

    lab.edit_cluster(|c| c.spec.nodes.retain(|n| n.name != NEW));
    let plan = lab.ctx.kforge(&["plan", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(plan.contains("lab-4  worker  REMOVED from the file"), "{plan}");
    assert!(plan.contains("revoke its kubelet certificate in the API (X509SHA256="), "{plan}");
    let report = lab.apply_json();
    let removal = &report["removals"][0];
    assert_eq!(removal["node"], NEW, "{report}");
    assert_eq!(removal["removed"], true, "{report}");
    let steps: Vec<&str> = removal["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    eprintln!("lab-4's removal: {}", removal["steps"]);
    assert!(steps[0].starts_with("cordon and drain"), "{steps:?}");
    assert_eq!(steps[1..], ["revoke its kubelet certificate in the API", "reset the host", "delete Node lab-4"]);
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }

    let (gone, _) = lab.ssh_status("lab-1", "kubectl --kubeconfig /etc/kforge/admin.kubeconfig get node lab-4");
    assert!(!gone, "Node lab-4 is gone");
    lab.kubectl("lab-1", "rollout status deploy/leaves-lab-4 --timeout=60s");
    lab.wait_for(30, "the pod moved to lab-1, lab-2 or lab-3", || ["lab-1", "lab-2", "lab-3"].contains(&on().trim()));
    for n in ["lab-1", "lab-2", "lab-3"] {
        let peers = lab.ssh(n, "wg show kforge0 peers");
        assert!(!peers.contains(&public_key), "{n} still peers with lab-4");
        let table = lab.ssh(n, "nft list table inet kforge");
        let addresses: Vec<&str> = table.split(|c: char| !(c.is_ascii_digit() || c == '.')).collect();
        assert!(
            !addresses.contains(&public_ip.as_str()) && !addresses.contains(&mesh_ip.as_str()),
            "{n}'s firewall names lab-4:\n{table}"
        );
    }
    let after = bundle();
    assert!(
        !after.deployed.contains_key(NEW) && !after.mesh_ips.contains_key(NEW) && !after.wireguard.contains_key(NEW)
    );
    assert!(!after.certificates.contains_key("kubelet-client/lab-4"));
    assert!(after.revoked.values().any(|r| r.node == NEW), "its revocation is kept");

    // The old kubelet certificate against the real API: it still authenticates (a read
    // answers), but registering the Node again is refused by the revocation.
    lab.ssh(
        "lab-1",
        &format!("cat > /tmp/old.crt <<'EOF'\n{}EOF\ncat > /tmp/old.key <<'EOF'\n{}EOF", old.cert, old.key),
    );
    let k = "kubectl --kubeconfig /tmp/old.kubeconfig";
    lab.ssh(
        "lab-1",
        &format!("cp /etc/kforge/admin.kubeconfig /tmp/old.kubeconfig && {k} config set-credentials \"$({k} config view -o jsonpath='{{.contexts[0].context.user}}')\" --client-certificate=/tmp/old.crt --client-key=/tmp/old.key --embed-certs=true >/dev/null"),
    );
    let (read, said) = lab.ssh_status("lab-1", &format!("{k} get --raw /version"));
    assert!(read, "the old certificate still authenticates: {said}");
    let (created, said) = lab.ssh_status(
        "lab-1",
        &format!("{k} create -f - <<'EOF'\napiVersion: v1\nkind: Node\nmetadata: {{name: lab-4}}\nEOF"),
    );
    assert!(!created, "the revoked certificate registered Node lab-4 again: {said}");
    assert!(said.contains("revoked"), "{said}");
    lab.ssh("lab-1", "rm -f /tmp/old.crt /tmp/old.key /tmp/old.kubeconfig");

    // With the revocation in force, an eviction through a budget still goes: the API
    // server's own write of the budget's status carries no credential id.
    let node = on().trim().to_string();
    lab.kubectl("lab-1", &format!("drain {node} --pod-selector=app=leaves-lab-4 --timeout=60s"));
    lab.kubectl("lab-1", &format!("uncordon {node}"));
    lab.kubectl("lab-1", "rollout status deploy/leaves-lab-4 --timeout=60s");

    // Out of the cluster, the machine itself goes, as a cancelled VPS would.
    let ns = kforge_lab::LabState::load(&lab.ctx.path("lab")).unwrap().machine(NEW).unwrap().ns.clone();
    lab.ctx.kforge(&["lab", "remove", NEW, "--dir", "lab"]).success();
    let state = kforge_lab::LabState::load(&lab.ctx.path("lab")).unwrap();
    assert!(state.machine(NEW).is_none());
    let namespaces = crate::util::run("ip", &["netns", "list"]);
    assert!(!namespaces.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())), "{ns}: {namespaces}");
    assert!(!lab.ctx.read("lab/ssh_config").contains(&format!("Host {NEW}")));
    assert!(!lab.ctx.read("lab/known_hosts").contains(&format!("{public_ip} ")));
}

const LEAVES: &str = r#"apiVersion: apps/v1
kind: Deployment
metadata: {name: leaves-lab-4}
spec:
  replicas: 1
  selector: {matchLabels: {app: leaves-lab-4}}
  template:
    metadata: {labels: {app: leaves-lab-4}}
    spec:
      terminationGracePeriodSeconds: 1
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
            - weight: 100
              preference: {matchExpressions: [{key: kubernetes.io/hostname, operator: In, values: [lab-4]}]}
      containers:
        - {name: sleep, image: kforge.lab/busybox:1, imagePullPolicy: Never, command: [sleep, "3600"]}
---
# A budget, so the eviction updates its status: the API server's own write, which the
# revocation policy must let through (it once did not, and every drain stalled).
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: leaves-lab-4}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: leaves-lab-4}}
"#;

/// lab-4's address (the lab's state as it is now: the test added the machine).
pub(super) fn public_ip(lab: &Lab) -> String {
    kforge_lab::LabState::load(&lab.ctx.path("lab")).unwrap().machine(NEW).unwrap().public_ip.unwrap().to_string()
}

/// The machine rebuilt under the same name and address: strict host keys refuse it with
/// the way out; its new key accepted (checked against what the machine itself holds, as
/// a provider's console shows it), apply re-joins it as the same Node.
fn replaced(lab: &Lab) {
    let out = lab.ctx.kforge(&["lab", "reinstall", NEW, "--dir", "lab"]).success().stdout;
    let new_key = out.lines().nth(1).unwrap().trim().to_string();
    assert!(new_key.starts_with(&format!("{} ssh-ed25519 ", public_ip(lab))), "{out}");
    let refused = lab.apply(&[]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("lab-4's SSH host key is not the one your known_hosts pins"), "{said}");
    assert!(said.contains("ssh-keygen -R"), "{said}");

    // The documented way: the old line out, the checked new one in.
    let known = lab.ctx.path("lab/known_hosts");
    crate::util::run("ssh-keygen", &["-q", "-R", &public_ip(lab), "-f", known.to_str().unwrap()]);
    let mut text = std::fs::read_to_string(&known).unwrap();
    text.push_str(&format!("{new_key}\n"));
    std::fs::write(&known, text).unwrap();
    joins_again(lab);
}

/// After lab-3 left: etcd's members are lab-1 and lab-2, both healthy.
fn lab_1_and_lab_2_are_the_members_both_healthy(lab: &Lab) {
    let mut left: Vec<String> = members(lab).into_iter().map(|(n, _)| n).collect();
    left.sort();
    assert_eq!(left, ["lab-1", "lab-2"]);
    let health = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint health --cluster 2>&1"));
    assert_eq!(health.lines().filter(|l| l.contains("is healthy")).count(), 2, "{health}");
}

/// etcd's members as lab-1 sees them: (name, id), an unstarted one with an empty name.
fn members(lab: &Lab) -> Vec<(String, u64)> {
    let out = lab.ssh("lab-1", &format!("{ETCDCTL} member list -w json"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["name"].as_str().unwrap_or("").to_string(), m["ID"].as_u64().unwrap()))
        .collect()
}

fn stale_member(lab: &Lab) {
    let bundle: kforge_core::secrets::SecretsBundle =
        serde_saphyr::from_str(&lab.ctx.read("lab/kforge.secrets.yaml")).unwrap();
    let unused = bundle.mesh_ips["lab-1"].octets();
    let peer = format!("https://{}.{}.{}.99:2380", unused[0], unused[1], unused[2]);
    lab.ssh("lab-1", &format!("{ETCDCTL} member add stale-1 --peer-urls={peer} >/dev/null"));
    assert_eq!(members(lab).len(), 4);
    let doctor = lab.ctx.kforge(&["doctor", "-f", "lab/kforge.yaml"]);
    assert_eq!(doctor.code, 2, "{}", doctor.stdout);
    assert!(doctor.stdout.contains("an unstarted member") && doctor.stdout.contains(&peer), "{}", doctor.stdout);
    assert!(doctor.stdout.contains("not a controller of the file"), "{}", doctor.stdout);
    let observed = lab.ctx.kforge(&["plan", "--observe", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(observed.contains("remove stale etcd member an unstarted member"), "{observed}");
    assert_eq!(members(lab).len(), 4, "plan --observe removed nothing");
    let report = lab.apply_json();
    let removal = &report["removals"][0];
    assert_eq!(removal["removed"], true, "{report}");
    assert!(removal["node"].as_str().unwrap().contains(&peer), "{report}");
    let left: Vec<String> = members(lab).into_iter().map(|(n, _)| n).collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().all(|n| !n.is_empty()), "{left:?}");
}

/// lab-3 (controller and worker) dropped from the file while lab-2's etcd is down:
/// without lab-3, 1 of 2 members would answer, so apply refuses before touching
/// anything. With lab-2's etcd back, apply removes lab-3's member before wiping the
/// host: 2 members, both healthy, the API answering, every balancer on 2 API servers.
fn controller_leaves(lab: &Lab) {
    lab.ssh("lab-2", "systemctl stop etcd");
    lab.edit_cluster(|c| c.spec.nodes.retain(|n| n.name != "lab-3"));
    let plan = lab.ctx.kforge(&["plan", "-f", "lab/kforge.yaml"]).success().stdout;
    assert!(plan.contains("lab-3  controller+worker  REMOVED from the file"), "{plan}");
    let refused = lab.apply(&[]);
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    let said = format!("{}{}", refused.stdout, refused.stderr);
    assert!(said.contains("etcd member lab-3"), "{said}");
    assert!(
        said.contains("not removed, nothing touched: removing it would leave 2 voting members of which 1 answers"),
        "{said}"
    );
    assert!(said.contains("down: lab-2"), "{said}");
    assert_eq!(members(lab).len(), 3, "nothing was removed");
    let cordoned = lab.kubectl("lab-1", "get node lab-3 -o jsonpath='{.spec.unschedulable}'");
    assert_eq!(cordoned.trim(), "", "lab-3 was not drained");

    lab.ssh("lab-2", "systemctl start etcd");
    lab.wait_for(60, "etcd healthy on every member", || {
        lab.ssh_status("lab-1", &format!("{ETCDCTL} endpoint health --cluster")).0
    });
    let report = lab.apply_json();
    let removal =
        report["removals"].as_array().unwrap().iter().find(|r| r["node"] == "lab-3").expect("lab-3's removal");
    assert_eq!(removal["removed"], true, "{report}");
    eprintln!("lab-3's removal: {}", removal["steps"]);
    let steps: Vec<&str> = removal["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert!(steps[0].starts_with("cordon and drain"), "{steps:?}");
    assert_eq!(steps[1], "remove its etcd member", "{steps:?}");
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    lab_1_and_lab_2_are_the_members_both_healthy(lab);
    let (gone, _) = lab.ssh_status("lab-1", "kubectl --kubeconfig /etc/kforge/admin.kubeconfig get node lab-3");
    assert!(!gone, "Node lab-3 is gone");
    assert_eq!(lab.kubectl("lab-1", "get --raw /readyz").trim(), "ok");
    let lab3 = serde_saphyr::from_str::<kforge_core::secrets::SecretsBundle>(&lab.ctx.read("lab/kforge.secrets.yaml"))
        .unwrap();
    assert!(!lab3.deployed.contains_key("lab-3"));
    for n in ["lab-1", "lab-2"] {
        let conf = lab.ssh(n, "cat /etc/kforge/api-balancer-nginx.conf");
        assert_eq!(
            conf.lines().filter(|l| l.trim_start().starts_with("server ") && l.contains(":6443 ")).count(),
            2,
            "{n}:\n{conf}"
        );
    }
}

/// lab-2 leaves too (etcd 2 → 1, its data wiped after its member left), then lab-2 and
/// lab-3 come back as controllers in one apply: each probed over the mesh, added as a
/// learner, started, promoted once caught up — one at a time — while a client on lab-1
/// gets every answer from upgrade-web. Afterwards: 3 voters, all healthy; every node's
/// API balancer lists 3 API servers; no join file left.
fn controllers_grow(lab: &Lab) {
    let mut lab2 = None;
    lab.edit_cluster(|c| {
        lab2 = c.spec.nodes.iter().find(|n| n.name == "lab-2").cloned();
        c.spec.nodes.retain(|n| n.name != "lab-2");
    });
    let lab2 = lab2.expect("lab-2 in the file");
    let report = lab.apply_json();
    let removal =
        report["removals"].as_array().unwrap().iter().find(|r| r["node"] == "lab-2").expect("lab-2's removal");
    assert_eq!(removal["removed"], true, "{report}");
    eprintln!("lab-2's removal: {}", removal["steps"]);
    let names: Vec<String> = members(lab).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["lab-1"]);
    for n in ["lab-2", "lab-3"] {
        let left = lab.ssh(n, "ls -d /var/lib/etcd /etc/etcd 2>/dev/null; true");
        assert_eq!(left.trim(), "", "{n}: etcd's data outlived its member");
    }

    let lab3 = kforge_core::spec::Node {
        name: "lab-3".into(),
        endpoint: Some(kforge_core::spec::IpAddress(lab.public_ip("lab-3").parse().unwrap())),
        ssh: kforge_core::spec::NodeSsh { host: Some("lab-3".into()), ..lab2.ssh.clone() },
        mesh_ip: None,
        ..lab2.clone()
    };
    lab.edit_cluster(|c| c.spec.nodes.extend([lab2, lab3]));
    let observed = lab.ctx.kforge(&["plan", "--observe", "-f", "lab/kforge.yaml"]).success().stdout;
    for n in ["lab-2", "lab-3"] {
        assert!(
            observed.lines().any(|l| l.contains(&format!("etcd member add {n} --learner (on lab-1;"))
                && l.contains("(dry run: not done)")),
            "{observed}"
        );
    }
    assert_eq!(members(lab).len(), 1, "plan --observe added nothing");

    // lab-2 was reset: no kube-proxy there to reach the Service through yet.
    let client = super::upgrade::Client::start_on(lab, &["lab-1"]);
    let out = lab.apply(&["-o", "json"]);
    client.stop(lab);
    assert_eq!(out.code, 0, "apply failed:\n{}\n{}", out.stdout, out.stderr);
    // One at a time: lab-2 votes before lab-3 is probed.
    let progress: Vec<&str> = out.stderr.lines().collect();
    let at = |line: &str| {
        progress.iter().position(|l| l.starts_with(line)).unwrap_or_else(|| panic!("{line}: {}", out.stderr))
    };
    assert!(at("lab-2: promote to voter") < at("lab-3: probe https://"), "{}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
        if h["node"] == "lab-2" || h["node"] == "lab-3" {
            let steps: Vec<&str> = h["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
            eprintln!("{}'s join: {}", h["node"], h["steps"]);
            let i = steps.iter().position(|s| s.starts_with("probe https://")).expect("probed");
            assert!(steps[i + 1].starts_with("etcd member add"), "{steps:?}");
            assert_eq!(steps[i + 2], "datastore", "{steps:?}");
            assert!(steps[i + 3].starts_with("promote to voter"), "{steps:?}");
            assert!(steps[i + 4].starts_with("gate: this etcd member healthy"), "{steps:?}");
        }
    }
    let out = lab.ssh("lab-1", &format!("{ETCDCTL} member list -w json"));
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut voters: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["isLearner"] != true)
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    voters.sort();
    assert_eq!(voters, ["lab-1", "lab-2", "lab-3"], "{out}");
    let health = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint health --cluster 2>&1"));
    assert_eq!(health.lines().filter(|l| l.contains("is healthy")).count(), 3, "{health}");
    for n in ["lab-1", "lab-2", "lab-3"] {
        let conf = lab.ssh(n, "cat /etc/kforge/api-balancer-nginx.conf");
        assert_eq!(
            conf.lines().filter(|l| l.trim_start().starts_with("server ") && l.contains(":6443 ")).count(),
            3,
            "{n}:\n{conf}"
        );
        assert_eq!(
            lab.ssh(n, "ls /etc/etcd/join.env 2>/dev/null; true").trim(),
            "",
            "{n}: the join's member list stayed"
        );
    }
    assert_eq!(lab.kubectl("lab-2", "get --raw /readyz").trim(), "ok");
    client.judge(lab);
}

/// `--force-quorum-loss`, as an operator taking a controller out with another one down
/// would use it: lab-2's etcd stopped, lab-3 dropped from the file. etcd refuses to
/// remove a member the rest cannot agree on, so the member stays in the list: lab-3 is
/// drained, revoked and its Node deleted while the API still answers, then reset (its
/// etcd stops: no quorum now, said so, the apply stops there). Then the way back: lab-2's
/// etcd started again (2 of the 3 listed members answer), and the next plain apply removes
/// lab-3's member as a stale one: 2 members, both healthy, every host converged.
fn forced_out(lab: &Lab) {
    lab.ssh("lab-2", "systemctl stop etcd");
    lab.edit_cluster(|c| c.spec.nodes.retain(|n| n.name != "lab-3"));
    let out = lab.apply(&["--force-quorum-loss", "-o", "json"]);
    assert_ne!(out.code, 0, "etcd has no quorum after the forced removal: {}", out.stderr);
    let report: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let removal =
        report["removals"].as_array().unwrap().iter().find(|r| r["node"] == "lab-3").expect("lab-3's removal");
    assert_eq!(
        (&removal["removed"], &removal["quorumLost"]),
        (&serde_json::json!(true), &serde_json::json!(true)),
        "{removal}"
    );
    let steps: Vec<&str> = removal["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert!(steps[0].starts_with("cordon and drain"), "{steps:?}");
    assert_eq!(
        steps[1..],
        [
            "leave its etcd member in the list (forced)",
            "revoke its kubelet certificate in the API",
            "delete Node lab-3",
            "reset the host"
        ]
    );
    let warned = removal["warnings"].to_string();
    assert!(warned.contains("FORCED (--force-quorum-loss)") && warned.contains("stays in the member list"), "{warned}");
    for h in report["hosts"].as_array().unwrap() {
        assert!(h["error"].to_string().contains("etcd has no quorum since lab-3 left"), "{h}");
    }
    let (running, said) = lab.ssh_status("lab-3", "systemctl is-active etcd || ls -d /var/lib/etcd");
    assert!(!running, "lab-3 was reset, its etcd stopped and its data gone: {said}");

    lab.ssh("lab-2", "systemctl start etcd");
    let etcdctl = super::hardway::etcdctl_on(lab, "lab-1");
    lab.wait_for(90, "etcd answering again (lab-1 and lab-2 of its 3 members)", || {
        lab.ssh_status("lab-1", &format!("{etcdctl} endpoint health")).0
    });
    let report = lab.apply_json();
    eprintln!("after quorum came back: {}", report["removals"]);
    let removals = report["removals"].as_array().unwrap();
    assert_eq!(removals.len(), 1, "lab-3's member, stale now: {report}");
    assert_eq!(removals[0]["removed"], true, "{report}");
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    lab_1_and_lab_2_are_the_members_both_healthy(lab);
}
