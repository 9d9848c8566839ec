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

use std::collections::BTreeMap;

use crate::systemd::UnitFile;

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

    let mut input = Chain::new("input", "type filter hook input priority filter; policy drop;");
    input
        .rule("ct state established,related accept")
        .rule("ct state invalid drop")
        .rule("iifname \"lo\" accept")
        .note("the mesh and pod networks are trusted: everything there is encrypted or local")
        .rule(format!("iifname {{ {internal} }} accept"))
        .note("ICMP needed for path MTU discovery and diagnostics; echo rate-limited")
        .rule("icmp type { destination-unreachable, time-exceeded, parameter-problem } accept")
        .rule("icmp type echo-request limit rate 10/second burst 20 packets accept")
        .rule("icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert, packet-too-big, destination-unreachable, time-exceeded, parameter-problem } accept")
        .rule("icmpv6 type echo-request limit rate 10/second burst 20 packets accept")
        .note("DHCP replies, so a VPS keeps its lease")
        .rule("udp sport 67 udp dport 68 accept")
        .rule("udp sport 547 udp dport 546 accept")
        .note("SSH");
    let ssh_port = fw.ssh.port;
    if fw.ssh.rate_limit {
        for (family, addr) in [("v4", "ip"), ("v6", "ip6")] {
            input.rule(format!(
                "tcp dport {ssh_port} ct state new add @ssh_ratelimit_{family} {{ {addr} saddr limit rate over 10/minute burst 20 packets }} drop"
            ));
        }
    }
    for m in source_matches(&fw.ssh.allow_from) {
        input.rule(format!("{m}tcp dport {ssh_port} accept"));
    }
    input.note("the WireGuard mesh").rule(format!("udp dport {} accept", spec.mesh.port));
    for p in &open {
        input.note(format!("{}/{} ({})", p.port, p.protocol, p.why));
        for m in source_matches(p.allow_from) {
            input.rule(format!("{m}{} dport {} accept", p.protocol, p.port));
        }
    }

    let mut forward = Chain::new("forward", "type filter hook forward priority filter; policy drop;");
    forward
        .rule("ct state established,related accept")
        .rule("ct state invalid drop")
        .note("pod egress, pod-to-pod across nodes, and relaying between NAT'd mesh members")
        .rule(format!("iifname {{ {internal} }} accept"));
    for p in &open {
        forward.note(format!("{}/{} forwarded to a pod (hostPort / LoadBalancer)", p.port, p.protocol));
        for m in source_matches(p.allow_from) {
            forward.rule(format!("{m}meta l4proto {} ct original proto-dst {} accept", p.protocol, p.port));
        }
    }

    let sets: Vec<String> = match fw.ssh.rate_limit {
        true => [("v4", "ipv4_addr"), ("v6", "ipv6_addr")]
            .map(|(family, ty)| {
                format!(
                    "\tset ssh_ratelimit_{family} {{\n\t\ttype {ty}\n\t\tsize 65535\n\t\tflags dynamic,timeout\n\t\ttimeout 1m\n\t}}\n"
                )
            })
            .to_vec(),
        false => Vec::new(),
    };
    let header = format!(
        "#!/usr/sbin/nft -f\n# kforge firewall of cluster {}: node {} (mesh {}).\n# Only table inet kforge is replaced; other tables are left as they are.\n",
        model.spec.metadata.name, me.name, me.mesh_ip
    );
    // Declaring, deleting and defining the table in one file makes the load atomic.
    let mut out = format!("{header}table inet kforge\ndelete table inet kforge\n\ntable inet kforge {{\n");
    if !sets.is_empty() {
        out.push_str(&sets.concat());
        out.push('\n');
    }
    out.push_str(&input.render());
    out.push('\n');
    out.push_str(&forward.render());
    out.push_str("}\n");
    out
}

/// One base chain of table `inet kforge`: its hook line, then rules and comments in order.
struct Chain {
    name: &'static str,
    hook: &'static str,
    lines: Vec<String>,
}

impl Chain {
    fn new(name: &'static str, hook: &'static str) -> Chain {
        Chain { name, hook, lines: Vec::new() }
    }

    fn rule(&mut self, rule: impl Into<String>) -> &mut Chain {
        self.lines.push(rule.into());
        self
    }

    /// A `# comment` line: why the rules below it are there.
    fn note(&mut self, text: impl Into<String>) -> &mut Chain {
        self.lines.push(format!("# {}", text.into()));
        self
    }

    fn render(&self) -> String {
        let mut out = format!("\tchain {} {{\n\t\t{}\n", self.name, self.hook);
        for line in &self.lines {
            out.push_str(&format!("\t\t{line}\n"));
        }
        out.push_str("\t}\n");
        out
    }
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

/// Shell pipeline that prints `CHAIN RULES` for each chain of the loaded `table inet
/// kforge` that has rules, sorted by chain. `kforge doctor` reports it; the firewall
/// unit's recheck compares it with the plan. nft lists sets before chains, so a set's
/// `type`/`size`/`elements` lines never count (and dynamic set elements, which change
/// with traffic, never make the table look changed).
pub const LOADED_RULES: &str = r#"nft list table inet kforge 2>/dev/null | awk '/^\t*chain /{c=$2} /^\t\t[a-z@]/ && c && !/^\t\ttype /{n[c]++} END{for (k in n) print k, n[k]}' | LC_ALL=C sort"#;

/// Rules per chain in a ruleset file kforge wrote (comments and hook lines are not
/// rules): what `LOADED_RULES` prints once the file is loaded.
pub fn rules_per_chain(ruleset: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let mut chain: Option<String> = None;
    for line in ruleset.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("chain ") {
            chain = rest.split_whitespace().next().map(String::from);
            out.insert(chain.clone().unwrap(), 0);
        } else if t == "}" {
            chain = None;
        } else if let Some(c) = &chain
            && !t.is_empty()
            && !t.starts_with('#')
            && !t.starts_with("type ")
        {
            *out.get_mut(c).unwrap() += 1;
        }
    }
    out
}

/// A read-only shell test that succeeds while the loaded table has, chain by chain, as
/// many rules as `ruleset`: a rule inserted or deleted by hand fails it, and so does a
/// table that is not loaded at all.
pub fn loaded_as_planned(ruleset: &str) -> String {
    let want: String =
        rules_per_chain(ruleset).iter().filter(|(_, n)| **n > 0).map(|(c, n)| format!("{c} {n} ")).collect();
    format!("[ \"$({LOADED_RULES} | tr '\\n' ' ')\" = '{want}' ]")
}
