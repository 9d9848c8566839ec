//! Human-readable output. Plain text, stable ordering, no secret ever.

use std::fmt::Write;
use std::path::Path;

use kforge_core::plan::{NodePlan, Plan};
use kforge_core::render::cloud_init::{EC2_USER_DATA_LIMIT, UserDataSize};
use kforge_core::spec::{DistributionKind, LoadedSpec, Role};

/// `kforge check`: what the file describes, in a few lines.
pub fn summary(spec: &LoadedSpec) -> String {
    let c = &spec.cluster;
    let s = &c.spec;
    let nat: Vec<&str> = s.nodes.iter().filter(|n| n.endpoint.is_none()).map(|n| n.name.as_str()).collect();
    let mut o = String::new();
    let _ = writeln!(o, "ok: {} is a valid cluster file", spec.file);
    let _ = writeln!(o, "  cluster   {} ({} {})", c.metadata.name, s.distribution.kind.name(), s.distribution.version);
    let roles: &[Role] = match s.distribution.kind {
        DistributionKind::K3s => &[Role::Server, Role::Agent],
        DistributionKind::Hardway => &[Role::Controller, Role::Worker],
    };
    let counts: Vec<String> = roles
        .iter()
        .map(|r| {
            let n = s.nodes.iter().filter(|n| n.role.has(*r)).count();
            format!("{n} {}{}", r.name(), plural(n))
        })
        .collect();
    let _ = writeln!(
        o,
        "  nodes     {} ({}){}",
        s.nodes.len(),
        counts.join(", "),
        if nat.is_empty() { String::new() } else { format!("; behind NAT: {}", nat.join(", ")) }
    );
    let _ = writeln!(o, "  mesh      {} on {} port {}/udp, full mesh", s.mesh.subnet, s.mesh.interface, s.mesh.port);
    let _ = writeln!(o, "  network   pods {}, services {}", s.network.pod_cidr, s.network.service_cidr);
    let fw = if s.firewall.enabled {
        let published: Vec<String> = s.firewall.publish.iter().map(|p| format!("{}/{}", p.port, p.protocol)).collect();
        format!(
            "default-deny; open: ssh {}/tcp, mesh {}/udp{}",
            s.firewall.ssh.port,
            s.mesh.port,
            if published.is_empty() { String::new() } else { format!(", published {}", published.join(", ")) }
        )
    } else {
        "DISABLED".into()
    };
    let _ = writeln!(o, "  firewall  {fw}");
    let api = if s.access.api_on_public { "mesh and public" } else { "mesh only" };
    let peers: Vec<&str> = s.access.peers.iter().map(|p| p.name.as_str()).collect();
    let _ = writeln!(
        o,
        "  access    API on {api}; peers: {}",
        if peers.is_empty() { "none".to_string() } else { peers.join(", ") }
    );
    if !spec.warnings.is_empty() {
        let _ = writeln!(o, "  warnings  {} (see above)", spec.warnings.len());
    }
    o
}

/// `kforge plan`: per node, per phase, files with mode/size/hash, units, commands.
pub fn plan_text(plan: &Plan) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cluster {} ({}): {} node{}, {} access peer{}; API {}",
        plan.cluster,
        plan.distribution,
        plan.nodes.len(),
        plural(plan.nodes.len()),
        plan.peers.len(),
        plural(plan.peers.len()),
        plan.api
    );
    for node in &plan.nodes {
        let role = &node.roles;
        let _ = writeln!(o);
        let endpoint = node.endpoint.as_deref().unwrap_or("behind NAT");
        let _ = writeln!(o, "{}  {role}  mesh {}  endpoint {endpoint}", node.node, node.mesh_ip);
        // Installed first, where missing (apply reads which in its facts).
        let packages: Vec<&str> = node.packages.iter().map(|p| p.name()).collect();
        let _ = writeln!(o, "  packages  {}  (installed where missing, before the phases)", packages.join(" "));
        for phase in &node.phases {
            let _ = writeln!(o, "  {}", phase.phase.name());
            for a in &phase.artifacts {
                let from = match &a.source {
                    kforge_core::plan::ArtifactSource::Url { url } => url.clone(),
                    kforge_core::plan::ArtifactSource::Path { path } => {
                        format!("{path} (workstation)")
                    }
                };
                let sum = a.sha256.as_deref().map(|s| &s[..12]).unwrap_or("unpinned");
                let on = a.arch.map(|arch| format!("  on {arch} hosts")).unwrap_or_default();
                let _ = writeln!(o, "    artifact {:<52} {:04o}  {sum}  from {from}{on}", a.dest, a.mode);
            }
            for f in &phase.files {
                let _ =
                    writeln!(o, "    file     {:<52} {:04o}  {:>7}  {}", f.path, f.mode, size(f.size), f.short_hash());
            }
            for c in &phase.commands {
                let _ = writeln!(o, "    command  {}  ({})", c.run, c.description);
            }
            for u in &phase.units {
                let how = match &u.reload_command {
                    Some(cmd) => format!("reload on change: {cmd}"),
                    None => format!("restart when any of its {} files change", u.restart_on.len()),
                };
                let state = match (u.start, u.enable) {
                    (false, _) => "installed, not started (stand-in)",
                    (true, true) => "enabled",
                    (true, false) => "disabled",
                };
                let _ = writeln!(o, "    unit     {:<52} {state}; {how}", u.name);
            }
        }
    }
    for p in &plan.peers {
        let _ = writeln!(o);
        let _ = writeln!(
            o,
            "{}  access peer  mesh {}\n    file     {:<52} {:04o}  {:>7}  {}",
            p.peer,
            p.mesh_ip,
            p.config.path,
            p.config.mode,
            size(p.config.size),
            p.config.short_hash()
        );
    }
    for r in &plan.removals {
        let _ = writeln!(o);
        let _ = writeln!(o, "{}  {}  REMOVED from the file: apply removes it from the cluster", r.node, r.roles);
        match &r.refused {
            Some(why) => {
                let _ = writeln!(o, "    refused: {why}");
            }
            None => {
                for (i, step) in r.steps.iter().enumerate() {
                    let _ = writeln!(o, "    {}. {step}", i + 1);
                }
            }
        }
    }
    if !plan.notes.is_empty() {
        let _ = writeln!(o, "\nnotes:");
        for n in &plan.notes {
            let _ = writeln!(o, "  - {n}");
        }
    }
    o
}

/// `kforge render`: where things went and what to do with them.
pub fn render_summary(plan: &Plan, out: &Path, sizes: &[(&NodePlan, UserDataSize)], gzip: bool) -> String {
    let mut o = String::new();
    let d = out.display();
    let _ = writeln!(o, "rendered {} node{} into {d}", plan.nodes.len(), plural(plan.nodes.len()));
    for (node, s) in sizes {
        let files = node.files().count();
        let mut line =
            format!("  {d}/{}/  {files} files, user-data {} ({} gzipped)", node.node, size(s.raw), size(s.gzipped));
        let delivered = if gzip { s.gzipped } else { s.raw };
        if delivered > EC2_USER_DATA_LIMIT {
            line.push_str(if gzip || s.gzipped > EC2_USER_DATA_LIMIT {
                " (over EC2's 16 KiB even gzipped)"
            } else {
                " (over EC2's 16 KiB: render with --gzip)"
            });
        }
        let _ = writeln!(o, "{line}");
    }
    for p in &plan.peers {
        let _ = writeln!(
            o,
            "  {d}/{}/{}/{}  mesh config of access peer {}",
            kforge_files::tree::PEERS_DIR,
            p.peer,
            p.config.path,
            p.peer
        );
    }
    let _ = writeln!(
        o,
        "deliver: boot a host with NODE/{}, or copy NODE/ to / (without user-data) and run /var/lib/kforge/bootstrap.sh; then kforge apply takes it over",
        if gzip { "user-data.gz" } else { "user-data" }
    );
    for n in &plan.notes {
        let _ = writeln!(o, "note: {n}");
    }
    o
}

fn size(bytes: usize) -> String {
    if bytes < 1024 { format!("{bytes} B") } else { format!("{:.1} KiB", bytes as f64 / 1024.0) }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// `kforge apply`: one line per host, or with `--dry-run` the diff per host.
pub fn apply_summary(report: &kforge_ssh::ApplyReport) -> String {
    let mut o = String::new();
    for r in &report.removals {
        let result = match (&r.error, r.removed, report.dry_run) {
            (Some(e), _, _) => format!("FAILED: {e}"),
            (None, _, true) => "would be removed from the cluster".into(),
            (None, true, false) => "removed from the cluster".into(),
            (None, false, false) => "not removed".into(),
        };
        let _ = writeln!(o, "{}: {result}", r.node);
        for s in &r.steps {
            let _ = writeln!(o, "  {} {:.1}s", s.step, s.seconds);
        }
        for w in &r.warnings {
            let _ = writeln!(o, "  WARNING: {w}");
        }
    }
    if report.dry_run {
        for h in &report.hosts {
            let changes = h.files_added.len()
                + h.files_changed.len()
                + h.files_removed.len()
                + h.artifacts_uploaded.len()
                + h.packages_installed.len();
            let _ = writeln!(
                o,
                "{}: {}",
                h.node,
                match (&h.error, changes + h.units_restarted.len() + h.units_reloaded.len() + h.repaired.len()) {
                    (Some(e), _) => format!("UNREACHABLE: {e}"),
                    (None, 0) => "no changes".to_string(),
                    (None, _) => format!(
                        "{changes} file change{}, {} unit restart{}{}{}",
                        plural(changes),
                        h.units_restarted.len(),
                        plural(h.units_restarted.len()),
                        match h.units_reloaded.len() {
                            0 => String::new(),
                            n => format!(", {n} reload{}", plural(n)),
                        },
                        match h.repaired.len() {
                            0 => String::new(),
                            n => format!(", {n} repair{}", plural(n)),
                        }
                    ),
                }
            );
            if !h.packages_installed.is_empty() {
                let _ = writeln!(o, "  + packages {}  (apt-get install)", h.packages_installed.join(" "));
            }
            for f in &h.artifacts_uploaded {
                let _ = writeln!(o, "  ^ {f}  (upload)");
            }
            for f in &h.files_added {
                let _ = writeln!(o, "  + {f}");
            }
            for f in &h.files_changed {
                let _ = writeln!(o, "  ~ {f}");
            }
            for f in &h.files_removed {
                let _ = writeln!(o, "  - {f}");
            }
            for r in &h.repaired {
                let _ = writeln!(o, "  ! {r}  (undone outside kforge: repair)");
            }
            for k in &h.kept {
                let _ = writeln!(o, "  = {k}");
            }
            for u in &h.units_restarted {
                let _ = writeln!(o, "  restart {u}");
            }
            for u in &h.units_reloaded {
                let _ = writeln!(o, "  reload {u}");
            }
            for s in h.steps.iter().filter(|s| s.step.contains("drain")) {
                let _ = writeln!(o, "  {}", s.step);
            }
            for x in &h.handed_over {
                let _ = writeln!(o, "  --hand-over: {x}");
            }
            if let Some(t) = h.takeover {
                let _ = writeln!(o, "  {}", takeover_text(t, true));
            }
        }
        if !report.refusals.is_empty() {
            let _ = writeln!(o, "preflight would refuse a real apply:");
            for r in &report.refusals {
                let _ = writeln!(o, "  {}", r.replace('\n', "\n  "));
            }
        }
        let _ = writeln!(o, "dry run: nothing was changed");
        return o;
    }
    let _ = writeln!(
        o,
        "{:<10} {:<11} {:>7} {:>7} {:>8}  RESTARTED / RELOADED",
        "NODE", "RESULT", "WRITTEN", "REMOVED", "UPLOADED"
    );
    for h in &report.hosts {
        let mut units: Vec<String> = h.units_restarted.clone();
        units.extend(h.units_reloaded.iter().map(|u| format!("{u} (reload)")));
        let _ = writeln!(
            o,
            "{:<10} {:<11} {:>7} {:>7} {:>8}  {}{}",
            h.node,
            match (h.converged, h.takeover) {
                (false, _) => "FAILED",
                (true, Some(kforge_ssh::Takeover::FromBootstrap)) => "taken over",
                (true, Some(kforge_ssh::Takeover::Adopted)) => "adopted",
                (true, None) => "converged",
            },
            h.files_written(),
            h.files_removed.len(),
            h.artifacts_uploaded.len(),
            if units.is_empty() { "-".to_string() } else { units.join(", ") },
            if h.userspace_wireguard { "  [userspace WireGuard]" } else { "" }
        );
        if let Some(e) = &h.error {
            let _ = writeln!(o, "  {}: {e}", h.node);
        }
        if !h.packages_installed.is_empty() {
            let _ = writeln!(o, "  {}: installed {}", h.node, h.packages_installed.join(", "));
        }
        for x in &h.handed_over {
            let _ = writeln!(o, "  {}: --hand-over: {x}", h.node);
        }
        for r in &h.repaired {
            let _ = writeln!(o, "  {}: repaired (undone outside kforge): {r}", h.node);
        }
        for k in &h.kept {
            let _ = writeln!(o, "  {}: not rewritten: {k}", h.node);
        }
    }
    let mut kinds: Vec<kforge_ssh::Takeover> = Vec::new();
    for t in report.hosts.iter().filter_map(|h| h.takeover) {
        if !kinds.contains(&t) {
            kinds.push(t);
        }
    }
    for t in kinds {
        let _ = writeln!(o, "{}", takeover_text(t, false));
    }
    // An apply that took turns (an upgrade, a rolling change) lists each host's steps.
    let rolled =
        report.hosts.iter().any(|h| h.steps.iter().any(|s| s.step.starts_with("gate") || s.step.contains("drain")));
    if rolled {
        let _ = writeln!(o, "steps:");
        for h in &report.hosts {
            let steps: Vec<String> = h.steps.iter().map(|s| format!("{} {:.1}s", s.step, s.seconds)).collect();
            if !steps.is_empty() {
                let _ = writeln!(o, "  {}: {}", h.node, steps.join(", "));
            }
        }
    }
    if let Some(path) = &report.snapshot {
        let _ = writeln!(o, "etcd snapshot taken before the control plane moved: {path}");
    }
    o
}

fn takeover_text(t: kforge_ssh::Takeover, dry_run: bool) -> &'static str {
    use kforge_ssh::Takeover::*;
    match (t, dry_run) {
        (FromBootstrap, false) => {
            "taken over: converged by its bootstrap (user-data or a rendered tree); kforge apply manages it from now on"
        }
        (FromBootstrap, true) => "would be taken over: converged by its bootstrap (user-data or a rendered tree)",
        (Adopted, false) => {
            "adopted: set up by another tool exactly as planned; nothing rewritten or restarted, its manifest recorded"
        }
        (Adopted, true) => {
            "would be adopted: set up by another tool exactly as planned (only its manifest would be recorded)"
        }
    }
}

/// `plan --observe`: what runs now on each host, whether releases are mixed, and the
/// steps apply would take there in order, with the gates between them.
pub fn observed_plan(report: &kforge_ssh::ApplyReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "running now (each program's own --version):");
    let mut running = Vec::new();
    for h in &report.hosts {
        let seen: Vec<String> = h.versions_before.iter().map(|(c, v)| format!("{c} {v}")).collect();
        let what = match &h.error {
            Some(e) => format!("UNREACHABLE: {e}"),
            None if seen.is_empty() => "nothing of the cluster runs yet".into(),
            None => seen.join(", "),
        };
        let _ = writeln!(o, "  {:<10} {what}", h.node);
        let versions = kforge_core::component::Component::ALL
            .into_iter()
            .filter_map(|c| Some((c, kforge_core::upgrade::Version::parse(h.versions_before.get(c.key())?)?)))
            .collect();
        running.push(kforge_core::upgrade::Running { node: h.node.clone(), versions });
    }
    let mixed = kforge_core::upgrade::mixed(&running);
    if mixed.is_empty() {
        let _ = writeln!(o, "versions: one release of each component everywhere");
    }
    for m in &mixed {
        let _ = writeln!(o, "versions: {m}");
    }
    let _ = writeln!(
        o,
        "apply would, stage by stage (a barrier between stages; where something running restarts, one host at a time behind its gate, workers drained):"
    );
    for h in &report.hosts {
        let steps: Vec<&str> = h.steps.iter().map(|s| s.step.as_str()).collect();
        let restarts = if h.units_restarted.is_empty() {
            String::new()
        } else {
            format!("  (restarts {})", h.units_restarted.join(", "))
        };
        let _ = writeln!(
            o,
            "  {:<10} {}{restarts}",
            h.node,
            if steps.is_empty() { "no changes".to_string() } else { steps.join(" → ") }
        );
    }
    if !report.removals.is_empty() {
        let _ = writeln!(o, "first, removals (the file no longer names them):");
        for r in &report.removals {
            let steps: Vec<&str> = r.steps.iter().map(|s| s.step.trim_end_matches(" (dry run: not done)")).collect();
            let _ = match &r.error {
                Some(e) => writeln!(o, "  {}: REFUSED: {e}", r.node),
                None => writeln!(o, "  {}: {}", r.node, steps.join(" → ")),
            };
        }
    }
    let _ = writeln!(o, "nothing was changed (kforge apply does this)");
    o
}

/// One live line per host on a terminal (indicatif); plain `node: step` lines otherwise,
/// so logs and pipes keep a readable record.
pub struct HostProgress {
    bars: Option<(indicatif::MultiProgress, std::collections::HashMap<String, indicatif::ProgressBar>)>,
}

impl HostProgress {
    pub fn new<'a>(nodes: impl Iterator<Item = &'a str>) -> HostProgress {
        use std::io::IsTerminal;
        if !std::io::stderr().is_terminal() {
            return HostProgress { bars: None };
        }
        let multi = indicatif::MultiProgress::new();
        let style =
            indicatif::ProgressStyle::with_template("{spinner} {prefix:<10} {wide_msg}").expect("valid template");
        let bars = nodes
            .map(|n| {
                let bar = multi
                    .add(indicatif::ProgressBar::new_spinner().with_style(style.clone()).with_prefix(n.to_string()));
                bar.enable_steady_tick(std::time::Duration::from_millis(120));
                (n.to_string(), bar)
            })
            .collect();
        HostProgress { bars: Some((multi, bars)) }
    }

    pub fn update(&self, node: &str, step: &str) {
        match &self.bars {
            Some((_, bars)) => match bars.get(node) {
                Some(bar) => bar.set_message(step.to_string()),
                None => eprintln!("{node}: {step}"),
            },
            None => eprintln!("{node}: {step}"),
        }
    }

    pub fn finish(&self) {
        if let Some((_, bars)) = &self.bars {
            bars.values().for_each(|b| b.finish_and_clear());
        }
    }
}

/// `kforge status`: one line per check, then what is not running and why.
pub fn status_text(r: &kforge_ssh::status::StatusReport) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "cluster {} ({})", r.cluster, r.distribution);
    for c in &r.checks {
        let _ = writeln!(o, "  {:<13} {:<7} {}", c.name, c.verdict.label(), c.detail);
    }
    // Stand-ins grouped by why the real program is not there; never counted as working.
    let mut reasons: Vec<(&str, Vec<&str>)> = Vec::new();
    for (component, why) in &r.not_running {
        match reasons.iter_mut().find(|(w, _)| w == why) {
            Some((_, v)) => v.push(component),
            None => reasons.push((why, vec![component])),
        }
    }
    for (why, components) in reasons {
        let _ = writeln!(
            o,
            "  {:<13} {:<5} {} (stand-ins, not the real programs; not counted): {why}",
            "not running",
            "-",
            components.join(", ")
        );
    }
    o
}

/// `kforge gitops status`: the repository, then one line per object and controller.
pub fn gitops_status(g: &kforge_core::spec::GitOps, s: &kforge_ssh::gitops::GitOpsStatus) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "gitops flux: {} (branch {}, path {}, every {})", g.repository, g.branch, g.path, g.interval);
    let mark = |ok: bool| if ok { "ok" } else { "FAIL" };
    let object = |o: &mut String, name: &str, obj: &kforge_ssh::gitops::Object, what: &str| {
        let detail = match (&obj.revision, obj.ready) {
            (Some(rev), true) => format!("{what} {rev}"),
            _ if !obj.exists => obj.message.clone(),
            (rev, _) => format!(
                "{}: {}{}",
                if obj.reason.is_empty() { "not Ready yet" } else { &obj.reason },
                obj.message,
                rev.as_ref().map(|r| format!(" (last good: {r})")).unwrap_or_default()
            ),
        };
        let _ = writeln!(o, "  {name:<14} {:<5} {detail}", mark(obj.ready));
    };
    object(&mut o, "source", &s.source, "fetched");
    object(&mut o, "kustomization", &s.kustomization, "applied");
    for (c, n) in &s.controllers {
        let _ = writeln!(o, "  {c:<14} {:<5} {n} available", mark(*n > 0));
    }
    o
}

/// `kforge explain [NODE] [PATH]`.
pub fn explain(plan: &Plan, node: Option<&str>, path: Option<&str>) -> Result<String, String> {
    let mut o = String::new();
    let Some(node) = node else {
        let _ = writeln!(o, "cluster {} ({}), API {}", plan.cluster, plan.distribution, plan.api);
        for n in &plan.nodes {
            let units: Vec<String> = n
                .phases
                .iter()
                .flat_map(|p| p.units.iter())
                .map(|u| if u.start { u.name.clone() } else { format!("{} (stand-in, not run)", u.name) })
                .collect();
            let _ = writeln!(o, "\n{}  {}  mesh {}", n.node, n.roles, n.mesh_ip);
            let _ = writeln!(o, "  runs: {}", units.join(", "));
            let _ = writeln!(o, "  files: {} (kforge explain {} lists them)", n.files().count(), n.node);
        }
        return Ok(o);
    };
    let names: Vec<&str> = plan.nodes.iter().map(|n| n.node.as_str()).collect();
    let np = plan
        .nodes
        .iter()
        .find(|n| n.node == node)
        .ok_or_else(|| format!("no node `{node}` in the cluster file (nodes: {})", names.join(", ")))?;
    let Some(path) = path else {
        let _ = writeln!(o, "{}  {}  mesh {}", np.node, np.roles, np.mesh_ip);
        for phase in &np.phases {
            if phase.files.is_empty() {
                continue;
            }
            let _ = writeln!(o, "\n  {}", phase.phase.name());
            for f in &phase.files {
                let what = f.about.as_ref().map(|a| a.what.as_str()).unwrap_or("");
                let _ = writeln!(o, "    {:<52} {what}", f.path);
            }
        }
        let _ = writeln!(o, "\nkforge explain {} PATH   explains one file in full", np.node);
        return Ok(o);
    };
    let matches: Vec<&kforge_core::plan::PlannedFile> = match np.files().find(|f| f.path == path) {
        Some(f) => vec![f],
        None => np.files().filter(|f| f.path.ends_with(path) || f.path.contains(path)).collect(),
    };
    let f = match matches.as_slice() {
        [one] => *one,
        [] => return Err(format!("{node} has no file matching `{path}` (kforge explain {node} lists them)")),
        many => {
            let list: Vec<&str> = many.iter().map(|f| f.path.as_str()).collect();
            return Err(format!("`{path}` matches several files of {node}: {}", list.join(", ")));
        }
    };
    let _ = writeln!(o, "{} on {node}  ({:04o} {}, {})", f.path, f.mode, f.owner, size(f.size));
    match &f.about {
        Some(a) => {
            let _ = writeln!(o, "\n  what     {}", a.what);
            let _ = writeln!(o, "  read by  {}", a.read_by);
            if !a.fields.is_empty() {
                let _ = writeln!(o, "\n  why it says what it says:");
                for (field, why) in &a.fields {
                    let _ = writeln!(o, "    {field}\n        {why}");
                }
            }
        }
        None => {
            let _ = writeln!(o, "\n  (key material or a file whose content speaks for itself)");
        }
    }
    if f.secret {
        let _ = writeln!(o, "\n  content: holds key material, not shown (kforge never prints a secret)");
    } else if let Ok(text) = std::str::from_utf8(&f.content) {
        let _ = writeln!(o, "\n  content:");
        for line in text.lines() {
            let _ = writeln!(o, "  | {line}");
        }
    }
    Ok(o)
}

/// `kforge doctor`: a line per check (ok / WARN / FAIL, the node, the evidence), and
/// under each problem its cause and fix.
pub fn doctor_text(r: &kforge_ssh::doctor::DoctorReport) -> String {
    use kforge_ssh::doctor::Verdict;
    let mut out = format!("cluster {}\n", r.cluster);
    for d in &r.diagnoses {
        let label = match d.verdict {
            Verdict::Warn => "WARN",
            v => v.label(),
        };
        let node = d.node.as_deref().filter(|n| !n.is_empty()).map(|n| format!("{n}: ")).unwrap_or_default();
        out.push_str(&format!("  {label:<7} {:<18} {node}{}\n", d.check, d.evidence));
        if !d.cause.is_empty() {
            out.push_str(&format!("          {:<18} cause: {}\n", "", d.cause));
        }
        if !d.fix.is_empty() {
            out.push_str(&format!("          {:<18} fix:   {}\n", "", d.fix));
        }
    }
    let count = |v: Verdict| r.diagnoses.iter().filter(|d| d.verdict == v).count();
    let (warnings, failures, unknown) = (count(Verdict::Warn), count(Verdict::Fail), count(Verdict::Unknown));
    out.push_str(&format!(
        "{} ok, {warnings} warning{}, {failures} failure{}, {unknown} unknown (a host did not answer) in {:.1} s\n",
        count(Verdict::Ok),
        plural(warnings),
        plural(failures),
        r.seconds
    ));
    out
}
