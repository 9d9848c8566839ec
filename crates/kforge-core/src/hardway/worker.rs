//! What pods run on, on each worker: containerd + runc + the CNI bridge with the
//! worker's own pod network, the local API load balancer, the kubelet and kube-proxy.

use super::{
    API_BALANCER_CONF, API_BALANCER_UNIT, KUBE_PROXY_DIR, KUBELET_DIR, artifacts, certs, configs, nginx_unit, service,
    unit, units,
};
use crate::component::Component;
use crate::kubeconfig::render_kubeconfig;
use crate::model::{API_PORT, Member, Model};
use crate::pki::Ca;
use crate::plan::{NodePlan, Phase, PlannedFile, PlannedUnit};
use crate::secrets::SecretsBundle;
use crate::spec::Node;

pub(super) fn plan(model: &Model<'_>, secrets: &SecretsBundle, me: &Member, node: &Node, np: &mut NodePlan) {
    // Kubelet and kube-proxy dial the local balancer over all controllers.
    let api = format!("https://127.0.0.1:{}", model.spec.spec.hardway.api_balancer_port);
    let (runtime_files, runtime_units) = runtime(model, me, node);
    let (kubelet_files, kubelet_unit) = kubelet(model, secrets, me, node, &api);
    let (proxy_files, proxy_unit) = kube_proxy(model, secrets, &api);

    let runtime = np.phase(Phase::Runtime);
    runtime.files.extend(runtime_files);
    runtime.units.extend(runtime_units);
    let kubectl = super::addons_blocked_by(model).is_none().then(super::admin_kubectl);
    let p = np.phase(Phase::Workers);
    p.commands.extend(artifacts::image_imports(model));
    p.files.extend(kubelet_files);
    p.files.extend(proxy_files);
    p.gate = kubectl
        .filter(|_| kubelet_unit.start)
        .map(|k| crate::gates::node_ready(&k, &node.name, &model.spec.spec.distribution.version));
    p.units.extend([kubelet_unit, proxy_unit]);
}

/// containerd, runc and CNI, and the API load balancer the kubelet and kube-proxy use.
fn runtime(model: &Model<'_>, me: &Member, node: &Node) -> (Vec<PlannedFile>, Vec<PlannedUnit>) {
    let pod_cidr = me.pod_cidr.expect("a worker has a pod network after reconcile");
    let hw = &model.spec.spec.hardway;
    let mut runtime_files = vec![
        PlannedFile::new("/etc/containerd/config.toml", 0o644, configs::containerd_config(&hw.sandbox_image)).about(
            "containerd's configuration (containerd 2.x, `version = 3`): the CRI plugin with runc as the runtime and CNI from /opt/cni/bin.",
            "containerd",
            vec![
                ("SystemdCgroup".into(), "true, matching the kubelet's cgroupDriver: systemd (two cgroup managers fight otherwise)".into()),
                ("restrict_oom_score_adj".into(), "true: no container gets a lower OOM score than containerd itself (-999 from its unit, so nothing changes on a normal host); where containerd cannot lower its own (no CAP_SYS_RESOURCE, as in nested or lab machines) pods still start instead of failing at runc init".into()),
                ("pinned_images.sandbox".into(), format!("{}: the pod sandbox (\"pause\") image (hardway.sandboxImage); the kubelet no longer has a flag for it, and a pinned image is never garbage-collected", hw.sandbox_image)),
                ("cni.conf_dir".into(), "/etc/cni/net.d: the bridge and loopback configs kforge writes".into()),
            ],
        ),
        PlannedFile::new("/etc/cni/net.d/10-bridge.conf", 0o644, configs::cni_bridge(pod_cidr)).about(
            format!("The CNI bridge network of {}: pods get addresses from its own pod network.", node.name),
            "containerd's CRI plugin, through the CNI bridge and host-local plugins",
            vec![
                ("ipam.ranges".into(), format!("{pod_cidr}: this worker's slice of {}, allocated once and kept in the secrets bundle", model.spec.spec.network.pod_cidr)),
                ("bridge".into(), "cni0: the firewall treats it as cluster-internal".into()),
                ("ipMasq".into(), "true: pods reach the internet through the node's address".into()),
                ("routes to other workers".into(), "none here: the mesh's AllowedIPs carry every worker's pod network, and wg-quick installs those routes".into()),
            ],
        ),
        PlannedFile::new("/etc/cni/net.d/99-loopback.conf", 0o644, configs::cni_loopback())
            .about("The loopback interface inside every pod.", "the CNI loopback plugin", vec![]),
        PlannedFile::new("/etc/modules-load.d/kforge-kubernetes.conf", 0o644, "overlay\nbr_netfilter\n").about(
            "Kernel modules containers need: overlay (image layers), br_netfilter (Services for bridged pod traffic).",
            "systemd-modules-load",
            vec![],
        ),
        PlannedFile::new(
            "/etc/sysctl.d/91-kforge-kubernetes.conf",
            0o644,
            "# Managed by kforge: bridged pod traffic passes iptables, so Services work pod to pod.\nnet.bridge.bridge-nf-call-iptables = 1\nnet.bridge.bridge-nf-call-ip6tables = 1\n",
        ),
    ];
    let containerd_file = PlannedFile::from_unit(
        service(Component::Containerd),
        &units::containerd(),
        "containerd, the container runtime.",
    );
    let containerd_restart: Vec<String> = vec!["/etc/containerd/config.toml".into(), containerd_file.path.clone()];
    runtime_files.push(containerd_file);
    let mut containerd_unit = unit(model, Component::Containerd, containerd_restart, &[Component::Runc]);
    // runc and the CNI plugins have no unit of their own: they go live in the worker's
    // drained turn, with containerd's restart (artifacts::goes_live_in).
    for c in [Component::Runc, Component::CniPlugins] {
        if let Some(a) = model.spec.spec.artifacts.get(c) {
            containerd_unit.restart_on.push(artifacts::upload_path(model, c, a));
        }
    }

    let balancer_files = vec![
        PlannedFile::new(API_BALANCER_CONF, 0o644, configs::api_balancer_nginx(model)).about(
            "nginx stream: the API on 127.0.0.1 of this worker, balanced over every controller's API server.",
            "nginx, run by kforge-api-balancer.service; dialled by the kubelet and kube-proxy (their kubeconfigs)",
            vec![
                ("listen".into(), format!("127.0.0.1:{}: local only, nothing new on any interface", hw.api_balancer_port)),
                ("upstream".into(), format!("every controller's mesh address on {API_PORT}: with one controller down, the others answer")),
                ("TLS".into(), "passed through untouched: the client still verifies the API server's certificate (its SANs include 127.0.0.1) and presents its own".into()),
            ],
        ),
        PlannedFile::unit(API_BALANCER_UNIT, units::api_balancer(&model.spec.spec.mesh.interface).render()),
    ];
    let balancer_unit = nginx_unit(API_BALANCER_UNIT, &balancer_files);
    runtime_files.extend(balancer_files);
    (runtime_files, vec![containerd_unit, balancer_unit])
}

/// The kubelet: its certificates, kubeconfig and KubeletConfiguration, each file's path
/// written once and named by the configuration and the unit that read it.
fn kubelet(
    model: &Model<'_>,
    secrets: &SecretsBundle,
    me: &Member,
    node: &Node,
    api: &str,
) -> (Vec<PlannedFile>, PlannedUnit) {
    let cluster = &model.spec.metadata.name;
    let ca = &secrets.ca(Ca::Server).cert;
    let pod_cidr = me.pod_cidr.expect("a worker has a pod network after reconcile");
    let kubelet_serving = secrets.certificate(&certs::kubelet_serving_id(&node.name));
    let kubelet_client = secrets.certificate(&certs::kubelet_client_id(&node.name));
    let user = format!("system:node:{}", node.name);
    let kl = |name: &str| format!("{KUBELET_DIR}/{name}");
    let client_ca = PlannedFile::new(kl("ca.crt"), 0o644, secrets.ca(Ca::Client).cert.clone()).about(
        "The client CA the kubelet trusts: the API server's kubelet client certificate is signed by it.",
        "kubelet (authentication.x509.clientCAFile)",
        vec![],
    );
    let serving_cert = PlannedFile::new(kl("kubelet.crt"), 0o644, kubelet_serving.cert.clone()).about(
        format!("The kubelet's serving certificate on {}, signed by the cluster CA.", node.name),
        "kubelet (tlsCertFile); kube-apiserver verifies it (--kubelet-certificate-authority)",
        vec![(
            "SANs".into(),
            format!(
                "{} and its mesh address {}: the API server dials kubelets by InternalIP, which is the mesh address",
                node.name, me.mesh_ip
            ),
        )],
    );
    let serving_key = PlannedFile::secret(kl("kubelet.key"), kubelet_serving.key.clone());
    let kubeconfig = PlannedFile::secret(kl("kubeconfig"), render_kubeconfig(cluster, api, ca, &user, kubelet_client)).about(
            format!("The kubelet's kubeconfig on {}.", node.name),
            "kubelet (--kubeconfig)",
            vec![
                ("user".into(), format!("CN={user}, O=system:nodes: the Node authorizer lets a kubelet see only its own pods, secrets and node object")),
                ("server".into(), format!("{api}: this worker's API load balancer over every controller")),
            ],
        );
    let reads = configs::KubeletFiles { client_ca: &client_ca.path, cert: &serving_cert.path, key: &serving_key.path };
    let config = PlannedFile::new(kl("kubelet-config.yaml"), 0o644, configs::kubelet_config(model, pod_cidr, &reads))
        .about(
            "KubeletConfiguration (kubelet.config.k8s.io/v1beta1).",
            "kubelet (--config)",
            configs::kubelet_config_explained(model, pod_cidr),
        );
    let unit_file = PlannedFile::from_unit(
        service(Component::Kubelet),
        &units::kubelet(model, me, node, &config.path, &kubeconfig.path),
        format!("The kubelet on {}.", node.name),
    );
    let files = vec![client_ca, serving_cert, serving_key, kubeconfig, config, unit_file];
    let restart_on = files.iter().map(|f| f.path.clone()).collect();
    (files, unit(model, Component::Kubelet, restart_on, &[Component::Containerd]))
}

/// kube-proxy: its kubeconfig and KubeProxyConfiguration.
fn kube_proxy(model: &Model<'_>, secrets: &SecretsBundle, api: &str) -> (Vec<PlannedFile>, PlannedUnit) {
    let cluster = &model.spec.metadata.name;
    let ca = &secrets.ca(Ca::Server).cert;

    let proxy_cert = secrets.certificate(certs::KUBE_PROXY_ID);
    let kp = |name: &str| format!("{KUBE_PROXY_DIR}/{name}");
    let kubeconfig =
        PlannedFile::secret(kp("kubeconfig"), render_kubeconfig(cluster, api, ca, "system:kube-proxy", proxy_cert))
            .about(
                "kube-proxy's kubeconfig.",
                "kube-proxy (through its KubeProxyConfiguration)",
                vec![("user".into(), "CN=system:kube-proxy, O=system:node-proxier: the built-in ClusterRoleBinding grants it Services and EndpointSlices".into())],
            );
    let config =
        PlannedFile::new(kp("kube-proxy-config.yaml"), 0o644, configs::kube_proxy_config(model, &kubeconfig.path))
            .about(
                "KubeProxyConfiguration (kubeproxy.config.k8s.io/v1alpha1).",
                "kube-proxy (--config)",
                vec![
                    ("mode".into(), "iptables: Service addresses are rewritten on every node".into()),
                    ("conntrack.maxPerCore".into(), "0: kube-proxy leaves the kernel-wide conntrack table size to the host (nf_conntrack_max) rather than resizing it; it fails to start where nf_conntrack is built in otherwise".into()),
                    ("clusterCIDR".into(), format!("{}: traffic from outside it to a Service is masqueraded", model.spec.spec.network.pod_cidr)),
                ],
            );
    let unit_file = PlannedFile::unit(
        service(Component::KubeProxy),
        units::kube_proxy(&super::binary(model, Component::KubeProxy), &config.path).render(),
    );
    let files = vec![kubeconfig, config, unit_file];
    let restart_on = files.iter().map(|f| f.path.clone()).collect();
    (files, unit(model, Component::KubeProxy, restart_on, &[]))
}
