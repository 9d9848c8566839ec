//! `kforge status`: the last stage of the pipeline — checks, each done for real on the
//! hosts: every node dials every other over the mesh, the firewall table is loaded,
//! the certificates on disk are the ones the bundle issued, every unit kforge starts
//! is active, and (hardway) etcd answers `endpoint health --cluster` over mTLS.
//! Stand-ins are listed by name as not running, never as healthy.

use std::collections::BTreeMap;
use std::sync::Mutex;

use kforge_core::plan::Plan;
use serde::Serialize;

use crate::Target;
use crate::ssh::{ControlDir, Host, shell_quote};

/// One line of the status: a check, whether it passed, and what was seen.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
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
    pub fn healthy(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
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
}

#[derive(Default)]
struct HostSeen {
    reachable: bool,
    error: Option<String>,
    reach: BTreeMap<String, bool>,
    firewall_table: bool,
    units: BTreeMap<String, String>,
    hashes: BTreeMap<String, String>,
}

pub fn status(input: &StatusInput<'_>) -> Result<StatusReport, String> {
    let plan = input.plan;
    let control = ControlDir::create()?;
    let seen: Mutex<BTreeMap<String, HostSeen>> = Mutex::new(BTreeMap::new());
    let mesh_ips: Vec<(String, String)> = plan.nodes.iter().map(|n| (n.node.clone(), n.mesh_ip.clone())).collect();
    std::thread::scope(|s| {
        for np in &plan.nodes {
            let Some(t) = input.targets.iter().find(|t| t.node == np.node) else { continue };
            let host = Host {
                node: np.node.clone(),
                target: t.host.clone(),
                user: t.user.clone(),
                port: t.port,
                ssh_config: input.ssh_config.clone(),
                control_dir: control.path().to_path_buf(),
            };
            let (seen, mesh_ips) = (&seen, &mesh_ips);
            s.spawn(move || {
                let peers: Vec<&str> =
                    mesh_ips.iter().filter(|(n, _)| n != &np.node).map(|(_, ip)| ip.as_str()).collect();
                let units: Vec<String> = np
                    .phases
                    .iter()
                    .flat_map(|p| p.units.iter().filter(|u| u.start).map(|u| u.name.clone()))
                    .collect();
                let certs: Vec<String> =
                    np.files().filter(|f| f.path.ends_with(".crt")).map(|f| shell_quote(&f.path)).collect();
                let script = format!(
                    "for ip in {peers}; do if timeout 3 bash -c \"echo > /dev/tcp/$ip/22\" 2>/dev/null; then echo \"reach $ip yes\"; else echo \"reach $ip no\"; fi; done\n\
                     nft list table inet kforge >/dev/null 2>&1 && echo 'firewall yes' || echo 'firewall no'\n\
                     for u in {units}; do echo \"unit $u $(systemctl is-active $u 2>/dev/null | head -1)\"; done\n\
                     for f in {certs}; do [ -f \"$f\" ] && echo \"file $(sha256sum \"$f\" | cut -d' ' -f1) $f\"; done\n\
                     true\n",
                    peers = peers.join(" "),
                    units = units.iter().map(|u| shell_quote(u)).collect::<Vec<_>>().join(" "),
                    certs = certs.join(" "),
                );
                let mut h = HostSeen::default();
                match host.run_script("status", &script) {
                    Ok(out) => {
                        h.reachable = true;
                        for line in out.lines() {
                            let w: Vec<&str> = line.splitn(3, ' ').collect();
                            match w.as_slice() {
                                ["reach", ip, ok] => {
                                    h.reach.insert(ip.to_string(), *ok == "yes");
                                }
                                ["firewall", ok] => h.firewall_table = *ok == "yes",
                                ["unit", u, state] => {
                                    h.units.insert(u.to_string(), state.to_string());
                                }
                                ["unit", u] => {
                                    h.units.insert(u.to_string(), "unknown".into());
                                }
                                ["file", sum, path] => {
                                    h.hashes.insert(path.to_string(), sum.to_string());
                                }
                                _ => {}
                            }
                        }
                    }
                    Err(e) => h.error = Some(e.to_string()),
                }
                host.close();
                seen.lock().unwrap().insert(np.node.clone(), h);
            });
        }
    });
    let seen = seen.into_inner().unwrap();
    let mut checks = Vec::new();

    let unreachable: Vec<String> = plan
        .nodes
        .iter()
        .filter(|n| !seen.get(&n.node).is_some_and(|h| h.reachable))
        .map(|n| {
            let why = seen.get(&n.node).and_then(|h| h.error.clone()).unwrap_or_else(|| "no SSH target".into());
            format!("{}: {why}", n.node)
        })
        .collect();
    checks.push(Check {
        name: "ssh".into(),
        ok: unreachable.is_empty(),
        detail: if unreachable.is_empty() {
            format!("{} of {} nodes answer", plan.nodes.len(), plan.nodes.len())
        } else {
            unreachable.join("; ")
        },
    });

    let (mut pairs, mut broken) = (0usize, Vec::new());
    for (node, h) in &seen {
        for (ip, ok) in &h.reach {
            pairs += 1;
            if !ok {
                let to = mesh_ips.iter().find(|(_, i)| i == ip).map(|(n, _)| n.as_str()).unwrap_or(ip);
                broken.push(format!("{node} → {to}"));
            }
        }
    }
    checks.push(Check {
        name: "mesh".into(),
        ok: broken.is_empty() && unreachable.is_empty(),
        detail: if broken.is_empty() {
            format!("{} of {pairs} node pairs reach each other over the mesh (TCP to sshd on the mesh address)", pairs)
        } else {
            format!("no route over the mesh: {}", broken.join(", "))
        },
    });

    let fw_nodes: Vec<&str> = plan
        .nodes
        .iter()
        .filter(|n| n.phases.iter().any(|p| p.phase == kforge_core::plan::Phase::Firewall))
        .map(|n| n.node.as_str())
        .collect();
    if !fw_nodes.is_empty() {
        let missing: Vec<&str> =
            fw_nodes.iter().copied().filter(|n| !seen.get(*n).is_some_and(|h| h.firewall_table)).collect();
        checks.push(Check {
            name: "firewall".into(),
            ok: missing.is_empty(),
            detail: if missing.is_empty() {
                format!("table inet kforge loaded (default-deny) on {} of {}", fw_nodes.len(), fw_nodes.len())
            } else {
                format!("table inet kforge missing on {}", missing.join(", "))
            },
        });
    }

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
    checks.push(Check {
        name: "certificates".into(),
        ok: wrong.is_empty(),
        detail: if wrong.is_empty() {
            format!(
                "{certs} certificate files on the hosts are the ones kforge issued{}",
                input.earliest_expiry.as_ref().map(|e| format!("; earliest expiry {e}")).unwrap_or_default()
            )
        } else {
            wrong.join("; ")
        },
    });

    let mut by_unit: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for (node, h) in &seen {
        for (u, state) in &h.units {
            let e = by_unit.entry(u.clone()).or_default();
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
    checks.push(Check {
        name: "services".into(),
        ok: bad.is_empty(),
        detail: if bad.is_empty() {
            by_unit.iter().map(|(u, (n, _))| format!("{u} {n}/{n}")).collect::<Vec<_>>().join(", ") + " active"
        } else {
            format!("not active: {}", bad.join("; "))
        },
    });

    if let Some(etcd) = &input.etcd_health {
        let members = plan.nodes.iter().filter(|n| n.control_plane).count();
        let (ok, detail) = match etcd {
            Ok(out) => {
                let healthy = out.lines().filter(|l| l.contains(" is healthy")).count();
                (
                    healthy == members && !out.contains("unhealthy"),
                    format!(
                        "{healthy} of {members} members healthy (etcdctl endpoint health --cluster, kforge's client certificate, over the mesh)"
                    ),
                )
            }
            Err(e) => (false, e.clone()),
        };
        checks.push(Check { name: "etcd".into(), ok, detail });
    }

    Ok(StatusReport {
        cluster: plan.cluster.clone(),
        distribution: plan.distribution.clone(),
        checks,
        not_running: input.stand_ins.clone(),
    })
}
