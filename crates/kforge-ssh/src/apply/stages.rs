//! The stages in order, each with a barrier after it: hosts together, or one at a time
//! (drained first where a restart takes pods down), each phase followed by its gate.

use super::*;

/// The stages in order (`plan::stages`), a barrier between them. In a stage taken
/// together every host goes at once (up to `--parallel`). In a stage taken in turns, the
/// hosts that come up for the first time or change nothing that runs go together (the
/// initialising server first), then each host that would restart something running
/// goes alone — workers `workersAtOnce` at a time, drained first — and waits for its
/// phase's gate; a host that fails stops the turns, so no second controller goes down
/// while the first is unhealthy. Returns where the etcd snapshot taken before the
/// control plane moved was saved.
pub(super) fn run_stages(
    hosts: &mut [HostRun],
    plan: &Plan,
    opts: &ApplyOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Option<String> {
    let store = Mutex::new(ArtifactStore::default());
    let mut snapshot = None;
    for stage in stages() {
        crate::faults::at("stage-start");
        hold_back_after_a_control_plane_failure(hosts, &stage);
        let etcd = EtcdStage::before(hosts, plan, &stage, opts, progress);
        snapshot = snapshot.or(etcd.snapshot.clone());
        let run = StageRun { stage: &stage, plan, opts, store: &store, progress, api: api_host(hosts, plan) };
        match stage.turns {
            Turns::Together => {
                let mut all: Vec<&mut HostRun> = hosts.iter_mut().filter(|h| !h.failed).collect();
                parallel_refs(&mut all, opts.parallel, |h| run.on(h, false));
            }
            Turns::OneAtATime | Turns::Drained => run.in_turns(hosts),
        }
        etcd.after(&run, hosts);
    }
    store.lock().unwrap().save();
    snapshot
}

/// Once a control-plane host failed, what runs after the API servers stays where it is
/// on every host: a controller-manager, scheduler or kubelet may never be newer than an
/// API server, and the failed host's may be the old release still (its gate failed, or
/// its turn never came), while a controller+worker host that moved on would start them
/// at the new one. Agents would only wait for a control plane to join anyway.
pub(super) fn hold_back_after_a_control_plane_failure(hosts: &mut [HostRun], stage: &Stage) {
    if !stage.phases.iter().any(|p| matches!(p, Phase::Controllers | Phase::Workers)) {
        return;
    }
    let Some(failed) = hosts.iter().find(|h| h.failed && h.plan.control_plane).map(|h| h.plan.node.clone()) else {
        return;
    };
    for h in hosts.iter_mut().filter(|h| !h.failed) {
        let runs_here = h.plan.phases.iter().any(|p| stage.phases.contains(&p.phase) && !p.units.is_empty());
        if runs_here {
            h.fail(format!(
                "not started: {failed} (control plane) failed, so no controller or kubelet moves here (none may be newer than an API server); fix {failed} and run kforge apply again"
            ));
        }
    }
}

/// The control-plane host kubectl runs on as the cluster admin (cordon, drain, gates
/// that ask the API): the first healthy one, where a real API server runs.
pub(super) fn api_host(hosts: &[HostRun], plan: &Plan) -> Option<(Host, String)> {
    let kubectl = plan.kubectl.clone()?;
    let h = hosts.iter().find(|h| !h.failed && h.plan.control_plane)?;
    Some((h.host.clone(), kubectl))
}

/// Whether the stage's phases would restart a unit that runs now on this host (a file
/// it reads or its binary changed, or a restart is pending), of those named in `only`
/// when given: such a host takes its turn.
pub(super) fn disrupts(h: &HostRun, phases: &[Phase], only: Option<&[&str]>) -> bool {
    let changed = |path: &String| {
        h.changed_paths.contains(path)
            || h.plan
                .files()
                .any(|f| &f.path == path && f.handed_over.is_none() && h.facts.hashes.get(path) != Some(&f.sha256))
    };
    h.plan
        .phases
        .iter()
        .filter(|p| phases.contains(&p.phase))
        .flat_map(|p| p.units.iter())
        .filter(|u| u.start && only.is_none_or(|names| names.contains(&u.name.as_str())))
        .any(|u| {
            let active = h.facts.units.get(&u.name).is_some_and(|(active, _)| *active);
            active && (h.facts.pending.contains(&u.name) || u.restart_on.iter().any(changed))
        })
}

/// The units whose restart takes a worker's pods down with it (or may): the node is
/// drained first.
pub(super) const DRAINED_FOR: [&str; 3] = ["containerd.service", "kubelet.service", "k3s-agent.service"];

/// One stage of one apply.
pub(super) struct StageRun<'a> {
    pub(super) stage: &'a Stage,
    pub(super) plan: &'a Plan,
    pub(super) opts: &'a ApplyOptions<'a>,
    pub(super) store: &'a Mutex<ArtifactStore>,
    pub(super) progress: &'a (dyn Fn(&str, &str) + Sync),
    pub(super) api: Option<(Host, String)>,
}

impl StageRun<'_> {
    pub(super) fn api(&self) -> Option<rollout::Api<'_>> {
        self.api.as_ref().map(|(host, kubectl)| rollout::Api { host, kubectl })
    }

    /// The stage's phases on one host, each followed by its gate when it changed
    /// something — or always, for a node about to be uncordoned (a stopped apply may
    /// have restarted its kubelet and never seen it Ready).
    pub(super) fn on(&self, h: &mut HostRun, always_gate: bool) {
        self.on_then(h, always_gate, &mut |_| Ok(()))
    }

    /// `on`, with `before_gate` run on the host between a phase and its gate (a joining
    /// etcd member votes before it can pass its health gate).
    pub(super) fn on_then(
        &self,
        h: &mut HostRun,
        always_gate: bool,
        before_gate: &mut dyn FnMut(&mut HostRun) -> Result<(), String>,
    ) {
        for phase in &self.stage.phases {
            let Some(pp) = h.plan.phases.iter().find(|p| p.phase == *phase).cloned() else { continue };
            (self.progress)(&h.host.node, phase.name());
            let started = Instant::now();
            match run_phase(h, &pp, self.opts, self.store, self.progress) {
                Err(e) => return h.fail(format!("phase {}: {e}", phase.name())),
                Ok(false) if !always_gate => continue,
                Ok(false) => {}
                Ok(true) => h.step(phase.name(), started),
            }
            crate::faults::at("turn-restarted");
            if let Err(e) = before_gate(h) {
                return h.fail(format!("phase {}: {e}", phase.name()));
            }
            let Some(gate) = pp.gate.as_ref() else { continue };
            if self.opts.dry_run {
                let step = format!("gate: {} (waits up to {} s)", gate.description, gate.timeout_secs);
                h.report.steps.push(StepTime { step, seconds: 0.0 });
                continue;
            }
            let on = match (gate.on_api_host, &self.api) {
                (true, Some((api, _))) => api.clone(),
                (true, None) => continue,
                (false, _) => h.host.clone(),
            };
            (self.progress)(&h.host.node, &format!("waiting for {} (up to {} s)", gate.description, gate.timeout_secs));
            let started = Instant::now();
            match rollout::wait(&on, gate) {
                Ok(_) => h.step(&format!("gate: {}", gate.description), started),
                Err(e) => return h.fail(format!("phase {}: {e}", phase.name())),
            }
            crate::faults::at("turn-gated");
        }
    }

    pub(super) fn in_turns(&self, hosts: &mut [HostRun]) {
        // A plan with no API to ask (its control plane a named stand-in: no kubectl)
        // has no Node to drain; its hosts still go one at a time.
        let drained = self.stage.turns == Turns::Drained && self.plan.kubectl.is_some();
        // Nodes an apply that stopped half-way left cordoned take their turn again.
        let leftover = match self.api().filter(|_| drained && !self.opts.dry_run) {
            Some(api) => api.cordoned_by_kforge().unwrap_or_default(),
            None => Vec::new(),
        };
        let phases = &self.stage.phases;
        let turn: Vec<bool> =
            hosts.iter().map(|h| !h.failed && (disrupts(h, phases, None) || leftover.contains(&h.plan.node))).collect();
        // A controller joining a running etcd goes after everyone else, alone (`joins`).
        let away: Vec<bool> = hosts.iter().map(|h| h.failed || h.joining).collect();
        // Everyone else together; in the control plane the initialising server first
        // (K3s starts its datastore there), then the rest.
        let init = &self.plan.init_server;
        let init_first = phases.contains(&Phase::ControlPlane);
        for first in [true, false].into_iter().filter(|f| init_first || !*f) {
            let mut wave: Vec<&mut HostRun> = hosts
                .iter_mut()
                .zip(turn.iter().zip(&away))
                .filter(|(h, (t, away))| !**t && !**away && (!init_first || (h.plan.node == *init) == first))
                .map(|(h, _)| h)
                .collect();
            parallel_refs(&mut wave, self.opts.parallel, |h| self.on(h, false));
        }
        let mut queue: Vec<&mut HostRun> = hosts
            .iter_mut()
            .zip(turn.iter().zip(&away))
            .filter(|(_, (t, away))| **t && !**away)
            .map(|(h, _)| h)
            .collect();
        if queue.is_empty() {
            return;
        }
        let drain_of =
            |h: &HostRun| drained && (disrupts(h, phases, Some(&DRAINED_FOR)) || leftover.contains(&h.plan.node));
        let to_drain: Vec<String> = queue.iter().filter(|h| drain_of(h)).map(|h| h.plan.node.clone()).collect();
        if !to_drain.is_empty() {
            let refusal = match self.api() {
                None if self.opts.dry_run => None,
                None => Some("no control-plane host answers, so nothing can be drained".to_string()),
                Some(api) => match api.drain_preflight(&to_drain, self.plan.workers_at_once, self.opts.drain) {
                    Ok(found) if found.is_empty() => None,
                    Ok(found) => Some(found.join("\n")),
                    Err(e) => Some(format!("could not read what a drain would wait on: {e}")),
                },
            };
            // A dry run reads the same and says what the real apply would refuse.
            if let Some(why) = refusal {
                for h in queue.iter_mut() {
                    if self.opts.dry_run {
                        let step = format!("drain preflight would refuse: {}", why.replace('\n', "\n    "));
                        h.report.steps.push(StepTime { step, seconds: 0.0 });
                    } else {
                        h.fail(format!("drain preflight: {why}"));
                    }
                }
                if !self.opts.dry_run {
                    return;
                }
            }
        }
        let at_once = if drained { self.plan.workers_at_once } else { 1 };
        let mut stopped: Option<String> = None;
        for batch in queue.chunks_mut(at_once.max(1)) {
            if let Some(who) = &stopped {
                for h in batch.iter_mut() {
                    h.fail(format!("not started: {who} failed, so this rollout stopped before this host (fix it and run kforge apply again)"));
                }
                continue;
            }
            parallel_refs(batch, self.opts.parallel, |h| self.turn(h, drain_of(h)));
            if let Some(h) = batch.iter().find(|h| h.failed) {
                stopped = Some(h.plan.node.clone());
            }
        }
    }

    /// One host's turn: drained when asked, its phases and gates, then uncordoned.
    pub(super) fn turn(&self, h: &mut HostRun, drain: bool) {
        let node = h.plan.node.clone();
        if drain && self.opts.dry_run {
            h.report.steps.push(StepTime { step: "cordon and drain (dry run: not done)".into(), seconds: 0.0 });
        }
        // A node the operator cordoned stays cordoned: drained, never uncordoned.
        let mut cordoned_by_hand = false;
        if drain
            && !self.opts.dry_run
            && let Some(api) = self.api()
        {
            (self.progress)(&node, &format!("cordon and drain (up to {} s)", self.plan.drain_timeout_secs));
            let started = Instant::now();
            match api.drain(&node, self.plan.drain_timeout_secs, self.opts.drain) {
                Ok(rollout::Cordon::ByKforge) => h.step("cordon and drain", started),
                Ok(rollout::Cordon::ByHand) => {
                    cordoned_by_hand = true;
                    h.step("drain (cordoned by hand: it stays cordoned)", started);
                }
                Err(e) => return h.fail(e),
            }
            crate::faults::at("turn-drained");
        }
        self.on(h, drain);
        if drain
            && !self.opts.dry_run
            && !cordoned_by_hand
            && let Some(api) = self.api()
        {
            if h.failed {
                h.report.error = h.report.error.take().map(|e| {
                    format!("{e}\n  {node} stays cordoned; the next kforge apply uncordons it once it passes its gate")
                });
                return;
            }
            let started = Instant::now();
            match api.uncordon(&node) {
                Ok(()) => h.step("uncordon", started),
                Err(e) => return h.fail(format!("uncordon: {e}")),
            }
            crate::faults::at("turn-uncordoned");
        }
    }
}

/// A phase about to run its commands, and what they do and wait for (each skipped on
/// the host when already done): a phase that waits minutes for a cluster to come up
/// says what it is waiting for.
pub(super) fn phase_progress(pp: &PhasePlan) -> String {
    let steps: Vec<&str> = pp.commands.iter().map(|c| c.description.as_str()).collect();
    format!("{}: {}", pp.phase.name(), steps.join("; "))
}
