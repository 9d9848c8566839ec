//! `kforge apply`, one file per step: `prepare` (connect, lock, facts, the plan for each
//! host's capabilities, upgrade rules, preflight, hand-over, packages), the removals
//! (`crate::removal`), `stages` (the stages in order, turns, drains and gates; a hook for
//! etcd's learner joins from `etcd_join`), `phases` (one phase on one host: what its facts
//! say is missing, as one script) and `finish` (stale files removed, records, the report).
//! Hosts run in parallel (bounded) inside a stage; a host that fails drops out without
//! stopping the rest.

mod etcd_join;
mod finish;
mod phases;
mod prepare;
mod stages;
#[cfg(test)]
mod tests;

use etcd_join::*;
use finish::*;
use phases::*;
use prepare::*;
use stages::*;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use kforge_core::paths::{self, BOOTSTRAP_SCRIPT};
use kforge_core::pipeline::HostCaps;
use std::time::Instant;

use kforge_core::plan::{
    ArtifactSource, EtcdMembership, FileKind, NodePlan, Phase, PhasePlan, Plan, PlannedCommand, PlannedFile, Stage,
    Turns, stages,
};
use kforge_core::render::script::render_bootstrap;
use kforge_core::render::steps::{Step, to_shell};
use kforge_core::spec::Arch;

use crate::artifacts::{ArtifactStore, find_boringtun};
use crate::facts::{self, NodeFacts};
use crate::lock::HostLock;
use crate::remote_script::{self, PhaseWork};
use crate::rollout;
use crate::ssh::{ControlDir, Host};
use crate::{ApplyError, ApplyOptions, ApplyReport, HostReport, StepTime, Takeover};
use kforge_core::manifest::{Delivery, Manifest};

/// One host's state through the apply.
struct HostRun {
    host: Host,
    cluster: String,
    /// The releases the plan deploys (`Plan::releases`), for the host's manifest.
    releases: BTreeMap<String, String>,
    plan: NodePlan,
    /// The node's plan as `render` makes it (no host facts): its bootstrap script is
    /// rendered from this, so the copy apply leaves equals the user-data's.
    boot: NodePlan,
    facts: NodeFacts,
    report: HostReport,
    /// What kforge has written, as it will be recorded on the host.
    manifest: BTreeMap<String, String>,
    /// The files the host's manifest lists now (as found, then as each script recorded).
    recorded: BTreeMap<String, String>,
    /// Files and artifacts changed by this apply so far (any phase): a binary
    /// uploaded in `artifacts` restarts its unit in a later phase.
    changed_paths: BTreeSet<String>,
    failed: bool,
    /// Joins the running etcd after the stage's other hosts (`StageRun::join`).
    joining: bool,
    /// Foreign units handed over by the operator, to stop before the stages: (unit,
    /// what it held).
    handing_over: Vec<(String, String)>,
}

impl HostRun {
    /// A host of `plan` about to be asked for its facts: nothing known, nothing done.
    fn new(host: Host, plan: &Plan, np: &NodePlan) -> HostRun {
        HostRun {
            host,
            cluster: plan.cluster.clone(),
            releases: plan.releases.clone(),
            plan: np.clone(),
            boot: np.clone(),
            facts: NodeFacts::default(),
            report: HostReport { node: np.node.clone(), converged: true, ..HostReport::default() },
            manifest: BTreeMap::new(),
            recorded: BTreeMap::new(),
            changed_paths: BTreeSet::new(),
            failed: false,
            joining: false,
            handing_over: Vec::new(),
        }
    }

    /// Record a step that did something, with the time since `started`.
    fn step(&mut self, what: &str, started: Instant) {
        self.report.steps.push(StepTime { step: what.into(), seconds: started.elapsed().as_secs_f64() });
    }

    fn fail(&mut self, e: impl std::fmt::Display) {
        self.failed = true;
        self.report.converged = false;
        self.report.error = Some(e.to_string());
    }
}

pub fn apply(
    plan: Plan,
    opts: &ApplyOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<ApplyReport, ApplyError> {
    let control = ControlDir::create().map_err(ApplyError::Setup)?;
    run(plan, opts, control.path(), progress)
}

/// Everything an apply does, step by step; each step works on the hosts still healthy.
fn run(
    plan: Plan,
    opts: &ApplyOptions,
    control_dir: &std::path::Path,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<ApplyReport, ApplyError> {
    local_artifacts_exist(&plan, opts)?;
    let refused = crate::removal::refusals(&plan);
    if !refused.is_empty() {
        return Err(ApplyError::Preflight(refused.iter().map(|r| format!("  {r}")).collect::<Vec<_>>().join("\n")));
    }
    let mut hosts = connect(&plan, opts, control_dir)?;
    // Each host's lock before its facts: what another apply changes meanwhile is read.
    let locks = lock(&mut hosts, opts);
    gather_facts(&mut hosts, opts, progress);
    if hosts.iter().all(|h| h.failed) {
        return Ok(finish(&plan, opts, hosts));
    }
    let checked = plan_for_capabilities(&mut hosts, &plan, opts, progress)
        .and_then(|()| check_versions(&mut hosts, opts))
        .and_then(|()| preflight(&mut hosts, &plan, opts));
    let refusals = match checked {
        Ok(found) => found,
        Err(e) => {
            crate::ssh::close_all(hosts.iter().map(|h| &h.host));
            return Err(e);
        }
    };
    // Nodes the file no longer names leave first, while the mesh still reaches them; a
    // removal that fails stops the apply there (the node stays recorded: the next apply
    // tries again), so no host drops a peer whose node is still half in the cluster.
    let api = api_host(&hosts, &plan);
    let removals = crate::removal::remove_nodes(
        &plan,
        api.as_ref().map(|(host, kubectl)| rollout::Api { host, kubectl }),
        opts,
        progress,
    );
    if let Some(failed) = removals.iter().find(|r| r.error.is_some()) {
        for h in hosts.iter_mut().filter(|h| !h.failed) {
            h.fail(format!("not started: removing {} failed, so this apply stopped before the stages", failed.node));
        }
    } else if let Some(forced) = removals.iter().find(|r| r.quorum_lost) {
        for h in hosts.iter_mut().filter(|h| !h.failed) {
            h.fail(format!(
                "not started: etcd has no quorum since {} left (--force-quorum-loss); bring the members that are down back, then run kforge apply again",
                forced.node
            ));
        }
    }
    // Foreign units are stopped only once the removals went through: a removal that
    // failed stops the apply, and a unit stopped before it would stay stopped with no
    // kforge mesh or service in its place.
    hand_over(&mut hosts, opts, progress);
    crate::faults::at("hand-over");
    install_packages(&mut hosts, opts, progress);
    let snapshot = run_stages(&mut hosts, &plan, opts, progress);
    crate::faults::at("finish");
    finish_hosts(&mut hosts, &plan, opts);
    drop(locks);
    let mut report = finish(&plan, opts, hosts);
    report.snapshot = snapshot;
    report.removals = removals;
    report.refusals = refusals;
    Ok(report)
}

/// Run `f` on every host with at most `n` at a time.
fn parallel(hosts: &mut [HostRun], n: usize, f: impl Fn(&mut HostRun) + Sync) {
    let mut refs: Vec<&mut HostRun> = hosts.iter_mut().filter(|h| !h.failed).collect();
    parallel_refs(&mut refs, n, f);
}

fn parallel_refs(hosts: &mut [&mut HostRun], n: usize, f: impl Fn(&mut HostRun) + Sync) {
    let queue = Mutex::new(hosts.iter_mut().collect::<Vec<_>>());
    std::thread::scope(|s| {
        for _ in 0..n.max(1).min(queue.lock().unwrap().len().max(1)) {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap().pop();
                    match next {
                        Some(h) => f(h),
                        None => break,
                    }
                }
            });
        }
    });
}
