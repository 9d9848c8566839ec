//! Removing the nodes the file no longer names (`Plan::removals`), one at a time,
//! before the stages — which then drop each one from every other host's mesh, firewall
//! and API balancer. While a node is removed the mesh still reaches it: its pods are
//! drained through its own kubelet, then its certificate is revoked, its host reset,
//! and its Node deleted (in that order, so a kubelet still running there can never
//! register the Node again).

use kforge_core::plan::{Plan, RemovalPlan, RemovalStep};
use serde::Serialize;

use crate::rollout::Api;
use crate::{ApplyOptions, StepTime, Target};

/// One removal's outcome.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovalReport {
    pub node: String,
    /// Done, in order; the apply then makes the bundle forget the node.
    pub removed: bool,
    pub steps: Vec<StepTime>,
    /// Said loudly: what could not be done and stays the operator's (a host that did
    /// not answer SSH was not reset).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Removed with `--force-quorum-loss` while the members left lacked quorum: etcd
    /// serves nothing now, so the apply stops after this removal.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub quorum_lost: bool,
}

/// Refusals, before any host is touched: a K3s server cannot be removed by kforge.
pub fn refusals(plan: &Plan) -> Vec<String> {
    plan.removals.iter().filter_map(|r| r.refused.clone()).collect()
}

/// Each removal in turn; one that fails stops the rest (its node stays recorded, and
/// the next apply tries again).
pub fn remove_nodes(
    plan: &Plan,
    api: Option<Api<'_>>,
    opts: &ApplyOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Vec<RemovalReport> {
    let mut out = Vec::new();
    for r in in_removal_order(plan, api.as_ref()) {
        let mut report = RemovalReport { node: r.node.clone(), ..RemovalReport::default() };
        if opts.dry_run {
            report.steps = r
                .steps
                .iter()
                .map(|s| StepTime { step: format!("{} (dry run: not done)", s.says()), seconds: 0.0 })
                .collect();
        } else if out.iter().any(|o: &RemovalReport| o.error.is_some()) {
            report.error = Some("not started: an earlier removal failed".into());
        } else if let Some(forced) = out.iter().find(|o: &&RemovalReport| o.quorum_lost) {
            report.error = Some(format!("not started: etcd has no quorum since {} left (forced)", forced.node));
        } else if api.is_none() && plan.kubectl.is_some() {
            // Without the API nothing of the cluster's side can be done: no drain, no
            // quorum check or member removal, no revocation, no Node deleted. Resetting
            // the host alone and forgetting the node would leave all of that behind.
            report.error = Some(format!(
                "not started: no control-plane host answered, so {} cannot be drained, its certificate revoked or its etcd member removed; nothing was touched\n  help: bring a control-plane host back (kforge status names them), then apply again",
                r.node
            ));
        } else {
            if let Err(e) = remove(plan, r, api.as_ref(), opts, progress, &mut report) {
                report.error = Some(e);
            } else {
                report.removed = true;
            }
        }
        out.push(report);
    }
    if out.iter().all(|r| r.error.is_none() && !r.quorum_lost) {
        out.extend(stale_members(plan, api.as_ref(), opts.dry_run, progress));
    }
    out
}

/// The plan's removals, controllers whose etcd member does not answer first: removing
/// a dead member keeps quorum where removing a live one first would not (lab-2 dead and
/// both lab-2 and lab-3 leaving: lab-2, then lab-3).
fn in_removal_order<'a>(plan: &'a Plan, api: Option<&Api<'_>>) -> Vec<&'a RemovalPlan> {
    let members = match (api, &plan.etcd) {
        (Some(api), Some(etcd)) if plan.removals.iter().filter(|r| r.etcd_peer_url.is_some()).count() > 1 => {
            crate::membership::read(api.host, &etcd.env_file).ok().flatten().unwrap_or_default()
        }
        _ => Vec::new(),
    };
    dead_members_first(&plan.removals, &members)
}

fn dead_members_first<'a>(removals: &'a [RemovalPlan], members: &[crate::membership::Member]) -> Vec<&'a RemovalPlan> {
    let answers = |r: &RemovalPlan| {
        members.iter().any(|m| {
            (m.name == r.node || r.etcd_peer_url.as_ref().is_some_and(|p| m.peer_urls.contains(p))) && m.healthy
        })
    };
    let mut order: Vec<&RemovalPlan> = removals.iter().collect();
    order.sort_by_key(|r| r.etcd_peer_url.is_some() && answers(r));
    order
}

/// etcd members the plan does not know (a machine gone and never removed, one added by
/// hand) are removed, each only when quorum holds without it. (A planned controller
/// that is not a member joins later, in the datastore stage: `StageRun::joins`.)
fn stale_members(
    plan: &Plan,
    api: Option<&Api<'_>>,
    dry_run: bool,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Vec<RemovalReport> {
    let (Some(etcd), Some(api)) = (&plan.etcd, api) else { return Vec::new() };
    // etcd not answering (a first apply, a cluster without quorum): nothing to judge here;
    // the stages and their gates deal with it.
    let Ok(Some(members)) = crate::membership::read(api.host, &etcd.env_file) else { return Vec::new() };
    let mut out = Vec::new();
    for m in crate::membership::stale(&members, &etcd.members) {
        let what = format!("stale etcd member {}", m.describe());
        if dry_run {
            let step = format!("remove {what} (dry run: not done)");
            out.push(RemovalReport { node: what, steps: vec![StepTime { step, seconds: 0.0 }], ..Default::default() });
            continue;
        }
        progress(&api.host.node, &format!("remove {what}"));
        let started = std::time::Instant::now();
        let mut report = RemovalReport { node: what.clone(), ..RemovalReport::default() };
        match crate::membership::remove(api.host, &etcd.env_file, m) {
            Ok(warning) => {
                report.removed = true;
                report.warnings.extend(warning);
                report
                    .steps
                    .push(StepTime { step: format!("remove {what}"), seconds: started.elapsed().as_secs_f64() });
            }
            Err(e) => report.error = Some(e),
        }
        let failed = report.error.is_some();
        out.push(report);
        if failed {
            break;
        }
    }
    out
}

fn remove(
    plan: &Plan,
    r: &RemovalPlan,
    api: Option<&Api<'_>>,
    opts: &ApplyOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
    report: &mut RemovalReport,
) -> Result<(), String> {
    let node = &r.node;
    // A step done and timed: its progress line (with its bound, if it waits), then the
    // report's line, both in the plan's words.
    let timed =
        |report: &mut RemovalReport, step: &str, bound: Option<u64>, f: &mut dyn FnMut() -> Result<(), String>| {
            match bound {
                Some(secs) => progress(node, &format!("{step} (up to {secs} s)")),
                None => progress(node, step),
            }
            let started = std::time::Instant::now();
            f()?;
            report.steps.push(StepTime { step: step.into(), seconds: started.elapsed().as_secs_f64() });
            Ok::<(), String>(())
        };
    // A controller's etcd member: quorum checked before anything is touched (a removal
    // that would stop etcd is refused with the node still serving, not half-drained).
    // Forced past that check, the member cannot be removed at all (etcd's strict
    // reconfiguration check refuses a removal the rest could not agree on): it stays in
    // the list, its etcd stopped by the host's reset, and a later apply removes it as a
    // stale member once enough members answer.
    let mut forced = None;
    let member = match (api, &plan.etcd, &r.etcd_peer_url) {
        (Some(api), Some(etcd), Some(peer)) => {
            let members = crate::membership::read(api.host, &etcd.env_file)?
                .ok_or("etcd gave no member list (no quorum?): its member cannot be removed safely now")?;
            let m = members.iter().find(|m| &m.name == node || m.peer_urls.contains(peer)).cloned();
            if let Some(m) = &m {
                let allowed = crate::membership::may_remove(&members, m.id, opts.force_quorum_loss).map_err(|why| {
                    format!(
                        "etcd member {} not removed, nothing touched: {why}\n  help: bring the member that is down back (kforge doctor names it), or drop it from the file too (a member that does not answer is removed first); --force-quorum-loss removes this one anyway",
                        m.describe()
                    )
                })?;
                forced = allowed;
            }
            m
        }
        _ => None,
    };
    let ready = match (api, r.roles.runs_workloads()) {
        (Some(api), true) => api.node_ready(node)?,
        _ => None,
    };
    let registered = ready.is_some();
    if ready == Some(false) {
        // Its kubelet is gone (the machine is down or cut off): a drain would wait for
        // pods that nobody stops. They go with the Node, and their controllers replace them.
        report.warnings.push(format!(
            "{node} is not Ready: not drained (nothing there answers); its pods are deleted with its Node and replaced elsewhere by their controllers"
        ));
    }
    // Forced, the API answers only until this member's etcd stops: its Node goes before
    // the reset rather than after it.
    let delete_node = |report: &mut RemovalReport, step: &RemovalStep| match (api, registered) {
        (Some(api), true) => {
            timed(report, &step.says(), None, &mut || api.delete_node(node))?;
            crate::faults::at("removal-node-deleted");
            Ok::<(), String>(())
        }
        _ => Ok(()),
    };
    // The plan's steps, in its order: what `plan` and the dry run showed is what runs.
    for step in &r.steps {
        match step {
            RemovalStep::Drain => {
                let (Some(api), Some(true)) = (api, ready) else { continue };
                let blocked = api.drain_preflight(std::slice::from_ref(node), 1, opts.drain)?;
                if !blocked.is_empty() {
                    return Err(format!("drain preflight: {}", blocked.join("\n")));
                }
                timed(report, &step.says(), Some(plan.drain_timeout_secs), &mut || {
                    api.drain(node, plan.drain_timeout_secs, opts.drain).map(|_| ())
                })?;
                crate::faults::at("removal-drained");
            }
            RemovalStep::RemoveMember { .. } => match (api, &plan.etcd, &member, &forced) {
                (Some(api), Some(etcd), Some(m), None) => {
                    let mut still_serving = None;
                    timed(report, &step.says(), None, &mut || {
                        still_serving = crate::membership::remove(api.host, &etcd.env_file, m)?;
                        Ok(())
                    })?;
                    report.warnings.extend(still_serving);
                    crate::faults::at("removal-member-removed");
                }
                (Some(_), Some(_), Some(m), Some(why)) => {
                    report.warnings.push(format!(
                        "{why}. etcd member {} stays in the member list (etcd refuses to remove a member the rest cannot agree on); its etcd stops with its host's reset. Bring the members that are down back, then run kforge apply: it removes the member and finishes",
                        m.describe()
                    ));
                    report
                        .steps
                        .push(StepTime { step: "leave its etcd member in the list (forced)".into(), seconds: 0.0 });
                    report.quorum_lost = true;
                }
                _ => {}
            },
            RemovalStep::Revoke { .. } => {
                if let (Some(api), Some(manifest)) = (api, &r.revocation) {
                    timed(report, &step.says(), None, &mut || api.apply_manifest("revoke certificates", manifest))?;
                    crate::faults::at("removal-revoked");
                }
            }
            RemovalStep::Reset { .. } => {
                let delete = r.steps.iter().find(|s| matches!(s, RemovalStep::DeleteNode { .. }));
                if let (Some(_), Some(delete)) = (&forced, delete) {
                    delete_node(report, delete)?;
                }
                let target = Target {
                    node: node.clone(),
                    host: r.ssh.host.clone().unwrap_or_default(),
                    user: r.ssh.user.clone(),
                    port: r.ssh.port,
                };
                progress(node, &step.says());
                let started = std::time::Instant::now();
                let reset = crate::reset::reset(
                    &[target],
                    opts.ssh_config.clone(),
                    &plan.mesh_interface,
                    &plan.cluster,
                    false,
                )?;
                match reset.into_iter().next().and_then(|h| h.error) {
                    None => {
                        report.steps.push(StepTime { step: step.says(), seconds: started.elapsed().as_secs_f64() });
                        crate::faults::at("removal-reset");
                    }
                    Some(e) => report.warnings.push(format!(
                        "{node}'s host was NOT reset ({e}): what kforge installed there still runs, cut off from the cluster (mesh peer removed everywhere{}); reset it when it answers: kforge reset is for nodes in the file, so wipe it by hand or reinstall it",
                        if r.revocation.is_some() { ", its certificate revoked" } else { "" }
                    )),
                }
            }
            RemovalStep::DeleteNode { .. } if forced.is_none() => delete_node(report, step)?,
            // Said, not done here: the stages below, and the bundle at the end.
            RemovalStep::DeleteNode { .. }
            | RemovalStep::CannotRevoke
            | RemovalStep::OthersDropIt { .. }
            | RemovalStep::BundleForgets => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::Member;

    /// A worker dropped from the file while no controller answered (their locks held by
    /// another apply, or down): it used to be reset and forgotten with no drain, no
    /// member check, no revocation and its Node left. Now nothing is touched and the node
    /// stays recorded for the next apply.
    #[test]
    fn without_a_control_plane_nothing_is_removed() {
        let mut spec = kforge_core::spec::parse("kforge.yaml", kforge_core::spec::examples::HARDWAY).unwrap().cluster;
        let now = time::OffsetDateTime::now_utc();
        let (mut secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, None, now).unwrap();
        secrets.record_deployed(&spec);
        let worker = spec.spec.nodes.iter().find(|n| !n.role.is_control_plane()).unwrap().name.clone();
        spec.spec.nodes.retain(|n| n.name != worker);
        let (secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, Some(secrets), now).unwrap();
        let model = kforge_core::model::Model::build(&spec, &secrets);
        let plan = kforge_core::pipeline::build_plan(&model, &secrets);
        assert_eq!(plan.removals.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), [worker.as_str()]);
        let replan = |_: &str, _: &str, _: &kforge_core::pipeline::HostCaps| Err("unused".to_string());
        let check_versions = |_: &[kforge_core::upgrade::Running]| Ok(());
        let opts = ApplyOptions::for_tests(&replan, &check_versions);
        let touched = std::sync::Mutex::new(Vec::new());
        let report = remove_nodes(&plan, None, &opts, &|node: &str, step: &str| {
            touched.lock().unwrap().push(format!("{node}: {step}"))
        });
        assert_eq!(report.len(), 1);
        assert!(!report[0].removed, "{:?}", report[0]);
        let error = report[0].error.as_deref().unwrap_or_default();
        assert!(error.starts_with("not started: no control-plane host answered"), "{error}");
        assert_eq!(touched.into_inner().unwrap(), Vec::<String>::new(), "no step was taken");
    }

    /// What `plan` lists is what runs, in that order: a controller+worker's plan used to
    /// say "revoke" before "remove its etcd member" while apply removed the member first.
    /// The dry run says each step in the words the report uses.
    #[test]
    fn a_removal_runs_and_dry_runs_the_steps_the_plan_lists() {
        let mut spec =
            kforge_core::spec::parse("kforge.yaml", kforge_core::spec::examples::HARDWAY_LAB).unwrap().cluster;
        let now = time::OffsetDateTime::now_utc();
        let (mut secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, None, now).unwrap();
        secrets.record_deployed(&spec);
        spec.spec.nodes.retain(|n| n.name != "lab-3");
        let (secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, Some(secrets), now).unwrap();
        let model = kforge_core::model::Model::build(&spec, &secrets);
        let plan = kforge_core::pipeline::build_plan(&model, &secrets);
        let says: Vec<String> = plan.removals[0].steps.iter().map(RemovalStep::says).collect();
        assert_eq!(
            says[..5],
            [
                "cordon and drain",
                "remove its etcd member",
                "revoke its kubelet certificate in the API",
                "reset the host",
                "delete Node lab-3"
            ]
        );
        let replan = |_: &str, _: &str, _: &kforge_core::pipeline::HostCaps| Err("unused".to_string());
        let check_versions = |_: &[kforge_core::upgrade::Running]| Ok(());
        let mut opts = ApplyOptions::for_tests(&replan, &check_versions);
        opts.dry_run = true;
        let report = remove_nodes(&plan, None, &opts, &|_: &str, _: &str| {});
        let dry: Vec<&str> =
            report[0].steps.iter().map(|s| s.step.strip_suffix(" (dry run: not done)").unwrap()).collect();
        assert_eq!(dry, says);
    }

    #[test]
    fn a_controller_whose_member_is_down_leaves_before_one_that_answers() {
        let removal = |node: &str, ip: Option<u8>| RemovalPlan {
            node: node.into(),
            roles: kforge_core::spec::Roles::one(kforge_core::spec::Role::Controller),
            ssh: Default::default(),
            refused: None,
            steps: Vec::new(),
            revocation: None,
            etcd_peer_url: ip.map(|i| format!("https://10.4.0.{i}:2380")),
        };
        let member = |id: u64, name: &str, healthy: bool| Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("https://10.4.0.{id}:2380")],
            client_urls: vec![format!("https://10.4.0.{id}:2379")],
            learner: false,
            healthy,
        };
        // lab-2's etcd is down; the file drops lab-2, lab-3 and a worker.
        let removals = [removal("lab-3", Some(3)), removal("lab-2", Some(2)), removal("worker-1", None)];
        let members = [member(1, "lab-1", true), member(2, "lab-2", false), member(3, "lab-3", true)];
        let order: Vec<&str> = dead_members_first(&removals, &members).iter().map(|r| r.node.as_str()).collect();
        assert_eq!(order, ["lab-2", "worker-1", "lab-3"]);
        // Nothing known of etcd: the plan's order.
        let order: Vec<&str> = dead_members_first(&removals, &[]).iter().map(|r| r.node.as_str()).collect();
        assert_eq!(order, ["lab-3", "lab-2", "worker-1"]);
    }
}
