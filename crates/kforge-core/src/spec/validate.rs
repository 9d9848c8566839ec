//! Checks a parsed cluster file for what types alone cannot express: overlapping
//! networks, duplicate names and addresses, quorum, references to unknown nodes.
//! Each finding names the YAML path; the caller attaches line and column.

use crate::component::Component;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use ipnet::IpNet;

use super::diagnostic::Diagnostic;
use super::types::*;

/// Ports kforge's cluster uses internally; publishing one would expose a component
/// that must only be reached over the mesh.
const INTERNAL_PORTS: &[(u16, Protocol, &str)] = &[
    (6443, Protocol::Tcp, "the Kubernetes API (use access.apiOnPublic instead)"),
    (10250, Protocol::Tcp, "the kubelet API"),
    (2379, Protocol::Tcp, "etcd clients"),
    (2380, Protocol::Tcp, "etcd peers"),
    (8472, Protocol::Udp, "flannel VXLAN (plaintext)"),
    (5001, Protocol::Tcp, "the embedded registry"),
];

pub fn validate(c: &Cluster) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    header(c, &mut out);
    distribution(c, &mut out);
    networks(c, &mut out);
    mesh(c, &mut out);
    nodes(c, &mut out);
    peers(c, &mut out);
    firewall(c, &mut out);
    pki(c, &mut out);
    rollout(c, &mut out);
    artifacts(c, &mut out);
    images(c, &mut out);
    gitops(c, &mut out);
    out
}

fn header(c: &Cluster, out: &mut Vec<Diagnostic>) {
    if c.api_version != API_VERSION {
        out.push(
            Diagnostic::error("apiVersion", format!("unsupported apiVersion `{}`", c.api_version))
                .help(format!("write `apiVersion: {API_VERSION}`")),
        );
    }
    if c.kind != KIND {
        out.push(
            Diagnostic::error("kind", format!("unsupported kind `{}`", c.kind))
                .help("a cluster file has `kind: Cluster`"),
        );
    }
    if let Err(why) = dns_label(&c.metadata.name) {
        out.push(
            Diagnostic::error("metadata.name", format!("cluster name `{}` {why}", c.metadata.name))
                .help("use lowercase letters, digits and '-', at most 63 characters"),
        );
    }
}

fn distribution(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let v = &c.spec.distribution.version;
    match c.spec.distribution.kind {
        DistributionKind::K3s => {
            if !is_k3s_version(v) {
                out.push(
                    Diagnostic::error("spec.distribution.version", format!("`{v}` is not a K3s release"))
                        .help("K3s releases look like `v1.36.4+k3s1`"),
                );
            }
        }
        DistributionKind::Hardway => {
            if !is_kubernetes_version(v) {
                out.push(
                    Diagnostic::error("spec.distribution.version", format!("`{v}` is not a Kubernetes release"))
                        .help("Kubernetes releases look like `v1.32.3`"),
                );
            }
            let pods = c.spec.network.pod_cidr.0;
            let prefix = c.spec.hardway.node_pod_prefix;
            if prefix <= pods.prefix_len() || prefix > 28 {
                out.push(
                    Diagnostic::error(
                        "spec.hardway.nodePodPrefix",
                        format!("each worker's pod network /{prefix} does not fit inside podCIDR {pods}"),
                    )
                    .help(format!("use a prefix between /{} and /28 (default /24)", pods.prefix_len() + 1)),
                );
            } else {
                let workers = c.spec.nodes.iter().filter(|n| n.role.has(Role::Worker)).count() as u64;
                let room = 1u64 << (prefix - pods.prefix_len()).min(63);
                if workers > room {
                    out.push(
                        Diagnostic::error(
                            "spec.hardway.nodePodPrefix",
                            format!("{workers} workers but podCIDR {pods} holds only {room} /{prefix} networks"),
                        )
                        .help("use a larger podCIDR or a longer nodePodPrefix"),
                    );
                }
            }
        }
    }
    for (signal, value) in &c.spec.hardway.eviction_hard {
        const SIGNALS: &[&str] = &[
            "memory.available",
            "nodefs.available",
            "nodefs.inodesFree",
            "imagefs.available",
            "imagefs.inodesFree",
            "containerfs.available",
            "containerfs.inodesFree",
            "pid.available",
        ];
        let path = format!("spec.hardway.evictionHard.{signal}");
        if !SIGNALS.contains(&signal.as_str()) {
            out.push(
                Diagnostic::error(path, format!("the kubelet has no eviction signal `{signal}`"))
                    .help(format!("use one of: {}", SIGNALS.join(", "))),
            );
        } else if !is_eviction_threshold(value) {
            out.push(
                Diagnostic::error(path, format!("`{value}` is neither a quantity nor a percentage"))
                    .help("write a quantity such as `2Gi` or `500Mi`, or a percentage such as `5%`"),
            );
        }
    }
    for (i, name) in c.spec.k3s.disable.iter().enumerate() {
        const KNOWN: &[&str] = &["coredns", "servicelb", "traefik", "local-storage", "metrics-server", "runtimes"];
        if !KNOWN.contains(&name.as_str()) {
            out.push(
                Diagnostic::error(format!("spec.k3s.disable[{i}]"), format!("K3s has no packaged component `{name}`"))
                    .help(format!("one of: {}", KNOWN.join(", "))),
            );
        }
    }
    let backend = &c.spec.k3s.flannel_backend;
    if backend == "host-gw" {
        // host-gw routes each node's pod network via that node's mesh address, and
        // WireGuard drops what is not in a peer's AllowedIPs: K3s hands each node its
        // pod network when it registers, so kforge cannot list them there in advance.
        out.push(
            Diagnostic::error(
                "spec.k3s.flannelBackend",
                "flannel's host-gw cannot cross the mesh: it routes pod networks via mesh addresses, and WireGuard drops them (K3s assigns pod networks at registration, so no peer's AllowedIPs can list them)",
            )
            .help("use `vxlan`: its packets go between mesh addresses, so they ride the encrypted mesh (or `none` with your own CNI)"),
        );
    } else if !["vxlan", "none"].contains(&backend.as_str()) {
        out.push(
            Diagnostic::error(
                "spec.k3s.flannelBackend",
                format!("flannel backend `{backend}` is not supported inside the mesh"),
            )
            .help("use `vxlan` (rides the encrypted mesh), or `none` for your own CNI"),
        );
    }
}

fn networks(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let n = &c.spec.network;
    let nets = [
        ("spec.network.podCIDR", n.pod_cidr.0),
        ("spec.network.serviceCIDR", n.service_cidr.0),
        ("spec.mesh.subnet", c.spec.mesh.subnet.0),
    ];
    for (path, net) in nets {
        if !matches!(net, IpNet::V4(_)) {
            out.push(
                Diagnostic::error(path, format!("`{net}` is IPv6; kforge supports IPv4 here for now"))
                    .help("use a private IPv4 range such as 10.0.0.0/8"),
            );
        }
    }
    for i in 0..nets.len() {
        for j in i + 1..nets.len() {
            let (pa, a) = nets[i];
            let (pb, b) = nets[j];
            if overlaps(a, b) {
                out.push(
                    Diagnostic::error(pb, format!("`{b}` overlaps `{a}` ({pa})"))
                        .help("pod, service and mesh networks must be disjoint; pick another range"),
                );
            }
        }
    }
    if n.service_cidr.0.prefix_len() > 28 {
        out.push(
            Diagnostic::error("spec.network.serviceCIDR", "service CIDR is too small")
                .help("use at least a /28 (the API and DNS services need the 1st and 10th addresses)"),
        );
    }
    if let Some(dns) = n.cluster_dns
        && !n.service_cidr.0.contains(&dns.0)
    {
        out.push(
            Diagnostic::error(
                "spec.network.clusterDNS",
                format!("{dns} is outside the service CIDR {}", n.service_cidr),
            )
            .help("the cluster DNS address must be a service address; omit it to use the 10th one"),
        );
    }
    if n.cluster_domain.split('.').any(|label| dns_label(label).is_err()) {
        out.push(
            Diagnostic::error(
                "spec.network.clusterDomain",
                format!("`{}` is not a valid DNS domain", n.cluster_domain),
            )
            .help("e.g. `cluster.local`"),
        );
    }
}

fn mesh(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let m = &c.spec.mesh;
    if m.interface.is_empty()
        || m.interface.len() > 15
        || !m.interface.chars().all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        out.push(
            Diagnostic::error("spec.mesh.interface", format!("`{}` is not a valid interface name", m.interface))
                .help("1 to 15 characters from letters, digits, '-', '_', '.'"),
        );
    }
    if m.port == 0 {
        out.push(Diagnostic::error("spec.mesh.port", "port 0 cannot be listened on").help("the default is 51820"));
    }
    if !(1280..=9000).contains(&m.mtu) {
        out.push(
            Diagnostic::error("spec.mesh.mtu", format!("MTU {} is out of range", m.mtu))
                .help("use 1280..=9000; 1420 fits any underlay"),
        );
    }
    if !(576..=9216).contains(&m.underlay_mtu) {
        out.push(
            Diagnostic::error("spec.mesh.underlayMtu", format!("underlay MTU {} is out of range", m.underlay_mtu))
                .help("the MTU of the hosts' network: 1500 on most VPSes and LANs, 1492 on PPPoE"),
        );
    }
    if let IpNet::V4(net) = m.subnet.0 {
        // Usable host addresses: exclude network and broadcast.
        let usable = (1u64 << (32 - net.prefix_len() as u32)).saturating_sub(2);
        let members = (c.spec.nodes.len() + c.spec.access.peers.len()) as u64;
        if members > usable {
            out.push(
                Diagnostic::error(
                    "spec.mesh.subnet",
                    format!("{} has {usable} usable addresses for {members} nodes and peers", m.subnet),
                )
                .help("use a larger subnet, e.g. a /16"),
            );
        }
    }
    if let Some(relay) = &m.relay {
        match c.spec.nodes.iter().find(|n| &n.name == relay) {
            None => out.push(
                Diagnostic::error("spec.mesh.relay", format!("relay `{relay}` is not a node"))
                    .help(super::names::unknown_name_help(relay, &node_names(c))),
            ),
            Some(n) if n.endpoint.is_none() => out.push(
                Diagnostic::error("spec.mesh.relay", format!("relay `{relay}` has no endpoint"))
                    .help("a relay must be reachable: pick a node with a public endpoint"),
            ),
            Some(_) => {}
        }
    }
    let behind_nat = c.spec.nodes.iter().filter(|n| n.endpoint.is_none()).count();
    if behind_nat == c.spec.nodes.len() && c.spec.nodes.len() > 1 {
        out.push(
            Diagnostic::error("spec.nodes", "no node has an endpoint, so no node can reach another")
                .help("give at least one node a public `endpoint`; nodes behind NAT are relayed through it"),
        );
    }
}

fn nodes(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let nodes = &c.spec.nodes;
    if nodes.is_empty() {
        out.push(
            Diagnostic::error("spec.nodes", "the cluster has no nodes")
                .help("add at least one node with `role: server`"),
        );
        return;
    }
    let kind = c.spec.distribution.kind;
    let (cp_role, allowed): (&str, &[Role]) = match kind {
        DistributionKind::K3s => ("server", &[Role::Server, Role::Agent]),
        DistributionKind::Hardway => ("controller", &[Role::Controller, Role::Worker]),
    };
    for (i, n) in nodes.iter().enumerate() {
        if let Some(bad) = n.role.iter().find(|r| !allowed.contains(r)) {
            let names: Vec<&str> = allowed.iter().map(|r| r.name()).collect();
            out.push(
                Diagnostic::error(
                    format!("spec.nodes[{i}].role"),
                    format!("role `{}` does not exist in the {} distribution", bad.name(), kind.name()),
                )
                .help(match kind {
                    DistributionKind::K3s => "k3s nodes are `server` or `agent`".to_string(),
                    DistributionKind::Hardway => format!(
                        "hardway nodes are {}, or both: `role: [controller, worker]`",
                        names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(" or ")
                    ),
                }),
            );
        } else if kind == DistributionKind::K3s && n.role.iter().count() > 1 {
            out.push(
                Diagnostic::error(format!("spec.nodes[{i}].role"), "a k3s node is either a server or an agent")
                    .help("a k3s server runs workloads too: `role: server`"),
            );
        }
    }
    let servers = nodes.iter().filter(|n| n.role.is_control_plane()).count();
    if servers == 0 {
        out.push(
            Diagnostic::error("spec.nodes", format!("no node has `role: {cp_role}`"))
                .help(format!("a cluster needs a control plane: make one node (or three, for HA) a {cp_role}")),
        );
    } else if servers % 2 == 0 {
        out.push(
            Diagnostic::warning(
                "spec.nodes",
                format!("{servers} {cp_role}s: an even number adds no fault tolerance to etcd's quorum"),
            )
            .help(format!("use {} or {} {cp_role}s", servers - 1, servers + 1)),
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut endpoints: HashMap<IpAddr, usize> = HashMap::new();
    let mut mesh_ips: HashMap<IpAddr, String> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        let at = |field: &str| format!("spec.nodes[{i}].{field}");
        if let Err(why) = dns_label(&n.name) {
            out.push(
                Diagnostic::error(at("name"), format!("node name `{}` {why}", n.name))
                    .help("node names are DNS labels: lowercase letters, digits and '-', at most 63 characters"),
            );
        }
        if let Some(first) = names.insert(&n.name, i) {
            out.push(
                Diagnostic::error(at("name"), format!("node name `{}` is used twice", n.name))
                    .help(format!("spec.nodes[{first}] already has this name; node names must be unique")),
            );
        }
        if let Some(ep) = n.endpoint {
            if let Some(first) = endpoints.insert(ep.0, i) {
                out.push(
                    Diagnostic::error(at("endpoint"), format!("endpoint {ep} is used twice"))
                        .help(format!("spec.nodes[{first}] has the same endpoint; each node needs its own address")),
                );
            }
            for (path, net) in [
                ("spec.network.podCIDR", c.spec.network.pod_cidr),
                ("spec.network.serviceCIDR", c.spec.network.service_cidr),
                ("spec.mesh.subnet", c.spec.mesh.subnet),
            ] {
                if net.0.contains(&ep.0) {
                    out.push(
                        Diagnostic::error(at("endpoint"), format!("endpoint {ep} lies inside {net} ({path})"))
                            .help("a node's own address must not overlap the cluster's networks: move that network"),
                    );
                }
            }
            if ep.0.is_unspecified() || ep.0.is_loopback() || ep.0.is_multicast() {
                out.push(
                    Diagnostic::error(at("endpoint"), format!("{ep} cannot be a node's endpoint"))
                        .help("use the address other nodes reach this node on"),
                );
            }
        }
        if let Some(ip) = n.mesh_ip {
            check_mesh_ip(c, ip, &at("meshIP"), &n.name, &mut mesh_ips, out);
        }
        if n.ssh.host.is_none() && n.endpoint.is_none() {
            out.push(
                Diagnostic::warning(at("ssh"), format!("node `{}` has neither an endpoint nor ssh.host", n.name))
                    .help("`kforge apply` will not know how to reach it; `render` still works"),
            );
        }
        for (key, value) in &n.labels {
            if let Err(why) = label(key, value) {
                out.push(
                    Diagnostic::error(format!("spec.nodes[{i}].labels.{key}"), format!("label `{key}={value}`: {why}"))
                        .help("keys are [prefix/]name, values at most 63 characters of [A-Za-z0-9_.-]"),
                );
            }
        }
        for (t, taint) in n.taints.iter().enumerate() {
            if !is_taint(taint) {
                out.push(
                    Diagnostic::error(format!("spec.nodes[{i}].taints[{t}]"), format!("`{taint}` is not a taint"))
                        .help("write `key=value:Effect` with Effect NoSchedule, PreferNoSchedule or NoExecute"),
                );
            }
        }
    }
}

fn peers(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let node_names: HashMap<&str, usize> = c.spec.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut mesh_ips: HashMap<IpAddr, String> =
        c.spec.nodes.iter().filter_map(|n| n.mesh_ip.map(|ip| (ip.0, n.name.clone()))).collect();
    for (i, p) in c.spec.access.peers.iter().enumerate() {
        let at = |field: &str| format!("spec.access.peers[{i}].{field}");
        if let Err(why) = dns_label(&p.name) {
            out.push(
                Diagnostic::error(at("name"), format!("peer name `{}` {why}", p.name))
                    .help("peer names are DNS labels: lowercase letters, digits and '-'"),
            );
        }
        if let Some(n) = node_names.get(p.name.as_str()) {
            out.push(
                Diagnostic::error(at("name"), format!("peer name `{}` is also a node's name", p.name))
                    .help(format!("spec.nodes[{n}] has this name; names are unique across nodes and peers")),
            );
        }
        if let Some(first) = seen.insert(&p.name, i) {
            out.push(
                Diagnostic::error(at("name"), format!("peer name `{}` is used twice", p.name))
                    .help(format!("spec.access.peers[{first}] already has this name")),
            );
        }
        if let Some(key) = &p.public_key
            && crate::wireguard::PublicKey::parse(key).is_none()
        {
            out.push(
                Diagnostic::error(at("publicKey"), "not a WireGuard public key")
                    .help("paste the output of `wg pubkey`: 44 characters of base64"),
            );
        }
        if let Some(ip) = p.mesh_ip {
            check_mesh_ip(c, ip, &at("meshIP"), &p.name, &mut mesh_ips, out);
        }
    }
}

fn check_mesh_ip(
    c: &Cluster,
    ip: IpAddress,
    path: &str,
    owner: &str,
    seen: &mut HashMap<IpAddr, String>,
    out: &mut Vec<Diagnostic>,
) {
    let subnet = c.spec.mesh.subnet.0;
    if !subnet.contains(&ip.0) || ip.0 == subnet.network() || ip.0 == subnet.broadcast() {
        out.push(
            Diagnostic::error(path, format!("mesh address {ip} is not a host address of the mesh subnet {subnet}"))
                .help("pick an address inside spec.mesh.subnet, or omit meshIP to have one allocated"),
        );
    }
    if let Some(first) = seen.insert(ip.0, owner.to_string())
        && first != owner
    {
        out.push(
            Diagnostic::error(path, format!("mesh address {ip} is already `{first}`'s"))
                .help("each node and peer needs its own mesh address"),
        );
    }
}

fn firewall(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let f = &c.spec.firewall;
    if f.ssh.port == 0 {
        out.push(Diagnostic::error("spec.firewall.ssh.port", "port 0 is not a port").help("SSH usually listens on 22"));
    }
    if f.ssh.allow_from.is_empty() && f.enabled {
        out.push(
            Diagnostic::error("spec.firewall.ssh.allowFrom", "an empty allowFrom locks everyone out of SSH")
                .help("list the networks you administer from, e.g. [203.0.113.0/24]"),
        );
    }
    let mut seen: BTreeMap<(u16, Protocol), usize> = BTreeMap::new();
    for (i, p) in f.publish.iter().enumerate() {
        let at = |field: &str| format!("spec.firewall.publish[{i}].{field}");
        if p.port == 0 {
            out.push(Diagnostic::error(at("port"), "port 0 is not a port").help("use 1..=65535"));
        }
        if let Some((_, _, what)) =
            INTERNAL_PORTS.iter().find(|(port, proto, _)| *port == p.port && *proto == p.protocol)
        {
            out.push(
                Diagnostic::error(at("port"), format!("{}/{} is {what}; it must stay on the mesh", p.port, p.protocol))
                    .help("publish only ports your workloads serve (e.g. 80, 443)"),
            );
        }
        if p.port == c.spec.mesh.port && p.protocol == Protocol::Udp {
            out.push(
                Diagnostic::error(at("port"), format!("{}/udp is the mesh port and is always open", p.port))
                    .help("remove this entry"),
            );
        }
        if let Some(first) = seen.insert((p.port, p.protocol), i) {
            out.push(
                Diagnostic::warning(at("port"), format!("{}/{} is published twice", p.port, p.protocol))
                    .help(format!("merge it with spec.firewall.publish[{first}]")),
            );
        }
        for (j, name) in p.nodes.iter().flatten().enumerate() {
            if !c.spec.nodes.iter().any(|n| &n.name == name) {
                out.push(
                    Diagnostic::error(
                        format!("spec.firewall.publish[{i}].nodes[{j}]"),
                        format!("no node is named `{name}`"),
                    )
                    .help(super::names::unknown_name_help(name, &node_names(c))),
                );
            }
        }
    }
}

fn pki(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let p = &c.spec.pki;
    if p.leaf_validity_days == 0 || p.leaf_validity_days > 825 {
        out.push(
            Diagnostic::error("spec.pki.leafValidityDays", format!("{} days is out of range", p.leaf_validity_days))
                .help("use 1..=825 (the default is 365)"),
        );
    }
    if p.ca_validity_days <= p.leaf_validity_days {
        out.push(
            Diagnostic::error("spec.pki.caValidityDays", "CAs must outlive the certificates they sign")
                .help("make caValidityDays larger than leafValidityDays (default 3650)"),
        );
    }
    if p.renew_before_days >= p.leaf_validity_days {
        out.push(
            Diagnostic::error("spec.pki.renewBeforeDays", "the renewal window covers the whole certificate lifetime")
                .help("make renewBeforeDays smaller than leafValidityDays (default 30)"),
        );
    }
}

fn rollout(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let r = &c.spec.rollout;
    let bad = match &r.workers_at_once {
        WorkersAtOnce::Count(0) => Some("0 workers at once would never upgrade one".to_string()),
        WorkersAtOnce::Share(s) if r.workers_at_once.of(100).is_none() => {
            Some(format!("`{s}` is not a count of workers or a percentage"))
        }
        _ => None,
    };
    if let Some(why) = bad {
        out.push(
            Diagnostic::error("spec.rollout.workersAtOnce", why)
                .help("a count of workers (1, the default) or a percentage in quotes, from \"1%\" to \"100%\""),
        );
    }
    if r.drain_timeout_seconds < 10 {
        out.push(
            Diagnostic::error("spec.rollout.drainTimeoutSeconds", "a drain needs time for pods to stop gracefully")
                .help("10 seconds or more (default 300)"),
        );
    }
}

fn artifacts(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let k3s = c.spec.distribution.kind == DistributionKind::K3s;
    for (component, a) in c.spec.artifacts.entries() {
        let key = component.key();
        let path = format!("spec.artifacts.{key}");
        if (component == Component::K3s) != k3s {
            out.push(
                Diagnostic::error(
                    &path,
                    format!("the {} distribution does not use `{key}`", c.spec.distribution.kind.name()),
                )
                .help(if k3s {
                    "a k3s cluster needs only `k3s`".to_string()
                } else {
                    format!(
                        "hardway binaries are: {}",
                        Component::hardway().map(Component::key).collect::<Vec<_>>().join(", ")
                    )
                }),
            );
        }
        artifact(&path, a, out);
    }
    artifact_architectures(c, out);
}

fn images(c: &Cluster, out: &mut Vec<Diagnostic>) {
    let images = &c.spec.images;
    if images.is_empty() {
        return;
    }
    let mut seen = HashMap::new();
    for (i, img) in images.iter().enumerate() {
        let path = format!("spec.images[{i}]");
        if img.name.is_empty() || img.name.contains(char::is_whitespace) {
            out.push(
                Diagnostic::error(format!("{path}.name"), "not an image reference")
                    .help("the reference the archive carries, e.g. registry.k8s.io/pause:3.10.1"),
            );
        } else if let Some(first) = seen.insert(img.name.clone(), i) {
            out.push(
                Diagnostic::error(format!("{path}.name"), format!("`{}` is already spec.images[{first}]", img.name))
                    .help("list each image once"),
            );
        }
        artifact(&path, &img.artifact(), out);
    }
    let (sandbox, setting) = match c.spec.distribution.kind {
        DistributionKind::Hardway => (Some(&c.spec.hardway.sandbox_image), "spec.hardway.sandboxImage"),
        // Unset, K3s uses its own pause image (in its air-gap archive, not kforge's).
        DistributionKind::K3s => (c.spec.k3s.pause_image.as_ref(), "spec.k3s.pauseImage"),
    };
    if let Some(sandbox) = sandbox.filter(|s| !images.iter().any(|i| &i.name == *s)) {
        out.push(
            Diagnostic::warning(
                "spec.images",
                format!("the pod sandbox image `{sandbox}` is not among the image archives: a host that cannot pull starts no pod"),
            )
            .help(format!("add its archive here, or set {setting} to one of these images")),
        );
    }
}

fn gitops(c: &Cluster, out: &mut Vec<Diagnostic>) {
    use crate::gitops::{KnownHost, Repository, Transport};
    let Some(g) = &c.spec.gitops else { return };
    match Repository::parse(&g.repository) {
        Err((why, fix)) => out.push(Diagnostic::error("spec.gitops.repository", why).help(fix)),
        Ok(repo) => {
            let mut covered = false;
            for (i, line) in g.known_hosts.iter().enumerate() {
                match KnownHost::parse(line) {
                    Err((why, fix)) => {
                        out.push(Diagnostic::error(format!("spec.gitops.knownHosts[{i}]"), why).help(fix))
                    }
                    Ok(k) => covered |= k.covers(&repo),
                }
            }
            let name = repo.known_hosts_name();
            match repo.transport {
                Transport::Ssh { .. } if g.known_hosts.is_empty() => out.push(
                    Diagnostic::error("spec.gitops", format!("no host key is pinned for `{name}`"))
                        .help(format!("add knownHosts: [\"{name} ssh-ed25519 AAAA…\"] — `kforge gitops host-key {}` prints the line; check its fingerprint with the forge before pasting", repo.host)),
                ),
                Transport::Ssh { .. } if !covered && g.known_hosts.iter().all(|l| KnownHost::parse(l).is_ok()) => out.push(
                    Diagnostic::error("spec.gitops.knownHosts", format!("no line is for `{name}`, the repository's host"))
                        .help(format!("a line must start with `{name}` (known_hosts writes a port other than 22 as [host]:port)")),
                ),
                Transport::Https if !g.known_hosts.is_empty() => out.push(
                    Diagnostic::warning("spec.gitops.knownHosts", "SSH host keys are not used for an https:// repository")
                        .help("remove knownHosts, or use the ssh:// URL with the deploy key"),
                ),
                _ => {}
            }
        }
    }
    if g.branch.is_empty()
        || g.branch.contains(char::is_whitespace)
        || g.branch.contains("..")
        || g.branch.starts_with('-')
    {
        out.push(
            Diagnostic::error("spec.gitops.branch", format!("`{}` is not a branch name", g.branch)).help("e.g. main"),
        );
    }
    if g.path.starts_with('/') || g.path.split('/').any(|p| p == "..") {
        out.push(
            Diagnostic::error("spec.gitops.path", format!("`{}` leaves the repository", g.path))
                .help("a directory inside the repository, e.g. ./clusters/prod"),
        );
    }
    if !is_go_duration(&g.interval) {
        let help = match g.interval.strip_suffix('d').and_then(|n| n.parse::<u32>().ok()) {
            Some(days) => format!("Go durations have no days: write {}h", days * 24),
            None => "a Go duration such as 30s, 1m, 1h30m".into(),
        };
        out.push(Diagnostic::error("spec.gitops.interval", format!("`{}` is not a duration", g.interval)).help(help));
    }
    if g.install.is_empty() && g.engine == GitOpsEngine::Argocd {
        out.push(
            Diagnostic::error("spec.gitops.install", "Argo CD's install manifest is missing (only Flux has a default)")
                .help("e.g. - {url: https://raw.githubusercontent.com/argoproj/argo-cd/v3.5.7/manifests/install.yaml, sha256: <its digest>}"),
        );
    }
    for (i, a) in g.install.iter().enumerate() {
        let path = format!("spec.gitops.install[{i}]");
        if a.stand_in.is_some() {
            out.push(
                Diagnostic::error(format!("{path}.standIn"), "install manifests cannot be stand-ins")
                    .help("remove standIn"),
            );
        }
        artifact(&path, a, out);
    }
    let controllers = g.controllers();
    if controllers.is_empty() {
        out.push(
            Diagnostic::error("spec.gitops.controllers", "no controller to wait for")
                .help("the engine's Deployments, e.g. [source-controller, kustomize-controller]"),
        );
    }
    for (i, name) in controllers.iter().enumerate() {
        if let Err(why) = dns_label(name.strip_prefix("statefulset/").unwrap_or(name)) {
            out.push(
                Diagnostic::error(format!("spec.gitops.controllers[{i}]"), format!("`{name}` {why}"))
                    .help("a Deployment name in the engine's namespace, or statefulset/NAME"),
            );
        }
    }
}

/// `30s`, `1m`, `1h30m`, `1.5h`: a positive Go duration (what Flux's `interval` takes).
fn is_go_duration(s: &str) -> bool {
    let mut rest = s;
    let mut positive = false;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, tail) = rest.split_at(digits);
        let Ok(value) = number.parse::<f64>() else { return false };
        positive |= value > 0.0;
        let unit =
            ["ns", "us", "µs", "ms", "s", "m", "h"].iter().filter(|u| tail.starts_with(*u)).max_by_key(|u| u.len());
        let Some(unit) = unit else { return false };
        rest = &tail[unit.len()..];
    }
    positive
}

fn artifact(path: &str, a: &Artifact, out: &mut Vec<Diagnostic>) {
    if a.amd64.is_none() && a.arm64.is_none() {
        let one = ArchSource { url: a.url.clone(), path: a.path.clone(), sha256: a.sha256.clone() };
        return source(path, &one, out);
    }
    if a.is_universal() || a.sha256.is_some() {
        out.push(
            Diagnostic::error(
                path,
                "give either one source for every machine (`url`/`path`) or one per architecture (`amd64:`, `arm64:`), not both",
            )
            .help("e.g. amd64: {url: https://…/k3s, sha256: …} and arm64: {url: https://…/k3s-arm64, sha256: …}"),
        );
    }
    for (arch, s) in [(Arch::Amd64, &a.amd64), (Arch::Arm64, &a.arm64)] {
        if let Some(s) = s {
            source(&format!("{path}.{arch}"), s, out);
        }
    }
}

fn source(path: &str, a: &ArchSource, out: &mut Vec<Diagnostic>) {
    match (&a.url, &a.path) {
        (Some(_), Some(_)) => out.push(
            Diagnostic::error(path, "give either `url` or `path`, not both")
                .help("`path` is a binary on this workstation"),
        ),
        (None, None) => out.push(
            Diagnostic::error(path, "an artifact needs a `url` (with `sha256`) or a local `path`")
                .help("e.g. url: https://…/k3s and sha256: <64 hex digits>"),
        ),
        (Some(url), None) => {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                out.push(
                    Diagnostic::error(format!("{path}.url"), format!("`{url}` is not an http(s) URL"))
                        .help("for a file on this machine use `path:` instead"),
                );
            }
            if a.sha256.is_none() {
                out.push(
                    Diagnostic::error(path, "a downloaded artifact needs its `sha256`")
                        .help("kforge verifies every download; add the release's sha256"),
                );
            }
        }
        (None, Some(_)) => {}
    }
    if let Some(sum) = &a.sha256
        && (sum.len() != 64 || !sum.chars().all(|ch| ch.is_ascii_hexdigit()))
    {
        out.push(
            Diagnostic::error(format!("{path}.sha256"), "not a sha256 digest")
                .help("64 hexadecimal digits, as printed by `sha256sum`"),
        );
    }
}

/// Every node whose `arch` is given gets each artifact its roles need from a source for
/// that architecture: refused at the artifact, naming the nodes.
fn artifact_architectures(c: &Cluster, out: &mut Vec<Diagnostic>) {
    for (setting, what, a, runs_on) in crate::pipeline::sourced(c) {
        for arch in Arch::ALL.into_iter().filter(|arch| !a.serves(*arch)) {
            let nodes: Vec<&str> =
                c.spec.nodes.iter().filter(|n| n.arch == Some(arch) && runs_on(n)).map(|n| n.name.as_str()).collect();
            if nodes.is_empty() {
                continue;
            }
            out.push(
                Diagnostic::error(
                    format!("spec.{setting}"),
                    format!(
                        "no {arch} source for {what}, but {} {} {arch}",
                        nodes.join(", "),
                        if nodes.len() == 1 { "is" } else { "are" }
                    ),
                )
                .help(format!("add `{arch}: {{url: …, sha256: …}}` (or `path: …`) under spec.{setting}")),
            );
        }
    }
}

// ---- small syntax checks ------------------------------------------------------------

/// RFC 1123 label: 1..=63 of [a-z0-9-], not starting or ending with '-'.
pub fn dns_label(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("is empty");
    }
    if s.len() > 63 {
        return Err("is longer than 63 characters");
    }
    if !s.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-') {
        return Err("is not a valid DNS label (only lowercase letters, digits and '-')");
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must not start or end with '-'");
    }
    Ok(())
}

/// `v1.32.3`: an upstream Kubernetes release.
fn is_kubernetes_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else { return false };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 3 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

fn is_k3s_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let Some((semver, suffix)) = rest.split_once("+k3s") else {
        return false;
    };
    let parts: Vec<&str> = semver.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
        && !suffix.is_empty()
        && suffix.chars().all(|c| c.is_ascii_digit())
}

fn label(key: &str, value: &str) -> Result<(), String> {
    let name = key.rsplit_once('/').map_or(key, |(_, n)| n);
    let ok = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if name.is_empty() || name.len() > 63 || !ok(name) {
        return Err("invalid key".into());
    }
    if value.len() > 63 || !ok(value) {
        return Err("invalid value".into());
    }
    Ok(())
}

fn is_taint(t: &str) -> bool {
    let Some((kv, effect)) = t.rsplit_once(':') else {
        return false;
    };
    let key = kv.split_once('=').map_or(kv, |(k, _)| k);
    !key.is_empty() && ["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
}

fn overlaps(a: IpNet, b: IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn node_names(c: &Cluster) -> Vec<&str> {
    c.spec.nodes.iter().map(|n| n.name.as_str()).collect()
}

/// `5%`, `2.5%` (under 100), or a quantity: digits with an optional binary or decimal
/// suffix (`2Gi`, `500Mi`, `1G`).
fn is_eviction_threshold(value: &str) -> bool {
    if let Some(pct) = value.strip_suffix('%') {
        return pct.parse::<f64>().is_ok_and(|p| (0.0..100.0).contains(&p));
    }
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let suffix = &value[digits.len()..];
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["", "Ki", "Mi", "Gi", "Ti", "k", "M", "G", "T"].contains(&suffix)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        for ok in ["30s", "1m", "1h30m", "1.5h", "500ms", "10m0s"] {
            assert!(is_go_duration(ok), "{ok}");
        }
        for bad in ["", "1", "m", "0s", "1d", "5 m", "-1m", "1mm"] {
            assert!(!is_go_duration(bad), "{bad}");
        }
    }

    #[test]
    fn dns_labels() {
        assert!(dns_label("cp-1").is_ok());
        assert!(dns_label("Cp1").is_err());
        assert!(dns_label("a_b").is_err());
        assert!(dns_label("-a").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn kubernetes_versions() {
        assert!(is_kubernetes_version("v1.33.5"));
        assert!(!is_kubernetes_version("1.33.5"));
        assert!(!is_kubernetes_version("v1.33"));
        assert!(!is_kubernetes_version("v1.33.5+k3s1"));
        assert!(!is_kubernetes_version("v1..5"));
    }

    #[test]
    fn k3s_versions() {
        assert!(is_k3s_version("v1.33.5+k3s1"));
        assert!(!is_k3s_version("1.33.5+k3s1"));
        assert!(!is_k3s_version("v1.33+k3s1"));
        assert!(!is_k3s_version("v1.33.5"));
    }
}
