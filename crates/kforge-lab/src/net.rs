//! The lab's network: a "wan" namespace with a bridge plays the internet; each
//! machine has its own namespace with a veth into the bridge; the workstation joins
//! through one more veth. A machine "behind NAT" sits behind a router namespace that
//! masquerades its private network onto the bridge.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::LabError;
use crate::sh::{in_ns, quietly, run};

/// Ranges the lab may use, in order of preference. Never 192.0.2.0/24: on these
/// machines the host's own uplink lives there.
const CANDIDATES: &[&str] = &["198.51.100.0/24", "203.0.113.0/24", "100.64.100.0/24", "172.30.100.0/24"];

/// Cluster networks the lab must not collide with (the `lab` example's defaults).
const CLUSTER_NETS: &[&str] = &["10.4.0.0/16", "10.42.0.0/16", "10.43.0.0/16"];

/// Pick the first candidate that overlaps no route on this machine.
pub fn pick_subnet() -> Result<Ipv4Net, LabError> {
    let routes = run("ip", &["-4", "route", "show", "table", "all"]).map_err(LabError::Command)?;
    let taken: Vec<Ipv4Net> = routes
        .lines()
        .filter_map(|l| {
            l.split_whitespace().find_map(|w| {
                w.parse::<Ipv4Net>().ok().or_else(|| w.parse::<Ipv4Addr>().ok().map(|a| Ipv4Net::new(a, 32).unwrap()))
            })
        })
        .filter(|n| n.prefix_len() > 0)
        .collect();
    for c in CANDIDATES {
        let net: Ipv4Net = c.parse().unwrap();
        if !taken.iter().any(|t| overlaps(*t, net)) {
            return Ok(net);
        }
    }
    Err(LabError::Setup(format!("every lab range ({}) overlaps a route on this machine", CANDIDATES.join(", "))))
}

/// A private network for the machine behind NAT number `k` (router .1, machine .2).
pub fn private_net(k: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::new(10, 99, k, 0), 24).unwrap()
}

pub fn overlaps(a: Ipv4Net, b: Ipv4Net) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

pub fn assert_clear_of_cluster(net: Ipv4Net) {
    debug_assert!(CLUSTER_NETS.iter().all(|c| !overlaps(c.parse().unwrap(), net)));
}

pub fn host(net: Ipv4Net, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()) + n)
}

/// The wan namespace with its bridge, and the workstation's veth into it.
pub fn create_wan(wan_ns: &str, host_veth: &str, host_ip: Ipv4Addr, prefix: u8) -> Result<(), LabError> {
    let c = LabError::Command;
    run("ip", &["netns", "add", wan_ns]).map_err(c)?;
    in_ns(wan_ns, "ip", &["link", "set", "lo", "up"]).map_err(c)?;
    in_ns(wan_ns, "ip", &["link", "add", "br0", "type", "bridge"]).map_err(c)?;
    in_ns(wan_ns, "ip", &["link", "set", "br0", "up"]).map_err(c)?;
    run("ip", &["link", "add", host_veth, "type", "veth", "peer", "name", "up0", "netns", wan_ns]).map_err(c)?;
    in_ns(wan_ns, "ip", &["link", "set", "up0", "master", "br0", "up"]).map_err(c)?;
    run("ip", &["addr", "add", &format!("{host_ip}/{prefix}"), "dev", host_veth]).map_err(c)?;
    run("ip", &["link", "set", host_veth, "up"]).map_err(c)?;
    Ok(())
}

/// A namespace plugged into the bridge as `eth0` with `ip/prefix`.
pub fn attach(wan_ns: &str, ns: &str, bridge_port: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), LabError> {
    let c = LabError::Command;
    run("ip", &["netns", "add", ns]).map_err(c)?;
    in_ns(ns, "ip", &["link", "set", "lo", "up"]).map_err(c)?;
    run("ip", &["-n", wan_ns, "link", "add", bridge_port, "type", "veth", "peer", "name", "eth0", "netns", ns])
        .map_err(c)?;
    in_ns(wan_ns, "ip", &["link", "set", bridge_port, "master", "br0", "up"]).map_err(c)?;
    in_ns(ns, "ip", &["addr", "add", &format!("{ip}/{prefix}"), "dev", "eth0"]).map_err(c)?;
    in_ns(ns, "ip", &["link", "set", "eth0", "up"]).map_err(c)?;
    enable_forwarding(ns)
}

/// nspawn mounts /proc/sys read-only inside a machine, so `sysctl` there cannot turn
/// forwarding on; the lab does it from outside, per namespace, as a VPS image would
/// ship it. (kforge's own sysctl step is skipped when forwarding is already on.)
fn enable_forwarding(ns: &str) -> Result<(), LabError> {
    in_ns(ns, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]).map_err(LabError::Command)?;
    Ok(())
}

/// Put machine namespace `ns` behind router namespace `router_ns` (already on the
/// bridge): a private link, masquerade onto the bridge, default route via the router.
/// The workstation gets a route to the private network (the operator's home LAN),
/// nobody else does.
pub fn behind_nat(
    router_ns: &str,
    ns: &str,
    private: Ipv4Net,
    router_public: Ipv4Addr,
    host_veth: &str,
) -> Result<(), LabError> {
    let c = LabError::Command;
    let router_ip = host(private, 1);
    let machine_ip = host(private, 2);
    run("ip", &["netns", "add", ns]).map_err(c)?;
    in_ns(ns, "ip", &["link", "set", "lo", "up"]).map_err(c)?;
    run("ip", &["-n", router_ns, "link", "add", "lan0", "type", "veth", "peer", "name", "eth0", "netns", ns])
        .map_err(c)?;
    in_ns(router_ns, "ip", &["addr", "add", &format!("{router_ip}/24"), "dev", "lan0"]).map_err(c)?;
    in_ns(router_ns, "ip", &["link", "set", "lan0", "up"]).map_err(c)?;
    in_ns(router_ns, "sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]).map_err(c)?;
    in_ns(router_ns, "nft", &["add", "table", "ip", "kforge_lab_nat"]).map_err(c)?;
    in_ns(
        router_ns,
        "nft",
        &["add", "chain", "ip", "kforge_lab_nat", "post", "{ type nat hook postrouting priority srcnat; }"],
    )
    .map_err(c)?;
    in_ns(router_ns, "nft", &["add", "rule", "ip", "kforge_lab_nat", "post", "oifname", "eth0", "masquerade"])
        .map_err(c)?;
    in_ns(ns, "ip", &["addr", "add", &format!("{machine_ip}/24"), "dev", "eth0"]).map_err(c)?;
    in_ns(ns, "ip", &["link", "set", "eth0", "up"]).map_err(c)?;
    in_ns(ns, "ip", &["route", "add", "default", "via", &router_ip.to_string()]).map_err(c)?;
    enable_forwarding(ns)?;
    run("ip", &["route", "add", &private.to_string(), "via", &router_public.to_string(), "dev", host_veth])
        .map_err(c)?;
    Ok(())
}

pub fn delete_ns(ns: &str) {
    quietly("ip", &["netns", "del", ns]);
}

pub fn delete_link(link: &str) {
    quietly("ip", &["link", "del", link]);
}

pub fn ns_exists(ns: &str) -> bool {
    std::path::Path::new("/run/netns").join(ns).exists()
}
