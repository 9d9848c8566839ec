//! `kforge doctor`: read-only, online diagnosis of the cluster the file describes.
//! Each check says ok / warn / fail, what was seen (evidence), why it matters (cause)
//! and what to do (fix) — for the failures that cost the seed operators hours: MTU
//! black holes inside the mesh, a "my IP only" rule hiding a worker, a missing
//! scheduler configuration leaving every pod Pending, a CoreDNS forwarding loop.
//!
//! One SSH round trip per host, all hosts in parallel (`kf_doctor_host`), then the
//! cluster-wide questions on one controller (etcd member by member, the API's
//! `/readyz?verbose`, leases, Pending pods) and a DNS query from a worker. Nothing
//! on a host is written; the probes only read (`sh/doctor.sh`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use kforge_core::plan::{NodePlan, Plan};
use serde::Serialize;
use time::OffsetDateTime;

use crate::Target;
use crate::ssh::{ControlDir, Host, shell_quote};

pub use crate::verdict::Verdict;

/// One check's answer; `node` is set when it is about one node (or a pair, `a → b`).
#[derive(Debug, Clone, Serialize)]
pub struct Diagnosis {
    pub check: &'static str,
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub evidence: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub cause: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

impl Diagnosis {
    fn ok(check: &'static str, evidence: impl Into<String>) -> Diagnosis {
        Diagnosis {
            check,
            verdict: Verdict::Ok,
            node: None,
            evidence: evidence.into(),
            cause: String::new(),
            fix: String::new(),
        }
    }
    fn bad(check: &'static str, verdict: Verdict, node: impl Into<String>, evidence: impl Into<String>) -> Diagnosis {
        Diagnosis { node: Some(node.into()), verdict, ..Diagnosis::ok(check, evidence) }
    }
    fn because(mut self, cause: impl Into<String>, fix: impl Into<String>) -> Diagnosis {
        self.cause = cause.into();
        self.fix = fix.into();
        self
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub cluster: String,
    pub diagnoses: Vec<Diagnosis>,
    /// Seconds the whole diagnosis took.
    pub seconds: f64,
}

impl DoctorReport {
    pub fn worst(&self) -> Verdict {
        self.diagnoses.iter().map(|d| d.verdict).max().unwrap_or(Verdict::Ok)
    }
}

/// A mesh member as the doctor needs it.
#[derive(Debug, Clone)]
pub struct MeshMember {
    pub name: String,
    pub mesh_ip: String,
    pub public_key: String,
}

pub struct DoctorInput<'a> {
    pub plan: &'a Plan,
    pub targets: &'a [Target],
    pub ssh_config: Option<std::path::PathBuf>,
    pub mesh_interface: String,
    pub mesh_mtu: u16,
    pub members: Vec<MeshMember>,
    /// hardway: kube-apiserver, etcd and the rest run for real; ask them.
    pub hardway_api: bool,
    /// hardway: etcd's client URLs on the mesh, by member name.
    pub etcd_endpoints: Vec<(String, String)>,
    /// A hardway host with cgroup v1 is allowed (`hardway.allowCgroupV1`).
    pub cgroup_v1_allowed: bool,
    /// Warn about certificates expiring within this many days (`pki.renewBeforeDays`).
    pub renew_before_days: i64,
    pub cluster_dns: Option<(String, String)>,
    /// hardway: the image archives kforge imports into every worker's containerd.
    pub images: Vec<String>,
}

/// What one host answered.
#[derive(Debug, Default)]
pub struct HostView {
    pub error: Option<String>,
    pub time: f64,
    /// Local wall clock when the probe was sent (for clock skew between hosts).
    pub sent_at: f64,
    /// What the one reader of host state says (swap, cgroups, identity, units, file
    /// digests, running releases, a failed bootstrap): the same facts apply acts on.
    pub facts: crate::facts::NodeFacts,
    pub sysctls: BTreeMap<String, String>,
    pub handshakes: BTreeMap<String, i64>,
    /// Peer mesh IP → (small ping ok, full-MTU don't-fragment ping ok).
    pub pings: BTreeMap<String, (bool, bool)>,
    /// `IP:PORT` → open | refused | filtered.
    pub ports: BTreeMap<String, String>,
    pub firewall_loaded: bool,
    pub firewall_rules: BTreeMap<String, usize>,
    pub foreign_tables: Vec<String>,
    /// Path → (sha256, notAfter).
    pub certs: BTreeMap<String, (String, Option<OffsetDateTime>)>,
    pub resolvers: Vec<String>,
    /// Unit → its last complaint in the journal (only for units not active).
    pub unit_logs: BTreeMap<String, String>,
    pub vxlan_dev: Option<String>,
    /// Imported image → pinned | unpinned | missing (empty: not asked, or containerd silent).
    pub images: BTreeMap<String, String>,
    /// The underlay interface and its MTU.
    pub underlay: Option<(String, u32)>,
}

impl HostView {
    /// The doctor's own probes (`kf_doctor_host`), beside the host's facts.
    pub fn parse(facts: crate::facts::NodeFacts, out: &str) -> HostView {
        let mut h = HostView { facts, ..HostView::default() };
        for line in out.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            match w.as_slice() {
                ["time", t] => h.time = t.parse().unwrap_or(0.0),
                ["sysctl", k, v] => {
                    h.sysctls.insert(k.to_string(), v.to_string());
                }
                ["handshake", key, at] => {
                    h.handshakes.insert(key.to_string(), at.parse().unwrap_or(0));
                }
                ["ping", ip, small, df] => {
                    h.pings.insert(ip.to_string(), (*small == "ok", *df == "ok"));
                }
                ["port", p, r] => {
                    h.ports.insert(p.to_string(), r.to_string());
                }
                ["firewall", state] => h.firewall_loaded = *state == "loaded",
                ["firewall-rules", chain, n] => {
                    h.firewall_rules.insert(chain.to_string(), n.parse().unwrap_or(0));
                }
                ["foreign-table", fam, name] => h.foreign_tables.push(format!("{fam} {name}")),
                ["cert", path, sum, pem] => {
                    use base64::Engine;
                    let pem = base64::engine::general_purpose::STANDARD.decode(pem).unwrap_or_default();
                    let end = kforge_core::pki::summary(&String::from_utf8_lossy(&pem)).map(|s| s.not_after);
                    h.certs.insert(path.to_string(), (sum.to_string(), end));
                }
                ["cert", path, sum] => {
                    h.certs.insert(path.to_string(), (sum.to_string(), None));
                }
                ["resolv", rest @ ..] => h.resolvers = rest.iter().map(|s| s.to_string()).collect(),
                ["unitlog", u, ..] => {
                    let text = line.splitn(3, ' ').nth(2).unwrap_or("").trim();
                    h.unit_logs.insert(u.to_string(), log_message(text).chars().take(300).collect());
                }
                ["vxlan", dev] => h.vxlan_dev = Some(dev.to_string()),
                ["image", name, state] => {
                    h.images.insert(name.to_string(), state.to_string());
                }
                ["underlay", dev, mtu] => h.underlay = mtu.parse().ok().map(|m| (dev.to_string(), m)),
                _ => {}
            }
        }
        h
    }
}

/// A journal line as an operator reads it: a JSON log line (etcd's) as `msg: error`.
fn log_message(text: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) if v.get("msg").is_some() => {
            let msg = v["msg"].as_str().unwrap_or("");
            match v["error"].as_str() {
                Some(e) => format!("{msg}: {e}"),
                None => msg.to_string(),
            }
        }
        _ => text.to_string(),
    }
}

/// The workstation's kubeconfig: a `server:` on loopback works only on the node the
/// file was copied from (the seed's K3s `k3s.yaml`, 127.0.0.1:6443). None when `text`
/// names no server at all.
pub fn local_kubeconfig(path: &str, text: &str, api_url: &str) -> Option<Diagnosis> {
    let servers: Vec<&str> =
        text.lines().filter_map(|l| l.trim().strip_prefix("server:")).map(|s| s.trim().trim_matches('"')).collect();
    if servers.is_empty() {
        return None;
    }
    let loopback: Vec<&str> = servers
        .iter()
        .copied()
        .filter(|u| {
            let host = u.split("://").nth(1).unwrap_or(u);
            host.starts_with("127.") || host.starts_with("localhost") || host.starts_with("[::1]")
        })
        .collect();
    Some(match loopback.is_empty() {
        true => Diagnosis::ok("kubeconfig", format!("{path} points at {}", servers.join(", "))),
        false => Diagnosis::bad(
            "kubeconfig",
            Verdict::Warn,
            path,
            format!("server {} is loopback", loopback.join(", ")),
        )
        .because(
            "it works only on the node it was copied from; from here every kubectl fails with connection refused",
            format!("kforge kubeconfig --out {path} writes one for the API on the mesh ({api_url})"),
        ),
    })
}

/// `2026-11-24T18:00:00.123456Z` (a Lease's renewTime) as Unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i32>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let hms = rest.trim_end_matches('Z').split(['.', '+']).next()?;
    let mut t = hms.split(':').map(|x| x.parse::<u8>().ok());
    let date =
        time::Date::from_calendar_date(y, time::Month::try_from(u8::try_from(m).ok()?).ok()?, u8::try_from(day).ok()?)
            .ok()?;
    let clock = time::Time::from_hms(t.next()??, t.next()??, t.next()??).ok()?;
    Some(date.with_time(clock).assume_utc().unix_timestamp())
}

const DOCTOR_SH: &str = include_str!("sh/doctor.sh");

fn call(function: &str, args: &[String]) -> String {
    let args: Vec<String> = args.iter().map(|a| shell_quote(a)).collect();
    // The firewall's rule count comes from the same pipeline apply's recheck runs.
    let rules = shell_quote(kforge_core::firewall::LOADED_RULES);
    format!("{DOCTOR_SH}\nKF_LOADED_RULES={rules}\n{function} {}\n", args.join(" "))
}

fn now() -> f64 {
    OffsetDateTime::now_utc().unix_timestamp_nanos() as f64 / 1e9
}

/// The ports each node must reach on each other node over the mesh.
fn required_ports(target: &NodePlan, hardway: bool) -> Vec<(u16, &'static str)> {
    let mut v = vec![(22, "sshd")];
    if target.control_plane {
        v.push((6443, "kube-apiserver"));
        if hardway {
            v.extend([(2379, "etcd client"), (2380, "etcd peer")]);
        }
    }
    if target.roles.runs_workloads() {
        v.push((10250, "kubelet"));
    }
    v
}

/// Run every check.
pub fn doctor(input: &DoctorInput<'_>) -> Result<DoctorReport, String> {
    let started = now();
    let control = ControlDir::create()?;
    let host_for = |node: &str| {
        input.targets.iter().find(|t| t.node == node).map(|t| Host::of(t, input.ssh_config.clone(), control.path()))
    };
    let views: Mutex<BTreeMap<String, HostView>> = Mutex::new(BTreeMap::new());
    std::thread::scope(|s| {
        for np in &input.plan.nodes {
            let Some(host) = host_for(&np.node) else { continue };
            let views = &views;
            s.spawn(move || {
                let peers: Vec<&str> =
                    input.plan.nodes.iter().filter(|p| p.node != np.node).map(|p| p.mesh_ip.as_str()).collect();
                let ports: Vec<String> = input
                    .plan
                    .nodes
                    .iter()
                    .filter(|p| p.node != np.node)
                    .flat_map(|p| {
                        required_ports(p, input.hardway_api)
                            .into_iter()
                            .map(move |(port, _)| format!("{}:{port}", p.mesh_ip))
                    })
                    .collect();
                let certs: Vec<&str> =
                    np.files().filter(|f| f.path.ends_with(".crt")).map(|f| f.path.as_str()).collect();
                // Their states come with the facts; the probe reads the journal of those down.
                let units: Vec<&str> = np.units().filter(|u| u.start).map(|u| u.name.as_str()).collect();
                let args = [
                    input.mesh_interface.clone(),
                    input.mesh_mtu.to_string(),
                    peers.join(" "),
                    ports.join(" "),
                    certs.join(" "),
                    units.join(" "),
                    np.endpoint.clone().unwrap_or_default(),
                    if np.roles.runs_workloads() { input.images.join(" ") } else { String::new() },
                ];
                let sent_at = now();
                // The host's state from the one reader (facts), the doctor's own probes
                // in the same round trip.
                let probes = call("kf_doctor_host", &args);
                let view = match crate::facts::gather_with(
                    &host,
                    np,
                    &[],
                    &BTreeMap::new(),
                    crate::facts::Cache::Leave,
                    &probes,
                ) {
                    Ok((facts, out)) => HostView { sent_at, ..HostView::parse(facts, &out) },
                    Err(e) => HostView { error: Some(e.to_string()), ..HostView::default() },
                };
                host.close();
                views.lock().unwrap().insert(np.node.clone(), view);
            });
        }
    });
    let views = views.into_inner().unwrap();
    let mut out = judge_hosts(input, &views);
    if input.hardway_api {
        let controllers: Vec<Host> = input
            .plan
            .nodes
            .iter()
            .filter(|n| n.control_plane && views.get(&n.node).is_some_and(|v| v.error.is_none()))
            .filter_map(|n| host_for(&n.node))
            .collect();
        let workers: Vec<Host> = input
            .plan
            .nodes
            .iter()
            .filter(|n| n.roles.runs_workloads() && views.get(&n.node).is_some_and(|v| v.error.is_none()))
            .filter_map(|n| host_for(&n.node))
            .collect();
        // The three cluster-wide questions at once: each waits on a different thing.
        let (etcd, api, dns) = std::thread::scope(|s| {
            let etcd = s.spawn(|| etcd(input, &controllers));
            let api = s.spawn(|| api(&controllers));
            let dns = s.spawn(|| input.cluster_dns.as_ref().map(|(dns, domain)| coredns(dns, domain, &workers)));
            (etcd.join().expect("etcd probe"), api.join().expect("api probe"), dns.join().expect("dns probe"))
        });
        out.extend(etcd);
        out.extend(api);
        out.extend(dns);
    }
    Ok(DoctorReport { cluster: input.plan.cluster.clone(), diagnoses: out, seconds: now() - started })
}

/// Every per-host and per-pair check, from the hosts' answers (no SSH here).
pub fn judge_hosts(input: &DoctorInput<'_>, views: &BTreeMap<String, HostView>) -> Vec<Diagnosis> {
    let plan = input.plan;
    let mut out = Vec::new();
    let up: Vec<(&NodePlan, &HostView)> =
        plan.nodes.iter().filter_map(|n| views.get(&n.node).filter(|v| v.error.is_none()).map(|v| (n, v))).collect();
    let mut unreachable = Vec::new();
    for n in &plan.nodes {
        let error = match views.get(&n.node) {
            Some(v) => v.error.clone(),
            None => Some("no SSH target: set ssh.host or endpoint in the cluster file".to_string()),
        };
        if let Some(e) = error {
            unreachable.push(Diagnosis::bad("ssh", Verdict::Fail, &n.node, e).because(
                "kforge cannot reach the host over SSH, so nothing else about it is known",
                "check the host is up and `ssh` to it works with the same ssh_config",
            ));
        }
    }
    let silent: Vec<String> = unreachable.iter().filter_map(|d| d.node.clone()).collect();
    if unreachable.is_empty() {
        out.push(Diagnosis::ok("ssh", format!("{} of {} hosts answer", up.len(), plan.nodes.len())));
    }
    out.extend(unreachable);
    out.extend(per_node(
        "bootstrap",
        &up,
        |_, v| v.facts.bootstrap_failure(),
        "the node's user-data (or rendered tree) ran its bootstrap script, which stopped at this step: the node is half set up",
        "fix the cause (the cluster file, or what the host lacks), then kforge apply finishes the node over SSH; or boot it again with new user-data",
        "no failed bootstrap",
    ));
    out.push(clock(&up));
    out.extend(per_node(
        "swap",
        &up,
        |n, v| {
            (n.swap_forbidden && v.facts.swap_on())
                .then(|| format!("{} swap device(s) active in /proc/swaps", v.facts.swap_devices))
        },
        "the kubelet refuses to start with swap on (failSwapOn) unless configured for it",
        "swapoff -a, and remove the swap entry from /etc/fstab (or the swap unit)",
        "no swap on kubelet hosts",
    ));
    out.push(cgroups(input, &up));
    out.extend(per_node(
        "memory-cgroup",
        &up,
        |n, v| {
            (n.requires_memory_cgroup && v.facts.memory_cgroup == Some(false))
                .then(|| "the memory cgroup controller is off (/proc/cgroups, cgroup.controllers)".to_string())
        },
        crate::preflight::MEMORY_CGROUP_OFF,
        crate::preflight::MEMORY_CGROUP_FIX,
        "the memory cgroup is on wherever a kubelet runs",
    ));
    out.extend(per_node(
        "forwarding",
        &up,
        |n, v| {
            let fwd = v.sysctls.get("ip_forward").map(String::as_str);
            let br = v.sysctls.get("bridge-nf-call-iptables").map(String::as_str);
            if fwd != Some("1") {
                Some(format!("net.ipv4.ip_forward = {}", fwd.unwrap_or("?")))
            } else if n.roles.runs_workloads() && input.hardway_api && br != Some("1") {
                Some(format!("net.bridge.bridge-nf-call-iptables = {} (br_netfilter)", br.unwrap_or("?")))
            } else {
                None
            }
        },
        "without forwarding, pods cannot leave their node; without br_netfilter, Service traffic between pods on one bridge skips kube-proxy's rules",
        "kforge apply sets both (modprobe br_netfilter; sysctl net.ipv4.ip_forward=1)",
        "ip_forward on everywhere; br_netfilter on workers",
    ));
    out.push(identity(&up));
    out.extend(mesh(input, &up));
    out.extend(firewall(&up));
    out.extend(ports(input, &up));
    out.extend(files(&up));
    out.extend(images(&up));
    out.extend(certificates(input, &up));
    out.extend(services(&up));
    out.push(versions(&up));
    out.extend(per_node(
        "resolv.conf",
        &up,
        |n, v| {
            let local: Vec<&String> = v.resolvers.iter().filter(|r| r.starts_with("127.") || *r == "::1").collect();
            (n.roles.runs_workloads() && !local.is_empty())
                .then(|| format!("/etc/resolv.conf points at {}", local.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")))
        },
        "CoreDNS forwards to the node's resolv.conf; a loopback resolver there is CoreDNS itself inside its pod: a forwarding loop (CoreDNS's loop plugin stops it, and names stop resolving)",
        "point /etc/resolv.conf at real upstream resolvers (with systemd-resolved: link it to /run/systemd/resolve/resolv.conf)",
        "no loopback resolver on workers",
    ));
    if up.iter().any(|(_, v)| v.vxlan_dev.is_some()) {
        out.extend(per_node(
            "flannel",
            &up,
            |_, v| v.vxlan_dev.as_ref().filter(|d| **d != input.mesh_interface).map(|d| format!("flannel.1 is bound to {d}")),
            "flannel's VXLAN is unencrypted: bound to a public interface, pod traffic crosses the internet in plaintext",
            format!("K3s: flannel-iface: {} (kforge's config sets it; run kforge apply)", input.mesh_interface),
            "flannel's VXLAN rides the mesh",
        ));
    }
    // What holds on the hosts that answered is not known for the others: never ok.
    if !silent.is_empty() {
        for d in out.iter_mut().filter(|d| d.verdict == Verdict::Ok && d.check != "ssh") {
            d.verdict = Verdict::Unknown;
            d.evidence = format!("{}; {}", d.evidence, crate::verdict::unknown_for(&silent));
        }
    }
    out
}

/// One release of each component on every node: mixed releases are an upgrade that
/// stopped half-way or a host changed by hand.
fn versions(up: &[(&NodePlan, &HostView)]) -> Diagnosis {
    let running: Vec<kforge_core::upgrade::Running> =
        up.iter().map(|(n, v)| v.facts.running_versions(&n.node)).collect();
    let mixed = kforge_core::upgrade::mixed(&running);
    if mixed.is_empty() {
        return Diagnosis::ok("versions", "every node runs one release of each component");
    }
    Diagnosis {
        check: "versions",
        verdict: Verdict::Warn,
        node: None,
        evidence: mixed.join("; "),
        cause: String::new(),
        fix: String::new(),
    }
    .because(
        "an upgrade that stopped half-way, or a host changed by hand: the cluster runs at the skew between them",
        "kforge apply moves every node to the cluster file's release (kforge plan --observe shows how)",
    )
}

/// A per-node check: `problem` returns the evidence when the node is wrong.
fn per_node(
    check: &'static str,
    up: &[(&NodePlan, &HostView)],
    problem: impl Fn(&NodePlan, &HostView) -> Option<String>,
    cause: &str,
    fix: impl Into<String>,
    ok: &str,
) -> Vec<Diagnosis> {
    let fix = fix.into();
    let bad: Vec<Diagnosis> = up
        .iter()
        .filter_map(|(n, v)| {
            problem(n, v).map(|e| Diagnosis::bad(check, Verdict::Fail, &n.node, e).because(cause, fix.clone()))
        })
        .collect();
    if bad.is_empty() { vec![Diagnosis::ok(check, ok)] } else { bad }
}

/// Clock offsets against this workstation, compared between hosts.
fn clock(up: &[(&NodePlan, &HostView)]) -> Diagnosis {
    let offsets: Vec<(&str, f64)> = up.iter().map(|(n, v)| (n.node.as_str(), v.time - v.sent_at)).collect();
    let (Some(min), Some(max)) =
        (offsets.iter().min_by(|a, b| a.1.total_cmp(&b.1)), offsets.iter().max_by(|a, b| a.1.total_cmp(&b.1)))
    else {
        return Diagnosis::ok("clock", "no host answered");
    };
    let skew = max.1 - min.1;
    let evidence = format!("{} is {skew:.1} s ahead of {}", max.0, min.0);
    let verdict = if skew >= 10.0 {
        Verdict::Fail
    } else if skew >= 2.0 {
        Verdict::Warn
    } else {
        return Diagnosis::ok("clock", format!("hosts agree within {skew:.1} s (as measured over SSH)"));
    };
    Diagnosis::bad("clock", verdict, max.0, evidence).because(
        "skewed clocks break certificate validity (not yet valid / expired), etcd leases and heartbeats, and log correlation",
        "run a time daemon on every host (systemd-timesyncd or chrony) and check `timedatectl`",
    )
}

fn cgroups(input: &DoctorInput<'_>, up: &[(&NodePlan, &HostView)]) -> Diagnosis {
    let v1: Vec<&str> = up
        .iter()
        .filter(|(n, v)| n.roles.runs_workloads() && v.facts.cgroup_version != 2)
        .map(|(n, _)| n.node.as_str())
        .collect();
    if v1.is_empty() || !input.hardway_api {
        return Diagnosis::ok("cgroups", "cgroup v2 on every kubelet host");
    }
    let verdict = if input.cgroup_v1_allowed { Verdict::Warn } else { Verdict::Fail };
    Diagnosis::bad("cgroups", verdict, v1.join(", "), "cgroup v1 (/sys/fs/cgroup is not cgroup2fs)").because(
        "Kubernetes 1.35+ kubelets refuse cgroup v1 unless failCgroupV1: false; its support is being removed",
        "boot with cgroup v2 (systemd.unified_cgroup_hierarchy=1); allowCgroupV1 only keeps such hosts running",
    )
}

fn identity(up: &[(&NodePlan, &HostView)]) -> Diagnosis {
    let mut by_id: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut by_name: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (n, v) in up {
        by_id.entry(v.facts.machine_id.as_str()).or_default().push(&n.node);
        by_name.entry(v.facts.hostname.as_str()).or_default().push(&n.node);
    }
    let dup: Vec<String> = by_id
        .iter()
        .filter(|(_, ns)| ns.len() > 1)
        .map(|(id, ns)| format!("machine-id {id} on {}", ns.join(", ")))
        .chain(
            by_name.iter().filter(|(_, ns)| ns.len() > 1).map(|(h, ns)| format!("hostname {h} on {}", ns.join(", "))),
        )
        .collect();
    if dup.is_empty() {
        return Diagnosis::ok("identity", "every host has its own machine-id and hostname");
    }
    Diagnosis::bad("identity", Verdict::Fail, "", dup.join("; ")).because(
        "cloned images share a machine-id: the kubelet's node identity, DHCP leases and journal collide",
        "on each clone: rm /etc/machine-id && systemd-machine-id-setup, and give it its own hostname",
    )
}

/// Every pair: a recent handshake, a small ping, and a don't-fragment ping at the mesh MTU.
fn mesh(input: &DoctorInput<'_>, up: &[(&NodePlan, &HostView)]) -> Vec<Diagnosis> {
    let name_of =
        |ip: &str| input.members.iter().find(|m| m.mesh_ip == ip).map(|m| m.name.clone()).unwrap_or(ip.to_string());
    let mut out = Vec::new();
    // A node whose mesh is down first: every pair with it fails for that one reason. Its
    // K3s or kubelet keeps running (ordered after the mesh, never bound to it) and
    // reaches its peers again once the mesh is back.
    let unit = format!("wg-quick@{}.service", input.mesh_interface);
    for (n, v) in up {
        if let Some(state) = v.facts.unit_states.get(&unit).filter(|s| *s != "active") {
            let why = v.unit_logs.get(&unit).filter(|l| !l.is_empty()).map(|l| format!(": {l}")).unwrap_or_default();
            out.push(
                Diagnosis::bad("mesh", Verdict::Fail, &n.node, format!("the mesh is down here: {unit} is {state}{why}"))
                    .because(
                        "every node-to-node byte rides the mesh: this node's kubelet, etcd, flannel and pods reach no peer until it is up",
                        format!(
                            "journalctl -u {unit} on {} says why; systemctl restart {unit} there, or kforge apply (which restarts it)",
                            n.node
                        ),
                    ),
            );
        }
    }
    let (mut pairs, mut oldest) = (0usize, 0i64);
    for (n, v) in up {
        for (ip, (small, df)) in &v.pings {
            pairs += 1;
            let pair = format!("{} → {}", n.node, name_of(ip));
            if !small {
                out.push(Diagnosis::bad("mesh", Verdict::Fail, &pair, format!("no ping answer from {ip} over {}", input.mesh_interface)).because(
                    "the two nodes have no working tunnel (or a rule drops mesh traffic): the kubelet, etcd and pods on them cannot talk",
                    "compare `wg show` on both (endpoint, latest handshake) and check that UDP to the mesh port is open between them",
                ));
            } else if !df {
                // The smaller underlay of the two ends, when one is below the budget.
                let peer_view = up.iter().find(|(p, _)| p.mesh_ip == *ip).map(|(p, pv)| (p.node.as_str(), *pv));
                let narrow = [(n.node.as_str(), *v)]
                    .into_iter()
                    .chain(peer_view)
                    .filter_map(|(node, hv)| hv.underlay.as_ref().map(|(dev, mtu)| (node, dev, *mtu)))
                    .filter(|(_, _, mtu)| *mtu < u32::from(input.mesh_mtu) + 80)
                    .min_by_key(|(_, _, mtu)| *mtu)
                    .map(|(node, dev, mtu)| format!(" ({node}'s underlay {dev} has MTU {mtu})"))
                    .unwrap_or_default();
                out.push(
                    Diagnosis::bad("mesh-mtu", Verdict::Fail, &pair, format!(
                        "small pings pass, {}-byte packets with don't-fragment set do not{narrow}",
                        input.mesh_mtu
                    ))
                    .because(
                        "an MTU black hole: the underlay between them carries less than the mesh MTU + WireGuard's 80 bytes, so full-size packets vanish (small requests work, large transfers and TLS handshakes hang)",
                        format!(
                            "lower spec.mesh.mtu (and set spec.mesh.underlayMtu) to fit the smallest underlay, then kforge apply; {} needs an underlay of {}",
                            input.mesh_mtu,
                            input.mesh_mtu + 80
                        ),
                    ),
                );
            }
        }
        // Nodes only: an access peer (a laptop) handshakes when it is connected.
        for m in input.members.iter().filter(|m| input.plan.nodes.iter().any(|p| p.node == m.name)) {
            let Some(at) = v.handshakes.get(&m.public_key) else { continue };
            if m.name == n.node {
                continue;
            }
            let age = v.time as i64 - at;
            if *at == 0 || age > 180 {
                let seen = if *at == 0 { "never".to_string() } else { format!("{age} s ago") };
                out.push(Diagnosis::bad("mesh", Verdict::Fail, format!("{} → {}", n.node, m.name), format!("latest handshake {seen}")).because(
                    "WireGuard re-handshakes every 2 minutes while traffic flows; an old or missing handshake after the doctor's own pings means packets do not arrive",
                    "check the peer's endpoint and that UDP to the mesh port passes every firewall between them",
                ));
            } else {
                oldest = oldest.max(age);
            }
        }
    }
    if out.iter().all(|d| d.check != "mesh") {
        out.insert(
            0,
            Diagnosis::ok(
                "mesh",
                format!("{pairs} node pairs answer over the mesh; latest handshakes at most {oldest} s old"),
            ),
        );
    }
    if out.iter().all(|d| d.check != "mesh-mtu") {
        out.push(Diagnosis::ok(
            "mesh-mtu",
            format!("{}-byte don't-fragment pings pass between all {pairs} pairs", input.mesh_mtu),
        ));
    }
    out
}

/// The loaded table against the plan's ruleset (rules per chain), and other tables that drop.
fn firewall(up: &[(&NodePlan, &HostView)]) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let mut checked = 0;
    for (n, v) in up {
        if !n.files().any(|f| f.path == kforge_core::pipeline::FIREWALL_FILE) {
            continue;
        }
        checked += 1;
        if !v.firewall_loaded {
            out.push(Diagnosis::bad("firewall", Verdict::Fail, &n.node, "table inet kforge is not loaded").because(
                "the public side is not default-deny: every port the host listens on is open to the internet",
                "systemctl restart kforge-firewall (or kforge apply)",
            ));
            continue;
        }
        let differs = firewall_differences(n, v);
        if !differs.is_empty() {
            out.push(
                Diagnosis::bad(
                    "firewall",
                    Verdict::Fail,
                    &n.node,
                    format!("table inet kforge differs from the plan ({})", differs.join("; ")),
                )
                .because(
                    "someone changed the loaded rules by hand: what the host enforces is not what kforge planned",
                    format!(
                        "kforge apply reloads the table from {} (so does systemctl reload kforge-firewall on the node)",
                        kforge_core::pipeline::FIREWALL_FILE
                    ),
                ),
            );
        }
        if !v.foreign_tables.is_empty() {
            out.push(Diagnosis::bad("firewall", Verdict::Warn, &n.node, format!("other tables drop traffic: {}", v.foreign_tables.join(", "))).because(
                "rules kforge did not write can hide nodes from each other (the seed's \"my IP only\" rule); see the ports check",
                "review them with `nft list table <family> <name>`; kforge only replaces table inet kforge",
            ));
        }
    }
    if out.is_empty() {
        out.push(Diagnosis::ok(
            "firewall",
            format!(
                "table inet kforge loaded as planned on {checked} of {checked} hosts; no other table drops traffic"
            ),
        ));
    }
    out
}

/// How the loaded `table inet kforge` differs from the plan's, chain by chain.
fn firewall_differences(n: &NodePlan, v: &HostView) -> Vec<String> {
    let Some(file) = n.files().find(|f| f.path == kforge_core::pipeline::FIREWALL_FILE) else { return Vec::new() };
    if !v.firewall_loaded {
        return Vec::new();
    }
    kforge_core::firewall::rules_per_chain(&String::from_utf8_lossy(&file.content))
        .iter()
        .filter(|(chain, want)| v.firewall_rules.get(*chain).copied().unwrap_or(0) != **want)
        .map(|(chain, want)| {
            format!("{chain}: {} rules loaded, {want} planned", v.firewall_rules.get(chain).copied().unwrap_or(0))
        })
        .collect()
}

/// Each required port on each peer, over the mesh: dropped (filtered) is a firewall's
/// doing. One line per pair, naming the tables on either side that could drop it.
fn ports(input: &DoctorInput<'_>, up: &[(&NodePlan, &HostView)]) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let mut total = 0;
    let tables_on = |node: &str| -> Vec<String> {
        up.iter()
            .find(|(t, _)| t.node == node)
            .map(|(n, v)| {
                let mut t: Vec<String> = v.foreign_tables.iter().map(|t| format!("{node}: table {t}")).collect();
                if !firewall_differences(n, v).is_empty() {
                    t.push(format!("{node}: table inet kforge, changed by hand (see the firewall check)"));
                }
                t
            })
            .unwrap_or_default()
    };
    for (n, v) in up {
        for target in input.plan.nodes.iter().filter(|t| t.node != n.node) {
            let mut dropped = Vec::new();
            for (port, what) in required_ports(target, input.hardway_api) {
                total += 1;
                if v.ports.get(&format!("{}:{port}", target.mesh_ip)).map(String::as_str) == Some("filtered") {
                    dropped.push(format!("{what} {port}"));
                }
            }
            if dropped.is_empty() {
                continue;
            }
            let mut suspects = tables_on(&target.node);
            suspects.extend(tables_on(&n.node));
            let fix = match suspects.is_empty() {
                true => format!(
                    "`nft list ruleset` on {} and {}: remove the rule that drops the other's mesh address ({} / {})",
                    target.node, n.node, n.mesh_ip, target.mesh_ip
                ),
                false => format!(
                    "remove the rule that drops the other's mesh address from {} (`nft list table …`)",
                    suspects.join(", ")
                ),
            };
            out.push(
                Diagnosis::bad(
                    "ports",
                    Verdict::Fail,
                    format!("{} → {}", n.node, target.node),
                    format!("dropped over the mesh: {}", dropped.join(", ")),
                )
                .because(
                    "a firewall rule drops this pair's mesh traffic — kforge's own table trusts the mesh, so it is another rule (the seed's \"my IP only\" rule hid every worker this way)",
                    fix,
                ),
            );
        }
    }
    if out.is_empty() {
        out.push(Diagnosis::ok("ports", format!("{total} required node-to-node ports reachable over the mesh")));
    }
    out
}

fn certificates(input: &DoctorInput<'_>, up: &[(&NodePlan, &HostView)]) -> Vec<Diagnosis> {
    let now = OffsetDateTime::now_utc();
    let mut out = Vec::new();
    let (mut count, mut earliest): (usize, Option<(OffsetDateTime, String)>) = (0, None);
    for (n, v) in up {
        for f in n.files().filter(|f| f.path.ends_with(".crt")) {
            count += 1;
            let at = format!("{}:{}", n.node, f.path);
            match v.certs.get(&f.path) {
                None => out.push(Diagnosis::bad("certificates", Verdict::Fail, &n.node, format!("{} is missing", f.path)).because(
                    "the component that presents or checks it cannot start",
                    "kforge apply writes it",
                )),
                Some((_, Some(end))) if *end <= now => out.push(
                    Diagnosis::bad("certificates", Verdict::Fail, &n.node, format!("{} expired on {}", f.path, end.date())).because(
                        "peers refuse an expired certificate: the connections it secures fail (x509: certificate has expired)",
                        if v.certs[&f.path].0 == f.sha256 { "kforge certs renew, then kforge apply" } else { "kforge apply puts the bundle's current certificate back" },
                    ),
                ),
                Some((sum, _)) if sum != &f.sha256 => out.push(
                    Diagnosis::bad("certificates", Verdict::Fail, &n.node, format!("{} is not the one kforge issued", f.path)).because(
                        "a certificate from elsewhere: its chain, names or key may not match what peers expect",
                        "kforge apply puts the bundle's back",
                    ),
                ),
                Some((_, Some(end))) => {
                    let days = (*end - now).whole_days();
                    if days < input.renew_before_days {
                        out.push(Diagnosis::bad("certificates", Verdict::Warn, &n.node, format!("{} expires in {days} days", f.path)).because(
                            "it will expire soon",
                            "kforge apply re-issues leaves due within pki.renewBeforeDays (or kforge certs renew)",
                        ));
                    }
                    if earliest.as_ref().is_none_or(|(e, _)| end < e) {
                        earliest = Some((*end, at));
                    }
                }
                Some(_) => {}
            }
        }
    }
    if out.is_empty() {
        let first = earliest
            .map(|(e, at)| format!("; first to expire: {at} in {} days", (e - now).whole_days()))
            .unwrap_or_default();
        out.push(Diagnosis::ok("certificates", format!("{count} certificates on disk are the bundle's{first}")));
    }
    out
}

/// Every file kforge planned is on the host as planned (hashes only; nothing is read back).
fn files(up: &[(&NodePlan, &HostView)]) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let mut count = 0;
    for (n, v) in up {
        let (mut missing, mut changed) = (Vec::new(), Vec::new());
        for f in n.files() {
            count += 1;
            match v.facts.hashes.get(&f.path) {
                None => missing.push(f.path.as_str()),
                Some(sum) if *sum != f.sha256 => changed.push(f.path.as_str()),
                _ => {}
            }
        }
        if !missing.is_empty() {
            out.push(Diagnosis::bad("files", Verdict::Fail, &n.node, format!("missing: {}", missing.join(", "))).because(
                "a component reads a file kforge planned and it is gone (the seed's missing kube-scheduler configuration left every pod Pending)",
                "kforge apply writes it back and restarts what reads it",
            ));
        }
        if !changed.is_empty() {
            out.push(Diagnosis::bad("files", Verdict::Warn, &n.node, format!("changed since kforge wrote them: {}", changed.join(", "))).because(
                "hand edits are lost at the next apply, and until then the host runs something the plan does not say",
                "move the change into kforge.yaml, then kforge apply (it rewrites the file)",
            ));
        }
    }
    if out.is_empty() {
        out.push(Diagnosis::ok("files", format!("{count} planned files on the hosts are as planned")));
    }
    out
}

/// Every image kforge imported is in each worker's containerd, pinned. No registry
/// serves them, so a deleted one stays gone; the kubelet's image garbage collection
/// deletes unused, unpinned images once the image filesystem passes 85%.
fn images(up: &[(&NodePlan, &HostView)]) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let (mut count, mut nodes) = (0, 0);
    for (n, v) in up.iter().filter(|(_, v)| !v.images.is_empty()) {
        nodes += 1;
        count += v.images.len();
        let with =
            |state: &str| v.images.iter().filter(|(_, s)| *s == state).map(|(i, _)| i.as_str()).collect::<Vec<_>>();
        let (missing, unpinned) = (with("missing"), with("unpinned"));
        if !missing.is_empty() {
            out.push(Diagnosis::bad("images", Verdict::Fail, &n.node, format!("not in containerd: {}", missing.join(", "))).because(
                "no registry serves an image kforge imports: a pod needing it on this node fails with ErrImageNeverPull or ErrImagePull",
                "kforge apply imports it again (pinned)",
            ));
        }
        if !unpinned.is_empty() {
            out.push(Diagnosis::bad("images", Verdict::Warn, &n.node, format!("not pinned: {}", unpinned.join(", "))).because(
                "the kubelet's image garbage collection deletes an unused, unpinned image once the image filesystem passes 85% full, and no registry serves it back",
                "kforge apply pins it (containerd label io.cri-containerd.pinned=pinned)",
            ));
        }
    }
    if out.is_empty() && nodes > 0 {
        out.push(Diagnosis::ok(
            "images",
            format!("{count} imported images in containerd and pinned, on {nodes} workers"),
        ));
    }
    out
}

fn services(up: &[(&NodePlan, &HostView)]) -> Vec<Diagnosis> {
    let mut out = Vec::new();
    let mut count = 0;
    for (n, v) in up {
        for u in n.units().filter(|u| u.start).map(|u| &u.name) {
            count += 1;
            let state = v.facts.unit_states.get(u).map_or("unknown", String::as_str);
            if state != "active" {
                let why = v.unit_logs.get(u).filter(|l| !l.is_empty()).map(|l| format!(": {l}")).unwrap_or_default();
                out.push(Diagnosis::bad("services", Verdict::Fail, &n.node, format!("{u} is {state}{why}")).because(
                    "a unit kforge starts is not running",
                    format!(
                        "journalctl -u {u} -n 50 on {} says why; kforge apply restores missing files and restarts it",
                        n.node
                    ),
                ));
            }
        }
    }
    if out.is_empty() {
        out.push(Diagnosis::ok("services", format!("{count} units kforge starts are active")));
    }
    out
}

/// etcd member by member: quorum, leader, member list against the controllers, alarms, size.
fn etcd(input: &DoctorInput<'_>, controllers: &[Host]) -> Vec<Diagnosis> {
    let urls: Vec<String> = input.etcd_endpoints.iter().map(|(_, u)| u.clone()).collect();
    let Some(out) =
        controllers.iter().find_map(|h| h.run_script("doctor etcd", &call("kf_doctor_etcd", &[urls.join(" ")])).ok())
    else {
        return vec![Diagnosis::bad("etcd", Verdict::Unknown, "", "no controller answered over SSH")];
    };
    judge_etcd(&input.etcd_endpoints, &out)
}

/// etcd's answers (`kf_doctor_etcd`) judged: pure, for tests.
pub fn judge_etcd(endpoints: &[(String, String)], out: &str) -> Vec<Diagnosis> {
    let mut down = Vec::new();
    let mut leaders = BTreeSet::new();
    let mut db = 0u64;
    for (name, url) in endpoints {
        let line = out.lines().find_map(|l| l.strip_prefix(&format!("status {url} "))).unwrap_or("");
        let status: Option<serde_json::Value> = serde_json::from_str(line).ok();
        match status.as_ref().and_then(|s| s.get(0)).and_then(|s| s.get("Status")) {
            Some(s) => {
                leaders.insert(s["leader"].as_u64().unwrap_or(0));
                db = db.max(s["dbSize"].as_u64().unwrap_or(0));
            }
            None => down.push(name.clone()),
        }
    }
    let n = endpoints.len();
    let quorum = n / 2 + 1;
    let alive = n - down.len();
    let mut v = Vec::new();
    let no_leader = leaders.iter().all(|l| *l == 0);
    if alive < quorum || no_leader {
        v.push(Diagnosis::bad("etcd", Verdict::Fail, down.join(", "), format!("{alive} of {n} members answer, {quorum} needed for quorum; no leader")).because(
            "etcd without quorum refuses every write and linearizable read: the API server cannot work",
            format!("on {}: systemctl status etcd (kforge apply starts a stopped member); if it runs, the mesh does not carry its traffic (see the mesh and ports checks); if its data is lost, kforge etcd restore", down.join(", ")),
        ));
    } else if !down.is_empty() {
        v.push(
            Diagnosis::bad(
                "etcd",
                Verdict::Warn,
                down.join(", "),
                format!("{alive} of {n} members answer; quorum ({quorum}) kept"),
            )
            .because(
                format!("one more failure and etcd loses quorum ({} of {n} may fail)", n - quorum),
                format!(
                    "on {}: systemctl status etcd (kforge apply starts a stopped member); if it runs, the mesh does not carry its traffic (see the mesh and ports checks)",
                    down.join(", ")
                ),
            ),
        );
    } else {
        v.push(Diagnosis::ok("etcd", format!("{n} of {n} members answer, one leader, largest db {} KiB", db / 1024)));
    }
    let members_line = out.lines().find_map(|l| l.strip_prefix("members ")).unwrap_or("");
    if let Some(members) = crate::membership::parse(&format!("list {members_line}")) {
        // Known by name, or (never started, so nameless) by its peer URL on a controller.
        let stale: Vec<String> = members
            .iter()
            .filter(|m| {
                !endpoints.iter().any(|(n, client)| {
                    &m.name == n || m.peer_urls.iter().any(|p| p.replace(":2380", ":2379") == *client)
                })
            })
            .map(|m| m.describe())
            .collect();
        if !stale.is_empty() {
            v.push(
                Diagnosis::bad(
                    "etcd",
                    Verdict::Fail,
                    "",
                    format!("member list has {} that is not a controller of the file", stale.join(", ")),
                )
                .because(
                    "a stale member counts toward quorum but never answers: one more member down and etcd stops",
                    "kforge apply removes it when quorum holds without it (kforge plan --observe shows it first); or etcdctl member remove <id>",
                ),
            );
        }
        // A join that stopped half-way: a learner without a vote, or a controller of the
        // file etcd does not list at all.
        let learners: Vec<String> = members.iter().filter(|m| m.learner).map(|m| m.describe()).collect();
        let absent: Vec<&str> = endpoints
            .iter()
            .filter(|(n, client)| {
                !members
                    .iter()
                    .any(|m| &m.name == n || m.peer_urls.iter().any(|p| p.replace(":2380", ":2379") == *client))
            })
            .map(|(n, _)| n.as_str())
            .collect();
        if !members.is_empty() && (!learners.is_empty() || !absent.is_empty()) {
            let mut what = Vec::new();
            if !learners.is_empty() {
                what.push(format!("{} a learner (no vote)", learners.join(", ")));
            }
            if !absent.is_empty() {
                what.push(format!("{} not a member", absent.join(", ")));
            }
            v.push(Diagnosis::bad("etcd", Verdict::Warn, "", what.join("; ")).because(
                "a controller of the file that does not vote adds nothing to etcd's quorum (a join that has not finished)",
                "kforge apply adds a missing controller as a learner and promotes a learner once it has caught up (kforge plan --observe shows it)",
            ));
        }
    }
    let alarms = out.lines().find_map(|l| l.strip_prefix("alarms ")).unwrap_or("").trim();
    if alarms.contains("alarm:") {
        v.push(Diagnosis::bad("etcd", Verdict::Fail, "", format!("alarms: {alarms}")).because(
            "NOSPACE makes etcd read-only",
            "compact and defragment (etcdctl compact, etcdctl defrag), then etcdctl alarm disarm",
        ));
    }
    v
}

/// A leader renews its lease every 2 s and holds it 15 s: twice that is no leader.
const LEASE_STALE_SECONDS: i64 = 30;
/// A pod scheduled normally leaves Pending within seconds.
const PENDING_SECONDS: i64 = 30;

/// `/readyz?verbose`, the leader leases, Pending pods.
fn api(controllers: &[Host]) -> Vec<Diagnosis> {
    let Some(out) = controllers.iter().find_map(|h| h.run_script("doctor api", &call("kf_doctor_api", &[])).ok())
    else {
        return vec![Diagnosis::bad("api", Verdict::Unknown, "", "no controller answered over SSH")];
    };
    judge_api(&out)
}

/// The API's answers (`kf_doctor_api`) judged: pure, for tests.
pub fn judge_api(out: &str) -> Vec<Diagnosis> {
    let mut v = Vec::new();
    let now: i64 = out.lines().find_map(|l| l.strip_prefix("now ")).and_then(|s| s.trim().parse().ok()).unwrap_or(0);
    // kubectl prints a failed /readyz as one line with the body's newlines escaped.
    let unescaped = out.replace("\\n", "\nreadyz ");
    let readyz: Vec<&str> = unescaped
        .lines()
        .filter_map(|l| l.strip_prefix("readyz "))
        .map(|l| match l.find("[+]").or_else(|| l.find("[-]")) {
            Some(i) => l[i..].trim_end_matches(['"', ')']),
            None => l,
        })
        .collect();
    let failing: Vec<&str> = readyz.iter().filter(|l| l.starts_with("[-]")).copied().collect();
    if readyz.iter().any(|l| l.contains("readyz check passed")) {
        v.push(Diagnosis::ok(
            "api",
            format!("/readyz?verbose: {} checks passed", readyz.iter().filter(|l| l.starts_with("[+]")).count()),
        ));
    } else {
        let evidence = if failing.is_empty() { readyz.join(" ") } else { failing.join("; ") };
        v.push(Diagnosis::bad("api", Verdict::Fail, "", format!("/readyz?verbose: {evidence}")).because(
            "the API server is not ready: clients and controllers get errors",
            "journalctl -u kube-apiserver on the controllers; a failing etcd check means etcd (see the etcd check)",
        ));
    }
    for l in ["kube-scheduler", "kube-controller-manager"] {
        let line = out.lines().find_map(|x| x.strip_prefix(&format!("lease {l} "))).unwrap_or("").trim();
        let (holder, renewed) = line.split_once('|').unwrap_or(("", ""));
        let (holder, renewed) = (Some(holder).filter(|h| !h.is_empty()), parse_rfc3339(renewed));
        match (holder, renewed) {
            (Some(h), Some(t)) if now - t <= LEASE_STALE_SECONDS => v.push(Diagnosis::ok(
                if l == "kube-scheduler" { "scheduler" } else { "controller-manager" },
                format!("{h} holds the {l} lease, renewed {} s ago", now - t),
            )),
            _ => {
                let check = if l == "kube-scheduler" { "scheduler" } else { "controller-manager" };
                let seen = match (holder, renewed) {
                    (Some(h), Some(t)) => format!("{h} last renewed the {l} lease {} s ago", now - t),
                    (None, Some(t)) => format!("the {l} lease has no holder (released {} s ago)", now - t),
                    _ => format!("no {l} lease"),
                };
                v.push(Diagnosis::bad(check, Verdict::Fail, "", seen).because(
                    format!("no {l} is running and leading{}", if l == "kube-scheduler" { ": new pods stay Pending" } else { ": Deployments, nodes and endpoints are not reconciled" }),
                    format!("systemctl status {l} on the controllers; a missing configuration file is restored by kforge apply"),
                ));
            }
        }
    }
    let pending: Vec<String> = out
        .lines()
        .filter_map(|l| l.strip_prefix("pending "))
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            let (name, created, why) = (w.next()?, w.next()?, w.next().unwrap_or("").trim());
            let age = now - parse_rfc3339(created)?;
            (age > PENDING_SECONDS).then(|| {
                let why = if why.is_empty() { "never looked at by a scheduler".to_string() } else { why.to_string() };
                format!("{name} ({age} s): {why}")
            })
        })
        .collect();
    if pending.is_empty() {
        v.push(Diagnosis::ok("pods", format!("no pod Pending for more than {PENDING_SECONDS} s")));
    } else {
        let unscheduled = pending.iter().any(|p| p.contains("never looked at by a scheduler"));
        v.push(
            Diagnosis::bad("pods", Verdict::Fail, "", format!("{} Pending: {}", pending.len(), pending.join("; ")))
                .because(
                    if unscheduled {
                        "no scheduler is placing pods (see the scheduler check)"
                    } else {
                        "the scheduler cannot place them, for the reason it gives"
                    },
                    if unscheduled {
                        "get kube-scheduler running (kforge apply restores its configuration)"
                    } else {
                        "act on the scheduler's reason (resources, taints, node selectors)"
                    },
                ),
        );
    }
    v
}

fn coredns(dns: &str, domain: &str, workers: &[Host]) -> Diagnosis {
    let name = format!("kubernetes.default.svc.{domain}");
    match crate::status::dns_answer(&crate::status::dns_query_script(dns, &name), workers) {
        Some(Ok(addr)) => Diagnosis::ok("coredns", format!("{dns} answers {name} = {addr}")),
        Some(Err(e)) => Diagnosis::bad("coredns", Verdict::Fail, "", format!("{name} at {dns}: {e}")).because(
            "pods cannot resolve Services: CoreDNS is down, looping, or unreachable through kube-proxy",
            "kubectl -n kube-system logs deploy/coredns (a \"Loop ... detected\" line means a loopback resolver on a node: see resolv.conf)",
        ),
        None => Diagnosis::bad("coredns", Verdict::Unknown, "", "no worker answered over SSH"),
    }
}
