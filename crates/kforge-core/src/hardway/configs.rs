//! Component configuration files: serialized from typed values (never templated
//! strings), except nginx's and containerd's own formats.

use ipnet::Ipv4Net;
use serde_json::json;

use super::{KUBE_DIR, KUBELET_DIR};
use crate::model::{API_PORT, Member, Model};

fn yaml(header: &str, value: &serde_json::Value) -> String {
    format!("# {header} Managed by kforge.\n{}", serde_saphyr::to_string(value).expect("config serializes"))
}

pub fn kube_scheduler_config(kubeconfig: &str) -> String {
    yaml(
        "kube-scheduler configuration.",
        &json!({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig},
            "leaderElection": {"leaderElect": true},
        }),
    )
}

pub fn kubelet_config(model: &Model<'_>, pod_cidr: Ipv4Net) -> String {
    let net = &model.spec.spec.network;
    yaml(
        "kubelet configuration.",
        &json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "0.0.0.0",
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": format!("{KUBELET_DIR}/ca.crt")},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "systemd",
            "containerRuntimeEndpoint": "unix:///var/run/containerd/containerd.sock",
            "clusterDomain": net.cluster_domain,
            "clusterDNS": [model.cluster_dns_ip.to_string()],
            "podCIDR": pod_cidr.to_string(),
            "failSwapOn": true,
            "resolvConf": "/etc/resolv.conf",
            "runtimeRequestTimeout": "15m",
            "tlsCertFile": format!("{KUBELET_DIR}/kubelet.crt"),
            "tlsPrivateKeyFile": format!("{KUBELET_DIR}/kubelet.key"),
            "registerNode": true,
        }),
    )
}

pub fn kubelet_config_explained(model: &Model<'_>, pod_cidr: Ipv4Net) -> Vec<(String, String)> {
    vec![
        ("authentication.anonymous.enabled".into(), "false: nobody talks to a kubelet without a certificate or token".into()),
        ("authentication.webhook / authorization.mode: Webhook".into(), "the kubelet asks the API server (TokenReview, SubjectAccessReview) who may do what; the addons' ClusterRole grants the API server itself access".into()),
        ("authentication.x509.clientCAFile".into(), "the client CA: the API server's kubelet client certificate is signed by it".into()),
        ("clusterDNS".into(), format!("{}: the CoreDNS Service's clusterIP (10th address of serviceCIDR {} unless network.clusterDNS is set)", model.cluster_dns_ip, model.spec.spec.network.service_cidr)),
        ("podCIDR".into(), format!("{pod_cidr}: this worker's slice of the pod network (same as its CNI bridge range)")),
        ("cgroupDriver".into(), "systemd, like containerd's SystemdCgroup".into()),
        ("failSwapOn".into(), "true: kforge's preflight refuses a worker with swap on before anything is written".into()),
    ]
}

pub fn kube_proxy_config(model: &Model<'_>, kubeconfig: &str) -> String {
    yaml(
        "kube-proxy configuration.",
        &json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig},
            "mode": "iptables",
            "clusterCIDR": model.spec.spec.network.pod_cidr.to_string(),
        }),
    )
}

pub fn cni_bridge(pod_cidr: Ipv4Net) -> String {
    let v = json!({
        "cniVersion": "1.0.0",
        "name": "bridge",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": pod_cidr.to_string()}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    });
    serde_json::to_string_pretty(&v).expect("json") + "\n"
}

pub fn cni_loopback() -> String {
    serde_json::to_string_pretty(&json!({"cniVersion": "1.1.0", "name": "lo", "type": "loopback"})).expect("json")
        + "\n"
}

pub fn containerd_config() -> String {
    "# containerd configuration. Managed by kforge.\n\
     version = 2\n\
     \n\
     [plugins.\"io.containerd.grpc.v1.cri\"]\n\
     \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd]\n\
     \x20   snapshotter = \"overlayfs\"\n\
     \x20   default_runtime_name = \"runc\"\n\
     \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n\
     \x20   runtime_type = \"io.containerd.runc.v2\"\n\
     \x20 [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n\
     \x20   SystemdCgroup = true\n\
     \x20   BinaryName = \"/usr/local/sbin/runc\"\n\
     \x20 [plugins.\"io.containerd.grpc.v1.cri\".cni]\n\
     \x20   bin_dir = \"/opt/cni/bin\"\n\
     \x20   conf_dir = \"/etc/cni/net.d\"\n"
        .to_string()
}

/// nginx answering plain-HTTP `/healthz` by asking the local API server over TLS.
pub fn healthz_nginx(model: &Model<'_>, me: &Member) -> String {
    let port = model.spec.spec.hardway.healthz_port;
    let domain = &model.spec.spec.network.cluster_domain;
    format!(
        "# kforge /healthz proxy on {name}. Managed by kforge.\n\
         # An L4 load balancer checks http://<controller>:{port}/healthz; nginx asks the\n\
         # API server over TLS (verifying it against the cluster CA) and passes the answer on.\n\
         pid /run/kforge-healthz.pid;\n\
         error_log stderr;\n\
         worker_processes 1;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n\
         \x20   access_log off;\n\
         \x20   server {{\n\
         \x20       listen {ip}:{port};\n\
         \x20       listen 127.0.0.1:{port};\n\
         \x20       location = /healthz {{\n\
         \x20           proxy_pass https://127.0.0.1:{API_PORT}/healthz;\n\
         \x20           proxy_ssl_trusted_certificate {KUBE_DIR}/ca.crt;\n\
         \x20           proxy_ssl_verify on;\n\
         \x20           proxy_ssl_name kubernetes.default.svc.{domain};\n\
         \x20       }}\n\
         \x20       location / {{ return 404; }}\n\
         \x20   }}\n\
         }}\n",
        name = me.name,
        ip = me.mesh_ip,
    )
}
