//! `kforge status`: the last stage of the pipeline — checks, each done for real on the
//! hosts: every node dials every other over the mesh, the firewall table is loaded,
//! the certificates on disk are the ones the bundle issued, every unit kforge starts
//! is active, and (hardway) etcd answers `endpoint health --cluster` over mTLS.
//! Stand-ins are listed by name as not running, never as healthy.

use kforge_core::component::Component;
use std::collections::BTreeMap;
use std::sync::Mutex;

use kforge_core::plan::Plan;
use serde::Serialize;

pub use crate::verdict::Verdict;

use crate::Target;
use crate::ssh::{ControlDir, Host, shell_quote};

/// One line of the status: a check, whether it passed, and what was seen.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    pub cluster: String,
    pub distribution: String,
    pub checks: Vec<Check>,
    /// Components installed as stand-ins, with why: not run, not counted.
    pub not_running: Vec<(String, String)>,
}

impl StatusReport {
    /// The worst verdict: what the exit code follows (`Verdict::exit_code`).
    pub fn worst(&self) -> Verdict {
        self.checks.iter().map(|c| c.verdict).max().unwrap_or(Verdict::Ok)
    }
}

pub struct StatusInput<'a> {
    pub plan: &'a Plan,
    pub targets: &'a [Target],
    pub ssh_config: Option<std::path::PathBuf>,
    /// The earliest expiry among the bundle's certificates (computed locally).
    pub earliest_expiry: Option<String>,
    /// Hardway: `etcdctl endpoint health --cluster` output (None: no etcd here).
    pub etcd_health: Option<Result<String, String>>,
    /// (component, why its real binary is not used).
    pub stand_ins: Vec<(String, String)>,
    /// Hardway with a real API server: what the Kubernetes checks ask.
    pub kubernetes: Option<KubernetesProbe>,
    /// spec.gitops: the engine's objects and controllers (asked with the Kubernetes checks).
    pub gitops: Option<GitOpsProbe>,
}

/// Where the GitOps engine's objects are: namespace, object name, controller Deployments.
#[derive(Debug, Clone)]
pub struct GitOpsProbe {
    pub namespace: String,
    pub name: String,
    pub controllers: Vec<String>,
}

/// The Kubernetes checks of a hardway cluster: the API's `/readyz` and every node
/// Ready (asked on a controller with its admin kubeconfig), and CoreDNS answering a
/// real query for `kubernetes.default.svc.<domain>` at the cluster DNS Service (sent
/// from a worker, so kube-proxy's Service rules are on the path too).
#[derive(Debug, Clone)]
pub struct KubernetesProbe {
    pub cluster_dns: String,
    pub cluster_domain: String,
    pub kubernetes_version: String,
}

#[derive(Default)]
struct HostSeen {
    reachable: bool,
    error: Option<String>,
    reach: BTreeMap<String, bool>,
    firewall_table: bool,
    units: BTreeMap<String, String>,
    hashes: BTreeMap<String, String>,
    /// Component → the first line of its running program's `--version`.
    versions: BTreeMap<String, String>,
    running: kforge_core::upgrade::Running,
    /// A bootstrap ran here (its outcome is recorded).
    bootstrapped: bool,
    /// It failed, and no apply converged the host since (`NodeFacts::bootstrap_failure`).
    bootstrap_failure: Option<String>,
}

fn host_for(input: &StatusInput<'_>, node: &str, control: &ControlDir) -> Option<Host> {
    let t = input.targets.iter().find(|t| t.node == node)?;
    Some(Host::of(t, input.ssh_config.clone(), control.path()))
}

/// Every check, in the order an operator reads them: can we reach the hosts, do they
/// reach each other, is each one locked down, are its files and services right, and
/// (where the real programs run) does the cluster answer.
pub fn status(input: &StatusInput<'_>) -> Result<StatusReport, String> {
    let plan = input.plan;
    let control = ControlDir::create()?;
    let seen = probe_hosts(input, &control);
    let mut checks: Vec<Check> = [
        Some(ssh_check(plan, &seen)),
        Some(mesh_check(plan, &seen)),
        firewall_check(plan, &seen),
        Some(certificates_check(plan, &seen, input.earliest_expiry.as_deref())),
        bootstrap_check(&seen),
        Some(services_check(&seen)),
        Some(versions_check(&seen)),
        input.etcd_health.as_ref().map(|health| etcd_check(plan, health)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if let Some(probe) = &input.kubernetes {
        let answering = |control_plane: bool| {
            plan.nodes
                .iter()
                .filter(|n| n.control_plane == control_plane || (!control_plane && n.roles.runs_workloads()))
                .filter(|n| seen.get(&n.node).is_some_and(|h| h.reachable))
                .filter_map(|n| host_for(input, &n.node, &control))
                .collect::<Vec<_>>()
        };
        let controllers = answering(true);
        checks.extend(kubernetes_checks(plan, probe, &controllers, &answering(false)));
        if let Some(g) = &input.gitops {
            let answer =
                controllers.iter().find_map(|h| crate::gitops::status(h, &g.namespace, &g.name, &g.controllers).ok());
            checks.push(match answer {
                Some(s) => Check::new("gitops", s.healthy(), s.summary()),
                None => Check::unknown("gitops", "no controller answered over SSH"),
            });
        }
    }
    let silent: Vec<String> =
        plan.nodes.iter().filter(|n| !seen.get(&n.node).is_some_and(|h| h.reachable)).map(|n| n.node.clone()).collect();
    if !silent.is_empty() {
        for c in
            checks.iter_mut().filter(|c| c.verdict == Verdict::Ok && READ_FROM_EVERY_HOST.contains(&c.name.as_str()))
        {
            c.verdict = Verdict::Unknown;
            c.detail = format!("{}; {}", c.detail, crate::verdict::unknown_for(&silent));
        }
    }
    let mut not_running = input.stand_ins.clone();
    not_running.extend(stand_in_k3s(&seen));
    Ok(StatusReport { cluster: plan.cluster.clone(), distribution: plan.distribution.clone(), checks, not_running })
}

impl Check {
    /// Ok or failed, as `ok` says.
    pub fn new(name: &str, ok: bool, detail: impl Into<String>) -> Check {
        Check { name: name.into(), verdict: if ok { Verdict::Ok } else { Verdict::Fail }, detail: detail.into() }
    }

    /// No host that could answer it did.
    fn unknown(name: &str, detail: &str) -> Check {
        Check { name: name.into(), verdict: Verdict::Unknown, detail: detail.into() }
    }

    /// `ok` with `detail` when nothing is wrong; else failed, naming what is.
    fn from(name: &str, problems: Vec<String>, detail: String, joiner: &str) -> Check {
        let ok = problems.is_empty();
        Check::new(name, ok, if ok { detail } else { problems.join(joiner) })
    }
}

/// The checks that read every host: what they found on the hosts that answered is not
/// known for the others, so an ok becomes unknown when some did not answer.
const READ_FROM_EVERY_HOST: [&str; 6] = ["mesh", "firewall", "certificates", "bootstrap", "services", "versions"];

/// Each host's view, in one SSH round trip per host (in parallel): the facts apply
/// reads (one reader of host state), asked to reach every other node over the mesh too.
fn probe_hosts(input: &StatusInput<'_>, control: &ControlDir) -> BTreeMap<String, HostSeen> {
    let plan = input.plan;
    let seen: Mutex<BTreeMap<String, HostSeen>> = Mutex::new(BTreeMap::new());
    let mesh_ips: Vec<&str> = plan.nodes.iter().map(|n| n.mesh_ip.as_str()).collect();
    std::thread::scope(|s| {
        for np in &plan.nodes {
            let Some(host) = host_for(input, &np.node, control) else { continue };
            let (seen, mesh_ips) = (&seen, &mesh_ips);
            s.spawn(move || {
                let peers: Vec<&str> = mesh_ips.iter().copied().filter(|ip| *ip != np.mesh_ip).collect();
                let h = match crate::facts::gather_with(
                    &host,
                    np,
                    &peers,
                    &BTreeMap::new(),
                    crate::facts::Cache::Leave,
                    "",
                ) {
                    Ok((f, _)) => HostSeen::of(np, f),
                    Err(e) => HostSeen { error: Some(e.to_string()), ..HostSeen::default() },
                };
                host.close();
                seen.lock().unwrap().insert(np.node.clone(), h);
            });
        }
    });
    seen.into_inner().unwrap()
}

impl HostSeen {
    /// What status reads of a host's facts: the units kforge starts there.
    fn of(np: &kforge_core::plan::NodePlan, f: crate::facts::NodeFacts) -> HostSeen {
        let started: Vec<&str> = np.units().filter(|u| u.start).map(|u| u.name.as_str()).collect();
        let running = f.running_versions(&np.node);
        let (bootstrap_failure, bootstrapped) = (f.bootstrap_failure(), f.bootstrap.is_some());
        HostSeen {
            reachable: true,
            error: None,
            reach: f.reach,
            firewall_table: f.firewall_table,
            units: f.unit_states.into_iter().filter(|(u, _)| started.contains(&u.as_str())).collect(),
            hashes: f.hashes,
            versions: f.running.into_iter().map(|(c, line)| (c.key().to_string(), line)).collect(),
            running,
            bootstrap_failure,
            bootstrapped,
        }
    }
}

fn ssh_check(plan: &Plan, seen: &BTreeMap<String, HostSeen>) -> Check {
    let unreachable: Vec<String> = plan
        .nodes
        .iter()
        .filter(|n| !seen.get(&n.node).is_some_and(|h| h.reachable))
        .map(|n| {
            let why = seen.get(&n.node).and_then(|h| h.error.clone()).unwrap_or_else(|| "no SSH target".into());
            format!("{}: {why}", n.node)
        })
        .collect();
    let n = plan.nodes.len();
    Check::from("ssh", unreachable, format!("{n} of {n} nodes answer"), "; ")
}

/// Every pair over the mesh: TCP to sshd on the peer's mesh address (relayed pairs too).
fn mesh_check(plan: &Plan, seen: &BTreeMap<String, HostSeen>) -> Check {
    let (mut pairs, mut broken) = (0usize, Vec::new());
    for (node, h) in seen {
        for (ip, ok) in &h.reach {
            pairs += 1;
            if !ok {
                let to = plan.nodes.iter().find(|n| &n.mesh_ip == ip).map(|n| n.node.as_str()).unwrap_or(ip);
                broken.push(format!("{node} → {to}"));
            }
        }
    }
    Check::new(
        "mesh",
        broken.is_empty(),
        if broken.is_empty() {
            format!("{pairs} of {pairs} node pairs reach each other over the mesh (TCP to sshd on the mesh address)")
        } else {
            format!("no route over the mesh: {}", broken.join(", "))
        },
    )
}

/// `table inet kforge` loaded wherever the plan has a firewall (None: no firewall).
fn firewall_check(plan: &Plan, seen: &BTreeMap<String, HostSeen>) -> Option<Check> {
    let fw_nodes: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.phases.iter().any(|p| p.phase == kforge_core::plan::Phase::Firewall))
        .map(|n| n.node.as_str())
        .collect();
    if fw_nodes.is_empty() {
        return None;
    }
    // Of the hosts that answered: a silent one's table is unknown, not missing.
    let answered: Vec<&str> = fw_nodes.iter().copied().filter(|n| seen.get(*n).is_some_and(|h| h.reachable)).collect();
    let missing: Vec<&str> =
        answered.iter().copied().filter(|n| !seen.get(*n).is_some_and(|h| h.firewall_table)).collect();
    Some(Check::new(
        "firewall",
        missing.is_empty(),
        if missing.is_empty() {
            format!("table inet kforge loaded (default-deny) on {} of {}", answered.len(), fw_nodes.len())
        } else {
            format!("table inet kforge missing on {}", missing.join(", "))
        },
    ))
}

/// The certificate files on the hosts are exactly the bundle's.
fn certificates_check(plan: &Plan, seen: &BTreeMap<String, HostSeen>, earliest_expiry: Option<&str>) -> Check {
    let (mut certs, mut wrong) = (0usize, Vec::new());
    for np in &plan.nodes {
        let Some(h) = seen.get(&np.node).filter(|h| h.reachable) else { continue };
        for f in np.files().filter(|f| f.path.ends_with(".crt")) {
            certs += 1;
            match h.hashes.get(&f.path) {
                Some(sum) if sum == &f.sha256 => {}
                Some(_) => wrong.push(format!("{}:{} differs from the bundle's", np.node, f.path)),
                None => wrong.push(format!("{}:{} is missing", np.node, f.path)),
            }
        }
    }
    let expiry = earliest_expiry.map(|e| format!("; earliest expiry {e}")).unwrap_or_default();
    Check::from(
        "certificates",
        wrong,
        format!("{certs} certificate files on the hosts are the ones kforge issued{expiry}"),
        "; ",
    )
}

/// Every unit kforge starts is active on every host that runs it.
/// Nodes whose bootstrap (user-data, a rendered tree) stopped at a step: shown only
/// where a bootstrap ran.
fn bootstrap_check(seen: &BTreeMap<String, HostSeen>) -> Option<Check> {
    let ran = seen.values().filter(|h| h.bootstrapped).count();
    if ran == 0 {
        return None;
    }
    let failed: Vec<String> =
        seen.iter().filter_map(|(node, h)| Some(format!("{node}: {}", h.bootstrap_failure.as_ref()?))).collect();
    Some(Check::from(
        "bootstrap",
        failed,
        format!(
            "{ran} node{} ran {} bootstrap to the end",
            if ran == 1 { "" } else { "s" },
            if ran == 1 { "its" } else { "their" }
        ),
        "; ",
    ))
}

fn services_check(seen: &BTreeMap<String, HostSeen>) -> Check {
    let mut by_unit: BTreeMap<&str, (usize, Vec<String>)> = BTreeMap::new();
    for (node, h) in seen {
        for (u, state) in &h.units {
            let e = by_unit.entry(u).or_default();
            if state == "active" {
                e.0 += 1;
            } else {
                e.1.push(format!("{node}: {state}"));
            }
        }
    }
    let bad: Vec<String> = by_unit
        .iter()
        .filter(|(_, (_, b))| !b.is_empty())
        .map(|(u, (_, b))| format!("{u} ({})", b.join(", ")))
        .collect();
    Check::new(
        "services",
        bad.is_empty(),
        if bad.is_empty() {
            by_unit.iter().map(|(u, (n, _))| format!("{u} {n}/{n}")).collect::<Vec<_>>().join(", ") + " active"
        } else {
            format!("not active: {}", bad.join("; "))
        },
    )
}

/// One release of each component everywhere (an interrupted upgrade, a host changed by
/// hand show as mixed).
fn versions_check(seen: &BTreeMap<String, HostSeen>) -> Check {
    let running: Vec<kforge_core::upgrade::Running> = seen.values().map(|h| h.running.clone()).collect();
    let mixed = kforge_core::upgrade::mixed(&running);
    let mut uniform: BTreeMap<&str, String> = BTreeMap::new();
    for r in &running {
        for (c, v) in &r.versions {
            uniform.entry(c.key()).or_insert_with(|| v.to_string());
        }
    }
    let detail = uniform.iter().map(|(c, v)| format!("{c} {v}")).collect::<Vec<_>>().join(", ");
    Check::from(
        "versions",
        mixed,
        if detail.is_empty() { "no component reported a release".into() } else { detail },
        "; ",
    )
}

/// Every controller's etcd member healthy (`etcdctl endpoint health --cluster`).
fn etcd_check(plan: &Plan, health: &Result<String, String>) -> Check {
    let members = plan.nodes.iter().filter(|n| n.control_plane).count();
    let (ok, detail) = match health {
        Ok(out) => {
            let healthy = out.lines().filter(|l| l.contains(" is healthy")).count();
            (
                healthy == members && !out.contains("unhealthy"),
                format!(
                    "{healthy} of {members} members healthy (etcdctl endpoint health --cluster, kforge's client certificate, over the mesh)"
                ),
            )
        }
        // Its controllers did not answer: nothing is known of etcd's health.
        Err(e) if e.starts_with("cannot reach ") => return Check::unknown("etcd", e),
        Err(e) => (false, e.clone()),
    };
    Check::new("etcd", ok, detail)
}

/// The K3s binary on the hosts is kforge's stand-in (it says so in its --version).
fn stand_in_k3s(seen: &BTreeMap<String, HostSeen>) -> Option<(String, String)> {
    let nodes: Vec<&str> = seen
        .iter()
        .filter(|(_, h)| h.versions.values().any(|v| v.contains("stand-in")))
        .map(|(node, _)| node.as_str())
        .collect();
    (!nodes.is_empty()).then(|| {
        (
            Component::K3s.key().into(),
            format!(
                "the k3s binary on {} is kforge-k3s-stand-in, not K3s: it checks the files K3s reads and joins over the mesh, but no Kubernetes runs",
                nodes.join(", ")
            ),
        )
    })
}

/// The probes, kept as shell (shellcheck runs on the file in CI).
const STATUS_SH: &str = include_str!("sh/status.sh");

/// The probe file followed by one call of `function` with `args` quoted.
pub(crate) fn probe_call(function: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    format!("{STATUS_SH}\n{function} {}\n", args.join(" "))
}

/// `api`, `nodes` and `dns` checks (see [`KubernetesProbe`]).
fn kubernetes_checks(plan: &Plan, probe: &KubernetesProbe, controllers: &[Host], worker_hosts: &[Host]) -> Vec<Check> {
    let mut checks = Vec::new();
    let script = probe_call("kf_kubernetes_status", &[]);
    let answer = controllers.iter().find_map(|h| h.run_script("kubernetes status", &script).ok());
    let Some(out) = answer else {
        checks.push(Check::unknown("api", "no controller answered over SSH"));
        return checks;
    };
    let readyz = out.lines().find_map(|l| l.strip_prefix("readyz ")).unwrap_or("").trim().to_string();
    checks.push(Check::new(
        "api",
        readyz == "ok",
        if readyz == "ok" {
            "/readyz ok (kube-apiserver, asked with the admin kubeconfig on a controller)".into()
        } else {
            format!("/readyz: {readyz}")
        },
    ));
    let mut registered: BTreeMap<String, (String, bool)> = BTreeMap::new();
    // A node under pressure is Ready but tainted NoSchedule: new pods wait forever.
    let mut pressure: Vec<String> = Vec::new();
    for line in out.lines().filter_map(|l| l.strip_prefix("node ")) {
        let w: Vec<&str> = line.split_whitespace().collect();
        if let [name, version, ready, rest @ ..] = w.as_slice() {
            registered.insert(name.to_string(), (version.to_string(), *ready == "True"));
            let under: Vec<&str> = rest.iter().flat_map(|c| c.split(',')).filter(|c| c.ends_with("Pressure")).collect();
            if !under.is_empty() {
                pressure.push(format!("{name} under {} (tainted NoSchedule: new pods wait; free disk or memory, or set hardway.evictionHard)", under.join(", ")));
            }
        }
    }
    let mut problems = Vec::new();
    let workers: Vec<&str> = plan.nodes.iter().filter(|n| n.roles.runs_workloads()).map(|n| n.node.as_str()).collect();
    for w in &workers {
        match registered.get(*w) {
            None => problems.push(format!("{w} not registered")),
            Some((_, false)) => problems.push(format!("{w} not Ready")),
            Some((v, true)) if v != &probe.kubernetes_version => {
                problems.push(format!("{w} runs {v}, not {}", probe.kubernetes_version))
            }
            Some(_) => {}
        }
    }
    problems.extend(pressure);
    checks.push(Check::new(
        "nodes",
        problems.is_empty() && readyz == "ok",
        if problems.is_empty() {
            format!("{} of {} Ready, kubelet {}", workers.len(), workers.len(), probe.kubernetes_version)
        } else {
            problems.join("; ")
        },
    ));
    let name = format!("kubernetes.default.svc.{}", probe.cluster_domain);
    let dns = dns_answer(&dns_query_script(&probe.cluster_dns, &name), worker_hosts);
    checks.push(match dns {
        Some(Ok(addr)) => Check::new("dns", true, format!("CoreDNS at {} answers {name} = {addr}", probe.cluster_dns)),
        Some(Err(e)) => Check::new("dns", false, format!("{name} at {}: {e}", probe.cluster_dns)),
        None => Check::unknown("dns", "no worker answered over SSH"),
    });
    checks
}

/// The first worker's answer: Ok(address) or Err(what went wrong); None if no worker ran it.
pub(crate) fn dns_answer(script: &str, workers: &[Host]) -> Option<Result<String, String>> {
    let out = workers.iter().find_map(|h| h.run_script("dns probe", script).ok())?;
    let line = out.lines().find(|l| l.starts_with("dns ")).unwrap_or("dns no answer").to_string();
    Some(match line.strip_prefix("dns answer ") {
        Some(addr) => Ok(addr.trim().to_string()),
        None => Err(line.trim_start_matches("dns ").to_string()),
    })
}

/// A DNS query (type A) for `name` sent with bash's /dev/udp (`kf_dns_query`), the
/// answer's first address decoded from the reply: no dig or nslookup needed on the host.
pub(crate) fn dns_query_script(server: &str, name: &str) -> String {
    let mut query: Vec<u8> = vec![0x6b, 0x66, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        query.push(label.len() as u8);
        query.extend_from_slice(label.as_bytes());
    }
    query.extend_from_slice(&[0, 0, 1, 0, 1]);
    let printf: String = query.iter().map(|b| format!("\\x{b:02x}")).collect();
    probe_call("kf_dns_query", &[server.to_string(), printf])
}
