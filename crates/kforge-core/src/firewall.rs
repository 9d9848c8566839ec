//! Per-node nftables ruleset: kforge's own table `inet kforge`.
//!
//! The file first declares and deletes the table, then defines it whole, so loading
//! it is atomic and idempotent and never flushes anyone else's tables (k3s's
//! iptables-nft rules, the operator's own). Policy:
//!
//! * **input**: drop by default on the public side; accept loopback, the mesh and
//!   the pod interfaces, established traffic, essential ICMP, DHCP replies, SSH (from
//!   `allowFrom`, per-source rate-limited), the mesh UDP port, the node's published
//!   ports, and the API only if `apiOnPublic`.
//! * **forward**: accept from the mesh and pod interfaces (pod egress, relaying for
//!   NAT'd members); from the public side only connections DNAT'd to a published port
//!   (hostPort/LoadBalancer), so NodePorts do not leak to the internet.

use crate::systemd::UnitFile;
use std::fmt::Write;

use ipnet::IpNet;

use crate::model::{API_PORT, Member, Model};
use crate::spec::{Cidr, Node, Protocol};

/// Interfaces whose traffic is cluster-internal: the mesh plus flannel's.
fn internal_interfaces(model: &Model<'_>) -> Vec<String> {
    let mut v = vec![model.spec.spec.mesh.interface.clone()];
    v.extend(["cni0", "flannel.1", "flannel-v6.1", "flannel-wg", "flannel-wg-v6"].map(String::from));
    v
}

/// A port opened on the public side of one node.
struct OpenPort<'a> {
    port: u16,
    protocol: Protocol,
    allow_from: &'a [Cidr],
    why: String,
}

pub fn render_nftables(model: &Model<'_>, me: &Member, node: &Node) -> String {
    let spec = &model.spec.spec;
    let fw = &spec.firewall;
    let internal = internal_interfaces(model).iter().map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(", ");

    let mut published: Vec<OpenPort<'_>> = fw
        .publish
        .iter()
        .filter(|p| p.nodes.as_ref().is_none_or(|ns| ns.contains(&node.name)))
        .map(|p| OpenPort { port: p.port, protocol: p.protocol, allow_from: &p.allow_from, why: "published".into() })
        .collect();
    let any = [Cidr("0.0.0.0/0".parse().unwrap()), Cidr("::/0".parse().unwrap())];
    let mut open: Vec<OpenPort<'_>> = Vec::new();
    if spec.access.api_on_public && node.role.is_control_plane() {
        open.push(OpenPort {
            port: API_PORT,
            protocol: Protocol::Tcp,
            allow_from: &any,
            why: "access.apiOnPublic".into(),
        });
    }
    open.append(&mut published);

    let mut o = String::new();
    let _ = writeln!(o, "#!/usr/sbin/nft -f");
    let _ = writeln!(
        o,
        "# kforge firewall of cluster {}: node {} (mesh {}).",
        model.spec.metadata.name, me.name, me.mesh_ip
    );
    let _ = writeln!(o, "# Only table inet kforge is replaced; other tables are left as they are.");
    let _ = writeln!(o, "table inet kforge");
    let _ = writeln!(o, "delete table inet kforge");
    let _ = writeln!(o);
    let _ = writeln!(o, "table inet kforge {{");
    if fw.ssh.rate_limit {
        for (family, ty) in [("v4", "ipv4_addr"), ("v6", "ipv6_addr")] {
            let _ = writeln!(o, "\tset ssh_ratelimit_{family} {{");
            let _ = writeln!(o, "\t\ttype {ty}\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 1m");
            let _ = writeln!(o, "\t}}");
        }
        let _ = writeln!(o);
    }
    let _ = writeln!(o, "\tchain input {{");
    let _ = writeln!(o, "\t\ttype filter hook input priority filter; policy drop;");
    let _ = writeln!(o, "\t\tct state established,related accept");
    let _ = writeln!(o, "\t\tct state invalid drop");
    let _ = writeln!(o, "\t\tiifname \"lo\" accept");
    let _ = writeln!(o, "\t\t# the mesh and pod networks are trusted: everything there is encrypted or local");
    let _ = writeln!(o, "\t\tiifname {{ {internal} }} accept");
    let _ = writeln!(o, "\t\t# ICMP needed for path MTU discovery and diagnostics; echo rate-limited");
    let _ = writeln!(o, "\t\ticmp type {{ destination-unreachable, time-exceeded, parameter-problem }} accept");
    let _ = writeln!(o, "\t\ticmp type echo-request limit rate 10/second burst 20 packets accept");
    let _ = writeln!(
        o,
        "\t\ticmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, packet-too-big, destination-unreachable, time-exceeded, parameter-problem }} accept"
    );
    let _ = writeln!(o, "\t\ticmpv6 type echo-request limit rate 10/second burst 20 packets accept");
    let _ = writeln!(o, "\t\t# DHCP replies, so a VPS keeps its lease");
    let _ = writeln!(o, "\t\tudp sport 67 udp dport 68 accept");
    let _ = writeln!(o, "\t\tudp sport 547 udp dport 546 accept");
    let ssh_port = fw.ssh.port;
    let _ = writeln!(o, "\t\t# SSH");
    if fw.ssh.rate_limit {
        let _ = writeln!(
            o,
            "\t\ttcp dport {ssh_port} ct state new add @ssh_ratelimit_v4 {{ ip saddr limit rate over 10/minute burst 20 packets }} drop"
        );
        let _ = writeln!(
            o,
            "\t\ttcp dport {ssh_port} ct state new add @ssh_ratelimit_v6 {{ ip6 saddr limit rate over 10/minute burst 20 packets }} drop"
        );
    }
    for line in source_matches(&fw.ssh.allow_from) {
        let _ = writeln!(o, "\t\t{line}tcp dport {ssh_port} accept");
    }
    let _ = writeln!(o, "\t\t# the WireGuard mesh");
    let _ = writeln!(o, "\t\tudp dport {} accept", spec.mesh.port);
    for p in &open {
        let _ = writeln!(o, "\t\t# {}/{} ({})", p.port, p.protocol, p.why);
        for line in source_matches(p.allow_from) {
            let _ = writeln!(o, "\t\t{line}{} dport {} accept", p.protocol, p.port);
        }
    }
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o);
    let _ = writeln!(o, "\tchain forward {{");
    let _ = writeln!(o, "\t\ttype filter hook forward priority filter; policy drop;");
    let _ = writeln!(o, "\t\tct state established,related accept");
    let _ = writeln!(o, "\t\tct state invalid drop");
    let _ = writeln!(o, "\t\t# pod egress, pod-to-pod across nodes, and relaying between NAT'd mesh members");
    let _ = writeln!(o, "\t\tiifname {{ {internal} }} accept");
    for p in &open {
        let _ = writeln!(o, "\t\t# {}/{} forwarded to a pod (hostPort / LoadBalancer)", p.port, p.protocol);
        for line in source_matches(p.allow_from) {
            let _ = writeln!(o, "\t\t{line}meta l4proto {} ct original proto-dst {} accept", p.protocol, p.port);
        }
    }
    let _ = writeln!(o, "\t}}");
    let _ = writeln!(o, "}}");
    o
}

/// Match prefixes for an allow-list: empty (anyone), or per-family `ip saddr {…} `.
fn source_matches(allow: &[Cidr]) -> Vec<String> {
    let v4: Vec<IpNet> = allow.iter().map(|c| c.0).filter(|n| matches!(n, IpNet::V4(_))).collect();
    let v6: Vec<IpNet> = allow.iter().map(|c| c.0).filter(|n| matches!(n, IpNet::V6(_))).collect();
    let all4 = v4.iter().any(|n| n.prefix_len() == 0);
    let all6 = v6.iter().any(|n| n.prefix_len() == 0);
    if all4 && all6 {
        return vec![String::new()];
    }
    let mut out = Vec::new();
    let join = |nets: &[IpNet]| nets.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
    if all4 {
        out.push("meta nfproto ipv4 ".to_string());
    } else if !v4.is_empty() {
        out.push(format!("ip saddr {{ {} }} ", join(&v4)));
    }
    if all6 {
        out.push("meta nfproto ipv6 ".to_string());
    } else if !v6.is_empty() {
        out.push(format!("ip6 saddr {{ {} }} ", join(&v6)));
    }
    out
}

/// The boot-time unit that loads the ruleset before the network comes up.
pub fn render_firewall_unit(nft_path: &str) -> String {
    UnitFile::new("Managed by kforge: loads table inet kforge before the network is up.")
        .section("Unit")
        .set("Description", "kforge firewall (nftables table inet kforge)")
        .set("DefaultDependencies", "no")
        .set("Before", "network-pre.target")
        .set("Wants", "network-pre.target")
        .set("After", "local-fs.target")
        .section("Service")
        .set("Type", "oneshot")
        .set("RemainAfterExit", "yes")
        .set("ExecStart", format!("/usr/sbin/nft -f {nft_path}"))
        .set("ExecReload", format!("/usr/sbin/nft -f {nft_path}"))
        .note("Gone already is fine; a transient netlink error gets two more tries.")
        .set(
            "ExecStop",
            "/bin/sh -c 'for try in 1 2 3; do /usr/sbin/nft list table inet kforge >/dev/null 2>&1 || exit 0; /usr/sbin/nft delete table inet kforge && exit 0; sleep 1; done; exit 1'",
        )
        .wanted_by_multi_user()
        .render()
}
