//! Ports the manifests expect the public side to reach, against the ports kforge's
//! firewall publishes (`spec.firewall.publish`) — and the reverse. The firewall is
//! default-deny on the public side and trusts the mesh, so a NodePort or hostPort that
//! is not published answers over the mesh only: right for internal services, a
//! mystery outage for one meant to be public. A published port with nothing behind it
//! is an open door to nowhere.

use super::yaml::Node;
use super::{Finding, Level, Object, Source};
use crate::spec::{Cluster, DistributionKind, SourceMap};

/// One port a manifest wants on the nodes' public side.
struct Wanted<'a> {
    port: u32,
    protocol: String,
    object: &'a Object,
    node: &'a Node,
    what: &'static str,
}

pub fn check(objects: &[Object], c: &Cluster, cluster_file: Source<'_>, manifests_given: bool) -> Vec<Finding> {
    let mut out = Vec::new();
    let fw = &c.spec.firewall;
    if !fw.enabled {
        return out;
    }
    let servicelb =
        c.spec.distribution.kind == DistributionKind::K3s && !c.spec.k3s.disable.iter().any(|d| d == "servicelb");
    let mut wanted: Vec<Wanted<'_>> = Vec::new();
    for o in objects {
        for container in o.containers() {
            for p in container.get("ports").map(Node::items).unwrap_or_default() {
                if let Some(host_port) = p.get("hostPort").and_then(number) {
                    wanted.push(Wanted {
                        port: host_port,
                        protocol: protocol(p),
                        object: o,
                        node: p,
                        what: "hostPort",
                    });
                }
            }
        }
        if o.kind != "Service" {
            continue;
        }
        let ty = o.root.str_at("spec.type").unwrap_or("ClusterIP");
        for p in o.root.at("spec.ports").map(Node::items).unwrap_or_default() {
            match ty {
                "NodePort" | "LoadBalancer" => match p.get("nodePort").and_then(number) {
                    Some(n) => wanted.push(Wanted { port: n, protocol: protocol(p), object: o, node: p, what: "nodePort" }),
                    None if ty == "NodePort" => out.push(
                        Finding::new("ports/random-nodeport", Level::Note, &o.source(), Some(p.pos))
                            .subject(o.subject())
                            .message("gets a random NodePort (30000-32767), which kforge's firewall serves over the mesh only")
                            .fix("pin `nodePort` and publish it in spec.firewall.publish if it is meant to be public"),
                    ),
                    None => {}
                },
                _ => {}
            }
            if ty == "LoadBalancer"
                && servicelb
                && let Some(port) = p.get("port").and_then(number)
            {
                wanted.push(Wanted {
                    port,
                    protocol: protocol(p),
                    object: o,
                    node: p,
                    what: "LoadBalancer port (K3s servicelb binds it on the nodes)",
                });
            }
        }
        if ty == "LoadBalancer" && !servicelb {
            out.push(
                Finding::new("ports/no-load-balancer", Level::Warning, &o.source(), o.pos("spec.type"))
                    .subject(o.subject())
                    .message("type LoadBalancer, but this cluster has no load-balancer controller: EXTERNAL-IP stays <pending>")
                    .fix("use a hostPort or a pinned NodePort published in spec.firewall.publish (or install a load-balancer controller)"),
            );
        }
    }
    let published = |port: u32, proto: &str| {
        fw.publish.iter().any(|p| u32::from(p.port) == port && p.protocol.to_string() == proto)
    };
    for w in &wanted {
        if !published(w.port, &w.protocol) {
            out.push(
                Finding::new("ports/not-published", Level::Warning, &w.object.source(), Some(w.node.pos))
                    .subject(w.object.subject())
                    .message(format!(
                        "{} {}/{} is not in spec.firewall.publish: kforge's firewall drops it on the public side (the mesh reaches it)",
                        w.what, w.port, w.protocol
                    ))
                    .fix(format!("add `- {{port: {}, protocol: {}}}` to spec.firewall.publish if it is meant to be public", w.port, w.protocol)),
            );
        }
    }
    if manifests_given {
        let map = SourceMap::build(cluster_file.text);
        for (i, p) in fw.publish.iter().enumerate() {
            let proto = p.protocol.to_string();
            if wanted.iter().any(|w| w.port == u32::from(p.port) && w.protocol == proto) {
                continue;
            }
            out.push(
                Finding::new("ports/published-unused", Level::Warning, &cluster_file, map.locate(&format!("spec.firewall.publish[{i}].port")))
                    .subject(format!("spec.firewall.publish[{i}]"))
                    .message(format!("{}/{proto} is published to the internet, but nothing in the manifests listens on it (no hostPort, nodePort or LoadBalancer port)", p.port))
                    .fix("remove the entry, or point the workload meant to serve it at this port"),
            );
        }
    }
    out
}

fn number(n: &Node) -> Option<u32> {
    n.str()?.parse().ok()
}

fn protocol(p: &Node) -> String {
    p.str_at("protocol").unwrap_or("TCP").to_ascii_lowercase()
}
