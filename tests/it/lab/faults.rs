//! The fault matrix for nodes coming and going, on a hard-way lab of its own (three
//! controller+worker nodes and lab-4). In each round lab-4 leaves as a worker, joins as a
//! controller (etcd 3 → 4 members), leaves as a controller (4 → 3) and joins as a worker
//! again, each apply stopped at one of its step boundaries — kforge killed there as
//! `kill -9` would, or lab-4's SSH cut — and finished by a plain apply. After every step:
//! - the plain apply converged every host;
//! - one etcd cluster ID on every member, one member per controller in the file, every
//!   member healthy, and etcd answered every second of the step (asked from lab-1);
//! - no node left cordoned by kforge, and lab-3, cordoned by hand, still cordoned;
//! - the client on lab-1 and lab-2 (40 requests a second) lost no request;
//! - the bundle's record of what is deployed names exactly the file's nodes, and each
//!   of their hosts' manifests names this cluster and that node.
//!
//! CI runs one round chosen by a seed it prints; `scripts/faults` runs every round (each
//! boundary of the four operations at least once). The boundaries are kforge's own
//! (crates/kforge-ssh/src/faults.rs); the failpoints exist only in a build with the
//! `failpoints` feature, which `scripts/test` makes beside the real binary. The
//! upgrade's matrix is in tests/it/lab/upgrade.rs.

use std::path::PathBuf;

use super::hardway::ETCDCTL;
use super::{Checks, Lab};
use kforge_core::spec::Role;

const NODE: &str = "lab-4";
const BY_HAND: &str = "lab-3";

/// Where a round stops an apply: the point, how many hits pass first, and what it does
/// there: kill kforge, or cut one host's SSH.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fault {
    point: &'static str,
    pass: u32,
    cut: Option<&'static str>,
}

impl Fault {
    pub(super) const fn kill(point: &'static str, pass: u32) -> Fault {
        Fault { point, pass, cut: None }
    }

    /// `node`'s SSH cut there (the host lost to kforge, still running).
    pub(super) const fn cut(point: &'static str, pass: u32, node: &'static str) -> Fault {
        Fault { point, pass, cut: Some(node) }
    }

    fn action(&self) -> String {
        self.cut.map_or("kill".to_string(), |node| format!("cut:{node}"))
    }

    /// What the log says of it: `kill at turn-gated=2*off->1*return(kill)`.
    pub(super) fn says(&self) -> String {
        format!("{} at {}", self.action(), self.failpoints())
    }

    fn failpoints(&self) -> String {
        let fire = format!("1*return({})", self.action());
        match self.pass {
            0 => format!("{}={fire}", self.point),
            n => format!("{}={n}*off->{fire}", self.point),
        }
    }
}

/// Every boundary a worker's removal passes (`removal-member-removed` is a controller's).
const WORKER_LEAVES: &[Fault] = &[
    Fault::kill("bundle-read", 0),
    Fault::kill("bundle-saved", 0),
    Fault::kill("hand-over", 0),
    Fault::kill("removal-drained", 0),
    Fault::kill("removal-revoked", 0),
    Fault::kill("removal-reset", 0),
    Fault::kill("removal-node-deleted", 0),
    Fault::kill("stage-start", 2),
    Fault::kill("turn-restarted", 0),
    Fault::kill("finish", 0),
    // The departing host lost right after its drain: it cannot be reset, and the
    // removal goes on without it (its certificate revoked, its Node deleted).
    Fault::cut("removal-drained", 0, NODE),
];

/// Every boundary a controller's join passes: the etcd learner's steps among them.
const CONTROLLER_JOINS: &[Fault] = &[
    Fault::kill("etcd-member-added", 0),
    Fault::kill("etcd-joiner-started", 0),
    Fault::kill("etcd-promoted", 0),
    Fault::kill("bundle-saved", 0),
    Fault::kill("stage-start", 3),
    Fault::kill("turn-restarted", 0),
    Fault::kill("turn-gated", 2),
    Fault::kill("finish", 0),
    // Lost with its learner added but not started, and with it started but not a voter.
    Fault::cut("etcd-member-added", 0, NODE),
    Fault::cut("etcd-joiner-started", 0, NODE),
];

/// Every boundary a controller's removal passes: its etcd member removed first.
const CONTROLLER_LEAVES: &[Fault] = &[
    Fault::kill("removal-member-removed", 0),
    Fault::kill("removal-drained", 0),
    Fault::kill("removal-revoked", 0),
    Fault::kill("removal-reset", 0),
    Fault::kill("removal-node-deleted", 0),
    Fault::kill("hand-over", 0),
    Fault::kill("bundle-read", 0),
    Fault::kill("stage-start", 4),
    Fault::kill("turn-restarted", 1),
    Fault::kill("finish", 0),
    // Lost once its member is out: never reset, its etcd stopped by etcd itself.
    Fault::cut("removal-member-removed", 0, NODE),
];

/// Every boundary a worker's join passes.
const WORKER_JOINS: &[Fault] = &[
    Fault::kill("bundle-saved", 0),
    Fault::kill("stage-start", 0),
    Fault::kill("stage-start", 5),
    Fault::kill("turn-restarted", 0),
    Fault::kill("turn-restarted", 3),
    Fault::kill("turn-gated", 0),
    Fault::kill("finish", 0),
];

/// Every boundary the v1.36 → v1.37 upgrade passes. The hits, in order (a run's
/// `(failpoint … passed)` lines): stage 0 uploads and stages the release on each host
/// (`turn-restarted` 0–2); stages 1–3 change nothing; stage 4, the API servers one at a
/// time (`turn-restarted` 3–5, `turn-gated` 0–2); stage 5, the controller-managers and
/// schedulers (`turn-restarted` 6–8, `turn-gated` 3–5); stage 6, each worker drained
/// (`turn-drained` 0–2), its runtime and kubelet (`turn-restarted` 9–14), its gate
/// (`turn-gated` 6–8) and uncordon (`turn-uncordoned` 0–1: lab-3, cordoned by hand,
/// stays so).
pub(super) const UPGRADE: &[Fault] = &[
    Fault::kill("turn-drained", 1),
    Fault::kill("turn-restarted", 3),
    Fault::kill("bundle-saved", 0),
    Fault::kill("stage-start", 4),
    Fault::kill("turn-gated", 1),
    Fault::kill("turn-restarted", 7),
    Fault::kill("turn-drained", 0),
    Fault::kill("turn-restarted", 12),
    Fault::kill("turn-uncordoned", 1),
    Fault::kill("finish", 0),
    Fault::kill("turn-restarted", 1),
    // lab-2 lost drained (left cordoned, the others go on), and lost with its new API
    // server restarted before its gate (what runs after the API servers holds back).
    Fault::cut("turn-drained", 1, "lab-2"),
    Fault::cut("turn-restarted", 4, "lab-2"),
];

/// The four operations of a round, in order.
const OPERATIONS: [&[Fault]; 4] = [WORKER_LEAVES, CONTROLLER_JOINS, CONTROLLER_LEAVES, WORKER_JOINS];

/// The rounds this run takes: all of them (`KFORGE_FAULTS=all`, scripts/faults) or the
/// one a seed picks (`KFORGE_FAULT_SEED`, else the clock's: CI's), said in the log.
pub(super) fn rounds(matrix: &str, all: usize) -> Vec<usize> {
    if std::env::var("KFORGE_FAULTS").is_ok_and(|v| v == "all") {
        eprintln!("fault matrix ({matrix}): all {all} rounds");
        return (0..all).collect();
    }
    let seed: u64 = std::env::var("KFORGE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    let round = (seed % all as u64) as usize;
    eprintln!(
        "fault matrix ({matrix}): seed {seed} → round {round} of {all} (re-run it: KFORGE_FAULT_SEED={seed} scripts/faults; every round: scripts/faults)"
    );
    vec![round]
}

/// The failpoints build of kforge (`cargo build --features failpoints`).
pub(super) fn failpoints_binary() -> PathBuf {
    let path = std::env::var_os("KFORGE_FAILPOINTS_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/debug/kforge-failpoints"));
    assert!(
        path.is_file(),
        "{} is missing: the fault matrix runs kforge built with failpoints (scripts/test builds it: cargo build --features failpoints --bin kforge, copied there)",
        path.display()
    );
    path
}

#[test]
fn nodes_leave_and_join_stopped_at_each_step() {
    let binary = failpoints_binary();
    let lab = Lab::up_example("hardway", 3, &[]);
    let report = lab.apply_json();
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    super::upgrade::deploy_workload(&lab);
    let mut checks = Checks::default();
    checks.run("lab-4 joins the running cluster as a worker", || super::nodes::joins(&lab));
    under_faults(&lab, &binary, &mut checks);
    checks.finish();
}

fn under_faults(lab: &Lab, binary: &std::path::Path, checks: &mut Checks) {
    lab.kubectl("lab-1", &format!("cordon {BY_HAND}"));
    // A pod no controller runs makes every drain of lab-4 refuse (as it should).
    lab.kubectl("lab-1", "delete pod on-lab-4 --ignore-not-found --wait=true --timeout=60s");
    let all = OPERATIONS.iter().map(|o| o.len()).max().unwrap();
    for i in rounds("nodes", all) {
        let [worker_leaves, controller_joins, controller_leaves, worker_joins] = OPERATIONS.map(|o| o[i % o.len()]);
        checks.run(&format!("fault round {i}: {NODE} leaves as a worker, {}", worker_leaves.says()), || {
            round(lab, binary, worker_leaves, |c| c.spec.nodes.retain(|n| n.name != NODE))
        });
        checks.run(&format!("fault round {i}: {NODE} joins as a controller, {}", controller_joins.says()), || {
            wipe_if_lost(lab, worker_leaves);
            round(lab, binary, controller_joins, |c| c.spec.nodes.push(lab4(lab, &[Role::Controller, Role::Worker])));
        });
        checks.run(&format!("fault round {i}: {NODE} leaves as a controller, {}", controller_leaves.says()), || {
            round(lab, binary, controller_leaves, |c| c.spec.nodes.retain(|n| n.name != NODE))
        });
        checks.run(&format!("fault round {i}: {NODE} joins as a worker, {}", worker_joins.says()), || {
            wipe_if_lost(lab, controller_leaves);
            round(lab, binary, worker_joins, |c| c.spec.nodes.push(lab4(lab, &[Role::Worker])));
            super::nodes::ready_with_a_pod(lab);
            lab.kubectl("lab-1", "delete pod on-lab-4 --ignore-not-found --wait=true --timeout=60s");
        });
    }
    lab.kubectl("lab-1", &format!("uncordon {BY_HAND}"));
}

/// The whole upgrade matrix: for each round a fresh lab at v1.36 with the workload, lab-3
/// cordoned by hand, the upgrade stopped at one boundary and finished. A lab per round
/// (no release can go back a minor), so only `scripts/faults` runs it; CI runs one
/// seeded round inside the hard-way group (tests/it/lab/upgrade.rs).
#[test]
#[ignore = "a fresh lab per round, ~10 minutes each: scripts/faults runs it, CI one seeded round in the hard-way group"]
fn the_upgrade_stopped_at_each_step() {
    let binary = failpoints_binary();
    let mut checks = Checks::default();
    for i in rounds("upgrade", UPGRADE.len()) {
        let lab = Lab::up_example("hardway", 3, &[]);
        super::upgrade::set_release(&lab, super::upgrade::FROM);
        let report = lab.apply_json();
        for h in report["hosts"].as_array().unwrap() {
            assert_eq!(h["converged"], true, "{h}");
        }
        super::upgrade::deploy_workload(&lab);
        checks.run(&format!("fault round {i}: the upgrade, {}", UPGRADE[i].says()), || {
            upgraded_under(&lab, &binary, UPGRADE[i])
        });
    }
    checks.finish();
}

/// The v1.36 → v1.37 upgrade stopped by `fault`, lab-3 cordoned by hand throughout, then
/// finished.
pub(super) fn upgraded_under(lab: &Lab, binary: &std::path::Path, fault: Fault) {
    lab.kubectl("lab-1", &format!("cordon {BY_HAND}"));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        stopped_then_finished(lab, binary, fault, BY_HAND, || super::upgrade::set_release(lab, super::upgrade::TO))
    }));
    // Uncordoned whatever the round found: the checks after it expect every node schedulable.
    lab.kubectl("lab-1", &format!("uncordon {BY_HAND}"));
    if let Err(failed) = outcome {
        std::panic::resume_unwind(failed);
    }
}

/// A host lost mid-removal was never reset: wiped first, as the removal's warning says
/// (here with kforge reset, the node named in the file for the while).
fn wipe_if_lost(lab: &Lab, leave: Fault) {
    if leave.cut.is_some() {
        lab.edit_cluster(|c| c.spec.nodes.push(lab4(lab, &[Role::Worker])));
        lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", NODE, "--yes"]).success();
        lab.edit_cluster(|c| c.spec.nodes.retain(|n| n.name != NODE));
    }
}

/// lab-4 as `joins` put it in the file, in `roles`.
fn lab4(lab: &Lab, roles: &[Role]) -> kforge_core::spec::Node {
    use kforge_core::spec::{IpAddress, Node, NodeSsh, Roles};
    Node {
        name: NODE.into(),
        role: Roles::new(roles.to_vec()),
        endpoint: Some(IpAddress(super::nodes::public_ip(lab).parse().unwrap())),
        ssh: NodeSsh { host: Some(NODE.into()), ..NodeSsh::default() },
        location: None,
        labels: Default::default(),
        taints: Vec::new(),
        mesh_ip: None,
        arch: None,
    }
}

/// One change applied with `fault` armed, then finished by a plain apply, every
/// invariant checked.
fn round(lab: &Lab, binary: &std::path::Path, fault: Fault, change: impl FnOnce(&mut kforge_core::spec::Cluster)) {
    stopped_then_finished(lab, binary, fault, BY_HAND, || lab.edit_cluster(change));
}

/// `change` made to the file, applied by the failpoints build with `fault` armed (it must
/// fire), then a plain apply; meanwhile the client and the quorum watch run. Afterwards
/// every invariant of the matrix holds, `by_hand` (cordoned by hand) still cordoned.
pub(super) fn stopped_then_finished(
    lab: &Lab,
    binary: &std::path::Path,
    fault: Fault,
    by_hand: &str,
    change: impl FnOnce(),
) {
    let watch = QuorumWatch::start(lab);
    let client = super::upgrade::Client::start(lab);
    change();
    let armed = fault.failpoints();
    let out = lab.ctx.kforge_from(binary, &["apply", "-f", "lab/kforge.yaml"], &[("FAILPOINTS", armed.as_str())]);
    let stopped = match fault.cut {
        None => out.code == -1,
        Some(_) => out.stderr.contains(&format!("failpoint {}: ", fault.point)),
    };
    assert!(stopped, "{armed} was never hit (exit {}):\n{}\n{}", out.code, out.stdout, out.stderr);
    // The boundaries that apply passed without stopping, in order (a cut lets it go on),
    // for the log: a new matrix entry's hit count is read off here.
    let mut passed: Vec<(String, u32)> = Vec::new();
    for point in out.stderr.lines().filter_map(|l| l.strip_prefix("(failpoint ")?.strip_suffix(" passed)")) {
        match passed.last_mut() {
            Some((p, n)) if p == point => *n += 1,
            _ => passed.push((point.to_string(), 1)),
        }
    }
    let passed: Vec<String> = passed.iter().map(|(p, n)| format!("{p}×{n}")).collect();
    eprintln!("{armed}: the apply passed {}", passed.join(", "));
    let report = lab.apply_json();
    client.stop(lab);
    let lost = watch.stop(lab);
    // Every invariant is looked at before any fails the round: one failure must not hide
    // another.
    let file = kforge_core::spec::parse("kforge.yaml", &lab.ctx.read("lab/kforge.yaml")).unwrap().cluster;
    let mut invariants = Checks::default();
    invariants.run("  every host converged", || {
        for h in report["hosts"].as_array().unwrap() {
            assert_eq!(h["converged"], true, "{h}");
        }
    });
    invariants
        .run("  one etcd cluster, one voter per controller, all healthy", || one_etcd_cluster_all_healthy(lab, &file));
    invariants.run("  etcd answered every second", || {
        let lost = lost.as_ref().expect("the quorum watch");
        assert!(lost.is_empty(), "etcd did not answer at {} second(s) of the round: {lost:?}", lost.len())
    });
    invariants.run("  every Node at the file's release", || every_node_at_the_files_release(lab, &file));
    invariants.run("  nothing cordoned but by hand", || nothing_left_cordoned_but_by_hand(lab, by_hand));
    invariants.run("  the record and the hosts agree", || the_record_and_the_hosts_agree(lab, &file));
    invariants.run("  the client lost no request", || client.judge(lab));
    invariants.finish();
}

/// One cluster ID on every member, one member per controller in the file (none a
/// learner), every one healthy.
fn one_etcd_cluster_all_healthy(lab: &Lab, file: &kforge_core::spec::Cluster) {
    let status = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint status --cluster -w json"));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let ids: std::collections::BTreeSet<String> =
        status.as_array().unwrap().iter().map(|s| s["Status"]["header"]["cluster_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "etcd cluster IDs: {ids:?}");
    let health = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint health --cluster 2>&1"));
    let members = status.as_array().unwrap().len();
    assert_eq!(health.lines().filter(|l| l.contains("is healthy")).count(), members, "{health}");
    let list: serde_json::Value =
        serde_json::from_str(&lab.ssh("lab-1", &format!("{ETCDCTL} member list -w json"))).unwrap();
    let mut voters: Vec<&str> = list["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| if m["isLearner"] == true { "(a learner)" } else { m["name"].as_str().unwrap_or("(unstarted)") })
        .collect();
    voters.sort();
    let mut controllers: Vec<&str> =
        file.spec.nodes.iter().filter(|n| n.role.has(Role::Controller)).map(|n| n.name.as_str()).collect();
    controllers.sort();
    assert_eq!(voters, controllers, "etcd's members");
}

/// Every node in the file is a Node, none other, its kubelet at the file's release, and
/// every API server answers at it.
fn every_node_at_the_files_release(lab: &Lab, file: &kforge_core::spec::Cluster) {
    let version = &file.spec.distribution.version;
    let nodes = lab.kubectl(
        "lab-1",
        "get nodes -o jsonpath='{range .items[*]}{.metadata.name} {.status.nodeInfo.kubeletVersion}{\"\\n\"}{end}'",
    );
    let mut want: Vec<String> = file.spec.nodes.iter().map(|n| format!("{} {version}", n.name)).collect();
    want.sort();
    let mut have: Vec<&str> = nodes.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    have.sort();
    assert_eq!(have, want, "the Nodes and their kubelets");
    for n in file.spec.nodes.iter().filter(|n| n.role.has(Role::Controller)) {
        let v = lab.ssh(
            &n.name,
            "kubectl --kubeconfig /etc/kforge/admin.kubeconfig --server https://127.0.0.1:6443 get --raw=/version",
        );
        assert!(v.contains(&format!("\"gitVersion\": \"{version}\"")), "{}'s API server: {v}", n.name);
    }
}

fn nothing_left_cordoned_but_by_hand(lab: &Lab, by_hand: &str) {
    let nodes = lab.kubectl("lab-1", "get nodes -o json");
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        let cordoned = n["spec"]["unschedulable"] == true;
        let by_kforge = n["metadata"]["annotations"].get("kforge.dev/cordoned-by-apply").is_some();
        assert!(!by_kforge, "{name} still carries kforge's cordon annotation");
        assert_eq!(cordoned, name == by_hand, "{name}: cordoned {cordoned}");
    }
}

fn the_record_and_the_hosts_agree(lab: &Lab, file: &kforge_core::spec::Cluster) {
    let bundle: kforge_core::secrets::SecretsBundle =
        serde_saphyr::from_str(&lab.ctx.read("lab/kforge.secrets.yaml")).unwrap();
    let named: Vec<&String> = file.spec.nodes.iter().map(|n| &n.name).collect();
    let deployed: Vec<&String> = bundle.deployed.keys().collect();
    let mut sorted = named.clone();
    sorted.sort();
    assert_eq!(deployed, sorted, "the bundle's record of what is deployed");
    for n in named {
        let m: serde_json::Value = serde_json::from_str(&lab.ssh(n, "cat /var/lib/kforge/manifest.json")).unwrap();
        assert_eq!((&m["cluster"], &m["node"]), (&serde_json::json!("hardway-lab"), &serde_json::json!(n)), "{n}");
    }
}

/// etcd asked on lab-1 every second, in one SSH session for the whole round: the seconds
/// at which it did not answer. Its own member only (`endpoint health` reads the health key
/// linearizably, so it answers only with quorum): etcdctl.env lists every controller, and
/// a member being added or removed is no quorum loss.
struct QuorumWatch {
    thread: std::thread::JoinHandle<String>,
}

impl QuorumWatch {
    fn start(lab: &Lab) -> QuorumWatch {
        let cfg = lab.ctx.path("lab/ssh_config");
        let etcdctl = super::hardway::etcdctl_on(lab, "lab-1");
        let script = format!(
            "rm -f /tmp/quorum.stop; while [ ! -e /tmp/quorum.stop ]; do t=$(date +%s); {etcdctl} endpoint health --command-timeout=2s >/dev/null 2>&1 && echo \"$t ok\" || echo \"$t lost\"; sleep 1; done"
        );
        let thread = std::thread::spawn(move || {
            let out = std::process::Command::new("ssh").args(["-F", cfg.to_str().unwrap(), "lab-1", &script]).output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_else(|e| format!("ssh: {e}"))
        });
        QuorumWatch { thread }
    }

    /// The seconds at which etcd did not answer; an error when the watch never saw it
    /// answer at all (then it measured nothing).
    fn stop(self, lab: &Lab) -> Result<Vec<u64>, String> {
        lab.ssh("lab-1", "touch /tmp/quorum.stop");
        let said = self.thread.join().unwrap_or_default();
        if !said.lines().any(|l| l.ends_with(" ok")) {
            return Err(format!("the quorum watch never saw etcd answer: {said}"));
        }
        Ok(said.lines().filter_map(|l| l.strip_suffix(" lost")).map(|t| t.parse().unwrap_or(0)).collect())
    }
}
