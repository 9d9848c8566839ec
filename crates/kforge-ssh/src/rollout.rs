//! What apply does between a host's phases when the cluster already runs: wait on a
//! phase's health gate, and take a worker out of service and back (cordon, drain,
//! uncordon) with kubectl as the cluster admin on a control-plane host.
//!
//! A node kforge cordons carries the annotation [`CORDONED_BY_KFORGE`] until kforge
//! uncordons it: the record lives in the cluster, so an apply killed half-way (kill -9,
//! a lost laptop) is finished by the next one, which uncordons what the last one left
//! cordoned — and never a node the operator cordoned by hand.

use std::time::{Duration, Instant};

use kforge_core::plan::Gate;
use serde::Deserialize;

use crate::ssh::{Host, shell_quote};

/// Set on a Node while kforge has it cordoned for an apply.
pub const CORDONED_BY_KFORGE: &str = "kforge.dev/cordoned-by-apply";

/// Who holds a drained node's cordon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cordon {
    /// kforge cordoned it for this turn, and uncordons it after.
    ByKforge,
    /// The operator had cordoned it: it stays cordoned.
    ByHand,
}

/// Wait until `gate` passes on `host` (tried every 2 s until its timeout, counted on the
/// host's clock: a test may itself take seconds); the error names the gate and what its
/// test last said.
pub fn wait(host: &Host, gate: &Gate) -> Result<Duration, String> {
    let start = Instant::now();
    // The test runs in a subshell: whatever it does (exit included) ends only the try.
    let script = format!(
        "end=$(( $(date +%s) + {secs} ))\nwhile :; do if ( {t} ) >/dev/null 2>&1; then echo 'KF gate passed'; exit 0; fi; [ $(date +%s) -lt $end ] || break; sleep 2; done\n( {t} ) 2>&1 | tail -n 3; echo 'KF gate timed out'",
        secs = gate.timeout_secs,
        t = gate.test
    );
    let out = host.run_script(&format!("wait for {}", gate.description), &script).map_err(|e| e.to_string())?;
    if out.lines().any(|l| l == "KF gate passed") {
        return Ok(start.elapsed());
    }
    let said: Vec<&str> = out.lines().filter(|l| !l.starts_with("KF ")).collect();
    Err(format!(
        "gate not passed within {} s: {}{}",
        gate.timeout_secs,
        gate.description,
        if said.is_empty() { String::new() } else { format!(" (last said: {})", said.join(" / ")) }
    ))
}

/// kubectl as the cluster admin, on a control-plane host.
pub struct Api<'a> {
    pub host: &'a Host,
    pub kubectl: &'a str,
}

impl Api<'_> {
    fn run(&self, what: &str, args: &str) -> Result<String, String> {
        self.host.run_script(what, &format!("{} {args}", self.kubectl)).map_err(|e| e.to_string())
    }

    /// The Node's Ready condition: `None` when the API has no such Node.
    pub fn node_ready(&self, node: &str) -> Result<Option<bool>, String> {
        let out = self.run(
            "look up the Node",
            &format!(
                "get node {} --ignore-not-found -o jsonpath='{{.metadata.name}} {{.status.conditions[?(@.type==\"Ready\")].status}}'",
                shell_quote(node)
            ),
        )?;
        let mut w = out.split_whitespace();
        Ok(w.next().map(|_| w.next() == Some("True")))
    }

    /// `kubectl apply` of a manifest kforge rendered.
    pub fn apply_manifest(&self, what: &str, manifest: &str) -> Result<(), String> {
        self.run(what, &format!("apply -f - >/dev/null <<'KFORGE_MANIFEST'\n{manifest}\nKFORGE_MANIFEST")).map(|_| ())
    }

    pub fn delete_node(&self, node: &str) -> Result<(), String> {
        self.run("delete the Node", &format!("delete node {} --ignore-not-found >/dev/null", shell_quote(node)))
            .map(|_| ())
    }

    /// The nodes kforge cordoned and has not uncordoned (an apply that stopped half-way).
    pub fn cordoned_by_kforge(&self) -> Result<Vec<String>, String> {
        let out = self.run(
            "list nodes kforge cordoned",
            &format!(
                "get nodes -o jsonpath='{{range .items[*]}}{{.metadata.name}} {{.metadata.annotations.{}}}{{\"\\n\"}}{{end}}'",
                CORDONED_BY_KFORGE.replace('.', "\\.")
            ),
        )?;
        Ok(out
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, v)| !v.trim().is_empty())
            .map(|(n, _)| n.to_string())
            .collect())
    }

    /// Mark, cordon and drain `node`; a drain that fails or runs out of time
    /// uncordons the node again, and the error says so. A node the operator cordoned
    /// (unschedulable, without kforge's mark) is drained as it is and left cordoned:
    /// kforge never uncordons a node it did not cordon. `losses` is what the operator
    /// accepted the drain to lose (the preflight refused anything else).
    pub fn drain(&self, node: &str, timeout_secs: u64, losses: DrainLosses) -> Result<Cordon, String> {
        let n = shell_quote(node);
        let state = self.run(
            "read the Node's cordon",
            &format!(
                "get node {n} -o jsonpath='{{.spec.unschedulable}} {{.metadata.annotations.{}}}'",
                CORDONED_BY_KFORGE.replace('.', "\\.")
            ),
        )?;
        let by_hand = matches!(state.split_whitespace().collect::<Vec<_>>().as_slice(), ["true"]);
        if !by_hand {
            self.run(
                "cordon",
                &format!(
                    "annotate node {n} {CORDONED_BY_KFORGE}=true --overwrite >/dev/null && {} cordon {n} >/dev/null",
                    self.kubectl
                ),
            )?;
        }
        let mut flags = String::from("--ignore-daemonsets");
        if losses.emptydir_data {
            flags.push_str(" --delete-emptydir-data");
        }
        if losses.bare_pods {
            flags.push_str(" --force");
        }
        // kubectl drain waits for the pods it evicted to be gone (or its timeout); what
        // is left on the node after it says whether it finished. A pod can land on the
        // node after the cordon: the scheduler acts on its own cache of the Nodes, which
        // learns of the cordon a moment later. kubectl drain never saw such a pod, so
        // the node is drained again for it (three rounds, within the same time).
        let deadline = Instant::now() + Duration::from_secs(timeout_secs);
        let mut round = 1;
        let (said, left) = loop {
            let secs = deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
            let said = self.run("drain", &format!("drain {n} {flags} --timeout={secs}s 2>&1 | tail -n 3"));
            let left = self.unevicted(node)?;
            if said.is_err() || left.is_empty() || round == 3 || Instant::now() >= deadline {
                break (said, left);
            }
            eprintln!("{node}: placed on it during the drain: {}; draining again", left.join(", "));
            round += 1;
        };
        if said.is_ok() && left.is_empty() {
            return Ok(if by_hand { Cordon::ByHand } else { Cordon::ByKforge });
        }
        if !by_hand {
            self.uncordon(node)?;
        }
        let said = match said {
            Ok(text) => text.lines().last().unwrap_or_default().to_string(),
            Err(e) => e,
        };
        Err(format!(
            "draining {node} did not finish within {timeout_secs} s (still there: {}; kubectl said: {said}); {node} {}",
            left.join(", "),
            if by_hand { "stays cordoned, as you left it" } else { "was uncordoned" }
        ))
    }

    /// Pods still on `node` that a drain evicts (not DaemonSet pods, not mirror pods,
    /// not finished ones).
    fn unevicted(&self, node: &str) -> Result<Vec<String>, String> {
        let pods = self.pods()?;
        Ok(pods
            .iter()
            .filter(|p| p.spec.node_name.as_deref() == Some(node) && p.evictable())
            .map(|p| format!("{}/{}", p.metadata.namespace, p.metadata.name))
            .collect())
    }

    pub fn uncordon(&self, node: &str) -> Result<(), String> {
        let n = shell_quote(node);
        self.run(
            "uncordon",
            &format!("uncordon {n} >/dev/null && {} annotate node {n} {CORDONED_BY_KFORGE}- >/dev/null", self.kubectl),
        )
        .map(|_| ())
    }

    fn pods(&self) -> Result<Vec<Pod>, String> {
        let out = self.run("list pods", "get pods -A -o json")?;
        serde_json::from_str::<List<Pod>>(&out).map(|l| l.items).map_err(|e| format!("pods: {e}"))
    }

    /// Before the first cordon: every PodDisruptionBudget that would keep a drain of
    /// `nodes` waiting forever (no disruption allowed now, and a pod it guards on one of
    /// them), whether the pods of `at_once` drained nodes would have somewhere to go, and
    /// what a drain would lose that the operator did not accept (`allowed`).
    pub fn drain_preflight(
        &self,
        nodes: &[String],
        at_once: usize,
        allowed: DrainLosses,
    ) -> Result<Vec<String>, String> {
        let pdbs = self.run("list PodDisruptionBudgets", "get pdb -A -o json")?;
        let pdbs: Vec<Pdb> = serde_json::from_str::<List<Pdb>>(&pdbs).map_err(|e| format!("pdbs: {e}"))?.items;
        let pods = self.pods()?;
        // `name|unschedulable|Ready|kforge's cordon annotation`, one line per node.
        let all_nodes = self.run(
            "list nodes",
            &format!(
                "get nodes -o jsonpath='{{range .items[*]}}{{.metadata.name}}|{{.spec.unschedulable}}|{{.status.conditions[?(@.type==\"Ready\")].status}}|{{.metadata.annotations.{}}}{{\"\\n\"}}{{end}}'",
                CORDONED_BY_KFORGE.replace('.', "\\.")
            ),
        )?;
        let mut found = drain_blockers(nodes, at_once, &pdbs, &pods, &all_nodes);
        found.extend(drain_losses(nodes, &pods, allowed));
        Ok(found)
    }
}

/// What a drain may lose, as the operator accepted it (`apply --delete-emptydir-data`,
/// `--delete-bare-pods`): kubectl's own choices, made before anything is cordoned.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DrainLosses {
    /// The data of pods' emptyDir volumes (gone with the pod; its controller's new pod
    /// starts empty).
    pub emptydir_data: bool,
    /// Pods no controller runs: deleted, never recreated anywhere.
    pub bare_pods: bool,
}

/// The pods a drain of `nodes` would lose for good, unless accepted: pods without a
/// controller, and emptyDir data. Named before any cordon, with the flag that accepts it.
fn drain_losses(nodes: &[String], pods: &[Pod], allowed: DrainLosses) -> Vec<String> {
    let moving: Vec<&Pod> =
        pods.iter().filter(|p| p.spec.node_name.as_ref().is_some_and(|n| nodes.contains(n)) && p.evictable()).collect();
    let name = |p: &Pod| {
        format!("{}/{} on {}", p.metadata.namespace, p.metadata.name, p.spec.node_name.as_deref().unwrap_or("?"))
    };
    let mut out = Vec::new();
    let bare: Vec<String> = moving.iter().filter(|p| p.metadata.owner_references.is_empty()).map(|p| name(p)).collect();
    if !bare.is_empty() && !allowed.bare_pods {
        out.push(format!(
            "{} run{} under no controller: a drain deletes {} for good (nothing recreates {})\n  help: delete {} or run {} under a Deployment (or another controller), or accept it: kforge apply --delete-bare-pods; nothing was cordoned",
            bare.join(", "),
            if bare.len() == 1 { "s" } else { "" },
            if bare.len() == 1 { "it" } else { "them" },
            if bare.len() == 1 { "it" } else { "them" },
            if bare.len() == 1 { "it" } else { "them" },
            if bare.len() == 1 { "it" } else { "them" },
        ));
    }
    let emptydir: Vec<String> = moving
        .iter()
        .filter_map(|p| {
            let vols: Vec<&str> =
                p.spec.volumes.iter().filter(|v| v.empty_dir.is_some()).map(|v| v.name.as_str()).collect();
            (!vols.is_empty()).then(|| format!("{} ({})", name(p), vols.join(", ")))
        })
        .collect();
    if !emptydir.is_empty() && !allowed.emptydir_data {
        out.push(format!(
            "a drain would delete the emptyDir data of {}: the pods' controllers start new ones, empty\n  help: accept it: kforge apply --delete-emptydir-data; nothing was cordoned",
            emptydir.join(", ")
        ));
    }
    out
}

/// The refusals of [`Api::drain_preflight`], from what the API listed.
fn drain_blockers(nodes: &[String], at_once: usize, pdbs: &[Pdb], pods: &[Pod], all_nodes: &str) -> Vec<String> {
    let mut out = Vec::new();
    for pdb in pdbs {
        let guarded: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.metadata.namespace == pdb.metadata.namespace && p.evictable())
            .filter(|p| pdb.spec.selector.as_ref().is_some_and(|s| s.matches(&p.metadata.labels)))
            .filter(|p| p.spec.node_name.as_ref().is_some_and(|n| nodes.contains(n)))
            .collect();
        if guarded.is_empty() || pdb.status.disruptions_allowed > 0 {
            continue;
        }
        let on: Vec<&str> = guarded.iter().filter_map(|p| p.spec.node_name.as_deref()).collect();
        out.push(format!(
            "PodDisruptionBudget {}/{} allows no disruption now ({} of {} pods healthy, {} required): draining {} would wait on it forever\n  help: scale the workload up, relax the budget, or fix its unhealthy pods; nothing was cordoned",
            pdb.metadata.namespace,
            pdb.metadata.name,
            pdb.status.current_healthy,
            pdb.status.expected_pods,
            pdb.status.desired_healthy,
            on.join(", ")
        ));
    }
    // Somewhere to go: while `at_once` nodes are drained, some other node is Ready and
    // takes pods — schedulable, or cordoned by kforge (a killed apply left it so: this
    // apply gives it its turn and uncordons it, before the nodes after it drain). A node
    // cordoned by hand takes none. A node of the queue that is cordoned already loses no
    // pods to its drain: only the schedulable ones a batch takes away count.
    let ready: Vec<&str> = all_nodes
        .lines()
        .filter_map(|l| match l.split('|').collect::<Vec<_>>().as_slice() {
            [name, "", "True", ..] => Some(*name),
            [name, "true", "True", by_kforge] if !by_kforge.is_empty() => Some(*name),
            _ => None,
        })
        .collect();
    let taken = at_once.min(ready.iter().filter(|n| nodes.iter().any(|d| d == *n)).count());
    let moving = pods.iter().any(|p| p.spec.node_name.as_ref().is_some_and(|n| nodes.contains(n)) && p.evictable());
    if moving && ready.len() <= taken {
        out.push(format!(
            "{} node{} schedulable and Ready, and {taken} of them drained at once: the pods of {} would have nowhere to go\n  help: bring another worker back (kubectl uncordon), add one, or lower spec.rollout.workersAtOnce; nothing was cordoned",
            ready.len(),
            if ready.len() == 1 { " is" } else { "s are" },
            nodes.join(", ")
        ));
    }
    out
}

#[derive(Deserialize)]
struct List<T> {
    items: Vec<T>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Meta {
    name: String,
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
    #[serde(rename = "ownerReferences")]
    owner_references: Vec<Owner>,
    annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Owner {
    kind: String,
}

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: PodSpec,
    #[serde(default)]
    status: PodStatus,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PodSpec {
    node_name: Option<String>,
    volumes: Vec<Volume>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Volume {
    name: String,
    empty_dir: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PodStatus {
    phase: String,
}

impl Pod {
    /// What `kubectl drain --ignore-daemonsets` evicts: not DaemonSet pods, not static
    /// (mirror) pods, not pods that have finished.
    fn evictable(&self) -> bool {
        let daemon = self.metadata.owner_references.iter().any(|o| o.kind == "DaemonSet");
        let mirror = self.metadata.annotations.contains_key("kubernetes.io/config.mirror");
        let finished = matches!(self.status.phase.as_str(), "Succeeded" | "Failed");
        !daemon && !mirror && !finished
    }
}

#[derive(Deserialize)]
struct Pdb {
    #[serde(default)]
    metadata: Meta,
    #[serde(default)]
    spec: PdbSpec,
    #[serde(default)]
    status: PdbStatus,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PdbSpec {
    selector: Option<Selector>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PdbStatus {
    disruptions_allowed: i64,
    current_healthy: i64,
    desired_healthy: i64,
    expected_pods: i64,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Selector {
    match_labels: std::collections::BTreeMap<String, String>,
    match_expressions: Vec<Requirement>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Requirement {
    key: String,
    operator: String,
    values: Vec<String>,
}

impl Selector {
    /// A label selector as Kubernetes evaluates it (an empty one selects every pod).
    fn matches(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods() -> Vec<Pod> {
        serde_json::from_str::<List<Pod>>(
            r#"{"items": [
              {"metadata": {"name": "web-1", "namespace": "default", "labels": {"app": "web"}, "ownerReferences": [{"kind": "ReplicaSet"}]}, "spec": {"nodeName": "lab-1"}, "status": {"phase": "Running"}},
              {"metadata": {"name": "web-2", "namespace": "default", "labels": {"app": "web"}, "ownerReferences": [{"kind": "ReplicaSet"}]}, "spec": {"nodeName": "lab-2"}, "status": {"phase": "Running"}},
              {"metadata": {"name": "agent", "namespace": "kube-system", "ownerReferences": [{"kind": "DaemonSet"}]}, "spec": {"nodeName": "lab-1"}, "status": {"phase": "Running"}}
            ]}"#,
        )
        .unwrap()
        .items
    }

    fn pdb(allowed: i64) -> Vec<Pdb> {
        serde_json::from_str::<List<Pdb>>(&format!(
            r#"{{"items": [{{"metadata": {{"name": "web", "namespace": "default"}},
                "spec": {{"selector": {{"matchLabels": {{"app": "web"}}}}}},
                "status": {{"disruptionsAllowed": {allowed}, "currentHealthy": 2, "desiredHealthy": 2, "expectedPods": 2}}}}]}}"#
        ))
        .unwrap()
        .items
    }

    /// lab-3 cordoned by hand (no kforge annotation).
    const NODES: &str = "lab-1||True|\nlab-2||True|\nlab-3|true|True|\n";

    #[test]
    fn a_budget_that_allows_no_disruption_names_itself_and_the_node() {
        let found = drain_blockers(&["lab-1".into()], 1, &pdb(0), &pods(), NODES);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with("PodDisruptionBudget default/web allows no disruption now (2 of 2 pods healthy, 2 required): draining lab-1"), "{}", found[0]);
        assert!(drain_blockers(&["lab-1".into()], 1, &pdb(1), &pods(), NODES).is_empty());
        // A node whose pods the budget does not guard drains whatever the budget says.
        assert!(drain_blockers(&["lab-3".into()], 1, &pdb(0), &pods(), NODES).is_empty());
    }

    #[test]
    fn pods_need_another_schedulable_ready_node() {
        // lab-3 is cordoned (unschedulable): draining lab-1 and lab-2 together leaves
        // nowhere; one at a time, the other takes the pods.
        let both = ["lab-1".to_string(), "lab-2".to_string()];
        let found = drain_blockers(&both, 2, &[], &pods(), NODES);
        assert!(
            found.len() == 1
                && found[0].starts_with("2 nodes are schedulable and Ready, and 2 of them drained at once"),
            "{found:?}"
        );
        assert!(drain_blockers(&both, 1, &[], &pods(), NODES).is_empty());
        // A batch of two killed mid-drain left lab-1 and lab-2 cordoned (kforge's
        // annotation on them): their turns again, together, and lab-3 takes the pods.
        // Counting them as if they were schedulable refused every later apply.
        let killed_batch = "lab-1|true|True|2026-12-07T10:00:00Z\nlab-2|true|True|2026-12-07T10:00:00Z\nlab-3||True|\n";
        assert_eq!(drain_blockers(&both, 2, &[], &pods(), killed_batch), Vec::<String>::new());
        // lab-3 cordoned by hand too: the two drained together leave nowhere.
        let all_cordoned =
            "lab-1|true|True|2026-12-07T10:00:00Z\nlab-2|true|True|2026-12-07T10:00:00Z\nlab-3|true|True|\n";
        let found = drain_blockers(&both, 2, &[], &pods(), all_cordoned);
        assert!(
            found.len() == 1 && found[0].starts_with("2 nodes are schedulable and Ready, and 2 of them"),
            "{found:?}"
        );
        // One at a time, lab-3 cordoned by hand, an apply killed once lab-1 was drained
        // (the upgrade's fault matrix, round 6): lab-1's turn comes first and uncordons it,
        // then lab-2's pods go there. Counting only the schedulable (lab-2) refused every
        // later apply "nowhere to go".
        let queue = ["lab-1".to_string(), "lab-2".to_string(), "lab-3".to_string()];
        let killed_first = "lab-1|true|True|2026-12-07T10:00:00Z\nlab-2||True|\nlab-3|true|True|\n";
        assert_eq!(drain_blockers(&queue, 1, &[], &pods(), killed_first), Vec::<String>::new());
        // Cordoned by hand, lab-1 takes nothing: lab-2 has nowhere to go.
        let by_hand = "lab-1|true|True|\nlab-2||True|\nlab-3|true|True|\n";
        assert!(!drain_blockers(&queue, 1, &[], &pods(), by_hand).is_empty());
    }

    /// A pod with no controller (kubectl drain refuses it without --force, then deletes
    /// it for good) and emptyDir data (deleted with its pod) are named before any
    /// cordon, with the flag that accepts each; DaemonSet and finished pods are not moved.
    #[test]
    fn what_a_drain_would_lose_is_named_before_any_cordon() {
        let pods = serde_json::from_str::<List<Pod>>(
            r#"{"items": [
              {"metadata": {"name": "bare", "namespace": "default"}, "spec": {"nodeName": "lab-2"}, "status": {"phase": "Running"}},
              {"metadata": {"name": "cache-1", "namespace": "web", "ownerReferences": [{"kind": "ReplicaSet"}]},
               "spec": {"nodeName": "lab-2", "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "cfg", "configMap": {"name": "c"}}]}, "status": {"phase": "Running"}},
              {"metadata": {"name": "done", "namespace": "default"}, "spec": {"nodeName": "lab-2"}, "status": {"phase": "Succeeded"}},
              {"metadata": {"name": "agent", "namespace": "kube-system", "ownerReferences": [{"kind": "DaemonSet"}]},
               "spec": {"nodeName": "lab-2", "volumes": [{"name": "run", "emptyDir": {}}]}, "status": {"phase": "Running"}},
              {"metadata": {"name": "elsewhere", "namespace": "default"}, "spec": {"nodeName": "lab-1"}, "status": {"phase": "Running"}}
            ]}"#,
        )
        .unwrap()
        .items;
        let lab2 = ["lab-2".to_string()];
        let found = drain_losses(&lab2, &pods, DrainLosses::default());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(
            found[0].starts_with("default/bare on lab-2 runs under no controller: a drain deletes it for good"),
            "{}",
            found[0]
        );
        assert!(found[0].contains("kforge apply --delete-bare-pods"), "{}", found[0]);
        assert!(
            found[1].starts_with("a drain would delete the emptyDir data of web/cache-1 on lab-2 (tmp)"),
            "{}",
            found[1]
        );
        assert!(found[1].contains("kforge apply --delete-emptydir-data"), "{}", found[1]);
        let accepted = DrainLosses { emptydir_data: true, bare_pods: true };
        assert!(drain_losses(&lab2, &pods, accepted).is_empty());
        assert!(
            drain_losses(&["lab-1".to_string()], &pods, DrainLosses { bare_pods: true, ..DrainLosses::default() })
                .is_empty()
        );
    }

    #[test]
    fn selectors_follow_kubernetes() {
        let labels = [("app".to_string(), "web".to_string())].into_iter().collect();
        let sel = |j: &str| serde_json::from_str::<Selector>(j).unwrap();
        assert!(sel(r#"{}"#).matches(&labels));
        assert!(
            sel(r#"{"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}"#)
                .matches(&labels)
        );
        assert!(
            !sel(r#"{"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}"#).matches(&labels)
        );
        assert!(!sel(r#"{"matchLabels": {"app": "api"}}"#).matches(&labels));
    }
}
