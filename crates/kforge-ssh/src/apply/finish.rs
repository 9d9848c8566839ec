//! After the stages: what kforge wrote before that the plan no longer has is removed,
//! each host is left its bootstrap script and record, and the report is made.

use super::*;

/// After the phases: remove what kforge wrote before that the plan no longer has, and
/// leave the host its own bootstrap script (this plan, this host's capabilities), so
/// re-running it by hand converges to the same state without kforge.
pub(super) fn finish_hosts(hosts: &mut [HostRun], plan: &Plan, opts: &ApplyOptions) {
    parallel(hosts, opts.parallel, |h| {
        let planned: BTreeSet<String> = h.plan.files().map(|f| f.path.clone()).collect();
        let gone: Vec<String> = h.manifest.keys().filter(|p| !planned.contains(*p)).cloned().collect();
        h.report.files_removed.extend(gone.iter().cloned());
        // The bootstrap as `render` writes it (the host decides its capabilities at
        // boot), so a host booted from user-data already holds this very script.
        let bootstrap = PlannedFile::new(BOOTSTRAP_SCRIPT, 0o700, render_bootstrap(plan, &h.boot));
        let bootstrap_current = h.facts.hashes.get(BOOTSTRAP_SCRIPT) == Some(&bootstrap.sha256);
        // A host that was already as planned before this apply (its bootstrap, another
        // tool) but whose record lacks files is recorded now: nothing else is written.
        for f in h.plan.files().filter(|f| f.handed_over.is_none()) {
            h.manifest.insert(f.path.clone(), f.sha256.clone());
        }
        // A host its bootstrap recorded is apply's from now on: the record says so.
        let from_bootstrap = h.facts.manifest_by == Some(Delivery::Bootstrap) && h.recorded == h.facts.manifest;
        let unrecorded = h.manifest != h.recorded || from_bootstrap;
        h.report.takeover = takeover(h, unrecorded);
        // A bootstrap that failed here is finished by this apply: status and doctor stop
        // naming it (the outcome says it was superseded).
        let superseded = match &h.facts.bootstrap {
            Some(facts::BootstrapOutcome::Failed { step, .. }) if !h.failed => Some(step.clone()),
            _ => None,
        };
        if let Some(step) = &superseded {
            h.report.repaired.push(format!("its bootstrap had failed at `{step}`: this apply finished the host"));
        }
        if opts.dry_run
            || (gone.is_empty()
                && bootstrap_current
                && h.changed_paths.is_empty()
                && !unrecorded
                && superseded.is_none())
        {
            return;
        }
        for g in &gone {
            h.manifest.remove(g);
        }
        h.facts.hashes.insert(BOOTSTRAP_SCRIPT.into(), bootstrap.sha256.clone());
        for g in &gone {
            h.facts.hashes.remove(g);
        }
        // Every digest the apply now knows (read, written or verified), for the paths
        // the next facts ask about: that apply finds its cache current and writes nothing.
        let digests = crate::facts::watched_paths(&h.plan)
            .into_iter()
            .filter_map(|p| Some((p.clone(), h.facts.hashes.get(&p)?.clone())))
            .collect();
        let script = PhaseWork {
            daemon_reload: gone.iter().any(|p| paths::is_systemd_file(p)),
            removes: gone.iter().map(|p| (p.clone(), paths::unit_of_file(p).map(String::from))).collect(),
            writes: [(!bootstrap_current).then_some(bootstrap), superseded.map(|_| outcome_superseded())]
                .into_iter()
                .flatten()
                .collect(),
            manifest_json: (!gone.is_empty() || unrecorded).then(|| manifest_json(h)),
            digests,
            ..PhaseWork::default()
        };
        match h.host.run_script("finish", &remote_script::render(&script)) {
            Ok(_) => h.recorded = h.manifest.clone(),
            Err(e) => h.fail(e),
        }
    });
}

/// The bootstrap outcome an apply leaves where the bootstrap had failed.
pub(super) fn outcome_superseded() -> PlannedFile {
    PlannedFile::new(paths::BOOTSTRAP_OUTCOME, 0o600, "superseded\tkforge apply finished the host\n")
}

/// How this apply came to manage a host it did not converge itself: one whose
/// bootstrap (user-data, a rendered tree) recorded it, or — with no record at all —
/// one another tool set up exactly as planned (nothing written, nothing restarted).
pub(super) fn takeover(h: &HostRun, unrecorded: bool) -> Option<Takeover> {
    let r = &h.report;
    let untouched = r.files_written() == 0
        && r.units_restarted.is_empty()
        && r.units_reloaded.is_empty()
        && r.artifacts_uploaded.is_empty();
    match h.facts.manifest_by {
        _ if h.failed => None,
        Some(Delivery::Bootstrap) => Some(Takeover::FromBootstrap),
        None if unrecorded && untouched => Some(Takeover::Adopted),
        _ => None,
    }
}

pub(super) fn finish(plan: &Plan, opts: &ApplyOptions, hosts: Vec<HostRun>) -> ApplyReport {
    crate::ssh::close_all(hosts.iter().map(|h| &h.host));
    ApplyReport {
        cluster: plan.cluster.clone(),
        dry_run: opts.dry_run,
        hosts: hosts.into_iter().map(|h| h.report).collect(),
        snapshot: None,
        removals: Vec::new(),
        refusals: Vec::new(),
    }
}
