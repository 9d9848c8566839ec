//! Component configuration files: serialized from typed values (never templated
//! strings), except nginx's and containerd's own formats.

use crate::component::Component;
use ipnet::Ipv4Net;
use serde_json::json;

use super::KUBE_DIR;
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

/// The files a KubeletConfiguration names, as planned.
pub struct KubeletFiles<'a> {
    pub client_ca: &'a str,
    pub cert: &'a str,
    pub key: &'a str,
}

pub fn kubelet_config(model: &Model<'_>, pod_cidr: Ipv4Net, files: &KubeletFiles<'_>) -> String {
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
                "x509": {"clientCAFile": files.client_ca},
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
            "tlsCertFile": files.cert,
            "tlsPrivateKeyFile": files.key,
            "registerNode": true,
            // Kubernetes 1.35+ refuses cgroup v1 unless told otherwise (hardway.allowCgroupV1).
            "failCgroupV1": !model.spec.spec.hardway.allow_cgroup_v1,
        })
        .as_object()
        .cloned()
        .map(|mut config| {
            let eviction = &model.spec.spec.hardway.eviction_hard;
            if !eviction.is_empty() {
                config.insert("evictionHard".into(), json!(eviction));
                // Without it, every signal left out would be 0 (never evict).
                config.insert("mergeDefaultEvictionSettings".into(), json!(true));
            }
            serde_json::Value::Object(config)
        })
        .expect("a JSON object"),
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
        ("evictionHard".into(), if model.spec.spec.hardway.eviction_hard.is_empty() {
            "not set: the kubelet's defaults (nodefs.available 10%, imagefs.available 15%, memory.available 100Mi); below one the node is tainted NoSchedule".into()
        } else {
            "hardway.evictionHard, merged over the kubelet's defaults (mergeDefaultEvictionSettings): below a threshold the node is tainted NoSchedule".into()
        }),
        ("failCgroupV1".into(), if model.spec.spec.hardway.allow_cgroup_v1 {
            "false: hardway.allowCgroupV1 is set, so the kubelet runs on a cgroup v1 host (in maintenance upstream; move to cgroup v2)".into()
        } else {
            "true: Kubernetes 1.35+ supports cgroup v2 only by default; kforge's preflight refuses a cgroup v1 host first".into()
        }),
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
            // Leave the kernel-wide conntrack table size to the host (sysctl
            // net.netfilter.nf_conntrack_max) instead of resizing it at start; where
            // nf_conntrack is built in there is no module parameter to resize anyway.
            "conntrack": {"maxPerCore": 0},
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
        // A pod that reaches a Service whose chosen endpoint is itself: with
        // br_netfilter the DNAT'd packet is bridged back out of the port it came in on,
        // which a bridge port drops unless hairpin mode is on. Without it the SYN is
        // lost and only a retransmission that happens to pick another endpoint answers.
        "hairpinMode": true,
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

/// containerd 2.x configuration (format `version = 3`: the CRI plugin is split into
/// `io.containerd.cri.v1.images` and `io.containerd.cri.v1.runtime`).
pub fn containerd_config(sandbox_image: &str) -> String {
    let config = json!({
        "version": 3,
        "plugins": {
            "io.containerd.cri.v1.images": {
                "snapshotter": "overlayfs",
                "pinned_images": {"sandbox": sandbox_image},
            },
            "io.containerd.cri.v1.runtime": {
                "restrict_oom_score_adj": true,
                "containerd": {
                    "default_runtime_name": "runc",
                    "runtimes": {"runc": {
                        "runtime_type": "io.containerd.runc.v2",
                        "options": {"SystemdCgroup": true, "BinaryName": Component::Runc.install().dest},
                    }},
                },
                "cni": {"bin_dirs": ["/opt/cni/bin"], "conf_dir": "/etc/cni/net.d"},
            },
        },
    });
    format!(
        "# containerd configuration (containerd 2.x). Managed by kforge.\n{}",
        toml::to_string(&config).expect("containerd config serializes")
    )
}

/// nginx (stream) on a worker: 127.0.0.1:PORT balanced over every controller's API
/// server on the mesh, so kubelets and kube-proxy survive any one controller.
pub fn api_balancer_nginx(model: &Model<'_>) -> String {
    let backends: Vec<std::net::SocketAddrV4> =
        super::controllers(model).iter().map(|m| std::net::SocketAddrV4::new(m.mesh_ip, API_PORT)).collect();
    crate::balancer::nginx_stream_conf(
        "kforge API load balancer on this worker",
        super::API_BALANCER_UNIT,
        model.spec.spec.hardway.api_balancer_port,
        &backends,
    )
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
