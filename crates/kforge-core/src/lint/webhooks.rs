//! Admission webhooks the API server could not call. The API server calls a webhook
//! from the control plane's host network — over the mesh, from a controller's mesh
//! address — to the Service's port, forwarded to the pods' targetPort. kforge's
//! firewall trusts the mesh, so what still breaks it is in the manifests: a port the
//! Service does not have, a targetPort no container has, or a NetworkPolicy that only
//! admits pods (the seed's ingress-nginx webhook on 8443, blocked, made every Ingress
//! apply fail with "context deadline exceeded").

use std::net::IpAddr;

use ipnet::IpNet;

use super::objects::selects;
use super::yaml::{Node, PortRef};
use super::{Finding, Level, Object};
use crate::spec::Cluster;

/// `control_plane`: the controllers' mesh addresses (the API server's source
/// addresses); empty when no cluster file is known, and then a policy must admit any
/// address.
pub fn check(objects: &[Object], cluster: Option<&Cluster>, control_plane: &[IpAddr]) -> Vec<Finding> {
    let mut out = Vec::new();
    for cfg in objects.iter().filter(|o| o.kind.ends_with("WebhookConfiguration")) {
        for (i, hook) in cfg.root.get("webhooks").map(Node::items).unwrap_or_default().iter().enumerate() {
            let Some(svc_ref) = hook.at("clientConfig.service") else { continue };
            let hook_name = hook.str_at("name").unwrap_or("?");
            let ns = svc_ref.str_at("namespace").unwrap_or("default");
            let name = svc_ref.str_at("name").unwrap_or("");
            let port = svc_ref.get("port").and_then(Node::port).unwrap_or(PortRef::Number(443));
            let at = cfg.source();
            let here = Some(svc_ref.pos);
            let fails = match hook.str_at("failurePolicy") {
                Some("Ignore") => "the call is skipped (failurePolicy: Ignore) and the webhook never runs",
                _ => "every request it matches is refused (failurePolicy: Fail)",
            };
            let finding = |rule, level, message: String, fix: String| {
                Finding::new(rule, level, &at, here)
                    .subject(format!("{} webhook `{hook_name}`", cfg.subject()))
                    .message(message)
                    .fix(fix)
            };
            let Some(svc) = objects.iter().find(|o| o.kind == "Service" && o.name == name && o.namespace == ns) else {
                out.push(finding(
                    "webhook/service-missing",
                    Level::Note,
                    format!("webhooks[{i}] calls Service {ns}/{name}, which is not in these manifests: its reachability is not checked"),
                    "lint the manifests that define it too".into(),
                ));
                continue;
            };
            let ports = svc.root.at("spec.ports").map(Node::items).unwrap_or_default();
            let Some(sp) = ports.iter().find(|p| p.get("port").and_then(Node::port).as_ref() == Some(&port)) else {
                out.push(finding(
                    "webhook/unreachable",
                    Level::Error,
                    format!("the API server calls port {port} of Service {ns}/{name}, which has no such port: {fails}"),
                    format!("set clientConfig.service.port to one of the Service's ports, or add {port} to it"),
                ));
                continue;
            };
            let target = sp.get("targetPort").and_then(Node::port).unwrap_or(port.clone());
            let pods: Vec<&Object> = objects
                .iter()
                .filter(|o| o.namespace == ns && o.pod_spec().is_some())
                .filter(|o| {
                    svc.root.at("spec.selector").is_some() && selects(svc.root.at("spec.selector"), &o.pod_labels())
                })
                .collect();
            for p in pods.iter().filter(|p| !p.has_container_port(&target)) {
                if matches!(target, PortRef::Name(_)) || p.declares_ports() {
                    out.push(finding(
                        "webhook/unreachable",
                        Level::Error,
                        format!("Service {ns}/{name} forwards port {port} to targetPort {target}, which no container of {} has: {fails}", p.subject()),
                        "make the Service's targetPort match the container port the webhook server listens on".into(),
                    ));
                }
            }
            for p in &pods {
                let shown = match &target {
                    PortRef::Name(n) => match p.container_port_number(n) {
                        Some(num) => format!("port `{n}` ({num})"),
                        None => format!("port `{n}`"),
                    },
                    PortRef::Number(n) => format!("port {n}"),
                };
                for np in objects.iter().filter(|o| o.kind == "NetworkPolicy" && o.namespace == ns) {
                    if let Some(why) = blocks(np, p, &target, control_plane) {
                        out.push(finding(
                            "webhook/blocked-by-networkpolicy",
                            Level::Error,
                            format!("NetworkPolicy {ns}/{} {why}; the API server calls {shown} of {} from the control plane's host network: {fails}", np.name, p.subject()),
                            format!(
                                "allow {shown} from the control plane: an `ipBlock` with the mesh subnet{}",
                                cluster.map(|c| format!(" ({})", c.spec.mesh.subnet.0)).unwrap_or_default()
                            ),
                        ));
                    }
                }
            }
        }
    }
    out
}

/// Why `np` keeps the control plane from `target` on `pod`'s pods (None: it does not).
fn blocks(np: &Object, pod: &Object, target: &PortRef, control_plane: &[IpAddr]) -> Option<String> {
    if !selects(np.root.at("spec.podSelector"), &pod.pod_labels()) {
        return None;
    }
    let types: Vec<&str> =
        np.root.at("spec.policyTypes").map(Node::items).unwrap_or_default().iter().filter_map(Node::str).collect();
    let ingress = np.root.at("spec.ingress");
    // No policyTypes: a policy always restricts ingress (and egress only with egress rules).
    if !types.is_empty() && !types.contains(&"Ingress") {
        return None;
    }
    let rules = ingress.map(Node::items).unwrap_or_default();
    if rules.is_empty() {
        return Some("denies all ingress to these pods".into());
    }
    let admits = rules.iter().any(|r| port_allowed(r, target, pod) && source_allowed(r, control_plane));
    (!admits).then(|| "admits that port only from pods or other addresses".to_string())
}

fn port_allowed(rule: &Node, target: &PortRef, pod: &Object) -> bool {
    let ports = rule.get("ports").map(Node::items).unwrap_or_default();
    ports.is_empty()
        || ports.iter().any(|p| match (p.get("port").and_then(Node::port), target) {
            (None, _) => true,
            (Some(a), b) if &a == b => true,
            // A named policy port and a numbered target (or the reverse) meet on the container.
            (Some(PortRef::Name(n)), PortRef::Number(_)) => pod.has_container_port(&PortRef::Name(n)),
            (Some(PortRef::Number(n)), PortRef::Name(name)) => pod.container_port_number(name) == Some(n),
            _ => false,
        })
}

/// The rule admits host-network traffic from the controllers: no `from` at all, or an
/// ipBlock that holds them (any address when the controllers are unknown).
fn source_allowed(rule: &Node, control_plane: &[IpAddr]) -> bool {
    let Some(from) = rule.get("from") else { return true };
    from.items().iter().filter_map(|peer| peer.at("ipBlock")).any(|b| {
        let Some(cidr) = b.str_at("cidr").and_then(|c| c.parse::<IpNet>().ok()) else { return false };
        let except: Vec<IpNet> =
            b.get("except").map(Node::items).unwrap_or_default().iter().filter_map(|e| e.str()?.parse().ok()).collect();
        match control_plane.is_empty() {
            true => cidr.prefix_len() == 0,
            false => control_plane.iter().all(|ip| cidr.contains(ip) && !except.iter().any(|e| e.contains(ip))),
        }
    })
}
