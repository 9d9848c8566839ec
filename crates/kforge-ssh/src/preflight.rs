//! Refuse, per host and with a reason, what would make the apply fail half-way.

use std::collections::HashMap;

use kforge_core::plan::NodePlan;

use crate::facts::{Holder, NodeFacts};

const MAX_SKEW_SECS: i64 = 30;

/// A kubelet's host with the memory cgroup off (preflight and doctor say the same).
pub const MEMORY_CGROUP_OFF: &str = "the kernel runs with the memory cgroup switched off (Raspberry Pi OS boots so): the kubelet cannot account or limit pods' memory, and K3s and the kubelet refuse to start";
pub const MEMORY_CGROUP_FIX: &str = "add `cgroup_memory=1 cgroup_enable=memory` to the kernel command line (on Raspberry Pi OS: the one line of /boot/firmware/cmdline.txt, /boot/cmdline.txt before Debian 12) and reboot";

/// Problems as "node: why" lines; empty when the fleet is fit.
pub fn check(hosts: &[(&NodePlan, &NodeFacts)], now: i64, mesh_port: u16) -> Vec<String> {
    let mut problems = Vec::new();
    let mut hostnames: HashMap<&str, &str> = HashMap::new();
    let mut machine_ids: HashMap<&str, &str> = HashMap::new();
    for (plan, f) in hosts {
        let node = plan.node.as_str();
        if f.init != "systemd" {
            problems.push(format!("{node}: PID 1 is `{}`, not systemd; kforge installs systemd units", f.init));
        }
        if let Some(other) = hostnames.insert(&f.hostname, node) {
            problems.push(format!("{node}: hostname `{}` is also {other}'s; give every host its own", f.hostname));
        }
        if f.machine_id.is_empty() {
            problems.push(format!("{node}: /etc/machine-id is empty; run `systemd-machine-id-setup`"));
        } else if let Some(other) = machine_ids.insert(&f.machine_id, node) {
            problems.push(format!(
                "{node}: machine-id equals {other}'s (cloned image?): remove /etc/machine-id and run `systemd-machine-id-setup`"
            ));
        }
        let skew = (f.clock - now).abs();
        if skew > MAX_SKEW_SECS {
            problems.push(format!(
                "{node}: clock is {skew} s off this workstation's; enable NTP (timedatectl set-ntp true)"
            ));
        }
        if plan.swap_forbidden && f.swap_on() {
            problems.push(format!(
                "{node}: swap is on and the kubelet refuses to run with it: `swapoff -a` and remove swap from /etc/fstab"
            ));
        }
        if plan.requires_cgroup_v2 && f.cgroup_version == 1 {
            problems.push(format!(
                "{node}: the host runs cgroup v1, which the kubelet refuses since Kubernetes 1.35: boot it with cgroup v2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line), or set spec.hardway.allowCgroupV1: true to run on v1 anyway (in maintenance upstream)"
            ));
        }
        if plan.requires_memory_cgroup && f.memory_cgroup == Some(false) {
            problems.push(format!("{node}: {MEMORY_CGROUP_OFF}\n  help: {MEMORY_CGROUP_FIX}, then apply again"));
        }
        // Missing packages are apply's to install, with apt; without apt, the operator's.
        let missing = f.missing_packages(plan);
        if !f.apt && !missing.is_empty() {
            let names: Vec<&str> = missing.iter().map(|p| p.name()).collect();
            let why: Vec<String> = missing.iter().map(|p| format!("\n    {}: {}", p.name(), p.why())).collect();
            problems.push(format!(
                "{node}: lacks {} and has no apt-get to install them with; install them (or your distribution's equivalents) by hand, then apply again:{}",
                names.join(", "),
                why.concat()
            ));
        }
        // A port kforge needs that no program of kforge's holds: either its holder is
        // known (a conflict: `conflicts`, which the operator may hand over) or, on a
        // host kforge never recorded, it is refused as before.
        if f.manifest.is_empty() {
            for sock in needed_sockets(plan, mesh_port) {
                if f.listening.contains(&sock) && f.holders.get(&sock).is_none_or(|h| h.is_empty()) {
                    problems.push(format!("{node}: {sock} is already in use by another program; free it first"));
                }
            }
        }
    }
    problems
}

/// The sockets a node of this plan listens on.
fn needed_sockets(plan: &NodePlan, mesh_port: u16) -> Vec<String> {
    let mut needed = vec![format!("udp/{mesh_port}")];
    if plan.control_plane {
        needed.extend(["tcp/6443", "tcp/2379", "tcp/2380"].map(String::from));
    }
    needed.push("tcp/10250".into());
    needed
}

/// A socket kforge needs, held by a program kforge does not run there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub node: String,
    pub socket: String,
    pub holder: Holder,
}

/// The units kforge reaches a host through: a program started from an SSH session
/// (without logind) lives in their cgroup, and handing them over would cut kforge off.
const NEVER_HANDED_OVER: [&str; 2] = ["ssh.service", "sshd.service"];

impl Conflict {
    /// The unit `--hand-over` may stop for this conflict.
    pub fn unit_to_hand_over(&self) -> Option<&str> {
        self.holder.unit.as_deref().filter(|u| !NEVER_HANDED_OVER.contains(u))
    }
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} is held by {}, which kforge does not run", self.node, self.socket, self.holder)?;
        match self.unit_to_hand_over() {
            None if self.holder.unit.is_some() => write!(
                f,
                "\n  help: stop {} yourself (it runs in the SSH service kforge reaches the host through, which is never handed over)",
                self.holder.program
            ),
            Some(u) => write!(
                f,
                "\n  help: stop it yourself, or let kforge do it: kforge apply --hand-over {u} (stops and disables {u}, then converges)"
            ),
            None => write!(
                f,
                "\n  help: stop {} (it runs outside systemd, so kforge cannot hand it over)",
                self.holder.program
            ),
        }
    }
}

/// Sockets kforge needs that a foreign program holds. A holder running in one of the
/// plan's units (a host converged by its bootstrap, or set up as planned by another
/// tool), or the plan's own WireGuard interface, is kforge's and not a conflict.
pub fn conflicts(plan: &NodePlan, f: &NodeFacts, mesh_port: u16, mesh_iface: &str) -> Vec<Conflict> {
    let ours = |h: &Holder| {
        h.unit.as_ref().is_some_and(|u| plan.units().any(|p| &p.name == u))
            || h.program.strip_prefix("wireguard:") == Some(mesh_iface)
    };
    let mut out = Vec::new();
    for socket in needed_sockets(plan, mesh_port) {
        let holders = f.holders.get(&socket).map(Vec::as_slice).unwrap_or_default();
        if holders.iter().any(ours) {
            continue;
        }
        // One conflict per unit: a userspace WireGuard shows as its process and as its
        // interface, both in one unit.
        let mut units_seen: Vec<&Option<String>> = Vec::new();
        for h in holders {
            if h.unit.is_some() && units_seen.contains(&&h.unit) {
                continue;
            }
            units_seen.push(&h.unit);
            out.push(Conflict { node: plan.node.clone(), socket: socket.clone(), holder: h.clone() });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kforge_core::spec::{Role, Roles};

    fn facts(hostname: &str, id: &str, clock: i64, init: &str) -> NodeFacts {
        NodeFacts { hostname: hostname.into(), machine_id: id.into(), clock, init: init.into(), ..NodeFacts::default() }
    }

    #[test]
    fn refuses_skewed_clocks_and_hosts_without_systemd_by_name() {
        let a = NodePlan::new("a", Roles::one(Role::Server), "10.4.0.1".into(), None);
        let b = NodePlan::new("b", Roles::one(Role::Agent), "10.4.0.2".into(), None);
        let fa = facts("a", "1111", 1000, "systemd");
        let fb = facts("b", "2222", 1031, "init");
        let problems = check(&[(&a, &fa), (&b, &fb)], 1000, 51820);
        assert_eq!(
            problems,
            [
                "b: PID 1 is `init`, not systemd; kforge installs systemd units",
                "b: clock is 31 s off this workstation's; enable NTP (timedatectl set-ntp true)",
            ]
        );
        let within = facts("b", "2222", 1030, "systemd");
        assert!(check(&[(&a, &fa), (&b, &within)], 1000, 51820).is_empty(), "30 s is tolerated");
    }

    #[test]
    fn refuses_swap_on_a_worker_and_missing_packages_only_where_there_is_no_apt() {
        use kforge_core::packages::Package;
        let mut w = NodePlan::new("w", Roles::new(vec![Role::Controller, Role::Worker]), "10.4.0.1".into(), None);
        w.swap_forbidden = true;
        let mut f = facts("w", "1111", 1000, "systemd");
        f.swap_devices = 1;
        w.packages = vec![Package::WireguardTools, Package::Nginx, Package::NginxStream];
        f.absent_packages = vec![Package::Nginx, Package::NginxStream, Package::Curl];
        assert_eq!(
            check(&[(&w, &f)], 1000, 51820),
            [
                "w: swap is on and the kubelet refuses to run with it: `swapoff -a` and remove swap from /etc/fstab",
                "w: lacks nginx, libnginx-mod-stream and has no apt-get to install them with; install them (or your distribution's equivalents) by hand, then apply again:\n    nginx: nginx: the hard way's /healthz proxy on controllers, and kforge's local API balancers\n    libnginx-mod-stream: nginx's stream module (not in Debian's nginx package): the API balancer of hard-way workers and the registration balancer of K3s joiners",
            ]
        );
        f.apt = true;
        f.swap_devices = 0;
        assert!(check(&[(&w, &f)], 1000, 51820).is_empty(), "with apt, apply installs them");
        w.swap_forbidden = false;
        f.absent_packages.clear();
        w.requires_cgroup_v2 = true;
        f.cgroup_version = 1;
        let refused = check(&[(&w, &f)], 1000, 51820);
        assert_eq!(refused.len(), 1);
        assert!(
            refused[0].starts_with("w: the host runs cgroup v1") && refused[0].contains("allowCgroupV1"),
            "{refused:?}"
        );
        f.cgroup_version = 2;
        assert!(check(&[(&w, &f)], 1000, 51820).is_empty(), "cgroup v2 is what the kubelet wants");
        // Raspberry Pi OS boots with the memory cgroup off: refused where a kubelet runs.
        f.memory_cgroup = Some(false);
        assert!(check(&[(&w, &f)], 1000, 51820).is_empty(), "no kubelet here yet");
        w.requires_memory_cgroup = true;
        let refused = check(&[(&w, &f)], 1000, 51820);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(
            refused[0].starts_with("w: the kernel runs with the memory cgroup switched off")
                && refused[0].contains("cgroup_memory=1 cgroup_enable=memory")
                && refused[0].contains("/boot/firmware/cmdline.txt"),
            "{refused:?}"
        );
        f.memory_cgroup = Some(true);
        assert!(check(&[(&w, &f)], 1000, 51820).is_empty());
        w.requires_memory_cgroup = false;
        w.requires_cgroup_v2 = false;
        f.cgroup_version = 1;
        assert!(check(&[(&w, &f)], 1000, 51820).is_empty(), "swap is fine where no kubelet runs");
    }

    #[test]
    fn a_foreign_holder_is_a_conflict_naming_its_unit_and_kforges_own_units_are_not() {
        let mut w = NodePlan::new("w", Roles::one(Role::Agent), "10.4.0.1".into(), None);
        w.phase(kforge_core::plan::Phase::Mesh).units.push(kforge_core::plan::PlannedUnit {
            name: "wg-quick@kforge0.service".into(),
            enable: true,
            start: true,
            restart_on: vec![],
            reload_command: None,
            recheck: None,
            joins: None,
        });
        let mut f = facts("w", "1111", 1000, "systemd");
        let hold = |program: &str, unit: Option<&str>| Holder { program: program.into(), unit: unit.map(String::from) };
        f.listening.insert("udp/51820".into());
        f.holders.insert(
            "udp/51820".into(),
            vec![
                hold("boringtun-cli", Some("wg-quick@wg0.service")),
                hold("wireguard:wg0", Some("wg-quick@wg0.service")),
            ],
        );
        let found = conflicts(&w, &f, 51820, "kforge0");
        assert_eq!(found.len(), 1, "one conflict per unit: {found:?}");
        assert_eq!(
            found[0].to_string(),
            "w: udp/51820 is held by boringtun-cli of wg-quick@wg0.service, which kforge does not run\n  help: stop it yourself, or let kforge do it: kforge apply --hand-over wg-quick@wg0.service (stops and disables wg-quick@wg0.service, then converges)"
        );
        // Known holders are conflicts, never the generic refusal.
        assert!(check(&[(&w, &f)], 1000, 51820).is_empty());
        // kforge's own unit (a host its bootstrap or another tool set up as planned).
        f.holders.insert("udp/51820".into(), vec![hold("boringtun-cli", Some("wg-quick@kforge0.service"))]);
        assert!(conflicts(&w, &f, 51820, "kforge0").is_empty());
        f.holders.insert("udp/51820".into(), vec![hold("wireguard:kforge0", None)]);
        assert!(conflicts(&w, &f, 51820, "kforge0").is_empty());
        // A kubelet outside systemd (another installer's): named, not handed over.
        f.listening.insert("tcp/10250".into());
        f.holders.insert("tcp/10250".into(), vec![hold("kubelet", None)]);
        let found = conflicts(&w, &f, 51820, "kforge0");
        assert!(
            found[0].to_string().contains("kubelet (no systemd unit)")
                && found[0].to_string().contains("runs outside systemd")
        );
        // An unknown holder on a host kforge never recorded is still refused.
        f.holders.clear();
        assert_eq!(check(&[(&w, &f)], 1000, 51820).len(), 2);
    }
}
