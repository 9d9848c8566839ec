//! The fault matrix, on a hard-way lab of its own: a worker (lab-4) leaves and joins
//! again, each apply stopped at one of its step boundaries — kforge killed there as
//! `kill -9` would, or the departing host's SSH cut — then a plain apply finishes it.
//! After every round:
//! - the plain apply converged every host;
//! - one etcd cluster ID on every member, every member healthy, and etcd answered every
//!   second of the round (asked from lab-1);
//! - no node left cordoned by kforge, and lab-3, cordoned by hand, still cordoned;
//! - the client on lab-1 lost no request;
//! - the bundle's record of what is deployed names exactly the file's nodes, and each
//!   of their hosts' manifests names this cluster and that node.
//!
//! A round is a pair: the leave stopped at one boundary, the join at another. CI runs one
//! round chosen by a seed it prints; `scripts/faults` runs every round (each boundary
//! of both operations at least once). The boundaries are kforge's own
//! (crates/kforge-ssh/src/faults.rs); the failpoints exist only in a build with the
//! `failpoints` feature, which `scripts/test` makes beside the real binary.

use std::path::PathBuf;

use super::hardway::ETCDCTL;
use super::{Checks, Lab};

const NODE: &str = "lab-4";
const BY_HAND: &str = "lab-3";

/// Where a round stops an apply: the point, how many hits pass first, and what it does.
#[derive(Debug, Clone, Copy)]
struct Fault {
    point: &'static str,
    pass: u32,
    action: &'static str,
}

impl Fault {
    const fn kill(point: &'static str, pass: u32) -> Fault {
        Fault { point, pass, action: "kill" }
    }

    fn failpoints(&self) -> String {
        let fire = format!("1*return({})", self.action);
        match self.pass {
            0 => format!("{}={fire}", self.point),
            n => format!("{}={n}*off->{fire}", self.point),
        }
    }
}

/// Every boundary a worker's removal passes (`removal-member-removed` is a controller's).
const LEAVE: &[Fault] = &[
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
    Fault { point: "removal-drained", pass: 0, action: "cut:lab-4" },
];

/// Every boundary a worker's join passes.
const JOIN: &[Fault] = &[
    Fault::kill("bundle-saved", 0),
    Fault::kill("stage-start", 0),
    Fault::kill("stage-start", 5),
    Fault::kill("turn-restarted", 0),
    Fault::kill("turn-restarted", 3),
    Fault::kill("turn-gated", 0),
    Fault::kill("finish", 0),
];

/// The rounds this run takes: all of them (`KFORGE_FAULTS=all`, scripts/faults) or the
/// one a seed picks (`KFORGE_FAULT_SEED`, else the clock's: CI's), said in the log.
fn rounds() -> Vec<usize> {
    let all = LEAVE.len().max(JOIN.len());
    if std::env::var("KFORGE_FAULTS").is_ok_and(|v| v == "all") {
        eprintln!("fault matrix: all {all} rounds ({} leave and {} join boundaries)", LEAVE.len(), JOIN.len());
        return (0..all).collect();
    }
    let seed: u64 = std::env::var("KFORGE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    let round = (seed % all as u64) as usize;
    eprintln!(
        "fault matrix: seed {seed} → round {round} of {all} (re-run it: KFORGE_FAULT_SEED={seed}; every round: scripts/faults)"
    );
    vec![round]
}

/// The failpoints build of kforge (`cargo build --features failpoints`).
fn failpoints_binary() -> PathBuf {
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
fn a_worker_leaves_and_joins_stopped_at_each_step() {
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
    for i in rounds() {
        let (leave, join) = (LEAVE[i % LEAVE.len()], JOIN[i % JOIN.len()]);
        checks.run(&format!("fault round {i}: {NODE} leaves, {} at {}", leave.action, leave.failpoints()), || {
            round(lab, binary, leave, |c| c.spec.nodes.retain(|n| n.name != NODE))
        });
        checks.run(&format!("fault round {i}: {NODE} joins, {} at {}", join.action, join.failpoints()), || {
            let node = lab4(lab);
            if leave.action.starts_with("cut:") {
                // Lost mid-removal, it was never reset: wiped first, as the removal's
                // warning says (here with kforge reset, the node named in the file).
                lab.edit_cluster(|c| c.spec.nodes.push(node.clone()));
                lab.ctx.kforge(&["reset", "-f", "lab/kforge.yaml", NODE, "--yes"]).success();
                lab.edit_cluster(|c| c.spec.nodes.retain(|n| n.name != NODE));
            }
            round(lab, binary, join, |c| c.spec.nodes.push(node));
            super::nodes::ready_with_a_pod(lab);
            lab.kubectl("lab-1", "delete pod on-lab-4 --ignore-not-found --wait=true --timeout=60s");
        });
    }
    lab.kubectl("lab-1", &format!("uncordon {BY_HAND}"));
}

/// lab-4 as `joins` put it in the file.
fn lab4(lab: &Lab) -> kforge_core::spec::Node {
    use kforge_core::spec::{IpAddress, Node, NodeSsh, Role, Roles};
    Node {
        name: NODE.into(),
        role: Roles::one(Role::Worker),
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
    let watch = QuorumWatch::start(lab);
    let client = super::upgrade::Client::start(lab);
    lab.edit_cluster(change);
    let armed = fault.failpoints();
    let out = lab.ctx.kforge_from(binary, &["apply", "-f", "lab/kforge.yaml"], &[("FAILPOINTS", armed.as_str())]);
    let stopped = match fault.action {
        "kill" => out.code == -1,
        _ => out.stderr.contains(&format!("failpoint {}: ", fault.point)),
    };
    assert!(stopped, "{armed} was never hit (exit {}):\n{}\n{}", out.code, out.stdout, out.stderr);
    let report = lab.apply_json();
    client.stop_and_judge(lab);
    let lost = watch.stop(lab);
    assert!(lost.is_empty(), "etcd did not answer at {} second(s) of the round: {lost:?}", lost.len());
    for h in report["hosts"].as_array().unwrap() {
        assert_eq!(h["converged"], true, "{h}");
    }
    one_etcd_cluster_all_healthy(lab);
    nothing_left_cordoned_but_by_hand(lab);
    the_record_and_the_hosts_agree(lab);
}

fn one_etcd_cluster_all_healthy(lab: &Lab) {
    let status = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint status --cluster -w json"));
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    let ids: std::collections::BTreeSet<String> =
        status.as_array().unwrap().iter().map(|s| s["Status"]["header"]["cluster_id"].to_string()).collect();
    assert_eq!(ids.len(), 1, "etcd cluster IDs: {ids:?}");
    let health = lab.ssh("lab-1", &format!("{ETCDCTL} endpoint health --cluster 2>&1"));
    let members = status.as_array().unwrap().len();
    assert_eq!(health.lines().filter(|l| l.contains("is healthy")).count(), members, "{health}");
}

fn nothing_left_cordoned_but_by_hand(lab: &Lab) {
    let nodes = lab.kubectl("lab-1", "get nodes -o json");
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        let cordoned = n["spec"]["unschedulable"] == true;
        let by_kforge = n["metadata"]["annotations"].get("kforge.dev/cordoned-by-apply").is_some();
        assert!(!by_kforge, "{name} still carries kforge's cordon annotation");
        assert_eq!(cordoned, name == BY_HAND, "{name}: cordoned {cordoned}");
    }
}

fn the_record_and_the_hosts_agree(lab: &Lab) {
    let file: kforge_core::spec::Cluster =
        kforge_core::spec::parse("kforge.yaml", &lab.ctx.read("lab/kforge.yaml")).unwrap().cluster;
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

/// etcd asked from lab-1 every second (`endpoint health`, 2 s timeout), in one SSH
/// session for the whole round: the seconds at which it did not answer.
struct QuorumWatch {
    thread: std::thread::JoinHandle<Vec<u64>>,
}

impl QuorumWatch {
    fn start(lab: &Lab) -> QuorumWatch {
        let cfg = lab.ctx.path("lab/ssh_config");
        let script = format!(
            "rm -f /tmp/quorum.stop; while [ ! -e /tmp/quorum.stop ]; do t=$(date +%s); {ETCDCTL} endpoint health --command-timeout=2s >/dev/null 2>&1 && echo \"$t ok\" || echo \"$t lost\"; sleep 1; done"
        );
        let thread = std::thread::spawn(move || {
            let out = std::process::Command::new("ssh")
                .args(["-F", cfg.to_str().unwrap(), "lab-1", &script])
                .output()
                .expect("ssh");
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(said.lines().any(|l| l.ends_with(" ok")), "the quorum watch never ran: {said}");
            said.lines().filter_map(|l| l.strip_suffix(" lost")).map(|t| t.parse().unwrap_or(0)).collect()
        });
        QuorumWatch { thread }
    }

    fn stop(self, lab: &Lab) -> Vec<u64> {
        lab.ssh("lab-1", "touch /tmp/quorum.stop");
        self.thread.join().expect("the quorum watch")
    }
}
