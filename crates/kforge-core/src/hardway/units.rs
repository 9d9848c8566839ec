//! systemd units of the hardway components. Every flag and setting worth explaining
//! carries its reason here, next to its value (`systemd::Flag`, `UnitFile`): the same
//! list renders the unit and what `kforge explain` says about it.

use super::etcd::EtcdCluster;
use crate::component::Component;
use crate::model::{API_PORT, Member, Model};
use crate::spec::Node;
use crate::systemd::{Flag, UnitFile, flag};

/// The files etcd reads, as planned (`etcd.rs` builds this from its planned files).
pub struct EtcdFiles<'a> {
    pub ca: &'a str,
    pub cert: &'a str,
    pub key: &'a str,
    pub peer_ca: &'a str,
    pub peer_cert: &'a str,
    pub peer_key: &'a str,
    pub initial_cluster: &'a str,
}

/// The files kube-apiserver reads, as planned (`control_plane.rs` builds this).
pub struct ApiserverFiles<'a> {
    pub client_ca: &'a str,
    pub etcd_ca: &'a str,
    pub etcd_cert: &'a str,
    pub etcd_key: &'a str,
    pub kubelet_ca: &'a str,
    pub kubelet_client_cert: &'a str,
    pub kubelet_client_key: &'a str,
    pub proxy_client_cert: &'a str,
    pub proxy_client_key: &'a str,
    pub front_proxy_ca: &'a str,
    pub service_account_pub: &'a str,
    pub service_account_key: &'a str,
    pub tls_cert: &'a str,
    pub tls_key: &'a str,
    pub encryption_config: Option<&'a str>,
}

/// The files kube-controller-manager reads, as planned.
pub struct ControllerManagerFiles<'a> {
    pub kubeconfig: &'a str,
    pub signing_cert: &'a str,
    pub signing_key: &'a str,
    pub root_ca: &'a str,
    pub service_account_key: &'a str,
}

/// `[Unit]` shared by the components: after the mesh and the firewall.
fn component_unit(description: &str, docs: &str, mesh: &str, after_also: &str) -> UnitFile {
    UnitFile::new("Managed by kforge.")
        .section("Unit")
        .set("Description", description)
        .set("Documentation", docs)
        .set("Wants", "network-online.target")
        .set("After", format!("network-online.target wg-quick@{mesh}.service kforge-firewall.service{after_also}"))
}

pub fn etcd(model: &Model<'_>, me: &Member, cluster: &EtcdCluster, files: &EtcdFiles<'_>) -> UnitFile {
    let ip = me.mesh_ip;
    let flags = [
        flag("name", me.name.clone()),
        flag("data-dir", cluster.data_dir),
        flag("listen-client-urls", format!("https://{ip}:2379,https://127.0.0.1:2379")).because(format!(
            "https://{ip}:2379 for the API servers on the other controllers, 127.0.0.1 for local tools"
        )),
        flag("advertise-client-urls", format!("https://{ip}:2379")),
        flag("listen-peer-urls", format!("https://{ip}:2380"))
            .because(format!("https://{ip}:2380: peers talk on the mesh address only, never on a public one")),
        flag("initial-advertise-peer-urls", format!("https://{ip}:2380")),
        flag("initial-cluster-token", cluster.token.clone()),
        flag("client-cert-auth", "").because("a client without a certificate from the etcd CA is refused"),
        flag("trusted-ca-file", files.ca),
        flag("cert-file", files.cert),
        flag("key-file", files.key),
        flag("peer-client-cert-auth", "").because("a member without a certificate from the etcd peer CA cannot join"),
        flag("peer-trusted-ca-file", files.peer_ca),
        flag("peer-cert-file", files.peer_cert),
        flag("peer-key-file", files.peer_key),
    ];
    component_unit("etcd (kforge)", "https://etcd.io/docs/", &model.spec.spec.mesh.interface, "")
        .section("Service")
        .set_because(
            "Type",
            "notify",
            "systemd considers etcd started once it serves, which needs a quorum: kforge starts all members together",
        )
        .set_because(
            "EnvironmentFile",
            files.initial_cluster,
            "ETCD_INITIAL_CLUSTER (every controller by mesh address) and ETCD_INITIAL_CLUSTER_STATE=new are read only when the data directory is empty: kept out of the unit, a member joining or leaving restarts no running etcd",
        )
        .set_because(
            "EnvironmentFile",
            format!("-{}", super::ETCD_JOIN_ENV),
            "present only while this controller joins a running etcd: the members etcd answered `member add` with and ETCD_INITIAL_CLUSTER_STATE=existing, overriding the file above",
        )
        .exec_start("/usr/local/bin/etcd", &flags)
        .set("Restart", "on-failure")
        .set("RestartSec", "5")
        .set("LimitNOFILE", "65536")
        .wanted_by_multi_user()
}

pub fn kube_apiserver(model: &Model<'_>, me: &Member, files: &ApiserverFiles<'_>) -> UnitFile {
    let spec = &model.spec.spec;
    let etcd_servers = EtcdCluster::of(model).client_urls().join(",");
    let mut flags = vec![
        flag("advertise-address", me.mesh_ip.to_string()),
        flag("allow-privileged", "true"),
        flag("authorization-mode", "Node,RBAC")
            .because("Node,RBAC: kubelets are confined to their own objects, everyone else goes through RBAC"),
        flag("bind-address", "0.0.0.0").because(
            "0.0.0.0, yet the API answers on the mesh only: the firewall drops 6443 on public interfaces unless access.apiOnPublic",
        ),
        flag("secure-port", API_PORT.to_string()),
        flag("client-ca-file", files.client_ca),
        flag("enable-admission-plugins", "NodeRestriction"),
        flag("etcd-cafile", files.etcd_ca),
        flag("etcd-certfile", files.etcd_cert),
        flag("etcd-keyfile", files.etcd_key),
        flag("etcd-servers", etcd_servers.clone())
            .because(format!("{etcd_servers}: every member over the mesh, with mTLS")),
        flag("kubelet-certificate-authority", files.kubelet_ca),
        flag("kubelet-client-certificate", files.kubelet_client_cert),
        flag("kubelet-client-key", files.kubelet_client_key),
        flag("kubelet-preferred-address-types", "InternalIP")
            .because("InternalIP: kubelets register their mesh address, so logs/exec ride WireGuard"),
        flag("proxy-client-cert-file", files.proxy_client_cert),
        flag("proxy-client-key-file", files.proxy_client_key),
        flag("requestheader-client-ca-file", files.front_proxy_ca),
        flag("requestheader-allowed-names", "front-proxy-client"),
        flag("requestheader-username-headers", "X-Remote-User"),
        flag("requestheader-group-headers", "X-Remote-Group"),
        flag("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        flag("service-account-issuer", model.api_url())
            .because(format!("{}: the API address tokens name as their issuer", model.api_url())),
        flag("service-account-key-file", files.service_account_pub),
        flag("service-account-signing-key-file", files.service_account_key),
        flag("service-cluster-ip-range", spec.network.service_cidr.to_string()).because(format!(
            "{}: must match the serviceCIDR whose first address is in the serving certificate (upstream once omitted it and the `kubernetes` Service fell outside the certificate)",
            spec.network.service_cidr
        )),
        flag("service-node-port-range", "30000-32767"),
        flag("shutdown-watch-termination-grace-period", "20s").because(
            "20s: a stopping API server closes its watch streams (rate-limited, within 20 s) and exits; by default they held its shutdown until the 60 s request timeout, past TimeoutStopSec, so every restart in an upgrade took 30 s. Clients watch again through the balancer, on the other API servers",
        ),
        flag("tls-cert-file", files.tls_cert),
        flag("tls-private-key-file", files.tls_key),
        flag("v", "2"),
    ];
    if let Some(config) = files.encryption_config {
        flags.push(
            flag("encryption-provider-config", config).because("Secrets are encrypted (aescbc) before they reach etcd"),
        );
    }
    component_unit(
        "Kubernetes API server (kforge)",
        "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/",
        &spec.mesh.interface,
        " etcd.service",
    )
    .section("Service")
    .set("Type", "notify")
    .exec_start(&super::binary(model, Component::KubeApiserver), &flags)
    .set("Restart", "on-failure")
    .set("RestartSec", "5")
    .set_because(
        "TimeoutStopSec",
        "30",
        "a stopping API server drains requests for up to a minute, longer when etcd is gone: 30 s (kubeadm's grace period for it), then systemd ends it; clients retry against the other controllers",
    )
    .wanted_by_multi_user()
}

pub fn kube_controller_manager(model: &Model<'_>, files: &ControllerManagerFiles<'_>) -> UnitFile {
    let spec = &model.spec.spec;
    let flags = [
        flag("bind-address", "127.0.0.1"),
        flag("cluster-name", model.spec.metadata.name.clone()),
        flag("cluster-cidr", spec.network.pod_cidr.to_string()).because(format!(
            "{}: the pod network, for kube-proxy's and the node controller's view",
            spec.network.pod_cidr
        )),
        flag("allocate-node-cidrs", "false").because(
            "false: kforge assigns each worker's pod network itself (stable, in the secrets bundle) and routes it over the mesh",
        ),
        flag("service-cluster-ip-range", spec.network.service_cidr.to_string()),
        flag("cluster-signing-cert-file", files.signing_cert).because(
            "the client CA: CSRs approved in the cluster (e.g. kubelet client rotation) become identities the API server accepts",
        ),
        flag("cluster-signing-key-file", files.signing_key),
        flag("kubeconfig", files.kubeconfig),
        flag("authentication-kubeconfig", files.kubeconfig),
        flag("authorization-kubeconfig", files.kubeconfig),
        flag("leader-elect", "true").because("true: with several controllers only one acts at a time"),
        flag("root-ca-file", files.root_ca),
        flag("service-account-private-key-file", files.service_account_key),
        flag("use-service-account-credentials", "true")
            .because("each controller loop runs under its own service account, so RBAC can tell them apart"),
        flag("v", "2"),
    ];
    component_unit(
        "Kubernetes controller manager (kforge)",
        "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/",
        &spec.mesh.interface,
        " kube-apiserver.service",
    )
    .section("Service")
    .exec_start(&super::binary(model, Component::KubeControllerManager), &flags)
    .set("Restart", "on-failure")
    .set("RestartSec", "5")
    .wanted_by_multi_user()
}

pub fn kube_scheduler(binary: &str, config: &str) -> UnitFile {
    let flags = [
        flag("config", config).because(
            "the scheduler reads everything from its configuration file; seed 002 lost hours to a missing one",
        ),
        flag("v", "2"),
    ];
    UnitFile::new("Managed by kforge.")
        .section("Unit")
        .set("Description", "Kubernetes scheduler (kforge)")
        .set("Documentation", "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-scheduler/")
        .set("After", "kube-apiserver.service")
        .section("Service")
        .exec_start(binary, &flags)
        .set("Restart", "on-failure")
        .set("RestartSec", "5")
        .wanted_by_multi_user()
}

pub fn healthz() -> UnitFile {
    crate::balancer::nginx_unit(
        "plain-HTTP /healthz for an L4 load balancer's health check",
        "kforge /healthz proxy for the Kubernetes API (nginx)",
        "kube-apiserver.service",
        super::HEALTHZ_UNIT,
        super::HEALTHZ_CONF,
    )
}

pub fn api_balancer(mesh: &str) -> UnitFile {
    crate::balancer::nginx_unit(
        "this worker's kubelet and kube-proxy reach every controller's API server through it",
        "kforge API load balancer on 127.0.0.1 (nginx stream)",
        &format!("wg-quick@{mesh}.service"),
        super::API_BALANCER_UNIT,
        super::API_BALANCER_CONF,
    )
}

pub fn containerd() -> UnitFile {
    UnitFile::new("Managed by kforge (as containerd's own unit, binaries under /usr/local).")
        .section("Unit")
        .set("Description", "containerd container runtime (kforge)")
        .set("Documentation", "https://containerd.io")
        .set("After", "network.target local-fs.target")
        .section("Service")
        .set("ExecStartPre", "-/sbin/modprobe overlay")
        .set("ExecStartPre", "-/sbin/modprobe br_netfilter")
        .set("ExecStartPre", "-/sbin/sysctl -q -p /etc/sysctl.d/91-kforge-kubernetes.conf")
        .set("ExecStart", "/usr/local/bin/containerd")
        .set("Type", "notify")
        .set_because("Delegate", "yes", "containerd manages the cgroups of the containers it starts")
        .set_because("KillMode", "process", "restarting containerd leaves running containers alone")
        .set("Restart", "always")
        .set("RestartSec", "5")
        .set("LimitNPROC", "infinity")
        .set("LimitCORE", "infinity")
        .set("LimitNOFILE", "infinity")
        .set("TasksMax", "infinity")
        .set("OOMScoreAdjust", "-999")
        .wanted_by_multi_user()
}

pub fn kubelet(model: &Model<'_>, me: &Member, node: &Node, config: &str, kubeconfig: &str) -> UnitFile {
    let mut labels: Vec<String> = Vec::new();
    if let Some(loc) = &node.location {
        labels.push(format!("topology.kubernetes.io/zone={loc}"));
    }
    labels.extend(node.labels.iter().map(|(k, v)| format!("{k}={v}")));
    let mut flags: Vec<Flag> = vec![
        flag("config", config),
        flag("kubeconfig", kubeconfig),
        flag("hostname-override", node.name.clone()),
        flag("node-ip", me.mesh_ip.to_string()).because(format!(
            "{}: the mesh address, so the API server, metrics and logs all reach this node over WireGuard",
            me.mesh_ip
        )),
        flag("v", "2"),
    ];
    if !labels.is_empty() {
        flags.push(flag("node-labels", labels.join(",")));
    }
    if !node.taints.is_empty() {
        flags.push(flag("register-with-taints", node.taints.join(",")));
    }
    component_unit(
        "Kubernetes kubelet (kforge)",
        "https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/",
        &model.spec.spec.mesh.interface,
        " containerd.service",
    )
    .set_because("Requires", "containerd.service", "the kubelet runs pods through containerd's CRI socket")
    .section("Service")
    .exec_start(&super::binary(model, Component::Kubelet), &flags)
    .set("Restart", "on-failure")
    .set("RestartSec", "5")
    .wanted_by_multi_user()
}

pub fn kube_proxy(binary: &str, config: &str) -> UnitFile {
    UnitFile::new("Managed by kforge.")
        .section("Unit")
        .set("Description", "Kubernetes kube-proxy (kforge)")
        .set("Documentation", "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/")
        .set("After", "network-online.target")
        .set("Wants", "network-online.target")
        .section("Service")
        .exec_start(binary, &[flag("config", config)])
        .set("Restart", "on-failure")
        .set("RestartSec", "5")
        .wanted_by_multi_user()
}
