//! systemd units of the hardway components. Each flag is here for a reason the
//! matching `*_explained` function gives (`kforge explain`).

use super::{ETCD_DATA_DIR, ETCD_DIR, KUBE_DIR, KUBELET_DIR, controllers, etcd_client_urls};
use crate::model::{API_PORT, Member, Model};
use crate::spec::Node;

/// `[Unit]` ordering shared by every component: after the mesh and the firewall.
fn unit_head(description: &str, docs: &str, mesh: &str, extra: &str) -> String {
    format!(
        "# Managed by kforge.\n\
         [Unit]\n\
         Description={description}\n\
         Documentation={docs}\n\
         Wants=network-online.target\n\
         After=network-online.target wg-quick@{mesh}.service kforge-firewall.service{extra}\n"
    )
}

/// Flags as `  --name=value \` lines (systemd joins the continuation lines).
fn exec(binary: &str, flags: &[(&str, String)]) -> String {
    let mut s = format!("ExecStart={binary}");
    for (k, v) in flags {
        if v.is_empty() {
            s.push_str(&format!(" \\\n  --{k}"));
        } else {
            s.push_str(&format!(" \\\n  --{k}={v}"));
        }
    }
    s.push('\n');
    s
}

fn initial_cluster(model: &Model<'_>) -> String {
    controllers(model).iter().map(|m| format!("{}=https://{}:2380", m.name, m.mesh_ip)).collect::<Vec<_>>().join(",")
}

fn etcd_flags(model: &Model<'_>, me: &Member) -> Vec<(&'static str, String)> {
    let ip = me.mesh_ip;
    vec![
        ("name", me.name.clone()),
        ("data-dir", ETCD_DATA_DIR.into()),
        ("listen-client-urls", format!("https://{ip}:2379,https://127.0.0.1:2379")),
        ("advertise-client-urls", format!("https://{ip}:2379")),
        ("listen-peer-urls", format!("https://{ip}:2380")),
        ("initial-advertise-peer-urls", format!("https://{ip}:2380")),
        ("initial-cluster", initial_cluster(model)),
        ("initial-cluster-token", format!("kforge-{}", model.spec.metadata.name)),
        ("initial-cluster-state", "new".into()),
        ("client-cert-auth", String::new()),
        ("trusted-ca-file", format!("{ETCD_DIR}/ca.crt")),
        ("cert-file", format!("{ETCD_DIR}/server.crt")),
        ("key-file", format!("{ETCD_DIR}/server.key")),
        ("peer-client-cert-auth", String::new()),
        ("peer-trusted-ca-file", format!("{ETCD_DIR}/peer-ca.crt")),
        ("peer-cert-file", format!("{ETCD_DIR}/peer.crt")),
        ("peer-key-file", format!("{ETCD_DIR}/peer.key")),
    ]
}

pub fn etcd(model: &Model<'_>, me: &Member) -> String {
    let mesh = &model.spec.spec.mesh.interface;
    format!(
        "{}\n[Service]\nType=notify\n{}Restart=on-failure\nRestartSec=5\nLimitNOFILE=65536\n\n[Install]\nWantedBy=multi-user.target\n",
        unit_head("etcd (kforge)", "https://etcd.io/docs/", mesh, ""),
        exec("/usr/local/bin/etcd", &etcd_flags(model, me))
    )
}

pub fn etcd_explained(model: &Model<'_>, me: &Member) -> Vec<(String, String)> {
    vec![
        (
            "--listen-peer-urls".into(),
            format!("https://{}:2380: peers talk on the mesh address only, never on a public one", me.mesh_ip),
        ),
        (
            "--listen-client-urls".into(),
            format!(
                "https://{}:2379 for the API servers on the other controllers, 127.0.0.1 for local tools",
                me.mesh_ip
            ),
        ),
        (
            "--initial-cluster".into(),
            format!(
                "{}: every controller, by mesh address; used only when the data directory is empty",
                initial_cluster(model)
            ),
        ),
        ("--client-cert-auth".into(), "a client without a certificate from the etcd CA is refused".into()),
        ("--peer-client-cert-auth".into(), "a member without a certificate from the etcd peer CA cannot join".into()),
        (
            "Type=notify".into(),
            "systemd considers etcd started once it serves, which needs a quorum: kforge starts all members together"
                .into(),
        ),
    ]
}

fn apiserver_flags(model: &Model<'_>, me: &Member) -> Vec<(&'static str, String)> {
    let spec = &model.spec.spec;
    let k = |f: &str| format!("{KUBE_DIR}/{f}");
    let mut v = vec![
        ("advertise-address", me.mesh_ip.to_string()),
        ("allow-privileged", "true".into()),
        ("authorization-mode", "Node,RBAC".into()),
        ("bind-address", "0.0.0.0".into()),
        ("secure-port", API_PORT.to_string()),
        ("client-ca-file", k("client-ca.crt")),
        ("enable-admission-plugins", "NodeRestriction".into()),
        ("etcd-cafile", k("etcd-ca.crt")),
        ("etcd-certfile", k("apiserver-etcd-client.crt")),
        ("etcd-keyfile", k("apiserver-etcd-client.key")),
        ("etcd-servers", etcd_client_urls(model).join(",")),
        ("kubelet-certificate-authority", k("ca.crt")),
        ("kubelet-client-certificate", k("apiserver-kubelet-client.crt")),
        ("kubelet-client-key", k("apiserver-kubelet-client.key")),
        ("kubelet-preferred-address-types", "InternalIP".into()),
        ("proxy-client-cert-file", k("front-proxy-client.crt")),
        ("proxy-client-key-file", k("front-proxy-client.key")),
        ("requestheader-client-ca-file", k("front-proxy-ca.crt")),
        ("requestheader-allowed-names", "front-proxy-client".into()),
        ("requestheader-username-headers", "X-Remote-User".into()),
        ("requestheader-group-headers", "X-Remote-Group".into()),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-".into()),
        ("service-account-issuer", model.api_url()),
        ("service-account-key-file", k("service-account.pub")),
        ("service-account-signing-key-file", k("service-account.key")),
        ("service-cluster-ip-range", spec.network.service_cidr.to_string()),
        ("service-node-port-range", "30000-32767".into()),
        ("tls-cert-file", k("kube-apiserver.crt")),
        ("tls-private-key-file", k("kube-apiserver.key")),
        ("v", "2".into()),
    ];
    if spec.secrets_encryption {
        v.push(("encryption-provider-config", k("encryption-config.yaml")));
    }
    v
}

pub fn kube_apiserver(model: &Model<'_>, me: &Member) -> String {
    let mesh = &model.spec.spec.mesh.interface;
    format!(
        "{}\n[Service]\nType=notify\n{}Restart=on-failure\nRestartSec=5\nTimeoutStopSec=30\n\n[Install]\nWantedBy=multi-user.target\n",
        unit_head(
            "Kubernetes API server (kforge)",
            "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-apiserver/",
            mesh,
            " etcd.service"
        ),
        exec("/usr/local/bin/kube-apiserver", &apiserver_flags(model, me))
    )
}

pub fn kube_apiserver_explained(model: &Model<'_>) -> Vec<(String, String)> {
    let spec = &model.spec.spec;
    let mut v = vec![
        ("--service-cluster-ip-range".into(), format!("{}: must match the serviceCIDR whose first address is in the serving certificate (upstream once omitted it and the `kubernetes` Service fell outside the certificate)", spec.network.service_cidr)),
        ("--authorization-mode".into(), "Node,RBAC: kubelets are confined to their own objects, everyone else goes through RBAC".into()),
        ("--etcd-servers".into(), format!("{}: every member over the mesh, with mTLS", etcd_client_urls(model).join(","))),
        ("--kubelet-preferred-address-types".into(), "InternalIP: kubelets register their mesh address, so logs/exec ride WireGuard".into()),
        ("--bind-address".into(), "0.0.0.0, yet the API answers on the mesh only: the firewall drops 6443 on public interfaces unless access.apiOnPublic".into()),
        ("--service-account-issuer".into(), format!("{}: the API address tokens name as their issuer", model.api_url())),
        ("TimeoutStopSec=30".into(), "a stopping API server drains requests for up to a minute, longer when etcd is gone: 30 s (kubeadm's grace period for it), then systemd ends it; clients retry against the other controllers".into()),
    ];
    if spec.secrets_encryption {
        v.push(("--encryption-provider-config".into(), "Secrets are encrypted (aescbc) before they reach etcd".into()));
    }
    v
}

pub fn kube_controller_manager(model: &Model<'_>) -> String {
    let spec = &model.spec.spec;
    let k = |f: &str| format!("{KUBE_DIR}/{f}");
    let kubeconfig = k("kube-controller-manager.kubeconfig");
    let flags = vec![
        ("bind-address", "127.0.0.1".to_string()),
        ("cluster-name", model.spec.metadata.name.clone()),
        ("cluster-cidr", spec.network.pod_cidr.to_string()),
        ("allocate-node-cidrs", "false".into()),
        ("service-cluster-ip-range", spec.network.service_cidr.to_string()),
        ("cluster-signing-cert-file", k("client-ca.crt")),
        ("cluster-signing-key-file", k("client-ca.key")),
        ("kubeconfig", kubeconfig.clone()),
        ("authentication-kubeconfig", kubeconfig.clone()),
        ("authorization-kubeconfig", kubeconfig),
        ("leader-elect", "true".into()),
        ("root-ca-file", k("ca.crt")),
        ("service-account-private-key-file", k("service-account.key")),
        ("use-service-account-credentials", "true".into()),
        ("v", "2".into()),
    ];
    format!(
        "{}\n[Service]\n{}Restart=on-failure\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n",
        unit_head(
            "Kubernetes controller manager (kforge)",
            "https://kubernetes.io/docs/reference/command-line-tools-reference/kube-controller-manager/",
            &spec.mesh.interface,
            " kube-apiserver.service"
        ),
        exec("/usr/local/bin/kube-controller-manager", &flags)
    )
}

pub fn kube_controller_manager_explained(model: &Model<'_>) -> Vec<(String, String)> {
    vec![
        ("--cluster-cidr".into(), format!("{}: the pod network, for kube-proxy's and the node controller's view", model.spec.spec.network.pod_cidr)),
        ("--allocate-node-cidrs".into(), "false: kforge assigns each worker's pod network itself (stable, in the secrets bundle) and routes it over the mesh".into()),
        ("--cluster-signing-*".into(), "the client CA: CSRs approved in the cluster (e.g. kubelet client rotation) become identities the API server accepts".into()),
        ("--leader-elect".into(), "true: with several controllers only one acts at a time".into()),
        ("--use-service-account-credentials".into(), "each controller loop runs under its own service account, so RBAC can tell them apart".into()),
    ]
}

pub fn kube_scheduler(config: &str) -> String {
    format!(
        "# Managed by kforge.\n[Unit]\nDescription=Kubernetes scheduler (kforge)\nDocumentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-scheduler/\nAfter=kube-apiserver.service\n\n[Service]\n{}Restart=on-failure\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n",
        exec("/usr/local/bin/kube-scheduler", &[("config", config.to_string()), ("v", "2".into())])
    )
}

pub fn healthz() -> String {
    nginx_unit(
        "plain-HTTP /healthz for an L4 load balancer's health check",
        "kforge /healthz proxy for the Kubernetes API (nginx)",
        "kube-apiserver.service",
        super::HEALTHZ_UNIT,
        super::HEALTHZ_CONF,
    )
}

pub fn api_balancer(mesh: &str) -> String {
    nginx_unit(
        "this worker's kubelet and kube-proxy reach every controller's API server through it",
        "kforge API load balancer on 127.0.0.1 (nginx stream)",
        &format!("wg-quick@{mesh}.service"),
        super::API_BALANCER_UNIT,
        super::API_BALANCER_CONF,
    )
}

/// An nginx instance of kforge's own, with its own configuration and pid file (the
/// distribution's nginx.service stays untouched).
fn nginx_unit(why: &str, description: &str, after: &str, unit: &str, conf: &str) -> String {
    let pid = unit.trim_end_matches(".service");
    format!(
        "# Managed by kforge: {why}.\n\
         [Unit]\n\
         Description={description}\n\
         After=network-online.target {after}\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=forking\n\
         PIDFile=/run/{pid}.pid\n\
         ExecStartPre=/usr/sbin/nginx -t -q -c {conf}\n\
         ExecStart=/usr/sbin/nginx -c {conf}\n\
         ExecReload=/usr/sbin/nginx -c {conf} -s reload\n\
         ExecStop=/usr/sbin/nginx -c {conf} -s quit\n\
         Restart=on-failure\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

pub fn containerd() -> String {
    "# Managed by kforge (as containerd's own unit, binaries under /usr/local).\n\
     [Unit]\n\
     Description=containerd container runtime (kforge)\n\
     Documentation=https://containerd.io\n\
     After=network.target local-fs.target\n\
     \n\
     [Service]\n\
     ExecStartPre=-/sbin/modprobe overlay\n\
     ExecStartPre=-/sbin/modprobe br_netfilter\n\
     ExecStartPre=-/sbin/sysctl -q -p /etc/sysctl.d/91-kforge-kubernetes.conf\n\
     ExecStart=/usr/local/bin/containerd\n\
     Type=notify\n\
     Delegate=yes\n\
     KillMode=process\n\
     Restart=always\n\
     RestartSec=5\n\
     LimitNPROC=infinity\n\
     LimitCORE=infinity\n\
     LimitNOFILE=infinity\n\
     TasksMax=infinity\n\
     OOMScoreAdjust=-999\n\
     \n\
     [Install]\n\
     WantedBy=multi-user.target\n"
        .to_string()
}

pub fn kubelet(model: &Model<'_>, me: &Member, node: &Node) -> String {
    let mut labels: Vec<String> = Vec::new();
    if let Some(loc) = &node.location {
        labels.push(format!("topology.kubernetes.io/zone={loc}"));
    }
    labels.extend(node.labels.iter().map(|(k, v)| format!("{k}={v}")));
    let mut flags = vec![
        ("config", format!("{KUBELET_DIR}/kubelet-config.yaml")),
        ("kubeconfig", format!("{KUBELET_DIR}/kubeconfig")),
        ("hostname-override", node.name.clone()),
        ("node-ip", me.mesh_ip.to_string()),
        ("v", "2".into()),
    ];
    if !labels.is_empty() {
        flags.push(("node-labels", labels.join(",")));
    }
    if !node.taints.is_empty() {
        flags.push(("register-with-taints", node.taints.join(",")));
    }
    format!(
        "{}Requires=containerd.service\n\n[Service]\n{}Restart=on-failure\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n",
        unit_head(
            "Kubernetes kubelet (kforge)",
            "https://kubernetes.io/docs/reference/command-line-tools-reference/kubelet/",
            &model.spec.spec.mesh.interface,
            " containerd.service"
        ),
        exec("/usr/local/bin/kubelet", &flags)
    )
}

pub fn kube_proxy(config: &str) -> String {
    format!(
        "# Managed by kforge.\n[Unit]\nDescription=Kubernetes kube-proxy (kforge)\nDocumentation=https://kubernetes.io/docs/reference/command-line-tools-reference/kube-proxy/\nAfter=network-online.target\nWants=network-online.target\n\n[Service]\n{}Restart=on-failure\nRestartSec=5\n\n[Install]\nWantedBy=multi-user.target\n",
        exec("/usr/local/bin/kube-proxy", &[("config", config.to_string())])
    )
}
