//! One phase on one host: what its facts say is missing, uploaded and run as one script.

use super::*;

/// One phase on one host; `Ok(true)` when it changed anything there (or, dry, would).
pub(super) fn run_phase(
    h: &mut HostRun,
    pp: &PhasePlan,
    opts: &ApplyOptions,
    store: &Mutex<ArtifactStore>,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<bool, String> {
    // Artifacts: upload only where the host's copy differs.
    let mut changed_paths = std::mem::take(&mut h.changed_paths);
    let result = run_phase_inner(h, pp, opts, store, &mut changed_paths, progress);
    h.changed_paths = changed_paths;
    result
}

pub(super) fn run_phase_inner(
    h: &mut HostRun,
    pp: &PhasePlan,
    opts: &ApplyOptions,
    store: &Mutex<ArtifactStore>,
    changed_paths: &mut BTreeSet<String>,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<bool, String> {
    let mut phase_changed = false;
    for a in &pp.artifacts {
        let local = store.lock().unwrap().resolve(a, &opts.base_dir, &opts.cache_dir)?;
        if h.facts.hashes.get(&a.dest) == Some(&local.sha256) {
            continue;
        }
        h.report.artifacts_uploaded.push(a.dest.clone());
        changed_paths.insert(a.dest.clone());
        phase_changed = true;
        if opts.dry_run {
            continue;
        }
        // Units that run this binary are marked pending before it lands, so a crash
        // between upload and restart still restarts them on the next apply.
        let mut steps: Vec<Step> = h
            .plan
            .units()
            .filter(|u| u.start && u.restart_on.contains(&a.dest))
            .map(|u| Step::MarkPending(u.name.clone()))
            .collect();
        steps.push(Step::Receive { dest: a.dest.clone(), sha256: local.sha256.clone(), mode: a.mode });
        let script = to_shell(&[format!("kforge apply: receive {}", a.name)], &steps);
        h.host.upload(&format!("upload {}", a.name), &local.file, &script).map_err(|e| e.to_string())?;
        h.facts.hashes.insert(a.dest.clone(), local.sha256.clone());
    }
    let (mut script, repairs) = decide(h, pp, phase_changed, changed_paths);
    if script.is_empty() {
        return Ok(phase_changed);
    }
    script.manifest_json = Some(manifest_json(h));
    if opts.dry_run {
        for r in &script.restarts {
            let list = if r.reload.is_some() { &mut h.report.units_reloaded } else { &mut h.report.units_restarted };
            list.push(r.unit.clone());
        }
        h.report.repaired.extend(repairs);
        return Ok(true);
    }
    if !script.commands.is_empty() {
        progress(&h.host.node, &phase_progress(pp));
    }
    let out = h
        .host
        .run_script(&format!("phase {}", pp.phase.name()), &remote_script::render(&script))
        .map_err(|e| e.to_string())?;
    h.recorded = h.manifest.clone();
    for line in out.lines() {
        let mut w = line.splitn(3, ' ');
        match (w.next(), w.next(), w.next()) {
            (Some("KF"), Some("restarted"), Some(u)) => h.report.units_restarted.push(u.into()),
            (Some("KF"), Some("reloaded"), Some(u)) => h.report.units_reloaded.push(u.into()),
            (Some("KF"), Some("cleaned"), Some(_)) => h.report.temp_files_cleaned += 1,
            _ => {}
        }
    }
    for f in &script.writes {
        h.facts.hashes.insert(f.path.clone(), f.sha256.clone());
    }
    h.report.repaired.extend(repairs);
    Ok(true)
}

/// What one phase must do on this host, from its facts (nothing is run): the files
/// that differ, the commands (all when the phase changed anything, else those whose
/// recheck failed), the units to enable and to (re)start — in the phase order the
/// bootstrap uses too (`PhaseWork`). Returns the repairs it makes, to report.
pub(super) fn decide(
    h: &mut HostRun,
    pp: &PhasePlan,
    phase_changed: bool,
    changed_paths: &mut BTreeSet<String>,
) -> (PhaseWork, Vec<String>) {
    let mut script = PhaseWork { pending_marks: true, ..PhaseWork::default() };
    if !h.facts.stale_temp_files.is_empty() {
        script.clean_temp_files = std::mem::take(&mut h.facts.stale_temp_files);
    }
    for f in &pp.files {
        match (h.facts.hashes.get(&f.path), &f.handed_over) {
            (Some(sum), _) if sum == &f.sha256 => {}
            // K3s owns it since its first start: rewriting it would stop K3s.
            (Some(_), Some(owner)) => h.report.kept.push(format!(
                "{}: owned by {} since its first start, differs from kforge's plan and is left as it is (change it with `{}`)",
                f.path, owner.to, owner.change_with
            )),
            (Some(_), None) => {
                h.report.files_changed.push(f.path.clone());
                changed_paths.insert(f.path.clone());
                script.writes.push(f.clone());
            }
            (None, _) => {
                h.report.files_added.push(f.path.clone());
                changed_paths.insert(f.path.clone());
                script.writes.push(f.clone());
            }
        }
    }
    script.daemon_reload = script.writes.iter().any(|f| f.kind == FileKind::SystemdUnit);
    let mut repairs = Vec::new();
    // A unit restarting because what it runs changed (now, or in a run that died before
    // the restart): the phase's commands put the new release in place first.
    let mut moves = false;
    for u in pp.units.iter().filter(|u| u.start) {
        let (active, enabled) = h.facts.units.get(&u.name).copied().unwrap_or((false, false));
        let inputs_changed = u.restart_on.iter().any(|p| changed_paths.contains(p));
        let pending = h.facts.pending.contains(&u.name);
        let drift = u.recheck.as_ref().filter(|r| h.facts.failed_rechecks.contains(&r.test));
        if u.enable && !enabled {
            script.enables.push(u.name.clone());
        }
        moves |= inputs_changed || pending;
        if inputs_changed || pending || !active || drift.is_some() {
            // A reload keeps a running unit's connections (wg syncconf, nft -f) — unless
            // the unit definition itself changed.
            let unit_def_changed = h.plan.files().any(|f| {
                f.kind == FileKind::SystemdUnit && u.restart_on.contains(&f.path) && changed_paths.contains(&f.path)
            });
            // A restart left pending by a run that died is a reload when that run would
            // have reloaded (its mark says so): the mesh keeps its routes.
            let finishes_by_reload = !pending || h.facts.pending_reload.contains(&u.name);
            let reload = u.reload_command.clone().filter(|_| active && finishes_by_reload && !unit_def_changed);
            // Only drift brings this unit here: the restart (or reload) is a repair.
            if let Some(r) = drift.filter(|_| !inputs_changed && !pending && active) {
                let how = if reload.is_some() { "reload" } else { "restart" };
                repairs.push(format!("{how} {}: {}", u.name, r.drift));
            }
            script.restarts.push(remote_script::restart(&u.name, h.plan.unit_inputs(u), reload));
        }
    }
    // Guarded commands (sysctl, a release put in place, addons) run when this phase
    // changed anything or one of its units moves; otherwise only those whose recheck
    // failed in the facts (an imported image deleted, forwarding switched off): kforge
    // repairs that drift though no file of it changed.
    if phase_changed || !script.writes.is_empty() || moves {
        script.commands = pp.commands.clone();
    } else {
        let drifted = |c: &&PlannedCommand| c.recheck.as_ref().is_some_and(|t| h.facts.failed_rechecks.contains(t));
        script.commands = pp.commands.iter().filter(drifted).cloned().collect();
        repairs.splice(0..0, script.commands.iter().map(|c| c.description.clone()));
    }
    // A handed-over file is not kforge's once written: never recorded, never removed.
    for f in pp.files.iter().filter(|f| f.handed_over.is_none()) {
        h.manifest.insert(f.path.clone(), f.sha256.clone());
    }
    (script, repairs)
}

pub(super) fn manifest_json(h: &HostRun) -> String {
    let m = Manifest {
        cluster: h.cluster.clone(),
        node: h.plan.node.clone(),
        releases: h.releases.clone(),
        files: h.manifest.clone(),
        by: Delivery::Apply,
    };
    m.to_json()
}
