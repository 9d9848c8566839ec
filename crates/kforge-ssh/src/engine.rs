//! The apply engine: phases in order with a barrier between them, hosts in parallel
//! (bounded) inside a phase, a host that fails dropping out without stopping the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use kforge_core::pipeline::{BORINGTUN_DEST, use_userspace_wireguard};
use kforge_core::plan::{ArtifactSource, NodePlan, Phase, PhasePlan, Plan, PlannedArtifact};

use crate::artifacts::{ArtifactStore, find_boringtun};
use crate::facts::{self, Manifest, NodeFacts, PENDING_DIR};
use crate::lock::HostLock;
use crate::remote_script::PhaseScript;
use crate::ssh::{ControlDir, Host, shell_quote};
use crate::{ApplyError, ApplyOptions, ApplyReport, HostReport};

/// One host's state through the apply.
struct HostRun {
    host: Host,
    plan: NodePlan,
    facts: NodeFacts,
    report: HostReport,
    /// What kforge has written, as it will be recorded on the host.
    manifest: BTreeMap<String, String>,
    /// Files and artifacts changed by this apply so far (any phase): a binary
    /// uploaded in `artifacts` restarts its unit in a later phase.
    changed_paths: BTreeSet<String>,
    failed: bool,
}

impl HostRun {
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

fn run(
    plan: Plan,
    opts: &ApplyOptions,
    control_dir: &std::path::Path,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<ApplyReport, ApplyError> {
    let mut hosts: Vec<HostRun> = Vec::new();
    for np in plan.nodes.iter() {
        let t = opts
            .targets
            .iter()
            .find(|t| t.node == np.node)
            .ok_or_else(|| ApplyError::Setup(format!("{}: no SSH target (set ssh.host or endpoint)", np.node)))?;
        hosts.push(HostRun {
            host: Host {
                node: np.node.clone(),
                target: t.host.clone(),
                user: t.user.clone(),
                port: t.port,
                ssh_config: opts.ssh_config.clone(),
                control_dir: control_dir.to_path_buf(),
            },
            plan: np.clone(),
            facts: NodeFacts::default(),
            report: HostReport { node: np.node.clone(), converged: true, ..HostReport::default() },
            manifest: BTreeMap::new(),
            changed_paths: BTreeSet::new(),
            failed: false,
        });
    }

    // Facts, in one round trip per host.
    parallel(&mut hosts, opts.parallel, |h| {
        progress(&h.host.node, "facts");
        match facts::gather(&h.host, &h.plan) {
            Ok(f) => {
                h.manifest = f.manifest.clone();
                h.facts = f;
            }
            Err(e) => h.fail(e),
        }
    });
    if hosts.iter().all(|h| h.failed) {
        return Ok(finish(&plan, opts, hosts));
    }

    // Preflight over every reachable host: refuse before touching anything.
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let healthy: Vec<(&NodePlan, &NodeFacts)> =
        hosts.iter().filter(|h| !h.failed).map(|h| (&h.plan, &h.facts)).collect();
    let problems = crate::preflight::check(&healthy, now, plan.mesh_port);
    if !problems.is_empty() {
        hosts.iter().for_each(|h| h.host.close());
        return Err(ApplyError::Preflight(problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")));
    }

    // Hosts without the WireGuard kernel module run the userspace implementation.
    let boringtun = find_boringtun();
    for h in hosts.iter_mut().filter(|h| !h.failed && !h.facts.wireguard_kernel) {
        h.report.userspace_wireguard = true;
        let upload = if h.facts.boringtun {
            None
        } else {
            match &boringtun {
                Some(path) => Some(PlannedArtifact {
                    name: "boringtun-cli".into(),
                    dest: BORINGTUN_DEST.into(),
                    stand_in: false,
                    mode: 0o755,
                    sha256: None,
                    source: ArtifactSource::Path { path: path.display().to_string() },
                }),
                None => {
                    h.fail("no WireGuard kernel module and no boringtun-cli on the host or on this workstation to upload\n  help: cargo install boringtun-cli --locked (on this workstation)");
                    continue;
                }
            }
        };
        use_userspace_wireguard(&mut h.plan, &opts.mesh_interface, upload);
        progress(&h.host.node, "no WireGuard kernel module: using userspace boringtun-cli");
    }

    // One apply at a time per host (not needed to look).
    let mut locks: Vec<HostLock> = Vec::new();
    if !opts.dry_run {
        let acquired: Mutex<Vec<HostLock>> = Mutex::new(Vec::new());
        parallel(&mut hosts, opts.parallel, |h| match HostLock::acquire(&h.host) {
            Ok(l) => acquired.lock().unwrap().push(l),
            Err(e) => h.fail(e),
        });
        locks = acquired.into_inner().unwrap();
    }

    let store = Mutex::new(ArtifactStore::default());
    for phase in Phase::ALL {
        // Agents join a control plane; without a healthy one they would only wait.
        if phase == Phase::Workers && hosts.iter().any(|h| h.failed && h.plan.control_plane) {
            for h in hosts.iter_mut().filter(|h| !h.failed && !h.plan.control_plane) {
                h.fail("skipped: a server failed, so there is no healthy control plane to join");
            }
        }
        // The initialising server starts alone, then the other servers (k3s start order).
        let waves: Vec<Vec<bool>> = if phase == Phase::ControlPlane {
            vec![
                hosts.iter().map(|h| h.plan.node == plan.init_server).collect(),
                hosts.iter().map(|h| h.plan.node != plan.init_server).collect(),
            ]
        } else {
            vec![vec![true; hosts.len()]]
        };
        for wave in waves {
            let mut selected: Vec<&mut HostRun> =
                hosts.iter_mut().zip(wave).filter(|(h, take)| *take && !h.failed).map(|(h, _)| h).collect();
            parallel_refs(&mut selected, opts.parallel, |h| {
                let Some(pp) = h.plan.phases.iter().find(|p| p.phase == phase).cloned() else { return };
                progress(&h.host.node, phase.name());
                if let Err(e) = run_phase(h, &pp, opts, &store) {
                    h.fail(format!("phase {}: {e}", phase.name()));
                }
            });
        }
    }

    // Files kforge wrote before that the plan no longer has.
    parallel(&mut hosts, opts.parallel, |h| {
        if h.failed {
            return;
        }
        let planned: BTreeSet<String> = h.plan.files().map(|f| f.path.clone()).collect();
        let gone: Vec<String> = h.manifest.keys().filter(|p| !planned.contains(*p)).cloned().collect();
        if gone.is_empty() {
            return;
        }
        h.report.files_removed.extend(gone.iter().cloned());
        if opts.dry_run {
            return;
        }
        for g in &gone {
            h.manifest.remove(g);
        }
        let daemon_reload = gone.iter().any(|p| p.starts_with("/etc/systemd/system/"));
        let script = PhaseScript {
            removes: gone,
            daemon_reload,
            manifest_json: Some(manifest_json(&plan.cluster, &h.manifest)),
            ..PhaseScript::default()
        };
        if let Err(e) = h.host.run_script("remove obsolete files", &script.render()) {
            h.fail(e);
        }
    });
    drop(locks);
    Ok(finish(&plan, opts, hosts))
}

fn finish(plan: &Plan, opts: &ApplyOptions, hosts: Vec<HostRun>) -> ApplyReport {
    for h in &hosts {
        h.host.close();
    }
    ApplyReport {
        cluster: plan.cluster.clone(),
        dry_run: opts.dry_run,
        hosts: hosts.into_iter().map(|h| h.report).collect(),
    }
}

fn run_phase(h: &mut HostRun, pp: &PhasePlan, opts: &ApplyOptions, store: &Mutex<ArtifactStore>) -> Result<(), String> {
    // Artifacts: upload only where the host's copy differs.
    let mut changed_paths = std::mem::take(&mut h.changed_paths);
    let result = run_phase_inner(h, pp, opts, store, &mut changed_paths);
    h.changed_paths = changed_paths;
    result
}

fn run_phase_inner(
    h: &mut HostRun,
    pp: &PhasePlan,
    opts: &ApplyOptions,
    store: &Mutex<ArtifactStore>,
    changed_paths: &mut BTreeSet<String>,
) -> Result<(), String> {
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
        let (dir, file) = a.dest.rsplit_once('/').unwrap_or(("/", &a.dest));
        let tmp = format!("{dir}/.{file}.kforge-tmp-upload");
        // Units that run this binary are marked pending before it lands, so a crash
        // between upload and restart still restarts them on the next apply.
        let pending: String = h
            .plan
            .phases
            .iter()
            .flat_map(|p| p.units.iter())
            .filter(|u| u.start && u.restart_on.contains(&a.dest))
            .map(|u| format!("touch {}; ", shell_quote(&format!("{PENDING_DIR}/{}", u.name))))
            .collect();
        let script = format!(
            "set -e; umask 077; mkdir -p {d} {PENDING_DIR}; cat > {t}; echo '{sum}  {t}' | sha256sum -c --status || {{ rm -f {t}; echo 'upload corrupted' >&2; exit 1; }}; chmod {mode:o} {t}; sync {t}; {pending}mv -f {t} {dest}",
            d = shell_quote(dir),
            t = shell_quote(&tmp),
            sum = local.sha256,
            mode = a.mode,
            dest = shell_quote(&a.dest)
        );
        h.host.upload(&format!("upload {}", a.name), &local.file, &script).map_err(|e| e.to_string())?;
        h.facts.hashes.insert(a.dest.clone(), local.sha256.clone());
    }

    let mut script = PhaseScript::default();
    if !h.facts.stale_temp_files.is_empty() {
        script.clean_temp_files = std::mem::take(&mut h.facts.stale_temp_files);
    }
    for f in &pp.files {
        match h.facts.hashes.get(&f.path) {
            Some(sum) if sum == &f.sha256 => {}
            Some(_) => {
                h.report.files_changed.push(f.path.clone());
                changed_paths.insert(f.path.clone());
                script.writes.push(f.clone());
            }
            None => {
                h.report.files_added.push(f.path.clone());
                changed_paths.insert(f.path.clone());
                script.writes.push(f.clone());
            }
        }
    }
    script.daemon_reload = script.writes.iter().any(|f| f.path.starts_with("/etc/systemd/system/"));
    // Guarded commands (sysctl, unpacking, addons) run when this phase changed anything.
    if phase_changed || !script.writes.is_empty() {
        script.commands = pp.commands.clone();
    }
    for u in pp.units.iter().filter(|u| u.start) {
        let (active, enabled) = h.facts.units.get(&u.name).copied().unwrap_or((false, false));
        let inputs_changed = u.restart_on.iter().any(|p| changed_paths.contains(p));
        let pending = h.facts.pending.contains(&u.name);
        if u.enable && !enabled {
            script.enables.push(u.name.clone());
        }
        if inputs_changed || pending || !active {
            // A reload keeps a running unit's connections (wg syncconf, nft -f) — unless
            // the unit definition itself changed.
            let unit_def_changed =
                u.restart_on.iter().any(|p| p.starts_with("/etc/systemd/system/") && changed_paths.contains(p));
            let reload = u.reload_command.clone().filter(|_| active && !pending && !unit_def_changed);
            script.restarts.push((u.name.clone(), reload));
        }
    }
    for f in &pp.files {
        h.manifest.insert(f.path.clone(), f.sha256.clone());
    }
    if script.writes.is_empty()
        && script.restarts.is_empty()
        && script.enables.is_empty()
        && script.commands.is_empty()
        && script.clean_temp_files.is_empty()
    {
        return Ok(());
    }
    script.manifest_json = Some(manifest_json(&h.plan.node, &h.manifest));
    if opts.dry_run {
        h.report.units_restarted.extend(script.restarts.iter().map(|(u, _)| u.clone()));
        return Ok(());
    }
    let out = h.host.run_script(&format!("phase {}", pp.phase.name()), &script.render()).map_err(|e| e.to_string())?;
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
    Ok(())
}

fn manifest_json(cluster: &str, files: &BTreeMap<String, String>) -> String {
    serde_json::to_string(&Manifest { cluster: cluster.into(), files: files.clone() }).expect("manifest serializes")
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
