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
            HostRun { facts, changed_paths, ..HostRun::new(Host::of(&target, None, control), &plan, np) }
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
    let mut h = HostRun::new(Host::of(&target, None, control), plan, np);
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
    let opts = ApplyOptions { dry_run: true, ..ApplyOptions::for_tests(&replan, &check_versions) };
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
    assert_eq!(steps, ["joins the cluster server-2, server-3 run (its own datastore is gone): no second cluster-init"]);
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
            let pp = h.plan.phases.iter().find(|p| p.commands.iter().any(|c| c.run.starts_with("kf_node_labels")))?;
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

/// A worker's removal killed right after the first host reloaded its mesh: the other
/// hosts' mesh restarts stayed pending, and the next apply restarted wg-quick there —
/// down and up, every route through the mesh gone for a second (the fault matrix's
/// client saw "Network is unreachable"). The run that died would have reloaded it, and
/// its mark says so: the next apply reloads too. A mark that says restart (a binary
/// changed, a unit definition) is still a restart.
#[test]
fn a_restart_left_pending_is_a_reload_when_the_run_that_died_would_have_reloaded() {
    let mut hosts = running(HARDWAY, &[]);
    let h = &mut hosts[0];
    let pp = h.plan.phases.iter().find(|p| p.phase == Phase::Mesh).unwrap().clone();
    let wg = pp.units.iter().find(|u| u.name.starts_with("wg-quick@")).unwrap().name.clone();
    h.facts.pending.insert(wg.clone());
    h.facts.pending_reload.insert(wg.clone());
    let (work, _) = decide(h, &pp, false, &mut BTreeSet::new());
    let r = work.restarts.iter().find(|r| r.unit == wg).expect("the pending mesh unit is finished");
    assert!(r.reload.is_some(), "a reload, as the run that died would have done");
    // Its marks say so again, for a run that dies now.
    let steps = work.steps();
    assert!(steps.iter().any(|s| matches!(s, Step::MarkPendingReload(u) if *u == wg)), "{steps:?}");
    h.facts.pending_reload.clear();
    let (work, _) = decide(h, &pp, false, &mut BTreeSet::new());
    assert!(work.restarts.iter().find(|r| r.unit == wg).unwrap().reload.is_none(), "a restart mark restarts");
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
