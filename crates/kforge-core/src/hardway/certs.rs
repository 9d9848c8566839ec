//! The hard way's certificate set (docs/hardway.md, "Certificates"), as requests the bundle issues.
//!
//! Which CA signs what:
//! * `server-ca`: serving certificates clients verify — the API server, kubelets.
//! * `client-ca`: every client identity — admin, kubelets, kube-proxy,
//!   controller-manager, scheduler, the API server towards kubelets.
//! * `request-header-ca`: the aggregation layer's front-proxy client.
//! * `etcd/server-ca`: etcd serving certificates and etcd's clients.
//! * `etcd/peer-ca`: etcd members towards each other.
//!
//! Separate CAs mean a kubelet's certificate opens no door in etcd, and an etcd
//! client certificate is no Kubernetes identity.

use std::net::{IpAddr, Ipv4Addr};

use crate::model::Model;
use crate::pki::{Ca, CertRequest, Usage};
use crate::spec::Role;

pub const ADMIN_ID: &str = crate::k3s::ADMIN_CERT_ID;
pub const CONTROLLER_MANAGER_ID: &str = "kube-controller-manager";
pub const SCHEDULER_ID: &str = "kube-scheduler";
pub const KUBE_PROXY_ID: &str = "kube-proxy";
pub const APISERVER_KUBELET_CLIENT_ID: &str = "apiserver-kubelet-client";
pub const APISERVER_ETCD_CLIENT_ID: &str = "apiserver-etcd-client";
pub const FRONT_PROXY_CLIENT_ID: &str = "front-proxy-client";
/// kforge's own etcd client (health checks, snapshot, restore; the operator's etcdctl).
pub const ETCD_CLIENT_ID: &str = "etcd-client";

pub fn apiserver_id(node: &str) -> String {
    format!("apiserver/{node}")
}
pub fn kubelet_serving_id(node: &str) -> String {
    format!("kubelet/{node}")
}
pub fn kubelet_client_id(node: &str) -> String {
    format!("kubelet-client/{node}")
}
pub fn etcd_server_id(node: &str) -> String {
    format!("etcd-server/{node}")
}
pub fn etcd_peer_id(node: &str) -> String {
    format!("etcd-peer/{node}")
}

fn client(id: &str, issuer: Ca, cn: &str, o: &[&str]) -> CertRequest {
    CertRequest {
        id: id.into(),
        issuer,
        common_name: cn.into(),
        organizations: o.iter().map(|s| s.to_string()).collect(),
        dns_names: vec![],
        ip_addresses: vec![],
        usage: Usage::Client,
    }
}

/// Every leaf a hardway cluster needs.
pub fn cert_requests(model: &Model<'_>) -> Vec<CertRequest> {
    let mut out = vec![
        CertRequest::admin(ADMIN_ID),
        client(
            CONTROLLER_MANAGER_ID,
            Ca::Client,
            "system:kube-controller-manager",
            &["system:kube-controller-manager"],
        ),
        // Upstream's guide once had O=system:system:kube-scheduler; RBAC knows this one.
        client(SCHEDULER_ID, Ca::Client, "system:kube-scheduler", &["system:kube-scheduler"]),
        client(KUBE_PROXY_ID, Ca::Client, "system:kube-proxy", &["system:node-proxier"]),
        // The user the system:kube-apiserver-to-kubelet ClusterRole is bound to.
        client(APISERVER_KUBELET_CLIENT_ID, Ca::Client, "kubernetes", &[]),
        client(FRONT_PROXY_CLIENT_ID, Ca::RequestHeader, "front-proxy-client", &[]),
        client(APISERVER_ETCD_CLIENT_ID, Ca::EtcdServer, "kube-apiserver-etcd-client", &[]),
        client(ETCD_CLIENT_ID, Ca::EtcdServer, "kforge-etcd-client", &[]),
    ];
    let sans_ips = apiserver_ip_addresses(model);
    let sans_dns = apiserver_dns_names(model);
    for (member, node) in model.nodes() {
        if node.role.has(Role::Controller) {
            out.push(CertRequest {
                id: apiserver_id(&node.name),
                issuer: Ca::Server,
                common_name: "kubernetes".into(),
                organizations: vec![],
                dns_names: sans_dns.clone(),
                ip_addresses: sans_ips.clone(),
                usage: Usage::Server,
            });
            let local = vec![IpAddr::V4(member.mesh_ip), IpAddr::V4(Ipv4Addr::LOCALHOST)];
            out.push(CertRequest {
                id: etcd_server_id(&node.name),
                issuer: Ca::EtcdServer,
                common_name: node.name.clone(),
                organizations: vec![],
                dns_names: vec![node.name.clone(), "localhost".into()],
                ip_addresses: local,
                usage: Usage::ServerAndClient,
            });
            out.push(CertRequest {
                id: etcd_peer_id(&node.name),
                issuer: Ca::EtcdPeer,
                common_name: node.name.clone(),
                organizations: vec![],
                dns_names: vec![node.name.clone()],
                ip_addresses: vec![IpAddr::V4(member.mesh_ip)],
                usage: Usage::ServerAndClient,
            });
        }
        if node.role.has(Role::Worker) {
            let user = format!("system:node:{}", node.name);
            out.push(CertRequest {
                id: kubelet_serving_id(&node.name),
                issuer: Ca::Server,
                common_name: user.clone(),
                organizations: vec!["system:nodes".into()],
                dns_names: vec![node.name.clone()],
                ip_addresses: super::node_addresses(member),
                usage: Usage::Server,
            });
            out.push(CertRequest {
                id: kubelet_client_id(&node.name),
                issuer: Ca::Client,
                common_name: user,
                organizations: vec!["system:nodes".into()],
                dns_names: vec![],
                ip_addresses: vec![],
                usage: Usage::Client,
            });
        }
    }
    out
}

/// The API server's DNS SANs: every name of the `kubernetes` Service, including the
/// fully qualified one upstream's guide forgets.
pub fn apiserver_dns_names(model: &Model<'_>) -> Vec<String> {
    let domain = &model.spec.spec.network.cluster_domain;
    let mut v: Vec<String> = vec![
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster".into(),
        format!("kubernetes.default.svc.{domain}"),
        "localhost".into(),
    ];
    v.extend(model.servers().map(|(_, n)| n.name.clone()));
    v.dedup();
    v
}

/// The API server's IP SANs: the `kubernetes` Service IP (first of the service CIDR),
/// loopback, and every controller's mesh and public address (the API address is one
/// of the mesh addresses). Shared by all controllers, so a load balancer may send a
/// client to any of them.
pub fn apiserver_ip_addresses(model: &Model<'_>) -> Vec<IpAddr> {
    let mut v = vec![model.kubernetes_service_ip, IpAddr::V4(Ipv4Addr::LOCALHOST)];
    for (m, _) in model.servers() {
        v.push(IpAddr::V4(m.mesh_ip));
    }
    for (m, _) in model.servers() {
        if let Some(ep) = m.endpoint {
            v.push(ep.ip());
        }
    }
    let mut seen = std::collections::HashSet::new();
    v.retain(|ip| seen.insert(*ip));
    v
}

pub fn apiserver_sans_explained(model: &Model<'_>) -> Vec<(String, String)> {
    let domain = &model.spec.spec.network.cluster_domain;
    vec![
        ("CN".into(), "kubernetes".into()),
        (
            format!("IP {}", model.kubernetes_service_ip),
            format!(
                "the first address of serviceCIDR {}: pods reach the API through the `kubernetes` Service at this IP",
                model.spec.spec.network.service_cidr
            ),
        ),
        (
            "controller addresses".into(),
            "every controller's mesh and public address, so any of them (or a load balancer in front) presents a valid certificate".into(),
        ),
        (
            format!("kubernetes.default.svc.{domain}"),
            "the Service's fully qualified name; upstream's guide omits it and in-cluster clients that use it fail TLS".into(),
        ),
        ("127.0.0.1".into(), "controller-manager, scheduler and the healthz proxy talk to the local API server".into()),
    ]
}
