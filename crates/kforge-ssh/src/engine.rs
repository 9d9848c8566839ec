//! The apply engine: phases in order with a barrier between them, hosts in parallel
//! (bounded) inside a phase, a host that fails dropping out without stopping the rest.

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

/// The upgrade rules over what runs now on every reachable host (each host's running
/// releases, from its facts), before anything is touched.
fn check_versions(hosts: &mut [HostRun], opts: &ApplyOptions) -> Result<(), ApplyError> {
    let mut running = Vec::new();
    for h in hosts.iter_mut().filter(|h| !h.failed) {
        let r = h.facts.running_versions(&h.plan.node);
        h.report.versions_before = r.versions.iter().map(|(c, v)| (c.key().to_string(), v.to_string())).collect();
        running.push(r);
    }
    (opts.check_versions)(&running).map_err(ApplyError::Preflight)
}

/// Every artifact that comes from this workstation is there: reported once per file,
/// before any host is contacted (not once per host, halfway through a phase).
fn local_artifacts_exist(plan: &Plan, opts: &ApplyOptions) -> Result<(), ApplyError> {
    let mut missing: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for a in plan.nodes.iter().flat_map(|n| n.phases.iter().flat_map(|p| p.artifacts.iter())) {
        if let ArtifactSource::Path { path } = &a.source
            && !opts.base_dir.join(path).is_file()
        {
            // As the operator wrote it when the cluster file is in the current directory.
            let shown = match opts.base_dir.as_os_str().to_str() {
                Some("" | ".") => path.clone(),
                _ => opts.base_dir.join(path).display().to_string(),
            };
            missing.entry(shown).or_default().insert(&a.name);
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = missing
        .iter()
        .map(|(file, names)| format!("  {file} ({})", names.iter().copied().collect::<Vec<_>>().join(", ")))
        .collect();
    Err(ApplyError::Setup(format!(
        "{} local artifact{} missing; no host was contacted:\n{}\n  help: put the files there (paths are relative to the cluster file), or set spec.artifacts.<name>.url + sha256",
        missing.len(),
        if missing.len() == 1 { " is" } else { "s are" },
        lines.join("\n")
    )))
}

/// One `HostRun` per node, with how to reach it (nothing is contacted yet).
fn connect(plan: &Plan, opts: &ApplyOptions, control_dir: &std::path::Path) -> Result<Vec<HostRun>, ApplyError> {
    plan.nodes
        .iter()
        .map(|np| {
            let t =
                opts.targets.iter().find(|t| t.node == np.node).ok_or_else(|| {
                    ApplyError::Setup(format!("{}: no SSH target (set ssh.host or endpoint)", np.node))
                })?;
            Ok(HostRun {
                host: Host::of(t, opts.ssh_config.clone(), control_dir),
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
            })
        })
        .collect()
}

/// Facts, in one round trip per host. What running processes said they are is kept on
/// the workstation (`running-versions` in the cache directory: node, process id, line),
/// so the next apply asks no process twice and writes nothing on a host for it.
fn gather_facts(hosts: &mut [HostRun], opts: &ApplyOptions, progress: &(dyn Fn(&str, &str) + Sync)) {
    let file = opts.cache_dir.join("running-versions");
    let before = std::fs::read_to_string(&file).unwrap_or_default();
    let known: BTreeMap<(String, String), String> = before
        .lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            Some(((w.next()?.to_string(), w.next()?.to_string()), w.next()?.to_string()))
        })
        .collect();
    parallel(hosts, opts.parallel, |h| {
        progress(&h.host.node, "facts");
        let mine: BTreeMap<String, String> =
            known.iter().filter(|((n, _), _)| *n == h.plan.node).map(|((_, id), l)| (id.clone(), l.clone())).collect();
        // A dry run (and plan --observe) writes nothing on a host, not even its caches.
        let cache = if opts.dry_run { facts::Cache::Leave } else { facts::Cache::Update };
        match facts::gather(&h.host, &h.plan, &mine, cache) {
            Ok(f) => {
                h.manifest = f.manifest.clone();
                h.recorded = f.manifest.clone();
                // Files kforge once wrote that another program owns now (K3s's CA
                // files on every server) leave kforge's record, so nothing removes them.
                h.manifest.retain(|path, _| !h.plan.released.contains(path));
                h.facts = f;
            }
            Err(e) => h.fail(e),
        }
    });
    // What runs now on the hosts that answered; the others' entries are kept as they were.
    let answered: BTreeSet<&String> = hosts.iter().filter(|h| !h.failed).map(|h| &h.plan.node).collect();
    let mut now: BTreeMap<(String, String), String> =
        known.into_iter().filter(|((n, _), _)| !answered.contains(n)).collect();
    for h in hosts.iter().filter(|h| !h.failed) {
        now.extend(h.facts.learned_versions.iter().map(|(id, l)| ((h.plan.node.clone(), id.clone()), l.clone())));
    }
    let text: String = now.iter().map(|((n, id), l)| format!("{n} {id} {l}\n")).collect();
    if text != before && std::fs::create_dir_all(&opts.cache_dir).is_ok() {
        let tmp = file.with_extension("tmp");
        if std::fs::write(&tmp, text).is_ok() {
            let _ = std::fs::rename(&tmp, &file);
        }
    }
}

/// Preflight over every reachable host: refuse before touching anything. A foreign
/// program holding what kforge needs is a refusal too, unless the operator hands its
/// unit over (`--hand-over`: queued here as `HostRun::handing_over`). A dry run never
/// refuses: what it found comes back to be shown with the rest of its diff.
fn preflight(hosts: &mut [HostRun], plan: &Plan, opts: &ApplyOptions) -> Result<Vec<String>, ApplyError> {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    let healthy: Vec<(&NodePlan, &NodeFacts)> =
        hosts.iter().filter(|h| !h.failed).map(|h| (&h.plan, &h.facts)).collect();
    let mut problems = crate::preflight::check(&healthy, now, plan.mesh_port);
    for h in hosts.iter_mut().filter(|h| !h.failed) {
        if let Some(foreign) = foreign_record(h, &plan.cluster) {
            if opts.replace_foreign_record {
                // Nothing that record lists is kforge's to remove, nor its to record.
                h.manifest.clear();
                h.recorded.clear();
                h.facts.manifest.clear();
                h.facts.manifest_by = None;
                h.report.steps.push(StepTime {
                    step: format!(
                        "--replace-foreign-record: {foreign}, replaced; the files it lists are left where they are"
                    ),
                    seconds: 0.0,
                });
            } else {
                problems.push(format!(
                    "{}: carries {foreign} (/var/lib/kforge/manifest.json): a re-purposed machine? kforge would take that record's files for its own and remove them\n  help: if this host is to be {} now: kforge apply --replace-foreign-record (the record is replaced; the files it lists are left where they are: check them yourself); or reset it with that cluster's kforge",
                    h.plan.node, h.plan.node
                ));
            }
        }
        for c in crate::preflight::conflicts(&h.plan, &h.facts, plan.mesh_port, &plan.mesh_interface) {
            match c.unit_to_hand_over().filter(|u| opts.hand_over.iter().any(|h| h == u)).map(String::from) {
                Some(unit) => {
                    let held = format!("it held {} for {}", c.socket, c.holder.program);
                    if opts.dry_run {
                        h.report.handed_over.push(format!("would stop and disable {unit} ({held})"));
                    } else if !h.handing_over.iter().any(|(u, _)| *u == unit) {
                        h.handing_over.push((unit, held));
                    }
                }
                None => problems.push(c.to_string()),
            }
        }
    }
    if problems.is_empty() || opts.dry_run {
        return Ok(problems);
    }
    Err(ApplyError::Preflight(problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")))
}

/// The record of another cluster (or of another node) this host carries, described:
/// `None` when it has none or it is this node's.
fn foreign_record(h: &HostRun, cluster: &str) -> Option<String> {
    let (c, n) = h.facts.manifest_owner.as_ref()?;
    let other_node = !n.is_empty() && *n != h.plan.node;
    (c != cluster || other_node).then(|| {
        format!(
            "the record of kforge cluster `{c}`{}, {} files",
            if n.is_empty() { String::new() } else { format!(", node `{n}`") },
            h.facts.manifest.len()
        )
    })
}

/// Units the operator handed over (`--hand-over`) stop and are disabled before the
/// stages, each said on the host's progress line and in its report.
fn hand_over(hosts: &mut [HostRun], opts: &ApplyOptions, progress: &(dyn Fn(&str, &str) + Sync)) {
    parallel(hosts, opts.parallel, |h| {
        for (unit, held) in std::mem::take(&mut h.handing_over) {
            progress(&h.host.node, &format!("--hand-over: stopping and disabling {unit} ({held})"));
            let script = format!("systemctl disable --now -q {}", crate::ssh::shell_quote(&unit));
            match h.host.run_script(&format!("hand over {unit}"), &script) {
                Ok(_) => h.report.handed_over.push(format!("stopped and disabled {unit} ({held})")),
                Err(e) => return h.fail(format!("--hand-over {unit}: {e}")),
            }
        }
    });
}

/// The plan's packages each host's facts found missing, in one `apt-get install` per
/// host, before any phase needs them (the bootstrap's first step installs the same
/// list). A host whose install fails drops out with apt's own words and nothing of the
/// plan started; a host that lacks nothing runs no apt at all.
fn install_packages(hosts: &mut [HostRun], opts: &ApplyOptions, progress: &(dyn Fn(&str, &str) + Sync)) {
    parallel(hosts, opts.parallel, |h| {
        let missing = h.facts.missing_packages(&h.plan);
        if missing.is_empty() {
            return;
        }
        h.report.packages_installed = missing.iter().map(|p| p.name().to_string()).collect();
        let what = format!("install packages: {} (apt-get)", h.report.packages_installed.join(", "));
        if opts.dry_run {
            h.report.steps.push(StepTime { step: what, seconds: 0.0 });
            return;
        }
        progress(
            &h.host.node,
            &format!("{what}, from the host's package sources (apt waits up to 5 min for its lock)"),
        );
        let started = Instant::now();
        let script = to_shell(&["kforge apply: the plan's packages this host lacks".into()], &[Step::Install(missing)]);
        match h.host.run_script("install packages", &script) {
            Ok(_) => h.step(&what, started),
            Err(e) => {
                h.report.packages_installed.clear();
                h.fail(format!("packages: {e}"));
            }
        }
    });
}

/// What the cluster file cannot say about a host (its CPU architecture, its kernel's
/// WireGuard) is an input to planning: every host is planned again with what its facts
/// found. A host the cluster file cannot serve (no source of an artifact for its
/// architecture) refuses the whole apply before anything is touched.
fn plan_for_capabilities(
    hosts: &mut [HostRun],
    plan: &Plan,
    opts: &ApplyOptions,
    progress: &(dyn Fn(&str, &str) + Sync),
) -> Result<(), ApplyError> {
    let boringtun = find_boringtun();
    let mut refusals = Vec::new();
    let running_servers = k3s_running_servers(hosts);
    for h in hosts.iter_mut().filter(|h| !h.failed) {
        h.report.arch = h.facts.arch.clone();
        let mut caps = HostCaps { arch: Arch::from_uname(&h.facts.arch), ..HostCaps::default() };
        if !h.facts.wireguard_kernel {
            h.report.userspace_wireguard = true;
            caps.userspace_wireguard = true;
            // The workstation's boringtun-cli whenever it has one, whether or not the
            // host has it yet: the plan (and so the host's bootstrap script) is the same
            // at every apply, and the upload happens only where the host's copy differs.
            caps.boringtun_upload = match (&boringtun, h.facts.boringtun) {
                (Some(path), _) => Some(path.display().to_string()),
                (None, true) => None,
                (None, false) => {
                    h.fail("no WireGuard kernel module and no boringtun-cli on the host or on this workstation to upload\n  help: cargo install boringtun-cli --locked (on this workstation)");
                    continue;
                }
            };
            progress(&h.host.node, "no WireGuard kernel module: using userspace boringtun-cli");
        }
        if h.plan.node == plan.init_server {
            caps.k3s_join_running = match k3s_founder_joins(h, &running_servers, &caps, opts) {
                Ok(joins) => joins,
                Err(why) => {
                    refusals.push(format!("{}: {why}", h.plan.node));
                    continue;
                }
            };
            if caps.k3s_join_running && !h.facts.k3s_datastore {
                let what = format!(
                    "joins the cluster {} run{} (its own datastore is gone): no second cluster-init",
                    running_servers.join(", "),
                    if running_servers.len() == 1 { "s" } else { "" }
                );
                progress(&h.host.node, &what);
                h.report.steps.push(StepTime { step: what, seconds: 0.0 });
            }
        }
        match (opts.replan)(&h.plan.node, &h.facts.arch, &caps) {
            Ok(plan) => h.plan = plan,
            Err(why) => refusals.push(format!("{}: {why}", h.plan.node)),
        }
    }
    if refusals.is_empty() { Ok(()) } else { Err(ApplyError::Preflight(refusals.join("\n"))) }
}

/// The K3s servers that answered with a cluster of their own: a datastore on disk, or
/// K3s running.
fn k3s_running_servers(hosts: &[HostRun]) -> Vec<String> {
    let runs = |h: &&HostRun| {
        h.facts.k3s_datastore
            || h.facts.unit_states.get(kforge_core::k3s::unit_name(true)).is_some_and(|s| s == "active")
    };
    hosts.iter().filter(|h| !h.failed && h.plan.control_plane).filter(runs).map(|h| h.plan.node.clone()).collect()
}

/// Whether the server that would found the cluster joins the running one instead: when
/// its own datastore is gone and another server runs one (it was reinstalled), and —
/// once it has a datastore again — as long as its K3s config is the joiner's, so it is
/// never flipped back and restarted for nothing.
fn k3s_founder_joins(
    h: &HostRun,
    running_servers: &[String],
    caps: &HostCaps,
    opts: &ApplyOptions,
) -> Result<bool, String> {
    if !h.facts.k3s_datastore {
        return Ok(running_servers.iter().any(|n| *n != h.plan.node));
    }
    let joiner = (opts.replan)(&h.plan.node, &h.facts.arch, &HostCaps { k3s_join_running: true, ..caps.clone() })?;
    let config = kforge_core::k3s::CONFIG;
    let joiner_config = joiner.files().find(|f| f.path == config).map(|f| &f.sha256);
    Ok(joiner_config.is_some() && h.facts.hashes.get(config) == joiner_config)
}

/// One apply at a time per host (a dry run only looks, so it takes no lock).
fn lock(hosts: &mut [HostRun], opts: &ApplyOptions) -> Vec<HostLock> {
    if opts.dry_run {
        return Vec::new();
    }
    let acquired: Mutex<Vec<HostLock>> = Mutex::new(Vec::new());
    parallel(hosts, opts.parallel, |h| match HostLock::acquire(&h.host) {
        Ok(l) => acquired.lock().unwrap().push(l),
        Err(e) => h.fail(e),
    });
    acquired.into_inner().unwrap()
}

/// The stages in order (`plan::stages`), a barrier between them. In a stage taken
/// together every host goes at once (up to `--parallel`). In a stage taken in turns, the
/// hosts that come up for the first time or change nothing that runs go together (the
/// initialising server first), then each host that would restart something running
/// goes alone — workers `workersAtOnce` at a time, drained first — and waits for its
/// phase's gate; a host that fails stops the turns, so no second controller goes down
/// while the first is unhealthy. Returns where the etcd snapshot taken before the
/// control plane moved was saved.
fn run_stages(
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
        let mut joins = None;
        if stage.phases.contains(&Phase::Datastore) {
            joins = etcd_joins(hosts, plan, progress);
            let grows = joins.as_ref().is_some_and(|(_, j)| !j.is_empty());
            snapshot = snapshot_before_control_plane(hosts, opts, progress, grows);
        }
        let run = StageRun { stage: &stage, plan, opts, store: &store, progress, api: api_host(hosts, plan) };
        match stage.turns {
            Turns::Together => {
                let mut all: Vec<&mut HostRun> = hosts.iter_mut().filter(|h| !h.failed).collect();
                parallel_refs(&mut all, opts.parallel, |h| run.on(h, false));
            }
            Turns::OneAtATime | Turns::Drained => run.in_turns(hosts),
        }
        if let (Some((from, joins)), Some(etcd)) = (joins, &plan.etcd) {
            run.joins(hosts, &from, &joins, etcd);
        }
    }
    store.lock().unwrap().save();
    snapshot
}

/// Once a control-plane host failed, what runs after the API servers stays where it is
/// on every host: a controller-manager, scheduler or kubelet may never be newer than an
/// API server, and the failed host's may be the old release still (its gate failed, or
/// its turn never came), while a controller+worker host that moved on would start them
/// at the new one. Agents would only wait for a control plane to join anyway.
fn hold_back_after_a_control_plane_failure(hosts: &mut [HostRun], stage: &Stage) {
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
fn api_host(hosts: &[HostRun], plan: &Plan) -> Option<(Host, String)> {
    let kubectl = plan.kubectl.clone()?;
    let h = hosts.iter().find(|h| !h.failed && h.plan.control_plane)?;
    Some((h.host.clone(), kubectl))
}

/// The controllers the file adds to a running etcd, and the member that adds them:
/// etcd is asked on a controller where it runs. None when no controller's etcd runs
/// (a cluster being founded: every member starts with the planned initial cluster).
/// When etcd runs but lists no members (no quorum), a controller whose etcd has no data
/// cannot tell whether to found or to join, so it starts nothing and says why; one with
/// data starts as before (which may be what brings quorum back).
fn etcd_joins(
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
fn refuse_to_found_beside(hosts: &mut [HostRun]) {
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

const ETCD_UNIT: &str = "etcd.service";

/// Whether this controller's etcd data directory holds a member (it ran before).
fn etcd_has_data(host: &Host) -> bool {
    let script = format!("[ -d {}/member ] && echo yes || true", kforge_core::hardway::ETCD_DATA_DIR);
    host.run_script("look for etcd data", &script).is_ok_and(|o| o.trim() == "yes")
}

/// Before the first controller restarts, or etcd's membership grows, in an apply that
/// changes a running control plane: an etcd snapshot on the workstation. Without one
/// nothing of the control plane moves (every host stops here, nothing restarted).
fn snapshot_before_control_plane(
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

/// Whether the stage's phases would restart a unit that runs now on this host (a file
/// it reads or its binary changed, or a restart is pending), of those named in `only`
/// when given: such a host takes its turn.
fn disrupts(h: &HostRun, phases: &[Phase], only: Option<&[&str]>) -> bool {
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
const DRAINED_FOR: [&str; 3] = ["containerd.service", "kubelet.service", "k3s-agent.service"];

/// One stage of one apply.
struct StageRun<'a> {
    stage: &'a Stage,
    plan: &'a Plan,
    opts: &'a ApplyOptions<'a>,
    store: &'a Mutex<ArtifactStore>,
    progress: &'a (dyn Fn(&str, &str) + Sync),
    api: Option<(Host, String)>,
}

impl StageRun<'_> {
    fn api(&self) -> Option<rollout::Api<'_>> {
        self.api.as_ref().map(|(host, kubectl)| rollout::Api { host, kubectl })
    }

    /// The stage's phases on one host, each followed by its gate when it changed
    /// something — or always, for a node about to be uncordoned (a stopped apply may
    /// have restarted its kubelet and never seen it Ready).
    fn on(&self, h: &mut HostRun, always_gate: bool) {
        self.on_then(h, always_gate, &mut |_| Ok(()))
    }

    /// `on`, with `before_gate` run on the host between a phase and its gate (a joining
    /// etcd member votes before it can pass its health gate).
    fn on_then(
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

    /// Each controller the file adds joins the running etcd, one at a time, after the
    /// stage's other hosts: its peer port probed from a member over the mesh, added as
    /// a learner (no vote, so quorum is untouched while it catches up), started with
    /// the member list etcd answered, promoted once in sync, then its health gate. A
    /// join that fails stops the others; an apply run again resumes a learner it left.
    fn joins(&self, hosts: &mut [HostRun], from: &Host, joins: &[crate::membership::Join], etcd: &EtcdMembership) {
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

    fn join(&self, h: &mut HostRun, from: &Host, j: &crate::membership::Join, etcd: &EtcdMembership) {
        use crate::membership::{self as m, Joining};
        let node = h.plan.node.clone();
        if self.opts.dry_run {
            let steps = match j.joining {
                Joining::Add => vec![
                    format!("probe {} from {} over the mesh", j.peer_url, from.node),
                    format!("etcd member add {node} --learner (on {})", from.node),
                ],
                Joining::Resume { id } => vec![format!("resume learner {id:x} an earlier apply added")],
            };
            for step in steps.into_iter().chain([
                "start etcd with the member list etcd answers".to_string(),
                "promote to voter once caught up".to_string(),
            ]) {
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
                let what = format!("probe {} from {} over the mesh", j.peer_url, from.node);
                timed(h, &what, &mut || {
                    m::probe_peer(from, &ip).map(|_| ()).map_err(|e| {
                        format!("{} does not reach {node}'s etcd peer port over the mesh, so etcd was not asked to add it: {e}", from.node)
                    })
                })?;
                let what = format!(
                    "etcd member add {node} --learner (on {}; asked again while etcd says \"unhealthy cluster\", up to 60 s)",
                    from.node
                );
                timed(h, &what, &mut || {
                    m::add_learner(from, &etcd.env_file, &node, &j.peer_url, std::time::Duration::from_secs(60))
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
            timed(h, "promote to voter (waits until it has caught up, up to 120 s)", &mut || {
                m::promote(&from, &env_file, id, std::time::Duration::from_secs(120))
            })?;
            crate::faults::at("etcd-promoted");
            // It votes: its data directory is what it starts from now.
            h.host
                .run_script("remove the join's member list", &format!("rm -f {}", crate::ssh::shell_quote(&join_env)))
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }

    fn in_turns(&self, hosts: &mut [HostRun]) {
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
    fn turn(&self, h: &mut HostRun, drain: bool) {
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
fn phase_progress(pp: &PhasePlan) -> String {
    let steps: Vec<&str> = pp.commands.iter().map(|c| c.description.as_str()).collect();
    format!("{}: {}", pp.phase.name(), steps.join("; "))
}

/// After the phases: remove what kforge wrote before that the plan no longer has, and
/// leave the host its own bootstrap script (this plan, this host's capabilities), so
/// re-running it by hand converges to the same state without kforge.
fn finish_hosts(hosts: &mut [HostRun], plan: &Plan, opts: &ApplyOptions) {
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
fn outcome_superseded() -> PlannedFile {
    PlannedFile::new(paths::BOOTSTRAP_OUTCOME, 0o600, "superseded\tkforge apply finished the host\n")
}

/// How this apply came to manage a host it did not converge itself: one whose
/// bootstrap (user-data, a rendered tree) recorded it, or — with no record at all —
/// one another tool set up exactly as planned (nothing written, nothing restarted).
fn takeover(h: &HostRun, unrecorded: bool) -> Option<Takeover> {
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

fn finish(plan: &Plan, opts: &ApplyOptions, hosts: Vec<HostRun>) -> ApplyReport {
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

/// One phase on one host; `Ok(true)` when it changed anything there (or, dry, would).
fn run_phase(
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

fn run_phase_inner(
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
fn decide(
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
            let reload = u.reload_command.clone().filter(|_| active && !pending && !unit_def_changed);
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

fn manifest_json(h: &HostRun) -> String {
    let m = Manifest {
        cluster: h.cluster.clone(),
        node: h.plan.node.clone(),
        releases: h.releases.clone(),
        files: h.manifest.clone(),
        by: Delivery::Apply,
    };
    m.to_json()
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

#[cfg(test)]
mod tests {
    //! Which hosts take turns, offline: K3s cannot run here, so its upgrade is proven on
    //! the plan the engine is given and the facts a running cluster would report.
    use super::*;
    use kforge_core::spec::examples::{HARDWAY, HOMELAB};

    /// `example` as running hosts: every unit active, every planned file and artifact in
    /// place — except the artifacts named in `uploaded` (by their name in the cluster
    /// file), which an apply just uploaded anew (their version in the file changed).
    fn running(example: &str, uploaded: &[&str]) -> Vec<HostRun> {
        let spec = kforge_core::spec::parse("kforge.yaml", example).unwrap().cluster;
        let now = time::OffsetDateTime::now_utc();
        let (secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, None, now).unwrap();
        let model = kforge_core::model::Model::build(&spec, &secrets);
        let plan = kforge_core::pipeline::build_plan(&model, &secrets);
        let control = std::path::Path::new("/nonexistent");
        plan.nodes
            .iter()
            .map(|np| {
                let target = crate::Target { node: np.node.clone(), host: "h".into(), user: "root".into(), port: 22 };
                let mut facts = NodeFacts::default();
                for f in np.files() {
                    facts.hashes.insert(f.path.clone(), f.sha256.clone());
                }
                for u in np.units() {
                    facts.units.insert(u.name.clone(), (true, true));
                }
                let changed_paths: BTreeSet<String> = np
                    .phases
                    .iter()
                    .flat_map(|p| p.artifacts.iter())
                    .filter(|a| uploaded.contains(&a.name.as_str()))
                    .map(|a| a.dest.clone())
                    .collect();
                HostRun {
                    host: Host::of(&target, None, control),
                    cluster: plan.cluster.clone(),
                    releases: plan.releases.clone(),
                    plan: np.clone(),
                    boot: np.clone(),
                    facts,
                    report: HostReport::default(),
                    manifest: BTreeMap::new(),
                    recorded: BTreeMap::new(),
                    changed_paths,
                    failed: false,
                    joining: false,
                    handing_over: Vec::new(),
                }
            })
            .collect()
    }

    /// What a host runs, phase by phase, as the shell steps that act (commands, enables,
    /// restarts with their inputs), and the manifest it ends up recording.
    type Run = (Vec<(Phase, Vec<String>)>, kforge_core::manifest::Manifest);

    /// The files a phase puts in place (either way: written, placed where absent), then
    /// what it runs, in order.
    fn acts(phase: Phase, steps: &[Step], out: &mut Vec<(Phase, Vec<String>)>) {
        let mut files = BTreeSet::new();
        let mut runs = Vec::new();
        for s in steps {
            match s {
                Step::Write(f) | Step::WriteOnce(f) | Step::Ensure(f) => drop(files.insert(f.path.clone())),
                Step::PlaceOnce { dest, .. } => drop(files.insert(dest.clone())),
                Step::Run(c) => runs.push(format!("run {}", c.shell_line())),
                Step::Enable(u) => runs.push(format!("enable {u}")),
                Step::Restart { unit, inputs, .. } => runs.push(format!("start {unit} {inputs}")),
                _ => {}
            }
        }
        out.push((phase, files.into_iter().map(|f| format!("file {f}")).chain(runs).collect()));
    }

    /// Apply over SSH on a bare host with `caps`: every phase as the engine decides it.
    fn apply_on_bare_host(plan: &Plan, np: &NodePlan) -> Run {
        let control = std::path::Path::new("/nonexistent");
        let target = crate::Target { node: np.node.clone(), host: "h".into(), user: "root".into(), port: 22 };
        let mut h = HostRun {
            host: Host::of(&target, None, control),
            cluster: plan.cluster.clone(),
            releases: plan.releases.clone(),
            plan: np.clone(),
            boot: np.clone(),
            facts: NodeFacts::default(),
            report: HostReport::default(),
            manifest: BTreeMap::new(),
            recorded: BTreeMap::new(),
            changed_paths: BTreeSet::new(),
            failed: false,
            joining: false,
            handing_over: Vec::new(),
        };
        let mut out = Vec::new();
        let mut changed = BTreeSet::new();
        for pp in &np.phases {
            // A bare host lacks every artifact: each is uploaded before the phase runs.
            changed.extend(pp.artifacts.iter().map(|a| a.dest.clone()));
            let (work, _) = decide(&mut h, pp, !pp.artifacts.is_empty(), &mut changed);
            acts(pp.phase, &work.steps(), &mut out);
        }
        let manifest: kforge_core::manifest::Manifest = serde_json::from_str(&manifest_json(&h)).unwrap();
        (out, manifest)
    }

    /// The bootstrap of the same node, on a host whose kernel has a WireGuard module
    /// (`kernel`) or not: the branch it takes at boot, with the files user-data placed.
    fn bootstrap_on_bare_host(plan: &Plan, np: &NodePlan, kernel: bool) -> Run {
        let mut flat = Vec::new();
        for s in kforge_core::render::script::bootstrap_steps(plan, np) {
            match s {
                Step::Branch { then, otherwise, .. } => flat.extend(if kernel { then } else { otherwise }),
                s => flat.push(s),
            }
        }
        let (mut out, mut manifest) = (Vec::new(), None);
        let mut phase: Option<(Phase, Vec<Step>)> = None;
        let placed = |phase: Phase, out: &mut Vec<Step>| {
            let p = np.phases.iter().find(|p| p.phase == phase).unwrap();
            let files = p.files.iter().filter(|f| f.handed_over.is_none()).map(|f| Step::Write(f.clone()));
            out.splice(0..0, files);
        };
        for s in flat {
            if let Step::Comment(c) = &s
                && let Some(name) = c.strip_prefix("--- phase: ").and_then(|n| n.strip_suffix(" ---"))
            {
                if let Some((p, steps)) = phase.take() {
                    acts(p, &steps, &mut out);
                }
                let p = np.phases.iter().map(|p| p.phase).find(|p| p.name() == name).unwrap();
                let mut steps = Vec::new();
                placed(p, &mut steps);
                phase = Some((p, steps));
                continue;
            }
            if let Step::RecordManifest { json, .. } = &s {
                manifest = Some(serde_json::from_str::<kforge_core::manifest::Manifest>(json).unwrap());
            }
            if let Some((_, steps)) = phase.as_mut() {
                steps.push(s);
            }
        }
        if let Some((p, steps)) = phase.take() {
            acts(p, &steps, &mut out);
        }
        (out, manifest.expect("the bootstrap records the manifest"))
    }

    /// One step order for a host, two deliveries: for every example and node, apply
    /// over SSH on a bare host and the node's bootstrap (user-data, a rendered tree) put
    /// the same files in place and run the same commands, enables and restarts (with
    /// the same inputs) in the same phases and order, and record the same manifest —
    /// on a kernel with a WireGuard module, and on one without (userspace boringtun-cli,
    /// which apply learns from the facts and the bootstrap decides at boot).
    #[test]
    fn the_bootstrap_and_apply_run_one_step_order_and_record_one_manifest() {
        use kforge_core::manifest::Delivery;
        use kforge_core::pipeline::HostCaps;
        for (name, text) in kforge_core::spec::examples::ALL {
            let spec = kforge_core::spec::parse("kforge.yaml", text).unwrap().cluster;
            let now = time::OffsetDateTime::now_utc();
            let (secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, None, now).unwrap();
            let model = kforge_core::model::Model::build(&spec, &secrets);
            let plan = kforge_core::pipeline::build_plan(&model, &secrets);
            for boot in &plan.nodes {
                for kernel in [true, false] {
                    // What apply plans once the facts say what the kernel has (boringtun-cli
                    // already on the host: nothing to upload).
                    let caps = HostCaps { userspace_wireguard: !kernel, ..HostCaps::default() };
                    let np = kforge_core::pipeline::plan_node(&model, &secrets, &boot.node, &caps).unwrap();
                    let (apply_steps, apply_manifest) = apply_on_bare_host(&plan, &np);
                    let (boot_steps, boot_manifest) = bootstrap_on_bare_host(&plan, boot, kernel);
                    let at = format!("{name}: {} (kernel WireGuard: {kernel})", boot.node);
                    assert_eq!(apply_steps, boot_steps, "{at}");
                    assert!(apply_steps.iter().any(|(_, s)| s.iter().any(|x| x.starts_with("start "))), "{at}");
                    assert_eq!((apply_manifest.by, boot_manifest.by), (Delivery::Apply, Delivery::Bootstrap), "{at}");
                    assert_eq!(apply_manifest.files, boot_manifest.files, "{at}");
                    assert_eq!(
                        (apply_manifest.releases, apply_manifest.node),
                        (boot_manifest.releases, boot_manifest.node),
                        "{at}"
                    );
                }
            }
        }
    }

    /// K3s: the server that founded the cluster, reinstalled (its datastore gone) while
    /// the others run, joins them; with a datastore it keeps the config it runs with
    /// (founder or joiner: never flipped and restarted for nothing); a fleet where no
    /// server runs is founded by it.
    #[test]
    fn a_reinstalled_first_k3s_server_joins_the_running_cluster_instead_of_founding_one() {
        use kforge_core::pipeline::HostCaps;
        let spec = kforge_core::spec::parse("kforge.yaml", kforge_core::spec::examples::HA).unwrap().cluster;
        let now = time::OffsetDateTime::now_utc();
        let (secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, None, now).unwrap();
        let model = kforge_core::model::Model::build(&spec, &secrets);
        let plan = kforge_core::pipeline::build_plan(&model, &secrets);
        let replan = |node: &str, _: &str, caps: &HostCaps| {
            kforge_core::pipeline::plan_node(&model, &secrets, node, caps).ok_or_else(|| "no such node".to_string())
        };
        let check_versions = |_: &[kforge_core::upgrade::Running]| Ok(());
        let opts = ApplyOptions {
            targets: Vec::new(),
            parallel: 1,
            dry_run: true,
            ssh_config: None,
            base_dir: ".".into(),
            cache_dir: "/nonexistent".into(),
            replan: &replan,
            check_versions: &check_versions,
            snapshot: None,
            force_quorum_loss: false,
            hand_over: Vec::new(),
            replace_foreign_record: false,
            drain: crate::rollout::DrainLosses::default(),
        };
        let config = |h: &HostRun| {
            let f = h.plan.files().find(|f| f.path == kforge_core::k3s::CONFIG).unwrap();
            (String::from_utf8_lossy(&f.content).to_string(), f.sha256.clone())
        };
        let planned = |datastores: [bool; 3], on_host: Option<&str>| -> (String, String, Vec<String>) {
            let mut hosts = running(kforge_core::spec::examples::HA, &[]);
            for h in hosts.iter_mut() {
                h.facts.wireguard_kernel = true;
                h.facts.arch = "x86_64".into();
                h.facts.units.clear();
                h.facts.unit_states.clear();
            }
            for (h, has) in hosts.iter_mut().zip(datastores) {
                h.facts.k3s_datastore = has;
            }
            if let Some(sum) = on_host {
                hosts[0].facts.hashes.insert(kforge_core::k3s::CONFIG.into(), sum.to_string());
            }
            plan_for_capabilities(&mut hosts, &plan, &opts, &|_, _| {}).unwrap();
            let first = &hosts[0];
            assert_eq!(first.plan.node, plan.init_server);
            let (text, sum) = config(first);
            (text, sum, first.report.steps.iter().map(|s| s.step.clone()).collect())
        };
        // A new fleet: server-1 founds.
        let (founder, founder_sum, steps) = planned([false, false, false], None);
        assert!(founder.contains("cluster-init: true") && !founder.contains("server:"), "{founder}");
        assert!(steps.is_empty(), "{steps:?}");
        // Reinstalled while server-2 and server-3 run: it joins through its balancer.
        let (joiner, joiner_sum, steps) = planned([false, true, true], None);
        assert!(!joiner.contains("cluster-init") && joiner.contains("server: https://127.0.0.1:6445"), "{joiner}");
        assert_eq!(
            steps,
            ["joins the cluster server-2, server-3 run (its own datastore is gone): no second cluster-init"]
        );
        // Its datastore back, it keeps the config it runs with.
        assert_eq!(planned([true, true, true], Some(&joiner_sum)).1, joiner_sum);
        assert_eq!(planned([true, true, true], Some(&founder_sum)).1, founder_sum);
        // The founder's own datastore there: never a joiner.
        assert_eq!(planned([true, false, false], None).1, founder_sum);
    }

    /// Two controllers added while the only one's etcd cannot be asked (its host did not
    /// answer, its lock was held, or its etcd is down with its data there): the newcomers
    /// are not started — with the planned member list they would be a majority of their
    /// own and found a second cluster. With every controller answering and no etcd data
    /// anywhere, the cluster is new, and founded.
    #[test]
    fn no_second_etcd_cluster_is_founded_beside_one_that_cannot_be_asked() {
        let spec = kforge_core::spec::parse("kforge.yaml", HARDWAY).unwrap().cluster;
        let now = time::OffsetDateTime::now_utc();
        let (secrets, _) = kforge_core::pipeline::reconcile_secrets(&spec, None, now).unwrap();
        let plan = kforge_core::pipeline::build_plan(&kforge_core::model::Model::build(&spec, &secrets), &secrets);
        let fresh = || {
            let mut hosts = running(HARDWAY, &[]);
            for h in hosts.iter_mut() {
                h.facts.unit_states.clear();
            }
            hosts
        };
        let refused = |hosts: &[HostRun]| -> Vec<(String, String)> {
            hosts.iter().filter(|h| h.failed).map(|h| (h.plan.node.clone(), h.report.error.clone().unwrap())).collect()
        };
        // controller-0 ran the cluster; its lock was held by another apply.
        let mut hosts = fresh();
        hosts[0].facts.etcd_data = true;
        hosts[0].fail("lock: another kforge apply holds /run/kforge/apply.lock (waited 45 s)");
        assert!(etcd_joins(&mut hosts, &plan, &|_, _| {}).is_none());
        let out = refused(&hosts);
        assert_eq!(
            out.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
            ["controller-0", "controller-1", "controller-2"]
        );
        assert!(out[1].1.starts_with("not started: controller-0 did not answer, and its etcd may be the cluster's; controller-1's etcd has never run"), "{}", out[1].1);
        assert!(hosts.iter().filter(|h| !h.plan.control_plane).all(|h| !h.failed), "workers are the worker stage's");
        // controller-0 answers, its etcd crash-looping with its data there.
        let mut hosts = fresh();
        hosts[0].facts.etcd_data = true;
        assert!(etcd_joins(&mut hosts, &plan, &|_, _| {}).is_none());
        let out = refused(&hosts);
        assert_eq!(out.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["controller-1", "controller-2"]);
        assert!(out[0].1.contains("controller-0 holds etcd data but its etcd does not run"), "{}", out[0].1);
        // A new cluster: every controller answers, none holds data: all start, founding it.
        let mut hosts = fresh();
        assert!(etcd_joins(&mut hosts, &plan, &|_, _| {}).is_none());
        assert!(refused(&hosts).is_empty());
    }

    /// The stage running `phase`.
    fn stage_of(phase: Phase) -> Stage {
        stages().into_iter().find(|s| s.phases.contains(&phase)).unwrap()
    }

    #[test]
    fn a_k3s_upgrade_takes_servers_then_drained_agents_one_at_a_time() {
        let hosts = running(HOMELAB, &["k3s"]);
        let (control, workers) = (stage_of(Phase::ControlPlane), stage_of(Phase::Workers));
        assert_eq!((control.turns, workers.turns), (Turns::OneAtATime, Turns::Drained));
        for h in &hosts {
            let server = h.plan.control_plane;
            // Servers take their turn in the control-plane stage, agents in the workers
            // stage, drained first: a new k3s binary restarts k3s / k3s-agent.
            assert_eq!(disrupts(h, &control.phases, None), server, "{}", h.plan.node);
            assert_eq!(disrupts(h, &workers.phases, None), !server, "{}", h.plan.node);
            assert_eq!(disrupts(h, &workers.phases, Some(&DRAINED_FOR)), !server, "{}", h.plan.node);
            // Each waits on its gate: /readyz on a server, Ready at the release for an agent.
            let phase = if server { Phase::ControlPlane } else { Phase::Workers };
            let gate = h.plan.phases.iter().find(|p| p.phase == phase).and_then(|p| p.gate.clone()).unwrap();
            if server {
                assert!(gate.test.contains("k3s kubectl get --raw=/readyz") && !gate.on_api_host, "{gate:?}");
            } else {
                assert!(gate.test.contains(&format!("get node {}", h.plan.node)) && gate.on_api_host, "{gate:?}");
                assert!(gate.test.contains("v1.36.4+k3s1 True"), "{gate:?}");
            }
        }
    }

    /// An API server's gate failed on lab-2 mid-upgrade: lab-1 (controller+worker, its
    /// API server moved already) must not start a kubelet or controller-manager of the
    /// new release beside lab-2's old API server; the pure workers wait too.
    #[test]
    fn nothing_after_the_api_servers_moves_once_a_control_plane_host_failed() {
        let stage_of = |p: Phase| stages().into_iter().find(|s| s.phases.contains(&p)).unwrap();
        let mut hosts = running(HARDWAY, &[]);
        let first_controller = hosts.iter().position(|h| h.plan.control_plane).unwrap();
        hosts[first_controller].fail("phase control-plane: gate: /readyz did not answer within 120 s");
        hold_back_after_a_control_plane_failure(&mut hosts, &stage_of(Phase::ControlPlane));
        assert_eq!(hosts.iter().filter(|h| h.failed).count(), 1, "the API servers' own stage is not held back");
        hold_back_after_a_control_plane_failure(&mut hosts, &stage_of(Phase::Controllers));
        hold_back_after_a_control_plane_failure(&mut hosts, &stage_of(Phase::Workers));
        for h in &hosts {
            assert!(h.failed, "{} went on", h.plan.node);
        }
        let other = hosts
            .iter()
            .find(|h| h.plan.control_plane && h.report.error.as_deref().is_some_and(|e| e.starts_with("not started")));
        assert!(
            other.is_some(),
            "a controller+worker host is held back: {:?}",
            hosts.iter().map(|h| &h.report.error).collect::<Vec<_>>()
        );
    }

    /// A Node that registered after its labels were given (the labelling step waits
    /// 60 s, then leaves its lines for the next run): the next apply, with nothing else
    /// to change, gives them. Its step used to run only when its phase changed.
    #[test]
    fn labels_kept_for_a_late_node_are_given_by_the_next_apply() {
        let mut hosts = running(HARDWAY, &[]);
        let (h, pp, command) = hosts
            .iter_mut()
            .find_map(|h| {
                let pp =
                    h.plan.phases.iter().find(|p| p.commands.iter().any(|c| c.run.starts_with("kf_node_labels")))?;
                let c = pp.commands.iter().find(|c| c.run.starts_with("kf_node_labels"))?.clone();
                let pp = pp.clone();
                Some((h, pp, c))
            })
            .expect("a host labels the Nodes");
        let test = command.recheck.clone().expect("the labelling step is asked about at every apply");
        let (idle, _) = decide(h, &pp, false, &mut BTreeSet::new());
        assert!(!idle.commands.iter().any(|c| c.run == command.run), "nothing to do while the lists agree");
        h.facts.failed_rechecks.insert(test);
        let (late, repairs) = decide(h, &pp, false, &mut BTreeSet::new());
        assert!(late.commands.iter().any(|c| c.run == command.run), "{:?}", late.commands);
        assert!(repairs.iter().any(|r| r.starts_with("label and taint each Node")), "{repairs:?}");
    }

    #[test]
    fn nothing_takes_a_turn_when_nothing_running_changes() {
        for h in running(HOMELAB, &[]).into_iter().chain(running(HARDWAY, &[])) {
            for stage in stages() {
                assert!(!disrupts(&h, &stage.phases, None), "{} in {:?}", h.plan.node, stage.phases);
            }
        }
    }

    /// The hard way's own programs each move by their own rule: a new containerd (or
    /// runc, which containerd's unit restarts on) drains the worker first; a new etcd
    /// moves the controllers one at a time in the datastore stage, draining nothing; new
    /// Kubernetes programs move the API servers, then the controllers, then each worker,
    /// drained.
    #[test]
    fn hard_way_components_move_each_by_its_own_rule() {
        let (datastore, control, controllers, workers) = (
            stage_of(Phase::Datastore),
            stage_of(Phase::ControlPlane),
            stage_of(Phase::Controllers),
            stage_of(Phase::Workers),
        );
        assert_eq!(
            (datastore.turns, control.turns, controllers.turns, workers.turns),
            (Turns::OneAtATime, Turns::OneAtATime, Turns::OneAtATime, Turns::Drained)
        );
        let takes = |hosts: &[HostRun], stage: &Stage, only: Option<&[&str]>| -> Vec<String> {
            hosts.iter().filter(|h| disrupts(h, &stage.phases, only)).map(|h| h.plan.node.clone()).collect()
        };
        let all = running(HARDWAY, &[]);
        let node_where = |f: fn(&NodePlan) -> bool| -> Vec<String> {
            all.iter().filter(|h| f(&h.plan)).map(|h| h.plan.node.clone()).collect()
        };
        let controllers_ = node_where(|p| p.control_plane);
        let workers_ = node_where(|p| p.phases.iter().any(|ph| ph.phase == Phase::Workers && !ph.units.is_empty()));
        assert!(!controllers_.is_empty() && !workers_.is_empty(), "the example has both");

        for runtime in ["containerd", "runc", "cni-plugins"] {
            let hosts = running(HARDWAY, &[runtime]);
            assert_eq!(takes(&hosts, &workers, Some(&DRAINED_FOR)), workers_, "a new {runtime} drains every worker");
            for stage in [&datastore, &control, &controllers] {
                assert!(takes(&hosts, stage, None).is_empty(), "{runtime} moves no controller");
            }
        }

        let hosts = running(HARDWAY, &["etcd"]);
        assert_eq!(takes(&hosts, &datastore, None), controllers_, "a new etcd: each member in its turn");
        assert!(takes(&hosts, &workers, None).is_empty(), "a new etcd drains no worker");

        let hosts =
            running(HARDWAY, &["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"]);
        assert!(takes(&hosts, &datastore, None).is_empty(), "etcd stays");
        assert_eq!(takes(&hosts, &control, None), controllers_);
        assert_eq!(takes(&hosts, &controllers, None), controllers_);
        assert_eq!(takes(&hosts, &workers, Some(&DRAINED_FOR)), workers_, "a new kubelet drains its worker");
    }
}
