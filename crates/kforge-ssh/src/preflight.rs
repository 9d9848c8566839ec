//! Refuse, per host and with a reason, what would make the apply fail half-way.

use std::collections::HashMap;

use kforge_core::plan::NodePlan;

use crate::facts::NodeFacts;

const MAX_SKEW_SECS: i64 = 30;

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
        if plan.swap_forbidden && f.swap_on {
            problems.push(format!(
                "{node}: swap is on and the kubelet refuses to run with it: `swapoff -a` and remove swap from /etc/fstab"
            ));
        }
        if plan.requires_cgroup_v2 && f.cgroup_version == 1 {
            problems.push(format!(
                "{node}: the host runs cgroup v1, which the kubelet refuses since Kubernetes 1.35: boot it with cgroup v2 (systemd.unified_cgroup_hierarchy=1 on the kernel command line), or set spec.hardway.allowCgroupV1: true to run on v1 anyway (in maintenance upstream)"
            ));
        }
        for c in &f.missing_commands {
            problems
                .push(format!("{node}: `{c}` is not installed; install it first (Debian/Ubuntu: apt-get install {c})"));
        }
        // A port kforge needs, taken by something kforge did not install.
        if f.manifest.is_empty() {
            let mut needed = vec![format!("udp/{mesh_port}")];
            if plan.control_plane {
                needed.extend(["tcp/6443", "tcp/2379", "tcp/2380"].map(String::from));
            }
            needed.push("tcp/10250".into());
            for sock in needed {
                if f.listening.contains(&sock) {
                    problems.push(format!("{node}: {sock} is already in use by another program; free it first"));
                }
            }
        }
    }
    problems
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
    fn refuses_swap_on_a_worker_and_a_missing_command_by_name() {
        let mut w = NodePlan::new("w", Roles::new(vec![Role::Controller, Role::Worker]), "10.4.0.1".into(), None);
        w.swap_forbidden = true;
        let mut f = facts("w", "1111", 1000, "systemd");
        f.swap_on = true;
        f.missing_commands = vec!["nginx".into()];
        assert_eq!(
            check(&[(&w, &f)], 1000, 51820),
            [
                "w: swap is on and the kubelet refuses to run with it: `swapoff -a` and remove swap from /etc/fstab",
                "w: `nginx` is not installed; install it first (Debian/Ubuntu: apt-get install nginx)",
            ]
        );
        w.swap_forbidden = false;
        f.missing_commands.clear();
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
        w.requires_cgroup_v2 = false;
        f.cgroup_version = 1;
        assert!(check(&[(&w, &f)], 1000, 51820).is_empty(), "swap is fine where no kubelet runs");
    }
}
