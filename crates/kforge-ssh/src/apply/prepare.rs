//! Before any stage: every host connected and locked, its facts read, its plan made for
//! what it is (architecture, WireGuard, packages), the upgrade rules and preflight
//! checked over what runs now; foreign units handed over; packages installed.

use super::*;

/// Every artifact that comes from this workstation is there: reported once per file,
/// before any host is contacted (not once per host, halfway through a phase).
pub(super) fn local_artifacts_exist(plan: &Plan, opts: &ApplyOptions) -> Result<(), ApplyError> {
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
pub(super) fn connect(
    plan: &Plan,
    opts: &ApplyOptions,
    control_dir: &std::path::Path,
) -> Result<Vec<HostRun>, ApplyError> {
    plan.nodes
        .iter()
        .map(|np| {
            let t =
                opts.targets.iter().find(|t| t.node == np.node).ok_or_else(|| {
                    ApplyError::Setup(format!("{}: no SSH target (set ssh.host or endpoint)", np.node))
                })?;
            Ok(HostRun::new(Host::of(t, opts.ssh_config.clone(), control_dir), plan, np))
        })
        .collect()
}

/// One apply at a time per host (a dry run only looks, so it takes no lock).
pub(super) fn lock(hosts: &mut [HostRun], opts: &ApplyOptions) -> Vec<HostLock> {
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

/// Facts, in one round trip per host. What running processes said they are is kept on
/// the workstation (`running-versions` in the cache directory: node, process id, line),
/// so the next apply asks no process twice and writes nothing on a host for it.
pub(super) fn gather_facts(hosts: &mut [HostRun], opts: &ApplyOptions, progress: &(dyn Fn(&str, &str) + Sync)) {
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

/// What the cluster file cannot say about a host (its CPU architecture, its kernel's
/// WireGuard) is an input to planning: every host is planned again with what its facts
/// found. A host the cluster file cannot serve (no source of an artifact for its
/// architecture) refuses the whole apply before anything is touched.
pub(super) fn plan_for_capabilities(
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
pub(super) fn k3s_running_servers(hosts: &[HostRun]) -> Vec<String> {
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
pub(super) fn k3s_founder_joins(
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

/// The upgrade rules over what runs now on every reachable host (each host's running
/// releases, from its facts), before anything is touched.
pub(super) fn check_versions(hosts: &mut [HostRun], opts: &ApplyOptions) -> Result<(), ApplyError> {
    let mut running = Vec::new();
    for h in hosts.iter_mut().filter(|h| !h.failed) {
        let r = h.facts.running_versions(&h.plan.node);
        h.report.versions_before = r.versions.iter().map(|(c, v)| (c.key().to_string(), v.to_string())).collect();
        running.push(r);
    }
    (opts.check_versions)(&running).map_err(ApplyError::Preflight)
}

/// Preflight over every reachable host: refuse before touching anything. A foreign
/// program holding what kforge needs is a refusal too, unless the operator hands its
/// unit over (`--hand-over`: queued here as `HostRun::handing_over`). A dry run never
/// refuses: what it found comes back to be shown with the rest of its diff.
pub(super) fn preflight(hosts: &mut [HostRun], plan: &Plan, opts: &ApplyOptions) -> Result<Vec<String>, ApplyError> {
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
pub(super) fn foreign_record(h: &HostRun, cluster: &str) -> Option<String> {
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
pub(super) fn hand_over(hosts: &mut [HostRun], opts: &ApplyOptions, progress: &(dyn Fn(&str, &str) + Sync)) {
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
pub(super) fn install_packages(hosts: &mut [HostRun], opts: &ApplyOptions, progress: &(dyn Fn(&str, &str) + Sync)) {
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
