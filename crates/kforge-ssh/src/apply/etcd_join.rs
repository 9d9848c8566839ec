//! etcd around the stage that starts it: the snapshot before the control plane restarts;
//! a controller the file adds joins the running etcd as a learner, after the stage's
//! other hosts; and no second cluster is founded beside one that cannot be asked.

use super::*;

/// What the stage loop does around each stage for etcd (nothing, but for the stage that
/// starts it): before it, read whether the file adds controllers to a running etcd, and
/// take the snapshot that comes before the control plane restarts or etcd grows; after
/// the stage's other hosts, the joins. The loop calls it for every stage, naming none.
pub(super) struct EtcdStage {
    joins: Option<(Host, Vec<crate::membership::Join>)>,
    /// Where the snapshot taken before this stage was saved.
    pub(super) snapshot: Option<String>,
}

impl EtcdStage {
    pub(super) fn before(
        hosts: &mut [HostRun],
        plan: &Plan,
        stage: &Stage,
        opts: &ApplyOptions,
        progress: &(dyn Fn(&str, &str) + Sync),
    ) -> EtcdStage {
        if !stage.phases.contains(&Phase::Datastore) {
            return EtcdStage { joins: None, snapshot: None };
        }
        let joins = etcd_joins(hosts, plan, progress);
        let grows = joins.as_ref().is_some_and(|(_, j)| !j.is_empty());
        let snapshot = snapshot_before_control_plane(hosts, opts, progress, grows);
        EtcdStage { joins, snapshot }
    }

    pub(super) fn after(self, run: &StageRun, hosts: &mut [HostRun]) {
        if let (Some((from, joins)), Some(etcd)) = (self.joins, &run.plan.etcd) {
            run.joins(hosts, &from, &joins, etcd);
        }
    }
}

/// Before the first controller restarts, or etcd's membership grows, in an apply that
/// changes a running control plane: an etcd snapshot on the workstation. Without one
/// nothing of the control plane moves (every host stops here, nothing restarted).
pub(super) fn snapshot_before_control_plane(
    hosts: &mut [HostRun],
    opts: &ApplyOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
    grows: bool,
) -> Option<String> {
    let control = [Phase::Datastore, Phase::ControlPlane, Phase::Controllers];
    let take = opts.snapshot.filter(|_| !opts.dry_run)?;
    let first = hosts.iter().find(|h| !h.failed && (disrupts(h, &control, None) || (grows && h.plan.control_plane)))?;
    let why = if grows { "etcd gains a member" } else { "the control plane runs and will restart" };
    progress(&first.host.node, &format!("{why}: etcd snapshot first"));
    match take() {
        Ok(path) => {
            progress(&first.host.node, &format!("etcd snapshot saved to {path}"));
            Some(path)
        }
        Err(e) => {
            for h in hosts.iter_mut().filter(|h| !h.failed) {
                h.fail(format!(
                    "the etcd snapshot before restarting the control plane failed, so nothing of it was restarted: {e}"
                ));
            }
            None
        }
    }
}

/// The controllers the file adds to a running etcd, and the member that adds them:
/// etcd is asked on a controller where it runs. None when no controller's etcd runs
/// (a cluster being founded: every member starts with the planned initial cluster).
/// When etcd runs but lists no members (no quorum), a controller whose etcd has no data
/// cannot tell whether to found or to join, so it starts nothing and says why; one with
/// data starts as before (which may be what brings quorum back).
pub(super) fn etcd_joins(
    hosts: &mut [HostRun],
    plan: &Plan,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Option<(Host, Vec<crate::membership::Join>)> {
    let etcd = plan.etcd.as_ref()?;
    let runs = |h: &HostRun| h.facts.unit_states.get(ETCD_UNIT).is_some_and(|s| s == "active");
    let Some(from) = hosts.iter().find(|h| !h.failed && h.plan.control_plane && runs(h)).map(|h| h.host.clone()) else {
        refuse_to_found_beside(hosts);
        return None;
    };
    progress(&from.node, "read etcd's members (does the file add a controller?)");
    let members = match crate::membership::read(&from, &etcd.env_file) {
        Ok(Some(m)) => m,
        _ => {
            for h in hosts.iter_mut().filter(|h| !h.failed && h.plan.control_plane && !runs(h)) {
                if !h.facts.etcd_data {
                    h.fail(format!(
                        "etcd runs on {} but lists no members (no quorum?): {}'s etcd has never started, and cannot tell whether to found a cluster or join this one, so it was not started; bring etcd's quorum back (kforge doctor), then apply again",
                        from.node, h.plan.node
                    ));
                }
            }
            return None;
        }
    };
    let joins = crate::membership::joins(&members, &etcd.members);
    for h in hosts.iter_mut() {
        h.joining = joins.iter().any(|j| j.node == h.plan.node);
    }
    Some((from, joins))
}

/// No controller's etcd answers, so nothing can be asked whether a cluster runs. A new
/// cluster is founded only when none can exist: every controller answered and none holds
/// etcd data. Otherwise — a controller that did not answer (down, its lock held by
/// another apply) may run the cluster, or one holds data while its etcd is down (a
/// crash loop) — a controller whose etcd never ran is not started: with the planned
/// member list, `initial-cluster-state=new`, the newcomers would be a majority of their
/// own and found a second cluster beside the first. Controllers with data start as
/// before (their restart may be what brings quorum back).
pub(super) fn refuse_to_found_beside(hosts: &mut [HostRun]) {
    let silent: Vec<String> =
        hosts.iter().filter(|h| h.failed && h.plan.control_plane).map(|h| h.plan.node.clone()).collect();
    let holding: Vec<String> = hosts
        .iter()
        .filter(|h| !h.failed && h.plan.control_plane && h.facts.etcd_data)
        .map(|h| h.plan.node.clone())
        .collect();
    if silent.is_empty() && holding.is_empty() {
        return;
    }
    let why = match (silent.is_empty(), holding.is_empty()) {
        (false, _) => format!("{} did not answer, and its etcd may be the cluster's", silent.join(", ")),
        (true, _) if holding.len() == 1 => format!("{} holds etcd data but its etcd does not run", holding[0]),
        (true, _) => format!("{} hold etcd data but none of their etcd runs", holding.join(", ")),
    };
    for h in hosts.iter_mut().filter(|h| !h.failed && h.plan.control_plane && !h.facts.etcd_data) {
        h.fail(format!(
            "not started: {why}; {}'s etcd has never run and cannot tell whether to found a cluster or join that one (founding would make a second cluster beside it)\n  help: bring {} back (kforge doctor), then apply again",
            h.plan.node,
            if silent.is_empty() { holding.join(", ") } else { silent.join(", ") }
        ));
    }
}

pub(super) const ETCD_UNIT: &str = "etcd.service";

/// Whether this controller's etcd data directory holds a member (it ran before).
pub(super) fn etcd_has_data(host: &Host) -> bool {
    let script = format!("[ -d {}/member ] && echo yes || true", kforge_core::hardway::ETCD_DATA_DIR);
    host.run_script("look for etcd data", &script).is_ok_and(|o| o.trim() == "yes")
}

impl StageRun<'_> {
    /// Each controller the file adds joins the running etcd, one at a time, after the
    /// stage's other hosts: its peer port probed from a member over the mesh, added as
    /// a learner (no vote, so quorum is untouched while it catches up), started with
    /// the member list etcd answered, promoted once in sync, then its health gate. A
    /// join that fails stops the others; an apply run again resumes a learner it left.
    pub(super) fn joins(
        &self,
        hosts: &mut [HostRun],
        from: &Host,
        joins: &[crate::membership::Join],
        etcd: &EtcdMembership,
    ) {
        let mut stopped: Option<String> = None;
        for j in joins {
            let Some(h) = hosts.iter_mut().find(|h| h.plan.node == j.node) else { continue };
            h.joining = false;
            if h.failed {
                stopped.get_or_insert(j.node.clone());
                continue;
            }
            if let Some(who) = &stopped {
                h.fail(format!("not started: {who} did not join etcd, so no other controller joins after it (fix it and run kforge apply again)"));
                continue;
            }
            self.join(h, from, j, etcd);
            if h.failed {
                stopped = Some(j.node.clone());
            }
        }
    }

    pub(super) fn join(&self, h: &mut HostRun, from: &Host, j: &crate::membership::Join, etcd: &EtcdMembership) {
        use crate::membership::{self as m, Joining};
        let node = h.plan.node.clone();
        let says = JoinSays::new(j, from, &node);
        if self.opts.dry_run {
            let steps = match j.joining {
                Joining::Add => vec![says.probe.clone(), says.add.clone()],
                Joining::Resume { id } => vec![format!("resume learner {id:x} an earlier apply added")],
            };
            for step in steps.into_iter().chain([JoinSays::START.to_string(), says.promote.clone()]) {
                h.report.steps.push(StepTime { step: format!("{step} (dry run: not done)"), seconds: 0.0 });
            }
            return self.on(h, false);
        }
        let timed = |h: &mut HostRun, what: &str, f: &mut dyn FnMut() -> Result<(), String>| {
            (self.progress)(&node, what);
            let started = Instant::now();
            f().map(|()| h.step(what, started))
        };
        let ip = j.peer_url.trim_start_matches("https://").trim_end_matches(":2380").to_string();
        let prepared = (|| {
            if etcd_has_data(&h.host) && j.joining == Joining::Add {
                // `kforge reset` refuses a controller alone (its member may count for
                // quorum): the ways out are the directory moved aside, or a removal.
                return Err(format!(
                    "{node} has etcd data from an earlier membership ({dir}): a joining member starts empty\n  help: if that data is of no use, move it aside on {node} (mv {dir} {dir}.before-join) and apply again; or drop {node} from the file and apply (its removal resets the host), then add it back",
                    dir = kforge_core::hardway::ETCD_DATA_DIR
                ));
            }
            if j.joining == Joining::Add {
                timed(h, &says.probe, &mut || {
                    m::probe_peer(from, &ip).map(|_| ()).map_err(|e| {
                        format!("{} does not reach {node}'s etcd peer port over the mesh, so etcd was not asked to add it: {e}", from.node)
                    })
                })?;
                timed(h, &says.add, &mut || {
                    m::add_learner(from, &etcd.env_file, &node, &j.peer_url, JoinSays::ADD_RETRIES)
                })?;
                crate::faults::at("etcd-member-added");
            }
            let members =
                m::read(from, &etcd.env_file)?.ok_or("etcd gave no member list after the add (no quorum?)")?;
            let me = members
                .iter()
                .find(|x| x.name == node || x.peer_urls.contains(&j.peer_url))
                .ok_or_else(|| format!("{node} is not in etcd's member list after the add"))?;
            let id = me.id;
            if me.name.is_empty() {
                m::write_join_env(&h.host, &etcd.join_env, &m::join_env(&members, &node, &j.peer_url)?)?;
            }
            Ok::<u64, String>(id)
        })();
        let id = match prepared {
            Ok(id) => id,
            Err(e) => return h.fail(format!("joining etcd: {e}")),
        };
        let (from, env_file, join_env) = (from.clone(), etcd.env_file.clone(), etcd.join_env.clone());
        // Gated even when nothing changed here: a learner an earlier apply started votes now.
        self.on_then(h, true, &mut |h: &mut HostRun| {
            crate::faults::at("etcd-joiner-started");
            timed(h, &says.promote, &mut || m::promote(&from, &env_file, id, JoinSays::PROMOTE_WAIT))?;
            crate::faults::at("etcd-promoted");
            // It votes: its data directory is what it starts from now.
            h.host
                .run_script("remove the join's member list", &format!("rm -f {}", crate::ssh::shell_quote(&join_env)))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }
}

/// A join's steps in the words its progress lines, its report and its dry run all use,
/// beside the bounds the words name.
struct JoinSays {
    probe: String,
    add: String,
    promote: String,
}

impl JoinSays {
    const ADD_RETRIES: std::time::Duration = std::time::Duration::from_secs(60);
    const PROMOTE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);
    const START: &'static str = "start etcd with the member list etcd answers";

    fn new(j: &crate::membership::Join, from: &Host, node: &str) -> JoinSays {
        JoinSays {
            probe: format!("probe {} from {} over the mesh", j.peer_url, from.node),
            add: format!(
                "etcd member add {node} --learner (on {}; asked again while etcd says \"unhealthy cluster\", up to {} s)",
                from.node,
                Self::ADD_RETRIES.as_secs()
            ),
            promote: format!(
                "promote to voter (waits until it has caught up, up to {} s)",
                Self::PROMOTE_WAIT.as_secs()
            ),
        }
    }
}
